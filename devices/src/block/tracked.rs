//! A block backend that remembers which chunks writes touched, so that a
//! migration can copy a local disk while the guest keeps writing it
//! (`BlockMigration`). The guest's devices use it as any backend; the
//! migration engine sees it as a [`MigratingDisk`].

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use virtkit_core::runtime::local_disk::{chunks, MigratingDisk, DISK_CHUNK};

use super::{BlockBackend, BlockError};

/// A [`BlockBackend`] whose writes, discards and zeroings are recorded,
/// [`DISK_CHUNK`] by chunk, while tracking is on.
pub struct TrackedDisk {
    inner: Arc<dyn BlockBackend>,
    tracking: AtomicBool,
    dirty: Vec<AtomicU64>,
}

impl std::fmt::Debug for TrackedDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedDisk")
            .field("size", &self.inner.size())
            .field("tracking", &self.tracking.load(Ordering::Relaxed))
            .finish()
    }
}

impl TrackedDisk {
    /// Track writes to `inner`.
    pub fn new(inner: Arc<dyn BlockBackend>) -> Self {
        let words = chunks(inner.size()).div_ceil(64) as usize;
        TrackedDisk {
            inner,
            tracking: AtomicBool::new(false),
            dirty: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Mark the chunks of `[offset, offset + len)`. Called after the write
    /// landed: a migration that clears the bit in between sees it set
    /// again and copies the chunk once more, never misses it.
    fn mark(&self, offset: u64, len: u64) {
        if len == 0 || !self.tracking.load(Ordering::Acquire) {
            return;
        }
        let first = offset / DISK_CHUNK;
        let last = (offset + len - 1) / DISK_CHUNK;
        for c in first..=last {
            if let Some(w) = self.dirty.get((c / 64) as usize) {
                w.fetch_or(1 << (c % 64), Ordering::AcqRel);
            }
        }
    }
}

impl BlockBackend for TrackedDisk {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)?;
        self.mark(offset, buf.len() as u64);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)?;
        self.mark(offset, len);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        BlockBackend::write_zeroes(&*self.inner, offset, len, unmap)?;
        self.mark(offset, len);
        Ok(())
    }
    fn release_lock(&self) -> io::Result<()> {
        self.inner.release_lock()
    }
    fn take_lock(&self) -> Result<(), BlockError> {
        self.inner.take_lock()
    }
}

impl MigratingDisk for TrackedDisk {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        BlockBackend::write_at(self, buf, offset)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        BlockBackend::write_zeroes(self, offset, len, true)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn start_tracking(&self) {
        for w in &self.dirty {
            w.store(0, Ordering::Release);
        }
        self.tracking.store(true, Ordering::Release);
    }
    fn stop_tracking(&self) {
        self.tracking.store(false, Ordering::Release);
    }
    fn take_dirty(&self) -> Vec<u64> {
        self.dirty
            .iter()
            .map(|w| w.swap(0, Ordering::AcqRel))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::block::MemoryDisk;

    #[test]
    fn writes_mark_their_chunks_only_while_tracking() {
        let chunk = DISK_CHUNK as usize;
        let disk = TrackedDisk::new(Arc::new(MemoryDisk::new(vec![0; 80 * chunk], false)));
        BlockBackend::write_at(&disk, b"before", 0).unwrap();
        disk.start_tracking();
        assert!(disk.take_dirty().iter().all(|w| *w == 0), "a clean slate");
        // One byte, a write straddling chunks 2 and 3, a discard of chunk
        // 70 (second word), a zeroing ending exactly at chunk 5's end.
        BlockBackend::write_at(&disk, b"x", 0).unwrap();
        BlockBackend::write_at(&disk, &[1; 8], 3 * DISK_CHUNK - 4).unwrap();
        disk.discard(70 * DISK_CHUNK, 512).unwrap();
        BlockBackend::write_zeroes(&disk, 5 * DISK_CHUNK, DISK_CHUNK, false).unwrap();
        let dirty = disk.take_dirty();
        assert_eq!(dirty[0], 0b10_1101);
        assert_eq!(dirty[1], 1 << 6);
        assert!(disk.take_dirty().iter().all(|w| *w == 0), "taking clears");
        // A failed write marks nothing; reads never do.
        assert!(BlockBackend::write_at(&disk, &[0; 2], (80 * chunk) as u64 - 1).is_err());
        let mut b = [0u8; 6];
        BlockBackend::read_at(&disk, &mut b, 0).unwrap();
        assert_eq!(&b, b"xefore");
        disk.stop_tracking();
        BlockBackend::write_at(&disk, b"after", 0).unwrap();
        assert!(disk.take_dirty().iter().all(|w| *w == 0));
    }
}
