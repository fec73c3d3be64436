//! A read-only TFTP server for network boot: RFC 1350 transfers of files
//! under one boot directory, with the option extension (RFC 2347) for
//! `blksize` (RFC 2348), `tsize` and `timeout` (RFC 2349). Write requests,
//! paths that leave the directory (`..`, absolute paths escaping it,
//! symlinks pointing out) and unknown modes are refused with TFTP errors.
//!
//! The request parser is a pure function ([`parse_request`]) so the fuzz
//! target and unit tests reach it without sockets.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// TFTP error codes (RFC 1350, 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Not defined, see the message.
    Undefined = 0,
    /// File not found.
    FileNotFound = 1,
    /// Access violation.
    AccessViolation = 2,
    /// Illegal TFTP operation.
    IllegalOperation = 4,
    /// Unknown transfer ID.
    UnknownTid = 5,
    /// Option negotiation failed.
    BadOption = 8,
}

/// Default block size (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Smallest and largest `blksize` (RFC 2348).
pub const BLKSIZE_RANGE: std::ops::RangeInclusive<u16> = 8..=65464;
/// `timeout` range in seconds (RFC 2349).
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u8> = 1..=255;
/// Retransmissions before a transfer is given up.
const RETRIES: u32 = 5;

/// Transfer mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes as they are.
    Octet,
    /// Text with CR LF line ends (LF becomes CR LF, CR becomes CR NUL).
    Netascii,
}

/// A read request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// The file name as sent.
    pub filename: String,
    /// The mode.
    pub mode: Mode,
    /// `blksize` asked for (already checked against the RFC's range).
    pub blksize: Option<u16>,
    /// `tsize` asked for (a read request sends 0).
    pub tsize: Option<u64>,
    /// `timeout` in seconds asked for.
    pub timeout: Option<u8>,
}

/// Why a request is refused: the TFTP error sent back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TFTP error {code:?}: {message}")]
pub struct Refusal {
    /// The error code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// Parse the first packet of a transfer. Only read requests in `octet` or
/// `netascii` mode are accepted; unknown options are ignored, as RFC 2347
/// asks, and an option with a bad value is refused.
pub fn parse_request(packet: &[u8]) -> Result<ReadRequest, Refusal> {
    if packet.len() < 2 {
        return Err(refuse(ErrorCode::IllegalOperation, "short packet"));
    }
    let op = u16::from_be_bytes([packet[0], packet[1]]);
    match op {
        OP_RRQ => {}
        OP_WRQ => {
            return Err(refuse(
                ErrorCode::AccessViolation,
                "this server is read-only",
            ))
        }
        _ => {
            return Err(refuse(
                ErrorCode::IllegalOperation,
                format!("opcode {op} opens no transfer"),
            ))
        }
    }
    let body = &packet[2..];
    if body.last() != Some(&0) {
        return Err(refuse(
            ErrorCode::IllegalOperation,
            "request is not NUL-terminated",
        ));
    }
    let mut fields = body[..body.len() - 1].split(|&b| b == 0);
    let text = |f: Option<&[u8]>, what: &str| -> Result<String, Refusal> {
        let f = f.ok_or_else(|| refuse(ErrorCode::IllegalOperation, format!("no {what}")))?;
        String::from_utf8(f.to_vec())
            .map_err(|_| refuse(ErrorCode::IllegalOperation, format!("{what} is not UTF-8")))
    };
    let filename = text(fields.next(), "file name")?;
    if filename.is_empty() {
        return Err(refuse(ErrorCode::FileNotFound, "empty file name"));
    }
    let mode = match text(fields.next(), "mode")?.to_ascii_lowercase().as_str() {
        "octet" => Mode::Octet,
        "netascii" => Mode::Netascii,
        other => {
            return Err(refuse(
                ErrorCode::IllegalOperation,
                format!("mode {other:?} is not served"),
            ))
        }
    };
    let mut req = ReadRequest {
        filename,
        mode,
        blksize: None,
        tsize: None,
        timeout: None,
    };
    while let Some(name) = fields.next() {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let value = text(fields.next(), &format!("value of option {name:?}"))?;
        let bad = || {
            refuse(
                ErrorCode::BadOption,
                format!("option {name}={value:?} is out of range"),
            )
        };
        match name.as_str() {
            "blksize" => {
                let v: u16 = value.parse().or_else(|_| {
                    // Larger asks are lowered to the largest size (RFC 2348
                    // lets the server answer a smaller one).
                    value
                        .parse::<u64>()
                        .map(|_| *BLKSIZE_RANGE.end())
                        .map_err(|_| bad())
                })?;
                if v < *BLKSIZE_RANGE.start() {
                    return Err(bad());
                }
                req.blksize = Some(v.min(*BLKSIZE_RANGE.end()));
            }
            "tsize" => req.tsize = Some(value.parse().map_err(|_| bad())?),
            "timeout" => {
                let v: u8 = value.parse().map_err(|_| bad())?;
                if !TIMEOUT_RANGE.contains(&v) {
                    return Err(bad());
                }
                req.timeout = Some(v);
            }
            _ => {}
        }
    }
    Ok(req)
}

/// The path under the boot directory that `filename` names: a leading
/// `/` is dropped (PXE ROMs send both forms); `..`, NUL, backslashes and
/// empty names are refused. Symlinks are checked when the file is opened.
pub fn relative_path(filename: &str) -> Result<PathBuf, Refusal> {
    if filename.contains('\0') || filename.contains('\\') {
        return Err(refuse(
            ErrorCode::AccessViolation,
            "bad characters in the file name",
        ));
    }
    let mut out = PathBuf::new();
    for c in Path::new(filename.trim_start_matches('/')).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(
                    ErrorCode::AccessViolation,
                    "the path leaves the boot directory",
                ));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(refuse(ErrorCode::FileNotFound, "no file named"));
    }
    Ok(out)
}

/// Read the file a request names, refusing anything outside `root`
/// (after resolving symlinks).
fn read_file(root: &Path, filename: &str, mode: Mode) -> Result<Vec<u8>, Refusal> {
    let rel = relative_path(filename)?;
    let not_found = || refuse(ErrorCode::FileNotFound, format!("{filename}: no such file"));
    let path = root.join(rel).canonicalize().map_err(|_| not_found())?;
    if !path.starts_with(root) {
        return Err(refuse(
            ErrorCode::AccessViolation,
            "the path leaves the boot directory",
        ));
    }
    if !path.is_file() {
        return Err(not_found());
    }
    let bytes = std::fs::read(&path)
        .map_err(|e| refuse(ErrorCode::AccessViolation, format!("{filename}: {e}")))?;
    Ok(match mode {
        Mode::Octet => bytes,
        Mode::Netascii => {
            let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16);
            for b in bytes {
                match b {
                    b'\n' => out.extend_from_slice(b"\r\n"),
                    b'\r' => out.extend_from_slice(b"\r\0"),
                    _ => out.push(b),
                }
            }
            out
        }
    })
}

fn error_packet(r: &Refusal) -> Vec<u8> {
    let mut p = OP_ERROR.to_be_bytes().to_vec();
    p.extend_from_slice(&(r.code as u16).to_be_bytes());
    p.extend_from_slice(r.message.as_bytes());
    p.push(0);
    p
}

/// What a [`TftpServer`] has done.
#[derive(Debug, Default)]
struct Counters {
    completed: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

/// A running TFTP server; stopped (after its transfers end) when dropped.
#[derive(Debug)]
pub struct TftpServer {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    /// The boot directory is unusable.
    #[error("boot directory {path}: {source}")]
    Root {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The socket could not be bound.
    #[error("TFTP server on {addr}: {source}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl TftpServer {
    /// Serve `root` on `addr` (port 69 for PXE clients), inside the
    /// network namespace at `netns` (`None`: this process's). Each
    /// transfer runs on a thread and socket (its transfer ID) of its own.
    pub fn start(root: &Path, addr: SocketAddr, netns: Option<PathBuf>) -> Result<Self, TftpError> {
        let root = root.canonicalize().map_err(|source| TftpError::Root {
            path: root.to_path_buf(),
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, c) = (stop.clone(), counters.clone());
        let thread = std::thread::Builder::new()
            .name("tftp".into())
            .spawn(move || {
                // Transfer threads spawned from here inherit the namespace.
                let bound = netns
                    .as_deref()
                    .map_or(Ok(()), virtkit_net::netns::enter)
                    .and_then(|()| UdpSocket::bind(addr))
                    .and_then(|sock| {
                        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
                        Ok(sock)
                    });
                let sock = match bound {
                    Ok(sock) => {
                        let _ = tx.send(sock.local_addr());
                        sock
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                serve(&sock, &root, &s, &c);
            })
            .map_err(|source| TftpError::Socket { addr, source })?;
        let local = rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the TFTP thread ended")))
            .map_err(|source| TftpError::Socket { addr, source })?;
        Ok(TftpServer {
            local,
            stop,
            counters,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Transfers that ended with the client's last ACK.
    pub fn completed(&self) -> u64 {
        self.counters.completed.load(Ordering::Relaxed)
    }

    /// Requests refused with a TFTP error.
    pub fn refused(&self) -> u64 {
        self.counters.refused.load(Ordering::Relaxed)
    }

    /// Transfers abandoned after retries ran out.
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }
}

impl Drop for TftpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(sock: &UdpSocket, root: &Path, stop: &Arc<AtomicBool>, counters: &Arc<Counters>) {
    let mut buf = vec![0u8; 1500];
    let local_ip = sock.local_addr().map(|a| a.ip());
    let mut transfers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                transfers.retain(|t| !t.is_finished());
                continue;
            }
            Err(e) => {
                log::error!("TFTP: receiving: {e}");
                break;
            }
        };
        let packet = buf[..n].to_vec();
        let (root, stop, counters) = (root.to_path_buf(), stop.clone(), counters.clone());
        let ip = local_ip
            .as_ref()
            .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |ip| *ip);
        let spawned = std::thread::Builder::new()
            .name("tftp-transfer".into())
            .spawn(move || {
                // A fresh port is the server's transfer ID (RFC 1350 §4).
                let Ok(tid) = UdpSocket::bind(SocketAddr::new(ip, 0)) else {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let outcome = transfer(&tid, peer, &packet, &root, &stop);
                let counter = match outcome {
                    Outcome::Completed => &counters.completed,
                    Outcome::Refused => &counters.refused,
                    Outcome::Failed => &counters.failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            });
        match spawned {
            Ok(t) => transfers.push(t),
            Err(e) => log::error!("TFTP: starting a transfer for {peer}: {e}"),
        }
    }
    for t in transfers {
        let _ = t.join();
    }
}

enum Outcome {
    Completed,
    Refused,
    Failed,
}

/// Serve one request from `peer` over the transfer socket `tid`.
fn transfer(
    tid: &UdpSocket,
    peer: SocketAddr,
    packet: &[u8],
    root: &Path,
    stop: &AtomicBool,
) -> Outcome {
    let refused = |r: Refusal| {
        log::info!("TFTP: {peer}: {}", r.message);
        let _ = tid.send_to(&error_packet(&r), peer);
        Outcome::Refused
    };
    let req = match parse_request(packet) {
        Ok(r) => r,
        Err(r) => return refused(r),
    };
    let data = match read_file(root, &req.filename, req.mode) {
        Ok(d) => d,
        Err(r) => return refused(r),
    };
    let blksize = usize::from(req.blksize.unwrap_or(DEFAULT_BLKSIZE));
    let timeout = Duration::from_secs(u64::from(req.timeout.unwrap_or(1)));
    if tid.set_read_timeout(Some(timeout)).is_err() {
        return Outcome::Failed;
    }
    // The option acknowledgement, answered by ACK 0.
    let mut oack = Vec::new();
    if let Some(b) = req.blksize {
        oack.push(("blksize", b.to_string()));
    }
    if req.tsize.is_some() {
        oack.push(("tsize", data.len().to_string()));
    }
    if let Some(t) = req.timeout {
        oack.push(("timeout", t.to_string()));
    }
    if !oack.is_empty() {
        let mut p = OP_OACK.to_be_bytes().to_vec();
        for (k, v) in &oack {
            p.extend_from_slice(k.as_bytes());
            p.push(0);
            p.extend_from_slice(v.as_bytes());
            p.push(0);
        }
        if !send_and_await_ack(tid, peer, &p, 0, stop) {
            return Outcome::Failed;
        }
    }
    // Blocks 1..=n; the last is shorter than blksize (empty when the
    // size is a multiple). Block numbers wrap past 65535.
    let blocks = data.len() / blksize + 1;
    for i in 0..blocks {
        let chunk = &data[(i * blksize).min(data.len())..((i + 1) * blksize).min(data.len())];
        let number = ((i + 1) % 65536) as u16;
        let mut p = OP_DATA.to_be_bytes().to_vec();
        p.extend_from_slice(&number.to_be_bytes());
        p.extend_from_slice(chunk);
        if !send_and_await_ack(tid, peer, &p, number, stop) {
            return Outcome::Failed;
        }
    }
    Outcome::Completed
}

/// Send `packet` until `peer` acknowledges block `number`; false when
/// retries run out, the peer sends an error, or the server stops.
fn send_and_await_ack(
    tid: &UdpSocket,
    peer: SocketAddr,
    packet: &[u8],
    number: u16,
    stop: &AtomicBool,
) -> bool {
    let mut buf = [0u8; 516];
    for _ in 0..=RETRIES {
        if stop.load(Ordering::Relaxed) || tid.send_to(packet, peer).is_err() {
            return false;
        }
        // A timeout ends the inner loop: send again.
        while let Ok((n, from)) = tid.recv_from(&mut buf) {
            if from != peer {
                let r = refuse(ErrorCode::UnknownTid, "unknown transfer ID");
                let _ = tid.send_to(&error_packet(&r), from);
                continue;
            }
            if n < 4 {
                continue;
            }
            let op = u16::from_be_bytes([buf[0], buf[1]]);
            let block = u16::from_be_bytes([buf[2], buf[3]]);
            match op {
                OP_ACK if block == number => return true,
                // A duplicate ACK of the previous block: ignore it rather
                // than resend (the Sorcerer's Apprentice bug).
                OP_ACK => continue,
                OP_ERROR => return false,
                _ => continue,
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rrq(parts: &[&str]) -> Vec<u8> {
        let mut p = OP_RRQ.to_be_bytes().to_vec();
        for s in parts {
            p.extend_from_slice(s.as_bytes());
            p.push(0);
        }
        p
    }

    #[test]
    fn read_requests_with_options() {
        let r = parse_request(&rrq(&[
            "pxelinux.0",
            "octet",
            "blksize",
            "1428",
            "tsize",
            "0",
            "timeout",
            "3",
            "windowsize",
            "8",
        ]))
        .unwrap();
        assert_eq!(r.filename, "pxelinux.0");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(
            (r.blksize, r.tsize, r.timeout),
            (Some(1428), Some(0), Some(3))
        );
        let r = parse_request(&rrq(&["a", "NETASCII", "BLKSIZE", "99999"])).unwrap();
        assert_eq!((r.mode, r.blksize), (Mode::Netascii, Some(65464)));
    }

    #[test]
    fn bad_requests_are_refused_with_the_right_code() {
        let code = |p: &[u8]| parse_request(p).unwrap_err().code;
        let mut wrq = rrq(&["x", "octet"]);
        wrq[1] = OP_WRQ as u8;
        assert_eq!(code(&wrq), ErrorCode::AccessViolation);
        assert_eq!(code(&rrq(&["x", "mail"])), ErrorCode::IllegalOperation);
        assert_eq!(
            code(&rrq(&["x", "octet", "blksize", "7"])),
            ErrorCode::BadOption
        );
        assert_eq!(
            code(&rrq(&["x", "octet", "timeout", "0"])),
            ErrorCode::BadOption
        );
        assert_eq!(
            code(&rrq(&["x", "octet", "tsize"])),
            ErrorCode::IllegalOperation
        );
        assert_eq!(code(&[0, 1, b'x']), ErrorCode::IllegalOperation);
        assert_eq!(code(&[0, 4, 0, 1]), ErrorCode::IllegalOperation);
        assert_eq!(code(&[0]), ErrorCode::IllegalOperation);
    }

    #[test]
    fn paths_stay_inside_the_boot_directory() {
        assert_eq!(
            relative_path("/pxelinux.cfg/default").unwrap(),
            Path::new("pxelinux.cfg/default")
        );
        assert_eq!(
            relative_path("./efi/grubx64.efi").unwrap(),
            Path::new("efi/grubx64.efi")
        );
        for bad in ["../etc/passwd", "a/../../b", "efi\\..\\x", ""] {
            assert!(relative_path(bad).is_err(), "{bad}");
        }
        assert_eq!(
            relative_path("a/../../b").unwrap_err().code,
            ErrorCode::AccessViolation
        );
    }
}
