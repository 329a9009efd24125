//! The portable core shared by the NMR client and provider drivers.
//!
//! `#![no_std]` with `alloc`, no WDK: it builds for the Windows kernel and for
//! the Linux host alike. See `docs/architecture.md` for how the pieces fit.
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
//!
//! # What safe code cannot do
//!
//! Each of these compiled before the soundness review (F1-F5) and does not
//! now; the run-time halves are in `tests/soundness.rs`.
//!
//! F1: share a lock's data with another thread unless it is `Sync` (see
//! [`sync::SpinLock`]); lock guards no longer exist as values, so none is
//! released on another thread or out of order.
//!
//! F2: build a module id whose union is partly written (see
//! [`ffi::NPI_MODULEID`]).
//!
//! F3: begin a binding's drain outside its detach callback, or make a binding
//! with an arbitrary handle:
//!
//! ```compile_fail,E0133
//! # use nmr_common::{binding::Binding, rundown::{Rundown, RundownOwner}};
//! fn arm<N: nmr_common::nmr::Nmr>(b: &Binding<N, (), ()>) {
//!     let rundown = core::ptr::NonNull::from(RundownOwner::rundown(b));
//!     Rundown::begin_drain(rundown); // unsafe fn: not from safe code
//! }
//! ```
//!
//! ```compile_fail,E0133
//! # use nmr_common::{arena::SlotArena, binding::Binding};
//! fn make<N: nmr_common::nmr::Nmr>(nmr: N, slots: &SlotArena) {
//!     let _ = Binding::<N, (), ()>::for_client(nmr, slots, "x", core::ptr::null_mut(), ());
//! }
//! ```
//!
//! F4: hand the registration a handle of one's own choosing, or deregister
//! with the other side's functions:
//!
//! ```compile_fail,E0599
//! # use nmr_common::module::ModuleCore;
//! fn lie<N: nmr_common::nmr::Nmr>(core: &ModuleCore<N>) {
//!     core.register(|_handle| nmr_common::ffi::STATUS_SUCCESS);
//! }
//! ```
//!
//! F5: publish a peer from safe code (and a second publication is refused):
//!
//! ```compile_fail,E0133
//! # use nmr_common::binding::Binding;
//! fn pair<N: nmr_common::nmr::Nmr>(b: &Binding<N, u8, ()>, t: &u8) {
//!     let _ = b.publish_peer(core::ptr::null_mut(), t);
//! }
//! ```

#![no_std]
#![deny(missing_docs)]

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

/// The unit tests' heap: the system's, except that it refuses any block over
/// 1 GiB, as an exhausted pool would. So the tests of the out-of-memory paths
/// (an arena that cannot grow) fail their allocation for certain: they depend
/// neither on the host's overcommit policy nor on Miri, which would try to
/// provide the half terabyte they ask for.
#[cfg(test)]
mod test_heap {
    extern crate std;
    use std::alloc::{GlobalAlloc, Layout, System};

    /// Larger requests fail.
    const LIMIT: usize = 1 << 30;

    struct Bounded;

    // SAFETY: every request is forwarded to `System` or refused with null,
    // which `GlobalAlloc` allows for any layout.
    unsafe impl GlobalAlloc for Bounded {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if layout.size() > LIMIT {
                return core::ptr::null_mut();
            }
            // SAFETY: forwarded; the caller upholds `alloc`'s contract.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if layout.size() > LIMIT {
                return core::ptr::null_mut();
            }
            // SAFETY: forwarded; the caller upholds `alloc_zeroed`'s contract.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded: `ptr` came from `System` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if new_size > LIMIT {
                return core::ptr::null_mut();
            }
            // SAFETY: forwarded; the caller upholds `realloc`'s contract.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static HEAP: Bounded = Bounded;
}
