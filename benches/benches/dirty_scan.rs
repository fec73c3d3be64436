//! The dirty-bitmap scan (bitmap → dirty page addresses) over 256 MiB of
//! guest memory at several dirty ratios, beside memcpy of the same 256 MiB
//! — the bytes a migration must then send. Throughput is GiB of guest
//! memory covered per second.
//!
//! Then the whole step a precopy pass starts with, on a 1 GiB KVM VM with
//! dirty logging on: `Vm::take_dirty_pages` (KVM's dirty log fetched and
//! reset, merged with vm-memory's bitmap of VMM writes, which is reset too)
//! followed by the scan, with no page and with 1 % of pages written in
//! between, beside memcpy of 1 GiB.

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use virtkit_benches::{report_ratio, seconds_per_call};
use virtkit_core::runtime::{dirty_pages, VmBuilder, VmConfig};

const GUEST: usize = 256 << 20;
const PAGES: usize = GUEST / 4096;

fn bitmap(every: usize) -> Vec<u64> {
    let mut bits = vec![0u64; PAGES / 64];
    if every > 0 {
        for p in (0..PAGES).step_by(every) {
            bits[p / 64] |= 1 << (p % 64);
        }
    }
    bits
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("dirty_scan_256MiB");
    g.throughput(Throughput::Bytes(GUEST as u64));
    for (label, every) in [("clean", 0usize), ("1pct", 100), ("all", 1)] {
        let bits = bitmap(every);
        g.bench_function(format!("scan_{label}"), |b| {
            b.iter(|| black_box(dirty_pages(black_box(&bits), 0).fold(0u64, |a, p| a ^ p)))
        });
    }
    let src = vec![1u8; GUEST];
    let mut dst = vec![0u8; GUEST];
    g.bench_function("peer_memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    g.finish();

    // The side-by-side ratio, printed for the report.
    let budget = Duration::from_millis(500);
    let memcpy = seconds_per_call(budget, || {
        dst.copy_from_slice(black_box(&src));
        black_box(&dst);
    });
    for (label, every) in [("clean", 0usize), ("1pct", 100), ("all", 1)] {
        let bits = bitmap(every);
        let scan = seconds_per_call(budget, || {
            black_box(dirty_pages(black_box(&bits), 0).fold(0u64, |a, p| a ^ p));
        });
        report_ratio(
            &format!("dirty_scan_{label}"),
            GUEST as u64,
            scan,
            "memcpy",
            memcpy,
        );
    }
}

fn merge(_c: &mut Criterion) {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIP dirty-log merge: /dev/kvm is absent");
        return;
    }
    const GIB: usize = 1 << 30;
    let vm = VmBuilder::new(VmConfig {
        name: "bench-dirty".into(),
        vcpus: 1,
        memory_bytes: GIB as u64,
    })
    .build()
    .expect("build");
    vm.set_dirty_logging(true).expect("dirty logging");
    let budget = Duration::from_millis(500);
    let src = vec![1u8; GIB];
    let mut dst = vec![0u8; GIB];
    let memcpy = seconds_per_call(budget, || {
        dst.copy_from_slice(black_box(&src));
        black_box(&dst);
    });
    drop((src, dst));
    for (label, every) in [("clean", 0u64), ("1pct", 100)] {
        let mut written = 0u64;
        let secs = seconds_per_call(budget, || {
            if every > 0 {
                // VMM-side writes; the time to make them is counted too,
                // so the figure is a bound.
                for page in (0..(GIB as u64 / 4096)).step_by(every as usize) {
                    vm.write_memory(page * 4096, &[1]).expect("write");
                }
            }
            let maps = vm.take_dirty_pages().expect("dirty log");
            written = maps
                .iter()
                .map(|m| dirty_pages(&m.bits, m.guest_addr).count() as u64)
                .sum();
        });
        assert!(every == 0 || written >= GIB as u64 / 4096 / every);
        report_ratio(
            &format!("dirty_log_merge_scan_{label}_1GiB"),
            GIB as u64,
            secs,
            "memcpy",
            memcpy,
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3));
    targets = bench, merge
}
criterion_main!(benches);
