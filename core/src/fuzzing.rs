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
