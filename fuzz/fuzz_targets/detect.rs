#![no_main]
//! Image format detection.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_storage::fuzzing::detect(data));
