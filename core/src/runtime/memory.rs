//! Guest memory: vm-memory regions with an `AtomicBitmap`, so every write
//! the VMM makes through the `GuestMemory` API is tracked for migration
//! alongside KVM's own dirty log.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::RuntimeError;

/// Guest memory with dirty tracking of VMM-side writes.
pub type GuestMem = GuestMemoryMmap<AtomicBitmap>;

/// Guest pages are tracked at this granularity.
pub const PAGE_SIZE: u64 = 4096;
/// Start of the 32-bit MMIO hole (PCI, flash, LAPIC/IOAPIC).
pub const MMIO_HOLE_START: u64 = 3 << 30;
/// End of the 32-bit MMIO hole; RAM above the hole continues here.
pub const MMIO_HOLE_END: u64 = 4 << 30;

/// One RAM range of the guest-physical layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    /// Guest-physical start.
    pub guest_addr: u64,
    /// Length in bytes (a multiple of [`PAGE_SIZE`]).
    pub len: u64,
}

/// The RAM layout for `bytes` of guest memory: below the MMIO hole, then
/// from 4 GiB on. `bytes` is rounded up to whole pages.
pub fn layout(bytes: u64) -> Vec<RamRange> {
    let bytes = bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let low = bytes.min(MMIO_HOLE_START);
    let mut v = vec![RamRange {
        guest_addr: 0,
        len: low,
    }];
    if bytes > low {
        v.push(RamRange {
            guest_addr: MMIO_HOLE_END,
            len: bytes - low,
        });
    }
    v
}

/// RAM plus swap of the host, from `/proc/meminfo`, if readable.
pub fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(field("MemTotal:")? + field("SwapTotal:").unwrap_or(0))
}

/// Map guest memory for `bytes` (anonymous, `MAP_NORESERVE`: pages cost
/// host memory only once touched).
pub fn create(bytes: u64) -> Result<GuestMem, RuntimeError> {
    if bytes == 0 {
        return Err(RuntimeError::InvalidConfig("guest memory size is 0".into()));
    }
    if let Some(available) = host_memory_bytes() {
        if bytes > available {
            return Err(RuntimeError::InsufficientHostMemory {
                requested: bytes,
                available,
            });
        }
    }
    let ranges: Vec<(GuestAddress, usize)> = layout(bytes)
        .iter()
        .map(|r| {
            usize::try_from(r.len)
                .map(|len| (GuestAddress(r.guest_addr), len))
                .map_err(|_| {
                    RuntimeError::InvalidConfig(format!("memory range {} too large", r.len))
                })
        })
        .collect::<Result<_, _>>()?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| RuntimeError::GuestMemory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_splits_around_the_hole_and_rounds_pages() {
        assert_eq!(
            layout(64 << 20),
            vec![RamRange {
                guest_addr: 0,
                len: 64 << 20
            }]
        );
        // 1G decimal = 244,140.625 pages → 244,141 pages.
        assert_eq!(layout(1_000_000_000)[0].len, 1_000_001_536);
        let big = layout(5 << 30);
        assert_eq!(big.len(), 2);
        assert_eq!(
            big[0],
            RamRange {
                guest_addr: 0,
                len: 3 << 30
            }
        );
        assert_eq!(
            big[1],
            RamRange {
                guest_addr: 4 << 30,
                len: 2 << 30
            }
        );
    }

    #[test]
    fn absurd_sizes_are_typed_errors() {
        assert!(matches!(create(0), Err(RuntimeError::InvalidConfig(_))));
        assert!(matches!(
            create(1 << 60),
            Err(RuntimeError::InsufficientHostMemory { .. })
        ));
    }
}
