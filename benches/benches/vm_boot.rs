//! Build-to-first-serial-byte: from `VmBuilder::build` to the guest's first
//! byte on COM1, for a 64 MiB VM. Also prints the VMM's own memory
//! overhead: process RSS growth beyond the guest memory the payload
//! touched. Skips (saying why) where /dev/kvm is absent.

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use virtkit_benches::rss_bytes;
use virtkit_core::payload;
use virtkit_core::runtime::{VmBuilder, VmConfig, VmExit};

struct FirstByte(Option<mpsc::Sender<Instant>>);
impl Write for FirstByte {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Instant::now());
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn config() -> VmConfig {
    VmConfig {
        name: "bench".into(),
        vcpus: 1,
        memory_bytes: 64 << 20,
    }
}

fn boot_once() -> Duration {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let vm = VmBuilder::new(config())
        .serial_output(Box::new(FirstByte(Some(tx))))
        .build()
        .expect("build");
    payload::print_and_power_off("x")
        .expect("payload")
        .load(&vm)
        .expect("load");
    vm.start().expect("start");
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("first serial byte");
    let _ = vm.wait();
    first - start
}

fn overhead() {
    const TOUCH_PAGES: u32 = 2048; // 8 MiB
    let before = rss_bytes().unwrap_or(0);
    // 4 KiB pages: with transparent huge pages each touched 2 MiB block of
    // guest RAM is resident whole, which is guest memory, not overhead.
    let vm = VmBuilder::new(VmConfig {
        memory_bytes: 64 << 20,
        ..config()
    })
    .transparent_hugepages(false)
    .build()
    .expect("build");
    payload::touch_pages(TOUCH_PAGES, Some(u64::from(TOUCH_PAGES)), 0)
        .expect("payload")
        .load(&vm)
        .expect("load");
    vm.start().expect("start");
    assert_eq!(vm.wait().expect("wait"), VmExit::PowerOff);
    let after = rss_bytes().unwrap_or(0);
    // Guest pages touched: the payload's pages, its code, counter, page
    // tables and GDT.
    let touched = u64::from(TOUCH_PAGES) * 4096 + 8 * 4096;
    let growth = after.saturating_sub(before);
    println!(
        "OVERHEAD vmm_rss: {} KiB of RSS growth for {} KiB of guest memory touched = {} KiB VMM overhead",
        growth / 1024,
        touched / 1024,
        growth.saturating_sub(touched) / 1024
    );
    drop(vm);
}

fn bench(c: &mut Criterion) {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIP vm_boot: /dev/kvm is absent");
        return;
    }
    overhead();
    c.bench_function("build_to_first_serial_byte_64MiB", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| boot_once()).sum())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
