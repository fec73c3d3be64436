//! Replays the fuzz targets' checked-in seed corpora (and any crashes
//! committed under fuzz/artifacts) so CI exercises them without a fuzzer.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let n = virtkit_core::fuzzing::replay_corpus(&fuzz, target, f).unwrap();
    assert!(n >= 10, "{target}: only {n} corpus files");
}

#[test]
fn spec_parse_corpus() {
    replay("spec_parse", virtkit_core::fuzzing::spec_parse);
}

#[test]
fn quantity_corpus() {
    replay("quantity", virtkit_core::fuzzing::quantity);
}
