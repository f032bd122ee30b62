#![no_main]

//! Harness: `kubestow::fuzzing::config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubestow::fuzzing::config(data));
