//! Block backends: where a virtio-blk device's sectors live. Raw files
//! and block devices ([`RawFile`]) and qcow2 images ([`Qcow2File`], through
//! `virtkit-storage`) are built in, both locked the way QEMU locks images;
//! [`open_disk`] picks one by the image's contents. Users plug their own (a
//! network store) through [`BlockBackend`]. [`TrackedDisk`] wraps any of
//! them to record written chunks, for a migration that copies the disk.

#[cfg(feature = "qcow2")]
mod qcow2;
mod raw;
mod tracked;

#[cfg(feature = "qcow2")]
pub use qcow2::Qcow2File;
pub use raw::RawFile;
pub use tracked::TrackedDisk;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A disk's contents, as the block device sees them. Methods take
/// `&self` so that several queues may serve one disk.
pub trait BlockBackend: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Fill `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make completed writes durable.
    fn flush(&self) -> io::Result<()>;
    /// The range's contents are no longer needed (it may read as
    /// anything afterwards; a raw file punches a hole).
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// The range must read as zeroes; `unmap` allows freeing it.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// Flush, then let go of the image's host lock so that a migration
    /// target can take it (with [`BlockBackend::take_lock`]). Writes fail
    /// until this backend takes the lock again. Idempotent. The default,
    /// for a backend with no host lock, only flushes.
    fn release_lock(&self) -> io::Result<()> {
        self.flush()
    }
    /// Take the image's host lock: on a migration target, whose disk was
    /// opened [`DiskOptions::incoming`], once the source has let go; on a
    /// source whose migration failed after [`BlockBackend::release_lock`].
    /// What the backend caches of the image is read again, since the
    /// other side may have changed it. Idempotent; a lock held elsewhere
    /// is [`BlockError::Locked`] and leaves the backend as it was.
    fn take_lock(&self) -> Result<(), BlockError> {
        Ok(())
    }
}

/// How a disk image is opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskOptions {
    /// Open read-only (KubeVirt `readonly: true`, cdroms).
    pub read_only: bool,
    /// Other VMs may use the image at the same time (KubeVirt
    /// `shareable: true`): take a shared lock rather than an exclusive one.
    pub shareable: bool,
    /// The disk arrives with a migrating guest whose source still holds
    /// the image: open it without a lock and refuse writes until the
    /// migration hands the lock over ([`BlockBackend::take_lock`]).
    pub incoming: bool,
}

/// Why an image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// Open or stat failed.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another process holds a conflicting lock.
    #[error("disk image {path} is in use by another VM (it holds a {held} lock); mark the disk shareable to use it from several VMs")]
    Locked {
        /// The image.
        path: PathBuf,
        /// The kind of lock that conflicts.
        held: &'static str,
    },
    /// The image's format structures are broken or use what virtkit
    /// cannot honour (a qcow2 with snapshots opened for writing, …).
    #[cfg(feature = "qcow2")]
    #[error("disk image {path}: {source}")]
    Image {
        /// The image.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: virtkit_storage::ImageError,
    },
}

/// Open `path` for a disk and take the lock its options call for
/// (none yet for an [`DiskOptions::incoming`] disk).
fn open_locked(path: &Path, options: DiskOptions) -> Result<(File, ImageLock), BlockError> {
    let file = OpenOptions::new()
        .read(true)
        .write(!options.read_only)
        .open(path)
        .map_err(|source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let lock = ImageLock {
        path: path.to_path_buf(),
        options,
        held: std::sync::Mutex::new(false),
    };
    if !options.incoming {
        lock.take(&file)?;
    }
    Ok((file, lock))
}

/// The host lock on an open image: exclusive for a writable,
/// non-shareable disk, shared otherwise (the rule QEMU follows, so QEMU
/// and virtkit exclude each other too). A migration hands it from the
/// source to the target; while it is not held, writes are refused.
#[derive(Debug)]
struct ImageLock {
    path: PathBuf,
    options: DiskOptions,
    held: std::sync::Mutex<bool>,
}

impl ImageLock {
    fn held(&self) -> std::sync::MutexGuard<'_, bool> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exclusive(&self) -> bool {
        !self.options.read_only && !self.options.shareable
    }

    /// Take the lock on `file`; whether it was not held before.
    fn take(&self, file: &File) -> Result<bool, BlockError> {
        let mut held = self.held();
        if *held {
            return Ok(false);
        }
        let op = if self.exclusive() {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock on an fd we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                BlockError::Locked {
                    path: self.path.clone(),
                    held: if self.exclusive() {
                        "shared or exclusive"
                    } else {
                        "exclusive"
                    },
                }
            } else {
                BlockError::Open {
                    path: self.path.clone(),
                    source: e,
                }
            });
        }
        *held = true;
        Ok(true)
    }

    /// Let go of the lock on `file` (after the caller flushed).
    fn release(&self, file: &File) -> io::Result<()> {
        let mut held = self.held();
        if *held {
            // SAFETY: flock on an fd we own; no memory is passed.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) } != 0 {
                return Err(io::Error::last_os_error());
            }
            *held = false;
        }
        Ok(())
    }

    /// Whether a write may go ahead: the disk is writable and its lock
    /// is held (not handed to, or not yet taken from, a migration peer).
    fn check_write(&self) -> io::Result<()> {
        if self.options.read_only {
            return Err(read_only_error());
        }
        if !*self.held() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{}: the image's lock is with the other side of a migration",
                    self.path.display()
                ),
            ));
        }
        Ok(())
    }
}

/// Open a disk image as the backend its contents call for: a qcow2 image
/// (by its magic) through [`Qcow2File`], anything else as [`RawFile`].
pub fn open_disk(path: &Path, options: DiskOptions) -> Result<Box<dyn BlockBackend>, BlockError> {
    // One open, one lock: the format is read from the locked file.
    let (file, lock) = open_locked(path, options)?;
    #[cfg(feature = "qcow2")]
    {
        let mut magic = [0u8; 4];
        let is_qcow2 = std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, 0).is_ok()
            && magic == *b"QFI\xfb";
        if is_qcow2 {
            return Ok(Box::new(Qcow2File::from_locked(file, lock)?));
        }
    }
    Ok(Box::new(RawFile::from_locked(file, lock)?))
}

/// A request past the end of the disk.
fn out_of_range(offset: u64, len: u64, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("range {offset}+{len} is past the end of the disk ({size})"),
    )
}

/// A write to a read-only disk.
fn read_only_error() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "the disk is read-only")
}

/// A disk held in memory: for tests, fuzzing and scratch disks.
#[derive(Debug, Default)]
pub struct MemoryDisk {
    bytes: std::sync::Mutex<Vec<u8>>,
    read_only: bool,
}

impl MemoryDisk {
    /// A disk with `bytes` as its contents.
    pub fn new(bytes: Vec<u8>, read_only: bool) -> Self {
        MemoryDisk {
            bytes: std::sync::Mutex::new(bytes),
            read_only,
        }
    }

    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn range(&self, offset: u64, len: u64, writing: bool) -> io::Result<std::ops::Range<usize>> {
        if writing && self.read_only {
            return Err(read_only_error());
        }
        let size = self.lock().len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(out_of_range(offset, len, size)),
        }
    }
}

impl BlockBackend for MemoryDisk {
    fn size(&self) -> u64 {
        self.lock().len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let r = self.range(offset, buf.len() as u64, false)?;
        buf.copy_from_slice(&self.lock()[r]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let r = self.range(offset, buf.len() as u64, true)?;
        self.lock()[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        let r = self.range(offset, len, true)?;
        self.lock()[r].fill(0);
        Ok(())
    }
}
