//! HTTP(S) imports against real peers: nginx (plain, TLS with a test CA,
//! basic auth, redirects, ranges) and a hand-written faulty server (drops,
//! 503s, no ranges). Every success is compared byte for byte with
//! `qemu-img convert -O raw` grown to the requested size; every failure
//! is a distinct typed reason that leaves no target and no scratch file.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::*;
use virtkit_storage::import::{
    import, CancelHandle, ImportError, ImportOptions, Objects, Phase, Progress, ScratchSpace,
};
use virtkit_storage::ImageError;

const SIZE: &str = "32Mi";
const SIZE_BYTES: u64 = 32 << 20;

fn options(scratch: &Path) -> ImportOptions {
    let mut o = ImportOptions {
        scratch: Some(ScratchSpace::new(scratch)),
        ..Default::default()
    };
    o.http.retry.initial_backoff = std::time::Duration::from_millis(20);
    o
}

/// Every image flavour of the matrix, made with qemu-img, gzip, xz, zstd.
fn images(root: &Path) {
    let raw = source_raw(root);
    let r = raw.to_str().unwrap();
    let at = |n: &str| root.join(n).to_str().unwrap().to_string();
    run(&[
        "convert",
        "-O",
        "qcow2",
        "-o",
        "compat=1.1",
        r,
        &at("v3.qcow2"),
    ]);
    run(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        "-o",
        "compat=0.10",
        r,
        &at("v2c.qcow2"),
    ]);
    std::fs::copy(&raw, root.join("disk.raw")).unwrap();
    sh(&format!("cd {} && gzip -k -1 disk.raw && xz -k -0 -T1 disk.raw && zstd -q -1 disk.raw && gzip -k -1 v3.qcow2 && xz -k -0 -T1 v3.qcow2 && cp v3.qcow2 auth/ && cp disk.raw auth/", root.display()));
}

/// Every image flavour served by nginx from `d/www`; scratch in
/// `d/scratch`; the oracle of the raw image. None (skip) without nginx.
fn site(d: &Path) -> Option<(PathBuf, Nginx, PathBuf)> {
    let (root, work, scratch) = (d.join("www"), d.join("nginx"), d.join("scratch"));
    for p in [&root, &work, &scratch] {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::create_dir_all(root.join("auth")).unwrap();
    images(&root);
    let nginx = Nginx::start(&root, &work)?;
    let expected = oracle(&root.join("disk.raw"), &d.join("oracle.raw"), SIZE_BYTES);
    Some((scratch, nginx, expected))
}

fn tools() -> bool {
    qemu_img() && have("xz", "xz-utils") && have("zstd", "zstd")
}

#[test]
fn every_http_format_matches_qemu_img_and_uses_scratch_only_where_the_matrix_says() {
    if !tools() {
        return;
    }
    let d = dir("http-matrix");
    let Some((scratch, nginx, expected)) = site(&d) else {
        return;
    };
    // (file, detected, scratch expected)
    let cases = [
        ("v3.qcow2", "qcow2", false),
        ("v2c.qcow2", "qcow2", false),
        ("disk.raw", "raw", false),
        ("disk.raw.gz", "raw+gz", false),
        ("disk.raw.xz", "raw+xz", false),
        ("disk.raw.zst", "raw+zst", false),
        ("v3.qcow2.gz", "qcow2+gz", true),
        ("v3.qcow2.xz", "qcow2+xz", true),
    ];
    for (file, format, scratched) in cases {
        let target = d.join(format!("{file}.img"));
        let phases = Mutex::new(Vec::new());
        let dv = http_dv(&format!("http://127.0.0.1:{}/{file}", nginx.http), SIZE, "");
        let out = import(
            &dv,
            &target,
            &Objects::new(),
            &options(&scratch),
            &|p: &Progress| {
                let mut v = phases.lock().unwrap();
                if v.last() != Some(&p.phase) {
                    v.push(p.phase);
                }
            },
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(out.format.as_deref(), Some(format), "{file}");
        assert_eq!(out.scratch_bytes > 0, scratched, "{file}: scratch {out:?}");
        assert_same(&target, &expected);
        assert_eq!(
            phases.into_inner().unwrap(),
            vec![
                Phase::Pending,
                Phase::ImportScheduled,
                Phase::ImportInProgress,
                Phase::Succeeded
            ],
            "{file}"
        );
        // Holes stay holes: far fewer blocks than the 32 MiB size.
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&target).unwrap().blocks() * 512;
        assert!(blocks < 12 << 20, "{file}: {blocks} bytes allocated");
        std::fs::remove_file(&target).unwrap();
        assert!(
            leftovers(&scratch).is_empty(),
            "{file}: scratch left behind"
        );
    }
    assert!(leftovers(&d).is_empty());

    // A redirect is followed.
    let target = d.join("moved.img");
    let dv = http_dv(
        &format!("http://127.0.0.1:{}/moved/v3.qcow2", nginx.http),
        SIZE,
        "",
    );
    import(&dv, &target, &Objects::new(), &options(&scratch), &|_| {}).unwrap();
    assert_same(&target, &expected);

    // An image larger than the request fails before writing a target.
    let dv = http_dv(
        &format!("http://127.0.0.1:{}/v3.qcow2", nginx.http),
        "16Mi",
        "",
    );
    let e = import(
        &dv,
        &d.join("small.img"),
        &Objects::new(),
        &options(&scratch),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        matches!(e, ImportError::Image(ImageError::TooLarge { .. })),
        "{e}"
    );
    let dv = http_dv(
        &format!("http://127.0.0.1:{}/disk.raw.xz", nginx.http),
        "16Mi",
        "",
    );
    let e = import(
        &dv,
        &d.join("small.img"),
        &Objects::new(),
        &options(&scratch),
        &|_| {},
    )
    .unwrap_err();
    assert_eq!(e.reason(), "ImageTooLarge", "{e}");
    assert!(!d.join("small.img").exists());

    // 404 is its own reason.
    let dv = http_dv(&format!("http://127.0.0.1:{}/nope", nginx.http), SIZE, "");
    let e = import(
        &dv,
        &d.join("x.img"),
        &Objects::new(),
        &options(&scratch),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        matches!(e, ImportError::HttpStatus { status: 404, .. }),
        "{e}"
    );

    // Cancel from the progress callback: no target, no scratch.
    let cancel = CancelHandle::new();
    let mut opts = options(&scratch);
    opts.cancel = cancel.clone();
    let dv = http_dv(
        &format!("http://127.0.0.1:{}/v3.qcow2.xz", nginx.http),
        SIZE,
        "",
    );
    let e = import(&dv, &d.join("c.img"), &Objects::new(), &opts, &|p| {
        if p.done > 0 {
            cancel.cancel();
        }
    })
    .unwrap_err();
    assert!(e.is_cancelled(), "{e}");
    assert!(!d.join("c.img").exists());
    assert!(leftovers(&scratch).is_empty() && leftovers(&d).is_empty());

    // qcow2.gz needs scratch; without it the import says so.
    let mut opts = options(&scratch);
    opts.scratch = None;
    let dv = http_dv(
        &format!("http://127.0.0.1:{}/v3.qcow2.gz", nginx.http),
        SIZE,
        "",
    );
    let e = import(&dv, &d.join("n.img"), &Objects::new(), &opts, &|_| {}).unwrap_err();
    assert!(e.to_string().contains("needs scratch space"), "{e}");
}

fn objects(ca_pem: &str, user: &str, password: &str) -> Objects {
    credential_objects("endpoint-secret", user, password, "tls-certs", ca_pem)
}

#[test]
fn https_with_a_custom_ca_and_basic_auth() {
    if !tools() {
        return;
    }
    let d = dir("https");
    let Some((scratch, nginx, expected)) = site(&d) else {
        return;
    };
    let ok = objects(&nginx.ca.ca_pem, "importer", "s3cret-pw");
    let https = |f: &str| format!("https://localhost:{}/{f}", nginx.https);
    let ca = "      certConfigMap: tls-certs\n";
    // HTTPS qcow2 with a custom CA: `**`, scratch used.
    let t = d.join("a.img");
    let out = import(
        &http_dv(&https("v3.qcow2"), SIZE, ca),
        &t,
        &ok,
        &options(&scratch),
        &|_| {},
    )
    .unwrap();
    assert!(out.scratch_bytes > 0, "{out:?}");
    assert_same(&t, &expected);
    // HTTPS raw with a custom CA: no scratch.
    let t = d.join("b.img");
    let out = import(
        &http_dv(&https("disk.raw.gz"), SIZE, ca),
        &t,
        &ok,
        &options(&scratch),
        &|_| {},
    )
    .unwrap();
    assert_eq!(out.scratch_bytes, 0);
    assert_same(&t, &expected);
    // Without the CA the server is not trusted.
    let e = import(
        &http_dv(&https("disk.raw"), SIZE, ""),
        &d.join("c.img"),
        &ok,
        &options(&scratch),
        &|_| {},
    )
    .unwrap_err();
    assert!(matches!(e, ImportError::Tls { .. }), "{e}");
    // Basic auth over TLS; qcow2 over ranges without scratch (matrix: basic-auth QCOW2 has no star).
    let auth = "      secretRef: endpoint-secret\n      certConfigMap: tls-certs\n";
    let t = d.join("d.img");
    let out = import(
        &http_dv(&https("auth/disk.raw"), SIZE, auth),
        &t,
        &ok,
        &options(&scratch),
        &|_| {},
    )
    .unwrap();
    assert_eq!(out.scratch_bytes, 0);
    assert_same(&t, &expected);
    let plain_auth = "      secretRef: endpoint-secret\n";
    let t = d.join("e.img");
    let dv = http_dv(
        &format!("http://127.0.0.1:{}/auth/v3.qcow2", nginx.http),
        SIZE,
        plain_auth,
    );
    let out = import(&dv, &t, &ok, &options(&scratch), &|_| {}).unwrap();
    assert_eq!(out.scratch_bytes, 0, "basic-auth QCOW2 reads ranges");
    assert_same(&t, &expected);
    // Wrong password: Unauthorized, and the password is nowhere in the error
    // or the progress messages.
    let bad = objects(&nginx.ca.ca_pem, "importer", "wrong-pw-123");
    let messages = Mutex::new(String::new());
    let e = import(
        &http_dv(&https("auth/disk.raw"), SIZE, auth),
        &d.join("f.img"),
        &bad,
        &options(&scratch),
        &|p| messages.lock().unwrap().push_str(&p.message),
    )
    .unwrap_err();
    assert!(
        matches!(e, ImportError::Unauthorized { status: 401, .. }),
        "{e}"
    );
    let all = format!("{e} {e:?} {}", messages.lock().unwrap());
    assert!(
        !all.contains("wrong-pw-123") && !all.contains("s3cret"),
        "{all}"
    );
    // No Secret: not found in the DataVolume's namespace.
    let e = import(
        &http_dv(&https("auth/disk.raw"), SIZE, auth),
        &d.join("g.img"),
        &Objects::new(),
        &options(&scratch),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("not found in namespace \"ns\""),
        "{e}"
    );
    assert!(leftovers(&d).is_empty() && leftovers(&scratch).is_empty());
}

#[test]
fn dropped_connections_resume_with_ranges_and_fail_cleanly_without() {
    if !qemu_img() {
        return;
    }
    let d = dir("faults");
    let scratch = d.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let raw = source_raw(&d);
    let expected = oracle(&raw, &d.join("oracle.raw"), SIZE_BYTES);
    let q = qcow2_of(&raw, &d.join("v3.qcow2"));
    let raw_bytes = std::fs::read(&raw).unwrap();

    // Dropped twice mid-body: resumed with Range, same bytes.
    let srv = FaultServer::start(
        raw_bytes.clone(),
        Fault::DropAfter {
            bytes: 3 << 20,
            times: 2,
        },
    );
    let t = d.join("resumed.img");
    let out = import(
        &http_dv(&srv.url("disk"), SIZE, ""),
        &t,
        &Objects::new(),
        &options(&scratch),
        &|_| {},
    )
    .unwrap();
    assert_eq!(out.resumes, 2, "{out:?}");
    assert_same(&t, &expected);

    // 503 twice, then served: retried with backoff.
    let srv = FaultServer::start(raw_bytes.clone(), Fault::Unavailable { times: 2 });
    let t = d.join("retried.img");
    import(
        &http_dv(&srv.url("disk"), SIZE, ""),
        &t,
        &Objects::new(),
        &options(&scratch),
        &|_| {},
    )
    .unwrap();
    assert_eq!(srv.requests.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_same(&t, &expected);

    // Always 503: the retries run out.
    let srv = FaultServer::start(raw_bytes.clone(), Fault::Unavailable { times: 100 });
    let e = import(
        &http_dv(&srv.url("disk"), SIZE, ""),
        &d.join("x.img"),
        &Objects::new(),
        &options(&scratch),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        matches!(e, ImportError::Transfer { attempts: 5, .. }),
        "{e}"
    );

    // Dropped by a server without ranges: a transfer failure, no target.
    let srv = FaultServer::start(raw_bytes, Fault::DropNoRanges { bytes: 1 << 20 });
    let e = import(
        &http_dv(&srv.url("disk"), SIZE, ""),
        &d.join("y.img"),
        &Objects::new(),
        &options(&scratch),
        &|_| {},
    )
    .unwrap_err();
    assert_eq!(e.reason(), "TransferFailed", "{e}");
    assert!(!d.join("y.img").exists());

    // A truncated qcow2 (served whole, but cut): corrupt, no target.
    let mut cut = std::fs::read(&q).unwrap();
    cut.truncate(cut.len() / 2);
    let srv = FaultServer::start(cut, Fault::Unavailable { times: 0 });
    let e = import(
        &http_dv(&srv.url("q"), SIZE, ""),
        &d.join("z.img"),
        &Objects::new(),
        &options(&scratch),
        &|_| {},
    )
    .unwrap_err();
    assert!(matches!(e, ImportError::Image(_)), "{e}");
    assert!(!d.join("z.img").exists());
    // Garbage inside a gzip: a clear error, nothing left.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &[7u8; 100_000]).unwrap();
    let mut gz = gz.finish().unwrap();
    let n = gz.len();
    gz[n / 2..n - 8].fill(0xAA);
    let srv = FaultServer::start(gz, Fault::Unavailable { times: 0 });
    let e = import(
        &http_dv(&srv.url("g"), SIZE, ""),
        &d.join("g.img"),
        &Objects::new(),
        &options(&scratch),
        &|_| {},
    )
    .unwrap_err();
    assert!(!e.to_string().is_empty());
    assert!(leftovers(&d).is_empty() && leftovers(&scratch).is_empty());
}

#[test]
fn a_full_target_filesystem_fails_and_leaves_nothing() {
    let d = dir("full");
    let Some(mnt) = Mount::tmpfs(&d.join("mnt"), "4m") else {
        return;
    };
    let raw = source_raw(&d);
    let srv = FaultServer::start(
        std::fs::read(&raw).unwrap(),
        Fault::Unavailable { times: 0 },
    );
    let e = import(
        &http_dv(&srv.url("disk"), SIZE, ""),
        &mnt.0.join("t.img"),
        &Objects::new(),
        &ImportOptions::default(),
        &|_| {},
    )
    .unwrap_err();
    assert_eq!(e.reason(), "IOError", "{e}");
    assert!(e.to_string().contains("No space left"), "{e}");
    assert!(
        mnt.entries().is_empty(),
        "nothing left on the full filesystem"
    );
}

/// ST-19 on a real 64 MiB tmpfs as the scratch directory: a qcow2.gz (a
/// starred cell) whose scratch does not fit waits `Pending` and goes on
/// when space appears; one that can never fit fails after the configured
/// wait; a cancel while waiting stops it. The tmpfs is left as it was
/// each time.
#[test]
fn scratch_on_a_64_mib_tmpfs_waits_then_goes_on_fails_or_cancels() {
    if !tools() {
        return;
    }
    let d = dir("scratch-tmpfs");
    let Some(mnt) = Mount::tmpfs(&d.join("scratch"), "64m") else {
        return;
    };
    let raw = source_raw(&d);
    let qcow = qcow2_of(&raw, &d.join("s.qcow2"));
    sh(&format!("gzip -1 {}", qcow.display()));
    let srv = FaultServer::start(
        std::fs::read(d.join("s.qcow2.gz")).unwrap(),
        Fault::Unavailable { times: 0 },
    );
    let want = oracle(&raw, &d.join("oracle.raw"), SIZE_BYTES);
    // 40 MiB of ballast: 24 MiB free, less than the ~50 MiB the spool of a
    // 32 Mi request reserves.
    let ballast = mnt.0.join("ballast");
    std::fs::write(&ballast, vec![1u8; 40 << 20]).unwrap();

    // 1. Space appears while it waits.
    let mut opts = options(&mnt.0);
    if let Some(s) = opts.scratch.as_mut() {
        s.wait_timeout = std::time::Duration::from_secs(30);
    }
    let seen: Mutex<Vec<(Phase, String)>> = Mutex::new(Vec::new());
    let target = d.join("t.img");
    let outcome = std::thread::scope(|s| {
        s.spawn(|| {
            // Free the space once the import has been seen waiting.
            for _ in 0..200 {
                if seen
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(p, m)| *p == Phase::Pending && m.contains("waiting"))
                {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
            std::fs::remove_file(&ballast).unwrap();
        });
        import(
            &http_dv(&srv.url("g"), SIZE, ""),
            &target,
            &Objects::new(),
            &opts,
            &|p: &Progress| seen.lock().unwrap().push((p.phase, p.message.clone())),
        )
    })
    .unwrap();
    let seen = seen.into_inner().unwrap();
    let waited = seen
        .iter()
        .position(|(p, m)| *p == Phase::Pending && m.contains("waiting for scratch space"))
        .expect("the import waited Pending for scratch space");
    let in_progress = seen
        .iter()
        .position(|(p, _)| *p == Phase::ImportInProgress)
        .unwrap();
    assert!(in_progress < waited, "it waited after starting: {seen:?}");
    assert_eq!(seen.last().unwrap().0, Phase::Succeeded);
    assert!(outcome.scratch_bytes > 0);
    assert_same(&target, &want);
    assert!(
        mnt.entries().is_empty(),
        "scratch left: {:?}",
        mnt.entries()
    );

    // 2. A request whose spool can never fit in 64 MiB fails after the
    // configured wait, naming the space.
    let mut opts = options(&mnt.0);
    if let Some(s) = opts.scratch.as_mut() {
        s.wait_timeout = std::time::Duration::from_millis(800);
    }
    let started = std::time::Instant::now();
    let e = import(
        &http_dv(&srv.url("g"), "64Mi", ""),
        &d.join("big.img"),
        &Objects::new(),
        &opts,
        &|_| {},
    )
    .unwrap_err();
    assert_eq!(e.reason(), "ScratchSpace", "{e}");
    assert!(e.to_string().contains("scratch"), "{e}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(800));
    assert!(!d.join("big.img").exists() && leftovers(&d).is_empty());
    assert!(mnt.entries().is_empty());

    // 3. Cancelled while waiting.
    std::fs::write(&ballast, vec![1u8; 40 << 20]).unwrap();
    let mut opts = options(&mnt.0);
    if let Some(s) = opts.scratch.as_mut() {
        s.wait_timeout = std::time::Duration::from_secs(30);
    }
    let cancel = opts.cancel.clone();
    let e = import(
        &http_dv(&srv.url("g"), SIZE, ""),
        &d.join("c.img"),
        &Objects::new(),
        &opts,
        &|p: &Progress| {
            if p.phase == Phase::Pending && p.message.contains("waiting") {
                cancel.cancel();
            }
        },
    )
    .unwrap_err();
    assert!(e.is_cancelled(), "{e}");
    assert_eq!(mnt.entries(), vec!["ballast".to_string()]);
    assert!(!d.join("c.img").exists() && leftovers(&d).is_empty());
}
