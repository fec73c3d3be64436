//! Port-I/O and MMIO buses: address ranges mapped to devices. The vCPU exit
//! dispatcher looks an access up here; the devices crate (and an embedding
//! VMM) registers its devices through [`Bus::insert`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. Offsets are relative to the range's base.
pub trait BusDevice: Send {
    /// Guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared device handle.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a range could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// Zero-length range.
    #[error("bus range at {base:#x} has zero length")]
    ZeroLength {
        /// Start of the range.
        base: u64,
    },
    /// Overlaps a registered range.
    #[error("bus range {base:#x}+{len:#x} overlaps the range at {other:#x}")]
    Overlap {
        /// Start of the new range.
        base: u64,
        /// Length of the new range.
        len: u64,
        /// Start of the existing range.
        other: u64,
    },
}

/// A set of non-overlapping address ranges.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Map `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let end = base.saturating_add(len);
        if let Some((&b, &(l, _))) = self.ranges.range(..end).next_back() {
            if b.saturating_add(l) > base {
                return Err(BusError::Overlap {
                    base,
                    len,
                    other: b,
                });
            }
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    /// Unmap the range that starts at `base`, returning its length and
    /// device.
    pub fn remove(&mut self, base: u64) -> Option<(u64, SharedDevice)> {
        self.ranges.remove(&base)
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (&base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        let end = base.checked_add(*len)?;
        (addr.checked_add(size as u64)? <= end).then_some((addr - base, dev))
    }

    /// Dispatch a read; unclaimed addresses read as all ones, like open bus.
    /// Returns whether a device claimed it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatch a write; unclaimed writes are dropped. Returns whether a
    /// device claimed it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Lock a device, recovering from a poisoned lock (a device that panicked
/// once must not take the whole VM down with a second panic).
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(Vec<u8>);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&self.0[o..o + data.len()]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.0[o..o + data.len()].copy_from_slice(data);
        }
    }

    #[test]
    fn dispatch_overlap_and_open_bus() {
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, Arc::new(Mutex::new(Reg(vec![0; 8]))))
            .unwrap();
        assert!(matches!(
            bus.insert(0x3fc, 8, Arc::new(Mutex::new(Reg(vec![0; 8])))),
            Err(BusError::Overlap { other: 0x3f8, .. })
        ));
        assert!(matches!(
            bus.insert(0x3f0, 9, Arc::new(Mutex::new(Reg(vec![0; 9])))),
            Err(BusError::Overlap { .. })
        ));
        bus.insert(0x3f0, 8, Arc::new(Mutex::new(Reg(vec![0; 8]))))
            .unwrap();
        assert!(bus.write(0x3f9, &[7, 8]));
        let mut b = [0u8; 2];
        assert!(bus.read(0x3f9, &mut b));
        assert_eq!(b, [7, 8]);
        // Straddling the end of a range is not claimed.
        assert!(!bus.read(0x3ff, &mut b));
        assert_eq!(b, [0xff, 0xff]);
        assert!(!bus.write(0x1000, &[1]));
        assert!(matches!(
            bus.insert(0x10, 0, Arc::new(Mutex::new(Reg(vec![])))),
            Err(BusError::ZeroLength { .. })
        ));
    }
}
