#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| cube_fuzz::api_request(bytes));
