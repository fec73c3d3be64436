//! qcow2 → raw of a 1 GiB image (half data, half holes) from a local file,
//! virtkit beside `qemu-img convert -O raw` of the same file, warm cache,
//! reported as a ratio. Plain and compressed qcow2. Skips where qemu-img
//! is absent. The HTTP and gz/xz paths are the `import` bench.
//!
//! virtkit fsyncs its output before renaming it into place (a committed
//! target survives a crash); `qemu-img convert` by default does not flush
//! at all (its convert cache mode is `unsafe`). Both ratios are printed:
//! against the default, and against `-t writeback`, which flushes at the
//! end as virtkit does.

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use virtkit_storage::{convert_to_raw, ConvertOptions};

fn make_source(dir: &Path) -> Option<()> {
    let raw = dir.join("src.raw");
    // 4 MiB of pseudo-random data every 8 MiB: half data, half holes.
    virtkit_benches::write_half_data_image(&raw, 4 << 20, |x| (x >> 24) as u8).ok()?;
    for (name, extra) in [("plain.qcow2", &[][..]), ("compressed.qcow2", &["-c"][..])] {
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(extra);
        let src = raw.to_str()?.to_string();
        let dst = dir.join(name).to_str()?.to_string();
        args.push(&src);
        args.push(&dst);
        Command::new("qemu-img")
            .args(&args)
            .status()
            .ok()?
            .success()
            .then_some(())?;
    }
    Some(())
}

fn time_qemu(src: &Path, dst: &Path, cache: &str) -> Option<f64> {
    let _ = std::fs::remove_file(dst);
    let t = Instant::now();
    let ok = Command::new("qemu-img")
        .args([
            "convert",
            "-t",
            cache,
            "-f",
            "qcow2",
            "-O",
            "raw",
            src.to_str()?,
            dst.to_str()?,
        ])
        .status()
        .ok()?
        .success();
    ok.then(|| t.elapsed().as_secs_f64())
}

fn time_ours(src: &Path, dst: &Path) -> Option<f64> {
    let _ = std::fs::remove_file(dst);
    let t = Instant::now();
    convert_to_raw(src, dst, &ConvertOptions::default(), &|_, _| {}).ok()?;
    Some(t.elapsed().as_secs_f64())
}

fn bench(_c: &mut Criterion) {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        eprintln!("SKIP qcow2_convert: qemu-img is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("virtkit-bench-qcow2-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    if make_source(&dir).is_none() {
        eprintln!("SKIP qcow2_convert: could not build the source images");
        return;
    }
    for name in ["plain.qcow2", "compressed.qcow2"] {
        let src = dir.join(name);
        let (mut ours, mut qemu, mut qemu_flushed) = (f64::MAX, f64::MAX, f64::MAX);
        // Best of 3, alternating, warm cache.
        for _ in 0..3 {
            if let Some(t) = time_qemu(&src, &dir.join("qemu.raw"), "unsafe") {
                qemu = qemu.min(t);
            }
            if let Some(t) = time_qemu(&src, &dir.join("qemu.raw"), "writeback") {
                qemu_flushed = qemu_flushed.min(t);
            }
            if let Some(t) = time_ours(&src, &dir.join("ours.raw")) {
                ours = ours.min(t);
            }
        }
        println!(
            "RATIO qcow2_convert_1GiB_{name}: virtkit {ours:.3} s vs qemu-img {qemu:.3} s = {:.2}x faster \
             (vs qemu-img -t writeback, which flushes as virtkit does: {qemu_flushed:.3} s = {:.2}x)",
            qemu / ours,
            qemu_flushed / ours
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
