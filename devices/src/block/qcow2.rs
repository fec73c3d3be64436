//! qcow2 images through `virtkit-storage`'s [`Qcow2Image`]: the same
//! locking as raw files, one lock around the image's metadata (qcow2
//! allocation is a read-modify-write of the L2 and refcount tables).

use std::io;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use virtkit_storage::qcow2::{Qcow2Image, Qcow2OpenMode};
use virtkit_storage::ImageError;

use super::{open_locked, read_only_error, BlockBackend, BlockError, DiskOptions};

/// A qcow2 image as a disk.
#[derive(Debug)]
pub struct Qcow2File {
    image: Mutex<Qcow2Image>,
    size: u64,
    read_only: bool,
}

impl Qcow2File {
    /// Open the qcow2 image at `path`. A writable open refuses images
    /// virtkit cannot write safely (internal snapshots, refcounts other
    /// than 16 bits, a set dirty bit) with [`BlockError::Image`].
    pub fn open(path: &Path, options: DiskOptions) -> Result<Self, BlockError> {
        Self::from_locked(open_locked(path, options)?, path, options)
    }

    /// Wrap `file`, opened and locked for `options` by `open_locked`.
    pub(super) fn from_locked(
        file: std::fs::File,
        path: &Path,
        options: DiskOptions,
    ) -> Result<Self, BlockError> {
        let mode = if options.read_only {
            Qcow2OpenMode::ReadOnly
        } else {
            Qcow2OpenMode::ReadWrite
        };
        let image = Qcow2Image::open(file, mode).map_err(|source| BlockError::Image {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Qcow2File {
            size: image.virtual_size(),
            image: Mutex::new(image),
            read_only: options.read_only,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Qcow2Image> {
        self.image.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writable(&self) -> io::Result<MutexGuard<'_, Qcow2Image>> {
        if self.read_only {
            Err(read_only_error())
        } else {
            Ok(self.lock())
        }
    }
}

/// Image errors as the I/O errors a block device reports.
fn to_io(e: ImageError) -> io::Error {
    match e {
        ImageError::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl BlockBackend for Qcow2File {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.lock().read_at(buf, offset).map_err(to_io)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writable()?.write_at(buf, offset).map_err(to_io)
    }

    fn flush(&self) -> io::Result<()> {
        self.lock().flush().map_err(to_io)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.writable()?.discard(offset, len).map_err(to_io)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        // Without a backing file an unmapped cluster reads as zeros, so
        // whole clusters are always unmapped; partial ones are written.
        self.writable()?.write_zeroes(offset, len).map_err(to_io)
    }
}
