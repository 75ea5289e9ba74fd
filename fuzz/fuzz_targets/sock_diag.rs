#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hais_agent::fuzzing::sock_diag(data));
