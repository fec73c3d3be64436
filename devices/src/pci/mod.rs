//! The PCI root bus: 32 device slots on bus 0, configuration space through
//! the 0xCF8/0xCFC ports and ECAM, BARs placed in 32- and 64-bit MMIO
//! windows, MSI-X, and ACPI-style hotplug (see `DESIGN.md` for why ACPI
//! hotplug rather than PCIe native hotplug).

mod alloc;
mod bus;
pub mod config;
pub mod hotplug;
pub mod msix;

pub use alloc::AddressWindow;
pub use bus::{PciBus, PciLayout, SlotState, PCI_BUS_STATE_ID};
pub use config::{ConfigSpace, PciIds};
pub use msix::{MsiSink, MsixTable};

use std::fmt;

use virtkit_core::runtime::StateError;

/// Slots on the root bus.
pub const SLOT_COUNT: u8 = 32;
/// Slot 0 holds the host bridge (q35: Intel 82G33 DRAM controller).
pub const HOST_BRIDGE_SLOT: u8 = 0;
/// Slot 31 is the q35 ICH9 LPC/SMBus/SATA function block; kept free so a
/// guest sees the layout it expects from q35.
pub const Q35_LPC_SLOT: u8 = 31;

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// A 32-bit memory BAR (placed in the window below 4 GiB).
    Memory32,
    /// A 64-bit memory BAR (placed in the window above RAM).
    Memory64 {
        /// Whether reads have no side effects.
        prefetchable: bool,
    },
}

/// A BAR a device asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarSpec {
    /// Size in bytes (a power of two; smaller values are rounded up).
    pub size: u64,
    /// Kind of decode.
    pub kind: BarKind,
}

impl BarSpec {
    /// A 32-bit memory BAR of `size` bytes.
    pub fn memory32(size: u64) -> Self {
        BarSpec {
            size,
            kind: BarKind::Memory32,
        }
    }
}

/// A bus/device/function address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// Bus number (always 0 here).
    pub bus: u8,
    /// Device (slot) number, 0..32.
    pub device: u8,
    /// Function number, 0..8.
    pub function: u8,
}

impl PciAddress {
    /// Function 0 of `slot` on bus 0.
    pub fn slot(slot: u8) -> Self {
        PciAddress {
            bus: 0,
            device: slot,
            function: 0,
        }
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "0000:{:02x}:{:02x}.{:x}",
            self.bus, self.device, self.function
        )
    }
}

/// The BAR index the bus uses for the expansion ROM in
/// [`PciDevice::bar_read`]-style routing (as Linux numbers it).
pub const ROM_BAR_INDEX: usize = 6;

/// A PCI function the root bus can hold. The bus reads and writes its
/// configuration space and forwards accesses that fall into its BARs.
pub trait PciDevice: Send {
    /// A short name for logs and errors ("virtio-blk").
    fn name(&self) -> &str;
    /// The BARs the device needs, by index; the bus places them.
    fn bars(&self) -> Vec<(usize, BarSpec)>;
    /// Configuration space, read by the bus.
    fn config(&self) -> &ConfigSpace;
    /// Configuration space, written by the bus.
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// Called after the guest wrote configuration space at `offset`
    /// (e.g. to notice MSI-X being enabled).
    fn config_written(&mut self, _offset: usize, _len: usize) {}
    /// Guest read inside BAR `bar` at `offset`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Guest write inside BAR `bar` at `offset`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// The expansion ROM image (an option ROM such as iPXE's), which the
    /// bus places behind the ROM BAR and serves read-only.
    fn rom(&self) -> Option<&[u8]> {
        None
    }
    /// The device leaves the bus (hot-unplug or VM teardown): stop
    /// workers and release host resources.
    fn removed(&mut self) {}
    /// The function's state beyond its configuration space (which the
    /// bus saves), for migration, taken while the VM is paused. The
    /// default refuses, so a function that has not opted in stops a
    /// migration with a clear reason instead of starting fresh on the
    /// target.
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        Err(StateError::Unsupported(self.name().to_string()))
    }
    /// The VM is pausing: stop touching guest memory and raising
    /// interrupts from worker threads (see
    /// [`Snapshot::pause`](virtkit_core::runtime::Snapshot::pause)). The
    /// default has nothing to stop.
    fn pause(&mut self) {}
    /// The VM is resuming: start what [`PciDevice::pause`] stopped.
    fn resume(&mut self) -> Result<(), StateError> {
        Ok(())
    }
    /// The disk images the function serves, whose host locks a migration
    /// hands from the source to the target (see
    /// [`Snapshot::release_locks`](virtkit_core::runtime::Snapshot::release_locks)).
    fn disks(&self) -> Vec<std::sync::Arc<dyn crate::block::BlockBackend>> {
        Vec::new()
    }
    /// Load what [`PciDevice::save_state`] wrote, after the bus restored
    /// configuration space (memory is in place too).
    fn restore_state(&mut self, _state: &[u8]) -> Result<(), StateError> {
        Err(StateError::Unsupported(self.name().to_string()))
    }
}

/// Why a bus operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciError {
    /// Every usable slot holds a device.
    #[error("no free PCI slot: all {usable} usable slots of {total} are in use ({reserved} are reserved)")]
    NoFreeSlot {
        /// Slots on the bus.
        total: u8,
        /// Slots kept for the platform.
        reserved: u8,
        /// Slots devices may use.
        usable: u8,
    },
    /// The asked-for slot is outside 0..32.
    #[error("PCI slot {slot} does not exist (the bus has {total} slots)")]
    NoSuchSlot {
        /// Requested slot.
        slot: u8,
        /// Slots on the bus.
        total: u8,
    },
    /// The asked-for slot is kept for the platform.
    #[error("PCI slot {slot} is reserved for the {what}")]
    SlotReserved {
        /// Requested slot.
        slot: u8,
        /// What it is kept for.
        what: &'static str,
    },
    /// The asked-for slot holds a device already.
    #[error("PCI slot {slot} already holds {device}")]
    SlotOccupied {
        /// Requested slot.
        slot: u8,
        /// Name of the device there.
        device: String,
    },
    /// Nothing to unplug.
    #[error("PCI slot {slot} is empty")]
    SlotEmpty {
        /// Requested slot.
        slot: u8,
    },
    /// The device in the slot was cold-plugged, so the guest's ACPI
    /// tables do not let it be ejected.
    #[error("the device in PCI slot {slot} ({device}) is not hot-pluggable")]
    NotRemovable {
        /// Slot.
        slot: u8,
        /// Name of the device there.
        device: String,
    },
    /// A BAR does not fit its window.
    #[error("no room for BAR {bar} of {device} ({size:#x} bytes) in the {window} MMIO window")]
    NoBarSpace {
        /// Device name.
        device: String,
        /// BAR index.
        bar: usize,
        /// BAR size.
        size: u64,
        /// Which window.
        window: &'static str,
    },
    /// The guest did not eject the device in time.
    #[error("the guest did not eject the device in PCI slot {slot} within {millis} ms")]
    EjectTimeout {
        /// Slot.
        slot: u8,
        /// How long we waited.
        millis: u64,
    },
}
