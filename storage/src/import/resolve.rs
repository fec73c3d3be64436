//! What a DataVolume names but does not hold: the Secret with credentials,
//! the ConfigMap with CA certificates, the volume a clone copies. The
//! embedding program answers through [`Resolver`]; [`Objects`] is a ready
//! in-memory one, filled from parsed YAML documents or by hand.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use virtkit_core::document::Object;
use virtkit_core::spec::cluster::{ConfigMap, Secret};

use super::ImportError;

/// Looks up the objects a DataVolume refers to, in its namespace only
/// (ST-8).
pub trait Resolver: Send + Sync {
    /// The Secret `name` in `namespace`.
    fn secret(&self, namespace: &str, name: &str) -> Option<Secret>;
    /// The ConfigMap `name` in `namespace`.
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap>;
    /// The file or block device behind volume (PVC) `name` in `namespace`.
    fn volume(&self, namespace: &str, name: &str) -> Option<PathBuf>;
}

/// An in-memory [`Resolver`].
#[derive(Debug, Default, Clone)]
pub struct Objects {
    secrets: BTreeMap<(String, String), Secret>,
    config_maps: BTreeMap<(String, String), ConfigMap>,
    volumes: BTreeMap<(String, String), PathBuf>,
}

fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_string(), name.to_string())
}

/// The namespace of an object without one.
pub const DEFAULT_NAMESPACE: &str = "default";

impl Objects {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a Secret (its namespace from its metadata, else `default`).
    pub fn add_secret(&mut self, s: Secret) -> &mut Self {
        let ns = s.metadata.namespace.clone();
        let name = s.metadata.name.clone().unwrap_or_default();
        self.secrets
            .insert(key(ns.as_deref().unwrap_or(DEFAULT_NAMESPACE), &name), s);
        self
    }

    /// Add a ConfigMap (its namespace from its metadata, else `default`).
    pub fn add_config_map(&mut self, c: ConfigMap) -> &mut Self {
        let ns = c.metadata.namespace.clone();
        let name = c.metadata.name.clone().unwrap_or_default();
        self.config_maps
            .insert(key(ns.as_deref().unwrap_or(DEFAULT_NAMESPACE), &name), c);
        self
    }

    /// Say where volume `namespace/name` lives.
    pub fn add_volume(&mut self, namespace: &str, name: &str, path: &Path) -> &mut Self {
        self.volumes
            .insert(key(namespace, name), path.to_path_buf());
        self
    }

    /// Take the Secrets and ConfigMaps among parsed documents.
    pub fn add_objects<'a>(&mut self, objects: impl IntoIterator<Item = &'a Object>) -> &mut Self {
        for o in objects {
            match o {
                Object::Secret(s) => {
                    self.add_secret(s.clone());
                }
                Object::ConfigMap(c) => {
                    self.add_config_map(c.clone());
                }
                _ => {}
            }
        }
        self
    }
}

impl Resolver for Objects {
    fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        self.secrets.get(&key(namespace, name)).cloned()
    }
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        self.config_maps.get(&key(namespace, name)).cloned()
    }
    fn volume(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        self.volumes.get(&key(namespace, name)).cloned()
    }
}

/// A user name and password. `Debug` and `Display` show neither.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `accessKeyId`.
    pub user: String,
    /// `secretKey`.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// `""` and absent both mean "none" (ST-5).
pub(crate) fn named(r: &Option<String>) -> Option<&str> {
    r.as_deref().filter(|s| !s.is_empty())
}

/// CDI's credentials Secret: `accessKeyId` and `secretKey`, base64. Both
/// absent = anonymous; one absent = the empty string.
pub(crate) fn credentials(
    resolver: &dyn Resolver,
    namespace: &str,
    secret_ref: &Option<String>,
) -> Result<Option<Credentials>, ImportError> {
    let Some(name) = named(secret_ref) else {
        return Ok(None);
    };
    let secret = resolver
        .secret(namespace, name)
        .ok_or_else(|| ImportError::NotFound {
            kind: "Secret",
            name: name.to_string(),
            namespace: namespace.to_string(),
        })?;
    let get = |k: &str| -> Result<Option<String>, ImportError> {
        secret
            .value(k)
            .map_err(|e| ImportError::Credentials(format!("Secret {name:?}: {e}")))?
            .map(|v| {
                String::from_utf8(v).map_err(|_| {
                    ImportError::Credentials(format!("Secret {name:?}: data.{k} is not UTF-8"))
                })
            })
            .transpose()
    };
    let (user, password) = (get("accessKeyId")?, get("secretKey")?);
    if user.is_none() && password.is_none() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        user: user.unwrap_or_default(),
        password: password.unwrap_or_default(),
    }))
}

/// Every PEM certificate under any key of the CA ConfigMap, as DER.
pub(crate) fn trust_roots(
    resolver: &dyn Resolver,
    namespace: &str,
    cert_config_map: &Option<String>,
) -> Result<Vec<Vec<u8>>, ImportError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let Some(name) = named(cert_config_map) else {
        return Ok(Vec::new());
    };
    let cm = resolver
        .config_map(namespace, name)
        .ok_or_else(|| ImportError::NotFound {
            kind: "ConfigMap",
            name: name.to_string(),
            namespace: namespace.to_string(),
        })?;
    let mut roots = Vec::new();
    for (k, pem) in &cm.data {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| {
                ImportError::Credentials(format!("ConfigMap {name:?}: data.{k}: bad PEM: {e}"))
            })?;
            roots.push(cert.to_vec());
        }
    }
    if roots.is_empty() {
        return Err(ImportError::Credentials(format!(
            "ConfigMap {name:?} holds no PEM certificate"
        )));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(ns: &str, data: &[(&str, &str)]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("creds".into());
        s.metadata.namespace = Some(ns.into());
        for (k, v) in data {
            s.data.insert(k.to_string(), v.to_string());
        }
        s
    }

    #[test]
    fn credentials_follow_cdi_key_names_and_namespace() {
        let mut o = Objects::new();
        o.add_secret(secret(
            "a",
            &[("accessKeyId", "dXNlcg=="), ("secretKey", "cGFzcw==")],
        ));
        let c = credentials(&o, "a", &Some("creds".into()))
            .unwrap()
            .unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("user", "pass"));
        assert_eq!(format!("{c:?}"), "Credentials(<redacted>)");
        // ST-8: another namespace does not see it.
        let e = credentials(&o, "b", &Some("creds".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Secret \"creds\" not found in namespace \"b\""
        );
        // ST-5: "" is none.
        assert!(credentials(&o, "a", &Some(String::new()))
            .unwrap()
            .is_none());
        // One key absent = empty string; both absent = anonymous.
        let mut o = Objects::new();
        o.add_secret(secret("a", &[("accessKeyId", "dXNlcg==")]));
        let c = credentials(&o, "a", &Some("creds".into()))
            .unwrap()
            .unwrap();
        assert_eq!(c.password, "");
        let mut o = Objects::new();
        o.add_secret(secret("a", &[]));
        assert!(credentials(&o, "a", &Some("creds".into()))
            .unwrap()
            .is_none());
        // ST-9: the key is named, never the value.
        let mut o = Objects::new();
        o.add_secret(secret("a", &[("secretKey", "hunter2!!")]));
        let e = credentials(&o, "a", &Some("creds".into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("data.secretKey") && !e.contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn ca_bundle_without_pem_is_an_error() {
        let mut o = Objects::new();
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("tls-certs".into());
        cm.data.insert("ca.pem".into(), "not a certificate".into());
        o.add_config_map(cm);
        let e = trust_roots(&o, DEFAULT_NAMESPACE, &Some("tls-certs".into())).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        assert!(trust_roots(&o, DEFAULT_NAMESPACE, &None)
            .unwrap()
            .is_empty());
    }
}
