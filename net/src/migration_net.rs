//! The dedicated live-migration network (seed 002, NET-18): the address
//! the migration transport binds on, found as this host's address inside
//! the IPAM range of the NetworkAttachmentDefinition that
//! `liveMigrationConfig.network` names.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use virtkit_core::spec::network::{CniConfig, CniPlugin};

/// One address configured on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddress {
    /// Interface index.
    pub link: u32,
    /// The address and its prefix.
    pub address: IpNet,
}

/// Why no migration address was found.
#[derive(Debug, thiserror::Error)]
pub enum MigrationNetworkError {
    /// The NAD config names no address range to look in.
    #[error("the migration network's config has no IPAM range (ipam.range, ipam.subnet, ipam.ranges or ipam.addresses)")]
    NoRange,
    /// An IPAM range is not a CIDR.
    #[error("the migration network's {key} {value:?} is not a CIDR")]
    BadRange {
        /// The JSON key.
        key: String,
        /// Its value.
        value: String,
    },
    /// This host has no address on the network.
    #[error("no address of this host lies in the migration network's range {ranges}; is the network attached here?")]
    NotAttached {
        /// The ranges searched, comma-separated.
        ranges: String,
    },
    /// The host's addresses could not be read.
    #[error("reading this host's addresses: {0}")]
    Host(#[from] std::io::Error),
}

/// The IPAM ranges a NAD config declares: whereabouts `range`,
/// host-local `subnet` and `ranges[][].subnet`, static
/// `addresses[].address`.
pub fn ipam_ranges(config: &CniConfig) -> Result<Vec<IpNet>, MigrationNetworkError> {
    let mut out = Vec::new();
    for plugin in &config.plugins {
        let ipam = match plugin {
            CniPlugin::Macvlan(m) => m.ipam.as_ref(),
            CniPlugin::Bridge(b) => b.ipam.as_ref(),
            CniPlugin::Sriov(s) => s.ipam.as_ref(),
            CniPlugin::Tuning(_) => None,
        };
        let Some(ipam) = ipam else { continue };
        let mut push = |key: String, v: &serde_json::Value| -> Result<(), MigrationNetworkError> {
            let text = v.as_str().unwrap_or_default();
            // whereabouts also takes "first-last/prefix"; the prefix is
            // what locates the network.
            let cidr = match text.split_once('-') {
                Some((_, last)) => last,
                None => text,
            };
            let net: IpNet = cidr.parse().map_err(|_| MigrationNetworkError::BadRange {
                key: key.clone(),
                value: text.to_string(),
            })?;
            out.push(net.trunc());
            Ok(())
        };
        for key in ["range", "subnet"] {
            if let Some(v) = ipam.get(key) {
                push(format!("ipam.{key}"), v)?;
            }
        }
        for (i, set) in ipam
            .get("ranges")
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
            .enumerate()
        {
            for (j, r) in set.as_array().into_iter().flatten().enumerate() {
                if let Some(v) = r.get("subnet") {
                    push(format!("ipam.ranges[{i}][{j}].subnet"), v)?;
                }
            }
        }
        for (i, a) in ipam
            .get("addresses")
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(v) = a.get("address") {
                push(format!("ipam.addresses[{i}].address"), v)?;
            }
        }
    }
    Ok(out)
}

/// The first of `host` addresses inside the NAD's IPAM ranges.
pub fn migration_address(
    config: &CniConfig,
    host: &[HostAddress],
) -> Result<IpAddr, MigrationNetworkError> {
    let ranges = ipam_ranges(config)?;
    if ranges.is_empty() {
        return Err(MigrationNetworkError::NoRange);
    }
    host.iter()
        .map(|h| h.address.addr())
        .find(|a| ranges.iter().any(|r| r.contains(a)))
        .ok_or_else(|| MigrationNetworkError::NotAttached {
            ranges: ranges
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Every address of the network namespace at `netns` (this process's
/// for `None`), by netlink.
pub fn host_addresses(netns: Option<&Path>) -> std::io::Result<Vec<HostAddress>> {
    use futures_util::TryStreamExt;
    use rtnetlink::packet_route::address::AddressAttribute;
    crate::link::run(netns, |h| async move {
        let mut out = Vec::new();
        let mut stream = h.address().get().execute();
        while let Some(msg) = stream.try_next().await? {
            let prefix = msg.header.prefix_len;
            for attr in &msg.attributes {
                if let AddressAttribute::Address(ip) = attr {
                    if let Ok(address) = IpNet::new(*ip, prefix) {
                        out.push(HostAddress {
                            link: msg.header.index,
                            address,
                        });
                    }
                }
            }
        }
        Ok(out)
    })
}

/// The address to bind the migration transport on: this host's address
/// (in `netns`, or this process's namespace) on the network `config`
/// describes.
pub fn bind_address(
    config: &CniConfig,
    netns: Option<&Path>,
) -> Result<IpAddr, MigrationNetworkError> {
    migration_address(config, &host_addresses(netns)?)
}
