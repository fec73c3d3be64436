#![no_main]
//! Firmware volume headers and the variable store of OVMF images.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_firmware_loader::fuzzing::firmware_volume(data));
