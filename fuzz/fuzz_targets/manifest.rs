#![no_main]

//! Harness: `kubestow::fuzzing::manifest`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubestow::fuzzing::manifest(data));
