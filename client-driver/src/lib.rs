//! `nmr_client`: the NPI client driver image.
//!
//! The module logic is the portable `nmr_client_module` crate; this crate is
//! only the Windows shell around it (`driver.rs`): `DriverEntry`,
//! `DriverUnload` and the worker thread, on either kernel surface (`wdk` or
//! `raw-kernel`). Without one of those features (`cargo build`/`cargo test
//! --workspace`), and on other targets, it is an empty user-mode library.

#![no_std]

extern crate alloc;
// A cdylib without the driver (no kernel surface, or not Windows) still needs
// a panic handler and an allocator: std's.
#[cfg(not(all(
    target_os = "windows",
    not(test),
    any(feature = "wdk", feature = "raw-kernel")
)))]
extern crate std;

#[cfg(all(
    target_os = "windows",
    not(test),
    any(feature = "wdk", feature = "raw-kernel")
))]
mod driver;
