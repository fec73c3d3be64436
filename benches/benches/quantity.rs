//! Quantity parsing, beside the float parse of the same number (the peer:
//! what a lossy parser would cost).

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use virtkit_core::Quantity;

const INPUTS: &[&str] = &[
    "64Mi",
    "1G",
    "2048M",
    "63500m",
    "1.5Gi",
    "1e3",
    "500Mi",
    "128974848",
];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("quantity");
    g.throughput(Throughput::Elements(INPUTS.len() as u64));
    g.bench_function("parse", |b| {
        b.iter(|| {
            for s in INPUTS {
                black_box(s.parse::<Quantity>().ok());
            }
        })
    });
    g.bench_function("parse_and_print", |b| {
        b.iter(|| {
            for s in INPUTS {
                if let Ok(q) = s.parse::<Quantity>() {
                    black_box(q.to_string());
                }
            }
        })
    });
    g.bench_function("peer_f64_parse_of_digits", |b| {
        b.iter(|| {
            for s in INPUTS {
                let digits: &str = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                black_box(digits.parse::<f64>().ok());
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
