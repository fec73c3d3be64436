//! A type-0 PCI configuration space: 4 KiB (PCIe extended space through
//! ECAM; the legacy 0xCF8 mechanism sees the first 256 bytes), with a
//! per-byte writable mask so that BAR sizing, the command register and
//! capability fields behave as hardware does without per-register code.

use super::{BarKind, BarSpec};

/// Bytes of configuration space per function (PCIe).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Offset of BAR 0.
pub const BAR0: usize = 0x10;
/// Number of BARs in a type-0 header.
pub const BAR_COUNT: usize = 6;
/// Command register bit: memory space decoding.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register bit: bus master.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const STATUS_CAP_LIST: u8 = 1 << 4;
const CAP_POINTER: usize = 0x34;
/// Offset of the expansion ROM BAR.
pub const ROM_BAR: usize = 0x30;
/// Expansion ROM BAR bit: the ROM is decoded.
const ROM_ENABLE: u32 = 1;
/// Expansion ROM BARs decode at least 2 KiB (address bits 31..11).
pub const ROM_MIN_SIZE: u64 = 0x800;
const FIRST_CAP: usize = 0x40;
const LEGACY_END: usize = 0x100;

/// Identity of a function, written into its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
    /// Class code (base class, subclass, programming interface).
    pub class: [u8; 3],
    /// Revision ID.
    pub revision: u8,
}

/// One function's configuration space.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: Box<[u8; CONFIG_SPACE_SIZE]>,
    writable: Box<[u8; CONFIG_SPACE_SIZE]>,
    bars: [Option<BarSpec>; BAR_COUNT],
    rom_size: Option<u64>,
    next_cap: usize,
    last_cap: Option<usize>,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("vendor", &format_args!("{:#06x}", self.read_u16(0)))
            .field("device", &format_args!("{:#06x}", self.read_u16(2)))
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

impl ConfigSpace {
    /// A header with `ids`, no BARs and no capabilities. Writable: the
    /// command register (I/O, memory, bus master, parity, SERR, INTx
    /// disable), cache line size, latency timer and interrupt line.
    pub fn new(ids: PciIds) -> Self {
        let mut c = ConfigSpace {
            bytes: Box::new([0; CONFIG_SPACE_SIZE]),
            writable: Box::new([0; CONFIG_SPACE_SIZE]),
            bars: [None; BAR_COUNT],
            rom_size: None,
            next_cap: FIRST_CAP,
            last_cap: None,
        };
        c.set_u16(0, ids.vendor);
        c.set_u16(2, ids.device);
        c.bytes[8] = ids.revision;
        c.bytes[9] = ids.class[2];
        c.bytes[10] = ids.class[1];
        c.bytes[11] = ids.class[0];
        c.set_u16(0x2c, ids.subsystem_vendor);
        c.set_u16(0x2e, ids.subsystem);
        c.writable[COMMAND..COMMAND + 2].copy_from_slice(&0x0547u16.to_le_bytes());
        c.writable[0x0c] = 0xff; // cache line size
        c.writable[0x0d] = 0xff; // latency timer
        c.writable[0x3c] = 0xff; // interrupt line
        c
    }

    /// Declare BAR `index` (a 64-bit BAR also takes `index + 1`), placed
    /// at `address`. `spec.size` must be a power of two, at least 16.
    pub fn set_bar(&mut self, index: usize, spec: BarSpec, address: u64) {
        let size = spec.size.max(16).next_power_of_two();
        let off = BAR0 + 4 * index;
        let (flags, wide) = match spec.kind {
            BarKind::Memory32 => (0u32, false),
            BarKind::Memory64 { prefetchable } => (0x4 | if prefetchable { 0x8 } else { 0 }, true),
        };
        let mask = !(size - 1);
        self.set_u32(off, (address as u32 & mask as u32 & !0xf) | flags);
        self.writable[off..off + 4].copy_from_slice(&((mask as u32) & !0xf).to_le_bytes());
        if wide && index + 1 < BAR_COUNT {
            self.set_u32(off + 4, (address >> 32) as u32);
            self.writable[off + 4..off + 8].copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
        }
        self.bars[index] = Some(BarSpec { size, ..spec });
    }

    /// Declare an expansion ROM of `size` bytes (rounded up to a power of
    /// two, at least 2 KiB) at `address`, disabled until the guest sets
    /// the enable bit (PCI 3.0 §6.2.5.2).
    pub fn set_rom_bar(&mut self, size: u64, address: u64) {
        let size = size.max(ROM_MIN_SIZE).next_power_of_two();
        let mask = !(size - 1) as u32 & 0xffff_f800;
        self.set_u32(ROM_BAR, address as u32 & mask);
        self.writable[ROM_BAR..ROM_BAR + 4].copy_from_slice(&(mask | ROM_ENABLE).to_le_bytes());
        self.rom_size = Some(size);
    }

    /// The expansion ROM's address and size while the guest has it
    /// enabled.
    pub fn rom_window(&self) -> Option<(u64, u64)> {
        let size = self.rom_size?;
        let reg = self.read_u32(ROM_BAR);
        (reg & ROM_ENABLE != 0).then_some((u64::from(reg & 0xffff_f800), size))
    }

    /// Make the bytes at `offset` guest-writable by `mask` (device
    /// registers in configuration space).
    pub fn set_writable(&mut self, offset: usize, mask: &[u8]) {
        let end = (offset + mask.len()).min(CONFIG_SPACE_SIZE);
        self.writable[offset..end].copy_from_slice(&mask[..end - offset]);
    }

    /// The declared BARs.
    pub fn bar_specs(&self) -> &[Option<BarSpec>; BAR_COUNT] {
        &self.bars
    }

    /// Where BAR `index` currently points (as the guest programmed it).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let spec = self.bars.get(index).copied().flatten()?;
        let off = BAR0 + 4 * index;
        let low = u64::from(self.read_u32(off) & !0xf);
        Some(match spec.kind {
            BarKind::Memory32 => low,
            BarKind::Memory64 { .. } => low | (u64::from(self.read_u32(off + 4)) << 32),
        })
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Append a capability with ID `id`; `body` is what follows the ID
    /// and next-pointer bytes, `writable` its per-byte mask (same length
    /// or shorter, the rest read-only). Returns the capability's offset,
    /// or `None` when the 256-byte legacy space is full.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> Option<usize> {
        let offset = self.next_cap;
        let len = (2 + body.len()).next_multiple_of(4);
        if offset + len > LEGACY_END {
            return None;
        }
        self.bytes[offset] = id;
        self.bytes[offset + 1] = 0;
        self.bytes[offset + 2..offset + 2 + body.len()].copy_from_slice(body);
        let w = writable.len().min(body.len());
        self.writable[offset + 2..offset + 2 + w].copy_from_slice(&writable[..w]);
        match self.last_cap {
            Some(prev) => self.bytes[prev + 1] = offset as u8,
            None => {
                self.bytes[CAP_POINTER] = offset as u8;
                self.bytes[STATUS] |= STATUS_CAP_LIST;
            }
        }
        self.last_cap = Some(offset);
        self.next_cap = offset + len;
        Some(offset)
    }

    /// Guest read of `data.len()` bytes at `offset`; beyond the space
    /// reads as zero.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.bytes.get(offset + i).copied().unwrap_or(0);
        }
    }

    /// Guest write: only writable bits change.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            let o = offset + i;
            if o >= CONFIG_SPACE_SIZE {
                break;
            }
            let m = self.writable[o];
            self.bytes[o] = (self.bytes[o] & !m) | (v & m);
        }
    }

    /// Little-endian u16 at `offset`.
    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Little-endian u32 at `offset`.
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Set a u16 regardless of the writable mask (device-side update).
    pub fn set_u16(&mut self, offset: usize, v: u16) {
        self.bytes[offset..offset + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// Set a u32 regardless of the writable mask (device-side update).
    pub fn set_u32(&mut self, offset: usize, v: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1af4,
            device: 0x1042,
            subsystem_vendor: 0x1af4,
            subsystem: 0x0002,
            class: [0x01, 0x00, 0x00],
            revision: 1,
        }
    }

    #[test]
    fn header_ids_and_read_only_fields() {
        let mut c = ConfigSpace::new(ids());
        assert_eq!(c.read_u32(0), 0x1042_1af4);
        assert_eq!(c.read_u32(8), 0x0100_0001);
        c.write(0, &[0; 4]);
        assert_eq!(c.read_u32(0), 0x1042_1af4, "IDs are read-only");
        c.write(COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(c.command(), 0x0547);
        assert_eq!(c.read_u32(0x1000), 0, "past the end reads zero");
    }

    #[test]
    fn bar_sizing_protocol() {
        let mut c = ConfigSpace::new(ids());
        c.set_bar(0, BarSpec::memory32(0x8000), 0xc000_0000);
        c.set_bar(
            2,
            BarSpec {
                size: 0x10_0000,
                kind: BarKind::Memory64 { prefetchable: true },
            },
            0x10_0000_0000,
        );
        assert_eq!(c.bar_address(0), Some(0xc000_0000));
        assert_eq!(c.bar_address(2), Some(0x10_0000_0000));
        assert_eq!(c.read_u32(BAR0 + 8) & 0xf, 0xc, "64-bit prefetchable");
        // Sizing: write all ones, read back the size mask.
        c.write(BAR0, &u32::MAX.to_le_bytes());
        assert_eq!(c.read_u32(BAR0), 0xffff_8000);
        c.write(BAR0 + 8, &u32::MAX.to_le_bytes());
        c.write(BAR0 + 12, &u32::MAX.to_le_bytes());
        assert_eq!(c.read_u32(BAR0 + 8), 0xfff0_000c);
        assert_eq!(c.read_u32(BAR0 + 12), 0xffff_ffff);
        // Reprogram.
        c.write(BAR0, &0xd000_0000u32.to_le_bytes());
        assert_eq!(c.bar_address(0), Some(0xd000_0000));
        assert_eq!(c.bar_address(1), None);
        assert_eq!(c.read_u32(BAR0 + 4 * 5), 0, "an undeclared BAR is zero");
        c.write(BAR0 + 20, &u32::MAX.to_le_bytes());
        assert_eq!(c.read_u32(BAR0 + 20), 0, "and stays zero when sized");
    }

    #[test]
    fn rom_bar_sizing_and_enable() {
        let mut c = ConfigSpace::new(ids());
        c.write(ROM_BAR, &u32::MAX.to_le_bytes());
        assert_eq!(c.read_u32(ROM_BAR), 0, "no ROM: the BAR is hardwired to 0");
        c.set_rom_bar(75_776, 0xc004_0000);
        assert_eq!(c.rom_window(), None, "disabled at reset");
        c.write(ROM_BAR, &0xffff_f800u32.to_le_bytes());
        assert_eq!(
            c.read_u32(ROM_BAR),
            0xfffe_0000,
            "128 KiB decoder, enable bit clear"
        );
        c.write(ROM_BAR, &0xc004_0001u32.to_le_bytes());
        assert_eq!(c.rom_window(), Some((0xc004_0000, 0x2_0000)));
        c.set_rom_bar(100, 0);
        c.write(ROM_BAR, &u32::MAX.to_le_bytes());
        assert_eq!(c.read_u32(ROM_BAR), 0xffff_f801, "at least 2 KiB");
    }

    #[test]
    fn capabilities_are_chained() {
        let mut c = ConfigSpace::new(ids());
        assert_eq!(c.read_u16(STATUS) & 0x10, 0);
        let a = c.add_capability(0x11, &[0; 10], &[0, 0xc0]).unwrap();
        let b = c.add_capability(0x09, &[14, 1, 2, 3], &[]).unwrap();
        assert_eq!((a, b), (0x40, 0x4c));
        assert_ne!(c.read_u16(STATUS) & 0x10, 0);
        assert_eq!(c.bytes[CAP_POINTER], 0x40);
        assert_eq!(c.bytes[0x41], 0x4c);
        assert_eq!(c.bytes[0x4d], 0);
        c.write(0x42, &[0xff, 0xff]);
        assert_eq!(c.read_u16(0x42), 0xc000);
        while c.add_capability(0x09, &[0; 14], &[]).is_some() {}
        assert!(c.next_cap <= LEGACY_END);
    }
}
