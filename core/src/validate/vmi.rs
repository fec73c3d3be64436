//! Rules for a VMI spec (`spec.template.spec` of a VM, `spec` of a VMI).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::placement::validate_placement;
use super::syntax::{
    is_dns_label, is_pci_address, is_uuid, is_wizard_disk_name, parse_ipv4_cidr, parse_ipv6_cidr,
    parse_mac,
};
use super::{Report, P};
use crate::spec::vmi::{Disk, DiskBus, Interface, InterfaceState, VmiSpec};
use crate::Quantity;

/// Ports reserved by the masquerade binding (libvirt / migration).
pub const RESERVED_MASQUERADE_PORTS: [i64; 2] = [49152, 49153];
/// Istio sidecar ports a VM in the mesh must not declare.
pub const ISTIO_PORTS: [i64; 7] = [15000, 15001, 15006, 15008, 15020, 15021, 15090];
/// The annotation that puts a VM into the service mesh.
pub const ISTIO_INJECT_ANNOTATION: &str = "sidecar.istio.io/inject";
/// Largest inline cloud-init user/network data, in bytes.
pub const CLOUD_INIT_INLINE_LIMIT: usize = 2048;
/// Largest base64 cloud-init data (decoded), in bytes.
pub const CLOUD_INIT_BASE64_LIMIT: usize = 2048;
/// The minimum gap between memory limit and request.
pub const MEMORY_LIMIT_HEADROOM: &str = "100Mi";

/// Validate a VMI spec at `p`; `annotations` are the template's (for the
/// service-mesh rule).
pub fn validate_vmi_spec(
    spec: &VmiSpec,
    p: &P,
    annotations: &BTreeMap<String, String>,
    r: &mut Report,
) {
    let d = p.field("domain");
    validate_cpu(spec, &d, r);
    validate_memory(spec, &d, r);
    validate_firmware_and_features(spec, &d, r);
    validate_clock(spec, &d, r);
    let used_volumes = validate_disks(spec, p, r);
    validate_volumes(spec, p, &used_volumes, r);
    validate_interfaces_and_networks(spec, p, annotations, r);
    validate_boot_order(spec, p, r);
    validate_devices_misc(spec, &d, r);
    if let Some(t) = spec.termination_grace_period_seconds {
        if t < 0 {
            r.error(
                p.field("terminationGracePeriodSeconds"),
                format!("must be >= 0, got {t}"),
            );
        }
    }
    if let Some(e) = &spec.eviction_strategy {
        if e.is_unknown() {
            r.error(
                p.field("evictionStrategy"),
                format!("unknown value {:?}; allowed: LiveMigrate", e.as_str()),
            );
        }
    }
    validate_placement(spec, p, r);
}

fn validate_cpu(spec: &VmiSpec, d: &P, r: &mut Report) {
    let Some(cpu) = &spec.domain.cpu else { return };
    let c = d.field("cpu");
    for (name, v) in [
        ("cores", cpu.cores),
        ("sockets", cpu.sockets),
        ("threads", cpu.threads),
    ] {
        if let Some(v) = v {
            if v < 1 {
                r.error(c.field(name), format!("must be >= 1, got {v}"));
            }
        }
    }
    let mut seen = HashSet::new();
    for (i, f) in cpu.features.iter().enumerate() {
        let fp = c.field("features").index(i);
        if f.name.is_empty() {
            r.error(fp.field("name"), "CPU feature name is required");
        } else if !seen.insert(f.name.as_str()) {
            r.error(
                fp.field("name"),
                format!("duplicate CPU feature {:?}", f.name),
            );
        }
        if let Some(policy) = &f.policy {
            if policy.is_unknown() {
                r.error(
                    fp.field("policy"),
                    format!(
                        "CPU feature {} uses policy {} that is not supported. Allowed: {}",
                        f.name,
                        policy.as_str(),
                        crate::spec::vmi::CpuFeaturePolicy::ALLOWED.join(", ")
                    ),
                );
            }
        }
    }
    if let Some(m) = &cpu.model {
        if m.is_empty() {
            r.error(c.field("model"), "must not be empty when set");
        }
    }
    let dedicated = cpu.dedicated_cpu_placement.unwrap_or(false);
    if cpu.isolate_emulator_thread.unwrap_or(false) && !dedicated {
        r.error(
            c.field("isolateEmulatorThread"),
            "IsolateEmulatorThread should be only set in combination with DedicatedCPUPlacement",
        );
    }
    if dedicated {
        let res = spec.domain.resources.as_ref();
        let req_cpu = res.and_then(|r| r.requests.get("cpu"));
        let lim_cpu = res.and_then(|r| r.limits.get("cpu"));
        for (name, q) in [("requests", req_cpu), ("limits", lim_cpu)] {
            if let Some(q) = q {
                if !q.is_integer() {
                    r.error(
                        d.field("resources").field(name).field("cpu"),
                        format!(
                            "must be a whole number of CPUs with dedicatedCpuPlacement, got {q}"
                        ),
                    );
                }
            }
        }
        if let (Some(a), Some(b)) = (req_cpu, lim_cpu) {
            if a != b {
                r.error(
                    d.field("resources").field("limits").field("cpu"),
                    format!("must equal requests.cpu ({a}) with dedicatedCpuPlacement, got {b}"),
                );
            }
        }
    }
}

fn validate_memory(spec: &VmiSpec, d: &P, r: &mut Report) {
    let res = spec.domain.resources.as_ref();
    let request = res.and_then(|r| r.requests.get("memory"));
    let limit = res.and_then(|r| r.limits.get("memory"));
    let guest = spec.domain.memory.as_ref().and_then(|m| m.guest.as_ref());
    let req_p = d.field("resources").field("requests").field("memory");
    let lim_p = d.field("resources").field("limits").field("memory");
    let guest_p = d.field("memory").field("guest");
    if request.is_none() && guest.is_none() {
        r.error(
            &req_p,
            "guest memory is required: set domain.resources.requests.memory or domain.memory.guest",
        );
    }
    for (q, path) in [(request, &req_p), (guest, &guest_p), (limit, &lim_p)] {
        if let Some(q) = q {
            if q.is_negative() || q.is_zero() {
                r.error(path, format!("must be greater than 0, got {q}"));
            }
        }
    }
    if let (Some(req), Some(lim)) = (request, limit) {
        if lim < req {
            r.error(
                &lim_p,
                format!("limit {lim} is smaller than the request {req}"),
            );
        } else if let Some(gap) = lim.checked_sub(req) {
            let headroom: Quantity = MEMORY_LIMIT_HEADROOM
                .parse()
                .unwrap_or(Quantity::from_bytes(104_857_600));
            if gap < headroom {
                r.error(
                    &lim_p,
                    format!(
                        "limit {lim} must be at least {MEMORY_LIMIT_HEADROOM} above the request {req} (gap is {gap})"
                    ),
                );
            }
        }
    }
    if let (Some(g), Some(lim)) = (guest, limit) {
        if g > lim {
            r.error(
                &guest_p,
                format!("guest memory {g} must be equal to or less than the memory limit {lim}"),
            );
        }
    }
    if let (Some(g), Some(req)) = (guest, request) {
        if g < req {
            r.warn(
                &guest_p,
                format!(
                    "guest memory {g} is smaller than the request {req}; the difference is wasted"
                ),
            );
        }
    }
    let Some(hp) = spec
        .domain
        .memory
        .as_ref()
        .and_then(|m| m.hugepages.as_ref())
    else {
        return;
    };
    let hp_p = d.field("memory").field("hugepages").field("pageSize");
    let page: Quantity = match hp.page_size.parse() {
        Ok(q) => q,
        Err(e) => {
            r.error(&hp_p, format!("invalid page size: {e}"));
            return;
        }
    };
    let two_mi = Quantity::from_bytes(2 << 20);
    let one_gi = Quantity::from_bytes(1 << 30);
    if page != two_mi && page != one_gi {
        r.error(
            &hp_p,
            format!("page size {page} is not supported on x86_64; allowed: 2Mi, 1Gi"),
        );
        return;
    }
    let (total, total_p) = match (request, guest) {
        (Some(q), _) => (q, &req_p),
        (None, Some(g)) => (g, &guest_p),
        (None, None) => return,
    };
    if !total.is_multiple_of(&page) {
        r.error(
            total_p,
            format!("memory {total} is not a multiple of the page size {page}"),
        );
    }
    if *total <= page {
        r.error(
            &hp_p,
            format!("page size {page} must be smaller than the requested memory {total}"),
        );
    }
    if let (Some(g), Some(req)) = (guest, request) {
        if g > req {
            r.error(
                &guest_p,
                "guest memory above requests.memory (overcommit) is not allowed with hugepages",
            );
        }
    }
}

fn validate_firmware_and_features(spec: &VmiSpec, d: &P, r: &mut Report) {
    let smm_on = spec
        .domain
        .features
        .as_ref()
        .is_some_and(|f| f.smm_enabled());
    if let Some(fw) = &spec.domain.firmware {
        let fp = d.field("firmware");
        if let Some(u) = &fw.uuid {
            if !is_uuid(u) {
                r.error(fp.field("uuid"), format!("{u:?} is not a valid UUID"));
            }
        }
        if let Some(bl) = &fw.bootloader {
            let bp = fp.field("bootloader");
            if bl.bios.is_some() && bl.efi.is_some() {
                r.error(&bp, "bios and efi are mutually exclusive; choose one");
            }
            if let Some(efi) = &bl.efi {
                if efi.secure_boot() && !smm_on {
                    r.error(
                        d,
                        format!(
                            "{d} has EFI SecureBoot enabled. SecureBoot requires SMM, which is currently disabled."
                        ),
                    );
                }
            }
        }
    }
    if let Some(machine) = &spec.domain.machine {
        let t = machine.machine_type.as_str();
        if !(t.is_empty() || t == "q35" || t.starts_with("pc-q35")) {
            r.error(
                d.field("machine").field("type"),
                format!("unsupported machine type {t:?}; allowed: q35, pc-q35-*, or \"\" for the default"),
            );
        }
    }
    if let Some(hv) = spec
        .domain
        .features
        .as_ref()
        .and_then(|f| f.hyperv.as_ref())
    {
        if let Some(n) = hv.spinlocks.as_ref().and_then(|s| s.spinlocks) {
            if n < 4096 {
                r.error(
                    d.field("features")
                        .field("hyperv")
                        .field("spinlocks")
                        .field("spinlocks"),
                    format!("must be >= 4096, got {n}"),
                );
            }
        }
    }
}

fn validate_clock(spec: &VmiSpec, d: &P, r: &mut Report) {
    let Some(timer) = spec.domain.clock.as_ref().and_then(|c| c.timer.as_ref()) else {
        return;
    };
    let tp = d.field("clock").field("timer");
    for (name, t) in [
        ("hpet", &timer.hpet),
        ("kvm", &timer.kvm),
        ("pit", &timer.pit),
        ("rtc", &timer.rtc),
        ("hyperv", &timer.hyperv),
    ] {
        if let Some(policy) = t.as_ref().and_then(|t| t.tick_policy.as_ref()) {
            if policy.is_unknown() {
                r.error(
                    tp.field(name).field("tickPolicy"),
                    format!(
                        "unknown tick policy {:?}; allowed: {}",
                        policy.as_str(),
                        crate::spec::vmi::TickPolicy::ALLOWED.join(", ")
                    ),
                );
            }
        }
    }
}

/// Returns the set of volume names referenced by disks.
fn validate_disks<'a>(spec: &'a VmiSpec, p: &P, r: &mut Report) -> HashSet<&'a str> {
    let volumes: HashSet<&str> = spec.volumes.iter().map(|v| v.name.as_str()).collect();
    let mut seen = HashSet::new();
    let mut used = HashSet::new();
    for (i, disk) in spec.domain.devices.disks.iter().enumerate() {
        let dp = p.field("domain").field("devices").field("disks").index(i);
        validate_disk(disk, &dp, r);
        if disk.name.is_empty() {
            continue;
        }
        if !seen.insert(disk.name.as_str()) {
            r.error(
                dp.field("name"),
                format!("duplicate disk name {:?}", disk.name),
            );
        }
        if volumes.contains(disk.name.as_str()) {
            used.insert(disk.name.as_str());
        } else {
            r.error(
                dp.field("name"),
                format!(
                    "disk {:?} has no volume of the same name in volumes[]",
                    disk.name
                ),
            );
        }
    }
    used
}

fn validate_disk(disk: &Disk, dp: &P, r: &mut Report) {
    if disk.name.is_empty() {
        r.error(dp.field("name"), "disk name is required");
    } else if !is_wizard_disk_name(&disk.name) {
        r.error(
            dp.field("name"),
            format!("{:?} is not a valid disk name (lower-case alphanumerics, '-' and '.', at most 253, alphanumeric at both ends)", disk.name),
        );
    }
    let targets = [
        disk.disk.is_some(),
        disk.cdrom.is_some(),
        disk.lun.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if targets > 1 {
        r.error(dp, "only one of disk, cdrom and lun may be set");
    }
    let check_bus = |bus: &Option<DiskBus>, allowed: &[&str], field: &str, r: &mut Report| {
        if let Some(b) = bus {
            if !allowed.contains(&b.as_str()) {
                r.error(
                    dp.field(field).field("bus"),
                    format!(
                        "unsupported bus {:?} for {field}; allowed: {}",
                        b.as_str(),
                        allowed.join(", ")
                    ),
                );
            }
        }
    };
    if let Some(t) = &disk.disk {
        check_bus(&t.bus, &["virtio", "sata", "scsi"], "disk", r);
        if let Some(a) = &t.pci_address {
            if !is_pci_address(a) {
                r.error(
                    dp.field("disk").field("pciAddress"),
                    format!("{a:?} is not a PCI address (DDDD:BB:DD.F)"),
                );
            }
        }
    }
    if let Some(t) = &disk.cdrom {
        check_bus(&t.bus, &["sata", "scsi"], "cdrom", r);
    }
    if let Some(t) = &disk.lun {
        check_bus(&t.bus, &["scsi"], "lun", r);
    }
    if let Some(c) = &disk.cache {
        if !["none", "writethrough", "writeback"].contains(&c.as_str()) {
            r.error(
                dp.field("cache"),
                format!("unknown cache mode {c:?}; allowed: none, writethrough, writeback"),
            );
        }
    }
}

fn validate_volumes(spec: &VmiSpec, p: &P, used: &HashSet<&str>, r: &mut Report) {
    let mut seen = HashSet::new();
    let mut cloud_init_count = 0;
    for (i, v) in spec.volumes.iter().enumerate() {
        let vp = p.field("volumes").index(i);
        if v.name.is_empty() {
            r.error(vp.field("name"), "volume name is required");
        } else if !is_dns_label(&v.name) {
            r.error(
                vp.field("name"),
                format!("{:?} is not a valid volume name (DNS label: lower-case alphanumerics and '-', at most 63)", v.name),
            );
        }
        if !v.name.is_empty() && !seen.insert(v.name.as_str()) {
            r.error(
                vp.field("name"),
                format!("duplicate volume name {:?}", v.name),
            );
        }
        let sources = v.sources();
        match sources.len() {
            0 => r.error(&vp, "a volume needs exactly one source (containerDisk, cloudInitNoCloud, persistentVolumeClaim, dataVolume, ephemeral, emptyDisk, …)"),
            1 => {}
            _ => r.error(&vp, format!("a volume needs exactly one source, found {}", sources.join(", "))),
        }
        if let Some(c) = &v.container_disk {
            if c.image.is_empty() {
                r.error(
                    vp.field("containerDisk").field("image"),
                    "image is required",
                );
            }
        }
        if let Some(c) = &v.persistent_volume_claim {
            if c.claim_name.is_empty() {
                r.error(
                    vp.field("persistentVolumeClaim").field("claimName"),
                    "claimName is required",
                );
            }
        }
        if let Some(c) = &v.data_volume {
            if c.name.is_empty() {
                r.error(vp.field("dataVolume").field("name"), "name is required");
            }
        }
        if let Some(e) = &v.ephemeral {
            match &e.persistent_volume_claim {
                Some(c) if !c.claim_name.is_empty() => {}
                _ => r.error(
                    vp.field("ephemeral")
                        .field("persistentVolumeClaim")
                        .field("claimName"),
                    "an ephemeral volume must be backed by a PersistentVolumeClaim",
                ),
            }
        }
        if let Some(e) = &v.empty_disk {
            match &e.capacity {
                Some(c) if !c.is_zero() && !c.is_negative() => {}
                Some(c) => r.error(
                    vp.field("emptyDisk").field("capacity"),
                    format!("must be greater than 0, got {c}"),
                ),
                None => r.error(
                    vp.field("emptyDisk").field("capacity"),
                    "capacity is required",
                ),
            }
        }
        if let Some((field, ci)) = v.cloud_init() {
            cloud_init_count += 1;
            validate_cloud_init(ci, &vp.field(field), r);
            if !v.name.is_empty() && !used.contains(v.name.as_str()) {
                r.error(
                    vp.field("name"),
                    format!("cloud-init volume {:?} is not used by any disk", v.name),
                );
            }
        } else if !v.name.is_empty() && !used.contains(v.name.as_str()) {
            r.warn(
                vp.field("name"),
                format!("volume {:?} is not used by any disk", v.name),
            );
        }
    }
    if cloud_init_count > 1 {
        r.error(
            p.field("volumes"),
            "at most one cloud-init volume is allowed",
        );
    }
}

fn validate_cloud_init(ci: &crate::spec::vmi::CloudInitSource, cp: &P, r: &mut Report) {
    use base64::Engine as _;
    let count = |set: &[bool]| set.iter().filter(|x| **x).count();
    let user_sources = count(&[
        ci.user_data.is_some(),
        ci.user_data_base64.is_some(),
        ci.user_data_secret_ref.is_some(),
    ]);
    if user_sources > 1 {
        r.error(
            cp,
            "only one of userData, userDataBase64 and userDataSecretRef may be set",
        );
    }
    let net_sources = count(&[
        ci.network_data.is_some(),
        ci.network_data_base64.is_some(),
        ci.network_data_secret_ref.is_some(),
    ]);
    if net_sources > 1 {
        r.error(
            cp,
            "only one of networkData, networkDataBase64 and networkDataSecretRef may be set",
        );
    }
    if user_sources == 0 && net_sources == 0 {
        r.error(
            cp,
            "cloud-init needs userData, userDataBase64, userDataSecretRef or network data",
        );
    }
    for (field, text) in [
        ("userData", &ci.user_data),
        ("networkData", &ci.network_data),
    ] {
        if let Some(t) = text {
            if t.len() > CLOUD_INIT_INLINE_LIMIT {
                r.error(
                    cp.field(field),
                    format!("inline {field} is {} bytes; the limit is {CLOUD_INIT_INLINE_LIMIT} (use a secret reference for more)", t.len()),
                );
            }
        }
    }
    for (field, text) in [
        ("userDataBase64", &ci.user_data_base64),
        ("networkDataBase64", &ci.network_data_base64),
    ] {
        if let Some(t) = text {
            match base64::engine::general_purpose::STANDARD.decode(t.trim()) {
                Err(_) => r.error(cp.field(field), "is not valid base64"),
                Ok(bytes) if bytes.len() > CLOUD_INIT_BASE64_LIMIT => r.error(
                    cp.field(field),
                    format!(
                        "decodes to {} bytes; the limit is {CLOUD_INIT_BASE64_LIMIT}",
                        bytes.len()
                    ),
                ),
                Ok(_) => {}
            }
        }
    }
    for (field, s) in [
        ("userDataSecretRef", &ci.user_data_secret_ref),
        ("networkDataSecretRef", &ci.network_data_secret_ref),
    ] {
        if let Some(s) = s {
            if s.name.is_empty() {
                r.error(cp.field(field).field("name"), "secret name is required");
            }
        }
    }
}

fn validate_interfaces_and_networks(
    spec: &VmiSpec,
    p: &P,
    annotations: &BTreeMap<String, String>,
    r: &mut Report,
) {
    let networks: HashMap<&str, &crate::spec::vmi::Network> =
        spec.networks.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut iface_names = HashSet::new();
    let mut macs: HashMap<[u8; 6], usize> = HashMap::new();
    let in_mesh = annotations
        .get(ISTIO_INJECT_ANNOTATION)
        .is_some_and(|v| v == "true");
    for (i, iface) in spec.domain.devices.interfaces.iter().enumerate() {
        let ip = p
            .field("domain")
            .field("devices")
            .field("interfaces")
            .index(i);
        if iface.name.is_empty() {
            r.error(ip.field("name"), "interface name is required");
        } else if !iface_names.insert(iface.name.as_str()) {
            r.error(
                ip.field("name"),
                format!("duplicate interface name {:?}", iface.name),
            );
        }
        let bindings = iface.bindings();
        if bindings.len() > 1 {
            r.error(
                &ip,
                format!("only one binding may be set, found {}", bindings.join(", ")),
            );
        }
        if let Some(m) = &iface.model {
            if m.is_unknown() {
                r.error(
                    ip.field("model"),
                    format!(
                        "unknown model {:?}; allowed: {}",
                        m.as_str(),
                        crate::spec::vmi::InterfaceModel::ALLOWED.join(", ")
                    ),
                );
            }
        }
        let network = networks.get(iface.name.as_str());
        if !iface.name.is_empty() && network.is_none() {
            r.error(
                ip.field("name"),
                format!(
                    "interface {:?} has no network of the same name in networks[]",
                    iface.name
                ),
            );
        }
        if let Some(net) = network {
            if iface.masquerade.is_some() && net.pod.is_none() {
                r.error(
                    ip.field("masquerade"),
                    "masquerade is only allowed on the pod network",
                );
            }
            if iface.sriov.is_some() && net.multus.is_none() {
                r.error(
                    ip.field("sriov"),
                    "sriov needs a multus network naming a SriovNetwork",
                );
            }
        }
        validate_ports(iface, &ip, in_mesh, r);
        if let Some(mac) = &iface.mac_address {
            match parse_mac(mac) {
                None => r.error(
                    ip.field("macAddress"),
                    format!(
                        "{mac:?} is not a MAC address (six hex octets separated by ':' or '-')"
                    ),
                ),
                Some(m) if m[0] & 1 == 1 => r.error(
                    ip.field("macAddress"),
                    format!("{mac} is a multicast or broadcast address; a NIC needs a unicast MAC"),
                ),
                Some(m) => {
                    if let Some(first) = macs.insert(m, i) {
                        r.error(
                            ip.field("macAddress"),
                            format!("MAC {mac} is already used by interfaces[{first}]"),
                        );
                    }
                }
            }
        }
        if let Some(state) = &iface.state {
            match state {
                InterfaceState::Absent if iface.sriov.is_some() => r.error(
                    ip.field("state"),
                    "SR-IOV interfaces cannot be hot-unplugged",
                ),
                InterfaceState::Absent if iface.bridge.is_none() => r.error(
                    ip.field("state"),
                    "only bridge interfaces can be hot-unplugged",
                ),
                InterfaceState::Unknown(s) => r.error(
                    ip.field("state"),
                    format!("unknown state {s:?}; allowed: absent"),
                ),
                _ => {}
            }
        }
        if let Some(a) = &iface.pci_address {
            if !is_pci_address(a) {
                r.error(
                    ip.field("pciAddress"),
                    format!("{a:?} is not a PCI address (DDDD:BB:DD.F)"),
                );
            }
        }
    }
    let mut pod_count = 0;
    let mut net_names = HashSet::new();
    for (i, n) in spec.networks.iter().enumerate() {
        let np = p.field("networks").index(i);
        if n.name.is_empty() {
            r.error(np.field("name"), "network name is required");
        } else if !net_names.insert(n.name.as_str()) {
            r.error(
                np.field("name"),
                format!("duplicate network name {:?}", n.name),
            );
        }
        match (n.pod.is_some(), n.multus.is_some()) {
            (true, true) => r.error(&np, "only one of pod and multus may be set"),
            (false, false) => r.error(&np, "a network needs a source: pod or multus"),
            _ => {}
        }
        if let Some(pod) = &n.pod {
            pod_count += 1;
            if let Some(c) = &pod.vm_network_cidr {
                if parse_ipv4_cidr(c).is_none() {
                    r.error(
                        np.field("pod").field("vmNetworkCIDR"),
                        format!("{c:?} is not an IPv4 CIDR"),
                    );
                }
            }
            if let Some(c) = &pod.vm_ipv6_network_cidr {
                if parse_ipv6_cidr(c).is_none() {
                    r.error(
                        np.field("pod").field("vmIPv6NetworkCIDR"),
                        format!("{c:?} is not an IPv6 CIDR"),
                    );
                }
            }
        }
        if let Some(m) = &n.multus {
            if m.network_name.is_empty() {
                r.error(
                    np.field("multus").field("networkName"),
                    "networkName is required",
                );
            }
        }
        if !n.name.is_empty() && !iface_names.contains(n.name.as_str()) {
            r.error(
                np.field("name"),
                format!("network {:?} is not used by any interface", n.name),
            );
        }
    }
    if pod_count > 1 {
        r.error(p.field("networks"), "at most one pod network is allowed");
    }
}

fn validate_ports(iface: &Interface, ip: &P, in_mesh: bool, r: &mut Report) {
    let mut names = HashSet::new();
    for (j, port) in iface.ports.iter().enumerate() {
        let pp = ip.field("ports").index(j);
        if !(1..=65535).contains(&port.port) {
            r.error(
                pp.field("port"),
                format!("port {} is out of range 1..65535", port.port),
            );
        } else if iface.masquerade.is_some() && RESERVED_MASQUERADE_PORTS.contains(&port.port) {
            r.error(
                pp.field("port"),
                format!("port {} is reserved by the masquerade binding (49152 and 49153 are never forwarded)", port.port),
            );
        }
        if in_mesh && ISTIO_PORTS.contains(&port.port) {
            r.error(
                pp.field("port"),
                format!(
                    "port {} is used by the Istio sidecar ({ISTIO_INJECT_ANNOTATION} is true)",
                    port.port
                ),
            );
        }
        if let Some(proto) = &port.protocol {
            if proto != "TCP" && proto != "UDP" {
                r.error(
                    pp.field("protocol"),
                    format!("protocol {proto:?} is not supported; allowed: TCP, UDP"),
                );
            }
        }
        if let Some(n) = &port.name {
            if !names.insert(n.as_str()) {
                r.error(pp.field("name"), format!("duplicate port name {n:?}"));
            }
        }
    }
    if !iface.ports.is_empty() && iface.masquerade.is_none() {
        r.error(
            ip.field("ports"),
            "ports are only supported with the masquerade binding",
        );
    }
}

fn validate_boot_order(spec: &VmiSpec, p: &P, r: &mut Report) {
    let devices = &spec.domain.devices;
    let mut holders: HashMap<i64, String> = HashMap::new();
    let entries = devices
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            (
                p.field("domain").field("devices").field("disks").index(i),
                d.boot_order,
            )
        })
        .chain(devices.interfaces.iter().enumerate().map(|(i, n)| {
            (
                p.field("domain")
                    .field("devices")
                    .field("interfaces")
                    .index(i),
                n.boot_order,
            )
        }));
    let mut with = 0;
    for (dp, order) in entries {
        let Some(order) = order else { continue };
        with += 1;
        if order < 1 {
            r.error(
                dp.field("bootOrder"),
                format!("{dp} must have a boot order > 0, if supplied"),
            );
            continue;
        }
        if let Some(holder) = holders.get(&order) {
            r.error(
                dp.field("bootOrder"),
                format!(
                    "Boot order for {dp}.bootOrder already set for a different device ({holder})"
                ),
            );
        } else {
            holders.insert(order, dp.to_string());
        }
    }
    let disks_without = devices
        .disks
        .iter()
        .filter(|d| d.boot_order.is_none())
        .count();
    if with > 0 && disks_without > 0 {
        r.warn(
            p.field("domain").field("devices").field("disks"),
            format!("{disks_without} disk(s) have no bootOrder while other devices do; they will not be boot candidates"),
        );
    }
}

fn validate_devices_misc(spec: &VmiSpec, d: &P, r: &mut Report) {
    let dev = d.field("devices");
    if let Some(w) = &spec.domain.devices.watchdog {
        let wp = dev.field("watchdog");
        if w.name.is_empty() {
            r.error(wp.field("name"), "watchdog name is required");
        }
        match &w.i6300esb {
            None => r.error(&wp, "a watchdog model is required: i6300esb"),
            Some(m) => {
                if let Some(a) = &m.action {
                    if a.is_unknown() {
                        r.error(
                            wp.field("i6300esb").field("action"),
                            format!(
                                "unknown watchdog action {:?}; allowed: {}",
                                a.as_str(),
                                crate::spec::vmi::WatchdogAction::ALLOWED.join(", ")
                            ),
                        );
                    }
                }
            }
        }
    }
    for (list, field) in [
        (&spec.domain.devices.host_devices, "hostDevices"),
        (&spec.domain.devices.gpus, "gpus"),
    ] {
        let mut names = HashSet::new();
        for (i, h) in list.iter().enumerate() {
            let hp = dev.field(field).index(i);
            if h.name.is_empty() {
                r.error(hp.field("name"), "name is required");
            } else if !names.insert(h.name.as_str()) {
                r.error(hp.field("name"), format!("duplicate name {:?}", h.name));
            }
            if h.device_name.is_empty() {
                r.error(hp.field("deviceName"), "deviceName is required");
            }
        }
    }
}
