//! Replays the networking fuzz corpora (DHCP messages, NAD configs) and
//! any committed crashes, and checks that the seeds reach the deep paths:
//! the DHCP seeds get answers, the NAD seeds are accepted configs.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use virtkit_core::spec::network::CniConfig;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn dhcp_message_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "dhcp_message",
        6,
        virtkit_net::fuzzing::dhcp_message,
    );
}

#[test]
fn nad_config_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "nad_config",
        4,
        virtkit_net::fuzzing::nad_config,
    );
}

#[test]
fn the_seeds_reach_the_deep_paths() {
    use virtkit_net::dhcp4::answer;
    for (name, bytes) in corpus("dhcp_message") {
        let packet = &bytes[1..];
        if name.starts_with("v4-") {
            let config = virtkit_net::Dhcp4Config {
                server: "10.0.2.1".parse().unwrap(),
                interface: "k6t".into(),
                leases: vec![virtkit_net::Lease4 {
                    mac: "02:00:00:00:00:42".parse().unwrap(),
                    address: "10.0.2.2".parse().unwrap(),
                    prefix_len: 24,
                    gateway: None,
                    dns: vec![],
                    search: vec![],
                    mtu: None,
                    routes: vec![],
                    hostname: None,
                    lease_secs: 60,
                }],
                boot: None,
            };
            let reply = answer(&config, packet).unwrap();
            assert_eq!(reply.is_some(), name != "v4-unknown-client", "{name}");
        } else if name.starts_with("v6-") {
            let config = virtkit_net::Dhcp6Config {
                interface: "k6t".into(),
                server_mac: "02:00:00:00:00:01".parse().unwrap(),
                client_mac: Some("02:00:00:00:00:42".parse().unwrap()),
                lease: virtkit_net::Lease6 {
                    address: "fd10:0:2::2".parse().unwrap(),
                    dns: vec![],
                    search: vec![],
                    lifetime_secs: 60,
                },
            };
            let reply = virtkit_net::dhcp6::answer6(&config, packet).unwrap();
            assert!(reply.is_some(), "{name}");
        }
    }
    for (name, bytes) in corpus("nad_config") {
        let cfg = CniConfig::parse(std::str::from_utf8(&bytes).unwrap());
        assert!(cfg.is_ok(), "{name}: {cfg:?}");
    }
}
