//! Registry imports against Debian's `docker-registry` on loopback, with
//! TLS from the test CA and htpasswd (bcrypt) auth: a containerDisk image
//! pushed by the test (one gzip layer holding `disk/disk.qcow2`) imports to
//! the same bytes as `qemu-img convert`; wrong credentials, an unknown CA
//! and a compressed disk file are refused with their own reasons.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use oci_client::client::{ClientConfig, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use virtkit_storage::import::{import, ImportError, ImportOptions, Objects, ScratchSpace};

fn layer_with(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_path("disk/").unwrap();
    h.set_mode(0o755);
    h.set_size(0);
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

fn push(port: u16, ca_pem: &str, repo: &str, layer: Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = Client::new(ClientConfig {
        extra_root_certificates: vec![oci_client::client::Certificate {
            encoding: oci_client::client::CertificateEncoding::Pem,
            data: ca_pem.as_bytes().to_vec(),
        }],
        ..Default::default()
    });
    let reference: Reference = format!("localhost:{port}/{repo}:latest").parse().unwrap();
    let config = Config::new(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec(),
        "application/vnd.oci.image.config.v1+json".into(),
        None,
    );
    let layers = [ImageLayer::new(
        layer,
        "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        None,
    )];
    let auth = RegistryAuth::Basic("pusher".into(), "push-pw".into());
    rt.block_on(client.push(&reference, &layers, config, &auth, None))
        .unwrap();
}

fn registry_dv(url: &str, extra: &str) -> virtkit_core::spec::datavolume::DataVolume {
    dv(&format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {{name: r, namespace: ns}}\nspec:\n  source:\n    registry:\n      url: \"{url}\"\n{extra}  pvc:\n    accessModes: [ReadWriteOnce]\n    resources: {{requests: {{storage: 32Mi}}}}\n"
    ))
}

fn objects(ca_pem: &str, password: &str) -> Objects {
    credential_objects("reg-creds", "pusher", password, "reg-ca", ca_pem)
}

#[test]
fn containerdisk_from_a_tls_registry_with_auth() {
    if !qemu_img()
        || !Path::new("/usr/bin/docker-registry").exists()
        || !have("htpasswd", "apache2-utils")
    {
        eprintln!("SKIP: needs qemu-img, docker-registry and htpasswd");
        return;
    }
    let d = dir("registry");
    let scratch = d.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let ca = TestCa::new();
    std::fs::write(d.join("server.pem"), &ca.cert_pem).unwrap();
    std::fs::write(d.join("server.key"), &ca.key_pem).unwrap();
    sh(&format!(
        "htpasswd -Bbn pusher push-pw > {}/htpasswd",
        d.display()
    ));
    let port = free_port();
    let conf = format!(
        "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {w}/data}}}}\nhttp:\n  addr: 127.0.0.1:{port}\n  tls: {{certificate: {w}/server.pem, key: {w}/server.key}}\nauth:\n  htpasswd: {{realm: virtkit, path: {w}/htpasswd}}\n",
        w = d.display()
    );
    std::fs::write(d.join("config.yml"), conf).unwrap();
    let _registry = Peer(
        Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    let raw = source_raw(&d);
    let q = qcow2_of(&raw, &d.join("disk.qcow2"));
    let expected = oracle(&raw, &d.join("oracle.raw"), 32 << 20);
    push(
        port,
        &ca.ca_pem,
        "vm/fedora",
        layer_with("disk/disk.qcow2", &std::fs::read(&q).unwrap()),
    );
    let opts = ImportOptions {
        scratch: Some(ScratchSpace::new(&scratch)),
        ..Default::default()
    };
    let ok = objects(&ca.ca_pem, "push-pw");
    let both = "      secretRef: reg-creds\n      certConfigMap: reg-ca\n";
    let url = format!("docker://localhost:{port}/vm/fedora:latest");
    let t = d.join("disk.img");
    let out = import(&registry_dv(&url, both), &t, &ok, &opts, &|_| {}).unwrap();
    assert_eq!(out.source, "registry");
    assert_eq!(out.format.as_deref(), Some("qcow2"));
    assert!(out.scratch_bytes > 0, "registry imports always use scratch");
    assert_same(&t, &expected);

    // Wrong password.
    let e = import(
        &registry_dv(&url, both),
        &d.join("w.img"),
        &objects(&ca.ca_pem, "nope"),
        &opts,
        &|_| {},
    )
    .unwrap_err();
    assert!(matches!(e, ImportError::Unauthorized { .. }), "{e}");
    assert!(!format!("{e:?}").contains("nope"));
    // No CA: TLS refuses.
    let e = import(
        &registry_dv(&url, "      secretRef: reg-creds\n"),
        &d.join("t.img"),
        &ok,
        &opts,
        &|_| {},
    )
    .unwrap_err();
    assert!(
        matches!(e, ImportError::Tls { .. } | ImportError::Registry(_)),
        "{e}"
    );
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // A gzip disk file is a ✗ cell.
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, &std::fs::read(&raw).unwrap()).unwrap();
        e.finish().unwrap()
    };
    push(
        port,
        &ca.ca_pem,
        "vm/gz",
        layer_with("disk/disk.img.gz", &gz),
    );
    let url = format!("docker://localhost:{port}/vm/gz:latest");
    let e = import(
        &registry_dv(&url, both),
        &d.join("g.img"),
        &ok,
        &opts,
        &|_| {},
    )
    .unwrap_err();
    assert!(matches!(e, ImportError::Unsupported { .. }), "{e}");
    assert!(!d.join("g.img").exists() && !d.join("w.img").exists());
    assert!(leftovers(&scratch).is_empty());
}
