//! Transports: anything that reads and writes bytes in order and can be shut
//! down from another thread (to cancel a blocked transfer). TCP (bindable to
//! a chosen local address, for a dedicated migration network) and unix
//! sockets are provided; users can bring their own.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// A migration connection.
pub trait MigrationStream: Read + Write + Send {
    /// Close both directions now; blocked reads and writes fail.
    fn shutdown(&self) -> io::Result<()>;
    /// Another handle to the same connection (used to cancel).
    fn try_clone_stream(&self) -> io::Result<Box<dyn MigrationStream>>;
    /// The socket, when the stream is one with nothing buffered in
    /// between: guest pages then move between RAM and the socket with no
    /// copy in user space. `None` (the default) sends them through
    /// `Read`/`Write` with a buffer.
    fn as_socket(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

impl MigrationStream for TcpStream {
    fn shutdown(&self) -> io::Result<()> {
        TcpStream::shutdown(self, Shutdown::Both)
    }
    fn try_clone_stream(&self) -> io::Result<Box<dyn MigrationStream>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn as_socket(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
}

impl MigrationStream for UnixStream {
    fn shutdown(&self) -> io::Result<()> {
        UnixStream::shutdown(self, Shutdown::Both)
    }
    fn try_clone_stream(&self) -> io::Result<Box<dyn MigrationStream>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn as_socket(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
}

/// Where to connect or listen: `tcp:HOST:PORT`, `unix:PATH`, or a bare
/// `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP.
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(PathBuf::from(p)));
        }
        let addr = s.strip_prefix("tcp:").unwrap_or(s);
        addr.parse()
            .map(Endpoint::Tcp)
            .map_err(|e| format!("{s:?} is not tcp:HOST:PORT, HOST:PORT or unix:PATH ({e})"))
    }
}

/// Connect to `to`, for TCP optionally from local address `bind` (the
/// address on the migration network).
pub fn connect(to: &Endpoint, bind: Option<SocketAddr>) -> io::Result<Box<dyn MigrationStream>> {
    match to {
        Endpoint::Unix(p) => Ok(Box::new(UnixStream::connect(p)?)),
        Endpoint::Tcp(addr) => {
            let stream = match bind {
                None => TcpStream::connect(addr)?,
                Some(local) => connect_from(local, *addr)?,
            };
            stream.set_nodelay(true)?;
            Ok(Box::new(stream))
        }
    }
}

fn connect_from(local: SocketAddr, remote: SocketAddr) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let domain = if remote.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own; TcpStream takes ownership and
    // closes it on drop (also on the error paths below).
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let (sa, len) = sockaddr(&local);
    // SAFETY: `sa` is a valid sockaddr of `len` bytes for this family.
    if unsafe { libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (sa, len) = sockaddr(&remote);
    // SAFETY: as above.
    if unsafe { libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

fn sockaddr(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// A listening endpoint that accepts one migration at a time.
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix socket (the path is removed when dropped).
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Listen on `at`.
    pub fn bind(at: &Endpoint) -> io::Result<Listener> {
        match at {
            Endpoint::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a)?)),
            Endpoint::Unix(p) => {
                if Path::new(p).exists() {
                    std::fs::remove_file(p)?;
                }
                Ok(Listener::Unix(UnixListener::bind(p)?, p.clone()))
            }
        }
    }

    /// The bound endpoint (with the real port for `:0`).
    pub fn local_endpoint(&self) -> io::Result<Endpoint> {
        match self {
            Listener::Tcp(l) => Ok(Endpoint::Tcp(l.local_addr()?)),
            Listener::Unix(_, p) => Ok(Endpoint::Unix(p.clone())),
        }
    }

    /// Wait for one connection.
    pub fn accept(&self) -> io::Result<Box<dyn MigrationStream>> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Ok(Box::new(s))
            }
            Listener::Unix(l, _) => Ok(Box::new(l.accept()?.0)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "tcp:127.0.0.1:80".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            "[::1]:80".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            "unix:/tmp/x".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/tmp/x".into())
        );
        assert!("nonsense".parse::<Endpoint>().is_err());
    }

    #[test]
    fn connect_binds_to_the_migration_network_address() {
        // 127.0.0.2 stands in for the address on a dedicated network.
        let l = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
        let to = l.local_endpoint().unwrap();
        let Listener::Tcp(tcp) = &l else { panic!() };
        let tcp = tcp.try_clone().unwrap();
        let accept = std::thread::spawn(move || tcp.accept().unwrap().1);
        let _c = connect(&to, Some("127.0.0.2:0".parse().unwrap())).unwrap();
        let peer = accept.join().unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.2");
    }

    #[test]
    fn unix_listener_accepts_and_cleans_up() {
        let path = std::env::temp_dir().join(format!("virtkit-mig-{}.sock", std::process::id()));
        let at = Endpoint::Unix(path.clone());
        let l = Listener::bind(&at).unwrap();
        let t = std::thread::spawn(move || connect(&at, None).map(|_| ()));
        let _s = l.accept().unwrap();
        t.join().unwrap().unwrap();
        drop(l);
        assert!(!path.exists());
    }
}
