#![no_main]
//! DHCPv4 and DHCPv6 client messages against our servers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| virtkit_net::fuzzing::dhcp_message(data));
