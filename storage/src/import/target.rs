//! Where an import writes: a file on a filesystem (`volumeMode:
//! Filesystem`, written under a temporary name and renamed at the end), a
//! block device (`volumeMode: Block`: sized by `BLKGETSIZE64`, zeroed
//! first so holes read as zeros, and its head wiped again if the import
//! fails so it does not look like a valid disk), or a directory for
//! `archive` content.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::partial::PartialFile;

use super::ImportError;

/// `_IOR(0x12, 114, u64)`: a block device's size in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `_IO(0x12, 127)`: zero a byte range of a block device.
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// The size of the block device open as `f`.
pub(crate) fn block_device_size(f: &File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is
    // valid for the call; the fd is open.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut size) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

/// Whether `path` is a block device.
pub(crate) fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// Zero `[0, len)` of block device `f`: `BLKZEROOUT` (a hole punch on a
/// loop device), else plain writes of zeros.
fn zero_block_device(f: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let range = [0u64, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) from the pointer,
    // valid for the call; the fd is open for writing.
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKZEROOUT, range.as_ptr()) } == 0 {
        return Ok(());
    }
    let zeros = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// A raw disk target being written.
pub(crate) struct RawTarget {
    inner: Inner,
    /// Bytes of the finished disk.
    pub size: u64,
}

enum Inner {
    File(PartialFile),
    Block { file: File, committed: bool },
}

impl RawTarget {
    /// A file at `path`, `size` bytes, sparse.
    pub(crate) fn file(path: &Path, size: u64) -> Result<Self, ImportError> {
        if is_block_device(path) {
            return Err(ImportError::Target(format!(
                "{} is a block device; set spec.pvc.volumeMode: Block",
                path.display()
            )));
        }
        Ok(RawTarget {
            inner: Inner::File(PartialFile::create(path, size)?),
            size,
        })
    }

    /// Block device `path`, of which `size` bytes are the disk (ST-21,
    /// ST-22); `zero`: zero those bytes first, so holes read as zeros.
    pub(crate) fn block(path: &Path, size: u64, zero: bool) -> Result<Self, ImportError> {
        if !is_block_device(path) {
            return Err(ImportError::Target(format!(
                "volumeMode Block needs a block device; {} is not one",
                path.display()
            )));
        }
        // O_EXCL on a block device: fails if it is mounted or held.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_EXCL)
            .open(path)
            .map_err(|e| ImportError::Target(format!("{}: {e}", path.display())))?;
        let device = block_device_size(&file)?;
        if size > device {
            return Err(ImportError::Target(format!(
                "requested size {size} exceeds the size of block device {} ({device} bytes)",
                path.display()
            )));
        }
        if zero {
            zero_block_device(&file, size)?;
        }
        Ok(RawTarget {
            inner: Inner::Block {
                file,
                committed: false,
            },
            size,
        })
    }

    /// The open file to write into.
    pub(crate) fn out(&self) -> &File {
        match &self.inner {
            Inner::File(p) => p.file(),
            Inner::Block { file, .. } => file,
        }
    }

    /// Finish: fsync, and for a file rename into place.
    pub(crate) fn commit(mut self) -> Result<(), ImportError> {
        match std::mem::replace(
            &mut self.inner,
            Inner::Block {
                file: File::open("/dev/null")?,
                committed: true,
            },
        ) {
            Inner::File(p) => p.commit()?,
            Inner::Block { file, .. } => file.sync_all()?,
        }
        Ok(())
    }
}

impl Drop for RawTarget {
    fn drop(&mut self) {
        // A file target removes itself (PartialFile). A block device cannot
        // be renamed: wipe its head so it holds no valid-looking disk.
        if let Inner::Block {
            file,
            committed: false,
        } = &self.inner
        {
            let zeros = vec![0u8; (1u64 << 20).min(self.size) as usize];
            let _ = file.write_all_at(&zeros, 0);
            let _ = file.sync_all();
        }
    }
}

/// A directory that appears under its final name only when complete.
pub(crate) struct PartialDir {
    tmp: Option<PathBuf>,
    dst: PathBuf,
}

impl PartialDir {
    /// A temporary directory beside `dst`, which must not exist or be an
    /// empty directory.
    pub(crate) fn create(dst: &Path) -> Result<Self, ImportError> {
        if let Ok(mut rd) = std::fs::read_dir(dst) {
            if rd.next().is_some() {
                return Err(ImportError::Target(format!(
                    "{} is a directory that is not empty",
                    dst.display()
                )));
            }
        } else if dst.exists() {
            return Err(ImportError::Target(format!(
                "{} exists and is not a directory (archive content extracts into a directory)",
                dst.display()
            )));
        }
        let dir = dst
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = dst.file_name().ok_or_else(|| {
            ImportError::Target(format!("{} is not a directory path", dst.display()))
        })?;
        let tmp = dir.join(format!(
            ".{}.virtkit-partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp)?;
        Ok(PartialDir {
            tmp: Some(tmp),
            dst: dst.to_path_buf(),
        })
    }

    /// The directory to fill.
    pub(crate) fn path(&self) -> &Path {
        self.tmp.as_deref().unwrap_or(&self.dst)
    }

    /// Move into place.
    pub(crate) fn commit(mut self) -> Result<(), ImportError> {
        if let Some(tmp) = self.tmp.take() {
            if self.dst.is_dir() {
                std::fs::remove_dir(&self.dst)?;
            }
            std::fs::rename(&tmp, &self.dst)?;
        }
        Ok(())
    }
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_dir_all(tmp);
        }
    }
}
