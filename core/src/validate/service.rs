//! Services (NET-6): the rules of a `Service` on its own, and which of
//! its ports reach a VM through the VM's masquerade interface, with a
//! warning for each `targetPort` that interface does not forward.

use std::collections::HashSet;

use super::objects::{api_version, named};
use super::vmi::RESERVED_MASQUERADE_PORTS;
use super::{Report, P};
use crate::spec::service::{Service, TargetPort};
use crate::spec::vmi::VmiSpec;

const TYPES: [&str; 3] = ["ClusterIP", "NodePort", "LoadBalancer"];
const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;

/// An IANA service name as Kubernetes checks it: 1–15 of `[a-z0-9-]`,
/// at least one letter, no `-` at either end or twice in a row.
fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

pub(super) fn service(svc: &Service, r: &mut Report) {
    api_version(&svc.api_version, &["v1"], r);
    named(&svc.metadata, r);
    let spec = P::root("spec");
    let kind = svc.spec.service_type();
    if !TYPES.contains(&kind) {
        r.error(
            spec.field("type"),
            format!("{kind:?} is not one of {}", TYPES.join(", ")),
        );
    }
    if svc.spec.selector.is_empty() {
        r.warn(
            spec.field("selector"),
            "is empty: the Service selects no VM",
        );
    }
    if svc.spec.ports.is_empty() {
        r.error(spec.field("ports"), "a Service needs at least one port");
    }
    let mut names = HashSet::new();
    let several = svc.spec.ports.len() > 1;
    for (i, p) in svc.spec.ports.iter().enumerate() {
        let at = spec.field("ports").index(i);
        match &p.name {
            None if several => {
                r.error(at.field("name"), "is required when there are several ports")
            }
            Some(n) if !names.insert(n.as_str()) => {
                r.error(at.field("name"), format!("{n:?} is used twice"))
            }
            _ => {}
        }
        if !(1..=65535).contains(&p.port) {
            r.error(at.field("port"), format!("{} is not 1–65535", p.port));
        }
        if let Some(proto) = &p.protocol {
            if !["TCP", "UDP", "SCTP"].contains(&proto.as_str()) {
                r.error(
                    at.field("protocol"),
                    format!("{proto:?} is not TCP, UDP or SCTP"),
                );
            }
        }
        match &p.target_port {
            Some(TargetPort::Number(n)) if !(1..=65535).contains(n) => {
                r.error(at.field("targetPort"), format!("{n} is not 1–65535"))
            }
            Some(TargetPort::Name(n)) if !is_port_name(n) => r.error(
                at.field("targetPort"),
                format!("{n:?} is not a port name (1–15 of a-z, 0-9 and '-', with a letter)"),
            ),
            _ => {}
        }
        if let Some(n) = p.node_port {
            if kind == "ClusterIP" {
                r.error(
                    at.field("nodePort"),
                    "is only allowed for NodePort and LoadBalancer",
                );
            } else if !NODE_PORTS.contains(&n) {
                r.error(at.field("nodePort"), format!("{n} is not 30000–32767"));
            }
        }
    }
}

/// One Service port that reaches the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposedPort {
    /// The Service's port.
    pub port: u16,
    /// The node port, for `NodePort` and `LoadBalancer`.
    pub node_port: Option<u16>,
    /// The guest's port.
    pub guest_port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// Which of `svc`'s ports reach a VM with template `labels` and `spec`
/// through its masquerade interface. The report warns (never errs) for a
/// Service that does not select the VM, a VM without a masquerade
/// interface, and each `targetPort` the interface does not forward: the
/// Service would exist but the guest would not be reachable there.
pub fn service_exposure(
    svc: &Service,
    labels: &std::collections::BTreeMap<String, String>,
    spec: &VmiSpec,
) -> (Vec<ExposedPort>, Report) {
    let mut r = Report::default();
    let at = P::root("spec");
    if !svc.spec.selects(labels) {
        r.warn(
            at.field("selector"),
            "does not select this VM (its template labels)",
        );
        return (Vec::new(), r);
    }
    let masquerade_name = spec
        .networks
        .iter()
        .find(|n| n.pod.is_some())
        .map(|n| n.name.as_str());
    let Some(iface) = spec
        .domain
        .devices
        .interfaces
        .iter()
        .find(|i| i.masquerade.is_some() && Some(i.name.as_str()) == masquerade_name)
    else {
        r.warn(
            at.field("ports"),
            "the VM has no masquerade interface on the pod network; a Service reaches nothing",
        );
        return (Vec::new(), r);
    };
    let mut exposed = Vec::new();
    for (i, p) in svc.spec.ports.iter().enumerate() {
        let target_at = at.field("ports").index(i).field("targetPort");
        let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        let guest_port = match p
            .target_port
            .as_ref()
            .unwrap_or(&TargetPort::Number(p.port))
        {
            TargetPort::Number(n) => *n,
            TargetPort::Name(name) => {
                match iface
                    .ports
                    .iter()
                    .find(|ip| ip.name.as_deref() == Some(name.as_str()))
                {
                    Some(ip) => ip.port,
                    None => {
                        r.warn(
                            target_at,
                            format!("{name:?} names no port of interface {:?}", iface.name),
                        );
                        continue;
                    }
                }
            }
        };
        let forwarded = if iface.ports.is_empty() {
            !RESERVED_MASQUERADE_PORTS.contains(&guest_port) && protocol != "SCTP"
        } else {
            iface.ports.iter().any(|ip| {
                ip.port == guest_port && ip.protocol.as_deref().unwrap_or("TCP") == protocol
            })
        };
        if !forwarded {
            r.warn(
                target_at,
                format!(
                    "{guest_port}/{protocol} is not forwarded by the masquerade interface {:?}{}",
                    iface.name,
                    if iface.ports.is_empty() {
                        " (every TCP and UDP port but 49152 and 49153 is)".to_string()
                    } else {
                        format!(
                            " (it forwards {})",
                            iface
                                .ports
                                .iter()
                                .map(|ip| format!(
                                    "{}/{}",
                                    ip.port,
                                    ip.protocol.as_deref().unwrap_or("TCP")
                                ))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                ),
            );
            continue;
        }
        let (Ok(port), Ok(guest_port)) = (u16::try_from(p.port), u16::try_from(guest_port)) else {
            continue;
        };
        exposed.push(ExposedPort {
            port,
            node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
            guest_port,
            protocol,
        });
    }
    (exposed, r)
}
