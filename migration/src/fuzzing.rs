//! Body of the `migration_stream` fuzz target, kept here so its seed
//! corpus is replayed by `migration/tests/fuzz_corpus.rs` with the same
//! code. Must never panic.

use crate::protocol::{parse_stream, BufferSink};

/// Feed arbitrary bytes to the destination's stream parser over a 64 KiB
/// guest split into two ranges (one above 4 GiB).
pub fn stream(data: &[u8]) {
    let mut sink = BufferSink::new(&[(0, 48 * 1024), (1 << 32, 16 * 1024)]);
    let _ = parse_stream(data, &mut sink);
}
