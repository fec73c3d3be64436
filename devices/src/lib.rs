//! virtkit-devices — the device model: a PCI root bus with 32 slots and
//! ACPI hotplug, MSI-X, the virtio-pci (modern) transport, virtio-blk
//! and virtio-scsi over a [`block::BlockBackend`], an AHCI SATA controller
//! with ATA disks and ATAPI CD-ROMs, VFIO device assignment, the i6300esb
//! watchdog and the ACPI tables and event registers.
//!
//! Devices attach to a [`virtkit_core::runtime::Vm`] after it is built and
//! before it starts; see `README.md` for an example and `DESIGN.md` for
//! the choices made.

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod acpi;
pub mod ahci;
pub mod block;
pub mod disks;
pub mod fuzzing;
pub mod host;
pub mod pci;
pub mod scsi;
pub mod state;
pub mod virtio;
pub mod watchdog;
