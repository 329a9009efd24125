//! The portable core shared by the NMR client and provider drivers.
//!
//! `#![no_std]` with `alloc`, no WDK: it builds for the Windows kernel and for
//! the Linux host alike. See `DESIGN.md` for how the pieces fit.
//!
//! - [`ffi`]: the `netioddk.h` ABI, declared by hand and pinned by layout checks.
//! - [`nmr`]: the [`nmr::Nmr`] seam and its Windows implementation.
//! - [`npi`]: this project's NPI: id, versions, dispatch tables, checksum.
//! - [`percpu`]: one cache-line-padded value per processor.
//! - [`arena`]: a module's per-processor pages of 8-byte rundown slots.
//! - [`rundown`]: the in-flight call counter, one slot per processor.
//! - [`binding`]: one side of one binding, and a module's set of bindings.
//! - [`module`]: registration, deregistration and the wait, once each.
//! - [`sync`]: a DISPATCH-safe spin lock over the platform's raw lock.
//! - [`trace`]: one trace line per NMR event.

#![no_std]

extern crate alloc;

pub mod arena;
pub mod binding;
pub mod counters;
pub mod ffi;
pub mod module;
pub mod nmr;
pub mod npi;
pub mod percpu;
pub mod rundown;
pub mod sync;
pub mod trace;
