//! From a VMI spec's `interfaces[]` and `networks[]` to the NICs a VM
//! gets: binding, MAC, queue pairs, boot order and forwarded ports, each
//! error naming its field path. The plan feeds the host side
//! ([`NicPlan::masquerade_config`], [`crate::BridgeBindingConfig`]) and
//! the guest side ([`NicPlan::net_config`] for virtio-net).

use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};
use virtkit_core::spec::vmi::{Interface, InterfaceModel, InterfaceState, Network, VmiSpec};
use virtkit_devices::virtio::net::{NetConfig, MAX_QUEUE_PAIRS};

use crate::mac::MacAddr;
use crate::masquerade::{MasqueradeConfig, PortForward, Protocol};

/// How an interface reaches the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicBinding {
    /// NAT behind the pod address (`masquerade` on the `pod` network).
    Masquerade {
        /// `vmNetworkCIDR`, if set.
        vm_cidr: Option<String>,
        /// `vmIPv6NetworkCIDR`, if set.
        vm_cidr6: Option<String>,
    },
    /// A tap on a Linux bridge (`bridge` on a `multus` network).
    Bridge {
        /// The NetworkAttachmentDefinition (`multus.networkName`).
        network: String,
    },
    /// A VF passed through (`sriov` on a `multus` network); no virtio-net.
    Sriov {
        /// The SriovNetwork's NetworkAttachmentDefinition.
        network: String,
    },
}

impl NicBinding {
    /// The binding's name in the spec.
    pub fn kind(&self) -> &'static str {
        match self {
            NicBinding::Masquerade { .. } => "masquerade",
            NicBinding::Bridge { .. } => "bridge",
            NicBinding::Sriov { .. } => "sriov",
        }
    }

    /// Whether the interface is on a Multus (secondary) network.
    pub fn is_multus(&self) -> bool {
        !matches!(self, NicBinding::Masquerade { .. })
    }
}

/// One NIC of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicPlan {
    /// The interface (and network) name.
    pub name: String,
    /// Its field path, e.g. `spec.domain.devices.interfaces[1]`.
    pub path: String,
    /// Binding and network.
    pub binding: NicBinding,
    /// The guest MAC: `macAddress`, or generated when absent.
    pub mac: MacAddr,
    /// Whether [`Self::mac`] was generated (not from the spec).
    pub mac_generated: bool,
    /// virtio-net queue pairs: the vCPU count with
    /// `networkInterfaceMultiqueue` (at most [`MAX_QUEUE_PAIRS`]), else 1.
    pub queue_pairs: u16,
    /// Position in the boot order; a NIC with one boots by PXE.
    pub boot_order: Option<u32>,
    /// Forwarded ports (masquerade); empty forwards all.
    pub ports: Vec<PortForward>,
}

/// Why an interface cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NicError {
    /// Something about one field.
    #[error("{path}: {message}")]
    Field {
        /// Field path.
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn field(path: impl Into<String>, message: impl Into<String>) -> NicError {
    NicError::Field {
        path: path.into(),
        message: message.into(),
    }
}

const INTERFACES: &str = "spec.domain.devices.interfaces";

/// Plan every interface of `spec` that is not `state: absent`. With no
/// interfaces and no networks, KubeVirt's default applies (unless
/// `autoattachPodInterface: false`): one `masquerade` interface `default`
/// on the pod network.
pub fn plan_nics(spec: &VmiSpec) -> Result<Vec<NicPlan>, NicError> {
    let devices = &spec.domain.devices;
    let vcpus = spec
        .domain
        .cpu
        .as_ref()
        .map_or(1, |c| c.vcpu_count())
        .clamp(1, u64::from(MAX_QUEUE_PAIRS)) as u16;
    let queue_pairs = if devices.network_interface_multiqueue == Some(true) {
        vcpus
    } else {
        1
    };
    if devices.interfaces.is_empty()
        && spec.networks.is_empty()
        && devices.autoattach_pod_interface != Some(false)
    {
        return Ok(vec![NicPlan {
            name: "default".into(),
            path: format!("{INTERFACES}[0]"),
            binding: NicBinding::Masquerade {
                vm_cidr: None,
                vm_cidr6: None,
            },
            mac: generated_mac(),
            mac_generated: true,
            queue_pairs,
            boot_order: None,
            ports: Vec::new(),
        }]);
    }
    let mut plans = Vec::new();
    for (i, iface) in devices.interfaces.iter().enumerate() {
        if iface.state == Some(InterfaceState::Absent) {
            continue;
        }
        let path = format!("{INTERFACES}[{i}]");
        let network = spec
            .networks
            .iter()
            .find(|n| n.name == iface.name)
            .ok_or_else(|| {
                field(
                    format!("{path}.name"),
                    format!("no spec.networks entry is named {:?}", iface.name),
                )
            })?;
        plans.push(plan_one(iface, network, &path, queue_pairs)?);
    }
    Ok(plans)
}

fn plan_one(
    iface: &Interface,
    network: &Network,
    path: &str,
    queue_pairs: u16,
) -> Result<NicPlan, NicError> {
    let multus = network.multus.as_ref().map(|m| m.network_name.clone());
    let binding = match (iface.bindings().as_slice(), &network.pod, multus) {
        (["masquerade"], Some(pod), _) => NicBinding::Masquerade {
            vm_cidr: pod.vm_network_cidr.clone(),
            vm_cidr6: pod.vm_ipv6_network_cidr.clone(),
        },
        (["bridge"], _, Some(network)) => NicBinding::Bridge { network },
        (["sriov"], _, Some(network)) => NicBinding::Sriov { network },
        ([one], _, _) => {
            return Err(field(
                path,
                format!("binding {one} on network {:?} is not supported here (masquerade needs the pod network, bridge and sriov a multus one)", network.name),
            ))
        }
        (list, _, _) => {
            return Err(field(
                path,
                format!("exactly one binding is needed, found {}", list.len()),
            ))
        }
    };
    let virtio = matches!(iface.model, None | Some(InterfaceModel::Virtio));
    if !virtio && !matches!(binding, NicBinding::Sriov { .. }) {
        return Err(field(
            format!("{path}.model"),
            "only the virtio model is emulated",
        ));
    }
    let (mac, mac_generated) = match &iface.mac_address {
        Some(text) => {
            let mac: MacAddr = text.parse().map_err(|e| {
                field(
                    format!("{path}.macAddress"),
                    format!("{text:?} is not a MAC address: {e}"),
                )
            })?;
            if mac.is_multicast() {
                return Err(field(
                    format!("{path}.macAddress"),
                    format!("{text} is a multicast address"),
                ));
            }
            (mac, false)
        }
        None => (generated_mac(), true),
    };
    let boot_order = match iface.boot_order {
        None => None,
        Some(n) => Some(
            u32::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| field(format!("{path}.bootOrder"), format!("{n} is not ≥ 1")))?,
        ),
    };
    let mut ports = Vec::new();
    for (j, p) in iface.ports.iter().enumerate() {
        let at = format!("{path}.ports[{j}]");
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => {
                return Err(field(
                    format!("{at}.protocol"),
                    format!("{other:?} is not TCP or UDP"),
                ))
            }
        };
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| field(format!("{at}.port"), format!("{} is not 1–65535", p.port)))?;
        ports.push(PortForward { protocol, port });
    }
    Ok(NicPlan {
        name: iface.name.clone(),
        path: path.to_string(),
        binding,
        mac,
        mac_generated,
        queue_pairs,
        boot_order,
        ports,
    })
}

/// A locally administered unicast MAC for an interface without one (a
/// VMI that no [`crate::MacPool`] handled), random like libvirt's.
fn generated_mac() -> MacAddr {
    let mut b = [0u8; 5];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // No entropy source: fall back on the clock and the process id.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 24;
        b.copy_from_slice(&t.to_le_bytes()[..5]);
    }
    MacAddr([0x02, b[0], b[1], b[2], b[3], b[4]])
}

impl NicPlan {
    /// Whether the VMM emulates this NIC (virtio-net); SR-IOV NICs are
    /// host functions passed through instead.
    pub fn is_emulated(&self) -> bool {
        !matches!(self.binding, NicBinding::Sriov { .. })
    }

    /// The virtio-net device configuration.
    pub fn net_config(&self) -> NetConfig {
        NetConfig::new(self.mac.0)
    }

    /// The masquerade binding for this interface, named by `tag`: the
    /// spec's CIDRs (or the defaults), ports, MAC and multiqueue.
    pub fn masquerade_config(&self, tag: &str) -> Result<MasqueradeConfig, NicError> {
        let NicBinding::Masquerade { vm_cidr, vm_cidr6 } = &self.binding else {
            return Err(field(
                &self.path,
                format!(
                    "a {} interface has no masquerade binding",
                    self.binding.kind()
                ),
            ));
        };
        let mut cfg = MasqueradeConfig::new(tag, self.mac);
        let network = format!("spec.networks[name={}].pod", self.name);
        if let Some(text) = vm_cidr {
            let net: Ipv4Net = text
                .parse()
                .map_err(|e| field(format!("{network}.vmNetworkCIDR"), format!("{text:?}: {e}")))?;
            if net.prefix_len() > 30 || net.network() == Ipv4Addr::UNSPECIFIED {
                return Err(field(
                    format!("{network}.vmNetworkCIDR"),
                    format!("{text} has no room for a gateway and a guest"),
                ));
            }
            cfg.vm_cidr = net.trunc();
        }
        if let Some(text) = vm_cidr6 {
            let net: Ipv6Net = text.parse().map_err(|e| {
                field(
                    format!("{network}.vmIPv6NetworkCIDR"),
                    format!("{text:?}: {e}"),
                )
            })?;
            cfg.vm_cidr6 = Some(net.trunc());
        }
        cfg.ports = self.ports.clone();
        cfg.multi_queue = self.queue_pairs > 1;
        Ok(cfg)
    }
}
