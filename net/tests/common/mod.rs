//! Helpers of the networking tests: shell commands, namespaces, a frame
//! relay between two taps (the "VMM"), TCP greeters.

#![allow(clippy::unwrap_used, dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use virtkit_net::netns;

pub fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success())
}

pub fn out(cmd: &str) -> String {
    let o = Command::new("sh").args(["-c", cmd]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// Root and `ip`, `nft`, `udhcpc`; says what is missing.
pub fn ready() -> bool {
    if !is_root() {
        eprintln!("SKIP: needs root for network namespaces");
        return false;
    }
    for tool in ["ip", "nft", "udhcpc"] {
        if !sh(&format!(
            "command -v {tool} >/dev/null || test -x /usr/sbin/{tool}"
        )) {
            eprintln!("SKIP: {tool} is not installed");
            return false;
        }
    }
    true
}

/// Copies frames between two tap fds until stopped: the "VMM".
pub struct Relay {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Relay {
    pub fn start(a: std::fs::File, b: std::fs::File) -> Relay {
        let stop = Arc::new(AtomicBool::new(false));
        let (a, b) = (Arc::new(a), Arc::new(b));
        let pump = |from: Arc<std::fs::File>, to: Arc<std::fs::File>, stop: Arc<AtomicBool>| {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd: from.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: poll on one valid pollfd for the call.
                    if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
                        continue;
                    }
                    match (&*from).read(&mut buf) {
                        Ok(n) if n > 0 => {
                            let _ = (&*to).write(&buf[..n]);
                        }
                        _ => {}
                    }
                }
            })
        };
        let threads = vec![
            pump(Arc::clone(&a), Arc::clone(&b), Arc::clone(&stop)),
            pump(b, a, Arc::clone(&stop)),
        ];
        Relay { stop, threads }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A listener in namespace `ns` on `port` (IPv6 and IPv4) that answers each connection
/// with `hello-<port>`.
pub fn serve(ns: &Path, port: u16) {
    let l = netns::run_in(Some(ns), move || TcpListener::bind(("::", port))).unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(format!("hello-{port}").as_bytes());
        }
    });
}

/// Connect from namespace `ns` to `to` and read the greeting.
pub fn fetch(ns: &Path, to: SocketAddr) -> Option<String> {
    netns::run_in(Some(ns), move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(700))?;
        s.set_read_timeout(Some(Duration::from_millis(700)))?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })
    .ok()
    .filter(|t| !t.is_empty())
}

/// [`fetch`] until it answers, up to about 5 s: the first packets to a
/// new neighbour wait on ARP / neighbour discovery. For the positive
/// checks only (a negative one must fail at once, every time).
pub fn fetch_eventually(ns: &Path, to: SocketAddr) -> Option<String> {
    for _ in 0..6 {
        if let Some(t) = fetch(ns, to) {
            return Some(t);
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    None
}

/// Deletes these network namespaces when dropped (a test's world).
pub struct NetnsGuard(pub Vec<String>);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for n in &self.0 {
            sh(&format!("ip netns del {n} 2>/dev/null"));
        }
    }
}

/// The "VMM": tap `binding_tap` in namespace `host` wired by a relay to
/// the guest namespace's `eth0` tap, which is created on first use and
/// made persistent (the guest keeps its address when the relay is
/// rewired).
pub fn wire(host: &Path, binding_tap: &str, guest: &Path) -> Relay {
    let t = binding_tap.to_string();
    let ours = netns::run_in(Some(host), move || virtkit_net::tap::open(&t, false, false)).unwrap();
    let theirs = netns::run_in(Some(guest), || {
        let f = virtkit_net::tap::open("eth0", false, false)?;
        virtkit_net::tap::persist(&f)?;
        Ok(f)
    })
    .unwrap();
    Relay::start(ours, theirs)
}
