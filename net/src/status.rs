//! `status.interfaces[]` (NET-14, NET-16): what the library knows of each
//! NIC (its spec name, MAC, queue count, the address its DHCP lease or
//! binding gave it), merged by MAC with a guest agent's report
//! (`guest-network-get-interfaces`), the way KubeVirt fills it.

use std::collections::BTreeSet;

use virtkit_core::spec::vm::VmiInterfaceStatus;

use crate::mac::MacAddr;
use crate::nic::{NicBinding, NicPlan};

/// One interface as the guest agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAgentInterface {
    /// The guest's name for it (`eth0`).
    pub name: String,
    /// Its MAC (`hardware-address`), if it has one.
    pub mac: Option<MacAddr>,
    /// Its addresses with prefix (`10.0.2.2/24`, `fd10:0:2::2/120`).
    pub ip_addresses: Vec<String>,
}

/// Why a guest agent reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("guest agent reply: {path}: {message}")]
pub struct GuestAgentError {
    /// JSON path of the bad value.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Read a QEMU guest agent `guest-network-get-interfaces` reply (the
/// whole `{"return": [...]}` object, or the bare list).
pub fn parse_guest_agent_interfaces(
    json: &str,
) -> Result<Vec<GuestAgentInterface>, GuestAgentError> {
    let err = |path: String, message: &str| GuestAgentError {
        path,
        message: message.to_string(),
    };
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| err("<root>".into(), &e.to_string()))?;
    let list = match &value {
        serde_json::Value::Object(o) => o
            .get("return")
            .ok_or_else(|| err("<root>".into(), "no \"return\""))?,
        other => other,
    };
    let list = list
        .as_array()
        .ok_or_else(|| err("return".into(), "must be a list"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let at = format!("return[{i}]");
        let name = entry
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| err(format!("{at}.name"), "a string is required"))?
            .to_string();
        let mac = match entry.get("hardware-address") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let text = v
                    .as_str()
                    .ok_or_else(|| err(format!("{at}.hardware-address"), "must be a string"))?;
                Some(
                    text.parse::<MacAddr>()
                        .map_err(|_| err(format!("{at}.hardware-address"), "not a MAC address"))?,
                )
            }
        };
        let mut ip_addresses = Vec::new();
        if let Some(addrs) = entry.get("ip-addresses") {
            let addrs = addrs
                .as_array()
                .ok_or_else(|| err(format!("{at}.ip-addresses"), "must be a list"))?;
            for (j, a) in addrs.iter().enumerate() {
                let ap = format!("{at}.ip-addresses[{j}]");
                let ip: std::net::IpAddr = a
                    .get("ip-address")
                    .and_then(|v| v.as_str())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| err(format!("{ap}.ip-address"), "an IP address is required"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let prefix = a
                    .get("prefix")
                    .and_then(|v| v.as_u64())
                    .filter(|p| *p <= max)
                    .ok_or_else(|| err(format!("{ap}.prefix"), "a prefix length is required"))?;
                ip_addresses.push(format!("{ip}/{prefix}"));
            }
        }
        out.push(GuestAgentInterface {
            name,
            mac,
            ip_addresses,
        });
    }
    Ok(out)
}

/// What the library knows of one NIC's addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownAddresses {
    /// The interface name.
    pub name: String,
    /// Addresses with prefix: the DHCP lease's (bridge NICs served by our
    /// server) or, for masquerade, the pod's address that KubeVirt
    /// reports in place of the guest's NATed one.
    pub ip_addresses: Vec<String>,
}

/// Build `status.interfaces[]` for `nics` from `known` addresses and an
/// optional guest agent report.
///
/// Per NIC: name, MAC, queue count, `infoSource` `domain`, plus
/// `guest-agent` when the agent reports its MAC (then `interfaceName`
/// and, except for masquerade, the agent's addresses) and
/// `multus-status` on a Multus network. Interfaces that only the agent
/// knows (not loopback) follow with `infoSource` `guest-agent`.
pub fn interface_status(
    nics: &[NicPlan],
    known: &[KnownAddresses],
    agent: Option<&[GuestAgentInterface]>,
) -> Vec<VmiInterfaceStatus> {
    let agent = agent.unwrap_or_default();
    let mut matched = BTreeSet::new();
    let mut out = Vec::with_capacity(nics.len());
    for nic in nics {
        let mut sources = vec!["domain"];
        let mut ips: Vec<String> = known
            .iter()
            .find(|k| k.name == nic.name)
            .map(|k| k.ip_addresses.clone())
            .unwrap_or_default();
        let mut interface_name = None;
        if let Some((i, a)) = agent
            .iter()
            .enumerate()
            .find(|(_, a)| a.mac == Some(nic.mac))
        {
            matched.insert(i);
            sources.push("guest-agent");
            interface_name = Some(a.name.clone());
            if !matches!(nic.binding, NicBinding::Masquerade { .. }) && !a.ip_addresses.is_empty() {
                ips = a.ip_addresses.clone();
            }
        }
        if nic.binding.is_multus() {
            sources.push("multus-status");
        }
        out.push(VmiInterfaceStatus {
            name: Some(nic.name.clone()),
            mac: Some(nic.mac.to_string()),
            ip_address: ips.first().cloned(),
            ip_addresses: ips,
            interface_name,
            info_source: Some(sources.join(", ")),
            queue_count: Some(i64::from(nic.queue_pairs)),
        });
    }
    for (i, a) in agent.iter().enumerate() {
        if matched.contains(&i) || a.name == "lo" {
            continue;
        }
        out.push(VmiInterfaceStatus {
            name: None,
            mac: a.mac.map(|m| m.to_string()),
            ip_address: a.ip_addresses.first().cloned(),
            ip_addresses: a.ip_addresses.clone(),
            interface_name: Some(a.name.clone()),
            info_source: Some("guest-agent".into()),
            queue_count: None,
        });
    }
    out
}
