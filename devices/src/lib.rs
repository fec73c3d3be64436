//! virtkit-devices — the device model: a PCI root bus with 32 slots and
//! ACPI hotplug, MSI-X, the virtio-pci (modern) transport and virtio-blk
//! over a [`block::BlockBackend`].
//!
//! Devices attach to a [`virtkit_core::runtime::Vm`] after it is built and
//! before it starts; see `README.md` for an example and `DESIGN.md` for
//! the choices made.

pub mod acpi;
pub mod block;
pub mod pci;
pub mod virtio;
pub mod watchdog;
