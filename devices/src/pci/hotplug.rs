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

use crate::acpi::AcpiEvents;

/// I/O port of the hotplug register block.
pub const HOTPLUG_PORT: u64 = 0xae00;
/// Length of the hotplug register block.
pub const HOTPLUG_LEN: u64 = 0x14;
/// GPE bit that signals a PCI hotplug event.
pub const GPE_PCI_HOTPLUG: u32 = 1;

/// Hotplug bitmaps; events go out through GPE0 bit 1.
#[derive(Default)]
pub struct HotplugRegisters {
    up: u32,
    down: u32,
    removable: u32,
    selector: u32,
    events: AcpiEvents,
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
    /// Signal hotplug events through `events` from now on.
    pub fn set_events(&mut self, events: AcpiEvents) {
        self.events = events;
    }

    /// The guest-visible bitmaps (up, down, removable, selector), for
    /// migration.
    pub fn bitmaps(&self) -> [u32; 4] {
        [self.up, self.down, self.removable, self.selector]
    }

    /// Load bitmaps saved by [`HotplugRegisters::bitmaps`].
    pub fn set_bitmaps(&mut self, [up, down, removable, selector]: [u32; 4]) {
        (self.up, self.down, self.removable, self.selector) = (up, down, removable, selector);
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
        self.events.raise_gpe(GPE_PCI_HOTPLUG);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plug_unplug_eject_and_gpe() {
        let events = AcpiEvents::new();
        let mut r = HotplugRegisters::default();
        r.set_events(events.clone());
        r.plugged(5);
        assert_eq!(events.gpe_status()[0], 1 << GPE_PCI_HOTPLUG);
        assert_eq!(r.read(0x00), 1 << 5);
        assert_eq!(r.read(0x00), 0, "PCIU clears on read");
        assert_eq!(r.read(0x0c), 1 << 5);
        r.request_unplug(5);
        assert!(r.unplug_pending(5));
        assert_eq!(r.read(0x04), 1 << 5);
        assert_eq!(
            r.write(0x08, (1 << 5) | (1 << 3)),
            1 << 5,
            "slot 3 is not removable"
        );
        r.removed(5);
        assert_eq!((r.read(0x04), r.read(0x0c)), (0, 0));
        assert_eq!(r.write(0x10, 3), 0);
        assert_eq!(r.read(0x10), 3, "bus selector");
    }
}
