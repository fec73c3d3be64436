#![no_main]
//! The qcow2 header / L1 / L2 / compressed-cluster reader.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_storage::fuzzing::qcow2(data));
