#![no_main]
//! Migrated device state loaded into the PCI bus (with a running
//! virtio-blk transport) or the ACPI event registers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_devices::fuzzing::device_state(data));
