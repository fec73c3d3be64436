//! `virtkit-net` as a user runs it: bad usage is told apart from a setup
//! failure; a masquerade binding from a VM spec and a bridge binding from
//! a NetworkAttachmentDefinition come up in a namespace the test makes
//! and leave nothing behind when stdin closes; `clean` removes what a
//! killed run left. The real runs need root, `ip` and `nft`; they skip,
//! saying why, otherwise.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_virtkit-net");

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success())
}

fn out(cmd: &str) -> String {
    let o = Command::new("sh").args(["-c", cmd]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn run(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(BIN).args(args).output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("virtkit-net-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn bad_usage_is_exit_code_2_with_the_reason() {
    let (code, err) = run(&["masquerade", "--netns", "x", "--tag", "t"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("give --mac or --vm"), "{err}");
    let (code, err) = run(&[
        "masquerade",
        "--netns",
        "x",
        "--tag",
        "t",
        "--mac",
        "02:00:00:00:00:01",
        "--port",
        "sctp:9",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("\"sctp\" is not tcp or udp"), "{err}");
    let (code, err) = run(&["masquerade", "--netns", "x", "--tag", "t", "--mac", "zz"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--mac \"zz\""), "{err}");
    let not_a_nad = temp_file("vm.yaml", "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: a}\nspec: {domain: {devices: {}}}\n");
    let (code, err) = run(&[
        "bridge",
        "--netns",
        "x",
        "--tag",
        "t",
        "--mac",
        "02:00:00:00:00:01",
        "--nad",
        not_a_nad.to_str().unwrap(),
    ]);
    std::fs::remove_file(&not_a_nad).unwrap();
    assert_eq!(code, Some(2));
    assert!(
        err.contains("a NetworkAttachmentDefinition is needed"),
        "{err}"
    );
    // A namespace that does not exist is a setup failure, not bad usage.
    let (code, err) = run(&[
        "masquerade",
        "--netns",
        "virtkit-no-such-ns",
        "--tag",
        "t",
        "--mac",
        "02:00:00:00:00:01",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("masquerade setup failed"), "{err}");
}

/// Start the binary with stdin piped and return it with its first line.
fn start(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line)
}

/// Close stdin, expect a clean exit and "torn down".
fn finish(mut child: Child) {
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("torn down"));
}

struct Namespace(String);
impl Drop for Namespace {
    fn drop(&mut self) {
        sh(&format!("ip netns del {} 2>/dev/null", self.0));
    }
}

fn real_runs_possible() -> bool {
    let root = out("id -u").trim() == "0";
    if !root || !sh("command -v ip >/dev/null && command -v nft >/dev/null") {
        eprintln!("SKIP: needs root, ip and nft");
        return false;
    }
    true
}

#[test]
fn masquerade_from_a_vm_spec_then_bridge_from_a_nad_then_clean() {
    if !real_runs_possible() {
        return;
    }
    let id = std::process::id() % 100_000;
    let ns = Namespace(format!("vk-netcli-{id}"));
    assert!(sh(&format!(
        "ip netns add {0} && ip -n {0} link set lo up",
        ns.0
    )));
    let links = || out(&format!("ip -n {} -o link show | cut -d: -f2 | sort", ns.0));
    let rules = || out(&format!("ip netns exec {} nft list ruleset", ns.0));
    let (links_before, rules_before) = (links(), rules());

    let vm = temp_file(
        "web.yaml",
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: web}
spec:
  domain:
    resources: {requests: {memory: 64Mi}}
    devices:
      interfaces:
        - name: default
          masquerade: {}
          macAddress: "02:00:00:00:0a:01"
          ports: [{port: 8080}]
  networks:
    - name: default
      pod: {vmNetworkCIDR: 10.44.0.0/24}
"#,
    );
    let (child, line) = start(&[
        "masquerade",
        "--netns",
        &ns.0,
        "--tag",
        "web",
        "--vm",
        vm.to_str().unwrap(),
    ]);
    std::fs::remove_file(&vm).unwrap();
    assert!(
        line.starts_with(&format!(
            "masquerade up in {}: bridge k6t-web, tap tap-web, table inet virtkit_web",
            ns.0
        )),
        "{line}"
    );
    assert!(
        line.contains("gateway 10.44.0.1, guest 10.44.0.2 (MAC 02:00:00:00:0a:01), ports tcp:8080"),
        "{line}"
    );
    assert!(links().contains("tap-web"));
    assert!(rules().contains("dport 8080"), "{}", rules());
    finish(child);
    assert_eq!(links(), links_before, "no link left");
    assert_eq!(rules(), rules_before, "no nftables rule left");

    // Bridge binding from a NAD on a bridge the "host" already has.
    assert!(sh(&format!(
        "ip -n {0} link add brcli type bridge && ip -n {0} link set brcli up",
        ns.0
    )));
    let links_before = links();
    let nad = temp_file(
        "red.yaml",
        r#"apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: red}
spec:
  config: '{"cniVersion": "0.3.1", "name": "red", "type": "cnv-bridge", "bridge": "brcli", "macspoofchk": true}'
"#,
    );
    let (child, line) = start(&[
        "bridge",
        "--netns",
        &ns.0,
        "--tag",
        "red",
        "--mac",
        "02:00:00:00:0a:02",
        "--nad",
        nad.to_str().unwrap(),
    ]);
    std::fs::remove_file(&nad).unwrap();
    assert_eq!(
        line.trim(),
        format!("bridge binding up in {}: tap tap-red on brcli", ns.0)
    );
    assert!(out(&format!("ip -n {} link show tap-red", ns.0)).contains("master brcli"));
    assert!(
        rules().contains("02:00:00:00:0a:02"),
        "MAC-spoof rule: {}",
        rules()
    );
    finish(child);
    assert_eq!(links(), links_before);
    assert_eq!(rules(), rules_before);

    // A killed run leaves its binding; `clean` finds and removes it.
    let (mut child, _) = start(&[
        "masquerade",
        "--netns",
        &ns.0,
        "--tag",
        "crash",
        "--mac",
        "02:00:00:00:0a:03",
    ]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(links().contains("tap-crash"));
    let o = Command::new(BIN)
        .args(["clean", "--netns", &ns.0, "--tag", "crash"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "removed what the binding left behind"
    );
    let o = Command::new(BIN)
        .args(["clean", "--netns", &ns.0, "--tag", "crash"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "nothing to remove"
    );
    assert_eq!(links(), links_before);
    assert_eq!(rules(), rules_before);
}
