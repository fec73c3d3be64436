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

/// Open arbitrary bytes as a writable qcow2 image (in a memfd) and write,
/// zero, discard and read through it: must never panic, loop or allocate
/// without bound. (Read-back equality is not a property of hostile
/// images: metadata may alias one host cluster from two L2 entries, or a
/// data cluster with an L2 table, which only a full `qemu-img check`-style
/// scan would find; valid images are held to it by `tests/qcow2_image.rs`.)
pub fn qcow2_write(data: &[u8]) {
    use crate::qcow2::{Qcow2Image, Qcow2OpenMode};
    use std::os::unix::fs::FileExt;
    let Some(file) = memfd() else { return };
    if file.write_all_at(data, 0).is_err() {
        return;
    }
    let Ok(mut image) = Qcow2Image::open(file, Qcow2OpenMode::ReadWrite) else {
        return;
    };
    let size = image.virtual_size();
    let cs = image.header().cluster_size();
    if size == 0 {
        return;
    }
    for (k, at) in [0, cs.saturating_sub(3), size / 2, size - 1]
        .into_iter()
        .enumerate()
    {
        let at = at.min(size - 1);
        let len = (cs + 7).min(size - at).min(64 << 10) as usize;
        let pattern: Vec<u8> = (0..len).map(|i| (i as u8) ^ (k as u8 + 1)).collect();
        if image.write_at(&pattern, at).is_ok() {
            let mut back = vec![0u8; len];
            let _ = image.read_at(&mut back, at);
        }
    }
    let _ = image.write_zeroes(0, (2 * cs).min(size));
    let _ = image.discard(0, (4 * cs).min(size));
    let mut buf = vec![0u8; (size.min(64 << 10)) as usize];
    let _ = image.read_at(&mut buf, 0);
}

/// An anonymous in-memory file.
fn memfd() -> Option<std::fs::File> {
    use std::os::unix::io::FromRawFd;
    // SAFETY: memfd_create with a NUL-terminated name; no memory is kept.
    let fd = unsafe { libc::memfd_create(c"qcow2-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Some(unsafe { std::fs::File::from_raw_fd(fd) })
}
