//! Shared code of the reference binaries in `src/bin/`: `virtkit-run`
//! boots a tiny VM from a KubeVirt YAML spec, `virtkit-validate` checks
//! documents, `virtkit-migrate` moves a running VM between two processes.

use virtkit_core::document::{parse_all, Mode, Object};
use virtkit_core::spec::vmi::VmiSpec;
use virtkit_core::validate::validate_document;

/// The demo spec `virtkit-run` uses when given none.
pub const DEMO_SPEC: &str = include_str!("../vms/demo.yaml");

/// Parse and validate `text`, returning the one VM to run (or the one
/// named `want`) with its name and spec, or every message to print.
pub fn select_vm(
    source: &str,
    text: &str,
    mode: Mode,
    want: Option<&str>,
) -> Result<(String, VmiSpec), Vec<String>> {
    let mut candidates = Vec::new();
    let mut messages = Vec::new();
    let mut invalid = false;
    for res in parse_all(text, mode) {
        let doc = match res {
            Ok(d) => d,
            Err(e) => {
                messages.push(format!(
                    "{source}: document {}: {}: {}",
                    e.document, e.path, e.message
                ));
                invalid = true;
                continue;
            }
        };
        let spec = match &doc.object {
            Object::VirtualMachine(vm) => vm.spec.template.spec.clone(),
            Object::VirtualMachineInstance(vmi) => vmi.spec.clone(),
            _ => continue,
        };
        let name = doc.object.name().unwrap_or("unnamed").to_string();
        if want.is_some_and(|w| w != name) {
            continue;
        }
        let report = validate_document(&doc);
        messages.extend(report.violations.iter().map(|v| format!("{source}: {v}")));
        if !report.is_valid() {
            invalid = true;
            continue;
        }
        candidates.push((name, spec));
    }
    if invalid {
        messages.push(format!(
            "{source}: the spec is invalid; nothing was started"
        ));
        return Err(messages);
    }
    match candidates.len() {
        1 => {
            for m in messages {
                eprintln!("{m}"); // warnings
            }
            Ok(candidates.remove(0))
        }
        0 => Err(vec![format!(
            "{source}: no VirtualMachine or VirtualMachineInstance{} found",
            want.map(|w| format!(" named {w:?}")).unwrap_or_default()
        )]),
        _ => {
            let names: Vec<_> = candidates.iter().map(|c| c.0.as_str()).collect();
            Err(vec![format!(
                "{source}: several VMs ({}); choose one with --name",
                names.join(", ")
            )])
        }
    }
}

/// Read a spec file (or the demo spec for `None`), select and default it.
pub fn load_vm(
    path: Option<&std::path::Path>,
    mode: Mode,
    want: Option<&str>,
) -> Result<(String, VmiSpec), Vec<String>> {
    let (source, text) = match path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (p.display().to_string(), t),
            Err(e) => return Err(vec![format!("{}: {e}", p.display())]),
        },
        None => ("<embedded demo spec>".to_string(), DEMO_SPEC.to_string()),
    };
    let (name, mut spec) = select_vm(&source, &text, mode, want)?;
    virtkit_core::defaults::vmi_spec(&mut spec);
    Ok((name, spec))
}

/// Human-readable byte size (`64 MiB`).
pub fn human_bytes(b: u64) -> String {
    if b % (1 << 30) == 0 {
        format!("{} GiB", b >> 30)
    } else if b % (1 << 20) == 0 {
        format!("{} MiB", b >> 20)
    } else {
        format!("{b} bytes")
    }
}
