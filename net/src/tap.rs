//! Tap devices through `/dev/net/tun`. No crate covers creating a
//! persistent tap and attaching to one by name with the flags a VMM needs
//! (rtnetlink cannot create taps), so these are two ioctls by hand.
//! [`open_backends`] hands the tap to a virtio-net device.

use std::fs::File;
use std::os::fd::AsRawFd;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 203, int)`.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const IFF_MULTI_QUEUE: i16 = 0x0100;

/// `struct ifreq` as TUNSETIFF reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

/// Open (creating it if absent) tap `name` in the calling thread's
/// network namespace. `vnet_hdr`: frames carry a virtio-net header;
/// `multi_queue` must match how the tap was created.
pub fn open(name: &str, vnet_hdr: bool, multi_queue: bool) -> std::io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("interface name {name:?} must be 1–15 bytes"),
        ));
    }
    let f = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    if vnet_hdr {
        req.flags |= IFF_VNET_HDR;
    }
    if multi_queue {
        req.flags |= IFF_MULTI_QUEUE;
    }
    // SAFETY: TUNSETIFF reads (and may write back the name of) one
    // `struct ifreq`, which `req` is, valid for the call.
    if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// Create tap `name` so that it outlives this process's file descriptor
/// (a VMM attaches to it later by name).
pub fn create_persistent(name: &str, multi_queue: bool) -> std::io::Result<()> {
    persist(&open(name, true, multi_queue)?)
}

/// Keep the tap `f` is attached to after every descriptor is closed.
pub fn persist(f: &File) -> std::io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an integer argument; no memory is read.
    if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Open tap `name` (creating it if absent) for a virtio-net device with
/// `queue_pairs` pairs: one [`TapBackend`] per pair, multi-queue when
/// there is more than one (KubeVirt's `networkInterfaceMultiqueue`).
pub fn open_backends(
    name: &str,
    queue_pairs: usize,
) -> std::io::Result<Vec<std::sync::Arc<dyn virtkit_devices::virtio::net::NetBackend>>> {
    use virtkit_devices::virtio::net::{NetBackend, TapBackend};
    (0..queue_pairs.max(1))
        .map(|_| {
            let backend = TapBackend::new(open(name, true, queue_pairs > 1)?)?;
            Ok(std::sync::Arc::new(backend) as std::sync::Arc<dyn NetBackend>)
        })
        .collect()
}
