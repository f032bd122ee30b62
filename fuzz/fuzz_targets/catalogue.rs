#![no_main]

//! Harness: `kubestow::fuzzing::catalogue`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubestow::fuzzing::catalogue(data));
