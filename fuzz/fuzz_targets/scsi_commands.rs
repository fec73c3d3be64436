#![no_main]
//! SCSI command handling (CDBs and data-out) of the disk and CD-ROM units.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_devices::fuzzing::scsi_commands(data));
