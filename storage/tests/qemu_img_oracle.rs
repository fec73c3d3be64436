//! qemu-img is the oracle: images made by `qemu-img` (qcow2 v2, v3,
//! compressed, several cluster sizes, zero clusters) are converted by
//! virtkit and by `qemu-img convert -O raw`, and the bytes must be equal.
//! Faults (backing file, encryption, truncation, corruption, cancel, too
//! small a target, unsupported formats) are typed errors that leave no
//! target behind. Skips, saying why, where qemu-img is not installed.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use virtkit_storage::{convert_to_raw, ConvertOptions, Format, ImageError};

mod common;
use common::{assert_same, dir, qemu_img, run, source_raw};

/// A directory with the source raw image and a default qcow2 of it.
fn qcow2_fixture(name: &str, qcow2: &str) -> (common::TestDir, PathBuf, PathBuf) {
    let d = dir(name);
    let raw = source_raw(&d);
    let q = d.join(qcow2);
    run(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    (d, raw, q)
}

fn convert(src: &Path, dst: &Path) -> Result<virtkit_storage::ConvertReport, ImageError> {
    convert_to_raw(src, dst, &ConvertOptions::default(), &|_, _| {})
}

#[test]
fn qcow2_variants_convert_to_the_same_bytes_as_qemu_img() {
    if !qemu_img() {
        return;
    }
    let d = dir("variants");
    let raw = source_raw(&d);
    let variants: &[(&str, &[&str])] = &[
        ("v3", &["-o", "compat=1.1"]),
        ("v2", &["-o", "compat=0.10"]),
        ("v3-compressed", &["-c", "-o", "compat=1.1"]),
        ("v2-compressed", &["-c", "-o", "compat=0.10"]),
        ("v3-4k", &["-o", "compat=1.1,cluster_size=4096"]),
        ("v3-2m", &["-o", "compat=1.1,cluster_size=2M"]),
        (
            "v3-compressed-8k",
            &["-c", "-o", "compat=1.1,cluster_size=8192"],
        ),
    ];
    for (name, opts) in variants {
        let q = d.join(format!("{name}.qcow2"));
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(opts);
        args.push(raw.to_str().unwrap());
        args.push(q.to_str().unwrap());
        run(&args);
        let oracle = d.join(format!("{name}.oracle.raw"));
        run(&[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            q.to_str().unwrap(),
            oracle.to_str().unwrap(),
        ]);
        let ours = d.join(format!("{name}.ours.raw"));
        let report = convert(&q, &ours).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.format, Format::Qcow2);
        assert_same(&ours, &oracle);
        // Holes stay holes: far fewer blocks than the size.
        let m = std::fs::metadata(&ours).unwrap();
        assert!(
            m.blocks() * 512 < m.len() / 2,
            "{name}: output not sparse ({} of {})",
            m.blocks() * 512,
            m.len()
        );
        assert!(report.data_bytes < report.virtual_size / 2);
    }
    // Raw input converts too (ISO is raw content).
    let ours = d.join("raw.ours.raw");
    let r = convert(&raw, &ours).unwrap();
    assert_eq!(r.format, Format::Raw);
    assert_same(&ours, &raw);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn zero_flagged_clusters_read_as_zeros() {
    if !qemu_img() || Command::new("qemu-io").arg("--version").output().is_err() {
        eprintln!("SKIP: qemu-io is not installed");
        return;
    }
    let d = dir("zero");
    let raw = source_raw(&d);
    let q = d.join("z.qcow2");
    run(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "compat=1.1",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -z 0 512k",
            "-c",
            "write -z 13M 1M",
            q.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let oracle = d.join("z.oracle.raw");
    run(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        q.to_str().unwrap(),
        oracle.to_str().unwrap(),
    ]);
    let ours = d.join("z.ours.raw");
    convert(&q, &ours).unwrap();
    assert_same(&ours, &oracle);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn resize_to_the_requested_size_and_refuse_too_small_targets() {
    if !qemu_img() {
        return;
    }
    let (d, raw, q) = qcow2_fixture("resize", "r.qcow2");
    let ours = d.join("big.raw");
    let r = convert_to_raw(
        &q,
        &ours,
        &ConvertOptions {
            target_size: Some(64 << 20),
            cancel: None,
        },
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(std::fs::metadata(&ours).unwrap().len(), 64 << 20);
    assert_eq!(r.output_size, 64 << 20);
    let bytes = std::fs::read(&ours).unwrap();
    let src = std::fs::read(&raw).unwrap();
    assert_eq!(&bytes[..src.len()], &src[..]);
    assert!(bytes[src.len()..].iter().all(|b| *b == 0));
    // One byte short: refused before writing, nothing left behind.
    let small = d.join("small.raw");
    let e = convert_to_raw(
        &q,
        &small,
        &ConvertOptions {
            target_size: Some(src.len() as u64 - 1),
            cancel: None,
        },
        &|_, _| {},
    )
    .unwrap_err();
    assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("exceeds target size"));
    assert_no_leftovers(&d, "small.raw");
    let _ = std::fs::remove_dir_all(&d);
}

fn assert_no_leftovers(d: &Path, name: &str) {
    for e in std::fs::read_dir(d).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.contains(name), "left behind: {n}");
    }
}

#[test]
fn faults_are_typed_errors_without_a_half_written_target() {
    if !qemu_img() {
        return;
    }
    let (d, raw, q) = qcow2_fixture("faults", "good.qcow2");

    // Backing file.
    let overlay = d.join("overlay.qcow2");
    run(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        q.to_str().unwrap(),
        "-F",
        "qcow2",
        overlay.to_str().unwrap(),
    ]);
    let e = convert(&overlay, &d.join("o1.raw")).unwrap_err();
    assert!(
        matches!(&e, ImageError::Unsupported(m) if m.contains("backing file")),
        "{e}"
    );
    assert_no_leftovers(&d, "o1.raw");

    // Encryption (crypt_method patched to AES).
    let mut bytes = std::fs::read(&q).unwrap();
    bytes[32..36].copy_from_slice(&1u32.to_be_bytes());
    let enc = d.join("enc.qcow2");
    std::fs::write(&enc, &bytes).unwrap();
    let e = convert(&enc, &d.join("o2.raw")).unwrap_err();
    assert!(
        matches!(&e, ImageError::Unsupported(m) if m.contains("encrypted")),
        "{e}"
    );

    // Truncated: the data clusters are gone.
    let bytes = std::fs::read(&q).unwrap();
    let trunc = d.join("trunc.qcow2");
    std::fs::write(&trunc, &bytes[..bytes.len() / 3]).unwrap();
    let e = convert(&trunc, &d.join("o3.raw")).unwrap_err();
    assert!(
        matches!(e, ImageError::Corrupt(_) | ImageError::Io(_)),
        "{e}"
    );
    assert_no_leftovers(&d, "o3.raw");

    // Corrupt: L1 table offset beyond the end.
    let mut bytes = std::fs::read(&q).unwrap();
    bytes[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes());
    let bad = d.join("bad.qcow2");
    std::fs::write(&bad, &bytes).unwrap();
    let e = convert(&bad, &d.join("o4.raw")).unwrap_err();
    assert!(
        matches!(&e, ImageError::Corrupt(m) if m.contains("L1")),
        "{e}"
    );

    // Cancel: nothing left behind.
    let stop = AtomicBool::new(true);
    let e = convert_to_raw(
        &q,
        &d.join("o5.raw"),
        &ConvertOptions {
            target_size: None,
            cancel: Some(&stop),
        },
        &|_, _| {},
    )
    .unwrap_err();
    assert!(matches!(e, ImageError::Cancelled));
    assert_no_leftovers(&d, "o5.raw");

    // Recognized formats that are not converted.
    for (fmt, expect) in [
        ("vmdk", Format::Vmdk),
        ("vdi", Format::Vdi),
        ("vhdx", Format::Vhdx),
        ("vpc", Format::Vhd),
    ] {
        let p = d.join(format!("img.{fmt}"));
        run(&[
            "convert",
            "-f",
            "raw",
            "-O",
            fmt,
            raw.to_str().unwrap(),
            p.to_str().unwrap(),
        ]);
        let e = convert(&p, &d.join("o6.raw")).unwrap_err();
        assert!(
            matches!(e, ImageError::UnsupportedFormat(f) if f == expect),
            "{fmt}: {e}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn progress_reaches_the_total() {
    if !qemu_img() {
        return;
    }
    let (d, raw, q) = qcow2_fixture("progress", "p.qcow2");
    let last = std::sync::Mutex::new((0u64, 0u64));
    convert_to_raw(
        &q,
        &d.join("p.raw"),
        &ConvertOptions::default(),
        &|done, total| {
            let mut l = last.lock().unwrap();
            assert!(done >= l.0, "progress never goes back");
            *l = (done, total);
        },
    )
    .unwrap();
    let (done, total) = *last.lock().unwrap();
    assert_eq!(done, total);
    assert_eq!(total, std::fs::metadata(&raw).unwrap().len());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn blank_image_is_sparse_raw_of_exactly_the_request() {
    if !qemu_img() {
        return;
    }
    let d = dir("blank");
    let p = d.join("blank.raw");
    // The seed's example: 500Mi.
    virtkit_storage::create_blank(&p, 524_288_000).unwrap();
    let m = std::fs::metadata(&p).unwrap();
    assert_eq!(m.len(), 524_288_000);
    assert_eq!(m.blocks(), 0, "no blocks allocated");
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", p.to_str().unwrap()])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["format"], "raw");
    assert_eq!(info["virtual-size"], 524_288_000u64);
    assert!(
        matches!(
            virtkit_storage::create_blank(&p, 1),
            Err(ImageError::Target(_))
        ),
        "never overwrites"
    );
    assert!(matches!(
        virtkit_storage::create_blank(&d.join("z.raw"), 0),
        Err(ImageError::Target(_))
    ));
    let _ = std::fs::remove_dir_all(&d);
}
