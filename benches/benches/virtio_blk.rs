//! virtio-blk request throughput against a raw file, beside `pread` /
//! `pwrite` of the same pattern on the same file (what fio's `psync`
//! engine does). The device is driven the way a guest driver would drive
//! it: 32 requests per notify on one queue, header / data / status
//! descriptor chains, completions reaped from the used ring. Both sides
//! use the page cache (warm), so the ratio is the device's own overhead.

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use virtkit_benches::{report_ratio, seconds_per_call};
use virtkit_core::runtime::memory::{self, GuestMem};
use virtkit_devices::block::{DiskOptions, RawFile};
use virtkit_devices::pci::{MsiSink, PciDevice};
use virtkit_devices::virtio::block::{BlockConfig, VirtioBlock};
use virtkit_devices::virtio::pci::{driver_init_queue0, VirtioPciDevice, NOTIFY_OFFSET};
use vm_memory::{Bytes, GuestAddress};

const DISK: u64 = 256 << 20;
const QUEUE: u16 = 128;
const DEPTH: u64 = 32;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const HEADERS: u64 = 0x4000;
const STATUS: u64 = 0x6000;
const BUFFERS: u64 = 0x10_0000;

struct NoMsi;
impl MsiSink for NoMsi {
    fn send(&self, _: u64, _: u32) {}
}

/// A minimal split-ring driver over guest memory.
struct Driver {
    dev: VirtioPciDevice,
    mem: GuestMem,
    avail: u16,
}

impl Driver {
    fn new(path: &Path) -> Self {
        let mem = memory::create(64 << 20).expect("guest memory");
        let disk = RawFile::open(path, DiskOptions::default()).expect("disk");
        let blk = VirtioBlock::new(
            Arc::new(disk),
            BlockConfig {
                queue_size: QUEUE,
                ..BlockConfig::default()
            },
        );
        let mut dev =
            VirtioPciDevice::new(Box::new(blk), mem.clone(), Arc::new(NoMsi)).expect("transport");
        let status = driver_init_queue0(&mut dev, 0, QUEUE, DESC, AVAIL, USED);
        assert_eq!(status, 0xf, "the device took the queue");
        Driver { dev, mem, avail: 0 }
    }

    /// Submit `offsets.len()` (≤ DEPTH) requests of `len` bytes and wait
    /// for them all.
    fn batch(&mut self, kind: u32, offsets: &[u64], len: u32) {
        let mut descs = Vec::with_capacity(offsets.len() * 48);
        let mut ring = Vec::with_capacity(offsets.len());
        for (i, off) in offsets.iter().enumerate() {
            let i = i as u64;
            let head = (3 * i) as u16;
            let mut header = [0u8; 16];
            header[..4].copy_from_slice(&kind.to_le_bytes());
            header[8..].copy_from_slice(&(off / 512).to_le_bytes());
            self.mem
                .write_slice(&header, GuestAddress(HEADERS + 16 * i))
                .expect("header");
            let data_flags: u16 = if kind == 0 { 1 | 2 } else { 1 };
            for (addr, l, flags, next) in [
                (HEADERS + 16 * i, 16u32, 1u16, head + 1),
                (BUFFERS + i * u64::from(len), len, data_flags, head + 2),
                (STATUS + i, 1, 2, 0),
            ] {
                descs.extend_from_slice(&addr.to_le_bytes());
                descs.extend_from_slice(&l.to_le_bytes());
                descs.extend_from_slice(&flags.to_le_bytes());
                descs.extend_from_slice(&next.to_le_bytes());
            }
            ring.push(head);
        }
        self.mem
            .write_slice(&descs, GuestAddress(DESC))
            .expect("descriptors");
        for head in ring {
            let slot = u64::from(self.avail % QUEUE);
            self.mem
                .write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))
                .expect("avail");
            self.avail = self.avail.wrapping_add(1);
        }
        self.mem
            .write_obj(self.avail, GuestAddress(AVAIL + 2))
            .expect("avail idx");
        self.dev.bar_write(0, NOTIFY_OFFSET, &0u16.to_le_bytes());
        let used: u16 = self.mem.read_obj(GuestAddress(USED + 2)).expect("used");
        assert_eq!(used, self.avail, "the device completed the batch");
    }

    fn run(&mut self, kind: u32, offsets: &[u64], len: u32) {
        for chunk in offsets.chunks(DEPTH as usize) {
            self.batch(kind, chunk, len);
        }
    }
}

fn open_rw(path: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("file")
}

fn peer(file: &File, kind: u32, offsets: &[u64], buf: &mut [u8]) {
    for &off in offsets {
        if kind == 0 {
            file.read_exact_at(buf, off).expect("pread");
        } else {
            file.write_all_at(buf, off).expect("pwrite");
        }
    }
}

/// Offsets of `len`-byte requests: in order, or scattered by xorshift.
fn pattern(len: u64, random: bool) -> Vec<u64> {
    let n = DISK / len;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|i| {
            if random {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % n) * len
            } else {
                i * len
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("virtkit-blk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("disk.raw");
    let bytes: Vec<u8> = (0..DISK).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, bytes).expect("disk image");
    let cases = [
        ("seq_read_64k", 0u32, 64u64 << 10, false),
        ("rand_read_4k", 0, 4 << 10, true),
        ("seq_write_64k", 1, 64 << 10, false),
    ];
    let mut g = c.benchmark_group("virtio_blk_256MiB");
    g.throughput(Throughput::Bytes(DISK));
    for (name, kind, len, random) in cases {
        let offsets = pattern(len, random);
        let mut driver = Driver::new(&path);
        g.bench_function(name, |b| b.iter(|| driver.run(kind, &offsets, len as u32)));
        drop(driver);
        let file = open_rw(&path);
        let mut buf = vec![7u8; len as usize];
        g.bench_function(format!("peer_{name}"), |b| {
            b.iter(|| peer(&file, kind, &offsets, &mut buf))
        });
    }
    g.finish();

    let budget = Duration::from_secs(2);
    for (name, kind, len, random) in cases {
        let offsets = pattern(len, random);
        let mut driver = Driver::new(&path);
        let ours = seconds_per_call(budget, || driver.run(kind, &offsets, len as u32));
        drop(driver);
        let file = open_rw(&path);
        let mut buf = vec![7u8; len as usize];
        let theirs = seconds_per_call(budget, || peer(&file, kind, &offsets, &mut buf));
        let bytes = offsets.len() as u64 * len;
        let peer_name = if kind == 0 { "pread" } else { "pwrite" };
        report_ratio(
            &format!("virtio_blk_{name}"),
            bytes,
            ours,
            peer_name,
            theirs,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
