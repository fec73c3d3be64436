//! The DHCPv4 server against a real client: BusyBox `udhcpc` in a network
//! namespace of its own, joined by a veth pair to the server's namespace.
//! The lease and every option the client's script sees are checked; an
//! unknown MAC gets no lease. Needs root and `udhcpc`; skips, saying why,
//! otherwise.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use common::{is_root, sh, NetnsGuard};
use virtkit_net::{netns, Dhcp4Config, Dhcp4Server, Lease4, MacAddr, Route4};

/// Two namespaces and a veth pair between them; removed on drop.
struct Link {
    server_ns: String,
    client_ns: String,
    server_if: String,
    client_if: String,
    _guard: NetnsGuard,
}

impl Link {
    fn new(tag: &str, client_mac: &str) -> Option<Self> {
        let id = std::process::id() % 100_000;
        let (server_ns, client_ns) = (format!("vk-{tag}-s-{id}"), format!("vk-{tag}-c-{id}"));
        let l = Link {
            _guard: NetnsGuard(vec![server_ns.clone(), client_ns.clone()]),
            server_ns,
            client_ns,
            server_if: format!("vks{tag}{id}"),
            client_if: format!("vkc{tag}{id}"),
        };
        let ok = sh(&format!(
            "ip netns add {s} && ip netns add {c} && \
             ip link add {si} netns {s} type veth peer name {ci} netns {c} && \
             ip -n {c} link set {ci} address {client_mac} && \
             ip -n {s} addr add 10.0.2.1/24 dev {si} && \
             ip -n {s} link set {si} up && ip -n {c} link set {ci} up && \
             ip -n {s} link set lo up && ip -n {c} link set lo up",
            s = l.server_ns,
            c = l.client_ns,
            si = l.server_if,
            ci = l.client_if
        ));
        ok.then_some(l)
    }
}

fn tools() -> bool {
    if !is_root() {
        eprintln!("SKIP: needs root for network namespaces");
        return false;
    }
    if !sh("command -v udhcpc >/dev/null || test -x /usr/sbin/udhcpc") {
        eprintln!("SKIP: udhcpc is not installed (Debian package udhcpc)");
        return false;
    }
    true
}

/// Run udhcpc once in the client namespace; the environment its script
/// saw at `bound`, or None when it got no lease.
fn udhcpc(link: &Link, dir: &std::path::Path) -> Option<BTreeMap<String, String>> {
    let script = dir.join("script.sh");
    let out = dir.join("env.txt");
    let _ = std::fs::remove_file(&out);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && env > {}\nexit 0\n",
            out.display()
        ),
    )
    .unwrap();
    sh(&format!("chmod +x {}", script.display()));
    let ok = sh(&format!(
        "ip netns exec {ns} udhcpc -i {ifc} -f -q -n -t 3 -T 1 -s {script} \
         -O search -O staticroutes -O mtu -O hostname >/dev/null 2>&1",
        ns = link.client_ns,
        ifc = link.client_if,
        script = script.display()
    ));
    if !ok {
        return None;
    }
    let text = std::fs::read_to_string(&out).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[test]
fn udhcpc_gets_its_lease_and_every_option() {
    if !tools() {
        return;
    }
    let guest: MacAddr = "02:00:00:00:aa:01".parse().unwrap();
    let Some(link) = Link::new("d", &guest.to_string()) else {
        eprintln!("SKIP: could not create namespaces and a veth pair");
        return;
    };
    let dir = std::env::temp_dir().join(format!("virtkit-dhcp4-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = Dhcp4Config {
        boot: None,
        server: Ipv4Addr::new(10, 0, 2, 1),
        interface: link.server_if.clone(),
        leases: vec![Lease4 {
            mac: guest,
            address: Ipv4Addr::new(10, 0, 2, 2),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(10, 0, 2, 1)),
            dns: vec![Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(1, 1, 1, 1)],
            search: vec!["ns.svc.cluster.local".into(), "cluster.local".into()],
            mtu: Some(1400),
            routes: vec![Route4 {
                destination: Ipv4Addr::new(192, 168, 50, 0),
                prefix_len: 24,
                gateway: Ipv4Addr::new(10, 0, 2, 1),
            }],
            hostname: Some("vmi-fedora".into()),
            lease_secs: 86_400,
        }],
    };
    let server = Dhcp4Server::start(config.clone(), Some(netns::named(&link.server_ns))).unwrap();
    let env = udhcpc(&link, &dir).expect("udhcpc got a lease");
    let get = |k: &str| env.get(k).map(String::as_str).unwrap_or("");
    assert_eq!(get("ip"), "10.0.2.2");
    assert_eq!(get("subnet"), "255.255.255.0");
    assert_eq!(get("router"), "10.0.2.1");
    assert_eq!(
        get("dns").split_whitespace().collect::<Vec<_>>(),
        ["10.96.0.10", "1.1.1.1"]
    );
    assert_eq!(get("domain"), "ns.svc.cluster.local");
    assert_eq!(
        get("search").split_whitespace().collect::<Vec<_>>(),
        ["ns.svc.cluster.local", "cluster.local"]
    );
    assert_eq!(get("mtu"), "1400");
    assert_eq!(get("hostname"), "vmi-fedora");
    assert_eq!(get("lease"), "86400");
    assert_eq!(get("serverid"), "10.0.2.1");
    // Option 121 as udhcpc prints it: "dest/len gw" pairs, the default
    // route included (RFC 3442).
    assert_eq!(
        get("staticroutes"),
        "192.168.50.0/24 10.0.2.1 0.0.0.0/0 10.0.2.1"
    );
    assert!(server.answered() >= 2, "an OFFER and an ACK");
    drop(server);

    // A server that knows another MAC does not answer this client.
    let mut other = config;
    other.leases[0].mac = "02:00:00:00:aa:02".parse().unwrap();
    let server = Dhcp4Server::start(other, Some(netns::named(&link.server_ns))).unwrap();
    assert!(udhcpc(&link, &dir).is_none(), "no lease for an unknown MAC");
    assert_eq!(server.answered(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
