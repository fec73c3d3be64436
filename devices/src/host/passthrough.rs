//! Passthrough bookkeeping: the resources `permittedHostDevices` declares,
//! matched against the host's PCI functions (only those bound to
//! `vfio-pci` in an IOMMU group whose members are all VFIO-safe) and its
//! mediated devices (instances whose type name is the selector), handed
//! to VMs (`hostDevices[]`, `gpus[]`) all or nothing and taken back, with
//! externally provided resources left to a provider; and the host checks
//! and `modprobe` line that prepare a host.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use virtkit_core::spec::cluster::PermittedHostDevices;
use virtkit_core::spec::vmi::VmiSpec;

use super::sysfs::{HostMdev, HostPciDevice, PciSysfs, SysfsError};

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

/// What kind of host device a resource hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// Whole PCI functions (`pciHostDevices`).
    Pci,
    /// Mediated device instances (`mediatedDevices`).
    Mediated,
}

/// A permitted resource and the host devices that can serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// `vendor-domain/NAME`.
    pub name: String,
    /// PCI functions or mediated devices.
    pub kind: ResourceKind,
    /// Allocation belongs to an external plugin.
    pub external: bool,
    /// Host functions that can be given to a VM (a PCI resource).
    pub devices: Vec<HostPciDevice>,
    /// Mediated device instances that can be given to a VM.
    pub mediated: Vec<HostMdev>,
}

impl Resource {
    fn addresses(&self) -> Vec<HostAddress> {
        let pci = self.devices.iter().map(|d| HostAddress::Pci(d.pci.clone()));
        let mdev = self
            .mediated
            .iter()
            .map(|m| HostAddress::Mediated(m.uuid.clone()));
        pci.chain(mdev).collect()
    }
}

/// Where a device given to a VM lives on the host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostAddress {
    /// A PCI function, `0000:3b:02.0`.
    Pci(String),
    /// A mediated device, by UUID.
    Mediated(String),
}

impl HostAddress {
    /// Its sysfs directory, which [`super::vfio::VfioFunction::open`]
    /// takes.
    pub fn sysfs_dir(&self, sysfs: &PciSysfs) -> PathBuf {
        match self {
            HostAddress::Pci(pci) => sysfs.device_dir(pci),
            HostAddress::Mediated(uuid) => sysfs.mdev_dir(uuid),
        }
    }

    fn key(&self) -> &str {
        match self {
            HostAddress::Pci(k) | HostAddress::Mediated(k) => k,
        }
    }
}

impl fmt::Display for HostAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostAddress::Pci(pci) => write!(f, "PCI {pci}"),
            HostAddress::Mediated(uuid) => write!(f, "mdev {uuid}"),
        }
    }
}

/// Hands out devices for an externally provided resource.
pub trait ExternalProvider: Send + Sync {
    /// One device of `resource` for `owner`: a PCI address for a PCI
    /// resource, an mdev UUID for a mediated one.
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
    /// The host device.
    pub address: HostAddress,
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
            kind: ResourceKind::Pci,
            external,
            devices,
            mediated: Vec::new(),
        });
    }
    if !permitted.mediated_devices.is_empty() {
        let instances = sysfs.mediated_devices()?;
        for entry in &permitted.mediated_devices {
            let external = entry.external_resource_provider == Some(true);
            // An instance without an IOMMU group cannot be opened by VFIO.
            let mediated = instances
                .iter()
                .filter(|m| !external && m.type_name == entry.mdev_name_selector)
                .filter(|m| m.iommu_group.is_some())
                .cloned()
                .collect();
            out.push(Resource {
                name: entry.resource_name.clone(),
                kind: ResourceKind::Mediated,
                external,
                devices: Vec::new(),
                mediated,
            });
        }
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
                    .addresses()
                    .iter()
                    .filter(|a| !held.contains_key(a.key()))
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
                let address = if resource.external {
                    let provider =
                        self.provider
                            .as_ref()
                            .ok_or_else(|| PassthroughError::External {
                                path: path.clone(),
                                resource: resource.name.clone(),
                                why: "no provider is registered".into(),
                            })?;
                    external_used = true;
                    let id = provider.allocate(&resource.name, owner).map_err(|why| {
                        PassthroughError::External {
                            path: path.clone(),
                            resource: resource.name.clone(),
                            why,
                        }
                    })?;
                    match resource.kind {
                        ResourceKind::Pci => HostAddress::Pci(id),
                        ResourceKind::Mediated => HostAddress::Mediated(id),
                    }
                } else {
                    let all = resource.addresses();
                    let free = all
                        .iter()
                        .find(|a| !held.contains_key(a.key()))
                        .ok_or_else(|| PassthroughError::Exhausted {
                            path: path.clone(),
                            resource: resource.name.clone(),
                            total: all.len(),
                        })?;
                    held.insert(free.key().to_string(), owner.to_string());
                    free.clone()
                };
                given.push(Assigned {
                    name: want.name.clone(),
                    resource: resource.name.clone(),
                    address,
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
