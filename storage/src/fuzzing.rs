//! Bodies of the storage fuzz targets, replayed by
//! `storage/tests/fuzz_corpus.rs`. Must never panic.

use crate::qcow2::Qcow2;

/// Format detection over arbitrary bytes (head and tail).
pub fn detect(data: &[u8]) {
    let tail = data.len().checked_sub(512).map(|s| &data[s..]);
    let _ = crate::format::detect(data, tail);
}

/// Parse arbitrary bytes as a qcow2 image and read every cluster of it
/// (bounded to 4096 clusters so the fuzzer stays fast).
pub fn qcow2(data: &[u8]) {
    let Ok(q) = Qcow2::open(data) else { return };
    let cs = q.header.cluster_size();
    let clusters = q.header.virtual_size.div_ceil(cs).min(4096);
    let mut buf = vec![0u8; cs as usize];
    let mut l2 = (u64::MAX, Vec::new());
    let mut scratch = Vec::new();
    for i in 0..clusters {
        if q.read_cluster(i, &mut buf, &mut l2, &mut scratch).is_err() {
            return;
        }
    }
}
