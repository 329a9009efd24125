#![no_main]
//! `cargo +nightly fuzz run checksum`: see nmr_fuzz_targets::checksum.
libfuzzer_sys::fuzz_target!(|data: &[u8]| nmr_fuzz_targets::checksum::run(data));
