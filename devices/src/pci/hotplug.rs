//! ACPI PCI hotplug registers, with the same guest interface as QEMU's
//! `acpi-pci-hotplug` on q35 (which QEMU uses by default for q35 since
//! 6.1, and so what KubeVirt guests see): an I/O block at 0xAE00 and the
//! GPE0 block whose bit 1 raises an SCI. The DSDT's `_E01` method reads
//! `PCIU`/`PCID` and notifies the OS; the OS's `_EJ0` writes `B0EJ`.
//!
//! | offset | name | access |
//! |---|---|---|
//! | 0x00 | PCIU: slots with a device just inserted | read clears |
//! | 0x04 | PCID: slots whose device should be removed | read |
//! | 0x08 | B0EJ: eject the devices of these slots | write |
//! | 0x0C | RMV: slots whose device may be ejected | read |
//! | 0x10 | SEL: bus selector (only bus 0 exists) | read/write |

use std::sync::Arc;

/// I/O port of the hotplug register block.
pub const HOTPLUG_PORT: u64 = 0xae00;
/// Length of the hotplug register block.
pub const HOTPLUG_LEN: u64 = 0x14;
/// I/O port of the ICH9 GPE0 block (PM base 0x600 + 0x20).
pub const GPE0_PORT: u64 = 0x620;
/// Length of the GPE0 block: 8 status bytes, then 8 enable bytes.
pub const GPE0_LEN: u64 = 16;
/// GPE bit that signals a PCI hotplug event.
pub const GPE_PCI_HOTPLUG: u32 = 1;
/// The SCI's GSI on q35.
pub const SCI_GSI: u32 = 9;

/// A level-triggered interrupt line (the SCI).
pub trait IrqLine: Send + Sync {
    /// Drive the line high or low.
    fn set_level(&self, high: bool);
}

/// GSI `gsi` of a VM.
#[derive(Debug, Clone)]
pub struct GsiLine {
    /// The VM's interrupt handle.
    pub interrupts: virtkit_core::runtime::Interrupts,
    /// The GSI.
    pub gsi: u32,
}

impl IrqLine for GsiLine {
    fn set_level(&self, high: bool) {
        if let Err(e) = self.interrupts.set_irq_line(self.gsi, high) {
            log::warn!("GSI {} level change failed: {e}", self.gsi);
        }
    }
}

/// Hotplug bitmaps and the GPE0 block.
#[derive(Default)]
pub struct HotplugRegisters {
    up: u32,
    down: u32,
    removable: u32,
    selector: u32,
    gpe_status: [u8; 8],
    gpe_enable: [u8; 8],
    sci: Option<Arc<dyn IrqLine>>,
}

impl std::fmt::Debug for HotplugRegisters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotplugRegisters")
            .field("up", &format_args!("{:#x}", self.up))
            .field("down", &format_args!("{:#x}", self.down))
            .field("removable", &format_args!("{:#x}", self.removable))
            .finish_non_exhaustive()
    }
}

impl HotplugRegisters {
    /// Raise the SCI through `line` from now on.
    pub fn set_sci(&mut self, line: Arc<dyn IrqLine>) {
        self.sci = Some(line);
    }

    /// A device was plugged into `slot`: mark it and raise the event.
    pub fn plugged(&mut self, slot: u8) {
        self.up |= 1 << slot;
        self.removable |= 1 << slot;
        self.raise();
    }

    /// Ask the guest to release the device in `slot`.
    pub fn request_unplug(&mut self, slot: u8) {
        self.down |= 1 << slot;
        self.raise();
    }

    /// The device in `slot` is gone.
    pub fn removed(&mut self, slot: u8) {
        let bit = !(1u32 << slot);
        self.up &= bit;
        self.down &= bit;
        self.removable &= bit;
    }

    /// Whether an unplug of `slot` waits for the guest.
    pub fn unplug_pending(&self, slot: u8) -> bool {
        self.down & (1 << slot) != 0
    }

    /// Whether the device in `slot` may be ejected.
    pub fn is_removable(&self, slot: u8) -> bool {
        self.removable & (1 << slot) != 0
    }

    fn raise(&mut self) {
        self.gpe_status[0] |= 1 << GPE_PCI_HOTPLUG;
        self.update_sci();
    }

    fn update_sci(&self) {
        let active = self
            .gpe_status
            .iter()
            .zip(&self.gpe_enable)
            .any(|(s, e)| s & e != 0);
        if let Some(line) = &self.sci {
            line.set_level(active);
        }
    }

    /// Guest read of the hotplug block.
    pub fn read(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => std::mem::take(&mut self.up),
            0x04 => self.down,
            0x0c => self.removable,
            0x10 => self.selector,
            _ => 0,
        }
    }

    /// Guest write of the hotplug block; returns the slots to eject.
    pub fn write(&mut self, offset: u64, value: u32) -> u32 {
        match offset {
            0x08 => value & self.removable,
            0x10 => {
                self.selector = value;
                0
            }
            _ => 0,
        }
    }

    /// Guest read of GPE0.
    pub fn read_gpe(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset as usize + i;
            *b = match at {
                0..8 => self.gpe_status[at],
                8..16 => self.gpe_enable[at - 8],
                _ => 0,
            };
        }
    }

    /// Guest write of GPE0: status bits are write-one-to-clear.
    pub fn write_gpe(&mut self, offset: u64, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            let at = offset as usize + i;
            match at {
                0..8 => self.gpe_status[at] &= !v,
                8..16 => self.gpe_enable[at - 8] = *v,
                _ => {}
            }
        }
        self.update_sci();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Level(Mutex<Vec<bool>>);
    impl IrqLine for Level {
        fn set_level(&self, high: bool) {
            self.0.lock().unwrap().push(high);
        }
    }

    #[test]
    fn plug_unplug_eject_and_sci() {
        let level = Arc::new(Level::default());
        let mut r = HotplugRegisters::default();
        r.set_sci(level.clone());
        r.write_gpe(8, &[1 << GPE_PCI_HOTPLUG]);
        r.plugged(5);
        assert_eq!(*level.0.lock().unwrap().last().unwrap(), true);
        let mut sts = [0u8];
        r.read_gpe(0, &mut sts);
        assert_eq!(sts[0], 2);
        assert_eq!(r.read(0x00), 1 << 5);
        assert_eq!(r.read(0x00), 0, "PCIU clears on read");
        assert_eq!(r.read(0x0c), 1 << 5);
        r.write_gpe(0, &[2]);
        assert_eq!(*level.0.lock().unwrap().last().unwrap(), false);
        r.request_unplug(5);
        assert!(r.unplug_pending(5));
        assert_eq!(r.read(0x04), 1 << 5);
        assert_eq!(r.write(0x08, (1 << 5) | (1 << 3)), 1 << 5, "slot 3 is not removable");
        r.removed(5);
        assert_eq!((r.read(0x04), r.read(0x0c)), (0, 0));
    }
}
