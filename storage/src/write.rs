//! Sparse writing shared by every path that produces a raw disk: zero
//! 4 KiB blocks are skipped (left as holes in a file target, already zeroed
//! on a block target), adjacent data blocks are coalesced into one write.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::qcow2::{Cluster, Qcow2, ReadAt};
use crate::ImageError;

/// Granularity of hole detection.
pub(crate) const BLOCK: usize = 4096;
/// Size of one read/write step.
pub(crate) const CHUNK: usize = 4 << 20;

/// Whether every byte of `b` is zero.
pub(crate) fn is_zero(b: &[u8]) -> bool {
    b.chunks(64).all(|c| c.iter().fold(0u8, |a, x| a | x) == 0)
}

/// Write the non-zero 4 KiB blocks of `data` at offset `at` (clipped to
/// `limit`), coalescing adjacent ones; returns the bytes written.
pub(crate) fn write_nonzero(
    out: &File,
    data: &[u8],
    at: u64,
    limit: u64,
) -> Result<u64, ImageError> {
    let data = &data[..data.len().min(limit.saturating_sub(at) as usize)];
    let mut written = 0u64;
    let mut start: Option<usize> = None;
    let mut flush = |s: usize, e: usize| -> Result<(), ImageError> {
        out.write_all_at(&data[s..e], at + s as u64)
            .map_err(ImageError::Io)?;
        written += (e - s) as u64;
        Ok(())
    };
    for (k, block) in data.chunks(BLOCK).enumerate() {
        match (is_zero(block), start) {
            (false, None) => start = Some(k * BLOCK),
            (true, Some(s)) => {
                flush(s, k * BLOCK)?;
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        flush(s, data.len())?;
    }
    Ok(written)
}

/// Checked between chunks of every long loop.
pub(crate) fn check_cancel(cancel: Option<&AtomicBool>) -> Result<(), ImageError> {
    match cancel {
        Some(c) if c.load(Ordering::SeqCst) => Err(ImageError::Cancelled),
        _ => Ok(()),
    }
}

/// Fill `buf` from `r` as far as it goes; returns the bytes read (less
/// than `buf.len()` only at end of stream).
pub(crate) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What a stream copy did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Copied {
    /// Bytes the stream held.
    pub len: u64,
    /// Bytes written (non-zero blocks).
    pub data: u64,
}

/// Copy a raw stream into `out` sparsely. More than `limit` bytes is an
/// image larger than its target (or a decompression bomb): an error as
/// soon as the first byte past the limit is seen.
pub(crate) fn copy_stream(
    reader: &mut dyn Read,
    out: &File,
    limit: u64,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(u64),
) -> Result<Copied, ImageError> {
    let mut buf = vec![0u8; CHUNK];
    let mut c = Copied::default();
    loop {
        check_cancel(cancel)?;
        let n = read_full(reader, &mut buf).map_err(ImageError::Io)?;
        if n == 0 {
            return Ok(c);
        }
        if c.len + n as u64 > limit {
            return Err(ImageError::TooLarge {
                virtual_size: c.len + n as u64,
                target_size: limit,
            });
        }
        c.data += write_nonzero(out, &buf[..n], c.len, limit)?;
        c.len += n as u64;
        progress(c.len);
    }
}

/// Write the guest content of an open qcow2 image into `out` (which is
/// zero where nothing is written); returns the data bytes written.
/// `progress(guest bytes covered)`.
pub(crate) fn convert_qcow2<R: ReadAt + ?Sized>(
    q: &Qcow2<'_, R>,
    out: &File,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, ImageError> {
    let virtual_size = q.header.virtual_size;
    let cs = q.header.cluster_size();
    let clusters = virtual_size.div_ceil(cs);
    let max_run = ((CHUNK as u64) / cs.max(1)).max(1); // clusters per read
    let mut buf = vec![0u8; (max_run * cs) as usize];
    let mut l2 = (u64::MAX, Vec::new());
    let mut scratch = Vec::new();
    let mut data_bytes = 0u64;
    let mut i = 0;
    while i < clusters {
        check_cancel(cancel)?;
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
        progress((i * cs).min(virtual_size));
    }
    Ok(data_bytes)
}
