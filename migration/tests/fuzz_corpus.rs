//! Replays the `migration_stream` fuzz corpus (and committed crashes).

#[test]
fn migration_stream_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "migration_stream",
        10,
        virtkit_migration::fuzzing::stream,
    );
}
