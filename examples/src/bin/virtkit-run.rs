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
use virtkit_core::document::Mode;
use virtkit_core::payload::{self, Payload, COUNTER_ADDR};
use virtkit_core::runtime::{memory, CpuConfig, VmBuilder, VmConfig, VmExit};
use virtkit_core::spec::vmi::VmiSpec;
use virtkit_examples::{human_bytes, load_vm};

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
    let mode = if args.lenient {
        Mode::Lenient
    } else {
        Mode::Strict
    };
    match load_vm(args.spec.as_deref(), mode, args.name.as_deref()) {
        Ok((name, spec)) => run(&name, &spec, args.payload, args.timeout),
        Err(messages) => {
            for m in messages {
                eprintln!("{m}");
            }
            ExitCode::from(2)
        }
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
    let cpu = match CpuConfig::from_spec(spec.domain.cpu.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let hugepages = match memory::hugepages_of(spec) {
        Ok(h) => h,
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
        .cpu(cpu)
        .hugepages(hugepages)
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
