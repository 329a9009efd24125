//! The thin Windows kernel shell both drivers share.
//!
//! Everything here is Windows-only glue around the portable modules:
//! `DriverEntry` / `DriverUnload` bodies ([`driver_entry`], [`driver_unload`]),
//! the worker thread that generates NPI calls, and the `DbgPrintEx` trace
//! sink. The few kernel functions it needs come from one of two surfaces,
//! chosen by a Cargo feature, behind the same small facade (`km`):
//!
//! - `wdk`: windows-drivers-rs (`wdk-sys` functions, `WdkAllocator`,
//!   `wdk-panic`); needs a Windows host with the WDK. The default of the
//!   driver crates.
//! - `raw-kernel`: the same functions declared by hand and imported with
//!   `raw-dylib` from `ntoskrnl.exe`, plus our own pool allocator, a panic
//!   handler that bug-checks, and the CRT symbols a driver image needs
//!   (`_fltused`, `__CxxFrameHandler3`, `__chkstk`). It builds on any host:
//!   the Linux cross-build in `scripts/build-sys.sh`.
//!
//! On other targets the crate is empty.

#![no_std]

#[cfg(all(target_os = "windows", any(feature = "wdk", feature = "raw-kernel")))]
mod shell;
#[cfg(all(target_os = "windows", any(feature = "wdk", feature = "raw-kernel")))]
pub use shell::*;

/// `DPFLTR_IHVNETWORK_ID`: the `DbgPrintEx` component of our trace lines.
pub const DPFLTR_IHVNETWORK_ID: u32 = 80;

/// The pool tag of every allocation the drivers make: `Nmr ` read as bytes
/// in a debugger (`!poolused 2 Nmr`, Driver Verifier's pool tracking).
pub const POOL_TAG: u32 = u32::from_le_bytes(*b"NmrR");
