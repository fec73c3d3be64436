#![no_main]
//! YAML/JSON spec parse + validate + default.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_core::fuzzing::spec_parse(data));
