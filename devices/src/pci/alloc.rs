//! First-fit placement of naturally aligned BARs inside an MMIO window.

use std::collections::BTreeMap;

/// An address window `[start, end)` with the ranges handed out from it.
#[derive(Debug, Clone)]
pub struct AddressWindow {
    start: u64,
    end: u64,
    used: BTreeMap<u64, u64>,
}

impl AddressWindow {
    /// A window covering `[start, start + len)`.
    pub fn new(start: u64, len: u64) -> Self {
        AddressWindow {
            start,
            end: start.saturating_add(len),
            used: BTreeMap::new(),
        }
    }

    /// Start of the window.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Length of the window.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// True for a zero-length window.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Place `size` bytes (a power of two) aligned to `size`; `None` when
    /// no gap is large enough.
    pub fn allocate(&mut self, size: u64) -> Option<u64> {
        let size = size.max(1).checked_next_power_of_two()?;
        let mut candidate = self.start.checked_next_multiple_of(size)?;
        for (&base, &len) in &self.used {
            if candidate.checked_add(size)? <= base {
                break;
            }
            candidate = candidate.max((base + len).checked_next_multiple_of(size)?);
        }
        if candidate.checked_add(size)? > self.end {
            return None;
        }
        self.used.insert(candidate, size);
        Some(candidate)
    }

    /// Give back the range that starts at `base`.
    pub fn free(&mut self, base: u64) {
        self.used.remove(&base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_with_natural_alignment_and_reuse() {
        let mut w = AddressWindow::new(0x1000, 0x10000);
        assert_eq!(w.allocate(0x1000), Some(0x1000));
        assert_eq!(w.allocate(0x4000), Some(0x4000), "aligned to its size");
        assert_eq!(w.allocate(0x1000), Some(0x2000), "fills the gap");
        assert_eq!(w.allocate(0x8000), Some(0x8000));
        assert_eq!(w.allocate(0x8000), None, "window full");
        w.free(0x4000);
        assert_eq!(w.allocate(0x3000), Some(0x4000), "rounded up to 0x4000");
        assert_eq!(w.allocate(0x1000), Some(0x3000));
        assert_eq!(AddressWindow::new(0, 0x1000).allocate(u64::MAX), None);
    }
}
