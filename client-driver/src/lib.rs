//! `nmr_client`: the NPI client driver.
//!
//! [`client`] is the module logic, portable and generic over the NMR: the
//! testbed loads it into the model on any host. On Windows targets the
//! driver shell ([`driver`]) adds `DriverEntry`, `DriverUnload` and the worker
//! thread, on either kernel surface (`wdk` or `raw-kernel`).

#![no_std]

extern crate alloc;
// A cdylib built for the host needs a panic handler and an allocator: std's.
#[cfg(not(target_os = "windows"))]
extern crate std;

pub mod client;

#[cfg(all(
    target_os = "windows",
    not(test),
    any(feature = "wdk", feature = "raw-kernel")
))]
mod driver;
