#![no_main]
//! NetworkAttachmentDefinition config JSON, parsed and validated.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_net::fuzzing::nad_config(data));
