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
