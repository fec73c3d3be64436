#![no_main]
//! AHCI register writes over guest memory the fuzzer lays out: command
//! lists, command tables, PRDTs and FISes for a disk and an ATAPI CD-ROM.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_devices::fuzzing::ahci_commands(data));
