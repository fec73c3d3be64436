//! Typed KubeVirt / CDI / Multus / SR-IOV objects with their KubeVirt field
//! names, so real YAML and JSON parse unchanged.
//!
//! Design rules (see `core/DESIGN.md`):
//! - Every struct is `#[serde(default)]`: a missing required field parses as
//!   empty and is reported by [`crate::validate`] with its path, together
//!   with every other problem, instead of stopping the parse at the first one.
//! - Enumerated strings are [`string_enum!`](crate::string_enum) types with an `Unknown(String)`
//!   variant for the same reason; numbers that have ranges are `i64`.
//! - Unknown fields are not stored in the structs; [`crate::document`]
//!   collects them with their paths (strict mode reports them, lenient mode
//!   keeps them and writes them back on serialization).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub mod affinity;
pub mod cluster;
pub mod datavolume;
pub mod network;
pub mod service;
pub mod vm;
pub mod vmi;

/// Defines a string enum that round-trips its KubeVirt spelling and keeps
/// any other value as `Unknown(String)` for validation to report.
#[macro_export]
macro_rules! string_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this version does not know; validation reports it.
            Unknown(String),
        }
        impl $name {
            /// Every accepted spelling, for error messages.
            pub const ALLOWED: &'static [&'static str] = &[$($text),+];
            /// The KubeVirt spelling of this value.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Unknown(s) => s.as_str(),
                }
            }
            /// True for values outside [`Self::ALLOWED`].
            pub fn is_unknown(&self) -> bool {
                matches!(self, Self::Unknown(_))
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $($text => Self::$variant,)+
                    other => Self::Unknown(other.to_string()),
                }
            }
        }
        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Ok(Self::from(s.as_str()))
            }
        }
    };
}

/// A marker object written `{}` in YAML, such as `masquerade: {}` or
/// `upload: {}`. A YAML `null` (`masquerade:`) is accepted as the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Empty;

impl Serialize for Empty {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

impl<'de> Deserialize<'de> for Empty {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Empty;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an empty object {}")
            }
            fn visit_unit<E>(self) -> Result<Empty, E> {
                Ok(Empty)
            }
            fn visit_none<E>(self) -> Result<Empty, E> {
                Ok(Empty)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Empty, A::Error> {
                if let Some(k) = m.next_key::<String>()? {
                    return Err(serde::de::Error::custom(format!(
                        "expected an empty object {{}}, found key {k:?}"
                    )));
                }
                Ok(Empty)
            }
        }
        d.deserialize_any(V)
    }
}

/// A flag object such as `acpi: {}` or `smm: {enabled: false}`: present
/// means on unless `enabled` is false.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FeatureState {
    /// Explicit on/off; absent means on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl FeatureState {
    /// Whether a present flag object turns the feature on.
    pub fn is_on(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
}

/// Kubernetes `metadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Object name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Prefix for a generated name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    /// Namespace (used only for the same-namespace rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels, such as `kubevirt.io/vm: <name>`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations, such as `sidecar.istio.io/inject`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Creation time; exported YAML shows `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// Server-assigned unique id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Server-assigned version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// A `{name: ...}` reference to another object (Secret, ConfigMap).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LocalObjectReference {
    /// The referenced object's name.
    pub name: String,
}

/// A resource map such as `requests: {memory: 64Mi, cpu: "2"}`.
pub type ResourceList = BTreeMap<String, crate::Quantity>;

/// Kubernetes label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Exact label matches.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Expression matches.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<affinity::LabelSelectorRequirement>,
}
