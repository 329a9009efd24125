//! The thin Windows kernel shell both drivers share.
//!
//! Everything here is Windows-only glue around the portable modules:
//! `DriverEntry` / `DriverUnload` bodies (`driver_entry`, `driver_unload`),
//! the worker thread that generates NPI calls, the `DbgPrintEx` trace sink and
//! the global allocator ([`pool`]). The few kernel functions it calls come
//! from one of two surfaces, chosen by a Cargo feature, behind the same small
//! facade (`km`), one thin wrapper per kernel function:
//!
//! - `wdk`: windows-drivers-rs (`wdk-sys` functions, linked through the WDK's
//!   import libraries, and `wdk-panic`'s panic handler); needs a Windows host
//!   with the WDK (`cargo make`).
//! - `raw-kernel`: the same functions declared by hand and imported with
//!   `raw-dylib` from `ntoskrnl.exe`, a panic handler that bug-checks the way
//!   wdk-panic does, and the CRT symbols a driver image needs (`_fltused`,
//!   `__CxxFrameHandler3`, `__chkstk`). It builds on any host: the Linux
//!   cross-build in `cargo xtask package`.
//!
//! Both surfaces must offer the same items with the same signatures: the
//! test `tests/twins.rs` compares them. Whatever is not surface-specific
//! lives in `shell.rs` and [`pool`].
//!
//! Both surfaces also get the load configuration and the CFG function-pointer
//! slots that a Control Flow Guard image needs (`cfg_support.rs`, laid out
//! by [`load_config`]).
//!
//! Without a surface feature, on other targets, and in test builds (a test
//! harness links std, whose panic handler and allocator would clash with the
//! kernel's: E0152), only the portable parts are compiled: [`pool`],
//! [`load_config`] and the constants below.

#![no_std]

pub mod load_config;
pub mod pool;

#[cfg(all(
    target_os = "windows",
    not(test),
    any(feature = "wdk", feature = "raw-kernel")
))]
mod cfg_support;

#[cfg(all(
    target_os = "windows",
    not(test),
    any(feature = "wdk", feature = "raw-kernel")
))]
mod shell;
#[cfg(all(
    target_os = "windows",
    not(test),
    any(feature = "wdk", feature = "raw-kernel")
))]
pub use shell::*;

/// `DPFLTR_IHVNETWORK_ID`: the `DbgPrintEx` component of our trace lines.
pub const DPFLTR_IHVNETWORK_ID: u32 = 80;

/// The pool tag of every allocation the drivers make, on both kernel surfaces:
/// `NmrR` in poolmon, `!poolused` and Driver Verifier's pool tracking.
pub const POOL_TAG: u32 = u32::from_le_bytes(*b"NmrR");
