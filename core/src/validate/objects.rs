//! Rules for each kind of object, delegating VMI specs to [`super::vmi`].

use std::collections::{BTreeMap, HashSet};

use super::syntax::{
    is_dns_subdomain, is_pci_address, is_qualified_resource_name, is_vm_name, is_wizard_disk_name,
};
use super::vmi::validate_vmi_spec;
use super::{Report, P};
use crate::spec::cluster::{
    CertConfig, CertRotation, ConfigMap, GoDuration, HyperConverged, MigrationConfig, Secret,
    KUBEVIRT_CONFIG_NAME,
};
use crate::spec::datavolume::{ContentType, DataVolume, DataVolumeSpec, VolumeMode};
use crate::spec::network::{
    CniConfig, CniPlugin, NetworkAttachmentDefinition, OnOff, SriovNetwork, SriovNetworkNodePolicy,
};
use crate::spec::vm::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstancePreset, KUBEVIRT_API_VERSIONS,
};
use crate::spec::ObjectMeta;

pub(super) fn api_version(got: &str, allowed: &[&str], r: &mut Report) {
    if !allowed.contains(&got) {
        let what = if got.is_empty() {
            "apiVersion is required".to_string()
        } else {
            format!("unsupported apiVersion {got:?}")
        };
        r.error(
            "apiVersion",
            format!("{what}; accepted: {}", allowed.join(", ")),
        );
    }
}

fn vm_metadata(m: &ObjectMeta, r: &mut Report) {
    match (&m.name, &m.generate_name) {
        (Some(n), _) if !is_vm_name(n) => r.error(
            "metadata.name",
            format!("{n:?} is not a valid name (lower-case alphanumerics and '-', at most 253, alphanumeric at both ends)"),
        ),
        (None, None) => r.error("metadata.name", "name is required"),
        _ => {}
    }
    if let Some(ns) = &m.namespace {
        if !super::syntax::is_dns_label(ns) {
            r.error(
                "metadata.namespace",
                format!("{ns:?} is not a valid namespace"),
            );
        }
    }
}

pub(super) fn named(m: &ObjectMeta, r: &mut Report) {
    if m.name.as_deref().unwrap_or("").is_empty() && m.generate_name.is_none() {
        r.error("metadata.name", "name is required");
    }
}

pub(super) fn virtual_machine(vm: &VirtualMachine, r: &mut Report) {
    api_version(&vm.api_version, KUBEVIRT_API_VERSIONS, r);
    vm_metadata(&vm.metadata, r);
    let spec = P::root("spec");
    if let (Some(_), Some(_)) = (vm.spec.running, &vm.spec.run_strategy) {
        r.error(
            spec.field("runStrategy"),
            "running and runStrategy are mutually exclusive",
        );
    }
    if let Some(rs) = &vm.spec.run_strategy {
        if rs.is_unknown() {
            r.error(
                spec.field("runStrategy"),
                format!(
                    "unknown run strategy {:?}; allowed: {}",
                    rs.as_str(),
                    crate::spec::vm::RunStrategy::ALLOWED.join(", ")
                ),
            );
        }
    }
    let annotations = vm
        .spec
        .template
        .metadata
        .as_ref()
        .map(|m| m.annotations.clone())
        .unwrap_or_default();
    validate_vmi_spec(
        &vm.spec.template.spec,
        &spec.field("template").field("spec"),
        &annotations,
        r,
    );
    let mut names = HashSet::new();
    for (i, t) in vm.spec.data_volume_templates.iter().enumerate() {
        let tp = spec.field("dataVolumeTemplates").index(i);
        match t.metadata.name.as_deref() {
            None | Some("") => r.error(tp.field("metadata").field("name"), "name is required"),
            Some(n) => {
                if !names.insert(n) {
                    r.error(
                        tp.field("metadata").field("name"),
                        format!("duplicate DataVolume template name {n:?}"),
                    );
                }
                if !is_wizard_disk_name(n) {
                    r.error(
                        tp.field("metadata").field("name"),
                        format!("{n:?} is not a valid DataVolume name"),
                    );
                }
            }
        }
        data_volume_spec(&t.spec, &tp.field("spec"), r);
    }
}

pub(super) fn virtual_machine_instance(vmi: &VirtualMachineInstance, r: &mut Report) {
    api_version(&vmi.api_version, KUBEVIRT_API_VERSIONS, r);
    vm_metadata(&vmi.metadata, r);
    validate_vmi_spec(&vmi.spec, &P::root("spec"), &vmi.metadata.annotations, r);
}

pub(super) fn migration(m: &VirtualMachineInstanceMigration, r: &mut Report) {
    api_version(&m.api_version, KUBEVIRT_API_VERSIONS, r);
    named(&m.metadata, r);
    if m.spec.vmi_name.is_empty() {
        r.error("spec.vmiName", "vmiName is required");
    }
}

pub(super) fn preset(p: &VirtualMachineInstancePreset, r: &mut Report) {
    api_version(&p.api_version, KUBEVIRT_API_VERSIONS, r);
    named(&p.metadata, r);
    if p.spec.selector.match_labels.is_empty() && p.spec.selector.match_expressions.is_empty() {
        r.error(
            "spec.selector",
            "a selector (matchLabels or matchExpressions) is required",
        );
    }
}

pub(super) fn data_volume(dv: &DataVolume, r: &mut Report) {
    api_version(
        &dv.api_version,
        crate::spec::datavolume::CDI_API_VERSIONS,
        r,
    );
    match dv.metadata.name.as_deref() {
        None | Some("") => r.error("metadata.name", "name is required"),
        Some(n) if !is_wizard_disk_name(n) => r.error(
            "metadata.name",
            format!("{n:?} is not a valid DataVolume name"),
        ),
        _ => {}
    }
    data_volume_spec(&dv.spec, &P::root("spec"), r);
}

/// Rules ST-1…ST-10 for a DataVolume spec at `p`.
pub fn data_volume_spec(spec: &DataVolumeSpec, p: &P, r: &mut Report) {
    let sp = p.field("source");
    let kinds = spec.source.kinds();
    match kinds.len() {
        0 => r.error(
            &sp,
            "exactly one source is required: http, s3, registry, pvc, upload or blank",
        ),
        1 => {}
        _ => r.error(
            &sp,
            format!("exactly one source is allowed, found {}", kinds.join(", ")),
        ),
    }
    if let Some(h) = &spec.source.http {
        let up = sp.field("http").field("url");
        if h.url.is_empty() {
            r.error(&up, "url is required");
        } else if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
            r.error(
                &up,
                format!("{:?} must use the http or https scheme", h.url),
            );
        } else if h
            .url
            .split_once("://")
            .is_some_and(|(_, rest)| rest.is_empty() || rest.starts_with('/'))
        {
            r.error(&up, format!("{:?} has no host", h.url));
        }
    }
    if let Some(s) = &spec.source.s3 {
        if s.url.is_empty() {
            r.error(sp.field("s3").field("url"), "url is required");
        }
    }
    if let Some(reg) = &spec.source.registry {
        let up = sp.field("registry").field("url");
        if reg.url.is_empty() {
            r.error(&up, "url is required");
        } else if !reg.url.starts_with("docker://") && !reg.url.starts_with("oci-archive://") {
            r.error(
                &up,
                format!(
                    "{:?} must start with docker:// (or oci-archive://)",
                    reg.url
                ),
            );
        }
    }
    if let Some(c) = &spec.source.pvc {
        if c.name.is_empty() {
            r.error(
                sp.field("pvc").field("name"),
                "name of the source volume is required",
            );
        }
    }
    let pp = p.field("pvc");
    match spec.pvc.resources.requests.get("storage") {
        None => r.error(
            pp.field("resources").field("requests").field("storage"),
            "the target size is required",
        ),
        Some(q) if q.is_zero() || q.is_negative() => r.error(
            pp.field("resources").field("requests").field("storage"),
            format!("must be greater than 0, got {q}"),
        ),
        _ => {}
    }
    if spec.pvc.access_modes.is_empty() {
        r.error(
            pp.field("accessModes"),
            "at least one access mode is required",
        );
    }
    for (i, m) in spec.pvc.access_modes.iter().enumerate() {
        if m.is_unknown() {
            r.error(
                pp.field("accessModes").index(i),
                format!(
                    "unknown access mode {:?}; allowed: {}",
                    m.as_str(),
                    crate::spec::datavolume::AccessMode::ALLOWED.join(", ")
                ),
            );
        }
    }
    if let Some(m) = &spec.pvc.volume_mode {
        if m.is_unknown() {
            r.error(
                pp.field("volumeMode"),
                format!(
                    "unknown volume mode {:?}; allowed: Filesystem, Block",
                    m.as_str()
                ),
            );
        }
    }
    if let Some(c) = &spec.content_type {
        if c.is_unknown() {
            r.error(
                p.field("contentType"),
                format!(
                    "unknown content type {:?}; allowed: kubevirt, archive",
                    c.as_str()
                ),
            );
        }
    }
    if spec.content_type == Some(ContentType::Archive)
        && spec.pvc.volume_mode == Some(VolumeMode::Block)
    {
        r.error(
            p.field("contentType"),
            "archive content cannot target a Block volume",
        );
    }
}

pub(super) fn nad(n: &NetworkAttachmentDefinition, r: &mut Report) {
    api_version(&n.api_version, &[crate::spec::network::NAD_API_VERSION], r);
    named(&n.metadata, r);
    if n.spec.config.trim().is_empty() {
        r.error("spec.config", "the CNI config JSON is required");
        return;
    }
    match n.cni_config() {
        Err(e) => r.error(format!("spec.config.{}", e.path), e.message),
        Ok(cfg) => cni_config(&cfg, r),
    }
}

/// Rules for a parsed CNI config; paths are `spec.config.<json key>`.
pub fn cni_config(cfg: &CniConfig, r: &mut Report) {
    let cp = P::root("spec").field("config");
    const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
    if !VERSIONS.contains(&cfg.cni_version.as_str()) {
        r.error(
            cp.field("cniVersion"),
            format!(
                "unsupported cniVersion {:?}; accepted: {}",
                cfg.cni_version,
                VERSIONS.join(", ")
            ),
        );
    }
    if cfg.plugins.is_empty() {
        r.error(cp.field("plugins"), "at least one plugin is required");
    }
    for (i, plugin) in cfg.plugins.iter().enumerate() {
        let pp = cp.field("plugins").index(i);
        match plugin {
            CniPlugin::Bridge(b) => {
                if let Some(name) = &b.bridge {
                    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                        r.error(pp.field("bridge"), format!("{name:?} is not a valid interface name (1-15 bytes, no '/' or space)"));
                    }
                }
                if let Some(v) = b.vlan {
                    if !(0..=4094).contains(&v) {
                        r.error(
                            pp.field("vlan"),
                            format!("VLAN {v} is out of range 0..4094"),
                        );
                    }
                }
                for (j, t) in b.vlan_trunk.iter().flatten().enumerate() {
                    let tp = pp.field("vlanTrunk").index(j);
                    for (f, v) in [("id", t.id), ("minID", t.min_id), ("maxID", t.max_id)] {
                        if let Some(v) = v {
                            if !(1..=4094).contains(&v) {
                                r.error(tp.field(f), format!("VLAN {v} is out of range 1..4094"));
                            }
                        }
                    }
                    if let (Some(a), Some(b)) = (t.min_id, t.max_id) {
                        if a > b {
                            r.error(tp.field("minID"), format!("minID {a} is above maxID {b}"));
                        }
                    }
                }
                if let Some(m) = b.mtu {
                    if !(68..=65535).contains(&m) {
                        r.error(
                            pp.field("mtu"),
                            format!("MTU {m} is out of range 68..65535"),
                        );
                    }
                }
            }
            CniPlugin::Sriov(s) => {
                if let Some(v) = s.vlan {
                    if !(0..=4095).contains(&v) {
                        r.error(
                            pp.field("vlan"),
                            format!("VLAN {v} is out of range 0..4095"),
                        );
                    }
                }
                if let Some(q) = s.vlan_qos {
                    if !(0..=7).contains(&q) {
                        r.error(pp.field("vlanQoS"), format!("QoS {q} is out of range 0..7"));
                    }
                }
                for (f, v) in [("spoofchk", &s.spoofchk), ("trust", &s.trust)] {
                    if let Some(v) = v {
                        if v != "on" && v != "off" {
                            r.error(pp.field(f), format!("{v:?} must be \"on\" or \"off\""));
                        }
                    }
                }
                if let Some(l) = &s.link_state {
                    if !["enable", "disable", "auto"].contains(&l.as_str()) {
                        r.error(
                            pp.field("link_state"),
                            format!("{l:?} must be enable, disable or auto"),
                        );
                    }
                }
                tx_rates(
                    s.min_tx_rate,
                    s.max_tx_rate,
                    &pp,
                    "min_tx_rate",
                    "max_tx_rate",
                    r,
                );
            }
            CniPlugin::Tuning(t) => {
                if let Some(m) = &t.mac {
                    if super::syntax::parse_mac(m).is_none() {
                        r.error(pp.field("mac"), format!("{m:?} is not a MAC address"));
                    }
                }
            }
            CniPlugin::Macvlan(m) => {
                if let Some(mode) = &m.mode {
                    if !["bridge", "private", "vepa", "passthru"].contains(&mode.as_str()) {
                        r.error(
                            pp.field("mode"),
                            format!("{mode:?} must be bridge, private, vepa or passthru"),
                        );
                    }
                }
            }
        }
    }
}

fn tx_rates(min: Option<i64>, max: Option<i64>, p: &P, min_f: &str, max_f: &str, r: &mut Report) {
    for (f, v) in [(min_f, min), (max_f, max)] {
        if let Some(v) = v {
            if v < 0 {
                r.error(p.field(f), format!("rate {v} must be >= 0"));
            }
        }
    }
    if let (Some(a), Some(b)) = (min, max) {
        if b > 0 && a > b {
            r.error(
                p.field(min_f),
                format!("minimum rate {a} is above the maximum {b}"),
            );
        }
    }
}

pub(super) fn sriov_policy(pol: &SriovNetworkNodePolicy, r: &mut Report) {
    api_version(
        &pol.api_version,
        &[crate::spec::network::SRIOV_API_VERSION],
        r,
    );
    named(&pol.metadata, r);
    let sp = P::root("spec");
    let s = &pol.spec;
    if s.resource_name.is_empty() {
        r.error(sp.field("resourceName"), "resourceName is required");
    } else if !s
        .resource_name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'_')
    {
        r.error(
            sp.field("resourceName"),
            format!(
                "{:?} may only hold letters, digits and '_'",
                s.resource_name
            ),
        );
    }
    if let Some(p) = s.priority {
        if !(0..=99).contains(&p) {
            r.error(
                sp.field("priority"),
                format!("priority {p} is out of range 0..99"),
            );
        }
    }
    if !(1..=256).contains(&s.num_vfs) {
        r.error(
            sp.field("numVfs"),
            format!(
                "numVfs {} is out of range 1..256 (and may not exceed the device's sriov_totalvfs)",
                s.num_vfs
            ),
        );
    }
    if let Some(m) = s.mtu {
        if !(68..=9216).contains(&m) {
            r.error(sp.field("mtu"), format!("MTU {m} is out of range 68..9216"));
        }
    }
    let np = sp.field("nicSelector");
    let n = &s.nic_selector;
    if let Some(v) = &n.vendor {
        if !["8086", "15b3"].contains(&v.to_ascii_lowercase().as_str()) {
            r.error(
                np.field("vendor"),
                format!("vendor {v:?} is not supported; allowed: 8086, 15b3"),
            );
        }
    }
    if let Some(d) = &n.device_id {
        if !["158b", "1015", "1017"].contains(&d.to_ascii_lowercase().as_str()) {
            r.error(
                np.field("deviceID"),
                format!("device {d:?} is not supported; allowed: 158b, 1015, 1017"),
            );
        }
    }
    for (i, rd) in n.root_devices.iter().enumerate() {
        if !is_pci_address(rd) {
            r.error(
                np.field("rootDevices").index(i),
                format!("{rd:?} is not a PCI address (DDDD:BB:DD.F)"),
            );
        }
    }
    if n.vendor.is_none()
        && n.device_id.is_none()
        && n.pf_names.is_empty()
        && n.root_devices.is_empty()
    {
        r.error(
            &np,
            "select at least one of vendor, deviceID, pfNames, rootDevices",
        );
    }
    match s.device_type.as_deref() {
        None | Some("netdevice") | Some("vfio-pci") => {}
        Some(other) => r.error(
            sp.field("deviceType"),
            format!("{other:?} must be vfio-pci or netdevice"),
        ),
    }
    if s.is_rdma == Some(true) && s.device_type.as_deref() == Some("vfio-pci") {
        r.error(
            sp.field("isRdma"),
            "RDMA cannot be used with deviceType vfio-pci",
        );
    }
}

pub(super) fn sriov_network(net: &SriovNetwork, r: &mut Report) {
    api_version(
        &net.api_version,
        &[crate::spec::network::SRIOV_API_VERSION],
        r,
    );
    named(&net.metadata, r);
    let sp = P::root("spec");
    let s = &net.spec;
    if s.resource_name.is_empty() {
        r.error(sp.field("resourceName"), "resourceName is required");
    }
    if let Some(v) = s.vlan {
        if !(0..=4095).contains(&v) {
            r.error(
                sp.field("vlan"),
                format!("VLAN {v} is out of range 0..4095"),
            );
        }
    }
    if let Some(q) = s.vlan_qos {
        if !(0..=7).contains(&q) {
            r.error(sp.field("vlanQoS"), format!("QoS {q} is out of range 0..7"));
        }
    }
    for (f, v) in [("spoofChk", &s.spoof_chk), ("trust", &s.trust)] {
        match v {
            Some(OnOff::Bool(b)) => r.error(
                sp.field(f),
                format!("got the boolean {b}; write the quoted string \"on\" or \"off\""),
            ),
            Some(OnOff::Text(t)) if t != "on" && t != "off" => {
                r.error(sp.field(f), format!("{t:?} must be \"on\" or \"off\""))
            }
            _ => {}
        }
    }
    if let Some(l) = &s.link_state {
        if !["enable", "disable", "auto"].contains(&l.as_str()) {
            r.error(
                sp.field("linkState"),
                format!("{l:?} must be enable, disable or auto"),
            );
        }
    }
    tx_rates(
        s.min_tx_rate,
        s.max_tx_rate,
        &sp,
        "minTxRate",
        "maxTxRate",
        r,
    );
    if let Some(ns) = &s.network_namespace {
        if !ns.is_empty() && !super::syntax::is_dns_label(ns) {
            r.error(
                sp.field("networkNamespace"),
                format!("{ns:?} is not a valid namespace"),
            );
        }
    }
}

pub(super) fn hyperconverged(hc: &HyperConverged, r: &mut Report) {
    api_version(&hc.api_version, crate::spec::cluster::HCO_API_VERSIONS, r);
    named(&hc.metadata, r);
    let sp = P::root("spec");
    if let Some(m) = &hc.spec.live_migration_config {
        migration_config(m, &sp.field("liveMigrationConfig"), r);
    }
    if let Some(c) = &hc.spec.cert_config {
        cert_config(c, &sp.field("certConfig"), r);
    }
    if let Some(d) = &hc.spec.permitted_host_devices {
        let dp = sp.field("permittedHostDevices");
        let mut names = HashSet::new();
        let mut selectors = HashSet::new();
        for (i, dev) in d.pci_host_devices.iter().enumerate() {
            let ip = dp.field("pciHostDevices").index(i);
            let sel = &dev.pci_vendor_selector;
            let ok = sel.len() == 9
                && sel.as_bytes()[4] == b':'
                && sel
                    .bytes()
                    .enumerate()
                    .all(|(k, c)| k == 4 || c.is_ascii_hexdigit());
            if !ok {
                r.error(
                    ip.field("pciVendorSelector"),
                    format!("{sel:?} must be VVVV:DDDD in hex"),
                );
            } else if !selectors.insert(sel.to_ascii_lowercase()) {
                r.error(
                    ip.field("pciVendorSelector"),
                    format!("duplicate selector {sel}"),
                );
            }
            resource_name(&dev.resource_name, &ip, &mut names, r);
        }
        for (i, dev) in d.mediated_devices.iter().enumerate() {
            let ip = dp.field("mediatedDevices").index(i);
            if dev.mdev_name_selector.is_empty() {
                r.error(ip.field("mdevNameSelector"), "mdevNameSelector is required");
            }
            resource_name(&dev.resource_name, &ip, &mut names, r);
        }
    }
}

fn resource_name<'a>(name: &'a str, p: &P, seen: &mut HashSet<&'a str>, r: &mut Report) {
    if !is_qualified_resource_name(name) {
        r.error(
            p.field("resourceName"),
            format!("{name:?} must be vendor-domain/NAME"),
        );
    } else if !seen.insert(name) {
        r.error(
            p.field("resourceName"),
            format!("duplicate resource name {name}"),
        );
    }
}

/// Rules for live-migration limits at `p`.
pub fn migration_config(m: &MigrationConfig, p: &P, r: &mut Report) {
    for (f, v) in [
        (
            "parallelMigrationsPerCluster",
            m.parallel_migrations_per_cluster,
        ),
        (
            "parallelOutboundMigrationsPerNode",
            m.parallel_outbound_migrations_per_node,
        ),
        ("completionTimeoutPerGiB", m.completion_timeout_per_gib),
        ("progressTimeout", m.progress_timeout),
    ] {
        if let Some(v) = v {
            if v < 1 {
                r.error(p.field(f), format!("must be >= 1, got {v}"));
            }
        }
    }
    if let Some(b) = &m.bandwidth_per_migration {
        if b.is_negative() {
            r.error(
                p.field("bandwidthPerMigration"),
                format!("must be >= 0 (0 = unlimited), got {b}"),
            );
        }
    }
    if let Some(n) = &m.network {
        if !n.is_empty() && !is_dns_subdomain(n.rsplit('/').next().unwrap_or(n)) {
            r.error(
                p.field("network"),
                format!("{n:?} is not a NetworkAttachmentDefinition name"),
            );
        }
    }
}

/// certConfig rules, reported in the order: minimums, CA, server,
/// CA-vs-server.
pub fn cert_config(c: &CertConfig, p: &P, r: &mut Report) {
    let get = |rot: &Option<CertRotation>,
               f: fn(&CertRotation) -> &Option<String>,
               default: &str,
               path: P,
               r: &mut Report| {
        let text = rot
            .as_ref()
            .and_then(|x| f(x).clone())
            .unwrap_or_else(|| default.to_string());
        match GoDuration::parse(&text) {
            Ok(d) => Some((d, path)),
            Err(e) => {
                r.error(&path, e.to_string());
                None
            }
        }
    };
    let ca_p = p.field("ca");
    let server_p = p.field("server");
    let ca_d = get(
        &c.ca,
        |x| &x.duration,
        CertConfig::DEFAULT_CA_DURATION,
        ca_p.field("duration"),
        r,
    );
    let ca_r = get(
        &c.ca,
        |x| &x.renew_before,
        CertConfig::DEFAULT_CA_RENEW_BEFORE,
        ca_p.field("renewBefore"),
        r,
    );
    let sv_d = get(
        &c.server,
        |x| &x.duration,
        CertConfig::DEFAULT_SERVER_DURATION,
        server_p.field("duration"),
        r,
    );
    let sv_r = get(
        &c.server,
        |x| &x.renew_before,
        CertConfig::DEFAULT_SERVER_RENEW_BEFORE,
        server_p.field("renewBefore"),
        r,
    );
    let min = GoDuration::from_secs(600);
    for (d, path) in [&ca_d, &ca_r, &sv_d, &sv_r].into_iter().flatten() {
        if *d < min {
            r.error(
                path,
                format!(
                    "{p}.{}: value is too small ({d}; the minimum is 10m0s)",
                    path.as_str().trim_start_matches(&format!("{p}."))
                ),
            );
        }
    }
    if let (Some((d, _)), Some((rb, _))) = (&ca_d, &ca_r) {
        if rb > d {
            r.error(
                &ca_p,
                format!("{p}.ca: duration is smaller than renewBefore ({d} < {rb})"),
            );
        }
    }
    if let (Some((d, _)), Some((rb, _))) = (&sv_d, &sv_r) {
        if rb > d {
            r.error(
                &server_p,
                format!("{p}.server: duration is smaller than renewBefore ({d} < {rb})"),
            );
        }
    }
    if let (Some((ca, _)), Some((sv, _))) = (&ca_d, &sv_d) {
        if sv > ca {
            r.error(
                p,
                format!("{p}: ca.duration is smaller than server.duration ({ca} < {sv})"),
            );
        }
    }
}

pub(super) fn cdi_config(c: &crate::spec::datavolume::CdiConfig, r: &mut Report) {
    api_version(&c.api_version, crate::spec::datavolume::CDI_API_VERSIONS, r);
    named(&c.metadata, r);
}

pub(super) fn secret(secret: &Secret, r: &mut Report) {
    api_version(&secret.api_version, &["v1"], r);
    named(&secret.metadata, r);
    for key in secret.data.keys() {
        if secret.value(key).is_err() {
            // ST-9: the key is named, the value never is.
            r.error(
                P::root("data").field(key),
                "is not valid base64 (the value is not shown)",
            );
        }
    }
}

pub(super) fn config_map(cm: &ConfigMap, r: &mut Report) {
    api_version(&cm.api_version, &["v1"], r);
    named(&cm.metadata, r);
    if cm.metadata.name.as_deref() != Some(KUBEVIRT_CONFIG_NAME) {
        return;
    }
    match cm.migration_config() {
        Err(e) => r.error(
            "data.migrations",
            format!("is not valid YAML for the migration limits: {e}"),
        ),
        Ok(m) => migration_config(&m, &P::root("data").field("migrations"), r),
    }
    let gates: BTreeMap<&str, ()> = cm.feature_gates().into_iter().map(|g| (g, ())).collect();
    if cm.data.contains_key("migrations") && !gates.contains_key("LiveMigration") {
        r.warn(
            "data.feature-gates",
            "migration limits are set but the LiveMigration feature gate is off",
        );
    }
}
