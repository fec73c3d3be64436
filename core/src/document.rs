//! Parsing KubeVirt YAML/JSON into typed objects.
//!
//! Input may hold several YAML documents (`---`) or a `kind: List`. Each
//! document is read into a JSON value, dispatched on `kind`, and
//! deserialized with two observers: `serde_path_to_error` gives a type
//! error its full path, and `serde_ignored` records every unknown field.
//! In [`Mode::Strict`] unknown fields are errors; in [`Mode::Lenient`] they
//! are warnings and are written back by [`Document::to_value`], so nothing
//! the user wrote is lost. Known fields in the wrong place (the seeds'
//! `domain` under `spec.template`, `storageClassName` under a DataVolume's
//! `spec`, …) are errors in both modes, naming the canonical path.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::spec::cluster::{ConfigMap, HyperConverged, Secret};
use crate::spec::datavolume::{CdiConfig, DataVolume};
use crate::spec::network::{NetworkAttachmentDefinition, SriovNetwork, SriovNetworkNodePolicy};
use crate::spec::service::Service;
use crate::spec::vm::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstancePreset,
};
use crate::validate::Report;

/// How unknown fields are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Unknown fields are errors.
    #[default]
    Strict,
    /// Unknown fields are warnings and are kept for re-serialization.
    Lenient,
}

/// A typed object of one of the supported kinds.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    /// `VirtualMachine`.
    VirtualMachine(VirtualMachine),
    /// `VirtualMachineInstance`.
    VirtualMachineInstance(VirtualMachineInstance),
    /// `VirtualMachineInstanceMigration`.
    VirtualMachineInstanceMigration(VirtualMachineInstanceMigration),
    /// `VirtualMachineInstancePreset`.
    VirtualMachineInstancePreset(VirtualMachineInstancePreset),
    /// `DataVolume`.
    DataVolume(DataVolume),
    /// `CDIConfig`.
    CdiConfig(CdiConfig),
    /// `NetworkAttachmentDefinition`.
    NetworkAttachmentDefinition(NetworkAttachmentDefinition),
    /// `SriovNetworkNodePolicy`.
    SriovNetworkNodePolicy(SriovNetworkNodePolicy),
    /// `SriovNetwork`.
    SriovNetwork(SriovNetwork),
    /// `HyperConverged`.
    HyperConverged(HyperConverged),
    /// `ConfigMap` (e.g. `kubevirt-config`).
    ConfigMap(ConfigMap),
    /// `Secret` (import credentials).
    Secret(Secret),
    /// `Service` exposing VMs.
    Service(Service),
}

/// The kinds this crate parses.
pub const SUPPORTED_KINDS: &[&str] = &[
    "VirtualMachine",
    "VirtualMachineInstance",
    "VirtualMachineInstanceMigration",
    "VirtualMachineInstancePreset",
    "DataVolume",
    "CDIConfig",
    "NetworkAttachmentDefinition",
    "SriovNetworkNodePolicy",
    "SriovNetwork",
    "HyperConverged",
    "ConfigMap",
    "Secret",
    "Service",
];

impl Object {
    /// The object's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::VirtualMachine(_) => "VirtualMachine",
            Object::VirtualMachineInstance(_) => "VirtualMachineInstance",
            Object::VirtualMachineInstanceMigration(_) => "VirtualMachineInstanceMigration",
            Object::VirtualMachineInstancePreset(_) => "VirtualMachineInstancePreset",
            Object::DataVolume(_) => "DataVolume",
            Object::CdiConfig(_) => "CDIConfig",
            Object::NetworkAttachmentDefinition(_) => "NetworkAttachmentDefinition",
            Object::SriovNetworkNodePolicy(_) => "SriovNetworkNodePolicy",
            Object::SriovNetwork(_) => "SriovNetwork",
            Object::HyperConverged(_) => "HyperConverged",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Secret(_) => "Secret",
            Object::Service(_) => "Service",
        }
    }

    /// The object's `metadata.name`, if set.
    pub fn name(&self) -> Option<&str> {
        let m = match self {
            Object::VirtualMachine(o) => &o.metadata,
            Object::VirtualMachineInstance(o) => &o.metadata,
            Object::VirtualMachineInstanceMigration(o) => &o.metadata,
            Object::VirtualMachineInstancePreset(o) => &o.metadata,
            Object::DataVolume(o) => &o.metadata,
            Object::CdiConfig(o) => &o.metadata,
            Object::NetworkAttachmentDefinition(o) => &o.metadata,
            Object::SriovNetworkNodePolicy(o) => &o.metadata,
            Object::SriovNetwork(o) => &o.metadata,
            Object::HyperConverged(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
        };
        m.name.as_deref()
    }

    fn to_value(&self) -> Result<Value, serde_json::Error> {
        match self {
            Object::VirtualMachine(o) => serde_json::to_value(o),
            Object::VirtualMachineInstance(o) => serde_json::to_value(o),
            Object::VirtualMachineInstanceMigration(o) => serde_json::to_value(o),
            Object::VirtualMachineInstancePreset(o) => serde_json::to_value(o),
            Object::DataVolume(o) => serde_json::to_value(o),
            Object::CdiConfig(o) => serde_json::to_value(o),
            Object::NetworkAttachmentDefinition(o) => serde_json::to_value(o),
            Object::SriovNetworkNodePolicy(o) => serde_json::to_value(o),
            Object::SriovNetwork(o) => serde_json::to_value(o),
            Object::HyperConverged(o) => serde_json::to_value(o),
            Object::ConfigMap(o) => serde_json::to_value(o),
            Object::Secret(o) => serde_json::to_value(o),
            Object::Service(o) => serde_json::to_value(o),
        }
    }
}

/// A field the model does not know, with its path and value.
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownField {
    /// Path segments from the document root.
    pub segments: Vec<Segment>,
    /// The value as written.
    pub value: Value,
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A map key.
    Key(String),
    /// A list index.
    Index(usize),
}

/// Render segments as `a.b[1].c`.
pub fn render_path(segments: &[Segment]) -> String {
    let mut s = String::new();
    for seg in segments {
        match seg {
            Segment::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Segment::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// One parsed document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Position in the input (0-based, after `List` expansion).
    pub index: usize,
    /// The typed object.
    pub object: Object,
    /// Fields the model does not know, kept in lenient mode.
    pub unknown_fields: Vec<UnknownField>,
    /// Problems found while parsing (unknown and misplaced fields).
    pub parse_report: Report,
    /// The mode it was parsed in.
    pub mode: Mode,
}

/// A document that could not be turned into a typed object at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {document}: {path}: {message}")]
pub struct ParseError {
    /// Position in the input (0-based).
    pub document: usize,
    /// Field path of the problem (`<root>` for the whole document).
    pub path: String,
    /// What was wrong.
    pub message: String,
}

/// Parse every document in `text` (YAML, JSON, or multi-document YAML).
/// Each entry is a document or the reason it could not be read; one bad
/// document does not hide the others.
pub fn parse_all(text: &str, mode: Mode) -> Vec<Result<Document, ParseError>> {
    let mut out = Vec::new();
    let mut index = 0usize;
    for de in serde_yaml_ng::Deserializer::from_str(text) {
        let value = match serde_path_to_error::deserialize::<_, Value>(de) {
            Ok(v) => v,
            Err(e) => {
                out.push(Err(ParseError {
                    document: index,
                    path: root_or(e.path().to_string()),
                    message: e.inner().to_string(),
                }));
                // A YAML syntax error leaves the stream unusable.
                break;
            }
        };
        if value.is_null() {
            continue; // empty document, e.g. a trailing `---`
        }
        let items = match value.get("kind").and_then(Value::as_str) {
            Some("List") => match value.get("items") {
                Some(Value::Array(items)) => items.clone(),
                _ => vec![value],
            },
            _ => vec![value],
        };
        for item in items {
            out.push(parse_value(item, index, mode));
            index += 1;
        }
    }
    out
}

/// Parse text that must hold exactly one document.
pub fn parse_one(text: &str, mode: Mode) -> Result<Document, ParseError> {
    let mut all = parse_all(text, mode);
    match all.len() {
        1 => all.remove(0),
        n => Err(ParseError {
            document: 0,
            path: "<root>".into(),
            message: format!("expected exactly one document, found {n}"),
        }),
    }
}

fn root_or(p: String) -> String {
    if p.is_empty() || p == "." {
        "<root>".to_string()
    } else {
        p
    }
}

/// Parse one JSON value already read from YAML or JSON.
pub fn parse_value(value: Value, index: usize, mode: Mode) -> Result<Document, ParseError> {
    let err = |path: &str, message: String| ParseError {
        document: index,
        path: path.to_string(),
        message,
    };
    if !value.is_object() {
        return Err(err(
            "<root>",
            "a document must be a mapping (an object)".into(),
        ));
    }
    let kind = match value.get("kind") {
        Some(Value::String(k)) => k.clone(),
        Some(_) => return Err(err("kind", "must be a string".into())),
        None => {
            return Err(err(
                "kind",
                format!("is required; one of: {}", SUPPORTED_KINDS.join(", ")),
            ))
        }
    };
    let mut unknown = Vec::new();
    let object = match kind.as_str() {
        "VirtualMachine" => Object::VirtualMachine(typed(&value, &mut unknown, index)?),
        "VirtualMachineInstance" => {
            Object::VirtualMachineInstance(typed(&value, &mut unknown, index)?)
        }
        "VirtualMachineInstanceMigration" => {
            Object::VirtualMachineInstanceMigration(typed(&value, &mut unknown, index)?)
        }
        "VirtualMachineInstancePreset" => {
            Object::VirtualMachineInstancePreset(typed(&value, &mut unknown, index)?)
        }
        "DataVolume" => Object::DataVolume(typed(&value, &mut unknown, index)?),
        "CDIConfig" => Object::CdiConfig(typed(&value, &mut unknown, index)?),
        "NetworkAttachmentDefinition" => {
            Object::NetworkAttachmentDefinition(typed(&value, &mut unknown, index)?)
        }
        "SriovNetworkNodePolicy" => {
            Object::SriovNetworkNodePolicy(typed(&value, &mut unknown, index)?)
        }
        "SriovNetwork" => Object::SriovNetwork(typed(&value, &mut unknown, index)?),
        "HyperConverged" => Object::HyperConverged(typed(&value, &mut unknown, index)?),
        "ConfigMap" => Object::ConfigMap(typed(&value, &mut unknown, index)?),
        "Secret" => Object::Secret(typed(&value, &mut unknown, index)?),
        "Service" => Object::Service(typed(&value, &mut unknown, index)?),
        "VirtualMachineInstanceReplicaSet" => return Err(err(
            "kind",
            "VirtualMachineInstanceReplicaSet is not supported (VM replica sets are unsupported)"
                .into(),
        )),
        other => {
            return Err(err(
                "kind",
                format!(
                    "unsupported kind {other:?}; one of: {}",
                    SUPPORTED_KINDS.join(", ")
                ),
            ))
        }
    };
    let mut doc = Document {
        index,
        object,
        unknown_fields: Vec::new(),
        parse_report: Report::default(),
        mode,
    };
    for segments in unknown {
        let value = lookup(&value, &segments).cloned().unwrap_or(Value::Null);
        classify_unknown(&mut doc, segments, value);
    }
    Ok(doc)
}

fn typed<T: DeserializeOwned>(
    value: &Value,
    unknown: &mut Vec<Vec<Segment>>,
    index: usize,
) -> Result<T, ParseError> {
    let mut cb = |path: serde_ignored::Path| unknown.push(segments_of(&path));
    let de = serde_ignored::Deserializer::new(value, &mut cb);
    serde_path_to_error::deserialize(de).map_err(|e| ParseError {
        document: index,
        path: root_or(e.path().to_string()),
        message: e.inner().to_string(),
    })
}

fn segments_of(path: &serde_ignored::Path) -> Vec<Segment> {
    use serde_ignored::Path as I;
    let mut v = match path {
        I::Root => return Vec::new(),
        I::Seq { parent, .. }
        | I::Map { parent, .. }
        | I::Some { parent }
        | I::NewtypeStruct { parent }
        | I::NewtypeVariant { parent } => segments_of(parent),
    };
    match path {
        I::Seq { index, .. } => v.push(Segment::Index(*index)),
        I::Map { key, .. } => v.push(Segment::Key(key.clone())),
        _ => {}
    }
    v
}

fn lookup<'a>(mut v: &'a Value, segments: &[Segment]) -> Option<&'a Value> {
    for s in segments {
        v = match s {
            Segment::Key(k) => v.get(k)?,
            Segment::Index(i) => v.get(*i)?,
        };
    }
    Some(v)
}

/// Known fields written in the wrong place: (object kind, path pattern with
/// `*` for any index, canonical path).
const MISPLACED: &[(&str, &str, &str)] = &[
    (
        "VirtualMachine",
        "spec.evictionStrategy",
        "spec.template.spec.evictionStrategy",
    ),
    (
        "VirtualMachine",
        "spec.terminationGracePeriodSeconds",
        "spec.template.spec.terminationGracePeriodSeconds",
    ),
    ("VirtualMachine", "spec.domain", "spec.template.spec.domain"),
    (
        "VirtualMachine",
        "spec.template.domain",
        "spec.template.spec.domain",
    ),
    (
        "VirtualMachine",
        "spec.affinity",
        "spec.template.spec.affinity",
    ),
    (
        "VirtualMachine",
        "spec.tolerations",
        "spec.template.spec.tolerations",
    ),
    (
        "VirtualMachine",
        "spec.nodeSelector",
        "spec.template.spec.nodeSelector",
    ),
    (
        "VirtualMachine",
        "spec.volumes",
        "spec.template.spec.volumes",
    ),
    (
        "VirtualMachine",
        "spec.networks",
        "spec.template.spec.networks",
    ),
    (
        "VirtualMachine",
        "spec.template.volumes",
        "spec.template.spec.volumes",
    ),
    (
        "VirtualMachine",
        "spec.template.networks",
        "spec.template.spec.networks",
    ),
    (
        "VirtualMachine",
        "spec.dataVolumeTemplates[*].spec.storageClassName",
        "spec.dataVolumeTemplates[*].spec.pvc.storageClassName",
    ),
    (
        "DataVolume",
        "spec.storageClassName",
        "spec.pvc.storageClassName",
    ),
    ("VirtualMachineInstance", "spec.template", "spec"),
];

/// Case-sensitive field names users most often mistype in case.
const CASE_HINTS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "spec",
    "status",
    "template",
    "domain",
    "devices",
    "disks",
    "interfaces",
    "networks",
    "volumes",
    "resources",
    "requests",
    "limits",
    "memory",
    "cpu",
    "bootOrder",
    "macAddress",
    "runStrategy",
    "dataVolumeTemplates",
    "evictionStrategy",
    "terminationGracePeriodSeconds",
    "secureBoot",
    "storageClassName",
    "accessModes",
    "volumeMode",
    "containerDisk",
    "cloudInitNoCloud",
    "persistentVolumeClaim",
    "dataVolume",
    "claimName",
    "userData",
];

fn matches_pattern(pattern: &str, path: &str) -> Option<Vec<String>> {
    // Compare with `[*]` matching any `[N]`; return the captured indices.
    let mut caps = Vec::new();
    let (mut p, mut s) = (pattern, path);
    loop {
        match p.find("[*]") {
            None => return (p == s).then_some(caps),
            Some(i) => {
                if !s.starts_with(&p[..i]) {
                    return None;
                }
                s = &s[i..];
                let close = s.find(']')?;
                if !s.starts_with('[') {
                    return None;
                }
                caps.push(s[1..close].to_string());
                s = &s[close + 1..];
                p = &p[i + 3..];
            }
        }
    }
}

fn classify_unknown(doc: &mut Document, segments: Vec<Segment>, value: Value) {
    let path = render_path(&segments);
    let kind = doc.object.kind();
    for (k, pattern, canonical) in MISPLACED {
        if *k != kind {
            continue;
        }
        if let Some(caps) = matches_pattern(pattern, &path) {
            let mut expected = canonical.to_string();
            for c in caps {
                expected = expected.replacen("[*]", &format!("[{c}]"), 1);
            }
            if path.ends_with("storageClassName") && doc.mode == Mode::Lenient {
                relocate_storage_class(doc, &segments, &value);
                doc.parse_report
                    .warn(&path, format!("misplaced field moved to {expected}"));
            } else {
                doc.parse_report.error(
                    &path,
                    format!("field is misplaced; it belongs at {expected}"),
                );
            }
            return;
        }
    }
    let last = match segments.last() {
        Some(Segment::Key(k)) => k.clone(),
        _ => String::new(),
    };
    let hint = CASE_HINTS
        .iter()
        .find(|h| h.eq_ignore_ascii_case(&last) && **h != last)
        .map(|h| format!(" (field names are case-sensitive: did you mean `{h}`?)"))
        .unwrap_or_default();
    match doc.mode {
        Mode::Strict => doc
            .parse_report
            .error(&path, format!("unknown field{hint}")),
        Mode::Lenient => {
            if hint.is_empty() {
                doc.parse_report.warn(&path, "unknown field (kept)");
            } else {
                doc.parse_report
                    .error(&path, format!("unknown field{hint}"));
            }
            doc.unknown_fields.push(UnknownField { segments, value });
        }
    }
}

fn relocate_storage_class(doc: &mut Document, segments: &[Segment], value: &Value) {
    let Some(class) = value.as_str() else { return };
    let spec = match (&mut doc.object, segments) {
        (Object::DataVolume(dv), _) => &mut dv.spec,
        (Object::VirtualMachine(vm), [_, _, Segment::Index(i), ..]) => {
            match vm.spec.data_volume_templates.get_mut(*i) {
                Some(t) => &mut t.spec,
                None => return,
            }
        }
        _ => return,
    };
    if spec.pvc.storage_class_name.is_none() {
        spec.pvc.storage_class_name = Some(class.to_string());
    }
}

impl Document {
    /// The object as a JSON value, with lenient-mode unknown fields put
    /// back where they were.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        let mut v = self.object.to_value()?;
        for u in &self.unknown_fields {
            insert(&mut v, &u.segments, u.value.clone());
        }
        Ok(v)
    }

    /// The object as YAML (with kept unknown fields).
    pub fn to_yaml(&self) -> Result<String, serde_yaml_ng::Error> {
        let v = self
            .to_value()
            .map_err(<serde_yaml_ng::Error as serde::ser::Error>::custom)?;
        serde_yaml_ng::to_string(&v)
    }
}

fn insert(root: &mut Value, segments: &[Segment], value: Value) {
    let Some((last, parents)) = segments.split_last() else {
        return;
    };
    let mut cur = root;
    for s in parents {
        cur = match s {
            Segment::Key(k) => {
                let Some(map) = cur.as_object_mut() else {
                    return;
                };
                map.entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
            }
            Segment::Index(i) => match cur.get_mut(*i) {
                Some(v) => v,
                None => return,
            },
        };
    }
    if let (Segment::Key(k), Some(map)) = (last, cur.as_object_mut()) {
        map.insert(k.clone(), value);
    }
}

/// Parse, then report every problem (parse-time and validation) of each
/// document. The convenience entry point of `virtkit-validate`.
pub fn check_text(text: &str, mode: Mode) -> Vec<Result<(Document, Report), ParseError>> {
    parse_all(text, mode)
        .into_iter()
        .map(|r| {
            r.map(|doc| {
                let report = crate::validate::validate_document(&doc);
                (doc, report)
            })
        })
        .collect()
}
