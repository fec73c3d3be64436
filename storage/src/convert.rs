//! Turn a raw or qcow2 image file into a sparse raw image: zero runs are
//! left as holes, the result is grown to the requested size, and it appears
//! under its final name only when complete (write to a temporary name in
//! the same directory, fsync, rename). A failed or cancelled conversion
//! leaves no target behind (`partial.rs`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::format::{detect, Format, DETECT_LEN};
use crate::partial::PartialFile;
use crate::qcow2::{Cluster, Qcow2, ReadAt};
use crate::ImageError;

/// How to convert.
#[derive(Debug, Default)]
pub struct ConvertOptions<'a> {
    /// Grow the raw output to this size (a DataVolume's requested storage);
    /// an image whose virtual size exceeds it is refused before writing.
    pub target_size: Option<u64>,
    /// Set to cancel; checked between chunks.
    pub cancel: Option<&'a AtomicBool>,
}

/// What a conversion did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConvertReport {
    /// Detected input format.
    pub format: Format,
    /// The image's virtual size.
    pub virtual_size: u64,
    /// Size of the raw output.
    pub output_size: u64,
    /// Bytes of data written (zero runs are holes).
    pub data_bytes: u64,
}

/// Write the non-zero 4 KiB blocks of `data` at guest offset `at`
/// (clipped to `limit`), coalescing adjacent ones; returns bytes written.
fn write_nonzero(out: &File, data: &[u8], at: u64, limit: u64) -> Result<u64, ImageError> {
    let data = &data[..data.len().min(limit.saturating_sub(at) as usize)];
    let mut written = 0u64;
    let mut start: Option<usize> = None;
    for (k, block) in data.chunks(4096).enumerate() {
        let zero = is_zero(block);
        match (zero, start) {
            (false, None) => start = Some(k),
            (true, Some(s)) => {
                let span = &data[s * 4096..k * 4096];
                out.write_all_at(span, at + (s * 4096) as u64)
                    .map_err(ImageError::Io)?;
                written += span.len() as u64;
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        let span = &data[s * 4096..];
        out.write_all_at(span, at + (s * 4096) as u64)
            .map_err(ImageError::Io)?;
        written += span.len() as u64;
    }
    Ok(written)
}

fn is_zero(b: &[u8]) -> bool {
    b.chunks(64).all(|c| c.iter().fold(0u8, |a, x| a | x) == 0)
}

/// Convert `src` (raw, ISO or qcow2; detected by magic) into a raw image
/// at `dst`. `progress(done, total)` is called as guest bytes are covered.
pub fn convert_to_raw(
    src: &Path,
    dst: &Path,
    opts: &ConvertOptions<'_>,
    progress: &dyn Fn(u64, u64),
) -> Result<ConvertReport, ImageError> {
    let input = File::open(src).map_err(ImageError::Io)?;
    let len = ReadAt::size(&input).map_err(ImageError::Io)?;
    let mut head = vec![0u8; DETECT_LEN.min(len as usize)];
    input.read_exact_at(&mut head, 0).map_err(ImageError::Io)?;
    let mut tail = [0u8; 512];
    let tail =
        (len >= 512 && input.read_exact_at(&mut tail, len - 512).is_ok()).then_some(&tail[..]);
    let format = detect(&head, tail);
    let qcow = match format {
        Format::Qcow2 => Some(Qcow2::open(&input)?),
        Format::Raw | Format::Iso => None,
        other => return Err(ImageError::UnsupportedFormat(other)),
    };
    let virtual_size = qcow.as_ref().map_or(len, |q| q.header.virtual_size);
    let output_size = match opts.target_size {
        Some(t) if virtual_size > t => {
            return Err(ImageError::TooLarge {
                virtual_size,
                target_size: t,
            });
        }
        Some(t) => t,
        None => virtual_size,
    };
    let partial = PartialFile::create(dst, output_size)?;
    let out = partial.file();
    let cancelled = || opts.cancel.is_some_and(|c| c.load(Ordering::SeqCst));
    let mut data_bytes = 0u64;
    match &qcow {
        Some(q) => {
            let cs = q.header.cluster_size();
            let clusters = virtual_size.div_ceil(cs);
            let max_run = (4 << 20) / cs.max(1); // clusters per read, up to 4 MiB
            let mut buf = vec![0u8; (max_run.max(1) * cs) as usize];
            let mut l2 = (u64::MAX, Vec::new());
            let mut scratch = Vec::new();
            let mut i = 0;
            while i < clusters {
                if cancelled() {
                    return Err(ImageError::Cancelled);
                }
                let run = match q.lookup(i, &mut l2)? {
                    Cluster::Zero => 1,
                    Cluster::Compressed(..) => {
                        let one = &mut buf[..cs as usize];
                        q.read_cluster(i, one, &mut l2, &mut scratch)?;
                        data_bytes += write_nonzero(out, one, i * cs, virtual_size)?;
                        1
                    }
                    Cluster::Data(host) => {
                        // Extend over clusters contiguous in guest and file.
                        let mut n = 1;
                        while n < max_run && i + n < clusters {
                            match q.lookup(i + n, &mut l2)? {
                                Cluster::Data(h) if h == host + n * cs => n += 1,
                                _ => break,
                            }
                        }
                        let bytes = (n * cs) as usize;
                        q.read_data(host, &mut buf[..bytes])?;
                        data_bytes += write_nonzero(out, &buf[..bytes], i * cs, virtual_size)?;
                        n
                    }
                };
                i += run;
                progress((i * cs).min(virtual_size), virtual_size);
            }
        }
        None => {
            let mut buf = vec![0u8; 4 << 20];
            let mut off = 0u64;
            while off < len {
                if cancelled() {
                    return Err(ImageError::Cancelled);
                }
                let n = (len - off).min(buf.len() as u64) as usize;
                input
                    .read_exact_at(&mut buf[..n], off)
                    .map_err(ImageError::Io)?;
                data_bytes += write_nonzero(out, &buf[..n], off, len)?;
                off += n as u64;
                progress(off, len);
            }
        }
    }
    partial.commit()?;
    Ok(ConvertReport {
        format,
        virtual_size,
        output_size,
        data_bytes,
    })
}
