//! The Linux bridge binding for real: a "host" namespace whose bridge has
//! a port to a "peer" namespace, and a "guest" namespace whose eth0 tap is
//! relayed to the binding's tap (the "VMM"). MAC-spoof protection lets the
//! guest's own MAC out and drops a forged one; with an access VLAN the
//! guest reaches the peer only once the peer's port is in that VLAN too;
//! teardown removes the tap and the nftables table and leaves the bridge.
//! Needs root, `ip`, `bridge`, `nft`; skips, saying why, otherwise.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use common::{fetch, fetch_eventually, out, ready, serve, sh, wire, NetnsGuard};
use virtkit_net::{netns, tap, BridgeBinding, BridgeBindingConfig, BridgeError, MacAddr};

struct World {
    host: String,
    peer: String,
    guest: String,
    _guard: NetnsGuard,
}

impl World {
    fn new() -> Option<World> {
        let id = std::process::id() % 100_000;
        let (host, peer, guest) = (
            format!("vk-br-h-{id}"),
            format!("vk-br-p-{id}"),
            format!("vk-br-g-{id}"),
        );
        let w = World {
            _guard: NetnsGuard(vec![host.clone(), peer.clone(), guest.clone()]),
            host,
            peer,
            guest,
        };
        // The peer's port joins the bridge once the binding has made it.
        let ok = sh(&format!(
            "ip netns add {h} && ip netns add {p} && ip netns add {g} && \
             ip link add vpeer netns {h} type veth peer name eth0 netns {p} && \
             ip -n {p} addr add 192.168.88.1/24 dev eth0 && ip -n {p} link set eth0 up && \
             ip -n {h} link set vpeer up && \
             for n in {h} {p} {g}; do ip -n $n link set lo up; done",
            h = w.host,
            p = w.peer,
            g = w.guest
        ));
        ok.then_some(w)
    }
}

#[test]
fn mac_spoof_check_vlan_and_teardown() {
    if !ready() || !sh("command -v bridge >/dev/null || test -x /usr/sbin/bridge") {
        eprintln!("SKIP: needs root, ip, bridge, nft");
        return;
    }
    let Some(w) = World::new() else {
        eprintln!("SKIP: could not create the namespaces");
        return;
    };
    let (host, peer, guest) = (
        netns::named(&w.host),
        netns::named(&w.peer),
        netns::named(&w.guest),
    );
    let mac: MacAddr = "02:00:00:00:0c:01".parse().unwrap();
    let cfg = BridgeBindingConfig {
        tag: "b1".into(),
        bridge: "br-vm".into(),
        guest_mac: mac,
        vlan: None,
        trunk: vec![],
        preserve_default_vlan: true,
        mac_spoof_check: true,
        mtu: None,
        multi_queue: false,
    };
    let binding = BridgeBinding::attach(Some(host.clone()), cfg.clone()).unwrap();
    assert!(sh(&format!("ip -n {} link set vpeer master br-vm", w.host)));

    netns::run_in(Some(&guest), || tap::create_persistent("eth0", false)).unwrap();
    assert!(sh(&format!(
        "ip -n {g} link set eth0 address {mac} up && ip -n {g} addr add 192.168.88.10/24 dev eth0",
        g = w.guest
    )));
    let relay = wire(&host, &binding.tap(), &guest);
    serve(&peer, 7000);
    let to_peer = SocketAddr::from((Ipv4Addr::new(192, 168, 88, 1), 7000));
    assert_eq!(
        fetch_eventually(&guest, to_peer).as_deref(),
        Some("hello-7000")
    );

    // A forged source MAC is dropped at the port.
    let forged = format!(
        "ip -n {g} link set eth0 address 02:00:00:00:0c:66 && ip -n {g} neigh flush all && ip -n {p} neigh flush all",
        g = w.guest,
        p = w.peer
    );
    assert!(sh(&forged));
    assert_eq!(fetch(&guest, to_peer), None, "a forged MAC gets nowhere");
    assert!(sh(&format!(
        "ip -n {} link set eth0 address {mac}",
        w.guest
    )));
    assert_eq!(
        fetch_eventually(&guest, to_peer).as_deref(),
        Some("hello-7000")
    );
    let table = |family: &str| {
        out(&format!(
            "ip netns exec {} nft list tables {family}",
            w.host
        ))
    };
    assert!(table("bridge").contains("virtkit_br_b1"));
    drop(relay);
    binding.teardown().unwrap();
    assert!(!table("bridge").contains("virtkit_br_b1"));
    assert!(!out(&format!("ip -n {} -br link", w.host)).contains("tap-b1"));

    // An access VLAN: the peer's port (VLAN 1) is out of reach until it
    // joins VLAN 100 too. The default VLAN is taken off the guest's port.
    let vlan_cfg = BridgeBindingConfig {
        vlan: Some(100),
        preserve_default_vlan: false,
        mac_spoof_check: false,
        ..cfg
    };
    let binding = match BridgeBinding::attach(Some(host.clone()), vlan_cfg) {
        Ok(b) => b,
        Err(e @ BridgeError::Unsupported(_)) => {
            // This machine's kernel has no CONFIG_BRIDGE_VLAN_FILTERING:
            // the error says so, and nothing is left behind.
            assert!(
                e.to_string().contains("CONFIG_BRIDGE_VLAN_FILTERING"),
                "{e}"
            );
            assert!(!out(&format!("ip -n {} -br link", w.host)).contains("tap-b1"));
            eprintln!("SKIP (VLAN part): {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let vlans = out(&format!("bridge -n {} vlan show dev tap-b1", w.host));
    assert!(
        vlans.contains("100 PVID Egress Untagged") && !vlans.contains(" 1 "),
        "{vlans}"
    );
    let relay = wire(&host, &binding.tap(), &guest);
    sh(&format!(
        "ip -n {g} neigh flush all; ip -n {p} neigh flush all",
        g = w.guest,
        p = w.peer
    ));
    assert_eq!(
        fetch(&guest, to_peer),
        None,
        "VLAN 100 does not reach VLAN 1"
    );
    assert!(sh(&format!(
        "bridge -n {} vlan add dev vpeer vid 100 pvid untagged",
        w.host
    )));
    assert_eq!(
        fetch_eventually(&guest, to_peer).as_deref(),
        Some("hello-7000")
    );
    drop(relay);
    binding.teardown().unwrap();
    // The host's bridge stays.
    assert!(out(&format!("ip -n {} -br link", w.host)).contains("br-vm"));
}
