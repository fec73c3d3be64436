//! Replays the `migration_stream` fuzz corpus (and committed crashes).

#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn migration_stream_corpus() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let n = virtkit_core::fuzzing::replay_corpus(
        &fuzz,
        "migration_stream",
        virtkit_migration::fuzzing::stream,
    )
    .unwrap();
    assert!(n >= 10, "only {n} corpus files");
}
