//! Bodies of the fuzz targets in `fuzz/`, kept here so the checked-in seed
//! corpora are replayed by a normal test (`core/tests/fuzz_corpus.rs`) with
//! exactly the code the fuzzer runs. Each function must never panic.

use crate::document::{check_text, Mode};
use crate::Quantity;

/// Parse arbitrary bytes as YAML/JSON documents in both modes, validate
/// each, default it and validate again, and re-serialize.
pub fn spec_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for mode in [Mode::Strict, Mode::Lenient] {
        for (doc, _report) in check_text(text, mode).into_iter().flatten() {
            let _ = doc.to_yaml();
            let mut obj = doc.object.clone();
            crate::defaults::apply(&mut obj);
            let _ = crate::validate::validate_object(&obj);
        }
    }
}

/// Parse arbitrary bytes as a quantity; a parsed value must print to a
/// form that parses back to the same value.
pub fn quantity(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(q) = text.parse::<Quantity>() {
        let printed = q.to_string();
        let back: Quantity = match printed.parse() {
            Ok(b) => b,
            Err(e) => panic!("{text:?} printed as {printed:?} which does not parse: {e}"),
        };
        assert_eq!(q, back, "{text:?} -> {printed:?}");
        let _ = q.to_bytes();
        let _ = q.milli_value();
    }
}

/// Run `body` on every input checked in for fuzz target `target`: the
/// files of `<fuzz_dir>/corpus/<target>` and of `<fuzz_dir>/artifacts/<target>`
/// (crashes kept as regression inputs); a missing directory counts as
/// empty. Returns how many inputs ran, so a test can insist on a corpus.
/// The corpus tests of every crate replay through this.
pub fn replay_corpus(
    fuzz_dir: &std::path::Path,
    target: &str,
    body: fn(&[u8]),
) -> std::io::Result<usize> {
    let mut n = 0;
    for dir in [
        fuzz_dir.join("corpus").join(target),
        fuzz_dir.join("artifacts").join(target),
    ] {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            body(&std::fs::read(entry?.path())?);
            n += 1;
        }
    }
    Ok(n)
}

/// The corpus test of a workspace crate: replay `target` from the `fuzz/`
/// folder beside the crate at `manifest_dir` (pass
/// `env!("CARGO_MANIFEST_DIR")`), and fail unless at least `at_least`
/// inputs ran or one cannot be read.
pub fn assert_corpus_replays(manifest_dir: &str, target: &str, at_least: usize, body: fn(&[u8])) {
    let fuzz = std::path::Path::new(manifest_dir).join("../fuzz");
    match replay_corpus(&fuzz, target, body) {
        Ok(n) => assert!(n >= at_least, "{target}: only {n} corpus files"),
        Err(e) => panic!("{target}: reading the corpus failed: {e}"),
    }
}
