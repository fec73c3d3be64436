//! Whether a VMI can live-migrate (the `LiveMigratable` condition,
//! lifecycle §7), by which method, and each reason it cannot with the
//! offending path; and the checks a migration request passes before it
//! starts (§6).
//!
//! Claims' access modes are not in the VMI spec: the embedder supplies
//! them (from its PVCs and DataVolumes), and a claim it cannot tell about
//! counts as not shared.

use super::{Report, P};
use crate::spec::datavolume::AccessMode;
use crate::spec::vm::{Condition, VirtualMachineInstanceMigration};
use crate::spec::vmi::VmiSpec;

/// The feature gate (`kubevirt-config` `data.feature-gates`) migrations need.
pub const LIVE_MIGRATION_GATE: &str = "LiveMigration";
/// The condition type.
pub const LIVE_MIGRATABLE: &str = "LiveMigratable";

/// How a migratable VMI moves (`status.migrationMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationMethod {
    /// Memory and device state only; every disk is on shared storage.
    LiveMigration,
    /// Local ephemeral disks (`containerDisk`, `emptyDisk`, `ephemeral`)
    /// must be copied too, and their size counts toward the timeout.
    BlockMigration,
}

impl MigrationMethod {
    /// The status spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationMethod::LiveMigration => "LiveMigration",
            MigrationMethod::BlockMigration => "BlockMigration",
        }
    }
}

/// Why a VMI cannot live-migrate, in KubeVirt's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocker {
    /// A claim that is not `ReadWriteMany`.
    DisksNotLiveMigratable,
    /// A pod-network interface bound other than by masquerade.
    InterfaceNotLiveMigratable,
    /// A host device, GPU or SR-IOV interface.
    HostDeviceNotLiveMigratable,
}

impl Blocker {
    /// The condition reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Blocker::DisksNotLiveMigratable => "DisksNotLiveMigratable",
            Blocker::InterfaceNotLiveMigratable => "InterfaceNotLiveMigratable",
            Blocker::HostDeviceNotLiveMigratable => "HostDeviceNotLiveMigratable",
        }
    }
}

/// One reason, where it is and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The reason.
    pub blocker: Blocker,
    /// Field path (`spec.volumes[0]`, `spec.domain.devices.interfaces[1]`).
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

/// The verdict on one VMI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migratability {
    /// The method it would use.
    pub method: MigrationMethod,
    /// Every reason it cannot migrate; empty when it can.
    pub findings: Vec<Finding>,
}

impl Migratability {
    /// No reason against it.
    pub fn is_migratable(&self) -> bool {
        self.findings.is_empty()
    }

    /// The VMI's `LiveMigratable` condition: `True`, or `False` with the
    /// first reason and a message naming every offending path.
    pub fn condition(&self) -> Condition {
        let Some(first) = self.findings.first() else {
            return Condition {
                condition_type: LIVE_MIGRATABLE.into(),
                status: "True".into(),
                ..Condition::default()
            };
        };
        let message = self
            .findings
            .iter()
            .map(|f| format!("{}: {} ({})", f.path, f.message, f.blocker.as_str()))
            .collect::<Vec<_>>()
            .join("; ");
        Condition {
            condition_type: LIVE_MIGRATABLE.into(),
            status: "False".into(),
            reason: Some(first.blocker.as_str().into()),
            message: Some(message),
            ..Condition::default()
        }
    }
}

/// Judge `spec`. `access_modes(claim)` gives the access modes of a
/// `persistentVolumeClaim` or `dataVolume` by name, `None` when unknown.
pub fn live_migratability(
    spec: &VmiSpec,
    access_modes: &dyn Fn(&str) -> Option<Vec<AccessMode>>,
) -> Migratability {
    let mut method = MigrationMethod::LiveMigration;
    let mut findings = Vec::new();
    let mut find = |blocker, path: P, message: String| {
        findings.push(Finding {
            blocker,
            path: path.to_string(),
            message,
        })
    };
    let volumes = P::root("spec").field("volumes");
    for (i, v) in spec.volumes.iter().enumerate() {
        if v.container_disk.is_some() || v.empty_disk.is_some() || v.ephemeral.is_some() {
            method = MigrationMethod::BlockMigration;
        }
        let claim = v
            .persistent_volume_claim
            .as_ref()
            .map(|c| ("claim", c.claim_name.as_str()))
            .or(v
                .data_volume
                .as_ref()
                .map(|d| ("DataVolume", d.name.as_str())));
        if let Some((what, name)) = claim {
            match access_modes(name) {
                Some(m) if m.contains(&AccessMode::ReadWriteMany) => {}
                Some(m) => find(
                    Blocker::DisksNotLiveMigratable,
                    volumes.index(i),
                    format!(
                        "{what} {name:?} is {}; live migration needs ReadWriteMany",
                        m.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ),
                None => find(
                    Blocker::DisksNotLiveMigratable,
                    volumes.index(i),
                    format!("{what} {name:?}: access mode unknown, so not shared"),
                ),
            }
        }
    }
    let devices = P::root("spec").field("domain").field("devices");
    let interfaces = devices.field("interfaces");
    for (j, iface) in spec.domain.devices.interfaces.iter().enumerate() {
        let on_pod = spec
            .networks
            .iter()
            .any(|n| n.name == iface.name && n.pod.is_some());
        if iface.sriov.is_some() {
            find(
                Blocker::HostDeviceNotLiveMigratable,
                interfaces.index(j),
                format!("SR-IOV interface {:?} is a host device", iface.name),
            );
        } else if on_pod && iface.masquerade.is_none() {
            find(
                Blocker::InterfaceNotLiveMigratable,
                interfaces.index(j),
                format!(
                    "pod-network interface {:?} is bound by {}; only masquerade migrates",
                    iface.name,
                    iface.bindings().join(", ")
                ),
            );
        }
    }
    for (field, list) in [
        ("hostDevices", &spec.domain.devices.host_devices),
        ("gpus", &spec.domain.devices.gpus),
    ] {
        for (k, d) in list.iter().enumerate() {
            find(
                Blocker::HostDeviceNotLiveMigratable,
                devices.field(field).index(k),
                format!("host device {:?} cannot follow the guest", d.name),
            );
        }
    }
    Migratability { method, findings }
}

/// What a migration request is checked against before it starts.
#[derive(Debug, Clone)]
pub struct MigrationRequestContext<'a> {
    /// The VMI's `status.phase` (`Running` is required).
    pub vmi_phase: Option<&'a str>,
    /// The VMI's verdict.
    pub migratability: &'a Migratability,
    /// Another migration of this VMI is under way.
    pub already_migrating: bool,
    /// `kubevirt-config` feature gates.
    pub feature_gates: &'a [&'a str],
}

/// Admit a VirtualMachineInstanceMigration (§6): every reason to refuse,
/// at `spec.vmiName`, repeating the `LiveMigratable` reasons.
pub fn migration_admission(
    vmim: &VirtualMachineInstanceMigration,
    ctx: &MigrationRequestContext<'_>,
) -> Report {
    let mut r = Report::default();
    let at = P::root("spec").field("vmiName");
    let name = &vmim.spec.vmi_name;
    if name.is_empty() {
        r.error(at.clone(), "vmiName is required");
        return r;
    }
    if !ctx.feature_gates.contains(&LIVE_MIGRATION_GATE) {
        r.error(
            at.clone(),
            format!("the {LIVE_MIGRATION_GATE} feature gate is off in kubevirt-config"),
        );
    }
    if ctx.vmi_phase != Some("Running") {
        r.error(
            at.clone(),
            format!(
                "VMI {name:?} is {}, not Running",
                ctx.vmi_phase.unwrap_or("not found")
            ),
        );
    }
    if ctx.already_migrating {
        r.error(at.clone(), format!("VMI {name:?} is already migrating"));
    }
    if let Some(message) = ctx.migratability.condition().message {
        r.error(
            at,
            format!("VMI {name:?} is not live-migratable: {message}"),
        );
    }
    r
}
