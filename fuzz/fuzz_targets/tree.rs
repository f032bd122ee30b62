#![no_main]

//! Harness: `kubestow::fuzzing::tree`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubestow::fuzzing::tree(data));
