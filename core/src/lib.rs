//! virtkit-core: a KubeVirt-compatible VM spec model (parse, default,
//! validate) and, behind the `kvm` feature, the KVM runtime that runs it.
//!
//! ```
//! use virtkit_core::document::{parse_one, Mode};
//! use virtkit_core::validate::validate_document;
//!
//! let yaml = r#"
//! apiVersion: kubevirt.io/v1
//! kind: VirtualMachine
//! metadata: {name: demo}
//! spec:
//!   running: true
//!   template:
//!     spec:
//!       domain:
//!         cpu: {cores: 0}
//!         resources: {requests: {memory: 64Mi}}
//! "#;
//! let doc = parse_one(yaml, Mode::Strict).unwrap();
//! let report = validate_document(&doc);
//! assert!(!report.is_valid());
//! assert!(report.has_path("spec.template.spec.domain.cpu.cores"));
//! ```

pub mod accounting;
pub mod defaults;
pub mod document;
pub mod fuzzing;
pub mod quantity;
pub mod spec;
pub mod validate;

#[cfg(feature = "kvm")]
pub mod runtime;

#[cfg(feature = "payload")]
pub mod payload;

pub use quantity::{Quantity, QuantityError, QuantityFormat};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
