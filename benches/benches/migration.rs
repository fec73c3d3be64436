//! Migration hot paths and whole migrations, each beside its peer:
//! - zero-page detection over 256 MiB, beside memcpy of the same bytes;
//! - migrating a 1 GiB VM over loopback TCP (idle with zero RAM, idle with
//!   RAM full of data, busy rewriting 4096 pages), reported as a ratio of
//!   the loopback socket limit measured in the same run, plus downtime;
//! - QEMU (qemu-system-x86_64, if installed) migrating a stopped 1 GiB VM
//!   over the same loopback, side by side with the idle virtkit case.
//!
//! `VIRTKIT_BENCH_BIG=1` adds 4 GiB guests. 16 GiB guests need 32 GiB for
//! both sides and do not fit the 24 GiB test machine.

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use virtkit_benches::{report_ratio, seconds_per_call};
use virtkit_core::payload;
use virtkit_core::runtime::{Vm, VmBuilder, VmConfig};
use virtkit_migration::destination::receive;
use virtkit_migration::source::{is_zero, migrate, CancelHandle};
use virtkit_migration::MigrationOptions;

const GIB: u64 = 1 << 30;

fn hot_paths(c: &mut Criterion) {
    const N: usize = 256 << 20;
    let zeros = vec![0u8; N];
    let mut dst = vec![0u8; N];
    let mut g = c.benchmark_group("zero_page_detection_256MiB");
    g.throughput(Throughput::Bytes(N as u64));
    g.bench_function("is_zero_all_zero_pages", |b| {
        b.iter(|| black_box(zeros.chunks(4096).filter(|p| is_zero(p)).count()))
    });
    g.bench_function("peer_memcpy", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&zeros)))
    });
    g.finish();
    let budget = Duration::from_millis(500);
    let scan = seconds_per_call(budget, || {
        black_box(zeros.chunks(4096).filter(|p| is_zero(p)).count());
    });
    let copy = seconds_per_call(budget, || dst.copy_from_slice(black_box(&zeros)));
    report_ratio("zero_page_detection", N as u64, scan, "memcpy", copy);
}

/// Loopback TCP throughput for `bytes`, one writer thread and one reader.
fn socket_limit(bytes: u64) -> f64 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let reader = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    });
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).ok();
    let buf = vec![0x5au8; 4 << 20];
    let t = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        s.write_all(&buf).expect("write");
        sent += buf.len() as u64;
    }
    drop(s);
    let got = reader.join().expect("reader");
    got as f64 / t.elapsed().as_secs_f64()
}

#[derive(Clone, Copy, Debug)]
enum Load {
    IdleZero,
    IdleData,
    Busy,
}

fn source_vm(bytes: u64, load: Load) -> Vm {
    let vm = VmBuilder::new(VmConfig {
        name: "bench-src".into(),
        vcpus: 1,
        memory_bytes: bytes,
    })
    .build()
    .expect("build");
    let program = match load {
        Load::Busy => payload::touch_pages(4096, None, 0),
        // Idle guests halt, like an idle OS: no host CPU used.
        _ => payload::halt(),
    }
    .expect("payload");
    program.load(&vm).expect("load");
    if let Load::IdleData = load {
        // Fill RAM above the payload with non-zero data, as a booted guest has.
        let chunk: Vec<u8> = (0..(4u64 << 20)).map(|i| (i % 251) as u8 | 1).collect();
        let mut at = 2u64 << 20;
        while at + chunk.len() as u64 <= bytes.min(3 * GIB) {
            vm.write_memory(at, &chunk).expect("fill");
            at += chunk.len() as u64;
        }
    }
    vm.start().expect("start");
    vm
}

fn migrate_once(bytes: u64, load: Load) -> Option<(f64, f64, u64)> {
    let l = TcpListener::bind("127.0.0.1:0").ok()?;
    let addr = l.local_addr().ok()?;
    let target = std::thread::spawn(move || {
        let (s, _) = l.accept().expect("accept");
        s.set_nodelay(true).ok();
        receive(Box::new(s), b"bench", |layout| {
            VmBuilder::new(layout.vm_config("bench-dst")).build()
        })
        .map(|r| {
            let _ = r.vm.stop();
        })
        .map_err(|e| e.to_string())
    });
    let vm = source_vm(bytes, load);
    let s = TcpStream::connect(addr).ok()?;
    s.set_nodelay(true).ok();
    let opts = MigrationOptions {
        bandwidth_bytes_per_sec: 0,
        max_downtime: Duration::from_millis(100),
        secret: b"bench".to_vec(),
        ..MigrationOptions::default()
    };
    let trace = std::env::var_os("VIRTKIT_BENCH_TRACE").is_some();
    let t0 = Instant::now();
    let stats = migrate(&vm, Box::new(s), &opts, &CancelHandle::new(), &|p| {
        if trace {
            eprintln!(
                "  {:>8.3}s {:?} pass {} remaining {} sent {} MiB",
                t0.elapsed().as_secs_f64(),
                p.phase,
                p.iteration,
                p.remaining_pages,
                p.bytes_sent >> 20
            );
        }
    });
    let target = target.join().ok()?;
    match (stats, target) {
        (Ok(st), Ok(())) => Some((
            st.total_time.as_secs_f64(),
            st.downtime.total.as_secs_f64(),
            st.bytes_sent,
        )),
        (a, b) => {
            eprintln!("migration failed: {:?} / {:?}", a.err(), b.err());
            None
        }
    }
}

fn whole_migrations(_c: &mut Criterion) {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIP whole migrations: /dev/kvm is absent");
        return;
    }
    let limit = socket_limit(4 * GIB);
    println!("LOOPBACK socket limit: {:.2} GiB/s", limit / GIB as f64);
    let mut sizes = vec![GIB];
    if std::env::var_os("VIRTKIT_BENCH_BIG").is_some() {
        sizes.push(4 * GIB);
    }
    for &size in &sizes {
        for load in [Load::IdleZero, Load::IdleData, Load::Busy] {
            if let Some((total, downtime, bytes)) = migrate_once(size, load) {
                let rate = bytes as f64 / total;
                println!(
                    "MIGRATION {} GiB {load:?}: total {:.3} s, downtime {:.1} ms, {} MiB on the wire, {:.2} GiB/s = {:.0}% of the socket limit; guest RAM moved at {:.2} GiB/s",
                    size / GIB,
                    total,
                    downtime * 1e3,
                    bytes >> 20,
                    rate / GIB as f64,
                    100.0 * rate / limit,
                    size as f64 / total / GIB as f64,
                );
            }
        }
    }
    for &size in &sizes {
        match qemu_migration(size) {
            Some((total, downtime)) => {
                println!(
                    "QEMU {} GiB stopped VM: total {total:.3} s, downtime {downtime:.1} ms",
                    size / GIB
                );
                if let Some((ours, our_down, _)) = migrate_once(size, Load::IdleZero) {
                    println!(
                        "RATIO migration_{}GiB_idle: virtkit {ours:.3} s (downtime {:.1} ms) vs QEMU {total:.3} s (downtime {downtime:.1} ms) = {:.2}x faster",
                        size / GIB,
                        our_down * 1e3,
                        total / ours
                    );
                }
            }
            None => println!("QEMU peer: qemu-system-x86_64 not available or failed; skipped"),
        }
    }
}

/// Migrate a stopped QEMU VM with `bytes` of RAM over loopback; returns
/// QEMU's own total-time and downtime.
fn qemu_migration(bytes: u64) -> Option<(f64, f64)> {
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let mem = format!("{}M", bytes >> 20);
    let common = [
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-m",
        &mem,
        "-S",
        "-nodefaults",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "none",
    ];
    let mut dst = Command::new("qemu-system-x86_64")
        .args(common)
        .args(["-incoming", &format!("tcp:127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let qmp_path = std::env::temp_dir().join(format!("virtkit-bench-qmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&qmp_path);
    let mut src = Command::new("qemu-system-x86_64")
        .args(common)
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", qmp_path.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let result = (|| {
        let t = Instant::now();
        let sock = loop {
            if let Ok(s) = std::os::unix::net::UnixStream::connect(&qmp_path) {
                break s;
            }
            if t.elapsed() > Duration::from_secs(10) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut w = sock.try_clone().ok()?;
        let mut r = BufReader::new(sock);
        let mut cmd = |c: &str| -> Option<serde_json::Value> {
            writeln!(w, "{c}").ok()?;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).ok()?;
                let v: serde_json::Value = serde_json::from_str(&line).ok()?;
                if v.get("return").is_some() || v.get("error").is_some() {
                    return Some(v);
                }
            }
        };
        let mut greeting = String::new();
        cmd(r#"{"execute":"qmp_capabilities"}"#)?;
        let _ = &mut greeting;
        cmd(
            r#"{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":107374182400,"downtime-limit":100}}"#,
        )?;
        cmd(&format!(
            r#"{{"execute":"migrate","arguments":{{"uri":"tcp:127.0.0.1:{port}"}}}}"#
        ))?;
        let start = Instant::now();
        loop {
            let v = cmd(r#"{"execute":"query-migrate"}"#)?;
            let ret = &v["return"];
            match ret["status"].as_str() {
                Some("completed") => {
                    return Some((
                        ret["total-time"].as_f64()? / 1e3,
                        ret["downtime"].as_f64().unwrap_or(0.0),
                    ))
                }
                Some("failed") | Some("cancelled") => return None,
                _ => {}
            }
            if start.elapsed() > Duration::from_secs(120) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })();
    let _ = src.kill();
    let _ = dst.kill();
    let _ = src.wait();
    let _ = dst.wait();
    let _ = std::fs::remove_file(&qmp_path);
    result
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3));
    targets = hot_paths, whole_migrations
}
criterion_main!(benches);
