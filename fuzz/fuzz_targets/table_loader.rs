#![no_main]
//! `etc/table-loader`: ACPI linker/loader commands as a firmware reads them.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_firmware_loader::fuzzing::table_loader(data));
