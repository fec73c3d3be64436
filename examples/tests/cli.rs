//! The reference binaries, run as a user would.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn vms(name: &str) -> String {
    format!("{}/vms/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn kvm_present() -> bool {
    let ok = std::path::Path::new("/dev/kvm").exists();
    if !ok {
        eprintln!("SKIP: /dev/kvm is absent; virtkit-run needs KVM");
    }
    ok
}

#[test]
fn run_boots_the_embedded_demo_and_prints_the_greeting() {
    if !kvm_present() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_virtkit-run"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Hello from virtkit! VM demo is running with 1 vCPU and 64 MiB of memory.\n"
    );
}

#[test]
fn run_sizes_the_vm_from_the_spec() {
    if !kvm_present() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_virtkit-run"))
        .arg(vms("smp.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Hello from virtkit! VM smp-demo is running with 4 vCPUs and 128 MiB of memory.\n"
    );
}

#[test]
fn run_rejects_an_invalid_spec_with_every_path_and_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_virtkit-run"))
        .arg(vms("invalid.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for path in [
        "metadata.name",
        "spec.template.spec.domain.cpu.cores",
        "spec.template.spec.domain.resources.limits.memory",
        "spec.template.spec.domain.devices.disks[0].name",
        "spec.template.spec.domain.devices.disks[0].bootOrder",
        "spec.template.spec.domain.devices.interfaces[0].ports[0].port",
        "spec.template.spec.domain.devices.interfaces[0].ports[1].port",
    ] {
        assert!(
            err.contains(&format!("invalid.yaml: {path}: ")),
            "{path} missing:\n{err}"
        );
    }
    assert!(out.stdout.is_empty(), "nothing may run");
}

#[test]
fn run_refuses_secure_boot_without_host_smm() {
    if !kvm_present() {
        return;
    }
    let kvm = std::fs::File::open("/dev/kvm");
    assert!(kvm.is_ok());
    let out = Command::new(env!("CARGO_BIN_EXE_virtkit-run"))
        .arg(vms("secureboot.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // A host with SMM runs it (the greeting shows).
        assert!(String::from_utf8_lossy(&out.stdout).contains("vm-secureboot"));
    } else {
        assert_eq!(out.status.code(), Some(1));
        assert!(err.contains("KVM_CAP_X86_SMM"), "{err}");
    }
}

#[test]
fn run_stops_a_counting_guest_at_its_timeout() {
    if !kvm_present() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_virtkit-run"))
        .args([
            &vms("demo.yaml"),
            "--payload",
            "touch-pages",
            "--timeout",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let count: u64 = err
        .rsplit("guest counter ")
        .next()
        .and_then(|s| s.trim().trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no counter in {err}"));
    assert!(count > 0, "the guest counted");
}

#[test]
fn validate_reports_file_path_message_and_exit_codes() {
    let fixtures = format!(
        "{}/../core/tests/fixtures/valid",
        env!("CARGO_MANIFEST_DIR")
    );
    let valid: Vec<String> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    let ok = Command::new(env!("CARGO_BIN_EXE_virtkit-validate"))
        .args(&valid)
        .args([vms("demo.yaml"), vms("smp.yaml")])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );

    let bad = Command::new(env!("CARGO_BIN_EXE_virtkit-validate"))
        .arg(vms("invalid.yaml"))
        .arg(vms("demo.yaml"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(
        text.contains(&format!(
            "{}: spec.template.spec.domain.cpu.cores: must be >= 1, got 0",
            vms("invalid.yaml")
        )),
        "{text}"
    );
    assert!(
        !text.contains("demo.yaml"),
        "the valid file has no findings"
    );

    let json = Command::new(env!("CARGO_BIN_EXE_virtkit-validate"))
        .args(["--json", &vms("invalid.yaml"), &vms("demo.yaml")])
        .output()
        .unwrap();
    assert_eq!(json.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let docs = v.as_array().unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["valid"], false);
    assert_eq!(docs[0]["kind"], "VirtualMachine");
    assert!(docs[0]["violations"].as_array().unwrap().len() >= 7);
    assert_eq!(docs[1]["valid"], true);

    let missing = Command::new(env!("CARGO_BIN_EXE_virtkit-validate"))
        .arg("/nonexistent.yaml")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}
