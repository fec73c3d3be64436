//! `virtkit-migrate`: live-migrate a running VM between two processes.
//!
//! Destination: `virtkit-migrate receive --listen tcp:127.0.0.1:4444`
//! Source:      `virtkit-migrate send [SPEC] --to tcp:127.0.0.1:4444 --after 2`
//!
//! The source starts the VM from the spec (default: the demo spec) with a
//! guest that counts and rewrites 256 pages, migrates it after `--after`
//! seconds, and prints progress and the final statistics. The destination
//! resumes the guest and shows that it keeps counting. Machine-readable
//! results are printed as `RESULT {json}` lines on stdout.
//!
//! `send --disk IMAGE` adds a local raw disk that moves with the guest
//! (KubeVirt's `BlockMigration`); the destination creates its copy as
//! `<--disk-dir>/<id>.img` and deletes it again if the migration fails.
//!
//! Exit codes: 0 success; 1 the migration failed (the source VM kept
//! running: the RESULT line shows its counter before and after); 2 bad
//! arguments or spec.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use serde_json::json;
use virtkit_core::document::Mode;
use virtkit_core::payload::{self, COUNTER_ADDR};
use virtkit_core::runtime::{RuntimeError, Vm, VmBuilder, VmConfig};
use virtkit_devices::block::{DiskOptions, RawFile, TrackedDisk};
use virtkit_examples::load_vm;
use virtkit_migration::destination::receive;
use virtkit_migration::source::{migrate, CancelHandle};
use virtkit_migration::transport::{connect, Endpoint, Listener};
use virtkit_migration::MigrationOptions;

#[derive(Parser)]
#[command(version, about = "Live-migrate a VM between two processes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Wait for one incoming migration and run the guest.
    Receive(ReceiveArgs),
    /// Start a VM and migrate it.
    Send(SendArgs),
}

#[derive(ClapArgs)]
struct ReceiveArgs {
    /// tcp:HOST:PORT (port 0 = any), HOST:PORT or unix:PATH.
    #[arg(long)]
    listen: String,
    /// Shared secret (both sides must agree).
    #[arg(long, default_value = "virtkit-demo-secret")]
    secret: String,
    /// Keep running the arrived guest for this many seconds.
    #[arg(long, default_value_t = 2.0)]
    run_for: f64,
    /// Where to create the disks a BlockMigration brings (`<id>.img`).
    #[arg(long)]
    disk_dir: Option<PathBuf>,
}

#[derive(ClapArgs)]
struct SendArgs {
    /// VM spec (default: the embedded demo spec).
    spec: Option<PathBuf>,
    /// Where the destination listens.
    #[arg(long)]
    to: String,
    /// Local address to connect from (the migration network).
    #[arg(long)]
    bind: Option<std::net::SocketAddr>,
    /// Seconds to run before migrating.
    #[arg(long, default_value_t = 1.0)]
    after: f64,
    /// Shared secret.
    #[arg(long, default_value = "virtkit-demo-secret")]
    secret: String,
    /// Bandwidth cap in bytes per second (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    bandwidth: u64,
    /// Target downtime in milliseconds.
    #[arg(long, default_value_t = 100)]
    max_downtime_ms: u64,
    /// progressTimeout in seconds.
    #[arg(long, default_value_t = 150)]
    progress_timeout: u64,
    /// Compare a checksum of all guest RAM on both sides.
    #[arg(long)]
    verify: bool,
    /// A local raw disk image that moves with the guest, as `disk0`.
    #[arg(long)]
    disk: Option<PathBuf>,
}

/// Open `path` as a raw disk whose written chunks are tracked.
fn tracked_disk(path: &std::path::Path) -> Result<Arc<TrackedDisk>, String> {
    let raw = RawFile::open(path, DiskOptions::default())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Arc::new(TrackedDisk::new(Arc::new(raw))))
}

/// The target's copies of the source's local disks: fresh sparse files
/// in `dir`, registered on `vm`; their paths are pushed to `created` as
/// they are made, so a failed migration can remove them.
fn target_disks(
    vm: &Vm,
    layout: &virtkit_migration::destination::TargetLayout,
    dir: Option<&std::path::Path>,
    created: &mut Vec<PathBuf>,
) -> Result<(), RuntimeError> {
    if layout.disks.is_empty() {
        return Ok(());
    }
    let dir = dir.ok_or_else(|| {
        RuntimeError::InvalidConfig("the source brings local disks: give --disk-dir".into())
    })?;
    for (id, size) in &layout.disks {
        let path = dir.join(format!("{id}.img"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| RuntimeError::InvalidConfig(format!("{}: {e}", path.display())))?;
        created.push(path.clone());
        file.set_len(*size)
            .map_err(|e| RuntimeError::InvalidConfig(format!("{}: {e}", path.display())))?;
        let disk = tracked_disk(&path).map_err(RuntimeError::InvalidConfig)?;
        vm.add_migrating_disk(id, disk)?;
    }
    Ok(())
}

fn counter(vm: &Vm) -> u64 {
    let mut b = [0u8; 8];
    let _ = vm.read_memory(COUNTER_ADDR, &mut b);
    u64::from_le_bytes(b)
}

fn result(v: serde_json::Value) {
    println!("RESULT {v}");
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Receive(a) => run_receive(a),
        Command::Send(a) => run_send(a),
    }
}

fn run_receive(a: ReceiveArgs) -> ExitCode {
    let at: Endpoint = match a.listen.parse() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("--listen: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match Listener::bind(&at) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", a.listen);
            return ExitCode::from(1);
        }
    };
    let shown = match listener.local_endpoint() {
        Ok(Endpoint::Tcp(addr)) => format!("tcp:{addr}"),
        Ok(Endpoint::Unix(p)) => format!("unix:{}", p.display()),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    println!("LISTENING {shown}");
    let stream = match listener.accept() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("accept: {e}");
            return ExitCode::from(1);
        }
    };
    let mut disks = Vec::new();
    let got = receive(stream, a.secret.as_bytes(), |layout| {
        eprintln!(
            "incoming: {} vCPUs, {} bytes of RAM, disks {:?}; building the target VM",
            layout.vcpus, layout.memory_bytes, layout.disks
        );
        let vm = VmBuilder::new(layout.vm_config("migrated")).build()?;
        target_disks(&vm, layout, a.disk_dir.as_deref(), &mut disks)?;
        Ok(vm)
    });
    let got = match got {
        Ok(g) => g,
        Err(e) => {
            // Nothing half-copied stays behind.
            for path in &disks {
                let _ = std::fs::remove_file(path);
            }
            eprintln!("incoming migration failed, nothing kept: {e}");
            result(json!({"event": "failed", "error": e.to_string()}));
            return ExitCode::from(1);
        }
    };
    let first = counter(&got.vm);
    result(json!({
        "event": "resumed",
        "counter": first,
        "checksum": got.stats.checksum,
        "stats": got.stats,
        "disks": disks,
    }));
    std::thread::sleep(Duration::from_secs_f64(a.run_for.max(0.0)));
    let last = counter(&got.vm);
    let _ = got.vm.stop();
    eprintln!("guest counted from {first} to {last} after arriving");
    result(json!({"event": "final", "counter": last}));
    ExitCode::SUCCESS
}

fn run_send(a: SendArgs) -> ExitCode {
    let to: Endpoint = match a.to.parse() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("--to: {e}");
            return ExitCode::from(2);
        }
    };
    let (name, spec) = match load_vm(a.spec.as_deref(), Mode::Strict, None) {
        Ok(v) => v,
        Err(messages) => {
            for m in messages {
                eprintln!("{m}");
            }
            return ExitCode::from(2);
        }
    };
    let disk = match a.disk.as_deref().map(tracked_disk).transpose() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("--disk: {e}");
            return ExitCode::from(2);
        }
    };
    let vm = VmConfig::from_spec(&name, &spec)
        .and_then(|c| VmBuilder::new(c).build())
        .and_then(|vm| {
            if let Some(d) = disk {
                vm.add_migrating_disk("disk0", d)?;
            }
            payload::touch_pages(256, None, 0)
                .map_err(|e| virtkit_core::runtime::RuntimeError::InvalidConfig(e.to_string()))?
                .load(&vm)?;
            vm.start()?;
            Ok(vm)
        });
    let vm = match vm {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("{name}: cannot start the VM: {e}");
            return ExitCode::from(1);
        }
    };
    std::thread::sleep(Duration::from_secs_f64(a.after.max(0.0)));
    eprintln!(
        "{name}: guest counter {} — migrating to {}",
        counter(&vm),
        a.to
    );
    let stream = match connect(&to, a.bind) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot connect to {}: {e}; the VM keeps running here", a.to);
            let _ = vm.stop();
            return ExitCode::from(1);
        }
    };
    let opts = MigrationOptions {
        bandwidth_bytes_per_sec: a.bandwidth,
        max_downtime: Duration::from_millis(a.max_downtime_ms),
        progress_timeout: Duration::from_secs(a.progress_timeout),
        secret: a.secret.into_bytes(),
        verify_checksum: a.verify,
        ..MigrationOptions::default()
    };
    let started = std::time::SystemTime::now();
    let outcome = migrate(&vm, stream, &opts, &CancelHandle::new(), &|p| {
        eprintln!(
            "{:?}: pass {} remaining {} pages and {} KiB of disk, {} KiB sent",
            p.phase,
            p.iteration,
            p.remaining_pages,
            p.remaining_disk_bytes / 1024,
            p.bytes_sent / 1024
        );
    });
    match outcome {
        Ok(stats) => {
            let record = virtkit_migration::model::MigrationRecord {
                uid: format!(
                    "{name}-{}",
                    started
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                ),
                phase: virtkit_migration::MigrationPhase::Succeeded,
                start_timestamp: virtkit_migration::model::rfc3339(started),
                end_timestamp: virtkit_migration::model::rfc3339(std::time::SystemTime::now()),
                failure: None,
                stats: stats.clone(),
                target_address: a.to.clone(),
            };
            eprintln!(
                "migrated in {:?}: {} passes, {} pages + {} zero pages, downtime {:?}",
                stats.total_time,
                stats.iterations,
                stats.pages_sent,
                stats.zero_pages,
                stats.downtime.total
            );
            result(json!({
                "event": "migrated",
                "counter_at_pause": counter(&vm),
                "checksum": stats.checksum,
                "record": record,
            }));
            ExitCode::SUCCESS
        }
        Err(e) => {
            let before = counter(&vm);
            std::thread::sleep(Duration::from_millis(300));
            let after = counter(&vm);
            eprintln!(
                "migration failed: {e}; the VM is still running here (counter {before} → {after})"
            );
            result(
                json!({"event": "failed", "error": e.to_string(), "counter_before": before, "counter_after": after}),
            );
            let _ = vm.stop();
            ExitCode::from(1)
        }
    }
}
