//! Descriptor chains for virtio-queue's mock split queues, as a guest
//! driver lays them out. Shared with `virtkit-net`'s tap test by path.

#![allow(dead_code, clippy::unwrap_used)]

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtkit_core::runtime::memory::GuestMem;

/// Descriptor flag: another descriptor follows.
pub const DESC_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const DESC_WRITE: u16 = 2;

/// Put the chain `descs` (address, length, flags; linked with
/// `DESC_NEXT`) at descriptor `first` of the mock `queue` of `size`
/// entries and make it available; returns the next free descriptor.
pub fn add_chain(
    queue: &MockSplitQueue<'_, GuestMem>,
    first: u16,
    size: u16,
    descs: &[(u64, u32, u16)],
) -> u16 {
    let n = descs.len() as u16;
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let i = i as u16;
            let (flags, next) = if i + 1 < n {
                (flags | DESC_NEXT, (first + i + 1) % size)
            } else {
                (flags, 0)
            };
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
        .collect();
    queue.add_desc_chains(&raw, first).unwrap();
    (first + n) % size
}
