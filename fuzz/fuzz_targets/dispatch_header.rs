#![no_main]
//! `cargo +nightly fuzz run dispatch_header`: see nmr_fuzz_targets::dispatch_header.
libfuzzer_sys::fuzz_target!(|data: &[u8]| nmr_fuzz_targets::dispatch_header::run(data));
