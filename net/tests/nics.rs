//! NICs from a VMI spec, on a real PCI bus (no KVM needed): planning with
//! field paths, the masquerade binding's config from the spec, the
//! hotplug rules of seed 000 (bridge only, four interfaces with hotplug,
//! SR-IOV never unplugged), `status.interfaces` merged with a guest
//! agent's report, and the migration network's address (the last one in
//! a namespace the test makes, where root is available).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use virtkit_core::spec::network::CniConfig;
use virtkit_core::spec::vmi::VmiSpec;
use virtkit_devices::pci::{MsiSink, PciBus, PciError, PciLayout, SlotState};
use virtkit_devices::virtio::net::{Disconnected, NetBackend};
use virtkit_net::migration_net::{migration_address, HostAddress, MigrationNetworkError};
use virtkit_net::{
    interface_status, parse_guest_agent_interfaces, plan_nics, HotplugError, KnownAddresses,
    MacAddr, NicBinding, NicError, Nics, Protocol,
};

const SPEC: &str = r#"
domain:
  cpu: {cores: 4}
  devices:
    networkInterfaceMultiqueue: true
    interfaces:
      - name: default
        masquerade: {}
        macAddress: "02:00:00:00:00:01"
        ports: [{port: 80}, {port: 53, protocol: UDP}]
      - name: red
        bridge: {}
        macAddress: "02:00:00:00:00:02"
        bootOrder: 1
      - name: fast
        sriov: {}
        macAddress: "02:00:00:00:00:03"
      - name: gone
        bridge: {}
        state: absent
networks:
  - name: default
    pod: {vmNetworkCIDR: 10.11.0.0/24}
  - name: red
    multus: {networkName: red-nad}
  - name: fast
    multus: {networkName: sriov-net}
  - name: gone
    multus: {networkName: red-nad}
"#;

fn spec(yaml: &str) -> VmiSpec {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn error_path(yaml: &str) -> String {
    match plan_nics(&spec(yaml)).unwrap_err() {
        NicError::Field { path, .. } => path,
    }
}

#[test]
fn plans_follow_the_spec_and_errors_name_their_field() {
    let plans = plan_nics(&spec(SPEC)).unwrap();
    let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["default", "red", "fast"],
        "state: absent is left out"
    );
    assert_eq!(plans[0].queue_pairs, 4, "multiqueue: one pair per vCPU");
    assert_eq!(plans[1].boot_order, Some(1));
    assert_eq!(
        plans[1].binding,
        NicBinding::Bridge {
            network: "red-nad".into()
        }
    );
    assert!(!plans[2].is_emulated(), "SR-IOV is a host function");
    assert_eq!(plans[1].net_config().mac, [2, 0, 0, 0, 0, 2]);
    let m = plans[0].masquerade_config("vm1").unwrap();
    assert_eq!(m.vm_cidr.to_string(), "10.11.0.0/24");
    assert_eq!(m.guest().to_string(), "10.11.0.2");
    assert_eq!(m.ports.len(), 2);
    assert_eq!(m.ports[1].protocol, Protocol::Udp);
    assert!(m.multi_queue);
    assert!(plans[1].masquerade_config("vm1").is_err());

    // KubeVirt's default: one masquerade NIC on the pod network, with a
    // generated locally administered unicast MAC.
    let plans = plan_nics(&spec("domain: {devices: {}}\n")).unwrap();
    assert_eq!(plans.len(), 1);
    assert!(plans[0].mac_generated);
    assert_eq!(plans[0].mac.0[0] & 0x03, 0x02);
    assert!(plan_nics(&spec(
        "domain: {devices: {autoattachPodInterface: false}}\n"
    ))
    .unwrap()
    .is_empty());

    let bad = |from: &str, to: &str| error_path(&SPEC.replacen(from, to, 1));
    assert_eq!(
        bad("\"02:00:00:00:00:02\"", "\"nope\""),
        "spec.domain.devices.interfaces[1].macAddress"
    );
    assert_eq!(
        bad("\"02:00:00:00:00:02\"", "\"01:00:5e:00:00:01\""),
        "spec.domain.devices.interfaces[1].macAddress"
    );
    assert_eq!(
        bad("bootOrder: 1", "bootOrder: 0"),
        "spec.domain.devices.interfaces[1].bootOrder"
    );
    assert_eq!(
        bad("protocol: UDP", "protocol: SCTP"),
        "spec.domain.devices.interfaces[0].ports[1].protocol"
    );
    assert_eq!(
        bad("- name: red\n    multus", "- name: blue\n    multus"),
        "spec.domain.devices.interfaces[1].name"
    );
    assert_eq!(
        bad("bootOrder: 1", "model: e1000"),
        "spec.domain.devices.interfaces[1].model"
    );
    assert_eq!(
        bad("masquerade: {}", "bridge: {}"),
        "spec.domain.devices.interfaces[0]"
    );
}

fn idle() -> Vec<Arc<dyn NetBackend>> {
    vec![Arc::new(Disconnected::new().unwrap())]
}

struct NoMsi;
impl MsiSink for NoMsi {
    fn send(&self, _address: u64, _data: u32) {}
}

#[test]
fn hotplug_rules_on_a_real_bus() {
    let plans = plan_nics(&spec(SPEC)).unwrap();
    let bus = Arc::new(PciBus::new(PciLayout::for_memory(1 << 30)));
    let memory = virtkit_core::runtime::memory::create(16 << 20).unwrap();
    let mut nics = Nics::new(bus.clone(), memory, Arc::new(NoMsi));
    let pod = nics.cold_plug(&plans[0], idle(), None).unwrap();
    let rom = vec![0x55, 0xaa, 0, 0];
    let red = nics.cold_plug(&plans[1], idle(), Some(rom)).unwrap();
    assert!(matches!(
        nics.cold_plug(&plans[2], idle(), None),
        Err(HotplugError::NotEmulated { .. })
    ));
    assert!(matches!(
        nics.cold_plug(&plans[1], idle(), None),
        Err(HotplugError::Duplicate { .. })
    ));
    assert!(matches!(
        bus.slots()[usize::from(pod.device)],
        SlotState::Occupied {
            hotplugged: false,
            ..
        }
    ));

    // Two attached: two more bridge NICs may come, a fifth may not.
    let mut extra = plans[1].clone();
    extra.name = "blue".into();
    let blue = nics.hotplug(&extra, idle()).unwrap();
    assert!(matches!(
        bus.slots()[usize::from(blue.device)],
        SlotState::Occupied {
            hotplugged: true,
            ..
        }
    ));
    extra.name = "green".into();
    nics.hotplug(&extra, idle()).unwrap();
    extra.name = "yellow".into();
    let e = nics.hotplug(&extra, idle()).unwrap_err();
    assert!(matches!(
        e,
        HotplugError::InterfaceLimit {
            attached: 4,
            limit: 4,
            ..
        }
    ));
    assert!(e.to_string().contains("at most 4"), "{e}");
    let mut masq = plans[0].clone();
    masq.name = "second-pod".into();
    assert!(matches!(
        nics.hotplug(&masq, idle()),
        Err(HotplugError::Binding {
            binding: "masquerade",
            ..
        })
    ));

    // SR-IOV: recorded, never hot-unplugged; masquerade neither.
    nics.record_assigned(&plans[2], virtkit_devices::pci::PciAddress::slot(20))
        .unwrap();
    let e = nics
        .hot_unplug("fast", Duration::from_millis(10))
        .unwrap_err();
    assert!(matches!(e, HotplugError::SriovUnplug { .. }));
    assert_eq!(
        e.to_string(),
        "interface fast: SR-IOV interfaces cannot be hot-unplugged; stop the VM to remove it"
    );
    assert!(matches!(
        nics.hot_unplug("default", Duration::from_millis(10)),
        Err(HotplugError::Binding { .. })
    ));
    assert!(matches!(
        nics.hot_unplug("nope", Duration::from_millis(10)),
        Err(HotplugError::NotAttached { .. })
    ));
    // A cold-plugged bridge NIC is not removable by the guest; a
    // hot-plugged one whose guest never ejects it times out and stays.
    assert!(matches!(
        nics.hot_unplug("red", Duration::from_millis(10)),
        Err(HotplugError::Pci {
            source: PciError::NotRemovable { .. },
            ..
        })
    ));
    assert!(matches!(
        nics.hot_unplug("blue", Duration::from_millis(20)),
        Err(HotplugError::Pci {
            source: PciError::EjectTimeout { .. },
            ..
        })
    ));
    assert!(nics.attached().contains_key("blue"));
    assert_eq!(nics.attached()["red"].address, red);
    assert_eq!(nics.attached().len(), 5);
}

#[test]
fn status_interfaces_merge_the_guest_agent_by_mac() {
    let plans = plan_nics(&spec(SPEC)).unwrap();
    let agent = parse_guest_agent_interfaces(
        r#"{"return": [
          {"name": "lo", "hardware-address": "00:00:00:00:00:00",
           "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]},
          {"name": "eth0", "hardware-address": "02:00:00:00:00:01",
           "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "10.11.0.2", "prefix": 24}]},
          {"name": "eth1", "hardware-address": "02:00:00:00:00:02",
           "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "192.168.1.10", "prefix": 24},
                            {"ip-address-type": "ipv6", "ip-address": "fd00::10", "prefix": 64}]},
          {"name": "docker0", "hardware-address": "02:42:ac:11:00:01", "ip-addresses": []}
        ]}"#,
    )
    .unwrap();
    let known = [KnownAddresses {
        name: "default".into(),
        ip_addresses: vec!["10.244.0.37/24".into()],
    }];
    let status = interface_status(&plans, &known, Some(&agent));
    assert_eq!(status.len(), 4, "three NICs and docker0; lo is left out");
    let pod = &status[0];
    assert_eq!(pod.name.as_deref(), Some("default"));
    assert_eq!(pod.mac.as_deref(), Some("02:00:00:00:00:01"));
    assert_eq!(pod.interface_name.as_deref(), Some("eth0"));
    assert_eq!(
        pod.ip_address.as_deref(),
        Some("10.244.0.37/24"),
        "the pod address, not the NATed one"
    );
    assert_eq!(pod.info_source.as_deref(), Some("domain, guest-agent"));
    assert_eq!(pod.queue_count, Some(4));
    let red = &status[1];
    assert_eq!(red.ip_addresses, ["192.168.1.10/24", "fd00::10/64"]);
    assert_eq!(red.ip_address.as_deref(), Some("192.168.1.10/24"));
    assert_eq!(
        red.info_source.as_deref(),
        Some("domain, guest-agent, multus-status")
    );
    let fast = &status[2];
    assert_eq!(fast.info_source.as_deref(), Some("domain, multus-status"));
    assert!(fast.interface_name.is_none() && fast.ip_addresses.is_empty());
    let docker = &status[3];
    assert!(docker.name.is_none());
    assert_eq!(docker.info_source.as_deref(), Some("guest-agent"));
    assert_eq!(docker.interface_name.as_deref(), Some("docker0"));

    // Without an agent only the domain's view remains.
    let bare = interface_status(&plans, &known, None);
    assert_eq!(bare.len(), 3);
    assert_eq!(
        bare[1].info_source.as_deref(),
        Some("domain, multus-status")
    );

    for (reply, path) in [
        ("[]x", "<root>"),
        (r#"{"error": {}}"#, "<root>"),
        (
            r#"{"return": [{"hardware-address": "02:00:00:00:00:01"}]}"#,
            "return[0].name",
        ),
        (
            r#"[{"name": "e", "hardware-address": "zz"}]"#,
            "return[0].hardware-address",
        ),
        (
            r#"[{"name": "e", "ip-addresses": [{"ip-address": "10.0.0.1", "prefix": 33}]}]"#,
            "return[0].ip-addresses[0].prefix",
        ),
    ] {
        assert_eq!(
            parse_guest_agent_interfaces(reply).unwrap_err().path,
            path,
            "{reply}"
        );
    }
    assert_eq!(
        "02:00:00:00:00:01".parse::<MacAddr>().unwrap(),
        agent[1].mac.unwrap()
    );
}

const MIGRATION_NAD: &str = r#"{
  "cniVersion": "0.3.1", "name": "migration-bridge", "type": "macvlan",
  "master": "eth1", "mode": "bridge",
  "ipam": {"type": "whereabouts", "range": "10.200.5.0/24"}
}"#;

#[test]
fn the_migration_network_address_is_the_hosts_address_in_the_nad_range() {
    let nad = CniConfig::parse(MIGRATION_NAD).unwrap();
    let host = |a: &str| HostAddress {
        link: 2,
        address: a.parse().unwrap(),
    };
    let addrs = [
        host("127.0.0.1/8"),
        host("192.168.0.4/24"),
        host("10.200.5.17/24"),
    ];
    assert_eq!(
        migration_address(&nad, &addrs).unwrap().to_string(),
        "10.200.5.17"
    );
    assert!(matches!(
        migration_address(&nad, &addrs[..2]),
        Err(MigrationNetworkError::NotAttached { .. })
    ));
    let none = CniConfig::parse(r#"{"cniVersion": "0.3.1", "type": "macvlan", "master": "eth1"}"#)
        .unwrap();
    assert!(matches!(
        migration_address(&none, &addrs),
        Err(MigrationNetworkError::NoRange)
    ));
    let bad = CniConfig::parse(
        r#"{"cniVersion": "0.3.1", "type": "macvlan", "ipam": {"type": "whereabouts", "range": "10.200.5/24x"}}"#,
    )
    .unwrap();
    assert!(matches!(
        migration_address(&bad, &addrs),
        Err(MigrationNetworkError::BadRange { key, .. }) if key == "ipam.range"
    ));
    let host_local = CniConfig::parse(
        r#"{"cniVersion": "0.3.1", "type": "bridge", "bridge": "br1",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "fd00:5::/64"}]]}}"#,
    )
    .unwrap();
    let v6 = [host("fd00:5::9/64")];
    assert_eq!(
        migration_address(&host_local, &v6).unwrap().to_string(),
        "fd00:5::9"
    );

    // For real: the address of a veth link in a namespace, by netlink.
    if !common::is_root() {
        eprintln!("SKIP (namespace part): needs root");
        return;
    }
    let name = format!("vk-mig-{}", std::process::id() % 100_000);
    let _guard = common::NetnsGuard(vec![name.clone()]);
    assert!(common::sh(&format!(
        "ip netns add {name} && ip -n {name} link add migration0 type veth peer name m0peer && \
         ip -n {name} addr add 10.200.5.23/24 dev migration0 && ip -n {name} link set migration0 up"
    )));
    let ns = virtkit_net::netns::named(&name);
    let at = virtkit_net::migration_net::bind_address(&nad, Some(&ns)).unwrap();
    assert_eq!(at.to_string(), "10.200.5.23");
    // The transport can bind there (inside the namespace).
    let listener =
        virtkit_net::netns::run_in(Some(&ns), move || std::net::TcpListener::bind((at, 0)))
            .unwrap();
    assert_eq!(listener.local_addr().unwrap().ip(), at);
}
