//! The masquerade binding for real, in three network namespaces the test
//! creates: "pod" (where the binding is built; its eth0 is a veth to the
//! "outside" namespace), "outside" (a client of the pod address) and
//! "guest" (stands in for the VM: its eth0 is a tap whose frames a relay
//! thread copies to and from the binding's tap, as a VMM's virtio-net
//! would). BusyBox `udhcpc` in the guest takes its lease from the binding's
//! DHCP server; TCP then goes through the declared port only, never
//! through a reserved one; guest egress leaves with the pod's address; and
//! teardown leaves the pod's nftables rule set and links as they were.
//! Needs root, `ip`, `nft` and `udhcpc`; skips, saying why, otherwise.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use common::{fetch, fetch_eventually, out, ready, serve, sh, wire, NetnsGuard};
use virtkit_net::{netns, MacAddr, Masquerade, MasqueradeConfig, PortForward, Protocol};

/// The three namespaces; removed on drop.
struct World {
    pod: String,
    outside: String,
    guest: String,
    _guard: NetnsGuard,
}

impl World {
    fn new(tag: &str) -> Option<World> {
        let id = std::process::id() % 100_000;
        let (pod, outside, guest) = (
            format!("vk-{tag}-p-{id}"),
            format!("vk-{tag}-o-{id}"),
            format!("vk-{tag}-g-{id}"),
        );
        let w = World {
            _guard: NetnsGuard(vec![pod.clone(), outside.clone(), guest.clone()]),
            pod,
            outside,
            guest,
        };
        let ok = sh(&format!(
            "ip netns add {p} && ip netns add {o} && ip netns add {g} && \
             ip link add eth0 netns {p} type veth peer name eth0 netns {o} && \
             ip -n {p} addr add 192.168.77.2/24 dev eth0 && ip -n {o} addr add 192.168.77.1/24 dev eth0 && \
             for n in {p} {o} {g}; do ip -n $n link set lo up; done && \
             ip -n {p} link set eth0 up && ip -n {o} link set eth0 up && \
             ip -n {p} route add default via 192.168.77.1 && \
             ip -n {p} addr add fd00:77::2/64 dev eth0 nodad && ip -n {o} addr add fd00:77::1/64 dev eth0 nodad && \
             ip -n {p} -6 route add default via fd00:77::1",
            p = w.pod,
            o = w.outside,
            g = w.guest
        ));
        ok.then_some(w)
    }

    fn ns(name: &str) -> PathBuf {
        netns::named(name)
    }
}

/// Bring up the guest's eth0 by DHCP; returns udhcpc's view.
fn dhcp_in_guest(w: &World, dir: &Path) -> String {
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in bound)\n  ip addr add $ip/$subnet dev $interface\n  \
             ip route add default via $router\n  echo \"$ip $router $mtu\" > {}\nesac\nexit 0\n",
            dir.join("lease").display()
        ),
    )
    .unwrap();
    sh(&format!("chmod +x {}", script.display()));
    assert!(
        sh(&format!(
            "ip netns exec {} udhcpc -i eth0 -f -q -n -t 5 -T 1 -O mtu -s {} >/dev/null 2>&1",
            w.guest,
            script.display()
        )),
        "udhcpc in the guest got no lease"
    );
    std::fs::read_to_string(dir.join("lease")).unwrap()
}

#[test]
fn guest_behind_nat_declared_ports_reserved_ports_and_clean_teardown() {
    if !ready() {
        return;
    }
    let Some(w) = World::new("mq") else {
        eprintln!("SKIP: could not create the namespaces");
        return;
    };
    let dir = std::env::temp_dir().join(format!("virtkit-masq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (pod, outside, guest) = (
        World::ns(&w.pod),
        World::ns(&w.outside),
        World::ns(&w.guest),
    );
    let rules_before = out(&format!("ip netns exec {} nft list ruleset", w.pod));
    let links_before = out(&format!("ip -n {} -br link", w.pod));

    let mac: MacAddr = "02:00:00:00:0b:01".parse().unwrap();
    let mut cfg = MasqueradeConfig::new("t1", mac);
    cfg.ports = vec![PortForward {
        protocol: Protocol::Tcp,
        port: 8080,
    }];
    cfg.mtu = Some(1400);
    let binding = Masquerade::setup(Some(pod.clone()), cfg.clone()).unwrap();
    let names = binding.names().clone();
    assert!(out(&format!("ip -n {} -br link", w.pod)).contains(&names.bridge));
    assert!(out(&format!("ip -n {} addr show {}", w.pod, names.bridge)).contains("10.0.2.1/24"));

    // The "VMM": the guest namespace's eth0 tap wired to the binding's tap.
    let relay = wire(&pod, &names.tap, &guest);
    assert!(sh(&format!(
        "ip -n {} link set eth0 address {mac} mtu 1400 up",
        w.guest
    )));

    let lease = dhcp_in_guest(&w, &dir);
    assert_eq!(lease.trim(), "10.0.2.2 10.0.2.1 1400");

    for port in [8080, 9090, 49152] {
        serve(&guest, port);
    }
    let pod_addr = |port| SocketAddr::from((Ipv4Addr::new(192, 168, 77, 2), port));
    assert_eq!(
        fetch_eventually(&outside, pod_addr(8080)).as_deref(),
        Some("hello-8080")
    );
    assert_eq!(
        fetch(&outside, pod_addr(9090)),
        None,
        "an undeclared port is not forwarded"
    );
    assert_eq!(
        fetch(&outside, pod_addr(49152)),
        None,
        "a reserved port is never forwarded"
    );

    // Egress: the outside sees the pod's address, not 10.0.2.2.
    // The outside answers each connection with the address it came from.
    let seen = netns::run_in(Some(&outside), || TcpListener::bind(("192.168.77.1", 7070))).unwrap();
    std::thread::spawn(move || {
        for mut s in seen.incoming().flatten() {
            if let Ok(peer) = s.peer_addr() {
                let _ = std::io::Write::write_all(&mut s, peer.ip().to_string().as_bytes());
            }
        }
    });
    let outside_addr = SocketAddr::from((Ipv4Addr::new(192, 168, 77, 1), 7070));
    assert_eq!(
        fetch_eventually(&guest, outside_addr).as_deref(),
        Some("192.168.77.2")
    );

    // No ports declared: every port but the reserved ones. A second setup
    // with the same tag finds and replaces the first binding's leftovers.
    cfg.ports.clear();
    std::mem::forget(binding); // as if the process had crashed
    drop(relay);
    let binding = Masquerade::setup(Some(pod.clone()), cfg).unwrap();
    let relay = wire(&pod, &names.tap, &guest);
    assert_eq!(
        fetch_eventually(&outside, pod_addr(9090)).as_deref(),
        Some("hello-9090")
    );
    assert_eq!(
        fetch_eventually(&outside, pod_addr(8080)).as_deref(),
        Some("hello-8080")
    );
    assert_eq!(fetch(&outside, pod_addr(49152)), None);

    drop(relay);
    binding.teardown().unwrap();
    assert_eq!(
        out(&format!("ip netns exec {} nft list ruleset", w.pod)),
        rules_before
    );
    assert_eq!(out(&format!("ip -n {} -br link", w.pod)), links_before);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Dual stack: the guest takes fd10:0:2::2 from the binding's DHCPv6
/// server with ISC `dhclient -6`, and IPv6 TCP to the pod's address on the
/// declared port reaches it. DHCPv6 gives an address, not routes (router
/// advertisements do, and the binding sends none yet), so the client's
/// script sets the gateway as cloud-init's `gateway6` would. Skips where
/// `dhclient` is absent.
#[test]
fn dual_stack_guest_gets_its_ipv6_address_by_dhcpv6() {
    if !ready() {
        return;
    }
    if !sh("command -v dhclient >/dev/null || test -x /usr/sbin/dhclient || test -x /sbin/dhclient")
    {
        eprintln!("SKIP: dhclient is not installed (Debian package isc-dhcp-client)");
        return;
    }
    let Some(w) = World::new("m6") else {
        eprintln!("SKIP: could not create the namespaces");
        return;
    };
    let dir = std::env::temp_dir().join(format!("virtkit-masq6-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (pod, outside, guest) = (
        World::ns(&w.pod),
        World::ns(&w.outside),
        World::ns(&w.guest),
    );
    let mac: MacAddr = "02:00:00:00:0b:06".parse().unwrap();
    let mut cfg = MasqueradeConfig::new("t6", mac);
    cfg.vm_cidr6 = Some(MasqueradeConfig::default_ipv6());
    cfg.dns6 = vec!["fd10:0:2::1".parse().unwrap()];
    cfg.search = vec!["ns.svc.cluster.local".into()];
    cfg.ports = vec![PortForward {
        protocol: Protocol::Tcp,
        port: 8080,
    }];
    let binding = Masquerade::setup(Some(pod.clone()), cfg).unwrap();
    let _relay = wire(&pod, &binding.names().tap, &guest);
    assert!(sh(&format!(
        "ip netns exec {g} sysctl -qw net.ipv6.conf.eth0.accept_dad=0 && ip -n {g} link set eth0 address {mac} up",
        g = w.guest
    )));

    let script = dir.join("dhclient.sh");
    let seen = dir.join("seen");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$reason\" in BOUND6)\n  ip -6 addr add $new_ip6_address/$new_ip6_prefixlen dev $interface nodad\n  \
             ip -6 route add fd10:0:2::1 dev $interface\n  ip -6 route add default via fd10:0:2::1\n  \
             echo \"$new_ip6_address $new_dhcp6_name_servers $new_dhcp6_domain_search\" > {}\nesac\nexit 0\n",
            seen.display()
        ),
    )
    .unwrap();
    sh(&format!("chmod +x {}", script.display()));
    let pidfile = dir.join("dhclient.pid");
    let ok = sh(&format!(
        "timeout 30 ip netns exec {g} dhclient -6 -1 -sf {s} -lf {d}/lease6 -pf {p} eth0 >/dev/null 2>&1",
        g = w.guest,
        s = script.display(),
        d = dir.display(),
        p = pidfile.display()
    ));
    // dhclient stays in the background after binding: stop it.
    sh(&format!("kill $(cat {}) 2>/dev/null", pidfile.display()));
    assert!(ok, "dhclient -6 got no lease");
    let got = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(got.trim(), "fd10:0:2::2 fd10:0:2::1 ns.svc.cluster.local.");

    serve(&guest, 8080);
    let to = SocketAddr::from(("fd00:77::2".parse::<std::net::Ipv6Addr>().unwrap(), 8080));
    assert_eq!(
        fetch_eventually(&outside, to).as_deref(),
        Some("hello-8080")
    );
    binding.teardown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
