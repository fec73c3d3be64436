#![no_main]
//! The first packet of a TFTP transfer: request, mode, options, path.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_firmware_loader::fuzzing::tftp_request(data));
