//! Turn a raw or qcow2 image file into a sparse raw image: zero runs are
//! left as holes, the result is grown to the requested size, and it appears
//! under its final name only when complete (write to a temporary name in
//! the same directory, fsync, rename). A failed or cancelled conversion
//! leaves no target behind (`partial.rs`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::format::{detect, Format, DETECT_LEN};
use crate::partial::PartialFile;
use crate::qcow2::{Qcow2, ReadAt};
use crate::write::{convert_qcow2, copy_stream};
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
    let data_bytes = match &qcow {
        Some(q) => convert_qcow2(q, out, opts.cancel, &mut |done| {
            progress(done, virtual_size)
        })?,
        None => {
            let mut reader = std::io::Read::take(&input, len);
            copy_stream(&mut reader, out, len, opts.cancel, &mut |done| {
                progress(done, len)
            })?
            .data
        }
    };
    partial.commit()?;
    Ok(ConvertReport {
        format,
        virtual_size,
        output_size,
        data_bytes,
    })
}
