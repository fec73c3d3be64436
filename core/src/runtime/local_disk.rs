//! Disks whose contents travel with the guest: KubeVirt's
//! `BlockMigration`, chosen when a VM has disks only its host holds (a
//! `containerDisk` overlay, an `emptyDisk`, an `ephemeral` volume). The
//! migration copies such a disk as it copies RAM: everything once, then
//! what the guest wrote meanwhile, pass after pass, and the rest while
//! the VM is paused.
//!
//! Core knows no block devices, so the seam is this small trait; the
//! devices crate's `TrackedDisk` implements it over any block backend,
//! marking the chunks that writes touch. A disk is registered on the `Vm`
//! under a stable id with [`Vm::add_migrating_disk`](super::Vm::add_migrating_disk);
//! the target registers a disk of the same size under the same id.

use std::io;
use std::sync::Arc;

/// The granularity of dirty tracking: a write anywhere in a chunk sends
/// the whole chunk again.
pub const DISK_CHUNK: u64 = 64 << 10;

/// A disk that migrates with its contents.
pub trait MigratingDisk: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write `buf` at `offset` (on a target, not yet running).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The range reads as zeroes afterwards (on a target).
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Make what was written durable.
    fn flush(&self) -> io::Result<()>;
    /// Start recording which [`DISK_CHUNK`]s writes touch, from a clean
    /// slate.
    fn start_tracking(&self);
    /// Stop recording (the migration ended either way).
    fn stop_tracking(&self);
    /// The chunks written since tracking started or since the last call,
    /// one bit per chunk (bit `i % 64` of word `i / 64`); clears them.
    fn take_dirty(&self) -> Vec<u64>;
}

/// A shared handle to a migrating disk.
pub type SharedDisk = Arc<dyn MigratingDisk>;

/// Number of [`DISK_CHUNK`]s in a disk of `size` bytes.
pub fn chunks(size: u64) -> u64 {
    size.div_ceil(DISK_CHUNK)
}
