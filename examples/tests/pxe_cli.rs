//! `virtkit-pxe` as a user runs it: bad usage, a missing boot file, and a
//! real run on a veth pair whose far end, in a namespace of its own,
//! fetches the boot file over TFTP with curl before stdin closes.
//! The real run needs root, `ip` and `curl`; it skips, saying why,
//! otherwise.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_virtkit-pxe");

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn bad_usage_and_a_missing_boot_file_are_told_apart() {
    let out = Command::new(BIN)
        .args([
            "--interface",
            "lo",
            "--server",
            "127.0.0.1",
            "--boot-dir",
            "/nonexistent",
        ])
        .args(["--lease", "not-a-mac=10.0.0.2/24", "--bios", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MAC"));

    let dir = std::env::temp_dir().join(format!("virtkit-pxe-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(BIN)
        .args(["--interface", "lo", "--server", "127.0.0.1", "--boot-dir"])
        .arg(&dir)
        .args([
            "--lease",
            "de:00:00:00:00:de=10.0.0.2/24",
            "--bios",
            "pxelinux.0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("boot file \"pxelinux.0\" is not in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serves_a_boot_file_until_stdin_closes() {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root || !sh("command -v ip >/dev/null && command -v curl >/dev/null") {
        eprintln!("SKIP: needs root, ip and curl");
        return;
    }
    let id = std::process::id() % 100_000;
    let (ns, cns) = (format!("vk-pxecli-s-{id}"), format!("vk-pxecli-c-{id}"));
    assert!(sh(&format!(
        "ip netns add {ns} && ip netns add {cns} && \
         ip link add vkpc{id} netns {ns} type veth peer name eth1 netns {cns} && \
         ip -n {ns} addr add 10.8.0.1/24 dev vkpc{id} && ip -n {ns} link set vkpc{id} up && \
         ip -n {cns} addr add 10.8.0.2/24 dev eth1 && ip -n {cns} link set eth1 up"
    )));
    let dir = std::env::temp_dir().join(format!("virtkit-pxe-cli-run-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("pxelinux.0"), &payload).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--interface",
            &format!("vkpc{id}"),
            "--server",
            "10.8.0.1",
            "--boot-dir",
        ])
        .arg(&dir)
        .args([
            "--lease",
            "de:00:00:00:00:de=10.8.0.2/24",
            "--bios",
            "pxelinux.0",
        ])
        .args(["--netns", &ns])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("TFTP at 10.8.0.1:69"), "{first}");
    let got = dir.join("got");
    let fetched = sh(&format!(
        "ip netns exec {cns} timeout 20 curl -sf tftp://10.8.0.1/pxelinux.0 -o {}",
        got.display()
    ));
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    let last = lines.next().unwrap().unwrap();
    sh(&format!("ip netns del {ns}; ip netns del {cns}"));
    assert!(fetched, "curl could not fetch the boot file");
    assert_eq!(std::fs::read(&got).unwrap(), payload);
    assert!(status.success());
    assert!(last.contains("1 TFTP transfers"), "{last}");
    let _ = std::fs::remove_dir_all(&dir);
}
