//! A qcow2 image written at random by `Qcow2Image` stays an image that
//! `qemu-img check` finds clean (no corruption, no leaks) and that
//! `qemu-img convert -O raw` turns into exactly the bytes a plain model of
//! the same writes holds: fresh images with small clusters (so L2 tables,
//! refcount blocks and the refcount table itself all grow), compressed
//! images written over in part, discard and write-zeroes, v2 and v3.
//! Images it must not write (snapshots, 8-bit refcounts) are refused with
//! a clear error and opened read-only instead. Skips, saying why, where
//! qemu-img is not installed.

#![allow(clippy::unwrap_used)]

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::process::Command;

use virtkit_storage::qcow2::{Qcow2Image, Qcow2OpenMode};
use virtkit_storage::ImageError;

mod common;
use common::{dir, qemu_img, run, source_raw};

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn open_rw(p: &Path) -> Qcow2Image {
    let f = OpenOptions::new().read(true).write(true).open(p).unwrap();
    Qcow2Image::open(f, Qcow2OpenMode::ReadWrite).unwrap()
}

/// `qemu-img check` reports no corruption and no leaked clusters.
fn assert_clean(p: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json", p.to_str().unwrap()])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "qemu-img check: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    for key in ["corruptions", "leaks", "check-errors"] {
        assert_eq!(
            report.get(key).and_then(|v| v.as_u64()).unwrap_or(0),
            0,
            "{key} in {report}"
        );
    }
    assert!(out.status.success(), "qemu-img check failed: {report}");
}

/// What qemu-img reads from the image equals `model`.
fn assert_qemu_reads(p: &Path, model: &[u8]) {
    let raw = p.with_extension("oracle.raw");
    run(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        p.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&raw).unwrap();
    assert_eq!(bytes.len(), model.len());
    if let Some(at) = bytes.iter().zip(model).position(|(a, b)| a != b) {
        panic!("qemu-img reads a different byte at offset {at}");
    }
}

/// Random writes, zeroing and discards, applied to the image and a model.
fn exercise(image: &mut Qcow2Image, model: &mut [u8], rng: &mut Rng, ops: usize, max_len: u64) {
    let size = model.len() as u64;
    for _ in 0..ops {
        let offset = rng.below(size);
        let len = (1 + rng.below(max_len)).min(size - offset);
        let range = offset as usize..(offset + len) as usize;
        match rng.below(10) {
            0 => {
                image.write_zeroes(offset, len).unwrap();
                model[range].fill(0);
            }
            1 => {
                // Discard leaves partial clusters as they were and makes
                // whole ones read as zeros: model exactly that.
                image.discard(offset, len).unwrap();
                let cs = image.header().cluster_size();
                let (first, last) = (offset.div_ceil(cs) * cs, (offset + len) / cs * cs);
                if first < last {
                    model[first as usize..last as usize].fill(0);
                }
            }
            _ => {
                let data = rng.bytes(len as usize);
                image.write_at(&data, offset).unwrap();
                model[range].copy_from_slice(&data);
            }
        }
    }
}

fn assert_we_read(image: &mut Qcow2Image, model: &[u8]) {
    let mut back = vec![0u8; model.len()];
    image.read_at(&mut back, 0).unwrap();
    if let Some(at) = back.iter().zip(model).position(|(a, b)| a != b) {
        panic!("our reader returns a different byte at offset {at}");
    }
}

#[test]
fn random_writes_to_fresh_images_stay_clean_and_read_back() {
    if !qemu_img() {
        return;
    }
    let d = dir("image-fresh");
    // 512-byte clusters: 64 L2 entries per table and 256 refcounts per
    // block, so a few MiB of writes grow every metadata structure,
    // the refcount table included (one cluster of it covers 8 MiB).
    let cases: &[(&str, &str, u64, u64)] = &[
        ("v3-512", "compat=1.1,cluster_size=512", 12 << 20, 64 << 10),
        (
            "v2-4k",
            "compat=0.10,cluster_size=4096",
            16 << 20,
            256 << 10,
        ),
        ("v3-64k", "compat=1.1", 24 << 20, 1 << 20),
    ];
    for (k, (name, opts, size, max_len)) in cases.iter().enumerate() {
        let p = d.join(format!("{name}.qcow2"));
        run(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            opts,
            p.to_str().unwrap(),
            &size.to_string(),
        ]);
        let mut model = vec![0u8; *size as usize];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 + k as u64);
        let mut image = open_rw(&p);
        let table_clusters = image.header().refcount_table_clusters;
        exercise(&mut image, &mut model, &mut rng, 300, *max_len);
        // One long sequential write over most of the disk forces the
        // refcount table of the 512-byte image to move.
        let long = rng.bytes((*size / 2) as usize);
        image.write_at(&long, *size / 4).unwrap();
        model[(*size / 4) as usize..(*size / 4 * 3) as usize].copy_from_slice(&long);
        exercise(&mut image, &mut model, &mut rng, 100, *max_len);
        if *name == "v3-512" {
            assert!(
                image.header().refcount_table_clusters > table_clusters,
                "the refcount table should have moved to a larger one"
            );
        }
        image.flush().unwrap();
        assert_we_read(&mut image, &model);
        drop(image);
        assert_clean(&p);
        assert_qemu_reads(&p, &model);
        // Reopened, it reads the same.
        let mut again = Qcow2Image::open(File::open(&p).unwrap(), Qcow2OpenMode::ReadOnly).unwrap();
        assert_we_read(&mut again, &model);
    }
}

#[test]
fn writes_over_a_compressed_image_rewrite_only_what_they_touch() {
    if !qemu_img() {
        return;
    }
    let d = dir("image-compressed");
    let raw = source_raw(&d);
    let p = d.join("c.qcow2");
    run(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "compat=1.1,cluster_size=8192",
        raw.to_str().unwrap(),
        p.to_str().unwrap(),
    ]);
    let mut model = std::fs::read(&raw).unwrap();
    // qcow2 rounds the virtual size to a sector.
    let mut image = open_rw(&p);
    model.resize(image.virtual_size() as usize, 0);
    assert_we_read(&mut image, &model);
    let mut rng = Rng(42);
    exercise(&mut image, &mut model, &mut rng, 400, 20 << 10);
    image.flush().unwrap();
    assert_we_read(&mut image, &model);
    drop(image);
    assert_clean(&p);
    assert_qemu_reads(&p, &model);
}

#[test]
fn images_that_cannot_be_written_are_refused_but_read() {
    if !qemu_img() {
        return;
    }
    let d = dir("image-refused");
    let snap = d.join("snap.qcow2");
    run(&["create", "-f", "qcow2", snap.to_str().unwrap(), "1M"]);
    run(&["snapshot", "-c", "s1", snap.to_str().unwrap()]);
    let narrow = d.join("rc8.qcow2");
    run(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "refcount_bits=8",
        narrow.to_str().unwrap(),
        "1M",
    ]);
    for (p, why) in [(&snap, "internal snapshot"), (&narrow, "8-bit refcounts")] {
        let f = OpenOptions::new().read(true).write(true).open(p).unwrap();
        match Qcow2Image::open(f, Qcow2OpenMode::ReadWrite) {
            Err(ImageError::Unsupported(msg)) => assert!(msg.contains(why), "{msg}"),
            other => panic!("{}: {other:?}", p.display()),
        }
        let mut ro = Qcow2Image::open(File::open(p).unwrap(), Qcow2OpenMode::ReadOnly).unwrap();
        let mut buf = [1u8; 512];
        ro.read_at(&mut buf, 4096).unwrap();
        assert_eq!(buf, [0u8; 512]);
        assert!(matches!(
            ro.write_at(&buf, 0),
            Err(ImageError::Io(e)) if e.kind() == std::io::ErrorKind::PermissionDenied
        ));
    }
    // Past the end is an error, not a short read or a grown disk.
    let ok = d.join("ok.qcow2");
    run(&["create", "-f", "qcow2", ok.to_str().unwrap(), "1M"]);
    let mut image = open_rw(&ok);
    let mut buf = [0u8; 1024];
    assert!(image.read_at(&mut buf, (1 << 20) - 512).is_err());
    assert!(image.write_at(&buf, (1 << 20) - 512).is_err());
    assert!(image.write_zeroes(1 << 20, 1).is_err());
}
