//! Bodies of the storage fuzz targets, replayed by
//! `storage/tests/fuzz_corpus.rs`. Must never panic.

use crate::qcow2::Qcow2;

/// Format detection over arbitrary bytes (head and tail).
pub fn detect(data: &[u8]) {
    let tail = data.len().checked_sub(512).map(|s| &data[s..]);
    // black_box: detection is pure, and a discarded result let the
    // optimiser drop the call (the fuzzer then saw 16 edges, none of them
    // in `detect`).
    std::hint::black_box(crate::format::detect(
        std::hint::black_box(data),
        std::hint::black_box(tail),
    ));
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

/// Read arbitrary bytes as a tar and check every entry's path and link.
/// Whatever [`check_entry`](crate::archive::check_entry) lets through
/// must stay inside the root: checked again here by a plain walk.
pub fn tar_paths(data: &[u8]) {
    use std::path::Component;
    let mut archive = tar::Archive::new(data);
    let Ok(entries) = archive.entries() else {
        return;
    };
    for entry in entries.take(256) {
        let Ok(entry) = entry else { return };
        let Ok(path) = entry.path() else { continue };
        let kind = entry.header().entry_type();
        let link = entry.link_name().ok().flatten();
        if crate::archive::check_entry(&path, kind, link.as_deref()).is_ok() {
            let mut depth = 0i64;
            for c in path.components() {
                match c {
                    Component::Normal(_) => depth += 1,
                    Component::ParentDir => depth -= 1,
                    Component::CurDir => {}
                    Component::RootDir | Component::Prefix(_) => depth = -1000,
                }
                assert!(depth >= 0, "accepted an escaping path: {}", path.display());
            }
        }
    }
}
