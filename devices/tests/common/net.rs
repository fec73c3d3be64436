//! A virtio-net backend of the tests' own over a Unix datagram socket
//! pair (the seam a VMM plugs its own switch into).

#![allow(dead_code, clippy::unwrap_used)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtkit_devices::virtio::net::{NetBackend, Offloads};

/// One end of a datagram socket pair; the test holds the other.
pub struct SocketBackend {
    pub socket: UnixDatagram,
    pub offloads: bool,
    /// Every `set_enabled` call, in order.
    pub enabled: Mutex<Vec<bool>>,
}

impl NetBackend for SocketBackend {
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        self.socket.send(frame).map(|_| ())
    }
    fn receive(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.recv(buf)
    }
    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
    fn offloads_supported(&self) -> bool {
        self.offloads
    }
    fn set_offloads(&self, _offloads: Offloads) -> io::Result<()> {
        Ok(())
    }
    fn set_enabled(&self, enabled: bool) -> io::Result<()> {
        self.enabled.lock().unwrap().push(enabled);
        Ok(())
    }
}

/// A backend and the test's end of its socket (5 s read timeout).
pub fn backend(offloads: bool) -> (Arc<SocketBackend>, UnixDatagram) {
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    theirs
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let b = Arc::new(SocketBackend {
        socket: ours,
        offloads,
        enabled: Mutex::default(),
    });
    (b, theirs)
}
