//! The Linux bridge binding: the guest's tap joins an existing host bridge
//! named by a NetworkAttachmentDefinition (`cnv-bridge` / `bridge` CNI
//! config). With `vlan` the bridge gets `vlan_filtering` and the port the
//! VLAN as its untagged PVID; `vlanTrunk` adds tagged VLANs;
//! `preserveDefaultVlan: false` takes VLAN 1 off the port. With
//! `macspoofchk` an nftables `bridge` table lets only the guest's own MAC
//! out of the port. Teardown removes the tap and the table; the bridge,
//! which the host owns, stays (it is created, as the CNI plugin does, when
//! missing, and then left for the next VM).

use std::path::{Path, PathBuf};

use serde_json::json;
use virtkit_core::spec::network::BridgeConfig;

use crate::mac::MacAddr;

/// What the binding is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeBindingConfig {
    /// 1–10 characters `[a-z0-9]`; the tap is `tap-<tag>`, the nftables
    /// table `virtkit_br_<tag>`.
    pub tag: String,
    /// The host bridge (`cni0` when the config names none).
    pub bridge: String,
    /// The guest NIC's MAC.
    pub guest_mac: MacAddr,
    /// Access VLAN (1–4094): untagged PVID of the port.
    pub vlan: Option<u16>,
    /// Tagged VLAN ranges of the port (inclusive).
    pub trunk: Vec<(u16, u16)>,
    /// Keep VLAN 1 on the port (the CNI default: true).
    pub preserve_default_vlan: bool,
    /// Only the guest's MAC may leave the port.
    pub mac_spoof_check: bool,
    /// MTU of the tap.
    pub mtu: Option<u32>,
    /// Create the tap multi-queue.
    pub multi_queue: bool,
}

/// Errors of the bridge binding.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A configuration that cannot be built; names the CNI key.
    #[error("bridge binding: {0}")]
    Config(String),
    /// A netlink, tap or namespace operation.
    #[error("bridge binding: {step}: {source}")]
    Host {
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// nftables refused the rules.
    #[error("bridge binding: nftables: {0}")]
    Nftables(String),
    /// The host cannot do what the config asks.
    #[error("bridge binding: {0}")]
    Unsupported(String),
}

fn vid(key: &str, v: Option<i64>) -> Result<Option<u16>, BridgeError> {
    match v {
        None => Ok(None),
        Some(v) if (1..=4094).contains(&v) => Ok(Some(v as u16)),
        Some(v) => Err(BridgeError::Config(format!(
            "{key}: VLAN {v} is not 1–4094"
        ))),
    }
}

impl BridgeBindingConfig {
    /// From a NetworkAttachmentDefinition's bridge config.
    pub fn from_nad(
        tag: &str,
        nad: &BridgeConfig,
        guest_mac: MacAddr,
    ) -> Result<Self, BridgeError> {
        let mut trunk = Vec::new();
        for (i, t) in nad.vlan_trunk.iter().flatten().enumerate() {
            let key = format!("vlanTrunk[{i}]");
            match (
                vid(&format!("{key}.id"), t.id)?,
                vid(&format!("{key}.minID"), t.min_id)?,
                vid(&format!("{key}.maxID"), t.max_id)?,
            ) {
                (Some(id), None, None) => trunk.push((id, id)),
                (None, Some(lo), Some(hi)) if lo <= hi => trunk.push((lo, hi)),
                _ => {
                    return Err(BridgeError::Config(format!(
                        "{key}: give either id or minID ≤ maxID"
                    )))
                }
            }
        }
        let mtu = match nad.mtu {
            None => None,
            Some(m) if (68..=65_535).contains(&m) => Some(m as u32),
            Some(m) => return Err(BridgeError::Config(format!("mtu: {m} is not 68–65535"))),
        };
        let cfg = BridgeBindingConfig {
            tag: tag.to_string(),
            bridge: nad.bridge.clone().unwrap_or_else(|| "cni0".into()),
            guest_mac,
            vlan: vid("vlan", nad.vlan)?,
            trunk,
            preserve_default_vlan: nad.preserve_default_vlan.unwrap_or(true),
            mac_spoof_check: nad.macspoofchk.unwrap_or(false),
            mtu,
            multi_queue: false,
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), BridgeError> {
        let tag_ok = (1..=10).contains(&self.tag.len())
            && self
                .tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !tag_ok {
            return Err(BridgeError::Config(format!(
                "tag {:?}: 1–10 characters of [a-z0-9]",
                self.tag
            )));
        }
        if self.bridge.is_empty() || self.bridge.len() > 15 {
            return Err(BridgeError::Config(format!(
                "bridge: {:?} is not an interface name",
                self.bridge
            )));
        }
        Ok(())
    }

    fn filtering(&self) -> bool {
        self.vlan.is_some() || !self.trunk.is_empty() || !self.preserve_default_vlan
    }

    /// The tap's name.
    pub fn tap(&self) -> String {
        format!("tap-{}", self.tag)
    }

    fn table(&self) -> String {
        format!("virtkit_br_{}", self.tag)
    }
}

/// An attached guest port; removed by [`BridgeBinding::teardown`] or on
/// drop.
#[derive(Debug)]
pub struct BridgeBinding {
    netns: Option<PathBuf>,
    cfg: BridgeBindingConfig,
    live: bool,
}

fn host(step: &'static str) -> impl FnOnce(std::io::Error) -> BridgeError {
    move |source| BridgeError::Host { step, source }
}

fn spoof_rules(cfg: &BridgeBindingConfig) -> serde_json::Value {
    let t = cfg.table();
    json!({"nftables": [
        {"add": {"table": {"family": "bridge", "name": t}}},
        {"add": {"chain": {"family": "bridge", "table": t, "name": "prerouting",
            "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}}},
        {"add": {"rule": {"family": "bridge", "table": t, "chain": "prerouting", "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": cfg.tap()}},
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ether", "field": "saddr"}},
                "right": cfg.guest_mac.to_string()}},
            {"drop": null}
        ]}}}
    ]})
}

fn nft(netns: Option<&Path>, doc: serde_json::Value) -> Result<(), BridgeError> {
    crate::nft::apply(netns, doc).map_err(BridgeError::Nftables)
}

impl BridgeBinding {
    /// Attach a new tap for the guest to the bridge, in the network
    /// namespace at `netns` (`None`: this process's). Leftovers of an
    /// earlier binding with the same tag are removed first; on any error
    /// what was built is removed again.
    pub fn attach(netns: Option<PathBuf>, cfg: BridgeBindingConfig) -> Result<Self, BridgeError> {
        cfg.check()?;
        let b = BridgeBinding {
            netns,
            cfg,
            live: true,
        };
        b.remove_parts()?;
        b.build()?;
        Ok(b)
    }

    fn build(&self) -> Result<(), BridgeError> {
        let ns = self.netns.as_deref();
        let cfg = self.cfg.clone();
        let tap = cfg.tap();
        let mq = cfg.multi_queue;
        crate::netns::run_in(ns, move || crate::tap::create_persistent(&tap, mq))
            .map_err(host("creating the tap"))?;
        if cfg.filtering() {
            self.enable_vlan_filtering()?;
        }
        crate::link::run(ns, move |h| async move {
            use rtnetlink::packet_route::link::BridgeVlanInfoFlags as F;
            use rtnetlink::{LinkBridge, LinkBridgeVlan, LinkUnspec};
            let br = match crate::link::index(&h, &cfg.bridge).await? {
                Some(i) => i,
                None => {
                    h.link()
                        .add(LinkBridge::new(&cfg.bridge).build())
                        .execute()
                        .await?;
                    crate::link::index(&h, &cfg.bridge)
                        .await?
                        .ok_or(rtnetlink::Error::RequestFailed)?
                }
            };
            let tap = crate::link::index(&h, &cfg.tap())
                .await?
                .ok_or(rtnetlink::Error::RequestFailed)?;
            let mut port = LinkUnspec::new_with_index(tap).controller(br).up();
            if let Some(mtu) = cfg.mtu {
                port = port.mtu(mtu);
            }
            h.link().set(port.build()).execute().await?;
            if !cfg.preserve_default_vlan {
                let one = LinkBridgeVlan::new(tap).vlan(1, F::empty());
                h.link().del_with_message(one.build()).execute().await?;
            }
            if let Some(v) = cfg.vlan {
                let access = LinkBridgeVlan::new(tap).vlan(v, F::Pvid | F::Untagged);
                h.link().set(access.build()).execute().await?;
            }
            for (lo, hi) in &cfg.trunk {
                let mut m = LinkBridgeVlan::new(tap);
                m = if lo == hi {
                    m.vlan(*lo, F::empty())
                } else {
                    m.vlan_range_start(*lo, F::empty())
                        .vlan_range_end(*hi, F::empty())
                };
                h.link().set(m.build()).execute().await?;
            }
            Ok(())
        })
        .map_err(host("attaching the tap to the bridge"))?;
        if self.cfg.mac_spoof_check {
            nft(ns, spoof_rules(&self.cfg))?;
        }
        Ok(())
    }

    /// Turn on `vlan_filtering` on the bridge (creating the bridge when
    /// missing). A kernel built without it says EOPNOTSUPP: a clear error
    /// of its own.
    fn enable_vlan_filtering(&self) -> Result<(), BridgeError> {
        let bridge = self.cfg.bridge.clone();
        let unsupported = crate::link::run(self.netns.as_deref(), move |h| async move {
            use rtnetlink::LinkBridge;
            let br = match crate::link::index(&h, &bridge).await? {
                Some(i) => i,
                None => {
                    h.link()
                        .add(LinkBridge::new(&bridge).build())
                        .execute()
                        .await?;
                    crate::link::index(&h, &bridge)
                        .await?
                        .ok_or(rtnetlink::Error::RequestFailed)?
                }
            };
            let on = LinkBridge::new(&bridge).index(br).vlan_filtering(true);
            match h.link().set_port(on.build()).execute().await {
                Ok(()) => Ok(false),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EOPNOTSUPP => {
                    Ok(true)
                }
                Err(e) => Err(e),
            }
        })
        .map_err(host("turning on VLAN filtering"))?;
        if unsupported {
            return Err(BridgeError::Unsupported(format!(
                "vlan / vlanTrunk / preserveDefaultVlan: bridge {} cannot filter VLANs: this kernel \
                 has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)",
                self.cfg.bridge
            )));
        }
        Ok(())
    }

    fn remove_parts(&self) -> Result<(), BridgeError> {
        let ns = self.netns.as_deref();
        crate::nft::delete_table(ns, "bridge", &self.cfg.table()).map_err(BridgeError::Nftables)?;
        let tap = self.cfg.tap();
        crate::link::run(ns, move |h| async move {
            if let Some(i) = crate::link::index(&h, &tap).await? {
                h.link().del(i).execute().await?;
            }
            Ok(())
        })
        .map_err(host("removing the tap"))
    }

    /// The tap the VMM attaches to.
    pub fn tap(&self) -> String {
        self.cfg.tap()
    }

    /// Remove the tap and the MAC-spoof table.
    pub fn teardown(mut self) -> Result<(), BridgeError> {
        self.live = false;
        self.remove_parts()
    }
}

impl Drop for BridgeBinding {
    fn drop(&mut self) {
        if self.live {
            if let Err(e) = self.remove_parts() {
                log::warn!("bridge binding teardown of {}: {e}", self.cfg.tap());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn nad(json: &str) -> BridgeConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn from_the_nad_config_with_key_names_in_errors() {
        let mac = MacAddr([2, 0, 0, 0, 0, 9]);
        let c = BridgeBindingConfig::from_nad(
            "vm1",
            &nad(r#"{"bridge":"br1","vlan":100,"macspoofchk":true,"preserveDefaultVlan":false,"vlanTrunk":[{"id":5},{"minID":10,"maxID":20}]}"#),
            mac,
        )
        .unwrap();
        assert_eq!(
            (c.bridge.as_str(), c.vlan, c.trunk.clone()),
            ("br1", Some(100), vec![(5, 5), (10, 20)])
        );
        assert!(c.mac_spoof_check && !c.preserve_default_vlan && c.filtering());
        let d = BridgeBindingConfig::from_nad("vm1", &nad("{}"), mac).unwrap();
        assert_eq!(d.bridge, "cni0");
        assert!(d.preserve_default_vlan && !d.filtering());
        let e = BridgeBindingConfig::from_nad("vm1", &nad(r#"{"vlan":4095}"#), mac).unwrap_err();
        assert!(e.to_string().contains("vlan: VLAN 4095"), "{e}");
        let e = BridgeBindingConfig::from_nad(
            "vm1",
            &nad(r#"{"vlanTrunk":[{"minID":9,"maxID":3}]}"#),
            mac,
        )
        .unwrap_err();
        assert!(e.to_string().contains("vlanTrunk[0]"), "{e}");
        let parsed: nftables::schema::Nftables<'_> =
            serde_json::from_value(spoof_rules(&c)).unwrap();
        assert_eq!(parsed.objects.len(), 3);
    }
}
