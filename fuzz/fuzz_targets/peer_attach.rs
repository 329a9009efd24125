#![no_main]
//! `cargo +nightly fuzz run peer_attach`: see nmr_fuzz_targets::peer_attach.
libfuzzer_sys::fuzz_target!(|data: &[u8]| nmr_fuzz_targets::peer_attach::run(data));
