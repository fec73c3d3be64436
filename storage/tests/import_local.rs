//! Imports that need no network: blank images, clones (file and loop
//! block devices, holes kept, locks honoured), block targets, and archive
//! content (tar, compressed, hostile entries refused).

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::*;
use virtkit_storage::import::{import, ImportError, ImportOptions, Objects, Phase, VolumeLock};

fn dv_yaml(
    source: &str,
    size: &str,
    extra_spec: &str,
) -> virtkit_core::spec::datavolume::DataVolume {
    dv(&format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {{name: d, namespace: ns}}\nspec:\n  source: {source}\n{extra_spec}  pvc:\n    accessModes: [ReadWriteOnce]\n    resources: {{requests: {{storage: {size}}}}}\n"
    ))
}

fn block_dv(source: &str, size: &str) -> virtkit_core::spec::datavolume::DataVolume {
    dv(&format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {{name: d, namespace: ns}}\nspec:\n  source: {source}\n  pvc:\n    accessModes: [ReadWriteOnce]\n    volumeMode: Block\n    resources: {{requests: {{storage: {size}}}}}\n"
    ))
}

#[test]
fn blank_is_a_sparse_raw_image_of_the_request() {
    let d = dir("blank");
    let t = d.join("blank.img");
    let phases = std::sync::Mutex::new(Vec::new());
    let out = import(
        &dv_yaml("{blank: {}}", "500Mi", ""),
        &t,
        &Objects::new(),
        &ImportOptions::default(),
        &|p| phases.lock().unwrap().push(p.phase),
    )
    .unwrap();
    let m = std::fs::metadata(&t).unwrap();
    assert_eq!((m.len(), m.blocks()), (524_288_000, 0));
    assert_eq!(out.target_size, 524_288_000);
    assert_eq!(phases.into_inner().unwrap().last(), Some(&Phase::Succeeded));
    if qemu_img() {
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&t)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(v["format"], "raw");
        assert_eq!(v["virtual-size"], 524_288_000u64);
    }
    // The filesystem overhead shrinks the image (aligned to 512).
    let opts = ImportOptions {
        filesystem_overhead: virtkit_storage::import::CDI_DEFAULT_FILESYSTEM_OVERHEAD,
        ..Default::default()
    };
    let out = import(
        &dv_yaml("{blank: {}}", "1Gi", ""),
        &d.join("o.img"),
        &Objects::new(),
        &opts,
        &|_| {},
    )
    .unwrap();
    assert_eq!(out.target_size, (1073741824f64 * 0.945) as u64 / 512 * 512);
}

/// A 64 MiB sparse file with three extents.
fn sparse_source(d: &Path) -> PathBuf {
    let p = d.join("source.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(&[0x11; 300_000], 0).unwrap();
    f.write_all_at(&[0x22; 4096], 20 << 20).unwrap();
    f.write_all_at(&[0x33; 1 << 20], (64 << 20) - (1 << 20))
        .unwrap();
    p
}

#[test]
fn clone_keeps_holes_honours_locks_and_checks_sizes() {
    let d = dir("clone");
    let src = sparse_source(&d);
    let mut objects = Objects::new();
    objects.add_volume("source-ns", "my-favorite-vm-disk", &src);
    let source = "{pvc: {namespace: source-ns, name: my-favorite-vm-disk}}";
    let t = d.join("clone.img");
    let out = import(
        &dv_yaml(source, "64Mi", ""),
        &t,
        &objects,
        &ImportOptions::default(),
        &|_| {},
    )
    .unwrap();
    assert_eq!(out.source, "pvc");
    assert_same(&t, &src);
    let blocks = std::fs::metadata(&t).unwrap().blocks() * 512;
    assert!(
        blocks < 4 << 20,
        "{blocks} bytes allocated for 1.3 MiB of data"
    );
    // One byte short.
    let e = import(
        &dv_yaml(source, "67108863", ""),
        &d.join("short.img"),
        &objects,
        &ImportOptions::default(),
        &|_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("smaller than source"), "{e}");
    // Missing source, source = target.
    let e = import(
        &dv_yaml("{pvc: {name: gone}}", "64Mi", ""),
        &d.join("x.img"),
        &objects,
        &ImportOptions::default(),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            ImportError::NotFound {
                kind: "PersistentVolumeClaim",
                ..
            }
        ),
        "{e}"
    );
    let e = import(
        &dv_yaml(source, "64Mi", ""),
        &src,
        &objects,
        &ImportOptions::default(),
        &|_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("is the target itself"), "{e}");
    // A running VM holds it read-write.
    let lock = VolumeLock::exclusive(&src).unwrap();
    let e = import(
        &dv_yaml(source, "64Mi", ""),
        &d.join("busy.img"),
        &objects,
        &ImportOptions::default(),
        &|_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    drop(lock);
    assert!(leftovers(&d).is_empty());
}

/// A loop device over a sparse file of `size` bytes, detached on drop.
struct Loop(String);

impl Loop {
    fn new(file: &Path, size: u64) -> Option<Self> {
        std::fs::File::create(file).unwrap().set_len(size).unwrap();
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIP: losetup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(Loop(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn block_targets_clone_and_import_and_refuse_oversized_requests() {
    let d = dir("block");
    // The seed's recipe, scaled: 20 blocks of 100 KiB, a "2000Ki" device.
    let Some(dev) = Loop::new(&d.join("backing"), 20 * 100 * 1024) else {
        return;
    };
    let src = d.join("src.img");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(1_000 * 1024).unwrap();
    f.write_all_at(&[0x5a; 70_000], 8192).unwrap();
    let mut objects = Objects::new();
    objects.add_volume("ns", "src", &src);
    let devp = Path::new(&dev.0);
    // Dirty the device first: holes must read back as zeros.
    std::fs::OpenOptions::new()
        .write(true)
        .open(devp)
        .unwrap()
        .write_all_at(&[0xff; 1 << 20], 0)
        .unwrap();
    import(
        &block_dv("{pvc: {name: src}}", "1000Ki"),
        devp,
        &objects,
        &ImportOptions::default(),
        &|_| {},
    )
    .unwrap();
    let got = std::fs::read(devp).unwrap();
    assert_eq!(&got[..1_000 * 1024], &std::fs::read(&src).unwrap()[..]);
    // ST-22: a request larger than the device names both sizes.
    let e = import(
        &block_dv("{blank: {}}", "2Mi"),
        devp,
        &objects,
        &ImportOptions::default(),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("2097152") && e.to_string().contains("2048000"),
        "{e}"
    );
    // ST-21: Block mode on a plain file.
    let e = import(
        &block_dv("{blank: {}}", "1Mi"),
        &d.join("plain"),
        &objects,
        &ImportOptions::default(),
        &|_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("needs a block device"), "{e}");
    // A source larger than the device is refused before writing.
    objects.add_volume("ns", "big", &sparse_source(&d));
    let e = import(
        &block_dv("{pvc: {name: big}}", "2000Ki"),
        devp,
        &objects,
        &ImportOptions::default(),
        &|_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("smaller than source"), "{e}");
}

fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Write the name raw: the builder itself refuses `..`.
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn archive_content_is_extracted_and_hostile_entries_are_refused() {
    let d = dir("archive");
    let www = d.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let good = tar_with(&[("a/b.txt", b"hello"), ("c.bin", &[9u8; 10_000])]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &good).unwrap();
    let srv = FaultServer::start(gz.finish().unwrap(), Fault::Unavailable { times: 0 });
    let archive = "  contentType: archive\n";
    let t = d.join("fs");
    let dvv =
        |url: &str, size: &str| dv_yaml(&format!("{{http: {{url: \"{url}\"}}}}"), size, archive);
    let out = import(
        &dvv(&srv.url("a.tar.gz"), "1Mi"),
        &t,
        &Objects::new(),
        &ImportOptions::default(),
        &|_| {},
    )
    .unwrap();
    assert_eq!(out.format.as_deref(), Some("tar+gz"));
    assert_eq!(std::fs::read(t.join("a/b.txt")).unwrap(), b"hello");
    assert_eq!(std::fs::read(t.join("c.bin")).unwrap(), vec![9u8; 10_000]);
    // Path traversal: refused, nothing written anywhere.
    let evil = tar_with(&[("ok.txt", b"x"), ("../evil.txt", b"pwned")]);
    let srv = FaultServer::start(evil, Fault::Unavailable { times: 0 });
    let t2 = d.join("fs2");
    let e = import(
        &dvv(&srv.url("e.tar"), "1Mi"),
        &t2,
        &Objects::new(),
        &ImportOptions::default(),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("escapes the target directory"),
        "{e}"
    );
    assert!(!t2.exists() && !d.join("evil.txt").exists());
    // A tar bomb: content beyond the target size.
    let bomb = tar_with(&[("big", &vec![0u8; 3 << 20])]);
    let srv = FaultServer::start(bomb, Fault::Unavailable { times: 0 });
    let e = import(
        &dvv(&srv.url("b.tar"), "1Mi"),
        &d.join("fs3"),
        &Objects::new(),
        &ImportOptions::default(),
        &|_| {},
    )
    .unwrap_err();
    assert_eq!(e.reason(), "ImageTooLarge", "{e}");
    // ST-10: archive content to a Block volume is invalid.
    let mut v = dvv(&srv.url("b.tar"), "1Mi");
    v.spec.pvc.volume_mode = Some(virtkit_core::spec::datavolume::VolumeMode::Block);
    let e = import(
        &v,
        &d.join("fs4"),
        &Objects::new(),
        &ImportOptions::default(),
        &|_| {},
    )
    .unwrap_err();
    assert!(matches!(e, ImportError::Spec(_)), "{e}");
    assert!(leftovers(&d).is_empty());
}
