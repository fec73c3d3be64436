//! `source.pvc`: copy another volume (file or block device) into the
//! target (file or block device), keeping holes: only the source's data
//! extents are read (SEEK_DATA/SEEK_HOLE) and zero blocks are not written.
//! Refused before copying (ST-14): a missing source, a target smaller than
//! the source, the source as its own target; and (ST-15) a source that a
//! running VM holds read-write, seen through its [`VolumeLock`].

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::target::{block_device_size, is_block_device};
use super::{copy_extents, ImportError, Job, Phase};

/// An advisory `flock` on a volume: a VMM holds it exclusive while a VM
/// has the volume attached read-write; a clone takes it shared, so it
/// fails with "source in use" instead of copying a disk being written.
#[derive(Debug)]
pub struct VolumeLock {
    file: File,
    path: PathBuf,
}

impl VolumeLock {
    fn take(path: &Path, op: libc::c_int) -> std::io::Result<Self> {
        let file = File::open(path)?;
        // SAFETY: flock on an open fd has no memory effects.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(VolumeLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Hold `path` exclusively (a VM attached it read-write). Fails with
    /// `WouldBlock` if anyone holds it.
    pub fn exclusive(path: &Path) -> std::io::Result<Self> {
        Self::take(path, libc::LOCK_EX)
    }

    /// Hold `path` shared (a reader such as a clone). Fails with
    /// `WouldBlock` while someone holds it exclusively.
    pub fn shared(path: &Path) -> std::io::Result<Self> {
        Self::take(path, libc::LOCK_SH)
    }

    /// The locked path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for VolumeLock {
    fn drop(&mut self) {
        // SAFETY: flock on an open fd has no memory effects.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

pub(super) fn clone(job: &mut Job<'_>, source: &Path) -> Result<(), ImportError> {
    job.rep.phase(Phase::CloneScheduled, "");
    if !source.exists() {
        return Err(ImportError::Clone(format!(
            "source volume {} does not exist",
            source.display()
        )));
    }
    let same = match (source.canonicalize(), job.target.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(ImportError::Clone(
            "the source volume is the target itself".into(),
        ));
    }
    let _lock = VolumeLock::shared(source).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            ImportError::Clone(format!(
                "source {} in use: attached read-write to a running VM",
                source.display()
            ))
        } else {
            ImportError::Clone(format!("{}: {e}", source.display()))
        }
    })?;
    let src = File::open(source)?;
    let len = if is_block_device(source) {
        block_device_size(&src)?
    } else {
        src.metadata()?.len()
    };
    if len > job.size {
        return Err(ImportError::Clone(format!(
            "target size {} is smaller than source {} ({len} bytes)",
            job.size,
            source.display()
        )));
    }
    job.rep.phase(Phase::CloneInProgress, "");
    job.rep.total(Some(len));
    let t = job.raw_target()?;
    let rep = &job.rep;
    let data = copy_extents(&src, len, t.out(), job.cancel(), &mut |d| rep.done(d))?;
    job.out.virtual_size = len;
    job.out.source_bytes = len;
    job.out.data_bytes = data;
    t.commit()
}
