//! `virtkit-run [SPEC.yaml]`: validate a KubeVirt VirtualMachine or
//! VirtualMachineInstance, build the VM under KVM and run it with the
//! guest's serial output on stdout.
//!
//! Exit codes: 0 the guest powered off; 1 the VM failed (fault, KVM error,
//! missing host capability); 2 the spec is invalid or unreadable.
//!
//! Without a payload option the guest is an embedded demo that prints a
//! greeting naming the VM and its size, then powers off.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use virtkit_core::document::{parse_all, Mode, Object};
use virtkit_core::payload::{self, Payload, COUNTER_ADDR};
use virtkit_core::runtime::{VmBuilder, VmConfig, VmExit};
use virtkit_core::spec::vmi::VmiSpec;
use virtkit_core::validate::validate_document;

const DEMO_SPEC: &str = include_str!("../../vms/demo.yaml");

#[derive(Parser)]
#[command(version, about = "Run a tiny VM from a KubeVirt YAML spec")]
struct Args {
    /// VirtualMachine / VirtualMachineInstance YAML or JSON (default: the
    /// embedded demo spec, examples/vms/demo.yaml).
    spec: Option<PathBuf>,
    /// Which VM to run when the file holds several.
    #[arg(long)]
    name: Option<String>,
    /// Keep unknown fields as warnings instead of errors.
    #[arg(long)]
    lenient: bool,
    /// Guest program to run.
    #[arg(long, value_enum, default_value_t = PayloadKind::Greeting)]
    payload: PayloadKind,
    /// Stop the VM after this many seconds (0 = no limit).
    #[arg(long, default_value_t = 0)]
    timeout: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum PayloadKind {
    /// Print a greeting on COM1 and power off.
    Greeting,
    /// Touch 256 pages in a loop while counting, forever.
    TouchPages,
    /// Spin forever.
    Spin,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (source, text) = match &args.spec {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (p.display().to_string(), t),
            Err(e) => {
                eprintln!("{}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        None => ("<embedded demo spec>".to_string(), DEMO_SPEC.to_string()),
    };
    let mode = if args.lenient {
        Mode::Lenient
    } else {
        Mode::Strict
    };
    let (name, spec) = match select_vm(&source, &text, mode, args.name.as_deref()) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let mut spec = spec;
    virtkit_core::defaults::vmi_spec(&mut spec);
    run(&name, &spec, args.payload, args.timeout)
}

/// Parse, validate (printing every problem), and pick the VM to run.
fn select_vm(
    source: &str,
    text: &str,
    mode: Mode,
    want: Option<&str>,
) -> Result<(String, VmiSpec), ExitCode> {
    let mut candidates = Vec::new();
    let mut invalid = false;
    for res in parse_all(text, mode) {
        let doc = match res {
            Ok(d) => d,
            Err(e) => {
                eprintln!(
                    "{source}: document {}: {}: {}",
                    e.document, e.path, e.message
                );
                invalid = true;
                continue;
            }
        };
        let (name, spec) = match &doc.object {
            Object::VirtualMachine(vm) => (doc.object.name(), vm.spec.template.spec.clone()),
            Object::VirtualMachineInstance(vmi) => (doc.object.name(), vmi.spec.clone()),
            _ => continue,
        };
        let name = name.unwrap_or("unnamed").to_string();
        if want.is_some_and(|w| w != name) {
            continue;
        }
        let report = validate_document(&doc);
        for v in &report.violations {
            eprintln!("{source}: {v}");
        }
        if !report.is_valid() {
            invalid = true;
            continue;
        }
        candidates.push((name, spec));
    }
    if invalid {
        eprintln!("{source}: the spec is invalid; nothing was started");
        return Err(ExitCode::from(2));
    }
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        0 => {
            eprintln!(
                "{source}: no VirtualMachine or VirtualMachineInstance{} found",
                want.map(|w| format!(" named {w:?}")).unwrap_or_default()
            );
            Err(ExitCode::from(2))
        }
        _ => {
            let names: Vec<_> = candidates.iter().map(|c| c.0.as_str()).collect();
            eprintln!(
                "{source}: several VMs ({}); choose one with --name",
                names.join(", ")
            );
            Err(ExitCode::from(2))
        }
    }
}

fn human_bytes(b: u64) -> String {
    const MIB: u64 = 1 << 20;
    if b % (1 << 30) == 0 {
        format!("{} GiB", b >> 30)
    } else if b % MIB == 0 {
        format!("{} MiB", b / MIB)
    } else {
        format!("{b} bytes")
    }
}

fn run(name: &str, spec: &VmiSpec, kind: PayloadKind, timeout: u64) -> ExitCode {
    let config = match VmConfig::from_spec(name, spec) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let secure_boot = spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.bootloader.as_ref())
        .and_then(|b| b.efi.as_ref())
        .is_some_and(|e| e.secure_boot());
    let greeting = format!(
        "Hello from virtkit! VM {name} is running with {} vCPU{} and {} of memory.\n",
        config.vcpus,
        if config.vcpus == 1 { "" } else { "s" },
        human_bytes(config.memory_bytes)
    );
    let program: Result<Payload, _> = match kind {
        PayloadKind::Greeting => payload::print_and_power_off(&greeting),
        PayloadKind::TouchPages => payload::touch_pages(256, None, 1 << 16),
        PayloadKind::Spin => payload::spin(),
    };
    let program = match program {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(1);
        }
    };
    let vm = VmBuilder::new(config)
        .serial_output(Box::new(LineFlushed(std::io::stdout())))
        .require_smm(secure_boot)
        .build()
        .and_then(|vm| program.load(&vm).map(|()| vm))
        .and_then(|vm| vm.start().map(|()| vm));
    let vm = match vm {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("{name}: cannot start the VM: {e}");
            return ExitCode::from(1);
        }
    };
    let exit = if timeout == 0 {
        vm.wait()
    } else {
        match vm.wait_timeout(Duration::from_secs(timeout)) {
            Ok(Some(e)) => Ok(e),
            Ok(None) => {
                let mut c = [0u8; 8];
                let _ = vm.read_memory(COUNTER_ADDR, &mut c);
                eprintln!(
                    "{name}: stopping after {timeout} s (guest counter {})",
                    u64::from_le_bytes(c)
                );
                vm.stop()
            }
            Err(e) => Err(e),
        }
    };
    match exit {
        Ok(VmExit::PowerOff) => ExitCode::SUCCESS,
        Ok(VmExit::Stopped) if timeout > 0 => ExitCode::SUCCESS,
        Ok(other) => {
            eprintln!("{name}: {other}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(1)
        }
    }
}

/// Flushes on every write, so guest output appears as it is produced.
struct LineFlushed<W: Write>(W);
impl<W: Write> Write for LineFlushed<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(b)?;
        self.0.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
