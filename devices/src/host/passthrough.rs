//! PCI passthrough bookkeeping: the resources `permittedHostDevices`
//! declares, matched against the host's functions (only those bound to
//! `vfio-pci` in an IOMMU group whose members are all VFIO-safe), handed
//! to VMs (`hostDevices[]`, `gpus[]`) all or nothing and taken back, with
//! externally provided resources left to a provider; and the host checks
//! and `modprobe` line that prepare a host.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use virtkit_core::spec::cluster::PermittedHostDevices;
use virtkit_core::spec::vmi::VmiSpec;

use super::sysfs::{HostPciDevice, PciSysfs, SysfsError};

/// Why passthrough cannot go ahead.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    /// sysfs could not be read.
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    /// A selector that is not `VVVV:DDDD`.
    #[error("permittedHostDevices.pciHostDevices[{index}].pciVendorSelector: {selector:?} is not VVVV:DDDD (hex)")]
    BadSelector {
        /// Index in `pciHostDevices`.
        index: usize,
        /// The selector.
        selector: String,
    },
    /// A VM asks for a resource that is not permitted.
    #[error("{path}: {name:?} is not a permitted host device")]
    NotPermitted {
        /// Field path in the VM spec.
        path: String,
        /// The device name asked for.
        name: String,
    },
    /// Every device of the resource is in use.
    #[error("{path}: no free {resource} device (the host has {total}, all in use)")]
    Exhausted {
        /// Field path in the VM spec.
        path: String,
        /// The resource.
        resource: String,
        /// Devices the host offers for it.
        total: usize,
    },
    /// An externally provided resource with no provider, or one that
    /// refused.
    #[error("{path}: {resource} is provided by an external plugin: {why}")]
    External {
        /// Field path in the VM spec.
        path: String,
        /// The resource.
        resource: String,
        /// What the provider said.
        why: String,
    },
    /// The IOMMU is off.
    #[error("the IOMMU is off: {0}")]
    IommuOff(String),
}

/// `VVVV:DDDD`, matched case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciSelector {
    /// Vendor ID, lower case.
    pub vendor: String,
    /// Device ID, lower case.
    pub device: String,
}

impl PciSelector {
    /// Parse `10DE:1EB8`.
    pub fn parse(text: &str) -> Option<Self> {
        let (v, d) = text.split_once(':')?;
        let hex4 = |s: &str| s.len() == 4 && s.chars().all(|c| c.is_ascii_hexdigit());
        (hex4(v) && hex4(d)).then(|| PciSelector {
            vendor: v.to_ascii_lowercase(),
            device: d.to_ascii_lowercase(),
        })
    }

    fn matches(&self, dev: &HostPciDevice) -> bool {
        dev.vendor == self.vendor && dev.device == self.device
    }
}

/// A permitted resource and the host devices that can serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// `vendor-domain/NAME`.
    pub name: String,
    /// Allocation belongs to an external plugin.
    pub external: bool,
    /// Host functions that can be given to a VM.
    pub devices: Vec<HostPciDevice>,
}

/// Hands out PCI addresses for an externally provided resource.
pub trait ExternalProvider: Send + Sync {
    /// PCI addresses for one device of `resource` for `owner`.
    fn allocate(&self, resource: &str, owner: &str) -> Result<String, String>;
    /// `owner` stopped; its devices are free.
    fn release(&self, owner: &str);
}

/// One device given to a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    /// `hostDevices[].name` / `gpus[].name`.
    pub name: String,
    /// The resource.
    pub resource: String,
    /// Host PCI address.
    pub pci: String,
}

/// Whether every function in `dev`'s IOMMU group is safe to hand over:
/// bound to vfio-pci, or driverless (bridges and the like).
fn group_viable(sysfs: &PciSysfs, dev: &HostPciDevice) -> Result<bool, SysfsError> {
    let Some(group) = dev.iommu_group else {
        return Ok(false);
    };
    for member in sysfs.iommu_group_devices(group)? {
        let driver = sysfs.device(&member)?.driver;
        if driver.as_deref().is_some_and(|d| d != "vfio-pci") {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The host devices of every permitted resource.
pub fn discover(
    sysfs: &PciSysfs,
    permitted: &PermittedHostDevices,
) -> Result<Vec<Resource>, PassthroughError> {
    let host = sysfs.devices()?;
    let mut out = Vec::new();
    for (index, entry) in permitted.pci_host_devices.iter().enumerate() {
        let selector = PciSelector::parse(&entry.pci_vendor_selector).ok_or_else(|| {
            PassthroughError::BadSelector {
                index,
                selector: entry.pci_vendor_selector.clone(),
            }
        })?;
        let external = entry.external_resource_provider == Some(true);
        let mut devices = Vec::new();
        if !external {
            for dev in host.iter().filter(|d| selector.matches(d)) {
                if dev.driver.as_deref() == Some("vfio-pci") && group_viable(sysfs, dev)? {
                    devices.push(dev.clone());
                }
            }
        }
        out.push(Resource {
            name: entry.resource_name.clone(),
            external,
            devices,
        });
    }
    Ok(out)
}

/// The `modprobe.d` line that binds these devices to vfio-pci at boot
/// (`options vfio-pci ids=10de:1eb8,…`, lower case, in order, once each).
pub fn modprobe_options(permitted: &PermittedHostDevices) -> String {
    let mut ids: Vec<String> = Vec::new();
    for e in &permitted.pci_host_devices {
        if let Some(s) = PciSelector::parse(&e.pci_vendor_selector) {
            let id = format!("{}:{}", s.vendor, s.device);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    format!("options vfio-pci ids={}", ids.join(","))
}

/// The IOMMU is on: the kernel command line turns it on and the kernel
/// made IOMMU groups.
pub fn check_iommu(cmdline: &str, sysfs: &PciSysfs) -> Result<(), PassthroughError> {
    let on = cmdline
        .split_whitespace()
        .any(|a| a == "intel_iommu=on" || a == "amd_iommu=on");
    if !on {
        return Err(PassthroughError::IommuOff(
            "the kernel command line has neither intel_iommu=on nor amd_iommu=on".into(),
        ));
    }
    if !sysfs.iommu_groups_present() {
        return Err(PassthroughError::IommuOff(
            "the kernel made no IOMMU groups (is VT-d / AMD-Vi on in the firmware?)".into(),
        ));
    }
    Ok(())
}

/// Gives host devices to VMs and takes them back. A device is never held
/// by two VMs.
pub struct HostDeviceAllocator {
    resources: Vec<Resource>,
    held: Mutex<BTreeMap<String, String>>,
    provider: Option<Arc<dyn ExternalProvider>>,
}

impl std::fmt::Debug for HostDeviceAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostDeviceAllocator")
            .field("resources", &self.resources)
            .finish_non_exhaustive()
    }
}

impl HostDeviceAllocator {
    /// An allocator over discovered `resources`; `provider` serves the
    /// external ones.
    pub fn new(resources: Vec<Resource>, provider: Option<Arc<dyn ExternalProvider>>) -> Self {
        HostDeviceAllocator {
            resources,
            held: Mutex::new(BTreeMap::new()),
            provider,
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replace the resource list (the permitted list changed): devices
    /// already given out stay with their VMs; a removed resource gets no
    /// new allocations.
    pub fn update(&mut self, resources: Vec<Resource>) {
        self.resources = resources;
    }

    /// Free devices per resource (what a node reports as allocatable);
    /// external resources are counted by their plugin and left out.
    pub fn allocatable(&self) -> Vec<(String, usize)> {
        let held = self.held();
        self.resources
            .iter()
            .filter(|r| !r.external)
            .map(|r| {
                let free = r
                    .devices
                    .iter()
                    .filter(|d| !held.contains_key(&d.pci))
                    .count();
                (r.name.clone(), free)
            })
            .collect()
    }

    /// Give `owner` one device for each `hostDevices[]` and `gpus[]` entry
    /// of `spec`, or nothing at all.
    pub fn allocate(&self, owner: &str, spec: &VmiSpec) -> Result<Vec<Assigned>, PassthroughError> {
        let devices = &spec.domain.devices;
        let wanted = devices
            .host_devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    format!("spec.domain.devices.hostDevices[{i}].deviceName"),
                    d,
                )
            })
            .chain(
                devices
                    .gpus
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (format!("spec.domain.devices.gpus[{i}].deviceName"), d)),
            );
        let mut held = self.held();
        let mut given: Vec<Assigned> = Vec::new();
        let mut external_used = false;
        let result = (|| {
            for (path, want) in wanted {
                let Some(resource) = self.resources.iter().find(|r| r.name == want.device_name)
                else {
                    return Err(PassthroughError::NotPermitted {
                        path,
                        name: want.device_name.clone(),
                    });
                };
                let pci = if resource.external {
                    let provider =
                        self.provider
                            .as_ref()
                            .ok_or_else(|| PassthroughError::External {
                                path: path.clone(),
                                resource: resource.name.clone(),
                                why: "no provider is registered".into(),
                            })?;
                    external_used = true;
                    provider.allocate(&resource.name, owner).map_err(|why| {
                        PassthroughError::External {
                            path: path.clone(),
                            resource: resource.name.clone(),
                            why,
                        }
                    })?
                } else {
                    let free = resource
                        .devices
                        .iter()
                        .find(|d| !held.contains_key(&d.pci))
                        .ok_or_else(|| PassthroughError::Exhausted {
                            path: path.clone(),
                            resource: resource.name.clone(),
                            total: resource.devices.len(),
                        })?;
                    held.insert(free.pci.clone(), owner.to_string());
                    free.pci.clone()
                };
                given.push(Assigned {
                    name: want.name.clone(),
                    resource: resource.name.clone(),
                    pci,
                });
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(given),
            Err(e) => {
                held.retain(|_, o| o != owner);
                if external_used {
                    if let Some(p) = &self.provider {
                        p.release(owner);
                    }
                }
                Err(e)
            }
        }
    }

    /// `owner` stopped: its devices are free again.
    pub fn release(&self, owner: &str) {
        self.held().retain(|_, o| o != owner);
        if let Some(p) = &self.provider {
            p.release(owner);
        }
    }
}
