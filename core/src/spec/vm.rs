//! VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration
//! and VirtualMachineInstancePreset objects.

use serde::{Deserialize, Serialize};

use super::datavolume::DataVolumeSpec;
use super::vmi::{DomainSpec, VmiSpec};
use super::{LabelSelector, ObjectMeta};
use crate::string_enum;

/// The `apiVersion` values accepted for KubeVirt objects.
pub const KUBEVIRT_API_VERSIONS: &[&str] = &["kubevirt.io/v1", "kubevirt.io/v1alpha3"];

/// `kind: VirtualMachine`, the durable definition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachine {
    /// `kubevirt.io/v1` or `kubevirt.io/v1alpha3`.
    pub api_version: String,
    /// `VirtualMachine`.
    pub kind: String,
    /// Name, namespace, labels.
    pub metadata: ObjectMeta,
    /// The definition.
    pub spec: VirtualMachineSpec,
    /// Observed state (`status: {}` in exports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<VirtualMachineStatus>,
}

/// VM `spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    /// Start (true) or stop (false); exclusive with `runStrategy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    /// `Always`, `RerunOnFailure`, `Manual`, `Halted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    /// The instance template.
    pub template: VmiTemplateSpec,
    /// DataVolumes owned by this VM.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub data_volume_templates: Vec<DataVolumeTemplate>,
}

string_enum! {
    /// `spec.runStrategy` values.
    pub enum RunStrategy {
        /// Keep running; restart after any stop.
        Always = "Always",
        /// Restart after a failure only.
        RerunOnFailure = "RerunOnFailure",
        /// Start and stop only on request.
        Manual = "Manual",
        /// Stay stopped.
        Halted = "Halted",
    }
}

/// `spec.template`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VmiTemplateSpec {
    /// Labels copied to the VMI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// The VMI spec.
    pub spec: VmiSpec,
}

/// `spec.dataVolumeTemplates[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DataVolumeTemplate {
    /// Name of the DataVolume to create.
    pub metadata: ObjectMeta,
    /// The DataVolume spec.
    pub spec: DataVolumeSpec,
    /// `status: {}` in exports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// VM `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    /// A VMI exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// The VMI is running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// `Stopped`, `Running`, `Migrating`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub printable_status: Option<String>,
}

/// `kind: VirtualMachineInstance`, a running incarnation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachineInstance {
    /// `kubevirt.io/v1` or `kubevirt.io/v1alpha3`.
    pub api_version: String,
    /// `VirtualMachineInstance`.
    pub kind: String,
    /// Name, namespace, labels.
    pub metadata: ObjectMeta,
    /// The instance spec.
    pub spec: VmiSpec,
    /// Observed state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<VmiStatus>,
}

/// VMI `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VmiStatus {
    /// `Pending`, `Scheduling`, `Scheduled`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Conditions such as `Ready`, `LiveMigratable`, `Paused`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Guest interfaces with their addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<VmiInterfaceStatus>,
    /// `LiveMigration` or `BlockMigration`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration_method: Option<String>,
    /// State of the latest migration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration_state: Option<MigrationState>,
    /// Host running the VMI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// A status condition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Condition {
    /// Condition type.
    #[serde(rename = "type")]
    pub condition_type: String,
    /// `True`, `False`, `Unknown`.
    pub status: String,
    /// Machine-readable reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Last probe (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<String>,
    /// Last status flip (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// `status.interfaces[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VmiInterfaceStatus {
    /// Spec interface name (absent for guest-only interfaces).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// MAC address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Primary address with prefix, e.g. `10.244.0.37/24`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// All addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    /// Guest interface name, e.g. `eth0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    /// `domain, guest-agent, multus-status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info_source: Option<String>,
    /// Number of queues.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_count: Option<i64>,
}

/// `status.migrationState`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MigrationState {
    /// Finished successfully.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<bool>,
    /// Finished unsuccessfully.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<bool>,
    /// A cancel was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_requested: Option<bool>,
    /// `Succeeded`, `Failed`, `Aborting`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_status: Option<String>,
    /// RFC 3339 start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<String>,
    /// RFC 3339 end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_timestamp: Option<String>,
    /// Migration UID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration_uid: Option<String>,
    /// Source host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_node: Option<String>,
    /// Target host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// `host:port` of the target on the migration network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_node_address: Option<String>,
    /// The target saw the domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_node_domain_detected: Option<bool>,
}

/// `kind: VirtualMachineInstanceMigration`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigration {
    /// `kubevirt.io/v1` or `kubevirt.io/v1alpha3`.
    pub api_version: String,
    /// `VirtualMachineInstanceMigration`.
    pub kind: String,
    /// Name.
    pub metadata: ObjectMeta,
    /// Which VMI.
    pub spec: MigrationSpec,
    /// Progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<MigrationStatus>,
}

/// VMIM `spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MigrationSpec {
    /// Required: the VMI to migrate.
    pub vmi_name: String,
}

/// VMIM `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MigrationStatus {
    /// `Pending`, `Scheduling`, `Scheduled`, `PreparingTarget`, `TargetReady`,
    /// `Running`, `Succeeded`, `Failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// `kind: VirtualMachineInstancePreset`: domain settings applied to VMIs
/// whose labels match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualMachineInstancePreset {
    /// `kubevirt.io/v1` or `kubevirt.io/v1alpha3`.
    pub api_version: String,
    /// `VirtualMachineInstancePreset`.
    pub kind: String,
    /// Name.
    pub metadata: ObjectMeta,
    /// Selector and domain overlay.
    pub spec: PresetSpec,
}

/// Preset `spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PresetSpec {
    /// Which VMIs (by label).
    pub selector: LabelSelector,
    /// Domain settings to apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<DomainSpec>,
}
