//! Validation that reports every problem at once, each with its field path,
//! like the KubeVirt admission webhook (but not stopping at the first).
//!
//! Validation never changes the object; run [`crate::defaults`] first if the
//! defaulted form is what should be checked.

mod migratable;
mod objects;
mod placement;
mod report;
mod service;
pub mod syntax;
mod vmi;

pub use migratable::{
    live_migratability, migration_admission, Blocker, Finding, Migratability, MigrationMethod,
    MigrationRequestContext, LIVE_MIGRATABLE, LIVE_MIGRATION_GATE,
};
pub use objects::{cert_config, cni_config, data_volume_spec, migration_config};
pub use report::{Report, Severity, Violation, P};
pub use service::{service_exposure, ExposedPort};
pub use vmi::{
    validate_vmi_spec, CLOUD_INIT_INLINE_LIMIT, ISTIO_INJECT_ANNOTATION, ISTIO_PORTS,
    MEMORY_LIMIT_HEADROOM, RESERVED_MASQUERADE_PORTS,
};

use crate::document::{Document, Object};

/// Every problem of a parsed document: parse-time findings (unknown and
/// misplaced fields) followed by the rules of its kind.
pub fn validate_document(doc: &Document) -> Report {
    let mut r = doc.parse_report.clone();
    r.extend(validate_object(&doc.object));
    r
}

/// The rules of an object's kind.
pub fn validate_object(obj: &Object) -> Report {
    let mut r = Report::default();
    match obj {
        Object::VirtualMachine(o) => objects::virtual_machine(o, &mut r),
        Object::VirtualMachineInstance(o) => objects::virtual_machine_instance(o, &mut r),
        Object::VirtualMachineInstanceMigration(o) => objects::migration(o, &mut r),
        Object::VirtualMachineInstancePreset(o) => objects::preset(o, &mut r),
        Object::DataVolume(o) => objects::data_volume(o, &mut r),
        Object::CdiConfig(o) => objects::cdi_config(o, &mut r),
        Object::NetworkAttachmentDefinition(o) => objects::nad(o, &mut r),
        Object::SriovNetworkNodePolicy(o) => objects::sriov_policy(o, &mut r),
        Object::SriovNetwork(o) => objects::sriov_network(o, &mut r),
        Object::HyperConverged(o) => objects::hyperconverged(o, &mut r),
        Object::ConfigMap(o) => objects::config_map(o, &mut r),
        Object::Secret(o) => objects::secret(o, &mut r),
        Object::Service(o) => service::service(o, &mut r),
    }
    r
}
