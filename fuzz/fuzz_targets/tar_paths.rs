#![no_main]
//! Tar entry path and link checks of archive imports.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_storage::fuzzing::tar_paths(data));
