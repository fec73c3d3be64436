//! Host PCI devices: a sysfs-root view of them (the host's `/sys`, or a
//! tree a test builds) and PCI passthrough: `permittedHostDevices`
//! resources, IOMMU checks, binding to `vfio-pci`, allocation to VMs and
//! attach through VFIO.

pub mod assigned;
pub mod passthrough;
pub mod sysfs;
pub mod vfio;
