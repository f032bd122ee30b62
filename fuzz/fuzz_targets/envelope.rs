#![no_main]

//! Harness: `kubestow::fuzzing::envelope`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| kubestow::fuzzing::envelope(data));
