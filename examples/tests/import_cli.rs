//! `virtkit-import` end to end: a clone and a blank import succeed and say
//! so; a failing import exits 1 with the phase and reason; plain progress
//! lines when stderr is not a terminal.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_virtkit-import"))
}

#[test]
fn clone_blank_and_failure() {
    let d = std::env::temp_dir().join(format!("virtkit-import-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let src = d.join("src.img");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(8 << 20).unwrap();
    f.write_all_at(&[0xab; 5000], 1 << 20).unwrap();
    let dv = d.join("clone.yaml");
    std::fs::write(&dv, "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {name: c, namespace: ns}\nspec:\n  source: {pvc: {namespace: ns, name: src}}\n  pvc: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 8Mi}}}\n").unwrap();
    let out = bin()
        .arg("--datavolume")
        .arg(&dv)
        .arg("--target")
        .arg(d.join("t.img"))
        .arg("--volume")
        .arg(format!("ns/src={}", src.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("phase: Succeeded"), "{stdout}");
    assert!(stderr.contains("CloneInProgress"), "{stderr}");
    assert_eq!(
        std::fs::read(d.join("t.img")).unwrap(),
        std::fs::read(&src).unwrap()
    );

    std::fs::write(&dv, "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {name: b}\nspec:\n  source: {blank: {}}\n  pvc: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 500Mi}}}\n").unwrap();
    let out = bin()
        .arg("--datavolume")
        .arg(&dv)
        .arg("--target")
        .arg(d.join("b.img"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["target_size"], 524_288_000u64);

    std::fs::write(&dv, "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {name: x, namespace: ns}\nspec:\n  source: {http: {url: \"http://127.0.0.1:1/disk.img\"}}\n  pvc: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Mi}}}\n").unwrap();
    let out = bin()
        .arg("--datavolume")
        .arg(&dv)
        .arg("--target")
        .arg(d.join("x.img"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("phase: Failed (TransferFailed)"),
        "{stdout}"
    );
    assert!(!d.join("x.img").exists());
    // An unreadable DataVolume is a usage error.
    let out = bin()
        .arg("--datavolume")
        .arg(d.join("missing.yaml"))
        .arg("--target")
        .arg(d.join("y"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
