//! Block backends: where a virtio-blk device's sectors live. A raw file
//! (or block device) is built in; users plug their own (a qcow2 image, a
//! network store) through [`BlockBackend`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
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
}

/// How a raw image is opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawOptions {
    /// Open read-only (KubeVirt `readonly: true`, cdroms).
    pub read_only: bool,
    /// Other VMs may use the image at the same time (KubeVirt
    /// `shareable: true`): take a shared lock rather than an exclusive one.
    pub shareable: bool,
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
}

/// A raw image in a file or block device, locked like QEMU locks images:
/// exclusively for a writable, non-shareable disk, shared otherwise.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    size: u64,
    read_only: bool,
}

impl RawFile {
    /// Open `path` as a raw disk.
    pub fn open(path: &Path, options: RawOptions) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!options.read_only)
            .open(path)
            .map_err(open_err)?;
        let exclusive = !options.read_only && !options.shareable;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock on an fd we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                BlockError::Locked {
                    path: path.to_path_buf(),
                    held: if exclusive {
                        "shared or exclusive"
                    } else {
                        "exclusive"
                    },
                }
            } else {
                open_err(e)
            });
        }
        let size = device_size(&file).map_err(open_err)?;
        Ok(RawFile {
            file,
            size,
            read_only: options.read_only,
        })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (off, len) = (
            i64::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?,
            i64::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?,
        );
        // SAFETY: fallocate on an fd we own; no memory is passed.
        if unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "range {offset}+{len} is past the end of the disk ({})",
                    self.size
                ),
            )),
        }
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the disk is read-only",
            ))
        } else {
            Ok(())
        }
    }
}

/// Size of a regular file or a block device.
fn device_size(file: &File) -> io::Result<u64> {
    use std::io::Seek;
    let mut f = file;
    let end = f.seek(io::SeekFrom::End(0))?;
    f.seek(io::SeekFrom::Start(0))?;
    Ok(end)
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

impl BlockBackend for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writable()?;
        self.check_range(offset, buf.len() as u64)?;
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.writable()?;
        self.check_range(offset, len)?;
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            // Discard is advisory: a file system without holes keeps data.
            Err(e) if unsupported(&e) => Ok(()),
            r => r,
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.writable()?;
        self.check_range(offset, len)?;
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(mode, offset, len) {
            Err(e) if unsupported(&e) => {
                let zeroes = vec![0u8; 1 << 20];
                let mut at = offset;
                while at < offset + len {
                    let n = (offset + len - at).min(zeroes.len() as u64) as usize;
                    self.file.write_all_at(&zeroes[..n], at)?;
                    at += n as u64;
                }
                Ok(())
            }
            r => r,
        }
    }
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
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the disk is read-only",
            ));
        }
        let size = self.lock().len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("range {offset}+{len} is past the end of the disk ({size})"),
            )),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn image(len: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, vec![0xaa; len as usize]).unwrap();
        (dir, path)
    }

    #[test]
    fn read_write_discard_zeroes_and_bounds() {
        let (_d, path) = image(1 << 20);
        let disk = RawFile::open(&path, RawOptions::default()).unwrap();
        assert_eq!(disk.size(), 1 << 20);
        disk.write_at(b"hello", 512).unwrap();
        let mut buf = [0u8; 5];
        disk.read_at(&mut buf, 512).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(disk.read_at(&mut buf, (1 << 20) - 2).is_err());
        assert!(disk.write_at(&buf, u64::MAX - 1).is_err());
        let before = std::fs::metadata(&path).unwrap().blocks();
        disk.discard(0, 512 << 10).unwrap();
        assert!(
            std::fs::metadata(&path).unwrap().blocks() < before,
            "hole punched"
        );
        disk.write_zeroes(512 << 10, 4096, false).unwrap();
        let mut z = vec![1u8; 4096];
        disk.read_at(&mut z, 512 << 10).unwrap();
        assert!(z.iter().all(|b| *b == 0));
        disk.flush().unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            1 << 20,
            "size kept"
        );
    }

    #[test]
    fn locking_follows_readonly_and_shareable() {
        let (_d, path) = image(4096);
        let rw = RawFile::open(&path, RawOptions::default()).unwrap();
        let err = RawFile::open(&path, RawOptions::default()).unwrap_err();
        assert!(matches!(err, BlockError::Locked { .. }), "{err}");
        assert!(RawFile::open(
            &path,
            RawOptions {
                read_only: true,
                shareable: false
            }
        )
        .is_err());
        drop(rw);
        let shared = RawOptions {
            read_only: false,
            shareable: true,
        };
        let a = RawFile::open(&path, shared).unwrap();
        let b = RawFile::open(&path, shared).unwrap();
        let ro = RawFile::open(
            &path,
            RawOptions {
                read_only: true,
                shareable: false,
            },
        )
        .unwrap();
        assert!(ro.write_at(b"x", 0).is_err());
        assert!(ro.discard(0, 512).is_err());
        drop((a, b));
        assert!(
            RawFile::open(&path, RawOptions::default()).is_err(),
            "ro still holds"
        );
    }
}
