#![no_main]
//! `cargo +nightly fuzz run register`: see nmr_fuzz_targets::register.
libfuzzer_sys::fuzz_target!(|data: &[u8]| nmr_fuzz_targets::register::run(data));
