//! Running code inside a network namespace. `setns(2)` changes the
//! namespace of the calling thread only, so the work runs on a thread of
//! its own that enters the namespace first; sockets it creates stay in
//! that namespace for their whole life.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Where `ip netns add NAME` puts a named namespace.
pub fn named(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Move the calling thread into the network namespace at `path` (a
/// `/run/netns/NAME` or `/proc/PID/ns/net` file).
pub fn enter(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: setns on an fd we own; it changes this thread's namespace
    // and touches no memory of ours.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Run `f` on a new thread inside the namespace at `path` (or in this
/// process's namespace for `None`) and return its result.
pub fn run_in<T: Send + 'static>(
    path: Option<&Path>,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let path = path.map(Path::to_path_buf);
    std::thread::spawn(move || {
        if let Some(p) = &path {
            enter(p)?;
        }
        f()
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("a namespace thread panicked")))
}
