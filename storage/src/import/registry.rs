//! `source.registry`: pull a containerDisk image from an OCI registry
//! (`docker://host[:port]/repo[:tag|@digest]`) with basic auth and extra
//! trust roots, find the disk file under `disk/` in its layers (the top
//! layer wins), store it in scratch space while the layer's digest is
//! verified, then convert it. Layers stream straight from the registry
//! through the decompressor and the tar reader: only the disk itself
//! touches scratch.

use std::path::{Component, Path};

use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::chunks::ChunkReader;
use super::content::peel;
use super::error::redact_url;
use super::resolve::Credentials;
use super::{ImportError, Job, Random};
use crate::format::Format;
use crate::matrix::Source;

fn runtime() -> Result<tokio::runtime::Runtime, ImportError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ImportError::Registry(format!("async runtime: {e}")))
}

fn oci_error(e: OciDistributionError, shown: &str) -> ImportError {
    match &e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => ImportError::Unauthorized {
            url: shown.to_string(),
            status: 401,
        },
        _ => match super::http::tls_failure(&e) {
            Some(reason) => ImportError::Tls {
                url: shown.to_string(),
                reason,
            },
            None => ImportError::Registry(format!("{shown}: {e}")),
        },
    }
}

/// Whether a layer path names the disk: a regular file directly under
/// `disk/` at the image root.
fn is_disk_path(path: &Path) -> bool {
    let parts: Vec<_> = path
        .components()
        .filter(|c| !matches!(c, Component::CurDir | Component::RootDir))
        .collect();
    matches!(parts.as_slice(), [Component::Normal(d), Component::Normal(_)] if *d == "disk")
}

/// Stream one layer blob from the registry on a thread of its own.
fn stream_layer(
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
    layer: OciDescriptor,
) -> ChunkReader {
    let (tx, reader) = ChunkReader::channel(16);
    std::thread::spawn(move || {
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => {
                tx.fail_blocking(std::io::Error::other(e));
                return;
            }
        };
        rt.block_on(async {
            client
                .store_auth_if_needed(reference.resolve_registry(), &auth)
                .await;
            match client.pull_blob_stream(&reference, &layer).await {
                Ok(mut s) => {
                    while let Some(chunk) = s.stream.next().await {
                        match chunk {
                            Ok(c) => {
                                if tx.send(c).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => return tx.fail(e).await,
                        }
                    }
                    tx.finish().await;
                }
                Err(e) => tx.fail(std::io::Error::other(e.to_string())).await,
            }
        });
    });
    reader
}

pub(super) fn import(
    job: &mut Job<'_>,
    url: &str,
    creds: Option<Credentials>,
    roots: &[Vec<u8>],
) -> Result<(), ImportError> {
    let shown = redact_url(url);
    let image = url
        .strip_prefix("docker://")
        .ok_or_else(|| ImportError::Registry(format!("{shown}: only docker:// is supported")))?;
    let reference: Reference = image
        .parse()
        .map_err(|e| ImportError::Registry(format!("{shown}: {e}")))?;
    let config = ClientConfig {
        protocol: ClientProtocol::HttpsExcept(job.opts.insecure_registries.clone()),
        extra_root_certificates: roots
            .iter()
            .map(|der| Certificate {
                encoding: CertificateEncoding::Der,
                data: der.clone(),
            })
            .collect(),
        ..Default::default()
    };
    let client = Client::new(config);
    let auth = match creds {
        Some(c) => RegistryAuth::Basic(c.user, c.password),
        None => RegistryAuth::Anonymous,
    };
    let rt = runtime()?;
    let (manifest, _) = rt
        .block_on(client.pull_image_manifest(&reference, &auth))
        .map_err(|e| oci_error(e, &shown))?;
    drop(rt);
    let reason = crate::matrix::scratch_reason(Source::Registry, job.content, false)
        .unwrap_or("registry import");
    for layer in manifest.layers.iter().rev() {
        let mut blob = stream_layer(
            client.clone(),
            reference.clone(),
            auth.clone(),
            layer.clone(),
        );
        let found = {
            let peeled = peel(Box::new(&mut blob))?;
            if peeled.format != Format::Tar {
                return Err(ImportError::Registry(format!(
                    "{shown}: layer {} is not a tar ({})",
                    layer.digest,
                    peeled.describe()
                )));
            }
            let mut archive = tar::Archive::new(peeled.reader);
            let mut found = None;
            for entry in archive.entries().map_err(|e| lift_layer(e, &shown))? {
                let entry = entry.map_err(|e| lift_layer(e, &shown))?;
                let path = entry.path().map_err(|e| lift_layer(e, &shown))?;
                if entry.header().entry_type().is_file() && is_disk_path(&path) {
                    found = Some(job.spool(Box::new(entry), reason)?);
                    break;
                }
            }
            found
        };
        // Read the rest so the stream's digest check runs.
        std::io::copy(&mut blob, &mut std::io::sink()).map_err(|e| lift_layer(e, &shown))?;
        if let Some(sf) = found {
            let len = sf.file.metadata()?.len();
            let reader = Box::new(std::io::Read::take(&sf.file, len));
            return job.image(
                reader,
                Some(Source::Registry),
                !roots.is_empty(),
                Random::Scratch(&sf.file),
            );
        }
    }
    Err(ImportError::Registry(format!(
        "{shown}: no file under /disk/ in the image's layers"
    )))
}

fn lift_layer(e: std::io::Error, shown: &str) -> ImportError {
    match super::lift_io(e) {
        ImportError::Image(crate::ImageError::Io(io)) => {
            ImportError::Registry(format!("{shown}: layer: {io}"))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_paths() {
        assert!(is_disk_path(Path::new("disk/disk.qcow2")));
        assert!(is_disk_path(Path::new("./disk/x.img")));
        assert!(is_disk_path(Path::new("/disk/x.img")));
        assert!(!is_disk_path(Path::new("disk")));
        assert!(!is_disk_path(Path::new("disk/sub/x.img")));
        assert!(!is_disk_path(Path::new("other/disk.img")));
    }
}
