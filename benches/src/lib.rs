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
