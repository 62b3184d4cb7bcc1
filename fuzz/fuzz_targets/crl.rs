#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zident_fuzzing::crl(data));
