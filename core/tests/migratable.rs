//! `LiveMigratable` (lifecycle §7) and migration admission (§6): each
//! reason a VMI cannot live-migrate names its path, all of them are
//! reported together, and the method follows the disks.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use virtkit_core::spec::datavolume::AccessMode;
use virtkit_core::spec::vm::{MigrationSpec, VirtualMachineInstanceMigration};
use virtkit_core::spec::vmi::VmiSpec;
use virtkit_core::validate::{
    live_migratability, migration_admission, Blocker, MigrationMethod, MigrationRequestContext,
};

fn spec(yaml: &str) -> VmiSpec {
    serde_yaml_ng::from_str(yaml).unwrap()
}

/// `shared` is ReadWriteMany, `local` ReadWriteOnce; others are unknown.
fn modes(claim: &str) -> Option<Vec<AccessMode>> {
    match claim {
        "shared" => Some(vec![AccessMode::ReadWriteMany]),
        "local" => Some(vec![AccessMode::ReadWriteOnce]),
        _ => None,
    }
}

const GOOD: &str = r##"
domain:
  devices:
    interfaces:
    - {name: default, masquerade: {}}
    - {name: br, bridge: {}}
networks:
- {name: default, pod: {}}
- {name: br, multus: {networkName: br-net}}
volumes:
- {name: root, persistentVolumeClaim: {claimName: shared}}
- {name: ci, cloudInitNoCloud: {userData: "#cloud-config\n"}}
"##;

#[test]
fn shared_claims_masquerade_and_multus_bridges_migrate_live() {
    let m = live_migratability(&spec(GOOD), &modes);
    assert!(m.is_migratable(), "{m:?}");
    assert_eq!(m.method, MigrationMethod::LiveMigration);
    let c = m.condition();
    assert_eq!(
        (c.condition_type.as_str(), c.status.as_str()),
        ("LiveMigratable", "True")
    );
    assert_eq!(c.reason, None);
}

#[test]
fn local_ephemeral_disks_select_block_migration() {
    for volume in [
        "{name: root, containerDisk: {image: quay.io/demo}}",
        "{name: root, emptyDisk: {capacity: 1Gi}}",
        "{name: root, ephemeral: {persistentVolumeClaim: {claimName: golden}}}",
    ] {
        let s = spec(&format!("volumes:\n- {volume}\n"));
        let m = live_migratability(&s, &modes);
        assert!(m.is_migratable(), "{volume}: {m:?}");
        assert_eq!(m.method, MigrationMethod::BlockMigration, "{volume}");
        assert_eq!(m.method.as_str(), "BlockMigration");
    }
}

#[test]
fn an_rwo_claim_is_named_by_its_volume_path() {
    let s = spec(
        "volumes:\n- {name: root, persistentVolumeClaim: {claimName: local}}\n- {name: data, dataVolume: {name: shared}}\n",
    );
    let m = live_migratability(&s, &modes);
    assert_eq!(m.findings.len(), 1, "{m:?}");
    let f = &m.findings[0];
    assert_eq!(f.blocker, Blocker::DisksNotLiveMigratable);
    assert_eq!(f.path, "spec.volumes[0]");
    assert!(f.message.contains("ReadWriteOnce"), "{}", f.message);
    let c = m.condition();
    assert_eq!(c.status, "False");
    assert_eq!(c.reason.as_deref(), Some("DisksNotLiveMigratable"));
    // A claim whose access mode nobody knows is not assumed shared.
    let s = spec("volumes:\n- {name: x, dataVolume: {name: mystery}}\n");
    let m = live_migratability(&s, &modes);
    assert_eq!(m.findings[0].blocker, Blocker::DisksNotLiveMigratable);
    assert!(m.findings[0].message.contains("unknown"));
}

#[test]
fn a_pod_bridge_and_an_rwo_claim_are_both_reported() {
    let s = spec(
        r#"
domain:
  devices:
    interfaces:
    - {name: default, bridge: {}}
networks:
- {name: default, pod: {}}
volumes:
- {name: root, persistentVolumeClaim: {claimName: local}}
"#,
    );
    let m = live_migratability(&s, &modes);
    let found: Vec<(Blocker, &str)> = m
        .findings
        .iter()
        .map(|f| (f.blocker, f.path.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (Blocker::DisksNotLiveMigratable, "spec.volumes[0]"),
            (
                Blocker::InterfaceNotLiveMigratable,
                "spec.domain.devices.interfaces[0]"
            ),
        ]
    );
    let message = m.condition().message.unwrap();
    assert!(message.contains("spec.volumes[0]"), "{message}");
    assert!(
        message.contains("spec.domain.devices.interfaces[0]") && message.contains("bridge"),
        "{message}"
    );
}

#[test]
fn host_devices_gpus_and_sriov_interfaces_stay_on_their_host() {
    let s = spec(
        r#"
domain:
  devices:
    interfaces:
    - {name: fast, sriov: {}}
    hostDevices:
    - {name: nic, deviceName: intel.com/qat}
    gpus:
    - {name: gpu, deviceName: nvidia.com/T4}
networks:
- {name: fast, multus: {networkName: sriov-net}}
"#,
    );
    let m = live_migratability(&s, &modes);
    let paths: Vec<&str> = m.findings.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "spec.domain.devices.interfaces[0]",
            "spec.domain.devices.hostDevices[0]",
            "spec.domain.devices.gpus[0]"
        ]
    );
    assert!(m
        .findings
        .iter()
        .all(|f| f.blocker == Blocker::HostDeviceNotLiveMigratable));
}

fn vmim(vmi: &str) -> VirtualMachineInstanceMigration {
    VirtualMachineInstanceMigration {
        api_version: "kubevirt.io/v1".into(),
        kind: "VirtualMachineInstanceMigration".into(),
        spec: MigrationSpec {
            vmi_name: vmi.into(),
        },
        ..Default::default()
    }
}

#[test]
fn a_migration_request_is_refused_for_every_reason_at_once() {
    let good = live_migratability(&spec(GOOD), &modes);
    let ok = MigrationRequestContext {
        vmi_phase: Some("Running"),
        migratability: &good,
        already_migrating: false,
        feature_gates: &["LiveMigration"],
    };
    assert!(migration_admission(&vmim("vm1"), &ok).is_valid());

    let bad = live_migratability(
        &spec("volumes:\n- {name: root, persistentVolumeClaim: {claimName: local}}\n"),
        &modes,
    );
    let r = migration_admission(
        &vmim("vm1"),
        &MigrationRequestContext {
            vmi_phase: Some("Scheduled"),
            migratability: &bad,
            already_migrating: true,
            feature_gates: &[],
        },
    );
    let messages: Vec<String> = r.errors().map(|v| v.message.clone()).collect();
    assert!(r.errors().all(|v| v.path == "spec.vmiName"));
    for expected in [
        "LiveMigration feature gate is off",
        "Scheduled, not Running",
        "already migrating",
        "DisksNotLiveMigratable",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(expected)),
            "{expected:?} missing from {messages:?}"
        );
    }
    let r = migration_admission(&vmim(""), &ok);
    assert_eq!(r.errors().next().unwrap().message, "vmiName is required");
}
