#![no_main]
//! Writing through a qcow2 image whose metadata is arbitrary bytes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_storage::fuzzing::qcow2_write(data));
