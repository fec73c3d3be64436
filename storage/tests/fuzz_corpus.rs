//! Replays the storage fuzz corpora (format detection, qcow2 reader, tar
//! entry paths) and
//! any committed crashes.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in [
        root.join("corpus").join(target),
        root.join("artifacts").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            f(&std::fs::read(e.path()).unwrap_or_default());
            n += 1;
        }
    }
    assert!(n >= 9, "{target}: only {n} corpus files");
}

#[test]
fn detect_corpus() {
    replay("detect", virtkit_storage::fuzzing::detect);
}

#[test]
fn qcow2_corpus() {
    replay("qcow2", virtkit_storage::fuzzing::qcow2);
}

#[test]
fn tar_paths_corpus() {
    replay("tar_paths", virtkit_storage::fuzzing::tar_paths);
}
