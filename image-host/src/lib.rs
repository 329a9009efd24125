//! `nmr-image-host`: runs the shipped `nmr_client.sys` and `nmr_provider.sys`
//! on x86_64 Linux, against `nmr-sim`.
//!
//! [`Driver::load`] maps a PE32+ x64 native image as the Windows loader does
//! (sections, DIR64 relocations at a base that is not the preferred one,
//! section protections, a read-only IAT) and binds every import by name to a
//! stand-in: `ntoskrnl.exe` functions with Windows semantics
//! ([`ntoskrnl`]: a special pool with per-image accounting, system threads on
//! 24 KiB kernel stacks with a guard page, the spin lock raising the model's
//! IRQL, `DbgPrintEx`, `KeBugCheckEx`...) and the `NETIO.SYS` NMR functions
//! bound to the model bound with [`ModelBinding`]. An import without a
//! stand-in refuses the load, naming the DLL and the function.
//!
//! An image built with Control Flow Guard gets the host's check and dispatch
//! routines in its load configuration ([`cfg`](mod@cfg)): an indirect call to a target
//! that is not in the target image's guard function table stops the run, as
//! kernel CFG stops Windows.
//!
//! A fault in image code (or on a kernel stack's guard page) is reported
//! with the image, the offset, and the `llvm-symbolizer` command that names
//! the source line; the process then exits with [`FAULT_EXIT_CODE`].
//! Problems the stand-ins see (leaks, bad frees, overruns, a missing
//! `DriverUnload`) are collected in [`problems`]. Every fallible stand-in asks
//! the one [`FaultPlan`], which can fail any chosen call.
//!
//! On any other target the crate is empty.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod bind;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod cfg;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod dispatch;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod driver;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod fault;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod image;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod kpcr;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod model;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod netio;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod ntoskrnl;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod pe;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod plan;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod pool;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod problems;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod registry;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod rules;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod stack;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod stress;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod systematic;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use bind::{NETIO, NTOSKRNL, stand_ins};
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use driver::{Driver, State};
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use fault::FAULT_EXIT_CODE;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use kpcr::stand_in_kpcr_here;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use model::ModelBinding;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use pe::LoadError;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use plan::{FaultMode, FaultPlan, Reached, Site};
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use stack::{EntryStats, KERNEL_STACK_SIZE, NETIO_FRAME_BUDGET};

#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod tests;
#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod verifier_tests;

/// Whether this build can run the images (x86_64 Linux).
pub const SUPPORTED: bool = cfg!(all(target_os = "linux", target_arch = "x86_64"));
