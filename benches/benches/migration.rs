//! Migration hot paths and whole migrations, each beside its peer:
//! - zero-page detection in place over 256 MiB of guest RAM, beside memcpy
//!   of the same bytes;
//! - guest pages to a loopback socket (`guest_io::send_all`, 4 MiB frames
//!   with their headers), beside a raw socket write of the same bytes from
//!   an ordinary buffer;
//! - whole migrations of 1 GiB guests (4 and 16 GiB with
//!   `VIRTKIT_BENCH_BIG=1`) over loopback TCP: idle with zero RAM, idle
//!   with RAM full of data (up to 3 GiB), busy rewriting 4096 pages. Each
//!   is reported as a ratio of the loopback socket limit measured in the
//!   same run, with its downtime, and beside QEMU migrating a stopped VM of
//!   the same size with the same data over the same loopback
//!   (`qemu-system-x86_64`, when installed).
//!
//! Every whole-migration figure is the median of 3 runs, each after
//! `warm_host_memory` (see there: the test machine's host reclaims free
//! memory, which otherwise swamps what is measured).

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use virtkit_benches::{median, report_ratio, seconds_per_call, warm_host_memory};
use virtkit_core::payload;
use virtkit_core::runtime::{memory, Vm, VmBuilder, VmConfig};
use virtkit_migration::destination::receive;
use virtkit_migration::guest_io::{is_zero_in_place, send_all};
use virtkit_migration::source::{migrate, CancelHandle};
use virtkit_migration::MigrationOptions;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const REPS: usize = 3;
/// Data in an "idle, RAM full of data" guest: from 2 MiB up to this.
const DATA_END: u64 = 3 * GIB;
const FRAME: usize = 4 << 20;

/// The bytes the data-filled guests hold, from guest address 2 MiB.
fn data_bytes(size: u64) -> u64 {
    size.min(DATA_END) - 2 * MIB
}

fn data_chunk() -> Vec<u8> {
    (0..FRAME as u64).map(|i| (i % 251) as u8 | 1).collect()
}

fn hot_paths(c: &mut Criterion) {
    const N: usize = 256 << 20;
    let mem = memory::create(N as u64).expect("guest memory");
    // Populated zero pages (a fresh mapping would read the shared zero page).
    mem.write_slice(&vec![0u8; N], GuestAddress(0))
        .expect("populate");
    let guest = mem.get_slice(GuestAddress(0), N).expect("slice");
    let scan = || {
        (0..N / 4096)
            .filter(|i| is_zero_in_place(&guest.subslice(i * 4096, 4096).expect("page")))
            .count()
    };
    let mut dst = vec![1u8; N];
    let mut g = c.benchmark_group("zero_page_detection_256MiB");
    g.throughput(Throughput::Bytes(N as u64));
    g.bench_function("is_zero_in_place_all_zero_pages", |b| {
        b.iter(|| black_box(scan()))
    });
    g.bench_function("peer_memcpy", |b| {
        b.iter(|| guest.copy_to(black_box(&mut dst[..])))
    });
    g.finish();
    let budget = Duration::from_millis(500);
    let scan_s = seconds_per_call(budget, || {
        black_box(scan());
    });
    let copy_s = seconds_per_call(budget, || {
        black_box(guest.copy_to(&mut dst[..]));
    });
    report_ratio("zero_page_detection", N as u64, scan_s, "memcpy", copy_s);

    // Guest pages to a socket, beside a raw write of the same bytes.
    let chunk = data_chunk();
    for at in (0..N).step_by(FRAME) {
        mem.write_slice(&chunk, GuestAddress(at as u64))
            .expect("fill");
    }
    let plain: Vec<u8> = chunk.iter().copied().cycle().take(N).collect();
    let head = [0u8; 32];
    let ours = to_socket(|s| {
        for at in (0..N).step_by(FRAME) {
            let frame = guest.subslice(at, FRAME).expect("frame");
            send_all(std::os::fd::AsFd::as_fd(s), &head, &frame).expect("send");
        }
    });
    let peer = to_socket(|s| {
        for frame in plain.chunks(FRAME) {
            s.write_all(&head).expect("write");
            s.write_all(frame).expect("write");
        }
    });
    report_ratio("guest_pages_to_socket", N as u64, ours, "raw write", peer);
}

/// A loopback TCP connection whose far end a thread drains into one
/// reused 1 MiB buffer; the thread returns the bytes it read.
fn drained_loopback() -> (TcpStream, std::thread::JoinHandle<u64>) {
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
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).ok();
    (s, reader)
}

/// Seconds per call of `send` writing into a drained loopback connection.
fn to_socket(mut send: impl FnMut(&mut TcpStream)) -> f64 {
    let (mut s, reader) = drained_loopback();
    let secs = seconds_per_call(Duration::from_secs(2), || send(&mut s));
    drop(s);
    let _ = reader.join();
    secs
}

/// Loopback TCP throughput for `bytes` from one writer thread to one
/// reader reading into a reused 1 MiB buffer. The writer sends `source`
/// over and over in 4 MiB writes: a 4 MiB buffer (hot in cache, the
/// socket's best case) or as many distinct bytes as are sent (what a
/// migration must read).
fn socket_limit(bytes: u64, source: &[u8]) -> f64 {
    let (mut s, reader) = drained_loopback();
    let t = Instant::now();
    let mut sent = 0;
    'all: loop {
        for c in source.chunks(FRAME) {
            if sent >= bytes {
                break 'all;
            }
            s.write_all(c).expect("write");
            sent += c.len() as u64;
        }
    }
    drop(s);
    let got = reader.join().expect("reader");
    got as f64 / t.elapsed().as_secs_f64()
}

#[derive(Clone, Copy, Debug, PartialEq)]
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
    if load == Load::IdleData {
        // RAM above the payload full of non-zero data, as a booted guest has.
        let chunk = data_chunk();
        let mut at = 2 * MIB;
        let end = 2 * MIB + data_bytes(bytes);
        while at < end {
            let n = (end - at).min(chunk.len() as u64) as usize;
            vm.write_memory(at, &chunk[..n]).expect("fill");
            at += n as u64;
        }
    }
    vm.start().expect("start");
    vm
}

/// One migration: (total s, downtime s, bytes on the wire).
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
    if load == Load::IdleData {
        warm_host_memory(data_bytes(bytes));
    }
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

/// Median total, median downtime and bytes of `REPS` runs (of those
/// that completed; a failed run is reported).
fn median_of(runs: impl Fn() -> Option<(f64, f64, u64)>) -> Option<(f64, f64, u64)> {
    let r: Vec<_> = (0..REPS).filter_map(|_| runs()).collect();
    if r.is_empty() {
        return None;
    }
    if r.len() < REPS {
        println!("  ({} of {REPS} runs failed)", REPS - r.len());
    }
    Some((
        median(r.iter().map(|x| x.0).collect()),
        median(r.iter().map(|x| x.1).collect()),
        r[0].2,
    ))
}

fn whole_migrations(_c: &mut Criterion) {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP whole migrations: /dev/kvm is absent");
        return;
    }
    let hot = data_chunk();
    let distinct: Vec<u8> = hot.iter().copied().cycle().take(GIB as usize).collect();
    let hot_limit = median((0..REPS).map(|_| socket_limit(4 * GIB, &hot)).collect());
    let limit = median((0..REPS).map(|_| socket_limit(GIB, &distinct)).collect());
    drop(distinct);
    println!(
        "LOOPBACK socket limit: {:.2} GiB/s sending 1 GiB of distinct memory (the reference below); {:.2} GiB/s resending one hot 4 MiB buffer",
        limit / GIB as f64,
        hot_limit / GIB as f64
    );
    let mut sizes = vec![GIB];
    if std::env::var_os("VIRTKIT_BENCH_BIG").is_some() {
        sizes.extend([4 * GIB, 16 * GIB]);
    }
    for &size in &sizes {
        for load in [Load::IdleZero, Load::IdleData, Load::Busy] {
            let Some((total, downtime, bytes)) = median_of(|| migrate_once(size, load)) else {
                continue;
            };
            let rate = bytes as f64 / total;
            println!(
                "MIGRATION {} GiB {load:?}: total {:.3} s, downtime {:.1} ms, {} MiB on the wire at {:.2} GiB/s = {:.0}% of the socket limit ({:.0}% of the hot-buffer one)",
                size / GIB,
                total,
                downtime * 1e3,
                bytes >> 20,
                rate / GIB as f64,
                100.0 * rate / limit,
                100.0 * rate / hot_limit,
            );
            if load == Load::Busy {
                continue;
            }
            let data = load == Load::IdleData;
            match median_of(|| qemu_migration(size, data).map(|(t, d)| (t, d, 0))) {
                Some((qt, qd, _)) => println!(
                    "RATIO migration_{}GiB_{load:?}: virtkit {total:.3} s (downtime {:.1} ms) vs QEMU {qt:.3} s (downtime {:.1} ms) = {:.2}x faster",
                    size / GIB,
                    downtime * 1e3,
                    qd * 1e3,
                    qt / total
                ),
                None => println!(
                    "QEMU peer {} GiB {load:?}: qemu-system-x86_64 not installed or failed; skipped",
                    size / GIB
                ),
            }
        }
    }
}

/// Data files for QEMU's `loader` device: the same bytes the virtkit
/// guest holds, from 2 MiB, split around QEMU's PCI hole (q35 keeps 2 GiB
/// below 4 GiB once RAM exceeds 2.75 GiB; the rest goes from 4 GiB).
fn qemu_data_files(size: u64) -> Option<Vec<(PathBuf, u64)>> {
    let total = data_bytes(size);
    let low_end = if size > 0xb000_0000 { 2 * GIB } else { size };
    let low = total.min(low_end - 2 * MIB);
    let mut parts = vec![(2 * MIB, low)];
    if total > low {
        parts.push((4 * GIB, total - low));
    }
    let chunk = data_chunk();
    let mut out = Vec::new();
    for (i, (addr, len)) in parts.into_iter().enumerate() {
        let path =
            std::env::temp_dir().join(format!("virtkit-bench-qemu-{}-{i}.bin", std::process::id()));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).ok()?);
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).ok()?;
            left -= n as u64;
        }
        f.flush().ok()?;
        out.push((path, addr));
    }
    Some(out)
}

fn spawn_qemu(common: &[String], extra: &[String]) -> Option<Child> {
    Command::new("qemu-system-x86_64")
        .args(common)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// Migrate a stopped QEMU VM with `bytes` of RAM (holding the same data as
/// the virtkit guest when `data`) over loopback; returns QEMU's own
/// total time and downtime in seconds.
fn qemu_migration(bytes: u64, data: bool) -> Option<(f64, f64)> {
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let files = if data {
        qemu_data_files(bytes)?
    } else {
        Vec::new()
    };
    let mut common: Vec<String> = [
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-m",
        "",
        "-S",
        "-nodefaults",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    common[5] = format!("{}M", bytes >> 20);
    let dst = spawn_qemu(
        &common,
        &["-incoming".into(), format!("tcp:127.0.0.1:{port}")],
    )?;
    // `migrate` fails at once if the target is not listening yet.
    if !wait_listening(port, Duration::from_secs(30)) {
        let mut dst = dst;
        let _ = dst.kill();
        let _ = dst.wait();
        return None;
    }
    let qmp_path = std::env::temp_dir().join(format!("virtkit-bench-qmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&qmp_path);
    let mut src_args = vec![
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", qmp_path.display()),
    ];
    for (path, addr) in &files {
        src_args.push("-device".into());
        src_args.push(format!(
            "loader,file={},addr={addr:#x},force-raw=on",
            path.display()
        ));
    }
    let src = spawn_qemu(&common, &src_args);
    let result = src.as_ref().and_then(|_| {
        let t = Instant::now();
        let sock = loop {
            if let Ok(s) = std::os::unix::net::UnixStream::connect(&qmp_path) {
                break s;
            }
            if t.elapsed() > Duration::from_secs(60) {
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
                if r.read_line(&mut line).ok()? == 0 {
                    return None;
                }
                let v: serde_json::Value = serde_json::from_str(&line).ok()?;
                if v.get("return").is_some() || v.get("error").is_some() {
                    return Some(v);
                }
            }
        };
        cmd(r#"{"execute":"qmp_capabilities"}"#)?;
        cmd(
            r#"{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":107374182400,"downtime-limit":100}}"#,
        )?;
        // The same start as virtkit's: recently used host memory.
        warm_host_memory(if data { data_bytes(bytes) } else { 0 });
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
                        ret["downtime"].as_f64().unwrap_or(0.0) / 1e3,
                    ))
                }
                Some("failed") | Some("cancelled") => return None,
                _ => {}
            }
            if start.elapsed() > Duration::from_secs(300) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    for mut child in src.into_iter().chain([dst]) {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_file(&qmp_path);
    for (path, _) in files {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Wait until something listens on 127.0.0.1:`port` (per `/proc/net/tcp`;
/// a probing connection would be taken for the migration itself).
fn wait_listening(port: u16, timeout: Duration) -> bool {
    let local = format!("0100007F:{port:04X}");
    let t = Instant::now();
    while t.elapsed() < timeout {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        if table.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")
        }) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3));
    targets = hot_paths, whole_migrations
}
criterion_main!(benches);
