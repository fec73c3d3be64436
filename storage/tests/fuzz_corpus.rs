//! Replays the storage fuzz corpora (format detection, qcow2 reader, tar
//! entry paths) and any committed crashes.

#![allow(clippy::unwrap_used)]

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let n = virtkit_core::fuzzing::replay_corpus(&fuzz, target, f).unwrap();
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
