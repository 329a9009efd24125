//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer), each a
//! plain function of the input bytes that panics on a broken invariant. The
//! fuzz targets are one-line wrappers around them, and `tests/corpus.rs`
//! replays every committed corpus file through them on stable Rust.
//!
//! | target | surface |
//! |---|---|
//! | [`peer_attach`] | what a peer hands the real modules' attach callbacks |
//! | [`dispatch_header`] | `check_dispatch` and `negotiate_peer` on raw bytes |
//! | [`register`] | the characteristics the model's `NmrRegister*` accept |
//! | [`checksum`] | `internet_checksum`, and the provider's `checksum` |

pub mod checksum;
pub mod dispatch_header;
pub mod exact;
pub mod fake;
pub mod input;
pub mod oracle;
pub mod peer_attach;
pub mod register;

/// A target's body: panics on a broken invariant.
pub type Body = fn(&[u8]);

/// Every target by name, as in `fuzz/fuzz_targets/` and `fuzz/corpus/`.
pub const TARGETS: [(&str, Body); 4] = [
    ("peer_attach", peer_attach::run),
    ("dispatch_header", dispatch_header::run),
    ("register", register::run),
    ("checksum", checksum::run),
];
