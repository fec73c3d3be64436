//! Raw images: a regular file or a block device, byte for byte.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::{open_locked, out_of_range, BlockBackend, BlockError, DiskOptions, ImageLock};

/// A raw image in a file or block device, locked like QEMU locks images:
/// exclusively for a writable, non-shareable disk, shared otherwise.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    size: u64,
    lock: ImageLock,
}

impl RawFile {
    /// Open `path` as a raw disk.
    pub fn open(path: &Path, options: DiskOptions) -> Result<Self, BlockError> {
        let (file, lock) = open_locked(path, options)?;
        Self::from_locked(file, lock)
    }

    /// Wrap `file`, opened (and locked) by `open_locked`.
    pub(super) fn from_locked(file: File, lock: ImageLock) -> Result<Self, BlockError> {
        let size = device_size(&file).map_err(|source| BlockError::Open {
            path: lock.path.clone(),
            source,
        })?;
        Ok(RawFile { file, size, lock })
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
            _ => Err(out_of_range(offset, len, self.size)),
        }
    }

    fn writable(&self) -> io::Result<()> {
        self.lock.check_write()
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
        self.lock.options.read_only
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
        if self.read_only() {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn release_lock(&self) -> io::Result<()> {
        self.flush()?;
        self.lock.release(&self.file)
    }

    fn take_lock(&self) -> Result<(), BlockError> {
        // Nothing of the image is cached: the page cache is the file's.
        self.lock.take(&self.file).map(drop)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;

    fn image(len: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, vec![0xaa; len as usize]).unwrap();
        (dir, path)
    }

    #[test]
    fn read_write_discard_zeroes_and_bounds() {
        let (_d, path) = image(1 << 20);
        let disk = RawFile::open(&path, DiskOptions::default()).unwrap();
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
        let rw = RawFile::open(&path, DiskOptions::default()).unwrap();
        let err = RawFile::open(&path, DiskOptions::default()).unwrap_err();
        assert!(matches!(err, BlockError::Locked { .. }), "{err}");
        assert!(RawFile::open(
            &path,
            DiskOptions {
                read_only: true,
                shareable: false,
                incoming: false,
            }
        )
        .is_err());
        drop(rw);
        let shared = DiskOptions {
            read_only: false,
            shareable: true,
            incoming: false,
        };
        let a = RawFile::open(&path, shared).unwrap();
        let b = RawFile::open(&path, shared).unwrap();
        let ro = RawFile::open(
            &path,
            DiskOptions {
                read_only: true,
                shareable: false,
                incoming: false,
            },
        )
        .unwrap();
        assert!(ro.write_at(b"x", 0).is_err());
        assert!(ro.discard(0, 512).is_err());
        drop((a, b));
        assert!(
            RawFile::open(&path, DiskOptions::default()).is_err(),
            "ro still holds"
        );
    }
}
