#![no_main]
//! virtio-blk request handling over arbitrary virtqueue rings and descriptors.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_devices::fuzzing::virtqueue(data));
