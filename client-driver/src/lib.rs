//! `nmr_client`: the NPI client driver image.
//!
//! The module logic is the portable `nmr_client_module` crate; this crate is
//! only the Windows shell around it (`driver.rs`): `DriverEntry`,
//! `DriverUnload` and the worker thread, on either kernel surface (`wdk` or
//! `raw-kernel`). On other targets it is empty.

#![no_std]

extern crate alloc;
// A cdylib built for the host needs a panic handler and an allocator: std's.
#[cfg(not(target_os = "windows"))]
extern crate std;

#[cfg(all(
    target_os = "windows",
    not(test),
    any(feature = "wdk", feature = "raw-kernel")
))]
mod driver;
