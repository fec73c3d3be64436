//! Helpers shared by virtkit's benchmarks (`benches/`). Each benchmark runs
//! its peer (plain memcpy, a naive parser, …) side by side and prints the
//! ratio, so results read the same on any machine.

use std::time::{Duration, Instant};

/// Bytes of resident memory of this process, from `/proc/self/statm`.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Run `f` repeatedly for about `budget` and return seconds per call.
pub fn seconds_per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        f();
        n += 1;
    }
    start.elapsed().as_secs_f64() / n as f64
}

/// Print `name: ours X/s, peer Y/s, ratio Z` for two throughputs measured
/// over the same number of bytes per call.
pub fn report_ratio(name: &str, bytes: u64, ours_secs: f64, peer: &str, peer_secs: f64) {
    const GIB: f64 = (1u64 << 30) as f64;
    let ours = bytes as f64 / ours_secs / GIB;
    let theirs = bytes as f64 / peer_secs / GIB;
    println!(
        "RATIO {name}: {ours:.2} GiB/s vs {peer} {theirs:.2} GiB/s = {:.2}x",
        ours / theirs
    );
}

/// A 1 GiB raw guest image at `path` for the image benches: `data_len`
/// bytes of xorshift data every 8 MiB, holes between (half data, half
/// holes with the 4 MiB the benches use). `byte` maps each random word to
/// a byte: all 256 values (incompressible) or a small alphabet (about 2:1
/// under gzip).
pub fn write_half_data_image(
    path: &std::path::Path,
    data_len: usize,
    byte: impl Fn(u32) -> u8,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    const SIZE: u64 = 1 << 30;
    let f = std::fs::File::create(path)?;
    f.set_len(SIZE)?;
    let mut x = 0x9e37_79b9u32;
    let chunk: Vec<u8> = (0..data_len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            byte(x)
        })
        .collect();
    let mut off = 0;
    while off < SIZE {
        f.write_all_at(&chunk, off)?;
        off += 8 << 20;
    }
    Ok(())
}

/// Touch `bytes` of fresh anonymous memory and free it again, so the
/// allocations that follow get memory the host already backs.
///
/// The test machine is itself a VM whose balloon reports free memory back
/// to its host (`page_reporting.page_reporting_order=11`): memory freed
/// more than about 2 s earlier costs 1.5–3 s/GiB to touch again, against
/// 0.2–0.5 s/GiB when recently used, and which kind an allocation gets is
/// luck. Benchmarks that allocate gigabytes (a migration target filling
/// its RAM) call this first, for virtkit and its peers alike, so they
/// measure the software rather than the outer host. On bare metal it is a
/// no-op in effect.
pub fn warm_host_memory(bytes: u64) {
    let Ok(len) = usize::try_from(bytes) else {
        return;
    };
    if len == 0 {
        return;
    }
    // SAFETY: a fresh private anonymous mapping; checked before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return;
    }
    // SAFETY: `[p, p + len)` is the mapping made above, unmapped right
    // after; nothing else refers to it.
    unsafe {
        libc::madvise(p, len, libc::MADV_HUGEPAGE);
        libc::madvise(p, len, libc::MADV_POPULATE_WRITE);
        libc::munmap(p, len);
    }
}

/// The median of `v` (which must not be empty; 0 if it is).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
