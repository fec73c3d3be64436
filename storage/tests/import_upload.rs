//! The upload server with `curl` as the client: raw bodies and multipart
//! forms, sync and async, over TLS with the test CA; tokens checked; the
//! final state readable after the client has gone.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use virtkit_storage::import::{ImportOptions, Phase, ScratchSpace};
use virtkit_storage::upload::{TlsIdentity, UploadServer};

fn upload_dv(size: &str) -> virtkit_core::spec::datavolume::DataVolume {
    dv(&format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {{name: up, namespace: ns}}\nspec:\n  source: {{upload: {{}}}}\n  pvc:\n    accessModes: [ReadWriteOnce]\n    resources: {{requests: {{storage: {size}}}}}\n"
    ))
}

fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn curl_uploads_raw_and_multipart_sync_and_async_over_tls() {
    if !qemu_img() || !have("curl", "curl") {
        return;
    }
    let d = dir("upload");
    let scratch = d.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let raw = source_raw(&d);
    let q = qcow2_of(&raw, &d.join("v3.qcow2"));
    sh(&format!("xz -k -0 -T1 {}", q.display()));
    let expected = oracle(&raw, &d.join("oracle.raw"), 32 << 20);
    let ca = TestCa::new();
    let ca_file = d.join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let opts = ImportOptions {
        scratch: Some(ScratchSpace::new(&scratch)),
        ..Default::default()
    };
    let tls = TlsIdentity {
        cert_pem: ca.cert_pem.clone().into_bytes(),
        key_pem: ca.key_pem.clone().into_bytes(),
    };
    let server = UploadServer::start("127.0.0.1:0".parse().unwrap(), Some(tls), opts).unwrap();
    let base = format!("https://localhost:{}", server.addr().port());
    let cacert = ca_file.to_str().unwrap();

    // Synchronous raw body: the answer comes after the import.
    let t1 = d.join("sync.img");
    let token = server.register(upload_dv("32Mi"), t1.clone()).unwrap();
    assert_eq!(
        server.status(&token).unwrap().progress.phase,
        Phase::UploadReady
    );
    let auth = format!("Authorization: Bearer {token}");
    let (rc, out) = curl(&[
        "--cacert",
        cacert,
        "-H",
        &auth,
        "--data-binary",
        &format!("@{}", q.display()),
        &format!("{base}/v1beta1/upload"),
    ]);
    assert_eq!((rc, out.as_str()), (0, "200"));
    assert_same(&t1, &expected);
    let st = server.status(&token).unwrap();
    assert_eq!(st.progress.phase, Phase::Succeeded);
    assert!(
        st.outcome.unwrap().unwrap().scratch_bytes > 0,
        "uploads go through scratch"
    );
    // The token is spent.
    let (_, out) = curl(&[
        "--cacert",
        cacert,
        "-H",
        &auth,
        "--data-binary",
        "x",
        &format!("{base}/v1beta1/upload"),
    ]);
    assert!(out.ends_with("409"), "{out}");

    // Asynchronous multipart form with a compressed qcow2.
    let t2 = d.join("form.img");
    let token = server.register(upload_dv("32Mi"), t2.clone()).unwrap();
    let auth = format!("Authorization: Bearer {token}");
    let (rc, out) = curl(&[
        "--cacert",
        cacert,
        "-H",
        &auth,
        "-F",
        &format!("file=@{}.xz", q.display()),
        &format!("{base}/v1beta1/upload-form-async"),
    ]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.ends_with("200"), "{out}");
    let st = server.wait(&token, Duration::from_secs(60)).unwrap();
    assert_eq!(st.progress.phase, Phase::Succeeded, "{st:?}");
    assert_same(&t2, &expected);
    // The status endpoint says the same to the client.
    let (_, out) = curl(&[
        "--cacert",
        cacert,
        "-H",
        &auth,
        &format!("{base}/v1beta1/status"),
    ]);
    assert!(out.contains("\"Succeeded\""), "{out}");

    // Wrong token, no token.
    let (_, out) = curl(&[
        "--cacert",
        cacert,
        "-H",
        "Authorization: Bearer nope",
        "--data-binary",
        "x",
        &format!("{base}/v1beta1/upload"),
    ]);
    assert!(out.ends_with("401"), "{out}");
    let (_, out) = curl(&[
        "--cacert",
        cacert,
        "--data-binary",
        "x",
        &format!("{base}/v1beta1/upload"),
    ]);
    assert!(out.ends_with("401"), "{out}");
    // Without the CA the client refuses the server.
    let (rc, _) = curl(&["--data-binary", "x", &format!("{base}/healthz")]);
    assert_ne!(rc, 0, "curl must not trust an unknown CA");

    // An upload too large for its DataVolume fails with both sizes.
    let t3 = d.join("small.img");
    let token = server.register(upload_dv("16Mi"), t3.clone()).unwrap();
    let auth = format!("Authorization: Bearer {token}");
    let (_, out) = curl(&[
        "--cacert",
        cacert,
        "-H",
        &auth,
        "--data-binary",
        &format!("@{}", q.display()),
        &format!("{base}/v1beta1/upload"),
    ]);
    assert!(
        out.contains("exceeds target size") && out.ends_with("400"),
        "{out}"
    );
    assert_eq!(server.status(&token).unwrap().progress.phase, Phase::Failed);
    assert!(!t3.exists());
    // A tar is not a disk image (ST-17).
    let token = server
        .register(upload_dv("16Mi"), d.join("tar.img"))
        .unwrap();
    let auth = format!("Authorization: Bearer {token}");
    sh(&format!("cd {} && tar cf x.tar src.raw", d.display()));
    let (_, out) = curl(&[
        "--cacert",
        cacert,
        "-H",
        &auth,
        "--data-binary",
        &format!("@{}", d.join("x.tar").display()),
        &format!("{base}/v1beta1/upload"),
    ]);
    assert!(
        out.contains("not supported") && out.ends_with("400"),
        "{out}"
    );
    drop(server);
    assert!(
        leftovers(&scratch).is_empty() && leftovers(&d).is_empty(),
        "{:?}",
        leftovers(&d)
    );
    assert!(!Path::new(&d.join("tar.img")).exists());
}

/// Send a raw upload by hand over plain HTTP: the request head, then
/// `body`, then close the connection at once without reading the answer.
fn send_and_hang_up(addr: std::net::SocketAddr, token: &str, len: usize, body: &[u8]) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1beta1/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    s.write_all(body).unwrap();
    s.flush().unwrap();
    s.shutdown(std::net::Shutdown::Both).unwrap();
}

/// A client that hangs up right after its last byte still gets its
/// upload imported, and the final state is readable afterwards; one that
/// hangs up half way through the body fails and leaves no target.
#[test]
fn clients_that_hang_up_early() {
    if !qemu_img() {
        return;
    }
    let d = dir("upload-hangup");
    let scratch = d.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let raw = source_raw(&d);
    let expected = oracle(&raw, &d.join("oracle.raw"), 32 << 20);
    let body = std::fs::read(&raw).unwrap();
    let opts = ImportOptions {
        scratch: Some(ScratchSpace::new(&scratch)),
        ..Default::default()
    };
    let server = UploadServer::start("127.0.0.1:0".parse().unwrap(), None, opts).unwrap();

    let whole = d.join("whole.img");
    let token = server.register(upload_dv("32Mi"), whole.clone()).unwrap();
    send_and_hang_up(server.addr(), &token, body.len(), &body);
    let st = server.wait(&token, Duration::from_secs(60)).unwrap();
    assert_eq!(st.progress.phase, Phase::Succeeded, "{st:?}");
    assert_same(&whole, &expected);

    let half = d.join("half.img");
    let token = server.register(upload_dv("32Mi"), half.clone()).unwrap();
    send_and_hang_up(server.addr(), &token, body.len(), &body[..body.len() / 2]);
    let st = server.wait(&token, Duration::from_secs(60)).unwrap();
    assert_eq!(st.progress.phase, Phase::Failed, "{st:?}");
    assert!(!half.exists());
    assert!(leftovers(&d).is_empty() && leftovers(&scratch).is_empty());
}

/// A renewed certificate is served from the next connection on; a bad
/// one is refused and the current one stays; a plain server cannot
/// switch.
#[test]
fn the_tls_certificate_is_replaced_without_a_restart() {
    if !have("curl", "curl") {
        return;
    }
    let d = dir("upload-cert");
    let (old, new) = (TestCa::new(), TestCa::new());
    let (old_ca, new_ca) = (d.join("old.pem"), d.join("new.pem"));
    std::fs::write(&old_ca, &old.ca_pem).unwrap();
    std::fs::write(&new_ca, &new.ca_pem).unwrap();
    let identity = |ca: &TestCa| TlsIdentity {
        cert_pem: ca.cert_pem.clone().into_bytes(),
        key_pem: ca.key_pem.clone().into_bytes(),
    };
    let server = UploadServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Some(identity(&old)),
        ImportOptions::default(),
    )
    .unwrap();
    let health = format!("https://localhost:{}/healthz", server.addr().port());
    let trusts = |ca: &Path| curl(&["--cacert", ca.to_str().unwrap(), &health]).0 == 0;
    assert!(trusts(&old_ca) && !trusts(&new_ca));

    server.replace_tls(identity(&new)).unwrap();
    assert!(trusts(&new_ca) && !trusts(&old_ca));

    let bad = TlsIdentity {
        cert_pem: b"not a certificate".to_vec(),
        key_pem: new.key_pem.clone().into_bytes(),
    };
    assert!(server.replace_tls(bad).is_err());
    assert!(trusts(&new_ca), "a refused identity leaves the current one");

    let plain = UploadServer::start(
        "127.0.0.1:0".parse().unwrap(),
        None,
        ImportOptions::default(),
    )
    .unwrap();
    let e = plain.replace_tls(identity(&new)).unwrap_err();
    assert!(e.to_string().contains("without TLS"), "{e}");
}
