//! Cluster-wide configuration: the HyperConverged object
//! (`liveMigrationConfig`, `certConfig`, `permittedHostDevices`) and the
//! older `kubevirt-config` ConfigMap whose `data.migrations` holds the same
//! migration limits as a YAML string.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::ObjectMeta;
use crate::Quantity;

/// Accepted HyperConverged `apiVersion`s (the seed uses both).
pub const HCO_API_VERSIONS: &[&str] = &["hco.kubevirt.io/v1beta1", "hco.kubevirt.io/v1"];

/// `kind: HyperConverged`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HyperConverged {
    /// `hco.kubevirt.io/v1beta1` or `hco.kubevirt.io/v1`.
    pub api_version: String,
    /// `HyperConverged`.
    pub kind: String,
    /// Name (`kubevirt-hyperconverged`).
    pub metadata: ObjectMeta,
    /// Settings.
    pub spec: HyperConvergedSpec,
}

/// HyperConverged `spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HyperConvergedSpec {
    /// Live-migration limits and network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_migration_config: Option<MigrationConfig>,
    /// Certificate lifetimes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_config: Option<CertConfig>,
    /// Host devices VMs may use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permitted_host_devices: Option<PermittedHostDevices>,
    /// Feature gates.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub feature_gates: BTreeMap<String, bool>,
}

/// Live-migration limits: HyperConverged `liveMigrationConfig` or the
/// `kubevirt-config` ConfigMap's `data.migrations`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MigrationConfig {
    /// Migrations at once in the cluster (default 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_migrations_per_cluster: Option<i64>,
    /// Outbound migrations at once per host (default 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_outbound_migrations_per_node: Option<i64>,
    /// Bytes per second per migration (default `64Mi`; 0 = unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth_per_migration: Option<Quantity>,
    /// Seconds per GiB of memory before cancel (default 800).
    #[serde(
        rename = "completionTimeoutPerGiB",
        skip_serializing_if = "Option::is_none"
    )]
    pub completion_timeout_per_gib: Option<i64>,
    /// Seconds without progress before cancel (default 150).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_timeout: Option<i64>,
    /// NetworkAttachmentDefinition of a dedicated migration network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// [`MigrationConfig`] with every default applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveMigrationConfig {
    /// Cluster-wide concurrency.
    pub parallel_migrations_per_cluster: u32,
    /// Per-host outbound concurrency.
    pub parallel_outbound_migrations_per_node: u32,
    /// Bytes per second; 0 = unlimited.
    pub bandwidth_bytes_per_sec: u64,
    /// Seconds per GiB.
    pub completion_timeout_per_gib: u64,
    /// Seconds.
    pub progress_timeout: u64,
    /// Dedicated network, if any.
    pub network: Option<String>,
}

impl MigrationConfig {
    /// Default `parallelMigrationsPerCluster`.
    pub const DEFAULT_PARALLEL_PER_CLUSTER: i64 = 5;
    /// Default `parallelOutboundMigrationsPerNode`.
    pub const DEFAULT_PARALLEL_OUTBOUND_PER_NODE: i64 = 2;
    /// Default `bandwidthPerMigration` (64Mi per second).
    pub const DEFAULT_BANDWIDTH: &'static str = "64Mi";
    /// Default `completionTimeoutPerGiB`.
    pub const DEFAULT_COMPLETION_TIMEOUT_PER_GIB: i64 = 800;
    /// Default `progressTimeout`.
    pub const DEFAULT_PROGRESS_TIMEOUT: i64 = 150;

    /// Values with defaults filled; `None` if a value is invalid (run
    /// validation for the reason).
    pub fn effective(&self) -> Option<EffectiveMigrationConfig> {
        let bw = match &self.bandwidth_per_migration {
            Some(q) => q.to_bytes().ok()?,
            None => 64 * 1024 * 1024,
        };
        let pos = |v: Option<i64>, d: i64| u64::try_from(v.unwrap_or(d)).ok().filter(|v| *v >= 1);
        Some(EffectiveMigrationConfig {
            parallel_migrations_per_cluster: u32::try_from(pos(
                self.parallel_migrations_per_cluster,
                Self::DEFAULT_PARALLEL_PER_CLUSTER,
            )?)
            .ok()?,
            parallel_outbound_migrations_per_node: u32::try_from(pos(
                self.parallel_outbound_migrations_per_node,
                Self::DEFAULT_PARALLEL_OUTBOUND_PER_NODE,
            )?)
            .ok()?,
            bandwidth_bytes_per_sec: bw,
            completion_timeout_per_gib: pos(
                self.completion_timeout_per_gib,
                Self::DEFAULT_COMPLETION_TIMEOUT_PER_GIB,
            )?,
            progress_timeout: pos(self.progress_timeout, Self::DEFAULT_PROGRESS_TIMEOUT)?,
            network: self.network.clone().filter(|n| !n.is_empty()),
        })
    }
}

impl EffectiveMigrationConfig {
    /// `completionTimeoutPerGiB × ceil(bytes / GiB)`: the seed's 6 GiB → 4800 s.
    pub fn completion_timeout_secs(&self, memory_bytes: u64, block_migrated_bytes: u64) -> u64 {
        const GIB: u64 = 1 << 30;
        let total = memory_bytes.saturating_add(block_migrated_bytes);
        self.completion_timeout_per_gib
            .saturating_mul(total.div_ceil(GIB))
    }
}

/// `certConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CertConfig {
    /// CA certificate lifetimes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<CertRotation>,
    /// Server certificate lifetimes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<CertRotation>,
}

/// `{duration, renewBefore}` as Go duration strings (`48h0m0s`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CertRotation {
    /// Lifetime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Renew when this much validity remains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
}

/// A Go `time.Duration`, in nanoseconds, parsed from and printed as Go does
/// (`1.5h`, `90m`, `48h0m0s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoDuration(pub i128);

/// Why a Go duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?} (expected Go syntax such as 48h0m0s, 90m, 1.5h; units ns us µs ms s m h)")]
pub struct DurationError(pub String);

impl GoDuration {
    /// Seconds in the duration, truncated.
    pub fn as_secs(&self) -> i128 {
        self.0 / 1_000_000_000
    }

    /// From whole seconds.
    pub fn from_secs(s: i64) -> Self {
        GoDuration(i128::from(s) * 1_000_000_000)
    }

    /// Parse Go's `time.ParseDuration` grammar.
    pub fn parse(s: &str) -> Result<Self, DurationError> {
        let err = || DurationError(s.to_string());
        let mut rest = s;
        let mut neg = false;
        if let Some(r) = rest.strip_prefix('-') {
            neg = true;
            rest = r;
        } else if let Some(r) = rest.strip_prefix('+') {
            rest = r;
        }
        if rest == "0" {
            return Ok(GoDuration(0));
        }
        if rest.is_empty() {
            return Err(err());
        }
        let mut total: i128 = 0;
        while !rest.is_empty() {
            let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            let int_part = &rest[..int_len];
            rest = &rest[int_len..];
            let mut frac_part = "";
            if let Some(r) = rest.strip_prefix('.') {
                let n = r.bytes().take_while(u8::is_ascii_digit).count();
                frac_part = &r[..n];
                rest = &r[n..];
            }
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(err());
            }
            let unit_len = rest
                .char_indices()
                .find(|(_, c)| c.is_ascii_digit() || *c == '.')
                .map(|(i, _)| i)
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let scale: i128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(err()),
            };
            let int: i128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| err())?
            };
            let mut v = int.checked_mul(scale).ok_or_else(err)?;
            let mut div = scale;
            for d in frac_part.bytes().take(18) {
                div /= 10;
                if div == 0 {
                    break;
                }
                v += i128::from(d - b'0') * div;
            }
            total = total.checked_add(v).ok_or_else(err)?;
            if total > i128::from(i64::MAX) {
                return Err(err());
            }
        }
        Ok(GoDuration(if neg { -total } else { total }))
    }
}

impl fmt::Display for GoDuration {
    /// Go's canonical form: `48h0m0s`, `1m30s`, `1.5s`, `100ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ns = self.0;
        if ns == 0 {
            return f.write_str("0s");
        }
        if ns < 0 {
            f.write_str("-")?;
            ns = -ns;
        }
        if ns < 1_000_000_000 {
            let (v, unit, digits) = if ns < 1_000 {
                (ns, "ns", 0)
            } else if ns < 1_000_000 {
                (ns, "µs", 3)
            } else {
                (ns, "ms", 6)
            };
            return write_frac(f, v, digits, unit);
        }
        let h = ns / 3_600_000_000_000;
        ns %= 3_600_000_000_000;
        let m = ns / 60_000_000_000;
        ns %= 60_000_000_000;
        if h > 0 {
            write!(f, "{h}h{m}m")?;
        } else if m > 0 {
            write!(f, "{m}m")?;
        }
        write_frac(f, ns, 9, "s")
    }
}

fn write_frac(f: &mut fmt::Formatter<'_>, v: i128, digits: u32, unit: &str) -> fmt::Result {
    let div = 10i128.pow(digits);
    let int = v / div;
    let frac = v % div;
    if frac == 0 {
        return write!(f, "{int}{unit}");
    }
    let s = format!("{frac:0width$}", width = digits as usize);
    write!(f, "{int}.{}{unit}", s.trim_end_matches('0'))
}

impl CertConfig {
    /// Default CA lifetime.
    pub const DEFAULT_CA_DURATION: &'static str = "48h0m0s";
    /// Default CA renew-before.
    pub const DEFAULT_CA_RENEW_BEFORE: &'static str = "24h0m0s";
    /// Default server lifetime.
    pub const DEFAULT_SERVER_DURATION: &'static str = "24h0m0s";
    /// Default server renew-before.
    pub const DEFAULT_SERVER_RENEW_BEFORE: &'static str = "12h0m0s";
}

/// `permittedHostDevices`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PermittedHostDevices {
    /// PCI devices by vendor:device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pci_host_devices: Vec<PciHostDevice>,
    /// Mediated devices by type name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mediated_devices: Vec<MediatedHostDevice>,
}

/// `pciHostDevices[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PciHostDevice {
    /// `VVVV:DDDD` hex.
    pub pci_vendor_selector: String,
    /// `vendor-domain/NAME`.
    pub resource_name: String,
    /// Allocation handled by an external plugin (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_resource_provider: Option<bool>,
}

/// `mediatedDevices[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MediatedHostDevice {
    /// mdev type name, e.g. `GRID T4-1Q`.
    pub mdev_name_selector: String,
    /// `vendor-domain/NAME`.
    pub resource_name: String,
    /// Allocation handled by an external plugin (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_resource_provider: Option<bool>,
}

/// `kind: ConfigMap` (`v1`): the `kubevirt-config` map with feature gates
/// and `data.migrations`, a CA bundle for imports, or any other map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConfigMap {
    /// `v1`.
    pub api_version: String,
    /// `ConfigMap`.
    pub kind: String,
    /// Name (`kubevirt-config` for KubeVirt settings).
    pub metadata: ObjectMeta,
    /// String data.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

/// `kind: Secret` (`v1`): credentials for an import (`accessKeyId`,
/// `secretKey`), an upload token, or any other map. `data` values are
/// base64 as Kubernetes stores them; `stringData` values are plain.
/// `Debug` prints the keys only, never a value.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Secret {
    /// `v1`.
    pub api_version: String,
    /// `Secret`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// `Opaque` for CDI credentials.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub secret_type: Option<String>,
    /// Base64-encoded values.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Plain values (win over `data` for the same key, as in Kubernetes).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
}

impl Secret {
    /// The decoded value under `key`: `stringData` first, then `data`
    /// (base64). `Err` names the key that is not valid base64 (ST-9),
    /// never its content.
    pub fn value(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        use base64::Engine as _;
        if let Some(v) = self.string_data.get(key) {
            return Ok(Some(v.clone().into_bytes()));
        }
        match self.data.get(key) {
            None => Ok(None),
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .map(Some)
                .map_err(|_| format!("data.{key} is not valid base64")),
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("type", &self.secret_type)
            .field("data_keys", &self.data.keys().collect::<Vec<_>>())
            .field(
                "string_data_keys",
                &self.string_data.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The name of KubeVirt's settings ConfigMap.
pub const KUBEVIRT_CONFIG_NAME: &str = "kubevirt-config";

impl ConfigMap {
    /// Feature gates listed in `data.feature-gates` (comma-separated).
    pub fn feature_gates(&self) -> Vec<&str> {
        self.data
            .get("feature-gates")
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `data.migrations` parsed as a [`MigrationConfig`]; missing = defaults.
    pub fn migration_config(&self) -> Result<MigrationConfig, serde_yaml_ng::Error> {
        match self.data.get("migrations") {
            Some(text) if !text.trim().is_empty() => serde_yaml_ng::from_str(text),
            _ => Ok(MigrationConfig::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_and_print_like_go() {
        for (input, secs) in [
            ("48h0m0s", 172_800),
            ("24h", 86_400),
            ("10m", 600),
            ("1.5h", 5_400),
            ("599s", 599),
            ("9m59s", 599),
            ("-10m", -600),
            ("0", 0),
        ] {
            assert_eq!(GoDuration::parse(input).unwrap().as_secs(), secs, "{input}");
        }
        for bad in ["", "1d", "h", "10", "1.h.", "1x", "--1s"] {
            assert!(GoDuration::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(GoDuration::from_secs(172_800).to_string(), "48h0m0s");
        assert_eq!(GoDuration::from_secs(90).to_string(), "1m30s");
        assert_eq!(GoDuration::parse("1.5s").unwrap().to_string(), "1.5s");
        assert_eq!(GoDuration::parse("100ms").unwrap().to_string(), "100ms");
        assert_eq!(GoDuration(0).to_string(), "0s");
    }

    #[test]
    fn migration_defaults_and_timeout_arithmetic() {
        let eff = MigrationConfig::default().effective().unwrap();
        assert_eq!(eff.parallel_migrations_per_cluster, 5);
        assert_eq!(eff.parallel_outbound_migrations_per_node, 2);
        assert_eq!(eff.bandwidth_bytes_per_sec, 67_108_864);
        assert_eq!(eff.completion_timeout_per_gib, 800);
        assert_eq!(eff.progress_timeout, 150);
        const GIB: u64 = 1 << 30;
        assert_eq!(eff.completion_timeout_secs(6 * GIB, 0), 4800);
        assert_eq!(eff.completion_timeout_secs(3 * GIB / 2, 0), 1600);
        assert_eq!(eff.completion_timeout_secs(GIB, 2 * GIB), 2400);
    }

    #[test]
    fn kubevirt_config_map_migrations_block() {
        let cm: ConfigMap = serde_yaml_ng::from_str(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kubevirt-config, namespace: kubevirt}\ndata:\n  feature-gates: \"LiveMigration\"\n  migrations: |-\n    parallelMigrationsPerCluster: 5\n    parallelOutboundMigrationsPerNode: 2\n    bandwidthPerMigration: 64Mi\n    completionTimeoutPerGiB: 800\n    progressTimeout: 150\n",
        )
        .unwrap();
        assert_eq!(cm.feature_gates(), vec!["LiveMigration"]);
        let m = cm.migration_config().unwrap();
        assert_eq!(m.effective(), MigrationConfig::default().effective());
        assert_eq!(m.progress_timeout, Some(150));
    }
}
