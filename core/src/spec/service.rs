//! `kind: Service` (`v1`), modelled as far as exposing a VM needs (NET-6):
//! the type, the selector that picks the VM by its template labels, and
//! the ports with their `targetPort` on the guest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ObjectMeta;

/// A Kubernetes Service that exposes VMs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Service {
    /// `v1`.
    pub api_version: String,
    /// `Service`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// What is exposed and how.
    pub spec: ServiceSpec,
}

/// `Service.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub service_type: Option<String>,
    /// Labels a VM's `spec.template.metadata.labels` must carry.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// The exposed ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
}

/// One `Service.spec.ports[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServicePort {
    /// Name (required when there are several ports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The Service's port.
    pub port: i64,
    /// The guest's port: a number, or the name of an interface port;
    /// defaults to `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<TargetPort>,
    /// The node port (`NodePort`, `LoadBalancer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i64>,
}

/// `targetPort`: a number or a port name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    /// A port number.
    Number(i64),
    /// The name of a port declared on the VM's interface.
    Name(String),
}

impl ServiceSpec {
    /// The Service's type, `ClusterIP` when unset.
    pub fn service_type(&self) -> &str {
        self.service_type.as_deref().unwrap_or("ClusterIP")
    }

    /// Whether a VM whose template carries `labels` is selected (an
    /// empty selector selects nothing, as for a Service without one no
    /// endpoints are made).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.selector.is_empty() && self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}
