//! Replays the fuzz targets' checked-in seed corpora (and any crashes
//! committed under fuzz/artifacts) so CI exercises them without a fuzzer.

#[test]
fn spec_parse_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "spec_parse",
        10,
        virtkit_core::fuzzing::spec_parse,
    );
}

#[test]
fn quantity_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "quantity",
        10,
        virtkit_core::fuzzing::quantity,
    );
}
