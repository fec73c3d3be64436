//! Replays the storage fuzz corpora (format detection, qcow2 reader, tar
//! entry paths) and any committed crashes.

#[test]
fn detect_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "detect",
        9,
        virtkit_storage::fuzzing::detect,
    );
}

#[test]
fn qcow2_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "qcow2",
        9,
        virtkit_storage::fuzzing::qcow2,
    );
}

#[test]
fn tar_paths_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "tar_paths",
        9,
        virtkit_storage::fuzzing::tar_paths,
    );
}

#[test]
fn qcow2_write_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "qcow2_write",
        10,
        virtkit_storage::fuzzing::qcow2_write,
    );
}
