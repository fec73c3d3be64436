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
