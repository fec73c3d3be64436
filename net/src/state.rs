//! A JSON state file shared by every process that opens the same path:
//! each change takes an exclusive `flock` on `<file>.lock`, reads the
//! file, changes it and writes it back (temporary name, fsync, rename)
//! before returning. The MAC pool and the VF allocator keep their state
//! this way, so a restart or a second process never hands out twice.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A state file holding a `T` (its `Default` when absent).
#[derive(Debug, Clone)]
pub(crate) struct StateFile {
    path: PathBuf,
}

/// Holds the lock file locked while alive.
struct Locked(File);

impl Drop for Locked {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on an fd we own; no memory is involved.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl StateFile {
    pub(crate) fn new(path: impl Into<PathBuf>) -> Self {
        StateFile { path: path.into() }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::io::Result<Locked> {
        use std::os::fd::AsRawFd;
        let mut name = self.path.clone().into_os_string();
        name.push(".lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&name)?;
        // SAFETY: flock on an fd we own; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Locked(f))
    }

    fn load<T: serde::de::DeserializeOwned + Default>(&self) -> std::io::Result<T> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(e),
        }
    }

    fn save<T: serde::Serialize>(&self, state: &T) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Read the state under the lock.
    pub(crate) fn read<T: serde::de::DeserializeOwned + Default>(&self) -> std::io::Result<T> {
        let _lock = self.lock()?;
        self.load()
    }

    /// Run `change` on the state under the lock and save it when it
    /// succeeds; on its error nothing is saved. The outer error is the
    /// file's, the inner one `change`'s.
    pub(crate) fn update<T, R, E>(
        &self,
        change: impl FnOnce(&mut T) -> Result<R, E>,
    ) -> std::io::Result<Result<R, E>>
    where
        T: serde::de::DeserializeOwned + serde::Serialize + Default,
    {
        let _lock = self.lock()?;
        let mut state: T = self.load()?;
        match change(&mut state) {
            Ok(r) => {
                self.save(&state)?;
                Ok(Ok(r))
            }
            Err(e) => Ok(Err(e)),
        }
    }
}
