//! `virtkit-import --datavolume DV.yaml --target PATH [--scratch DIR]`:
//! run a CDI-style import (http, registry, pvc clone, blank) with a
//! progress bar on a terminal and plain progress lines otherwise, then
//! print the final phase. Secrets and ConfigMaps the DataVolume refers to
//! may sit in the same YAML file; clone sources are named with
//! `--volume NAMESPACE/NAME=PATH`.
//!
//! `virtkit-import --upload-server ADDR --datavolume DV.yaml --target PATH`
//! runs the upload server for one upload DataVolume and prints its token.
//!
//! Exit codes: 0 Succeeded; 1 Failed (the reason is printed); 2 bad usage
//! or an unreadable DataVolume.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use virtkit_core::document::{parse_all, Mode, Object};
use virtkit_core::spec::datavolume::DataVolume;
use virtkit_storage::import::{
    import, CancelHandle, ImportOptions, Objects, Phase, Progress, ScratchSpace,
};
use virtkit_storage::upload::{TlsIdentity, UploadServer};

#[derive(Parser)]
#[command(version, about = "Import a disk image as a CDI DataVolume would")]
struct Args {
    /// The DataVolume (YAML; may also hold its Secret and ConfigMap).
    #[arg(long)]
    datavolume: PathBuf,
    /// The target: a file, a block device (volumeMode Block) or a
    /// directory (contentType archive).
    #[arg(long)]
    target: PathBuf,
    /// Scratch space directory (default: the target's directory).
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// A clone source: NAMESPACE/NAME=PATH.
    #[arg(long = "volume")]
    volumes: Vec<String>,
    /// Registries (host:port) reached over plain HTTP.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Run the upload server on this address for the DataVolume.
    #[arg(long)]
    upload_server: Option<std::net::SocketAddr>,
    /// TLS certificate (PEM) for the upload server.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS key (PEM) for the upload server.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

fn load(args: &Args) -> Result<(DataVolume, Objects), String> {
    let text = std::fs::read_to_string(&args.datavolume)
        .map_err(|e| format!("{}: {e}", args.datavolume.display()))?;
    let mut dv = None;
    let mut objects = Objects::new();
    for doc in parse_all(&text, Mode::Strict) {
        let doc = doc.map_err(|e| format!("{}: {e}", args.datavolume.display()))?;
        match &doc.object {
            Object::DataVolume(d) if dv.is_none() => dv = Some(d.clone()),
            other => {
                objects.add_objects([other]);
            }
        }
    }
    for v in &args.volumes {
        let (name, path) = v
            .split_once('=')
            .ok_or_else(|| format!("--volume {v}: expected NAMESPACE/NAME=PATH"))?;
        let (ns, name) = name.split_once('/').unwrap_or(("default", name));
        objects.add_volume(ns, name, std::path::Path::new(path));
    }
    let dv = dv.ok_or_else(|| format!("{}: no DataVolume in it", args.datavolume.display()))?;
    Ok((dv, objects))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (dv, objects) = match load(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("virtkit-import: {e}");
            return ExitCode::from(2);
        }
    };
    let scratch_dir = args.scratch.clone().unwrap_or_else(|| {
        args.target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), |p| p.to_path_buf())
    });
    let scratch = ScratchSpace::new(scratch_dir);
    if let Ok(n) = scratch.clean_stale() {
        if n > 0 {
            eprintln!("removed {n} stale scratch file(s)");
        }
    }
    let opts = ImportOptions {
        scratch: Some(scratch),
        insecure_registries: args.insecure_registries.clone(),
        cancel: CancelHandle::new(),
        ..Default::default()
    };
    if let Some(addr) = args.upload_server {
        return upload_server(&args, addr, dv, opts);
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>16} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let last_line = std::cell::Cell::new((Phase::Unknown, 0u64));
    let progress = |p: &Progress| match &bar {
        Some(b) => {
            b.set_message(p.phase.as_str());
            b.set_length(p.total.unwrap_or(p.done));
            b.set_position(p.done);
        }
        None => {
            // Plain lines: each phase change and each further 10 %.
            let tenth = p.percent().map_or(0, |x| (x / 10.0) as u64);
            if last_line.get() != (p.phase, tenth) {
                last_line.set((p.phase, tenth));
                let pct = p
                    .percent()
                    .map_or_else(|| format!("{} bytes", p.done), |x| format!("{x:.1}%"));
                eprintln!("{} {pct} {}", p.phase, p.message);
            }
        }
    };
    let result = import(&dv, &args.target, &objects, &opts, &progress);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    match result {
        Ok(out) => {
            if args.json {
                println!("{}", serde_json::to_string(&out).unwrap_or_default());
            }
            println!(
                "phase: Succeeded ({} from {}, {} written, {:.2} s)",
                out.format.as_deref().unwrap_or("no content"),
                out.source,
                virtkit_examples::human_bytes(out.data_bytes),
                out.elapsed.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("phase: Failed ({}): {e}", e.reason());
            ExitCode::from(1)
        }
    }
}

fn upload_server(
    args: &Args,
    addr: std::net::SocketAddr,
    dv: DataVolume,
    opts: ImportOptions,
) -> ExitCode {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => match (std::fs::read(c), std::fs::read(k)) {
            (Ok(cert_pem), Ok(key_pem)) => Some(TlsIdentity { cert_pem, key_pem }),
            _ => {
                eprintln!("virtkit-import: cannot read the TLS certificate or key");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let server = match UploadServer::start(addr, tls, opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("virtkit-import: {e}");
            return ExitCode::from(2);
        }
    };
    let token = match server.register(dv, args.target.clone()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("virtkit-import: {e}");
            return ExitCode::from(2);
        }
    };
    println!("listening: {}", server.addr());
    println!("token: {token}");
    loop {
        let Some(st) = server.wait(&token, Duration::from_secs(3600)) else {
            return ExitCode::from(1);
        };
        match st.outcome {
            Some(Ok(_)) => {
                println!("phase: Succeeded");
                return ExitCode::SUCCESS;
            }
            Some(Err(e)) => {
                println!("phase: Failed: {e}");
                return ExitCode::from(1);
            }
            None => {}
        }
    }
}
