//! PCI functions as sysfs shows them (`bus/pci/devices/*`: `vendor`,
//! `device`, `class`, the `driver` and `iommu_group` links), and the
//! writes that move one to `vfio-pci`.

use std::path::{Path, PathBuf};

/// Why sysfs could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// Reading or writing a file.
    #[error("sysfs {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// VFIO needs the device in an IOMMU group.
    #[error("{pci} has no IOMMU group: VFIO needs the IOMMU on (intel_iommu=on / amd_iommu=on)")]
    NoIommuGroup {
        /// PCI address.
        pci: String,
    },
}

/// A PCI function of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPciDevice {
    /// PCI address, `0000:3b:02.0`.
    pub pci: String,
    /// Vendor ID, four lower-case hex digits.
    pub vendor: String,
    /// Device ID, four lower-case hex digits.
    pub device: String,
    /// Class code, six hex digits (`030200` for a 3D controller).
    pub class: String,
    /// The bound driver, if any.
    pub driver: Option<String>,
    /// Its IOMMU group, if the IOMMU is on.
    pub iommu_group: Option<u32>,
}

/// A mediated device (vGPU and the like) the host has created: an
/// instance of a parent function's mdev type, under `bus/mdev/devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMdev {
    /// The instance's UUID (its directory name).
    pub uuid: String,
    /// The mdev type's ID (`nvidia-222`).
    pub type_id: String,
    /// The type's human name (`GRID T4-1Q`), which `mdevNameSelector`
    /// matches; the type ID where the driver gives no name.
    pub type_name: String,
    /// PCI address of the parent function.
    pub parent: String,
    /// Its IOMMU group (vfio-mdev gives each instance one).
    pub iommu_group: Option<u32>,
}

/// A sysfs tree: `/sys`, or a fake one.
#[derive(Debug, Clone)]
pub struct PciSysfs {
    root: PathBuf,
}

/// Read a sysfs file, trimmed.
pub fn read_trim(path: &Path) -> Result<String, SysfsError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| SysfsError::Io {
            path: path.display().to_string(),
            source,
        })
}

/// Write a sysfs file.
pub fn write(path: &Path, value: &str) -> Result<(), SysfsError> {
    std::fs::write(path, value).map_err(|source| SysfsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// `0x10DE` → `10de`.
pub fn hex_id(text: &str) -> String {
    text.trim_start_matches("0x").to_ascii_lowercase()
}

/// The last component of a symlink's target (`driver` → `vfio-pci`).
pub fn link_name(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

impl PciSysfs {
    /// The host's `/sys`.
    pub fn host() -> Self {
        PciSysfs::new("/sys")
    }

    /// A tree rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PciSysfs { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of function `pci`.
    pub fn device_dir(&self, pci: &str) -> PathBuf {
        self.root.join("bus/pci/devices").join(pci)
    }

    /// Function `pci`.
    pub fn device(&self, pci: &str) -> Result<HostPciDevice, SysfsError> {
        let dir = self.device_dir(pci);
        Ok(HostPciDevice {
            vendor: hex_id(&read_trim(&dir.join("vendor"))?),
            device: hex_id(&read_trim(&dir.join("device"))?),
            class: read_trim(&dir.join("class"))
                .map(|c| hex_id(&c))
                .unwrap_or_default(),
            driver: link_name(&dir.join("driver")),
            iommu_group: link_name(&dir.join("iommu_group")).and_then(|g| g.parse().ok()),
            pci: pci.to_string(),
        })
    }

    /// Every PCI function, by address.
    pub fn devices(&self) -> Result<Vec<HostPciDevice>, SysfsError> {
        let dir = self.root.join("bus/pci/devices");
        let entries = std::fs::read_dir(&dir).map_err(|source| SysfsError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let mut v = Vec::new();
        for e in entries.flatten() {
            v.push(self.device(&e.file_name().to_string_lossy())?);
        }
        v.sort_by(|a, b| a.pci.cmp(&b.pci));
        Ok(v)
    }

    /// The directory of mediated device `uuid` (what VFIO opens).
    pub fn mdev_dir(&self, uuid: &str) -> PathBuf {
        self.root.join("bus/mdev/devices").join(uuid)
    }

    /// Every mediated device instance, by UUID; none where the host has
    /// no mdev bus.
    pub fn mediated_devices(&self) -> Result<Vec<HostMdev>, SysfsError> {
        let dir = self.root.join("bus/mdev/devices");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut v = Vec::new();
        for e in entries.flatten() {
            let uuid = e.file_name().to_string_lossy().into_owned();
            let link = dir.join(&uuid).join("mdev_type");
            // .../<parent>/mdev_supported_types/<type id>
            let type_dir = std::fs::canonicalize(&link).map_err(|source| SysfsError::Io {
                path: link.display().to_string(),
                source,
            })?;
            let name_of = |p: Option<&Path>| {
                p.and_then(Path::file_name)
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            let type_id = name_of(Some(&type_dir));
            let parent = name_of(type_dir.parent().and_then(Path::parent));
            v.push(HostMdev {
                type_name: read_trim(&type_dir.join("name")).unwrap_or_else(|_| type_id.clone()),
                type_id,
                parent,
                iommu_group: link_name(&dir.join(&uuid).join("iommu_group"))
                    .and_then(|g| g.parse().ok()),
                uuid,
            });
        }
        v.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        Ok(v)
    }

    /// Bind `pci` to `vfio-pci`: it must be in an IOMMU group;
    /// `driver_override`, unbind from its driver, `drivers_probe`.
    pub fn bind_vfio(&self, pci: &str) -> Result<(), SysfsError> {
        let dir = self.device_dir(pci);
        if link_name(&dir.join("iommu_group")).is_none() {
            return Err(SysfsError::NoIommuGroup {
                pci: pci.to_string(),
            });
        }
        if link_name(&dir.join("driver")).as_deref() == Some("vfio-pci") {
            return Ok(());
        }
        write(&dir.join("driver_override"), "vfio-pci")?;
        if dir.join("driver").exists() {
            write(&dir.join("driver/unbind"), pci)?;
        }
        write(&self.root.join("bus/pci/drivers_probe"), pci)
    }

    /// The PCI addresses in IOMMU group `group` (they go to a VM together).
    pub fn iommu_group_devices(&self, group: u32) -> Result<Vec<String>, SysfsError> {
        let dir = self
            .root
            .join(format!("kernel/iommu_groups/{group}/devices"));
        let entries = std::fs::read_dir(&dir).map_err(|source| SysfsError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let mut v: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        Ok(v)
    }

    /// Whether the kernel has any IOMMU group (the IOMMU is on).
    pub fn iommu_groups_present(&self) -> bool {
        std::fs::read_dir(self.root.join("kernel/iommu_groups"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }
}
