//! `virtkit-migrate` between two real processes over loopback TCP: the
//! guest arrives with identical memory and keeps counting; a killed
//! destination or a wrong secret leaves the source VM running.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

fn kvm_present() -> bool {
    let ok = std::path::Path::new("/dev/kvm").exists();
    if !ok {
        eprintln!("SKIP: /dev/kvm is absent; virtkit-migrate needs KVM");
    }
    ok
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_virtkit-migrate")
}

/// Start a receiver on an ephemeral port; return it and its address.
fn receiver(extra: &[&str]) -> (Child, BufReader<std::process::ChildStdout>, String) {
    let mut child = Command::new(bin())
        .args(["receive", "--listen", "tcp:127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("LISTENING ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    (child, out, addr)
}

fn results(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|j| serde_json::from_str(j).unwrap())
        .collect()
}

#[test]
fn two_processes_migrate_a_counting_guest() {
    if !kvm_present() {
        return;
    }
    let (mut rx, mut rx_out, addr) = receiver(&["--run-for", "1"]);
    let tx = Command::new(bin())
        .args(["send", "--to", &addr, "--after", "0.3", "--verify"])
        .output()
        .unwrap();
    assert!(
        tx.status.success(),
        "{}",
        String::from_utf8_lossy(&tx.stderr)
    );
    let sent = results(&String::from_utf8_lossy(&tx.stdout));
    assert_eq!(sent[0]["event"], "migrated");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut rx_out, &mut rest).unwrap();
    assert!(rx.wait().unwrap().success());
    let got = results(&rest);
    assert_eq!(got[0]["event"], "resumed");
    // Memory at the pause on the source == memory before resume on the target.
    assert_eq!(got[0]["checksum"], sent[0]["checksum"]);
    assert!(sent[0]["checksum"].as_u64().unwrap() != 0);
    // The guest continues its count from where it was.
    let paused_at = sent[0]["counter_at_pause"].as_u64().unwrap();
    let resumed = got[0]["counter"].as_u64().unwrap();
    let last = got[1]["counter"].as_u64().unwrap();
    assert!(resumed >= paused_at, "{resumed} < {paused_at}");
    assert!(last > resumed, "the guest kept counting on the target");
    let record = &sent[0]["record"];
    assert_eq!(record["phase"], "Succeeded");
    assert!(record["stats"]["iterations"].as_u64().unwrap() >= 2);
    assert!(record["start_timestamp"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn killed_destination_leaves_the_source_running() {
    if !kvm_present() {
        return;
    }
    let (mut rx, _rx_out, addr) = receiver(&["--run-for", "0"]);
    let tx = Command::new(bin())
        .args([
            "send",
            "--to",
            &addr,
            "--after",
            "0.2",
            "--bandwidth",
            "2000000",
            "--max-downtime-ms",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    rx.kill().unwrap();
    rx.wait().unwrap();
    let out = tx.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = results(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(r[0]["event"], "failed");
    assert!(
        r[0]["counter_after"].as_u64().unwrap() > r[0]["counter_before"].as_u64().unwrap(),
        "the source VM keeps running: {}",
        r[0]
    );
}

#[test]
fn wrong_secret_between_processes_is_refused() {
    if !kvm_present() {
        return;
    }
    let (mut rx, mut rx_out, addr) = receiver(&["--secret", "one"]);
    let tx = Command::new(bin())
        .args(["send", "--to", &addr, "--after", "0.1", "--secret", "two"])
        .output()
        .unwrap();
    assert_eq!(tx.status.code(), Some(1));
    let r = results(&String::from_utf8_lossy(&tx.stdout));
    assert!(
        r[0]["error"]
            .as_str()
            .unwrap()
            .contains("authentication failed"),
        "{}",
        r[0]
    );
    assert!(r[0]["counter_after"].as_u64().unwrap() > r[0]["counter_before"].as_u64().unwrap());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut rx_out, &mut rest).unwrap();
    assert_eq!(rx.wait().unwrap().code(), Some(1));
    assert_eq!(results(&rest)[0]["event"], "failed");
}

/// A raw image of `chunks` 64 KiB chunks, every third one filled with
/// its own index + 1, the rest a hole.
fn patterned_disk(path: &std::path::Path, chunks: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(chunks << 16).unwrap();
    for c in (0..chunks).step_by(3) {
        f.write_all_at(&(c + 1).to_le_bytes().repeat(8192), c << 16)
            .unwrap();
    }
}

/// A temporary directory holding a patterned `disk.img` of `chunks`
/// chunks and an empty `arrived/` for the receiver's copies.
fn disk_and_landing(chunks: u64) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (image, arrived) = (dir.path().join("disk.img"), dir.path().join("arrived"));
    std::fs::create_dir(&arrived).unwrap();
    patterned_disk(&image, chunks);
    (dir, image, arrived)
}

#[test]
fn a_local_disk_moves_with_the_guest_between_processes() {
    if !kvm_present() {
        return;
    }
    let (_dir, image, arrived) = disk_and_landing(128); // 8 MiB
    let (mut rx, mut rx_out, addr) =
        receiver(&["--run-for", "0.2", "--disk-dir", arrived.to_str().unwrap()]);
    let tx = Command::new(bin())
        .args(["send", "--to", &addr, "--after", "0.2"])
        .arg("--disk")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        tx.status.success(),
        "{}",
        String::from_utf8_lossy(&tx.stderr)
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut rx_out, &mut rest).unwrap();
    assert!(rx.wait().unwrap().success());
    let got = results(&rest);
    assert_eq!(got[0]["event"], "resumed");
    let copy = arrived.join("disk0.img");
    assert_eq!(got[0]["disks"][0], copy.to_str().unwrap());
    assert!(
        std::fs::read(&image).unwrap() == std::fs::read(&copy).unwrap(),
        "the disk arrives byte-identical"
    );
    let sent = results(&String::from_utf8_lossy(&tx.stdout));
    let disk_bytes = sent[0]["record"]["stats"]["disk_bytes_sent"]
        .as_u64()
        .unwrap();
    assert_eq!(disk_bytes, 43 << 16, "the holes went as markers");
}

#[test]
fn a_source_killed_mid_copy_leaves_no_disk_on_the_destination() {
    if !kvm_present() {
        return;
    }
    let (_dir, image, arrived) = disk_and_landing(1024); // 64 MiB, a third of it data
    let (mut rx, mut rx_out, addr) =
        receiver(&["--run-for", "0", "--disk-dir", arrived.to_str().unwrap()]);
    let mut tx = Command::new(bin())
        .args([
            "send",
            "--to",
            &addr,
            "--after",
            "0.1",
            "--bandwidth",
            "4000000",
        ])
        .arg("--disk")
        .arg(&image)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the copy has begun on the destination, then kill the
    // source in the middle of it.
    let copy = arrived.join("disk0.img");
    let t = std::time::Instant::now();
    while !copy.exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "no disk arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    tx.kill().unwrap();
    tx.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut rx_out, &mut rest).unwrap();
    assert_eq!(rx.wait().unwrap().code(), Some(1));
    assert_eq!(results(&rest)[0]["event"], "failed");
    assert!(!copy.exists(), "the half-copied disk was removed");
    assert_eq!(std::fs::read_dir(&arrived).unwrap().count(), 0);
}
