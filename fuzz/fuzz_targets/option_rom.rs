#![no_main]
//! PCI option ROM images: signature, PCIR, device list, lengths, checksums.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_firmware_loader::fuzzing::option_rom(data));
