//! Replays the `migration_stream` fuzz corpus (and committed crashes).

use std::path::Path;

#[test]
fn migration_stream_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in [
        root.join("corpus/migration_stream"),
        root.join("artifacts/migration_stream"),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            virtkit_migration::fuzzing::stream(&bytes);
            n += 1;
        }
    }
    assert!(n >= 10, "only {n} corpus files");
}
