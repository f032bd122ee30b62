#![no_main]

//! Harness: `kubestow::fuzzing::pack`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubestow::fuzzing::pack(data));
