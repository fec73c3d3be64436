//! The VirtualMachineInstance spec: `spec.template.spec` of a VM, `spec` of
//! a VMI. Field names are KubeVirt's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::affinity::{Affinity, Toleration};
use super::{Empty, FeatureState, LocalObjectReference, ResourceList};
use crate::{string_enum, Quantity};

/// `spec.template.spec` / VMI `spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VmiSpec {
    /// The virtual hardware.
    pub domain: DomainSpec,
    /// Storage sources, matched to `domain.devices.disks` by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Networks, matched to `domain.devices.interfaces` by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    /// Seconds between the ACPI shutdown request and a forced power-off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    /// `LiveMigrate` to migrate on host evacuation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_strategy: Option<EvictionStrategy>,
    /// Required node labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Node and pod (anti-)affinity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerated node taints.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Guest hostname.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

string_enum! {
    /// `evictionStrategy` values.
    pub enum EvictionStrategy { /// Migrate away on evacuation.
        LiveMigrate = "LiveMigrate" }
}

/// `domain`: the virtual hardware.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DomainSpec {
    /// Resource requests and limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// CPU topology, model and features.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Guest-visible memory and hugepages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// Machine type (`q35`; `""` means the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    /// Firmware: UUID, serial, BIOS or EFI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// Guest clock and timers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock: Option<Clock>,
    /// ACPI, APIC, SMM, Hyper-V enlightenments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
    /// Disks, NICs, watchdog, host devices.
    pub devices: Devices,
}

/// `domain.resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ResourceRequirements {
    /// What the host reserves (`memory`, `cpu`).
    #[serde(skip_serializing_if = "ResourceList::is_empty")]
    pub requests: ResourceList,
    /// Upper bounds (`memory`, `cpu`).
    #[serde(skip_serializing_if = "ResourceList::is_empty")]
    pub limits: ResourceList,
    /// Leave the VMM overhead out of the reservation (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overcommit_guest_overhead: Option<bool>,
}

/// `domain.cpu`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Cpu {
    /// Cores per socket (≥ 1, default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cores: Option<i64>,
    /// Sockets (≥ 1, default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sockets: Option<i64>,
    /// Threads per core (≥ 1, default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<i64>,
    /// Named model (`Conroe`) or `host-model` / `host-passthrough`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// CPU feature policies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<CpuFeature>,
    /// Pin each vCPU to a dedicated host CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedicated_cpu_placement: Option<bool>,
    /// Give the VMM's own threads a separate dedicated CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolate_emulator_thread: Option<bool>,
}

impl Cpu {
    /// sockets × cores × threads with the defaults of 1 (negative or zero
    /// values count as 1 here; validation reports them).
    pub fn vcpu_count(&self) -> u64 {
        let f = |v: Option<i64>| v.filter(|v| *v > 0).unwrap_or(1) as u64;
        f(self.sockets)
            .saturating_mul(f(self.cores))
            .saturating_mul(f(self.threads))
    }
}

/// One `domain.cpu.features[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CpuFeature {
    /// CPU feature name, e.g. `apic`.
    pub name: String,
    /// Policy; empty means `require`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<CpuFeaturePolicy>,
}

string_enum! {
    /// CPU feature policies.
    pub enum CpuFeaturePolicy {
        /// Set even if the host lacks it.
        Force = "force",
        /// Host must support or emulate it (default).
        Require = "require",
        /// Used when the host supports it.
        Optional = "optional",
        /// Cleared.
        Disable = "disable",
        /// Cleared; the VM must not run where the host has it.
        Forbid = "forbid",
    }
}

/// `domain.memory`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Memory {
    /// Guest-visible memory; may exceed the request (overcommit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest: Option<Quantity>,
    /// Back guest RAM with hugepages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugepages: Option<Hugepages>,
}

/// `domain.memory.hugepages`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Hugepages {
    /// `2Mi` or `1Gi` on x86_64.
    pub page_size: String,
}

/// `domain.machine`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Machine {
    /// `q35`; `""` means the default.
    #[serde(rename = "type")]
    pub machine_type: String,
}

/// `domain.firmware`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Firmware {
    /// SMBIOS UUID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// SMBIOS serial number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// BIOS or EFI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<Bootloader>,
}

/// `firmware.bootloader`: exactly one of `bios` and `efi`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Bootloader {
    /// Legacy BIOS (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bios: Option<Empty>,
    /// UEFI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub efi: Option<Efi>,
}

/// `firmware.bootloader.efi`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Efi {
    /// Secure Boot (default true); needs SMM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    /// Keep the NVRAM between starts (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
}

impl Efi {
    /// Effective Secure Boot setting (KubeVirt's default is on).
    pub fn secure_boot(&self) -> bool {
        self.secure_boot.unwrap_or(true)
    }
}

/// `domain.clock`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Clock {
    /// UTC offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utc: Option<ClockUtc>,
    /// Named timezone instead of UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Guest timers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timer: Option<Timer>,
}

/// `clock.utc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClockUtc {
    /// Offset from UTC in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset_seconds: Option<i64>,
}

/// `clock.timer`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Timer {
    /// HPET.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hpet: Option<TimerSetting>,
    /// KVM clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kvm: Option<TimerSetting>,
    /// PIT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pit: Option<TimerSetting>,
    /// RTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtc: Option<TimerSetting>,
    /// Hyper-V reference time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hyperv: Option<TimerSetting>,
}

/// One timer's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TimerSetting {
    /// Whether the timer exists (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// `delay`, `catchup`, `merge` or `discard`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tick_policy: Option<TickPolicy>,
    /// RTC only: the tracked clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track: Option<String>,
}

string_enum! {
    /// Timer tick policies.
    pub enum TickPolicy {
        /// Deliver late ticks late.
        Delay = "delay",
        /// Deliver missed ticks faster.
        Catchup = "catchup",
        /// Merge missed ticks.
        Merge = "merge",
        /// Drop missed ticks.
        Discard = "discard",
    }
}

/// `domain.features`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Features {
    /// ACPI (`{}` = on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acpi: Option<FeatureState>,
    /// APIC (`{}` = on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apic: Option<FeatureState>,
    /// System Management Mode; Secure Boot needs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smm: Option<FeatureState>,
    /// Hyper-V enlightenments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hyperv: Option<FeatureHyperv>,
}

impl Features {
    /// Whether SMM is on: `smm: {}` counts as on, no `smm` as off.
    pub fn smm_enabled(&self) -> bool {
        self.smm.as_ref().is_some_and(FeatureState::is_on)
    }
}

/// `features.hyperv`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FeatureHyperv {
    /// Relaxed timing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relaxed: Option<FeatureState>,
    /// Virtual APIC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vapic: Option<FeatureState>,
    /// Spinlock retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spinlocks: Option<FeatureSpinlocks>,
    /// Virtual processor index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpindex: Option<FeatureState>,
    /// Synthetic interrupt controller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synic: Option<FeatureState>,
}

/// `hyperv.spinlocks`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FeatureSpinlocks {
    /// On/off (default on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Retry count (≥ 4096; seed uses 8191).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spinlocks: Option<i64>,
}

/// `domain.devices`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Devices {
    /// Disks, each naming a volume.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    /// NICs, each naming a network.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// The watchdog device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<Watchdog>,
    /// One queue per vCPU on virtio NICs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_interface_multiqueue: Option<bool>,
    /// Attach the default pod interface when none is given (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoattach_pod_interface: Option<bool>,
    /// Passed-through host PCI devices.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_devices: Vec<HostDevice>,
    /// Passed-through GPUs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<HostDevice>,
    /// A virtio entropy device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rng: Option<Empty>,
}

/// A `disks[]` entry: exactly one of `disk`, `cdrom`, `lun`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Disk {
    /// Equals a `volumes[].name`.
    pub name: String,
    /// Position in the global boot order (≥ 1, unique with interfaces).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<i64>,
    /// A hard disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskTarget>,
    /// A CD-ROM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cdrom: Option<CdromTarget>,
    /// A SCSI LUN (needs a Block volume).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lun: Option<DiskTarget>,
    /// Guest-visible serial number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Several VMs may write it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shareable: Option<bool>,
    /// Host cache mode (`none`, `writethrough`, `writeback`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
}

/// `disk` / `lun` target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DiskTarget {
    /// `virtio` (default), `sata`, `scsi`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
    /// Read-only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    /// Fixed PCI address `0000:00:05.0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
}

/// `cdrom` target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CdromTarget {
    /// `sata` (default) or `scsi`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
    /// Read-only (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    /// `open` or `closed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tray: Option<String>,
}

string_enum! {
    /// Disk buses.
    pub enum DiskBus {
        /// virtio-blk.
        Virtio = "virtio",
        /// AHCI.
        Sata = "sata",
        /// virtio-scsi.
        Scsi = "scsi",
    }
}

/// An `interfaces[]` entry: exactly one binding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Interface {
    /// Equals a `networks[].name`.
    pub name: String,
    /// NIC model (default `virtio`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<InterfaceModel>,
    /// Guest MAC; generated from the pool when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Position in the global boot order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<i64>,
    /// Forwarded ports (masquerade); none means all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// NAT behind the pod address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<Empty>,
    /// Linux bridge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<Empty>,
    /// SR-IOV VF passthrough.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sriov: Option<Empty>,
    /// `absent` to hot-unplug.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<InterfaceState>,
    /// Fixed PCI address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
}

impl Interface {
    /// The binding names present on this interface.
    pub fn bindings(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.masquerade.is_some() {
            v.push("masquerade");
        }
        if self.bridge.is_some() {
            v.push("bridge");
        }
        if self.sriov.is_some() {
            v.push("sriov");
        }
        v
    }
}

string_enum! {
    /// NIC models.
    pub enum InterfaceModel {
        /// virtio-net (default).
        Virtio = "virtio",
        /// Intel e1000.
        E1000 = "e1000",
        /// Intel e1000e.
        E1000e = "e1000e",
        /// NE2000.
        Ne2kPci = "ne2k_pci",
        /// AMD PCnet.
        Pcnet = "pcnet",
        /// Realtek 8139.
        Rtl8139 = "rtl8139",
    }
}

string_enum! {
    /// Interface states.
    pub enum InterfaceState {
        /// Hot-unplug the interface.
        Absent = "absent",
    }
}

/// A forwarded port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Port {
    /// Optional unique name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP` (default) or `UDP`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// 1..=65535.
    pub port: i64,
}

/// `devices.watchdog`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Watchdog {
    /// Device name.
    pub name: String,
    /// The i6300esb model (the only one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub i6300esb: Option<I6300esb>,
}

/// `watchdog.i6300esb`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct I6300esb {
    /// `poweroff`, `reset` (default) or `shutdown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<WatchdogAction>,
}

string_enum! {
    /// Watchdog expiry actions.
    pub enum WatchdogAction {
        /// Immediate power-off.
        Poweroff = "poweroff",
        /// Immediate reset.
        Reset = "reset",
        /// ACPI power button.
        Shutdown = "shutdown",
    }
}

/// `hostDevices[]` / `gpus[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HostDevice {
    /// Name within the VM.
    pub name: String,
    /// Permitted resource name, e.g. `nvidia.com/TU104GL_Tesla_T4`.
    pub device_name: String,
}

/// A `volumes[]` entry: exactly one source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Volume {
    /// DNS label, unique in the VM.
    pub name: String,
    /// Ephemeral disk pulled from a registry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_disk: Option<ContainerDiskSource>,
    /// NoCloud seed disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_init_no_cloud: Option<CloudInitSource>,
    /// ConfigDrive seed disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_init_config_drive: Option<CloudInitSource>,
    /// An existing persistent volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcSource>,
    /// A volume prepared by a DataVolume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<DataVolumeRef>,
    /// Copy-on-write over a read-only PVC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<EphemeralSource>,
    /// Sparse scratch disk tied to the VMI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty_disk: Option<EmptyDiskSource>,
}

impl Volume {
    /// The source kinds present on this volume.
    pub fn sources(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut add = |present: bool, name| {
            if present {
                v.push(name)
            }
        };
        add(self.container_disk.is_some(), "containerDisk");
        add(self.cloud_init_no_cloud.is_some(), "cloudInitNoCloud");
        add(
            self.cloud_init_config_drive.is_some(),
            "cloudInitConfigDrive",
        );
        add(
            self.persistent_volume_claim.is_some(),
            "persistentVolumeClaim",
        );
        add(self.data_volume.is_some(), "dataVolume");
        add(self.ephemeral.is_some(), "ephemeral");
        add(self.empty_disk.is_some(), "emptyDisk");
        v
    }

    /// The cloud-init source, NoCloud or ConfigDrive, if any.
    pub fn cloud_init(&self) -> Option<(&'static str, &CloudInitSource)> {
        self.cloud_init_no_cloud
            .as_ref()
            .map(|c| ("cloudInitNoCloud", c))
            .or_else(|| {
                self.cloud_init_config_drive
                    .as_ref()
                    .map(|c| ("cloudInitConfigDrive", c))
            })
    }
}

/// `containerDisk`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerDiskSource {
    /// Image reference.
    pub image: String,
    /// `Always`, `IfNotPresent`, `Never`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Path of the disk file in the image (default under `/disk/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `cloudInitNoCloud` / `cloudInitConfigDrive`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CloudInitSource {
    /// Inline user data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Base64 user data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data_base64: Option<String>,
    /// User data from a Secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data_secret_ref: Option<LocalObjectReference>,
    /// Inline network config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_data: Option<String>,
    /// Base64 network config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_data_base64: Option<String>,
    /// Network config from a Secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_data_secret_ref: Option<LocalObjectReference>,
}

/// `persistentVolumeClaim`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PvcSource {
    /// Claim name in the VM's namespace.
    pub claim_name: String,
    /// Attach read-only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// `dataVolume`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DataVolumeRef {
    /// DataVolume name.
    pub name: String,
}

/// `ephemeral`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EphemeralSource {
    /// The read-only backing claim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcSource>,
}

/// `emptyDisk`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EmptyDiskSource {
    /// Size (> 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,
}

/// A `networks[]` entry: exactly one of `pod`, `multus`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Network {
    /// Equals an `interfaces[].name`.
    pub name: String,
    /// The default pod network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodNetwork>,
    /// A secondary network from a NetworkAttachmentDefinition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multus: Option<MultusNetwork>,
}

/// `networks[].pod`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodNetwork {
    /// Guest IPv4 CIDR for masquerade (default 10.0.2.0/24).
    #[serde(rename = "vmNetworkCIDR", skip_serializing_if = "Option::is_none")]
    pub vm_network_cidr: Option<String>,
    /// Guest IPv6 CIDR for masquerade (default fd10:0:2::/120).
    #[serde(rename = "vmIPv6NetworkCIDR", skip_serializing_if = "Option::is_none")]
    pub vm_ipv6_network_cidr: Option<String>,
}

/// `networks[].multus`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MultusNetwork {
    /// `[namespace/]name` of a NetworkAttachmentDefinition.
    pub network_name: String,
    /// Use as the default network instead of the pod network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
}
