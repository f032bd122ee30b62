#![no_main]

//! Harness: `kubestow::fuzzing::index`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubestow::fuzzing::index(data));
