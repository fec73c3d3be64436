#![no_main]
//! PCI configuration space and BAR accesses on a bus with a virtio-blk device.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_devices::fuzzing::pci_config(data));
