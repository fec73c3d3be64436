//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the
//! corpus replay test (`tests/fuzz_corpus.rs`), so both exercise the same
//! code.

use std::net::{Ipv4Addr, Ipv6Addr};

use dhcproto::{Decodable, Decoder};
use virtkit_core::spec::network::CniConfig;
use virtkit_core::validate::{cni_config, Report};

use crate::dhcp4::{answer, BootOptions, Dhcp4Config, Lease4};
use crate::dhcp6::{answer6, Dhcp6Config, Lease6};
use crate::mac::MacAddr;

const GUEST: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x42]);
const LEASE: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

fn dhcp4_config() -> Dhcp4Config {
    Dhcp4Config {
        server: Ipv4Addr::new(10, 0, 2, 1),
        interface: "k6t-fuzz".into(),
        leases: vec![Lease4 {
            mac: GUEST,
            address: LEASE,
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(10, 0, 2, 1)),
            dns: vec![Ipv4Addr::new(10, 96, 0, 10)],
            search: vec!["cluster.local".into()],
            mtu: Some(1450),
            routes: vec![],
            hostname: Some("vm".into()),
            lease_secs: 3600,
        }],
        boot: Some(BootOptions {
            next_server: Ipv4Addr::new(10, 0, 2, 1),
            bios_file: Some("pxelinux.0".into()),
            uefi_file: Some("bootx64.efi".into()),
            ipxe_file: Some("boot.ipxe".into()),
        }),
    }
}

/// One client message to our DHCP servers: `data[0]` even is DHCPv4,
/// odd DHCPv6; the rest is the packet. Invariants: no panic; every reply
/// decodes; a DHCPv4 reply goes to the one known client and offers only
/// its lease address.
pub fn dhcp_message(data: &[u8]) {
    let Some((&which, packet)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        if let Ok(Some(reply)) = answer(&dhcp4_config(), packet) {
            let decoded = dhcproto::v4::Message::decode(&mut Decoder::new(&reply.bytes));
            assert!(decoded.is_ok(), "our DHCPv4 reply decodes");
            let Ok(m) = decoded else { return };
            assert_eq!(
                m.chaddr().get(..6),
                Some(&GUEST.0[..]),
                "reply to the known client only"
            );
            assert!(
                m.yiaddr() == LEASE || m.yiaddr().is_unspecified(),
                "only the lease address is offered"
            );
        }
    } else {
        let config = Dhcp6Config {
            interface: "k6t-fuzz".into(),
            server_mac: MacAddr([0x02, 0, 0, 0, 0, 0x01]),
            client_mac: Some(GUEST),
            lease: Lease6 {
                address: Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 2),
                dns: vec![Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 10)],
                search: vec!["cluster.local".into()],
                lifetime_secs: 3600,
            },
        };
        if let Ok(Some((reply, _))) = answer6(&config, packet) {
            let decoded = dhcproto::v6::Message::decode(&mut Decoder::new(&reply));
            assert!(decoded.is_ok(), "our DHCPv6 reply decodes");
        }
    }
}

/// A NetworkAttachmentDefinition's `spec.config` JSON, parsed and
/// validated as `virtkit-net` reads it. Invariants: no panic; every
/// error names a path.
pub fn nad_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match CniConfig::parse(text) {
        Err(e) => assert!(!e.path.is_empty(), "a parse error names its path"),
        Ok(cfg) => {
            let mut r = Report::default();
            cni_config(&cfg, &mut r);
            assert!(r.violations.iter().all(|v| !v.path.is_empty()));
            // The bridge binding reads its part of an accepted config.
            for plugin in &cfg.plugins {
                if let virtkit_core::spec::network::CniPlugin::Bridge(b) = plugin {
                    let _ = crate::BridgeBindingConfig::from_nad("fuzz", b, GUEST);
                }
            }
            let _ = crate::migration_net::ipam_ranges(&cfg);
        }
    }
}
