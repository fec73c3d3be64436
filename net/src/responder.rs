//! The socket loop shared by the DHCP servers: read a datagram, compute
//! the answer (a pure function), send it, until stopped. Stopped and
//! joined on drop.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A thread answering datagrams on one socket.
#[derive(Debug)]
pub(crate) struct Responder {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    /// Serve `sock` (which must have a read timeout, so the loop sees a
    /// stop): `answer(packet, from)` gives the bytes to send and where.
    /// `what` names the server in log lines.
    pub(crate) fn start(
        sock: UdpSocket,
        what: String,
        mut answer: impl FnMut(&[u8], SocketAddr) -> Option<(Vec<u8>, SocketAddr)> + Send + 'static,
    ) -> std::io::Result<Self> {
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let (stop2, answered2) = (Arc::clone(&stop), Arc::clone(&answered));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop2.load(Ordering::Relaxed) {
                let (n, from) = match sock.recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue
                    }
                    Err(e) => {
                        log::warn!("{what}: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if let Some((bytes, to)) = answer(&buf[..n], from) {
                    match sock.send_to(&bytes, to) {
                        Ok(_) => {
                            answered2.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => log::warn!("{what}: reply to {to}: {e}"),
                    }
                }
            }
        });
        Ok(Responder {
            stop,
            answered,
            thread: Some(thread),
        })
    }

    /// Replies sent so far.
    pub(crate) fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
