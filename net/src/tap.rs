//! Tap devices through `/dev/net/tun` (the ioctls live with virtio-net's
//! `TapBackend` in `virtkit-devices`); [`open_backends`] hands a tap to a
//! virtio-net device.

use std::fs::File;

/// Open (creating it if absent) tap `name` in the calling thread's
/// network namespace. `vnet_hdr`: frames carry a virtio-net header;
/// `multi_queue` must match how the tap was created.
pub fn open(name: &str, vnet_hdr: bool, multi_queue: bool) -> std::io::Result<File> {
    virtkit_devices::virtio::net::open_tap(name, vnet_hdr, multi_queue)
}

/// Create tap `name` so that it outlives this process's file descriptor
/// (a VMM attaches to it later by name).
pub fn create_persistent(name: &str, multi_queue: bool) -> std::io::Result<()> {
    persist(&open(name, true, multi_queue)?)
}

/// Keep the tap `f` is attached to after every descriptor is closed.
pub fn persist(f: &File) -> std::io::Result<()> {
    virtkit_devices::virtio::net::persist_tap(f)
}

/// Open tap `name` (creating it if absent) for a virtio-net device with
/// `queue_pairs` pairs: one
/// [`TapBackend`](virtkit_devices::virtio::net::TapBackend) per pair, multi-queue when
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
