#![no_main]
//! Quantity parse/print round trip.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_core::fuzzing::quantity(data));
