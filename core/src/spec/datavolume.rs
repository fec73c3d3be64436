//! CDI objects: DataVolume and CDIConfig.

use serde::{Deserialize, Serialize};

use super::{Empty, ObjectMeta, ResourceList};
use crate::string_enum;

/// The `apiVersion` values accepted for CDI objects.
pub const CDI_API_VERSIONS: &[&str] = &["cdi.kubevirt.io/v1beta1", "cdi.kubevirt.io/v1alpha1"];

/// `kind: DataVolume`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DataVolume {
    /// `cdi.kubevirt.io/v1alpha1` or `v1beta1`.
    pub api_version: String,
    /// `DataVolume`.
    pub kind: String,
    /// Name, namespace.
    pub metadata: ObjectMeta,
    /// Source and target.
    pub spec: DataVolumeSpec,
    /// Phase and progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<DataVolumeStatus>,
}

/// DataVolume `spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DataVolumeSpec {
    /// Exactly one source.
    pub source: DataVolumeSource,
    /// The target volume.
    pub pvc: PvcSpec,
    /// `kubevirt` (default) or `archive`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<ContentType>,
}

string_enum! {
    /// DataVolume content types.
    pub enum ContentType {
        /// A disk image.
        Kubevirt = "kubevirt",
        /// A tar extracted into a filesystem volume.
        Archive = "archive",
    }
}

/// `spec.source`: exactly one member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DataVolumeSource {
    /// HTTP(S) URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    /// S3 endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Source>,
    /// Container registry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySource>,
    /// Clone of another volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcCloneSource>,
    /// Filled by an upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload: Option<Empty>,
    /// A sparse empty image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blank: Option<Empty>,
}

impl DataVolumeSource {
    /// The source kinds present.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (present, name) in [
            (self.http.is_some(), "http"),
            (self.s3.is_some(), "s3"),
            (self.registry.is_some(), "registry"),
            (self.pvc.is_some(), "pvc"),
            (self.upload.is_some(), "upload"),
            (self.blank.is_some(), "blank"),
        ] {
            if present {
                v.push(name);
            }
        }
        v
    }
}

/// `source.http`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpSource {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Secret with `accessKeyId` / `secretKey` (basic auth); `""` = none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// ConfigMap with CA certificates; `""` = none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
}

/// `source.s3`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct S3Source {
    /// Object URL.
    pub url: String,
    /// Credentials Secret; `""` = none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
}

/// `source.registry`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RegistrySource {
    /// `docker://registry/image:tag`.
    pub url: String,
    /// Credentials Secret; `""` = none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// CA ConfigMap; `""` = none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
}

/// `source.pvc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PvcCloneSource {
    /// Source namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Source claim.
    pub name: String,
}

/// `spec.pvc`: the target volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PvcSpec {
    /// `ReadWriteOnce`, `ReadOnlyMany`, `ReadWriteMany`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<AccessMode>,
    /// `requests.storage` is the size.
    pub resources: PvcResources,
    /// Named place where the target is created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// `Filesystem` (default) or `Block`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<VolumeMode>,
}

/// `pvc.resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PvcResources {
    /// `storage: 2Gi`.
    #[serde(skip_serializing_if = "ResourceList::is_empty")]
    pub requests: ResourceList,
}

string_enum! {
    /// PVC access modes.
    pub enum AccessMode {
        /// One writer host.
        ReadWriteOnce = "ReadWriteOnce",
        /// Many readers.
        ReadOnlyMany = "ReadOnlyMany",
        /// Many writers (needed for live migration).
        ReadWriteMany = "ReadWriteMany",
    }
}

string_enum! {
    /// Volume modes.
    pub enum VolumeMode {
        /// A file on a filesystem.
        Filesystem = "Filesystem",
        /// A raw block device.
        Block = "Block",
    }
}

/// DataVolume `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DataVolumeStatus {
    /// `Pending`, `ImportInProgress`, `Succeeded`, `Failed`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// A percentage string such as `"45.20%"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
}

/// `kind: CDIConfig` (one object named `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CdiConfig {
    /// `cdi.kubevirt.io/v1alpha1` or `v1beta1`.
    pub api_version: String,
    /// `CDIConfig`.
    pub kind: String,
    /// Name (`config`).
    pub metadata: ObjectMeta,
    /// Settings.
    pub spec: CdiConfigSpec,
}

/// CDIConfig `spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CdiConfigSpec {
    /// Storage class for scratch space.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scratch_space_storage_class: Option<String>,
}
