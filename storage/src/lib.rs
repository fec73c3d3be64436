//! virtkit-storage: CDI-style disk image import.
//!
//! [`import::import`] runs a DataVolume (http, registry, pvc clone, blank)
//! against a target; [`upload::UploadServer`] feeds upload DataVolumes.
//! Underneath: format detection by magic bytes ([`format`](mod@format)), a
//! qcow2 v2/v3 reader ([`qcow2`]), sparse conversion to raw ([`convert`]),
//! safe tar extraction ([`archive`]), and the seed's support matrix and
//! scratch reasons ([`matrix`]).

pub mod archive;
pub mod blank;
pub mod convert;
pub mod format;
pub mod fuzzing;
pub mod import;
pub mod matrix;
mod partial;
pub mod qcow2;
pub mod upload;
mod write;

pub use blank::create_blank;
pub use convert::{convert_to_raw, ConvertOptions, ConvertReport};
pub use format::{detect, Format};

/// Why an image could not be used. Never a panic, on any input.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Reading the source or writing the target failed.
    #[error("I/O: {0}")]
    Io(#[source] std::io::Error),
    /// The image is damaged or inconsistent.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// A valid image using a feature virtkit does not import.
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// A recognized format that is not converted.
    #[error("{0:?} images are recognized but not supported; convert to qcow2 or raw first")]
    UnsupportedFormat(Format),
    /// The image does not fit the target.
    #[error("virtual size {virtual_size} exceeds target size {target_size}")]
    TooLarge {
        /// The image's virtual size.
        virtual_size: u64,
        /// The requested size.
        target_size: u64,
    },
    /// The target path is unusable.
    #[error("target: {0}")]
    Target(String),
    /// Cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
}
