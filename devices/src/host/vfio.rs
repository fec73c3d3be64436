//! The seam between a passthrough PCI device and the host function behind
//! it ([`HostFunction`]), and its VFIO implementation ([`VfioFunction`],
//! through rust-vmm's `vfio-ioctls`).
//!
//! The trait is what [`AssignedDevice`](super::assigned::AssignedDevice)
//! needs and no more: region sizes and accesses in VFIO's region numbering
//! (BARs 0–5, configuration space 7), MSI-X vectors as eventfds, reset.
//! That keeps the PCI side testable with a function the test builds, and
//! lets an embedder put vfio-user or a mediated device behind it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use virtkit_core::runtime::Vm;

/// VFIO's region index of the configuration space.
pub const CONFIG_REGION: u32 = 7;
/// `VFIO_REGION_INFO_FLAG_MMAP` (linux/vfio.h).
const REGION_FLAG_MMAP: u32 = 1 << 2;
/// The device node VFIO's container is opened through.
pub const VFIO_CONTAINER: &str = "/dev/vfio/vfio";

/// One region of a host function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    /// Size in bytes (0: absent).
    pub size: u64,
    /// Whether the region may be mapped into the guest directly.
    pub mappable: bool,
}

/// Why a host function could not be opened or driven.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// VFIO is not available on this host.
    #[error("VFIO is not available: {path} is absent (load the vfio-pci module and boot with the IOMMU on, e.g. intel_iommu=on)")]
    Unavailable {
        /// The device node looked for.
        path: PathBuf,
    },
    /// The function's sysfs directory does not exist.
    #[error("host PCI function {path} does not exist")]
    NoSuchFunction {
        /// Its sysfs directory.
        path: PathBuf,
    },
    /// Creating the KVM VFIO pseudo-device failed.
    #[error("cannot create the KVM VFIO device: {0}")]
    Kvm(#[source] virtkit_core::runtime::RuntimeError),
    /// A VFIO operation failed.
    #[error("VFIO {op} for {function}: {source}")]
    Vfio {
        /// What was being done.
        op: &'static str,
        /// The function.
        function: String,
        /// The error from vfio-ioctls.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// The function's interrupts could not be set up.
    #[error("{function}: {what}")]
    Interrupts {
        /// The function.
        function: String,
        /// What went wrong.
        what: String,
    },
}

/// A host PCI function handed to a guest.
pub trait HostFunction: Send + Sync {
    /// Its name in logs and errors (the PCI address).
    fn name(&self) -> &str;
    /// Region `index` (BAR 0–5 or [`CONFIG_REGION`]).
    fn region(&self, index: u32) -> RegionInfo;
    /// Read from region `index` at `offset`.
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]);
    /// Write to region `index` at `offset`.
    fn region_write(&self, index: u32, offset: u64, data: &[u8]);
    /// Route MSI-X vector `i` to `vectors[i]`.
    fn enable_msix(&self, vectors: &[&EventFd]) -> Result<(), VfioError>;
    /// Stop MSI-X delivery.
    fn disable_msix(&self) -> Result<(), VfioError>;
    /// Reset the function (on attach and detach).
    fn reset(&self);
}

/// A host function opened through VFIO, its DMA mapped to the VM's memory.
pub struct VfioFunction {
    name: String,
    device: vfio_ioctls::VfioDevice,
    container: Arc<vfio_ioctls::VfioContainer>,
    memory: virtkit_core::runtime::memory::GuestMem,
}

impl std::fmt::Debug for VfioFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioFunction")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl VfioFunction {
    /// Open the function whose sysfs directory is `sysfs_device` (bound
    /// to vfio-pci, see [`bind_vfio_pci`](super::passthrough)), register
    /// its group with the VM's KVM VFIO device and map all guest memory
    /// for its DMA. Fails with [`VfioError::Unavailable`] on a host
    /// without VFIO.
    pub fn open(vm: &Vm, sysfs_device: &Path) -> Result<Self, VfioError> {
        Self::open_with_container(vm, sysfs_device, Path::new(VFIO_CONTAINER))
    }

    fn open_with_container(
        vm: &Vm,
        sysfs_device: &Path,
        container_node: &Path,
    ) -> Result<Self, VfioError> {
        // vfio-ioctls would report a bare ENOENT; say what is missing.
        if !container_node.exists() {
            return Err(VfioError::Unavailable {
                path: container_node.to_path_buf(),
            });
        }
        if !sysfs_device.exists() {
            return Err(VfioError::NoSuchFunction {
                path: sysfs_device.to_path_buf(),
            });
        }
        let name = sysfs_device
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| sysfs_device.display().to_string());
        let vfio_err = |op| {
            let function = name.clone();
            move |source| VfioError::Vfio {
                op,
                function,
                source,
            }
        };
        let mut create = kvm_bindings::kvm_create_device {
            type_: kvm_bindings::kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let kvm_device = vm.create_kvm_device(&mut create).map_err(VfioError::Kvm)?;
        let handle = Arc::new(vfio_ioctls::VfioDeviceFd::new_from_kvm(kvm_device));
        let container = Arc::new(
            vfio_ioctls::VfioContainer::new(Some(handle)).map_err(vfio_err("open container"))?,
        );
        let device = vfio_ioctls::VfioDevice::new(sysfs_device, container.clone(), false)
            .map_err(vfio_err("open device"))?;
        let memory = vm.memory().clone();
        // SAFETY: guest memory stays mapped for the VM's lifetime, which
        // outlives this function (it unmaps in Drop); virtkit never makes
        // Rust references into guest RAM, only volatile accesses through
        // vm-memory, which is what DMA-shared memory requires.
        unsafe { container.vfio_map_guest_memory(&memory) }
            .map_err(vfio_err("map guest memory"))?;
        device.reset();
        Ok(VfioFunction {
            name,
            device,
            container,
            memory,
        })
    }
}

impl Drop for VfioFunction {
    fn drop(&mut self) {
        self.device.reset();
        if let Err(e) = self.container.vfio_unmap_guest_memory(&self.memory) {
            log::warn!("{}: unmapping guest memory: {e}", self.name);
        }
    }
}

impl HostFunction for VfioFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn region(&self, index: u32) -> RegionInfo {
        RegionInfo {
            size: self.device.get_region_size(index),
            mappable: self.device.get_region_flags(index) & REGION_FLAG_MMAP != 0,
        }
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
        self.device.region_read(index, data, offset);
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
        self.device.region_write(index, data, offset);
    }

    fn enable_msix(&self, vectors: &[&EventFd]) -> Result<(), VfioError> {
        self.device
            .enable_msix(vectors.to_vec())
            .map_err(|source| VfioError::Vfio {
                op: "enable MSI-X",
                function: self.name.clone(),
                source,
            })
    }

    fn disable_msix(&self) -> Result<(), VfioError> {
        self.device
            .disable_msix()
            .map_err(|source| VfioError::Vfio {
                op: "disable MSI-X",
                function: self.name.clone(),
                source,
            })
    }

    fn reset(&self) {
        self.device.reset();
    }
}
