//! Network objects: NetworkAttachmentDefinition (with its CNI config JSON
//! parsed into typed plugin configs), SriovNetworkNodePolicy, SriovNetwork.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ObjectMeta;

/// `k8s.cni.cncf.io/v1`.
pub const NAD_API_VERSION: &str = "k8s.cni.cncf.io/v1";
/// `sriovnetwork.openshift.io/v1`.
pub const SRIOV_API_VERSION: &str = "sriovnetwork.openshift.io/v1";
/// The NAD annotation that restricts VMs to hosts with a resource.
pub const RESOURCE_NAME_ANNOTATION: &str = "k8s.v1.cni.cncf.io/resourceName";

/// `kind: NetworkAttachmentDefinition`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NetworkAttachmentDefinition {
    /// `k8s.cni.cncf.io/v1`.
    pub api_version: String,
    /// `NetworkAttachmentDefinition`.
    pub kind: String,
    /// Name and the `resourceName` annotation.
    pub metadata: ObjectMeta,
    /// The CNI config.
    pub spec: NadSpec,
}

/// NAD `spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NadSpec {
    /// CNI configuration as a JSON string; see [`CniConfig::parse`].
    pub config: String,
}

impl NetworkAttachmentDefinition {
    /// Parse `spec.config` into typed plugin configs.
    pub fn cni_config(&self) -> Result<CniConfig, CniConfigError> {
        CniConfig::parse(&self.spec.config)
    }
}

/// Why a CNI config JSON string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI config: {path}: {message}")]
pub struct CniConfigError {
    /// JSON path inside the config, e.g. `plugins[0].vlan`.
    pub path: String,
    /// What was wrong.
    pub message: String,
}

/// A CNI config: a single plugin or a `plugins` list (conflist). Built by
/// [`CniConfig::parse`]; defaults of the bridge plugin are read through
/// [`BridgeConfig`]'s accessors, so the user's JSON text is never rewritten.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CniConfig {
    /// CNI spec version (`0.3.1` in the seeds).
    pub cni_version: String,
    /// Network name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The plugin chain; a single-plugin config becomes a list of one.
    pub plugins: Vec<CniPlugin>,
}

impl CniConfig {
    /// Parse a CNI config JSON string. Errors name the JSON key
    /// (`plugins[0].vlan`, `cniVersion`).
    pub fn parse(json: &str) -> Result<CniConfig, CniConfigError> {
        let err = |path: &str, message: String| CniConfigError {
            path: path.to_string(),
            message,
        };
        let root: serde_json::Value =
            serde_json::from_str(json).map_err(|e| err("<root>", e.to_string()))?;
        let Some(obj) = root.as_object() else {
            return Err(err("<root>", "the CNI config must be a JSON object".into()));
        };
        let cni_version = match obj.get("cniVersion") {
            None => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => return Err(err("cniVersion", format!("must be a string, got {other}"))),
        };
        let name = obj.get("name").and_then(|n| n.as_str()).map(str::to_string);
        let plugins = match obj.get("plugins") {
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, p)| CniPlugin::from_value(p, &format!("plugins[{i}].")))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(err("plugins", "must be a list".into())),
            None => vec![CniPlugin::from_value(&root, "")?],
        };
        Ok(CniConfig {
            cni_version,
            name,
            plugins,
        })
    }

    /// The first bridge plugin (`bridge` / `cnv-bridge`), if any.
    pub fn bridge(&self) -> Option<&BridgeConfig> {
        self.plugins.iter().find_map(|p| match p {
            CniPlugin::Bridge(b) => Some(b),
            _ => None,
        })
    }
}

/// One plugin of a CNI config, by its `type`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum CniPlugin {
    /// The Linux bridge plugin.
    #[serde(rename = "bridge")]
    Bridge(BridgeConfig),
    /// The SR-IOV plugin.
    #[serde(rename = "sriov")]
    Sriov(SriovCniConfig),
    /// The tuning plugin (custom MACs).
    #[serde(rename = "tuning")]
    Tuning(TuningConfig),
    /// The macvlan plugin (dedicated migration network).
    #[serde(rename = "macvlan")]
    Macvlan(MacvlanConfig),
}

impl CniPlugin {
    /// Deserialize one plugin by its `type`, with error paths under `prefix`.
    fn from_value(v: &serde_json::Value, prefix: &str) -> Result<CniPlugin, CniConfigError> {
        fn typed<T: serde::de::DeserializeOwned>(
            v: &serde_json::Value,
            prefix: &str,
        ) -> Result<T, CniConfigError> {
            serde_path_to_error::deserialize(v).map_err(|e| CniConfigError {
                path: format!("{prefix}{}", e.path()),
                message: e.inner().to_string(),
            })
        }
        let kind = v.get("type").and_then(|t| t.as_str()).unwrap_or_default();
        Ok(match kind {
            "bridge" | "cnv-bridge" => CniPlugin::Bridge(typed(v, prefix)?),
            "sriov" => CniPlugin::Sriov(typed(v, prefix)?),
            "tuning" | "cnv-tuning" => CniPlugin::Tuning(typed(v, prefix)?),
            "macvlan" => CniPlugin::Macvlan(typed(v, prefix)?),
            "" => {
                return Err(CniConfigError {
                    path: format!("{prefix}type"),
                    message: "plugin type is required".into(),
                })
            }
            other => {
                return Err(CniConfigError {
                    path: format!("{prefix}type"),
                    message: format!(
                        "unsupported plugin type {other:?}; supported: bridge, cnv-bridge, sriov, tuning, cnv-tuning, macvlan"
                    ),
                })
            }
        })
    }
}

/// `bridge` / `cnv-bridge` plugin parameters (seed 002's table).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct BridgeConfig {
    /// Plugin-level name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Bridge device (default `cni0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// Access VLAN tag of the port (0..=4094).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<i64>,
    /// Keep the default VLAN on the port (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preserve_default_vlan: Option<bool>,
    /// Trunk VLAN ranges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan_trunk: Option<Vec<VlanTrunk>>,
    /// Only the interface's own MAC may leave the guest port (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub macspoofchk: Option<bool>,
    /// Link MTU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i64>,
    /// IP address management (opaque).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipam: Option<serde_json::Value>,
    /// Masquerade on the host (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_masq: Option<bool>,
    /// Give the bridge an address (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_gateway: Option<bool>,
    /// Default route via the bridge (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_default_gateway: Option<bool>,
    /// Replace a different bridge address (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_address: Option<bool>,
    /// Hairpin on the port (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hairpin_mode: Option<bool>,
    /// Promiscuous bridge (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promisc_mode: Option<bool>,
    /// IPv6 duplicate address detection (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabledad: Option<bool>,
}

impl BridgeConfig {
    /// The bridge name with the CNI default.
    pub fn bridge_name(&self) -> &str {
        self.bridge.as_deref().unwrap_or("cni0")
    }
    /// `preserveDefaultVlan` with its default of true.
    pub fn preserve_default_vlan(&self) -> bool {
        self.preserve_default_vlan.unwrap_or(true)
    }
}

/// A `vlanTrunk` entry: one id or a range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VlanTrunk {
    /// Single VLAN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// Range start (`minID`, as the bridge CNI plugin spells it).
    #[serde(rename = "minID", skip_serializing_if = "Option::is_none")]
    pub min_id: Option<i64>,
    /// Range end (`maxID`).
    #[serde(rename = "maxID", skip_serializing_if = "Option::is_none")]
    pub max_id: Option<i64>,
}

/// `sriov` plugin parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SriovCniConfig {
    /// Plugin-level name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// VF VLAN (0..=4095).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<i64>,
    /// 802.1p priority (0..=7).
    #[serde(rename = "vlanQoS", skip_serializing_if = "Option::is_none")]
    pub vlan_qos: Option<i64>,
    /// `on` / `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spoofchk: Option<String>,
    /// `on` / `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust: Option<String>,
    /// `enable`, `disable`, `auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_state: Option<String>,
    /// Minimum TX rate, Mbps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_tx_rate: Option<i64>,
    /// Maximum TX rate, Mbps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tx_rate: Option<i64>,
    /// IP address management (opaque).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipam: Option<serde_json::Value>,
}

/// `tuning` plugin parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TuningConfig {
    /// MAC to set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// sysctls to set.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctl: BTreeMap<String, String>,
}

/// `macvlan` plugin parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MacvlanConfig {
    /// Host interface.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// `bridge`, `private`, `vepa`, `passthru`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// IP address management (e.g. whereabouts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipam: Option<serde_json::Value>,
}

/// `kind: SriovNetworkNodePolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SriovNetworkNodePolicy {
    /// `sriovnetwork.openshift.io/v1`.
    pub api_version: String,
    /// `SriovNetworkNodePolicy`.
    pub kind: String,
    /// Name.
    pub metadata: ObjectMeta,
    /// Policy.
    pub spec: SriovNetworkNodePolicySpec,
}

/// SriovNetworkNodePolicy `spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SriovNetworkNodePolicySpec {
    /// Resource name (`[A-Za-z0-9_]+`).
    pub resource_name: String,
    /// Hosts the policy applies to.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// 0..=99, lower wins (default 99).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// MTU of the VFs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i64>,
    /// VFs to create (≤ the device's total).
    pub num_vfs: i64,
    /// Which PFs.
    pub nic_selector: NicSelector,
    /// `vfio-pci` (for VMs) or `netdevice`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// RDMA mode (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_rdma: Option<bool>,
}

/// `nicSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NicSelector {
    /// `8086` or `15b3`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// `158b`, `1015`, `1017`.
    #[serde(rename = "deviceID", skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// PF names (`ens1f0`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pf_names: Vec<String>,
    /// PF PCI addresses (`0000:02:00.1`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub root_devices: Vec<String>,
}

/// `kind: SriovNetwork`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SriovNetwork {
    /// `sriovnetwork.openshift.io/v1`.
    pub api_version: String,
    /// `SriovNetwork`.
    pub kind: String,
    /// Name (the generated NAD has the same).
    pub metadata: ObjectMeta,
    /// Settings.
    pub spec: SriovNetworkSpec,
}

/// SriovNetwork `spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SriovNetworkSpec {
    /// The policy's resource name.
    pub resource_name: String,
    /// Namespace of the generated NAD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_namespace: Option<String>,
    /// 0..=4095 (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<i64>,
    /// `"on"` / `"off"` — a quoted string, never a YAML bool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spoof_chk: Option<OnOff>,
    /// `enable`, `disable`, `auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_state: Option<String>,
    /// Mbps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tx_rate: Option<i64>,
    /// Mbps, ≤ maxTxRate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_tx_rate: Option<i64>,
    /// 802.1p priority 0..=7 (default 0).
    #[serde(rename = "vlanQoS", skip_serializing_if = "Option::is_none")]
    pub vlan_qos: Option<i64>,
    /// `"on"` / `"off"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust: Option<OnOff>,
    /// Capabilities JSON string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<String>,
    /// IPAM JSON string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipam: Option<String>,
}

/// A value that must be the string `"on"` or `"off"`. A YAML/JSON boolean
/// (what an unquoted `on` becomes in YAML 1.1 tools) is kept as
/// [`OnOff::Bool`] so validation can point at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OnOff {
    /// The string form, `"on"`, `"off"` or something invalid.
    Text(String),
    /// A boolean where a quoted string belongs.
    Bool(bool),
}
