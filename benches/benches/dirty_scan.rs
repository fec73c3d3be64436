//! The dirty-bitmap scan (bitmap → dirty page addresses) over 256 MiB of
//! guest memory at several dirty ratios, beside memcpy of the same 256 MiB
//! — the bytes a migration must then send. Throughput is GiB of guest
//! memory covered per second.

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use virtkit_benches::{report_ratio, seconds_per_call};
use virtkit_core::runtime::dirty_pages;

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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
