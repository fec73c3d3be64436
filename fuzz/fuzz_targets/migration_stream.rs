#![no_main]
//! The migration destination's stream parser.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_migration::fuzzing::stream(data));
