//! Defaulting as KubeVirt's mutating webhook does it — a separate, explicit
//! step: parse → [`apply`] → validate. Each function fills only what is
//! unset and never overrides a value the user wrote.

use crate::document::Object;
use crate::spec::cluster::{CertConfig, CertRotation, MigrationConfig};
use crate::spec::datavolume::{ContentType, DataVolumeSpec, VolumeMode};
use crate::spec::network::OnOff;
use crate::spec::vmi::{
    Cpu, CpuFeaturePolicy, Disk, DiskBus, DiskTarget, Features, Interface, InterfaceModel, Machine,
    Network, PodNetwork, Port, VmiSpec, WatchdogAction,
};
use crate::spec::{Empty, FeatureState};
use crate::Quantity;

/// The default machine type.
pub const DEFAULT_MACHINE_TYPE: &str = "q35";
/// Default masquerade guest network.
pub const DEFAULT_VM_NETWORK_CIDR: &str = "10.0.2.0/24";
/// Default masquerade guest IPv6 network.
pub const DEFAULT_VM_IPV6_NETWORK_CIDR: &str = "fd10:0:2::/120";
/// Default grace period between shutdown request and power-off.
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;
/// Name of the interface and network added when none is given.
pub const DEFAULT_POD_NETWORK_NAME: &str = "default";

/// Apply every default to an object in place.
pub fn apply(obj: &mut Object) {
    match obj {
        Object::VirtualMachine(vm) => {
            vmi_spec(&mut vm.spec.template.spec);
            for t in &mut vm.spec.data_volume_templates {
                data_volume(&mut t.spec);
            }
        }
        Object::VirtualMachineInstance(vmi) => vmi_spec(&mut vmi.spec),
        Object::DataVolume(dv) => data_volume(&mut dv.spec),
        Object::HyperConverged(hc) => {
            if let Some(m) = &mut hc.spec.live_migration_config {
                migration_config(m);
            }
            if let Some(c) = &mut hc.spec.cert_config {
                cert_config(c);
            }
        }
        Object::SriovNetworkNodePolicy(p) => {
            p.spec.priority.get_or_insert(99);
            p.spec.is_rdma.get_or_insert(false);
            p.spec.device_type.get_or_insert_with(|| "netdevice".into());
        }
        Object::SriovNetwork(n) => {
            n.spec.vlan.get_or_insert(0);
            n.spec.vlan_qos.get_or_insert(0);
            n.spec.link_state.get_or_insert_with(|| "auto".into());
            n.spec
                .spoof_chk
                .get_or_insert_with(|| OnOff::Text("on".into()));
            n.spec
                .trust
                .get_or_insert_with(|| OnOff::Text("off".into()));
        }
        Object::Service(svc) => {
            svc.spec
                .service_type
                .get_or_insert_with(|| "ClusterIP".into());
            for p in &mut svc.spec.ports {
                p.protocol.get_or_insert_with(|| "TCP".into());
                p.target_port
                    .get_or_insert(crate::spec::service::TargetPort::Number(p.port));
            }
        }
        // A NAD's config is the user's JSON text; its defaults are read
        // through `BridgeConfig`'s accessors instead of rewriting it.
        Object::NetworkAttachmentDefinition(_)
        | Object::VirtualMachineInstanceMigration(_)
        | Object::VirtualMachineInstancePreset(_)
        | Object::CdiConfig(_)
        | Object::ConfigMap(_)
        | Object::Secret(_) => {}
    }
}

/// Defaults of a VMI spec.
pub fn vmi_spec(spec: &mut VmiSpec) {
    let domain = &mut spec.domain;
    let machine = domain.machine.get_or_insert_with(Machine::default);
    if machine.machine_type.is_empty() {
        machine.machine_type = DEFAULT_MACHINE_TYPE.to_string();
    }
    let cpu = domain.cpu.get_or_insert_with(Cpu::default);
    cpu.cores.get_or_insert(1);
    cpu.sockets.get_or_insert(1);
    cpu.threads.get_or_insert(1);
    for f in &mut cpu.features {
        f.policy.get_or_insert(CpuFeaturePolicy::Require);
    }
    // Secure Boot needs SMM: turn SMM on unless the user said otherwise.
    let secure_boot = domain
        .firmware
        .as_ref()
        .and_then(|f| f.bootloader.as_ref())
        .and_then(|b| b.efi.as_ref())
        .map(|efi| efi.secure_boot());
    if let Some(efi) = domain
        .firmware
        .as_mut()
        .and_then(|f| f.bootloader.as_mut())
        .and_then(|b| b.efi.as_mut())
    {
        efi.secure_boot.get_or_insert(true);
        efi.persistent.get_or_insert(false);
    }
    if secure_boot == Some(true) {
        let features = domain.features.get_or_insert_with(Features::default);
        features.smm.get_or_insert_with(FeatureState::default);
    }
    // Volumes without a disk get one (KubeVirt's volume/disk defaulting), so
    // a cloud-init volume is attached as a virtio disk.
    for v in &spec.volumes {
        if !domain.devices.disks.iter().any(|d| d.name == v.name) && !v.name.is_empty() {
            domain.devices.disks.push(Disk {
                name: v.name.clone(),
                ..Disk::default()
            });
        }
    }
    for d in &mut domain.devices.disks {
        if d.disk.is_none() && d.cdrom.is_none() && d.lun.is_none() {
            d.disk = Some(DiskTarget::default());
        }
        if let Some(t) = &mut d.disk {
            t.bus.get_or_insert(DiskBus::Virtio);
        }
        if let Some(t) = &mut d.cdrom {
            t.bus.get_or_insert(DiskBus::Sata);
            t.readonly.get_or_insert(true);
        }
        if let Some(t) = &mut d.lun {
            t.bus.get_or_insert(DiskBus::Scsi);
        }
    }
    // No interfaces and no networks: the default pod network with masquerade.
    let autoattach = domain.devices.autoattach_pod_interface.unwrap_or(true);
    if autoattach && domain.devices.interfaces.is_empty() && spec.networks.is_empty() {
        domain.devices.interfaces.push(Interface {
            name: DEFAULT_POD_NETWORK_NAME.into(),
            masquerade: Some(Empty),
            ..Interface::default()
        });
        spec.networks.push(Network {
            name: DEFAULT_POD_NETWORK_NAME.into(),
            pod: Some(PodNetwork::default()),
            multus: None,
        });
    }
    for i in &mut domain.devices.interfaces {
        i.model.get_or_insert(InterfaceModel::Virtio);
        for p in &mut i.ports {
            default_port(p);
        }
    }
    for n in &mut spec.networks {
        if let Some(pod) = &mut n.pod {
            pod.vm_network_cidr
                .get_or_insert_with(|| DEFAULT_VM_NETWORK_CIDR.into());
        }
    }
    if let Some(w) = &mut domain.devices.watchdog {
        if let Some(m) = &mut w.i6300esb {
            m.action.get_or_insert(WatchdogAction::Reset);
        }
    }
    if let Some(r) = &mut domain.resources {
        r.overcommit_guest_overhead.get_or_insert(false);
    }
    spec.termination_grace_period_seconds
        .get_or_insert(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS);
}

fn default_port(p: &mut Port) {
    p.protocol.get_or_insert_with(|| "TCP".into());
}

/// Defaults of a DataVolume spec.
pub fn data_volume(spec: &mut DataVolumeSpec) {
    spec.content_type.get_or_insert(ContentType::Kubevirt);
    spec.pvc.volume_mode.get_or_insert(VolumeMode::Filesystem);
}

/// Live-migration limits with KubeVirt's defaults filled in.
pub fn migration_config(m: &mut MigrationConfig) {
    m.parallel_migrations_per_cluster
        .get_or_insert(MigrationConfig::DEFAULT_PARALLEL_PER_CLUSTER);
    m.parallel_outbound_migrations_per_node
        .get_or_insert(MigrationConfig::DEFAULT_PARALLEL_OUTBOUND_PER_NODE);
    m.bandwidth_per_migration.get_or_insert_with(|| {
        MigrationConfig::DEFAULT_BANDWIDTH
            .parse::<Quantity>()
            .unwrap_or(Quantity::from_bytes(64 << 20))
    });
    m.completion_timeout_per_gib
        .get_or_insert(MigrationConfig::DEFAULT_COMPLETION_TIMEOUT_PER_GIB);
    m.progress_timeout
        .get_or_insert(MigrationConfig::DEFAULT_PROGRESS_TIMEOUT);
}

/// certConfig with the HCO defaults filled in.
pub fn cert_config(c: &mut CertConfig) {
    let ca = c.ca.get_or_insert_with(CertRotation::default);
    ca.duration
        .get_or_insert_with(|| CertConfig::DEFAULT_CA_DURATION.into());
    ca.renew_before
        .get_or_insert_with(|| CertConfig::DEFAULT_CA_RENEW_BEFORE.into());
    let s = c.server.get_or_insert_with(CertRotation::default);
    s.duration
        .get_or_insert_with(|| CertConfig::DEFAULT_SERVER_DURATION.into());
    s.renew_before
        .get_or_insert_with(|| CertConfig::DEFAULT_SERVER_RENEW_BEFORE.into());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{parse_one, Mode};
    use crate::validate::validate_object;

    fn vm(yaml: &str) -> Object {
        parse_one(yaml, Mode::Strict).unwrap().object
    }

    const BARE: &str = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n      domain:\n        resources: {requests: {memory: 64Mi}}\n";

    #[test]
    fn bare_vm_gets_machine_cpu_and_pod_network() {
        let mut o = vm(BARE);
        apply(&mut o);
        let Object::VirtualMachine(v) = &o else {
            panic!()
        };
        let s = &v.spec.template.spec;
        assert_eq!(s.domain.machine.as_ref().unwrap().machine_type, "q35");
        let cpu = s.domain.cpu.as_ref().unwrap();
        assert_eq!(
            (cpu.cores, cpu.sockets, cpu.threads),
            (Some(1), Some(1), Some(1))
        );
        assert_eq!(s.domain.devices.interfaces.len(), 1);
        assert!(s.domain.devices.interfaces[0].masquerade.is_some());
        assert_eq!(
            s.domain.devices.interfaces[0].model,
            Some(InterfaceModel::Virtio)
        );
        assert_eq!(s.networks[0].name, "default");
        assert_eq!(
            s.networks[0]
                .pod
                .as_ref()
                .unwrap()
                .vm_network_cidr
                .as_deref(),
            Some("10.0.2.0/24")
        );
        assert_eq!(s.termination_grace_period_seconds, Some(30));
        assert!(validate_object(&o).is_valid(), "{:?}", validate_object(&o));
    }

    #[test]
    fn explicit_values_are_never_overridden() {
        let mut o = vm("apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n      terminationGracePeriodSeconds: 0\n      domain:\n        machine: {type: pc-q35-rhel8.1.0}\n        cpu: {cores: 2}\n        resources: {requests: {memory: 64Mi}}\n        devices:\n          autoattachPodInterface: false\n");
        apply(&mut o);
        let Object::VirtualMachine(v) = &o else {
            panic!()
        };
        let s = &v.spec.template.spec;
        assert_eq!(
            s.domain.machine.as_ref().unwrap().machine_type,
            "pc-q35-rhel8.1.0"
        );
        assert_eq!(s.domain.cpu.as_ref().unwrap().cores, Some(2));
        assert_eq!(s.termination_grace_period_seconds, Some(0));
        assert!(s.domain.devices.interfaces.is_empty(), "autoattach off");
    }

    #[test]
    fn disks_buses_and_cloud_init_disk() {
        let mut o = vm("apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n      domain:\n        resources: {requests: {memory: 64Mi}}\n        devices:\n          disks:\n          - {name: root}\n          - {name: cd, cdrom: {}}\n      volumes:\n      - {name: root, containerDisk: {image: x}}\n      - {name: cd, containerDisk: {image: y}}\n      - {name: ci, cloudInitNoCloud: {userData: \"#cloud-config\"}}\n");
        apply(&mut o);
        let Object::VirtualMachine(v) = &o else {
            panic!()
        };
        let disks = &v.spec.template.spec.domain.devices.disks;
        assert_eq!(disks[0].disk.as_ref().unwrap().bus, Some(DiskBus::Virtio));
        assert_eq!(disks[1].cdrom.as_ref().unwrap().bus, Some(DiskBus::Sata));
        assert_eq!(disks[2].name, "ci");
        assert_eq!(disks[2].disk.as_ref().unwrap().bus, Some(DiskBus::Virtio));
    }

    #[test]
    fn secure_boot_turns_smm_on_and_then_validates() {
        let text = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n      domain:\n        firmware: {bootloader: {efi: {}}}\n        resources: {requests: {memory: 64Mi}}\n";
        let mut o = vm(text);
        assert!(
            !validate_object(&o).is_valid(),
            "efi:{{}} without smm is invalid before defaulting"
        );
        apply(&mut o);
        let Object::VirtualMachine(v) = &o else {
            panic!()
        };
        let d = &v.spec.template.spec.domain;
        assert!(d.features.as_ref().unwrap().smm_enabled());
        let efi = d
            .firmware
            .as_ref()
            .unwrap()
            .bootloader
            .as_ref()
            .unwrap()
            .efi
            .as_ref()
            .unwrap();
        assert_eq!((efi.secure_boot, efi.persistent), (Some(true), Some(false)));
        assert!(validate_object(&o).is_valid());
        // secureBoot: false needs no SMM and gets none.
        let mut o = vm(&text.replace("efi: {}", "efi: {secureBoot: false}"));
        apply(&mut o);
        let Object::VirtualMachine(v) = &o else {
            panic!()
        };
        assert!(v.spec.template.spec.domain.features.is_none());
    }

    #[test]
    fn migration_and_cert_defaults() {
        let mut m = MigrationConfig::default();
        migration_config(&mut m);
        assert_eq!(m.parallel_migrations_per_cluster, Some(5));
        assert_eq!(m.parallel_outbound_migrations_per_node, Some(2));
        assert_eq!(
            m.bandwidth_per_migration.unwrap().to_bytes().unwrap(),
            67_108_864
        );
        assert_eq!(m.completion_timeout_per_gib, Some(800));
        assert_eq!(m.progress_timeout, Some(150));
        let mut c = CertConfig::default();
        cert_config(&mut c);
        assert_eq!(c.ca.as_ref().unwrap().duration.as_deref(), Some("48h0m0s"));
        assert_eq!(
            c.server.as_ref().unwrap().renew_before.as_deref(),
            Some("12h0m0s")
        );
    }

    #[test]
    fn watchdog_and_datavolume_defaults() {
        let mut o = vm("apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n      domain:\n        resources: {requests: {memory: 64Mi}}\n        devices:\n          watchdog: {name: w, i6300esb: {}}\n  dataVolumeTemplates:\n  - metadata: {name: dv}\n    spec:\n      source: {blank: {}}\n      pvc: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n");
        apply(&mut o);
        let Object::VirtualMachine(v) = &o else {
            panic!()
        };
        let w = v
            .spec
            .template
            .spec
            .domain
            .devices
            .watchdog
            .as_ref()
            .unwrap();
        assert_eq!(
            w.i6300esb.as_ref().unwrap().action,
            Some(WatchdogAction::Reset)
        );
        let dv = &v.spec.data_volume_templates[0].spec;
        assert_eq!(dv.content_type, Some(ContentType::Kubevirt));
        assert_eq!(dv.pvc.volume_mode, Some(VolumeMode::Filesystem));
    }
}
