//! SR-IOV on the host: physical and virtual functions discovered through
//! a sysfs root (`/sys` on a host, a tree a test builds elsewhere), the
//! `SriovNetworkNodePolicy` NIC selector, VF binding to `vfio-pci`
//! (`driver_override`, unbind, `drivers_probe`), a VF allocator whose
//! state survives restarts, and VF settings (MAC, VLAN and QoS, spoof
//! check, trust, link state, min/max TX rate) as one rtnetlink message on
//! the PF.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rtnetlink::packet_route::link::{
    LinkAttribute, LinkMessage, LinkVfInfo, VfInfo, VfInfoLinkState, VfInfoMac, VfInfoRate,
    VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan, VfLinkState,
};
use virtkit_core::spec::network::{OnOff, SriovNetworkNodePolicySpec, SriovNetworkSpec};

use virtkit_devices::host::sysfs::{self, hex_id, link_name, PciSysfs, SysfsError};

use crate::mac::MacAddr;
use crate::state::StateFile;

/// Errors of SR-IOV discovery, binding, allocation and settings.
#[derive(Debug, thiserror::Error)]
pub enum SriovError {
    /// Reading or writing sysfs.
    #[error("sysfs {path}: {source}")]
    Sysfs {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A policy or network that the host cannot satisfy; names the field.
    #[error("{0}")]
    Invalid(String),
    /// No free VF for the resource.
    #[error("resource {resource}: all {total} VFs are in use")]
    Exhausted {
        /// The resource name.
        resource: String,
        /// VFs the resource has.
        total: usize,
    },
    /// The allocator's state file.
    #[error("VF allocator state {path}: {source}")]
    State {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Applying VF settings.
    #[error("VF settings on {pf}: {source}")]
    Netlink {
        /// The PF.
        pf: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A virtual function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualFunction {
    /// Its number on the PF (`virtfn<N>`).
    pub index: u32,
    /// PCI address, `0000:3b:02.0`.
    pub pci: String,
    /// Vendor ID, four hex digits.
    pub vendor: String,
    /// Device ID, four hex digits.
    pub device: String,
    /// The bound driver, if any.
    pub driver: Option<String>,
    /// Its IOMMU group, if the IOMMU is on.
    pub iommu_group: Option<u32>,
}

/// A physical function (an SR-IOV capable NIC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalFunction {
    /// PCI address.
    pub pci: String,
    /// Its network interface, if it has one.
    pub netdev: Option<String>,
    /// Vendor ID, four hex digits.
    pub vendor: String,
    /// Device ID, four hex digits.
    pub device: String,
    /// `sriov_totalvfs`.
    pub total_vfs: u32,
    /// `sriov_numvfs`.
    pub num_vfs: u32,
    /// Its VFs, by index.
    pub vfs: Vec<VirtualFunction>,
}

/// A sysfs tree: `/sys`, or a fake one.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
    pci: PciSysfs,
}

fn read_trim(path: &Path) -> Result<String, SriovError> {
    Ok(sysfs::read_trim(path)?)
}

fn write(path: &Path, value: &str) -> Result<(), SriovError> {
    Ok(sysfs::write(path, value)?)
}

impl From<SysfsError> for SriovError {
    fn from(e: SysfsError) -> Self {
        match e {
            SysfsError::Io { path, source } => SriovError::Sysfs { path, source },
            other => SriovError::Invalid(other.to_string()),
        }
    }
}

/// An inclusive range of VF indexes.
type VfRange = Option<(u32, u32)>;

/// `ens1f0#2-5` → (`ens1f0`, Some((2, 5))).
fn pf_name_range(entry: &str) -> Result<(&str, VfRange), SriovError> {
    let Some((name, range)) = entry.split_once('#') else {
        return Ok((entry, None));
    };
    let bad = || {
        SriovError::Invalid(format!(
            "nicSelector.pfNames: {entry:?}: a range is #first-last"
        ))
    };
    let (a, b) = range.split_once('-').ok_or_else(bad)?;
    let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a > b {
        return Err(bad());
    }
    Ok((name, Some((a, b))))
}

impl Sysfs {
    /// The host's `/sys`.
    pub fn host() -> Self {
        Sysfs::new("/sys")
    }

    /// A tree rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Sysfs {
            pci: PciSysfs::new(&root),
            root,
        }
    }

    fn vf(&self, index: u32, pci: String) -> Result<VirtualFunction, SriovError> {
        let d = self.pci.device(&pci)?;
        Ok(VirtualFunction {
            index,
            vendor: d.vendor,
            device: d.device,
            driver: d.driver,
            iommu_group: d.iommu_group,
            pci,
        })
    }

    /// Every SR-IOV capable PCI function (one with `sriov_totalvfs`).
    pub fn physical_functions(&self) -> Result<Vec<PhysicalFunction>, SriovError> {
        let devices = self.root.join("bus/pci/devices");
        let entries = std::fs::read_dir(&devices).map_err(|source| SriovError::Sysfs {
            path: devices.display().to_string(),
            source,
        })?;
        let mut pfs = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            if !dir.join("sriov_totalvfs").exists() {
                continue;
            }
            let pci = entry.file_name().to_string_lossy().into_owned();
            let netdev = std::fs::read_dir(dir.join("net"))
                .ok()
                .and_then(|mut d| d.next())
                .and_then(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned());
            let mut vfs = Vec::new();
            for link in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = link.file_name().to_string_lossy().into_owned();
                let Some(index) = name.strip_prefix("virtfn").and_then(|n| n.parse().ok()) else {
                    continue;
                };
                if let Some(vf_pci) = link_name(&link.path()) {
                    vfs.push(self.vf(index, vf_pci)?);
                }
            }
            vfs.sort_by_key(|v| v.index);
            pfs.push(PhysicalFunction {
                vendor: hex_id(&read_trim(&dir.join("vendor"))?),
                device: hex_id(&read_trim(&dir.join("device"))?),
                total_vfs: read_trim(&dir.join("sriov_totalvfs"))?.parse().unwrap_or(0),
                num_vfs: read_trim(&dir.join("sriov_numvfs"))?.parse().unwrap_or(0),
                netdev,
                vfs,
                pci,
            });
        }
        pfs.sort_by(|a, b| a.pci.cmp(&b.pci));
        Ok(pfs)
    }

    /// The VFs a policy's NIC selector picks (every given selector must
    /// match; a `pfNames` entry may limit the VFs, `ens1f0#0-3`), after
    /// checking `numVfs` against each selected PF's `sriov_totalvfs`.
    pub fn select(
        &self,
        policy: &SriovNetworkNodePolicySpec,
    ) -> Result<Vec<VirtualFunction>, SriovError> {
        let sel = &policy.nic_selector;
        let names = sel
            .pf_names
            .iter()
            .map(|e| pf_name_range(e))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::new();
        for pf in self.physical_functions()? {
            let vendor_ok = sel.vendor.as_deref().is_none_or(|v| hex_id(v) == pf.vendor);
            let device_ok = sel
                .device_id
                .as_deref()
                .is_none_or(|d| hex_id(d) == pf.device);
            let root_ok = sel.root_devices.is_empty() || sel.root_devices.contains(&pf.pci);
            let name = names.iter().find(|(n, _)| pf.netdev.as_deref() == Some(*n));
            let name_ok = names.is_empty() || name.is_some();
            if !(vendor_ok && device_ok && root_ok && name_ok) {
                continue;
            }
            if policy.num_vfs < 0 || policy.num_vfs as u64 > u64::from(pf.total_vfs) {
                return Err(SriovError::Invalid(format!(
                    "spec.numVfs: {} is more than {} ({}) supports (sriov_totalvfs {})",
                    policy.num_vfs,
                    pf.pci,
                    pf.netdev.as_deref().unwrap_or("no netdev"),
                    pf.total_vfs
                )));
            }
            let range = name.and_then(|(_, r)| *r);
            out.extend(
                pf.vfs
                    .into_iter()
                    .filter(|v| range.is_none_or(|(a, b)| (a..=b).contains(&v.index))),
            );
        }
        Ok(out)
    }

    /// Create `n` VFs on PF `pci` (`sriov_numvfs`; set to 0 first when it
    /// changes, as the kernel requires).
    pub fn set_num_vfs(&self, pci: &str, n: u32) -> Result<(), SriovError> {
        let dir = self.pci.device_dir(pci);
        let total: u32 = read_trim(&dir.join("sriov_totalvfs"))?.parse().unwrap_or(0);
        if n > total {
            return Err(SriovError::Invalid(format!(
                "spec.numVfs: {n} is more than {pci} supports (sriov_totalvfs {total})"
            )));
        }
        let file = dir.join("sriov_numvfs");
        let now: u32 = read_trim(&file)?.parse().unwrap_or(0);
        if now == n {
            return Ok(());
        }
        if now != 0 {
            write(&file, "0")?;
        }
        write(&file, &n.to_string())
    }

    /// Bind VF `pci` to `vfio-pci` for passthrough (`deviceType:
    /// vfio-pci`): it must be in an IOMMU group; `driver_override`, unbind
    /// from its driver, `drivers_probe`.
    pub fn bind_vfio(&self, pci: &str) -> Result<(), SriovError> {
        Ok(self.pci.bind_vfio(pci)?)
    }

    /// The PCI addresses in IOMMU group `group` (all of them go to the VM
    /// together).
    pub fn iommu_group_devices(&self, group: u32) -> Result<Vec<String>, SriovError> {
        Ok(self.pci.iommu_group_devices(group)?)
    }
}

/// Hands VFs of a resource to VMs and takes them back; a VF is never held
/// by two owners, and the state (a file) survives restarts.
#[derive(Debug)]
pub struct VfAllocator {
    state: StateFile,
}

/// VF PCI address → owner (`namespace/vm/interface`).
type Held = BTreeMap<String, String>;

impl VfAllocator {
    /// An allocator keeping its state in `path`.
    pub fn open(path: impl Into<PathBuf>) -> Self {
        VfAllocator {
            state: StateFile::new(path),
        }
    }

    fn io(&self, source: std::io::Error) -> SriovError {
        SriovError::State {
            path: self.state.path().display().to_string(),
            source,
        }
    }

    /// Give `owner` a free VF of `resource` among `vfs` (a resource's VFs
    /// from [`Sysfs::select`]); the one it already holds when called again.
    pub fn allocate(
        &self,
        resource: &str,
        vfs: &[VirtualFunction],
        owner: &str,
    ) -> Result<String, SriovError> {
        self.state
            .update(|held: &mut Held| {
                if let Some(vf) = vfs
                    .iter()
                    .find(|v| held.get(&v.pci).map(String::as_str) == Some(owner))
                {
                    return Ok(vf.pci.clone());
                }
                let free = vfs
                    .iter()
                    .find(|v| !held.contains_key(&v.pci))
                    .ok_or_else(|| SriovError::Exhausted {
                        resource: resource.to_string(),
                        total: vfs.len(),
                    })?;
                held.insert(free.pci.clone(), owner.to_string());
                Ok(free.pci.clone())
            })
            .map_err(|e| self.io(e))?
    }

    /// Take back every VF `owner` holds; returns how many.
    pub fn release(&self, owner: &str) -> Result<usize, SriovError> {
        self.state
            .update(|held: &mut Held| {
                let before = held.len();
                held.retain(|_, o| o != owner);
                Ok::<_, SriovError>(before - held.len())
            })
            .map_err(|e| self.io(e))?
    }

    /// Who holds VF `pci`.
    pub fn holder(&self, pci: &str) -> Result<Option<String>, SriovError> {
        let held: Held = self.state.read().map_err(|e| self.io(e))?;
        Ok(held.get(pci).cloned())
    }
}

/// A VF's link state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VfLink {
    /// Follow the PF.
    Auto,
    /// Always up.
    Enable,
    /// Always down.
    Disable,
}

/// Settings of one VF, as a SriovNetwork gives them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VfSettings {
    /// The VF's MAC (the guest interface's).
    pub mac: Option<MacAddr>,
    /// VLAN (0 = none) and its 802.1p priority.
    pub vlan: Option<(u16, u8)>,
    /// Spoof check.
    pub spoof_check: Option<bool>,
    /// Trusted VF.
    pub trust: Option<bool>,
    /// Link state.
    pub link_state: Option<VfLink>,
    /// Min and max TX rate in Mbps (0 = unlimited).
    pub tx_rate: Option<(u32, u32)>,
}

impl VfSettings {
    /// From a SriovNetwork (ranges checked again: 0–4095 VLAN, 0–7 QoS,
    /// min ≤ max rate) and the interface's MAC.
    pub fn from_network(net: &SriovNetworkSpec, mac: Option<MacAddr>) -> Result<Self, SriovError> {
        let bad = |m: String| Err(SriovError::Invalid(m));
        let vlan = net.vlan.unwrap_or(0);
        let qos = net.vlan_qos.unwrap_or(0);
        if !(0..=4095).contains(&vlan) {
            return bad(format!("spec.vlan: {vlan} is not 0–4095"));
        }
        if !(0..=7).contains(&qos) {
            return bad(format!("spec.vlanQoS: {qos} is not 0–7"));
        }
        let rate = |key: &str, v: Option<i64>| match v {
            None => Ok(None),
            Some(r) if (0..=i64::from(u32::MAX)).contains(&r) => Ok(Some(r as u32)),
            Some(r) => Err(SriovError::Invalid(format!(
                "spec.{key}: {r} Mbps is out of range"
            ))),
        };
        let (min, max) = (
            rate("minTxRate", net.min_tx_rate)?,
            rate("maxTxRate", net.max_tx_rate)?,
        );
        if let (Some(a), Some(b)) = (min, max) {
            if b != 0 && a > b {
                return bad(format!("spec.minTxRate: {a} is above maxTxRate {b}"));
            }
        }
        let link_state = match net.link_state.as_deref() {
            None => None,
            Some("auto") => Some(VfLink::Auto),
            Some("enable") => Some(VfLink::Enable),
            Some("disable") => Some(VfLink::Disable),
            Some(other) => {
                return bad(format!(
                    "spec.linkState: {other:?} is not enable, disable or auto"
                ))
            }
        };
        let on = |key: &str, v: &Option<OnOff>| {
            match v {
            None => Ok(None),
            Some(OnOff::Text(t)) if t == "on" => Ok(Some(true)),
            Some(OnOff::Text(t)) if t == "off" => Ok(Some(false)),
            Some(OnOff::Text(t)) => Err(SriovError::Invalid(format!("spec.{key}: {t:?} is not \"on\" or \"off\""))),
            Some(OnOff::Bool(_)) => Err(SriovError::Invalid(format!(
                "spec.{key}: on/off must be a quoted string (YAML reads an unquoted on as a boolean)"
            ))),
        }
        };
        Ok(VfSettings {
            mac,
            vlan: (net.vlan.is_some() || net.vlan_qos.is_some())
                .then_some((vlan as u16, qos as u8)),
            spoof_check: on("spoofChk", &net.spoof_chk)?,
            trust: on("trust", &net.trust)?,
            link_state,
            tx_rate: (min.is_some() || max.is_some()).then(|| (min.unwrap_or(0), max.unwrap_or(0))),
        })
    }

    /// The RTM_SETLINK message for PF link `pf_index` that applies these
    /// settings to VF `vf` (IFLA_VFINFO_LIST / IFLA_VF_INFO).
    pub fn message(&self, pf_index: u32, vf: u32) -> LinkMessage {
        let mut info = Vec::new();
        if let Some(m) = self.mac {
            info.push(VfInfo::Mac(VfInfoMac::new(vf, &m.0)));
        }
        if let Some((id, qos)) = self.vlan {
            info.push(VfInfo::Vlan(VfInfoVlan::new(
                vf,
                u32::from(id),
                u32::from(qos),
            )));
        }
        if let Some((min, max)) = self.tx_rate {
            info.push(VfInfo::Rate(VfInfoRate::new(vf, min, max)));
        }
        if let Some(on) = self.spoof_check {
            info.push(VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, on)));
        }
        if let Some(s) = self.link_state {
            let state = match s {
                VfLink::Auto => VfLinkState::Auto,
                VfLink::Enable => VfLinkState::Enable,
                VfLink::Disable => VfLinkState::Disable,
            };
            info.push(VfInfo::LinkState(VfInfoLinkState::new(vf, state)));
        }
        if let Some(on) = self.trust {
            info.push(VfInfo::Trust(VfInfoTrust::new(vf, on)));
        }
        let mut msg = LinkMessage::default();
        msg.header.index = pf_index;
        msg.attributes
            .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(info)]));
        msg
    }

    /// Apply to VF `vf` of PF network interface `pf` in the namespace at
    /// `netns` (`None`: this process's).
    pub fn apply(&self, netns: Option<&Path>, pf: &str, vf: u32) -> Result<(), SriovError> {
        let (settings, name) = (self.clone(), pf.to_string());
        crate::link::run(netns, move |h| async move {
            let index = crate::link::index(&h, &name)
                .await?
                .ok_or(rtnetlink::Error::RequestFailed)?;
            h.link().set(settings.message(index, vf)).execute().await
        })
        .map_err(|source| SriovError::Netlink {
            pf: pf.to_string(),
            source,
        })
    }
}
