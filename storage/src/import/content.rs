//! Peel a stream: detect its format by magic bytes, and while it is
//! gzip, xz or zstd, decode it as a stream and look again — so a
//! `disk.qcow2.xz`, a `raw.gz` or an `archive.tar.zst` is recognised by
//! content, never by name.

use std::io::{Cursor, Read};

use crate::format::{detect, Format, DETECT_LEN};
use crate::matrix::MatrixFormat;
use crate::write::read_full;

use super::ImportError;

/// Compression layers allowed around the content (a gz inside an xz is
/// odd but legal; more is an attack).
const MAX_LAYERS: usize = 3;

/// A reader for one import.
pub(crate) type Stream<'a> = Box<dyn Read + 'a>;

/// A stream with its compression layers removed.
pub(crate) struct Peeled<'a> {
    /// Compression layers, outermost first.
    pub layers: Vec<Format>,
    /// The format inside them.
    pub format: Format,
    /// The decoded content, from its first byte.
    pub reader: Stream<'a>,
}

impl Peeled<'_> {
    /// `qcow2`, `raw+gz`, `tar+xz+gz`, …
    pub(crate) fn describe(&self) -> String {
        describe(&self.layers, self.format)
    }
}

fn name(f: Format) -> &'static str {
    match f {
        Format::Qcow2 => "qcow2",
        Format::Gzip => "gz",
        Format::Xz => "xz",
        Format::Zstd => "zst",
        Format::Iso => "iso",
        Format::Tar => "tar",
        Format::Vmdk => "vmdk",
        Format::Vdi => "vdi",
        Format::Vhdx => "vhdx",
        Format::Vhd => "vhd",
        Format::Raw => "raw",
    }
}

/// `qcow2+gz`: the content first, then its layers innermost first.
pub(crate) fn describe(layers: &[Format], format: Format) -> String {
    let mut s = name(format).to_string();
    for l in layers.iter().rev() {
        s.push('+');
        s.push_str(name(*l));
    }
    s
}

/// Read the head of `reader` and give back a reader that still starts at
/// byte 0.
fn peek<'a>(mut reader: Stream<'a>) -> Result<(Vec<u8>, Stream<'a>), ImportError> {
    let mut head = vec![0u8; DETECT_LEN];
    let n = read_full(&mut reader, &mut head)?;
    head.truncate(n);
    let again: Stream<'a> = Box::new(Cursor::new(head.clone()).chain(reader));
    Ok((head, again))
}

/// Detect and strip compression layers.
pub(crate) fn peel<'a>(reader: Stream<'a>) -> Result<Peeled<'a>, ImportError> {
    let mut layers = Vec::new();
    let mut reader = reader;
    loop {
        let (head, r) = peek(reader)?;
        let format = detect(&head, None);
        reader = match format {
            Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
            Format::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
            Format::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
            _ => {
                return Ok(Peeled {
                    layers,
                    format,
                    reader: r,
                })
            }
        };
        layers.push(format);
        if layers.len() > MAX_LAYERS {
            return Err(ImportError::Image(crate::ImageError::Unsupported(format!(
                "more than {MAX_LAYERS} nested compression layers"
            ))));
        }
    }
}

/// The support-matrix row of a peeled format. zstd is not in the seed's
/// matrix; it is treated like the matrix's GZ/XZ (a stream decoder).
pub(crate) fn matrix_format(layers: &[Format], format: Format) -> Option<MatrixFormat> {
    let xz_like = layers
        .iter()
        .any(|l| matches!(l, Format::Xz | Format::Zstd));
    let compressed = !layers.is_empty();
    Some(match format {
        Format::Qcow2 if !compressed => MatrixFormat::Qcow2,
        Format::Qcow2 if xz_like => MatrixFormat::Qcow2Xz,
        Format::Qcow2 => MatrixFormat::Qcow2Gz,
        Format::Raw | Format::Iso if !compressed => MatrixFormat::Raw,
        Format::Raw | Format::Iso if xz_like => MatrixFormat::RawXz,
        Format::Raw | Format::Iso => MatrixFormat::RawGz,
        Format::Tar => MatrixFormat::Tar,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn nested_layers_are_peeled_by_magic() {
        let mut qcow = b"QFI\xfb".to_vec();
        qcow.resize(5000, 7);
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&gz(&qcow)).unwrap();
            e.finish().unwrap()
        };
        let mut p = peel(Box::new(Cursor::new(xz))).unwrap();
        assert_eq!(p.layers, vec![Format::Xz, Format::Gzip]);
        assert_eq!(p.format, Format::Qcow2);
        assert_eq!(p.describe(), "qcow2+gz+xz");
        let mut out = Vec::new();
        p.reader.read_to_end(&mut out).unwrap();
        assert_eq!(out, qcow);
        let z = zstd::encode_all(&b"plain"[..], 1).unwrap();
        let p = peel(Box::new(Cursor::new(z))).unwrap();
        assert_eq!((p.layers, p.format), (vec![Format::Zstd], Format::Raw));
    }

    #[test]
    fn too_many_layers_and_matrix_rows() {
        let mut data = b"x".to_vec();
        for _ in 0..5 {
            data = gz(&data);
        }
        assert!(peel(Box::new(Cursor::new(data))).is_err());
        assert_eq!(matrix_format(&[], Format::Iso), Some(MatrixFormat::Raw));
        assert_eq!(
            matrix_format(&[Format::Zstd], Format::Qcow2),
            Some(MatrixFormat::Qcow2Xz)
        );
        assert_eq!(
            matrix_format(&[Format::Gzip], Format::Raw),
            Some(MatrixFormat::RawGz)
        );
        assert_eq!(matrix_format(&[], Format::Vmdk), None);
    }
}
