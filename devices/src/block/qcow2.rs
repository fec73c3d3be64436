//! qcow2 images through `virtkit-storage`'s [`Qcow2Image`]: the same
//! locking as raw files, one lock around the image's metadata (qcow2
//! allocation is a read-modify-write of the L2 and refcount tables).
//! Taking the host lock (a migration's handover) reads the metadata
//! again, since the other side may have allocated clusters meanwhile.

use std::io;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use virtkit_storage::qcow2::{Qcow2Image, Qcow2OpenMode};
use virtkit_storage::ImageError;

use super::{open_locked, BlockBackend, BlockError, DiskOptions, ImageLock};

/// A qcow2 image as a disk.
#[derive(Debug)]
pub struct Qcow2File {
    image: Mutex<Qcow2Image>,
    /// The image's file again (one open file description), for its lock
    /// and for reading the metadata afresh.
    file: std::fs::File,
    size: u64,
    lock: ImageLock,
}

impl Qcow2File {
    /// Open the qcow2 image at `path`. A writable open refuses images
    /// virtkit cannot write safely (internal snapshots, refcounts other
    /// than 16 bits, a set dirty bit) with [`BlockError::Image`].
    pub fn open(path: &Path, options: DiskOptions) -> Result<Self, BlockError> {
        let (file, lock) = open_locked(path, options)?;
        Self::from_locked(file, lock)
    }

    /// Wrap `file`, opened (and locked) by `open_locked`. An incoming
    /// disk is read as read-only (opening for writing may write the
    /// header) but checked as writable, so a migration fails here rather
    /// than at the switchover.
    pub(super) fn from_locked(file: std::fs::File, lock: ImageLock) -> Result<Self, BlockError> {
        let image_error = |source| BlockError::Image {
            path: lock.path.clone(),
            source,
        };
        let handle = file.try_clone().map_err(|source| BlockError::Open {
            path: lock.path.clone(),
            source,
        })?;
        let image = if lock.options.incoming {
            let image = Qcow2Image::open(file, Qcow2OpenMode::ReadOnly).map_err(image_error)?;
            if !lock.options.read_only {
                image.check_can_write().map_err(image_error)?;
            }
            image
        } else {
            Qcow2Image::open(file, open_mode(lock.options)).map_err(image_error)?
        };
        Ok(Qcow2File {
            size: image.virtual_size(),
            image: Mutex::new(image),
            file: handle,
            lock,
        })
    }

    fn image(&self) -> MutexGuard<'_, Qcow2Image> {
        self.image.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writable(&self) -> io::Result<MutexGuard<'_, Qcow2Image>> {
        self.lock.check_write()?;
        Ok(self.image())
    }
}

fn open_mode(options: DiskOptions) -> Qcow2OpenMode {
    if options.read_only {
        Qcow2OpenMode::ReadOnly
    } else {
        Qcow2OpenMode::ReadWrite
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
        self.lock.options.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.image().read_at(buf, offset).map_err(to_io)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writable()?.write_at(buf, offset).map_err(to_io)
    }

    fn flush(&self) -> io::Result<()> {
        self.image().flush().map_err(to_io)
    }

    fn release_lock(&self) -> io::Result<()> {
        let image = self.image();
        image.flush().map_err(to_io)?;
        self.lock.release(&self.file)
    }

    fn take_lock(&self) -> Result<(), BlockError> {
        let mut image = self.image();
        if !self.lock.take(&self.file)? {
            return Ok(());
        }
        let reread = self
            .file
            .try_clone()
            .map_err(|source| BlockError::Open {
                path: self.lock.path.clone(),
                source,
            })
            .and_then(|f| {
                Qcow2Image::open(f, open_mode(self.lock.options)).map_err(|source| {
                    BlockError::Image {
                        path: self.lock.path.clone(),
                        source,
                    }
                })
            })
            .and_then(|fresh| {
                if fresh.virtual_size() == self.size {
                    Ok(fresh)
                } else {
                    Err(BlockError::Image {
                        path: self.lock.path.clone(),
                        source: ImageError::Unsupported(format!(
                            "the disk changed size from {} to {} bytes while its lock was away",
                            self.size,
                            fresh.virtual_size()
                        )),
                    })
                }
            });
        match reread {
            Ok(fresh) => {
                *image = fresh;
                Ok(())
            }
            Err(e) => {
                // Leave the backend as it was: not holding the lock.
                let _ = self.lock.release(&self.file);
                Err(e)
            }
        }
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
