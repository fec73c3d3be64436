//! The masquerade binding: the guest sits behind NAT inside the "pod"
//! network namespace. In that namespace it builds
//!
//! - a bridge `k6t-<tag>` holding the gateway addresses (10.0.2.1/24, and
//!   fd10:0:2::1/120 for dual stack, or the configured CIDRs),
//! - a persistent tap `tap-<tag>` on the bridge for the VMM's guest NIC,
//! - an nftables table `inet virtkit_<tag>`: guest egress SNATed to the
//!   pod address (masquerade), the declared ports (all ports when none are
//!   declared) DNATed to the guest, the reserved ports 49152/49153 never
//!   forwarded and dropped on their way to the guest,
//! - a DHCPv4 server on the bridge giving the guest its address.
//!
//! Names derive from the tag only, so leftovers of a crashed process are
//! found and removed by [`Masquerade::clean_stale`] (which `setup` runs
//! first). [`Masquerade::teardown`] (or drop) removes every link, address
//! and table it made.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::json;

use crate::dhcp4::{Dhcp4Config, Dhcp4Error, Dhcp4Server, Lease4};
use crate::dhcp6::{Dhcp6Config, Dhcp6Error, Dhcp6Server, Lease6};
use crate::mac::MacAddr;

/// Ports libvirt and migration use in the pod: never forwarded (NET-4).
pub const RESERVED_PORTS: [u16; 2] = [49152, 49153];

/// A transport protocol of a forwarded port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`, as nftables and the `virtkit-net` binary spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A port of the pod address forwarded to the same port of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The port (1–65535, not a reserved one).
    pub port: u16,
}

/// What the binding is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqueradeConfig {
    /// 1–10 characters `[a-z0-9]`; every name derives from it.
    pub tag: String,
    /// The guest NIC's MAC (the DHCP lease is for it).
    pub guest_mac: MacAddr,
    /// The VM network (`vmNetworkCIDR`): gateway `.1`, guest `.2`.
    pub vm_cidr: Ipv4Net,
    /// The IPv6 VM network (`vmIPv6NetworkCIDR`) for dual stack: gateway
    /// `::1`, guest `::2`, served by DHCPv6 (a guest without a DHCPv6
    /// client sets them statically, as the spec says).
    pub vm_cidr6: Option<Ipv6Net>,
    /// Declared ports; empty forwards every port but the reserved ones.
    pub ports: Vec<PortForward>,
    /// MTU of the bridge and tap (and the DHCP option).
    pub mtu: Option<u16>,
    /// Create the tap multi-queue (`networkInterfaceMultiqueue`).
    pub multi_queue: bool,
    /// DNS servers for the guest.
    pub dns: Vec<Ipv4Addr>,
    /// IPv6 DNS servers for the guest (DHCPv6).
    pub dns6: Vec<Ipv6Addr>,
    /// Search domains for the guest.
    pub search: Vec<String>,
    /// The guest's host name.
    pub hostname: Option<String>,
}

impl MasqueradeConfig {
    /// The spec's defaults: 10.0.2.0/24, no IPv6, every port.
    pub fn new(tag: &str, guest_mac: MacAddr) -> Self {
        MasqueradeConfig {
            tag: tag.to_string(),
            guest_mac,
            vm_cidr: Ipv4Net::new(Ipv4Addr::new(10, 0, 2, 0), 24).unwrap_or_default(),
            vm_cidr6: None,
            ports: Vec::new(),
            mtu: None,
            multi_queue: false,
            dns: Vec::new(),
            dns6: Vec::new(),
            search: Vec::new(),
            hostname: None,
        }
    }

    /// The default IPv6 VM network, fd10:0:2::/120.
    pub fn default_ipv6() -> Ipv6Net {
        Ipv6Net::new(Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 0), 120).unwrap_or_default()
    }

    fn check(&self) -> Result<(), MasqueradeError> {
        let bad = |m: String| Err(MasqueradeError::Config(m));
        let tag_ok = (1..=10).contains(&self.tag.len())
            && self
                .tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !tag_ok {
            return bad(format!("tag {:?}: 1–10 characters of [a-z0-9]", self.tag));
        }
        if self.vm_cidr.prefix_len() > 30 {
            return bad(format!(
                "vmNetworkCIDR {} leaves no room for a gateway and a guest",
                self.vm_cidr
            ));
        }
        if self.vm_cidr6.is_some_and(|n| n.prefix_len() > 126) {
            return bad("vmIPv6NetworkCIDR leaves no room for a gateway and a guest".into());
        }
        for p in &self.ports {
            if p.port == 0 || RESERVED_PORTS.contains(&p.port) {
                return bad(format!(
                    "port {} cannot be forwarded (0 or reserved)",
                    p.port
                ));
            }
        }
        Ok(())
    }

    /// The gateway's address (the bridge's).
    pub fn gateway(&self) -> Ipv4Addr {
        nth4(self.vm_cidr, 1)
    }

    /// The guest's address.
    pub fn guest(&self) -> Ipv4Addr {
        nth4(self.vm_cidr, 2)
    }

    fn gateway6(&self) -> Option<Ipv6Addr> {
        self.vm_cidr6.map(|n| nth6(n, 1))
    }

    fn guest6(&self) -> Option<Ipv6Addr> {
        self.vm_cidr6.map(|n| nth6(n, 2))
    }
}

fn nth4(n: Ipv4Net, k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(n.network()) + k)
}

fn nth6(n: Ipv6Net, k: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(n.network()) + k)
}

/// Errors of the masquerade binding.
#[derive(Debug, thiserror::Error)]
pub enum MasqueradeError {
    /// A configuration that cannot be built.
    #[error("masquerade: {0}")]
    Config(String),
    /// A netlink, tap, sysctl or namespace operation.
    #[error("masquerade: {step}: {source}")]
    Host {
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// nftables refused the rules.
    #[error("masquerade: nftables: {0}")]
    Nftables(String),
    /// The DHCP server.
    #[error("masquerade: {0}")]
    Dhcp(#[from] Dhcp4Error),
    /// The DHCPv6 server.
    #[error("masquerade: {0}")]
    Dhcp6(#[from] Dhcp6Error),
}

fn host(step: &'static str) -> impl FnOnce(std::io::Error) -> MasqueradeError {
    move |source| MasqueradeError::Host { step, source }
}

/// The names of what a binding with a given tag creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The bridge.
    pub bridge: String,
    /// The tap.
    pub tap: String,
    /// The nftables table (family `inet`).
    pub table: String,
}

impl Names {
    /// Names for `tag`.
    pub fn for_tag(tag: &str) -> Self {
        Names {
            bridge: format!("k6t-{tag}"),
            tap: format!("tap-{tag}"),
            table: format!("virtkit_{tag}"),
        }
    }
}

/// A built masquerade binding; removed by [`Masquerade::teardown`] or
/// when dropped.
#[derive(Debug)]
pub struct Masquerade {
    netns: Option<PathBuf>,
    names: Names,
    dhcp: Option<Dhcp4Server>,
    dhcp6: Option<Dhcp6Server>,
    live: bool,
}

fn netlink<T: Send + 'static, F>(
    netns: Option<&Path>,
    step: &'static str,
    work: impl FnOnce(rtnetlink::Handle) -> F + Send + 'static,
) -> Result<T, MasqueradeError>
where
    F: std::future::Future<Output = Result<T, rtnetlink::Error>>,
{
    crate::link::run(netns, work).map_err(host(step))
}

fn nft(netns: Option<&Path>, doc: serde_json::Value) -> Result<(), MasqueradeError> {
    crate::nft::apply(netns, doc).map_err(MasqueradeError::Nftables)
}

fn write_sysctl(netns: Option<&Path>, key: &'static str) -> Result<(), MasqueradeError> {
    crate::netns::run_in(netns, move || std::fs::write(key, "1"))
        .map_err(host("enabling forwarding"))
}

/// The nftables rule set of a binding, as nft's JSON.
fn ruleset(cfg: &MasqueradeConfig, names: &Names) -> serde_json::Value {
    let t = &names.table;
    let br = &names.bridge;
    let chain = |name: &str, kind: &str, hook: &str, prio: i32| {
        json!({"add": {"chain": {"family": "inet", "table": t, "name": name,
            "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}})
    };
    let rule = |chain: &str, expr: serde_json::Value| json!({"add": {"rule": {"family": "inet", "table": t, "chain": chain, "expr": expr}}});
    let meta = |key: &str, op: &str, right: serde_json::Value| json!({"match": {"op": op, "left": {"meta": {"key": key}}, "right": right}});
    let reserved = json!({"set": RESERVED_PORTS});
    let dport = |op: &str, right: serde_json::Value| json!({"match": {"op": op, "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": right}});
    let mut cmds = vec![
        json!({"add": {"table": {"family": "inet", "name": t}}}),
        chain("prerouting", "nat", "prerouting", -100),
        chain("postrouting", "nat", "postrouting", 100),
        chain("forward", "filter", "forward", 0),
        // Reserved ports never reach the guest.
        rule(
            "forward",
            json!([
                meta("oifname", "==", json!(br)),
                meta("l4proto", "==", json!({"set": ["tcp", "udp"]})),
                dport("==", reserved.clone()),
                {"drop": null}
            ]),
        ),
    ];
    let mut families = vec![("ipv4", "ip", IpAddr::V4(cfg.guest()))];
    if let Some(g6) = cfg.guest6() {
        families.push(("ipv6", "ip6", IpAddr::V6(g6)));
    }
    for (nfproto, fam, guest) in families {
        let to = json!({"dnat": {"family": fam, "addr": guest.to_string()}});
        if cfg.ports.is_empty() {
            cmds.push(rule(
                "prerouting",
                json!([
                    meta("iifname", "!=", json!(br)),
                    meta("nfproto", "==", json!(nfproto)),
                    meta("l4proto", "==", json!({"set": ["tcp", "udp"]})),
                    dport("!=", reserved.clone()),
                    to
                ]),
            ));
        }
        for p in &cfg.ports {
            cmds.push(rule(
                "prerouting",
                json!([
                    meta("iifname", "!=", json!(br)),
                    meta("nfproto", "==", json!(nfproto)),
                    meta("l4proto", "==", json!(p.protocol.as_str())),
                    dport("==", json!(p.port)),
                    to.clone()
                ]),
            ));
        }
        // Guest egress leaves with the pod's address.
        cmds.push(rule(
            "postrouting",
            json!([
                meta("nfproto", "==", json!(nfproto)),
                {"match": {"op": "==", "left": {"payload": {"protocol": fam, "field": "saddr"}}, "right": guest.to_string()}},
                meta("oifname", "!=", json!(br)),
                {"masquerade": null}
            ]),
        ));
    }
    json!({"nftables": cmds})
}

impl Masquerade {
    /// Build the binding in the network namespace at `netns` (`None`:
    /// this process's). Leftovers of an earlier binding with the same tag
    /// are removed first; on any error what was built is removed again.
    pub fn setup(netns: Option<PathBuf>, cfg: MasqueradeConfig) -> Result<Self, MasqueradeError> {
        cfg.check()?;
        let names = Names::for_tag(&cfg.tag);
        Self::clean_stale(netns.as_deref(), &cfg.tag)?;
        let mut m = Masquerade {
            netns,
            names,
            dhcp: None,
            dhcp6: None,
            live: true,
        };
        // On error `m` drops and removes what exists.
        m.build(&cfg)?;
        Ok(m)
    }

    fn build(&mut self, cfg: &MasqueradeConfig) -> Result<(), MasqueradeError> {
        let ns = self.netns.clone();
        let names = self.names.clone();
        let (mtu, mq) = (cfg.mtu.map(u32::from), cfg.multi_queue);
        let tap = names.tap.clone();
        crate::netns::run_in(ns.as_deref(), move || {
            crate::tap::create_persistent(&tap, mq)
        })
        .map_err(host("creating the tap"))?;
        let gw = (cfg.gateway(), cfg.vm_cidr.prefix_len());
        let gw6 = cfg.gateway6().zip(cfg.vm_cidr6.map(|n| n.prefix_len()));
        let bridge_name = names.bridge.clone();
        netlink(ns.as_deref(), "creating the bridge", move |h| async move {
            let mut bridge = rtnetlink::LinkBridge::new(&bridge_name);
            if let Some(mtu) = mtu {
                bridge = bridge.mtu(mtu);
            }
            h.link().add(bridge.build()).execute().await
        })?;
        if cfg.vm_cidr6.is_some() {
            // No duplicate address detection on the bridge: its addresses
            // are usable (the DHCPv6 server answers from its link-local
            // one) as soon as the guest's tap brings the carrier up.
            let key = format!("/proc/sys/net/ipv6/conf/{}/accept_dad", names.bridge);
            crate::netns::run_in(ns.as_deref(), move || std::fs::write(key, "0"))
                .map_err(host("turning off DAD on the bridge"))?;
        }
        netlink(
            ns.as_deref(),
            "addressing the bridge",
            move |h| async move {
                use rtnetlink::LinkUnspec;
                let br = crate::link::index(&h, &names.bridge)
                    .await?
                    .ok_or(rtnetlink::Error::RequestFailed)?;
                h.address()
                    .add(br, IpAddr::V4(gw.0), gw.1)
                    .execute()
                    .await?;
                if let Some((a, p)) = gw6 {
                    h.address().add(br, IpAddr::V6(a), p).execute().await?;
                }
                let tap = crate::link::index(&h, &names.tap)
                    .await?
                    .ok_or(rtnetlink::Error::RequestFailed)?;
                let mut port = LinkUnspec::new_with_index(tap).controller(br).up();
                if let Some(mtu) = mtu {
                    port = port.mtu(mtu);
                }
                h.link().set(port.build()).execute().await?;
                Ok(())
            },
        )?;
        write_sysctl(self.netns.as_deref(), "/proc/sys/net/ipv4/ip_forward")?;
        if cfg.vm_cidr6.is_some() {
            write_sysctl(
                self.netns.as_deref(),
                "/proc/sys/net/ipv6/conf/all/forwarding",
            )?;
        }
        nft(self.netns.as_deref(), ruleset(cfg, &self.names))?;
        let lease = Lease4 {
            mac: cfg.guest_mac,
            address: cfg.guest(),
            prefix_len: cfg.vm_cidr.prefix_len(),
            gateway: Some(cfg.gateway()),
            dns: cfg.dns.clone(),
            search: cfg.search.clone(),
            mtu: cfg.mtu,
            routes: Vec::new(),
            hostname: cfg.hostname.clone(),
            lease_secs: 86_400,
        };
        self.dhcp = Some(Dhcp4Server::start(
            Dhcp4Config {
                boot: None,
                server: cfg.gateway(),
                interface: self.names.bridge.clone(),
                leases: vec![lease],
            },
            self.netns.clone(),
        )?);
        if let Some(address) = cfg.guest6() {
            self.dhcp6 = Some(Dhcp6Server::start(
                Dhcp6Config {
                    interface: self.names.bridge.clone(),
                    // Only a DUID: unique on the bridge's link is enough.
                    server_mac: MacAddr([0x02, b'k', b'6', b't', 0, 1]),
                    client_mac: Some(cfg.guest_mac),
                    lease: Lease6 {
                        address,
                        dns: cfg.dns6.clone(),
                        search: cfg.search.clone(),
                        lifetime_secs: 86_400,
                    },
                },
                self.netns.clone(),
            )?);
        }
        Ok(())
    }

    /// The names of what was built.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Remove whatever a binding with `tag` left in the namespace (a
    /// crashed process's). Returns whether anything was found.
    pub fn clean_stale(netns: Option<&Path>, tag: &str) -> Result<bool, MasqueradeError> {
        Self::remove_named(netns, &Names::for_tag(tag))
    }

    /// Remove the table and links called `names`, those that exist.
    fn remove_named(netns: Option<&Path>, names: &Names) -> Result<bool, MasqueradeError> {
        let mut found = crate::nft::delete_table(netns, "inet", &names.table)
            .map_err(MasqueradeError::Nftables)?;
        let links = names.clone();
        found |= netlink(netns, "removing old links", move |h| async move {
            let mut found = false;
            for name in [&links.tap, &links.bridge] {
                if let Some(i) = crate::link::index(&h, name).await? {
                    h.link().del(i).execute().await?;
                    found = true;
                }
            }
            Ok(found)
        })?;
        Ok(found)
    }

    /// Remove every link, address and table the binding made and stop its
    /// DHCP server.
    pub fn teardown(mut self) -> Result<(), MasqueradeError> {
        self.remove()
    }

    fn remove(&mut self) -> Result<(), MasqueradeError> {
        if !self.live {
            return Ok(());
        }
        self.live = false;
        self.dhcp = None;
        self.dhcp6 = None;
        Self::remove_named(self.netns.as_deref(), &self.names).map(drop)
    }
}

impl Drop for Masquerade {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            log::warn!("masquerade teardown of {}: {e}", self.names.bridge);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn config_checks_and_addresses() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let mut c = MasqueradeConfig::new("vm1", mac);
        assert_eq!(
            (c.gateway(), c.guest()),
            (Ipv4Addr::new(10, 0, 2, 1), Ipv4Addr::new(10, 0, 2, 2))
        );
        c.vm_cidr6 = Some(MasqueradeConfig::default_ipv6());
        assert_eq!(c.guest6().unwrap().to_string(), "fd10:0:2::2");
        assert!(c.check().is_ok());
        c.ports = vec![PortForward {
            protocol: Protocol::Tcp,
            port: 49152,
        }];
        assert!(c.check().unwrap_err().to_string().contains("49152"));
        c.ports.clear();
        c.tag = "Not-OK".into();
        assert!(c.check().is_err());
        assert_eq!(
            Names::for_tag("abcdefghij").bridge.len(),
            14,
            "fits IFNAMSIZ"
        );
    }

    #[test]
    fn the_rule_set_fits_the_nftables_schema() {
        let mut c = MasqueradeConfig::new("vm1", MacAddr([2, 0, 0, 0, 0, 1]));
        c.vm_cidr6 = Some(MasqueradeConfig::default_ipv6());
        for ports in [
            vec![],
            vec![PortForward {
                protocol: Protocol::Udp,
                port: 53,
            }],
        ] {
            c.ports = ports;
            let doc = ruleset(&c, &Names::for_tag("vm1"));
            let parsed: nftables::schema::Nftables<'_> =
                serde_json::from_value(doc.clone()).unwrap();
            // table + 3 chains + drop rule + (dnat + masquerade) × 2 families.
            assert_eq!(parsed.objects.len(), 9);
            let text = doc.to_string();
            assert!(text.contains("\"10.0.2.2\"") && text.contains("\"fd10:0:2::2\""));
        }
    }
}
