//! Where a virtio-net queue pair's frames go: the [`NetBackend`] seam,
//! [`TapBackend`], the backend over a Linux tap queue, and the tun ioctls
//! that open and keep taps ([`open_tap`], [`persist_tap`]).
//!
//! Every frame crossing the seam starts with the 12-byte
//! `virtio_net_hdr_v1` (flags, gso_type, hdr_len, gso_size, csum_start,
//! csum_offset, num_buffers), exactly what a tap with `IFF_VNET_HDR`
//! reads and writes, so the tap path copies nothing extra.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Length of the virtio-net header before every frame (virtio 1.x).
pub const NET_HDR_LEN: usize = 12;

/// Receive offloads the guest accepted: which partial frames (checksum
/// not filled in, or not yet segmented) the backend may hand it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Frames whose checksum the guest completes (GUEST_CSUM).
    pub csum: bool,
    /// TCP/IPv4 frames larger than the MTU (GUEST_TSO4).
    pub tso4: bool,
    /// TCP/IPv6 frames larger than the MTU (GUEST_TSO6).
    pub tso6: bool,
    /// TSO frames with ECN (GUEST_ECN).
    pub ecn: bool,
}

/// One queue pair's frame transport. Implement it to plug a VMM's own
/// switch or socket in place of a tap. `Send + Sync`: the vCPU thread
/// sends while the device's receive thread receives.
pub trait NetBackend: Send + Sync {
    /// Send one frame (header first) toward the network. Frames arrive
    /// whole; a backend that cannot take one now may drop it.
    fn send(&self, frame: &[u8]) -> io::Result<()>;
    /// Receive one frame (header first) into `buf` without blocking;
    /// `ErrorKind::WouldBlock` when none is waiting.
    fn receive(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// A descriptor that polls readable while a frame is waiting.
    fn ready_fd(&self) -> BorrowedFd<'_>;
    /// Whether the backend understands checksum and segmentation offload
    /// headers; only then does the device offer offload features.
    fn offloads_supported(&self) -> bool {
        false
    }
    /// Which partial frames the guest accepted (called on activation).
    fn set_offloads(&self, _offloads: Offloads) -> io::Result<()> {
        Ok(())
    }
    /// Start or stop traffic on this pair (the driver changed the number
    /// of pairs it uses); a stopped pair should receive nothing.
    fn set_enabled(&self, _enabled: bool) -> io::Result<()> {
        Ok(())
    }
}

/// A backend with no network behind it: sent frames are dropped and
/// nothing ever arrives (a NIC with its cable out, or one placed on a bus
/// only to be enumerated).
#[derive(Debug)]
pub struct Disconnected {
    /// One end of a socket pair whose other end is never written.
    never: std::os::unix::net::UnixDatagram,
    _silent: std::os::unix::net::UnixDatagram,
}

impl Disconnected {
    /// A disconnected backend.
    pub fn new() -> io::Result<Self> {
        let (never, silent) = std::os::unix::net::UnixDatagram::pair()?;
        Ok(Disconnected {
            never,
            _silent: silent,
        })
    }
}

impl NetBackend for Disconnected {
    fn send(&self, _frame: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn receive(&self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.never.as_fd()
    }
}

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 203, int)`.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOR('T', 210, unsigned int)`.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `_IOW('T', 217, int)`.
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const IFF_MULTI_QUEUE: i16 = 0x0100;
const IFF_ATTACH_QUEUE: i16 = 0x0200;
const IFF_DETACH_QUEUE: i16 = 0x0400;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;
const TUN_F_TSO_ECN: libc::c_ulong = 0x08;

/// `struct ifreq` as the tun ioctls use it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(flags: i16) -> Self {
        IfReq {
            name: [0; libc::IFNAMSIZ],
            flags,
            _pad: [0; 22],
        }
    }
}

/// Open (creating it if absent) tap `name` in the calling thread's
/// network namespace. `vnet_hdr`: frames carry a virtio-net header (what
/// [`TapBackend`] needs); `multi_queue` must match how the tap was
/// created. No crate covers a persistent tap attached to by name with
/// these flags (rtnetlink cannot create taps), so these are ioctls by
/// hand, all of them here.
pub fn open_tap(name: &str, vnet_hdr: bool, multi_queue: bool) -> io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} must be 1–15 bytes"),
        ));
    }
    let f = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq::new(IFF_TAP | IFF_NO_PI);
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    if vnet_hdr {
        req.flags |= IFF_VNET_HDR;
    }
    if multi_queue {
        req.flags |= IFF_MULTI_QUEUE;
    }
    tap_ioctl(&f, TUNSETIFF, &mut req as *mut IfReq)?;
    Ok(f)
}

/// Keep the tap `tap` is attached to after every descriptor is closed.
pub fn persist_tap(tap: &File) -> io::Result<()> {
    tap_ioctl(tap, TUNSETPERSIST, 1 as libc::c_ulong)
}

/// One queue of a tap device, opened with `IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR` (`virtkit_net::tap::open(name, true, multi_queue)`
/// opens one).
#[derive(Debug)]
pub struct TapBackend {
    tap: File,
    multi_queue: bool,
    attached: AtomicBool,
}

/// `ioctl(fd, request, arg)` on the tap, as an `io::Result`.
fn tap_ioctl<T>(tap: &File, request: libc::c_ulong, arg: T) -> io::Result<()> {
    // SAFETY: callers pass the argument each tun ioctl expects: a pointer
    // to a live `IfReq` or `c_int` (which the kernel may write back), or
    // an integer by value.
    if unsafe { libc::ioctl(tap.as_raw_fd(), request, arg) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl TapBackend {
    /// Serve frames through `tap`: checks that it carries virtio-net
    /// headers, sets their length to [`NET_HDR_LEN`] and makes it
    /// non-blocking.
    pub fn new(tap: File) -> io::Result<Self> {
        let mut req = IfReq::new(0);
        tap_ioctl(&tap, TUNGETIFF, &mut req as *mut IfReq)?;
        let needed = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if req.flags & needed != needed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the tap must be opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR",
            ));
        }
        let len = NET_HDR_LEN as libc::c_int;
        tap_ioctl(&tap, TUNSETVNETHDRSZ, &len as *const libc::c_int)?;
        // SAFETY: F_GETFL on a descriptor we own; no memory involved.
        let flags = unsafe { libc::fcntl(tap.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: F_SETFL with an integer argument; no memory involved.
        if unsafe { libc::fcntl(tap.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TapBackend {
            tap,
            multi_queue: req.flags & IFF_MULTI_QUEUE != 0,
            attached: AtomicBool::new(true),
        })
    }
}

impl NetBackend for TapBackend {
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let n = (&self.tap).write(frame)?;
        if n != frame.len() {
            return Err(io::Error::other(format!(
                "the tap took {n} of {} bytes",
                frame.len()
            )));
        }
        Ok(())
    }

    fn receive(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.tap).read(buf)
    }

    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.tap.as_fd()
    }

    fn offloads_supported(&self) -> bool {
        true
    }

    fn set_offloads(&self, offloads: Offloads) -> io::Result<()> {
        let mut flags = 0;
        if offloads.csum {
            flags |= TUN_F_CSUM;
            // The tap segments nothing for us: TSO needs checksums too.
            if offloads.tso4 {
                flags |= TUN_F_TSO4;
            }
            if offloads.tso6 {
                flags |= TUN_F_TSO6;
            }
            if offloads.ecn && (offloads.tso4 || offloads.tso6) {
                flags |= TUN_F_TSO_ECN;
            }
        }
        tap_ioctl(&self.tap, TUNSETOFFLOAD, flags)
    }

    fn set_enabled(&self, enabled: bool) -> io::Result<()> {
        // A single-queue tap has no queue to detach; a stopped pair of it
        // is never used by the driver.
        if !self.multi_queue || self.attached.load(Ordering::SeqCst) == enabled {
            return Ok(());
        }
        let mut req = IfReq::new(if enabled {
            IFF_ATTACH_QUEUE
        } else {
            IFF_DETACH_QUEUE
        });
        tap_ioctl(&self.tap, TUNSETQUEUE, &mut req as *mut IfReq)?;
        self.attached.store(enabled, Ordering::SeqCst);
        Ok(())
    }
}
