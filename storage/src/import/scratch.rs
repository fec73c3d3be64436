//! Scratch space: a directory on a filesystem where an import that needs
//! random access it cannot get from its source (a compressed qcow2, a
//! registry layer, an upload body) first stores the image. A scratch file
//! is removed on success, failure, cancel and unwinding (drop guard);
//! leftovers of a crashed process are recognised by their name prefix and
//! removed by [`ScratchSpace::clean_stale`].

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{CancelHandle, ImportError};

/// Name prefix of every scratch file.
pub const SCRATCH_PREFIX: &str = ".virtkit-scratch-";

/// Where scratch files go, and how long to wait for free space.
#[derive(Debug, Clone)]
pub struct ScratchSpace {
    /// A directory on a filesystem (ST-18).
    pub dir: PathBuf,
    /// How long to stay `Pending` for free space before failing (ST-19).
    pub wait_timeout: Duration,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl ScratchSpace {
    /// Scratch in `dir`, waiting up to a minute for space.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ScratchSpace {
            dir: dir.into(),
            wait_timeout: Duration::from_secs(60),
        }
    }

    /// Check the directory (ST-18).
    pub fn check(&self) -> Result<(), ImportError> {
        let meta = std::fs::metadata(&self.dir)
            .map_err(|e| ImportError::Scratch(format!("{}: {e}", self.dir.display())))?;
        if !meta.is_dir() {
            return Err(ImportError::Scratch(format!(
                "{} is not a directory on a filesystem",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Free bytes for an unprivileged writer.
    pub fn free_bytes(&self) -> Result<u64, ImportError> {
        free_bytes(&self.dir)
            .map_err(|e| ImportError::Scratch(format!("{}: {e}", self.dir.display())))
    }

    /// Create a scratch file once `needed` bytes are free, calling
    /// `waiting(free)` while it waits (the import is `Pending`).
    pub(crate) fn reserve(
        &self,
        needed: u64,
        cancel: &CancelHandle,
        waiting: &mut dyn FnMut(u64),
    ) -> Result<ScratchFile, ImportError> {
        self.check()?;
        let start = Instant::now();
        loop {
            let free = self.free_bytes()?;
            if free >= needed {
                break;
            }
            if start.elapsed() >= self.wait_timeout {
                return Err(ImportError::NoScratchSpace {
                    needed,
                    free,
                    dir: self.dir.display().to_string(),
                    waited_s: start.elapsed().as_secs(),
                });
            }
            waiting(free);
            if cancel.is_cancelled() {
                return Err(ImportError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(200).min(self.wait_timeout));
        }
        let path = self.dir.join(format!(
            "{SCRATCH_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| ImportError::Scratch(format!("{}: {e}", path.display())))?;
        Ok(ScratchFile { path, file })
    }

    /// Remove scratch files left by processes that no longer run; returns
    /// how many were removed.
    pub fn clean_stale(&self) -> Result<usize, ImportError> {
        let mut removed = 0;
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| ImportError::Scratch(format!("{}: {e}", self.dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(SCRATCH_PREFIX)) else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer
    // for the duration of the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// A scratch file, removed when dropped.
#[derive(Debug)]
pub(crate) struct ScratchFile {
    path: PathBuf,
    /// Open read-write.
    pub file: File,
}

impl ScratchFile {
    /// Where it is.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("virtkit-scratch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn scratch_files_go_away_and_stale_ones_are_cleaned() {
        let d = dir("guard");
        let s = ScratchSpace::new(&d);
        let f = s.reserve(1, &CancelHandle::new(), &mut |_| {}).unwrap();
        assert!(f.path().exists());
        assert_eq!(s.clean_stale().unwrap(), 0, "our own file is alive");
        drop(f);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        // A leftover of a process that is gone (pid 0 never names one).
        std::fs::write(d.join(format!("{SCRATCH_PREFIX}0-7")), b"x").unwrap();
        std::fs::write(d.join("keep.img"), b"x").unwrap();
        assert_eq!(s.clean_stale().unwrap(), 1);
        assert!(d.join("keep.img").exists());
    }

    #[test]
    fn not_a_directory_and_no_space_are_errors() {
        let d = dir("bad");
        let file = d.join("f");
        std::fs::write(&file, b"x").unwrap();
        let e = ScratchSpace::new(&file).check().unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let s = ScratchSpace {
            dir: d.clone(),
            wait_timeout: Duration::from_millis(300),
        };
        let mut waits = 0;
        let e = s
            .reserve(u64::MAX, &CancelHandle::new(), &mut |_| waits += 1)
            .unwrap_err();
        assert!(matches!(e, ImportError::NoScratchSpace { .. }), "{e}");
        assert!(waits >= 1, "stayed Pending while waiting");
    }
}
