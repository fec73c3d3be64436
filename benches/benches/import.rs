//! DataVolume imports over loopback HTTP of a 1 GiB qcow2 (mixed data and
//! holes), plain, gzip'd and xz'd, served by nginx; each beside the manual
//! pipeline a user would otherwise run: `curl` (piped through `gzip -dc`
//! or `xz -dc` where compressed) into a file, then `qemu-img convert -O
//! raw`. Warm cache, best of a few runs, reported as a ratio. Skips where
//! nginx, curl, qemu-img, gzip or xz is absent.
//!
//! The local-file case (virtkit vs `qemu-img convert` of the same file) is
//! the `qcow2_convert` bench.

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use virtkit_core::document::{parse_one, Mode, Object};
use virtkit_core::spec::datavolume::DataVolume;
use virtkit_storage::import::{import, ImportOptions, Objects, ScratchSpace};

const RUNS: usize = 3;

/// Kills nginx when the bench ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success())
}

/// A 1 GiB guest: 4 MiB of compressible data (bytes of a 16-symbol
/// alphabet, about 2:1 under gzip) every 8 MiB, holes between; as qcow2,
/// qcow2.gz and qcow2.xz in `root`.
fn make_images(root: &Path) -> Option<()> {
    let raw = root.join("guest.raw");
    virtkit_benches::write_half_data_image(&raw, 4 << 20, |x| b'a' + (x >> 28) as u8).ok()?;
    let r = root.display();
    sh(&format!(
        "qemu-img convert -f raw -O qcow2 {r}/guest.raw {r}/disk.qcow2 && \
         gzip -1 -c {r}/disk.qcow2 > {r}/disk.qcow2.gz && \
         xz -0 -T2 -c {r}/disk.qcow2 > {r}/disk.qcow2.xz && rm {r}/guest.raw"
    ))
    .then_some(())
}

fn free_port() -> Option<u16> {
    Some(
        TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port(),
    )
}

fn nginx(root: &Path, work: &Path) -> Option<(Server, u16)> {
    let port = free_port()?;
    let w = work.display();
    let conf = format!(
        "daemon off;\nuser root;\nworker_processes 1;\npid {w}/nginx.pid;\n\
         error_log {w}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{ access_log off; sendfile on; client_body_temp_path {w}/body; \
         proxy_temp_path {w}/proxy; fastcgi_temp_path {w}/fastcgi; \
         uwsgi_temp_path {w}/uwsgi; scgi_temp_path {w}/scgi; \
         default_type application/octet-stream; \
         server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
        root = root.display()
    );
    std::fs::write(work.join("nginx.conf"), conf).ok()?;
    let child = Command::new("/usr/sbin/nginx")
        .arg("-c")
        .arg(work.join("nginx.conf"))
        .arg("-p")
        .arg(work)
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((server, port));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn data_volume(url: &str) -> Option<DataVolume> {
    let yaml = format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\n\
         metadata: {{name: bench, namespace: default}}\n\
         spec:\n  source:\n    http:\n      url: \"{url}\"\n  \
         pvc:\n    accessModes: [ReadWriteOnce]\n    \
         resources: {{requests: {{storage: 1Gi}}}}\n"
    );
    match parse_one(&yaml, Mode::Strict).ok()?.object {
        Object::DataVolume(dv) => Some(dv),
        _ => None,
    }
}

fn time_ours(url: &str, out: &Path, scratch: &Path) -> Option<f64> {
    let _ = std::fs::remove_file(out);
    let dv = data_volume(url)?;
    let opts = ImportOptions {
        scratch: Some(ScratchSpace::new(scratch)),
        ..ImportOptions::default()
    };
    let t = Instant::now();
    match import(&dv, out, &Objects::new(), &opts, &|_| {}) {
        Ok(_) => Some(t.elapsed().as_secs_f64()),
        Err(e) => {
            eprintln!("virtkit import of {url} failed: {e}");
            None
        }
    }
}

fn time_peer(url: &str, decompress: &str, work: &Path, out: &Path) -> Option<f64> {
    let _ = std::fs::remove_file(out);
    let tmp = work.join("peer.qcow2");
    let cmd = format!(
        "curl -sf {url} {decompress} > {tmp} && qemu-img convert -f qcow2 -O raw {tmp} {out}; \
         r=$?; rm -f {tmp}; exit $r",
        tmp = tmp.display(),
        out = out.display()
    );
    let t = Instant::now();
    sh(&cmd).then(|| t.elapsed().as_secs_f64())
}

fn bench(_c: &mut Criterion) {
    let tools = ["nginx", "curl", "qemu-img", "gzip", "xz"];
    if let Some(t) = tools
        .iter()
        .find(|t| !have(t) && !Path::new(&format!("/usr/sbin/{t}")).exists())
    {
        eprintln!("SKIP import: {t} is not installed");
        return;
    }
    let base: PathBuf =
        std::env::temp_dir().join(format!("virtkit-bench-import-{}", std::process::id()));
    let (root, work) = (base.join("www"), base.join("work"));
    let made = std::fs::create_dir_all(&root)
        .and_then(|_| std::fs::create_dir_all(&work))
        .is_ok()
        && make_images(&root).is_some();
    if !made {
        eprintln!("SKIP import: could not build the source images");
        let _ = std::fs::remove_dir_all(&base);
        return;
    }
    let Some((_server, port)) = nginx(&root, &work) else {
        eprintln!("SKIP import: nginx did not start");
        let _ = std::fs::remove_dir_all(&base);
        return;
    };
    for (file, decompress) in [
        ("disk.qcow2", ""),
        ("disk.qcow2.gz", "| gzip -dc"),
        ("disk.qcow2.xz", "| xz -dc"),
    ] {
        let url = format!("http://127.0.0.1:{port}/{file}");
        let (mut ours, mut peer) = (f64::MAX, f64::MAX);
        for _ in 0..RUNS {
            if let Some(t) = time_peer(&url, decompress, &work, &work.join("peer.raw")) {
                peer = peer.min(t);
            }
            if let Some(t) = time_ours(&url, &work.join("ours.raw"), &work) {
                ours = ours.min(t);
            }
        }
        let same = sh(&format!(
            "cmp -s {w}/peer.raw {w}/ours.raw",
            w = work.display()
        ));
        println!(
            "RATIO import_http_1GiB_{file}: virtkit {ours:.3} s vs curl{decompress} + qemu-img \
             {peer:.3} s = {:.2}x faster{}",
            peer / ours,
            if same { "" } else { " (OUTPUTS DIFFER)" }
        );
    }
    let _ = std::fs::remove_dir_all(&base);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
