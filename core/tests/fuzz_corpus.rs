//! Replays the fuzz targets' checked-in seed corpora (and any crashes
//! committed under fuzz/artifacts) so CI exercises them without a fuzzer.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

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
        for e in entries {
            let p = e.unwrap().path();
            f(&std::fs::read(&p).unwrap());
            n += 1;
        }
    }
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
