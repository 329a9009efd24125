//! What both modules do with their registration: register once, deregister
//! once, wait only when the NMR says so.

use core::ffi::c_void;
use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicU8, Ordering};

use crate::ffi::{HANDLE, NTSTATUS, STATUS_PENDING, STATUS_SUCCESS, nt_success};
use crate::nmr::Nmr;
use crate::trace::{Event, Record};

const UNREGISTERED: u8 = 0;
const REGISTERING: u8 = 1;
const REGISTERED: u8 = 2;
const UNLOADED: u8 = 3;

/// A module's NMR registration: its handle and where it is in its life.
pub struct Registration {
    state: AtomicU8,
    handle: AtomicPtr<c_void>,
    // The final status of the unload, answered again to later calls: a failed
    // deregistration must keep saying so, or the memory would be freed.
    outcome: AtomicI32,
}

impl Registration {
    /// Not registered yet.
    pub const fn new() -> Self {
        Registration {
            state: AtomicU8::new(UNREGISTERED),
            handle: AtomicPtr::new(core::ptr::null_mut()),
            outcome: AtomicI32::new(STATUS_SUCCESS),
        }
    }

    /// Registers through `register`, once; traces the result. A failure leaves
    /// the module unregistered (nothing to undo on the NMR side).
    pub fn register<N: Nmr>(
        &self,
        nmr: &N,
        module: &'static str,
        register: impl FnOnce(*mut HANDLE) -> NTSTATUS,
    ) -> NTSTATUS {
        if self
            .state
            .compare_exchange(
                UNREGISTERED,
                REGISTERING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return crate::ffi::STATUS_INVALID_PARAMETER;
        }
        let mut handle: HANDLE = core::ptr::null_mut();
        let status = register(&mut handle);
        let next = if nt_success(status) {
            self.handle.store(handle, Ordering::Release);
            REGISTERED
        } else {
            UNREGISTERED
        };
        self.state.store(next, Ordering::Release);
        nmr.trace(&Record {
            module,
            binding: None,
            event: Event::Register,
            status,
            detail: None,
        });
        status
    }

    /// Whether the module is registered and not unloaded.
    pub fn is_registered(&self) -> bool {
        self.state.load(Ordering::Acquire) == REGISTERED
    }

    /// Deregisters a client and waits, once (< DISPATCH): PENDING -> wait;
    /// SUCCESS -> already complete, no wait; failure -> traced, no wait
    /// (waiting on a failed deregistration could hang forever). Returns the
    /// final status; later calls do nothing and return it again
    /// (`STATUS_SUCCESS` for a module that never registered).
    ///
    /// One thread loads and unloads a module: not to be called concurrently
    /// with `register`.
    pub fn unload_client<N: Nmr>(&self, nmr: &N, module: &'static str) -> NTSTATUS {
        self.unload_with(
            nmr,
            module,
            N::deregister_client,
            N::wait_for_client_deregister_complete,
        )
    }

    /// As [`Registration::unload_client`], for a provider.
    pub fn unload_provider<N: Nmr>(&self, nmr: &N, module: &'static str) -> NTSTATUS {
        self.unload_with(
            nmr,
            module,
            N::deregister_provider,
            N::wait_for_provider_deregister_complete,
        )
    }

    /// The body of both: the side's two functions are passed in by its own
    /// wrapper, so a driver image references only its own side's.
    fn unload_with<N: Nmr>(
        &self,
        nmr: &N,
        module: &'static str,
        deregister: unsafe fn(&N, HANDLE) -> NTSTATUS,
        wait: unsafe fn(&N, HANDLE) -> NTSTATUS,
    ) -> NTSTATUS {
        if self
            .state
            .compare_exchange(REGISTERED, UNLOADED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return self.outcome.load(Ordering::Acquire);
        }
        let handle = self.handle.load(Ordering::Acquire);
        // SAFETY: `handle` came from a successful registration of this side,
        // and the state change above makes this the one deregistration.
        let status = unsafe { deregister(nmr, handle) };
        nmr.trace(&Record {
            module,
            binding: None,
            event: Event::Deregister,
            status,
            detail: None,
        });
        let status = if status == STATUS_PENDING {
            // SAFETY: `handle` was registered and has just been deregistered.
            let waited = unsafe { wait(nmr, handle) };
            nmr.trace(&Record {
                module,
                binding: None,
                event: Event::WaitDone,
                status: waited,
                detail: None,
            });
            waited
        } else {
            // SUCCESS: already complete, nothing to wait for. A failure: traced
            // above, and never waited on.
            status
        };
        self.outcome.store(status, Ordering::Release);
        nmr.trace(&Record {
            module,
            binding: None,
            event: Event::Unload,
            status,
            detail: None,
        });
        status
    }
}

impl Default for Registration {
    fn default() -> Self {
        Self::new()
    }
}

/// A module that can be unloaded: deregistered, and waited for.
pub trait Unload {
    /// Deregisters and waits (see [`Registration::unload_client`]); idempotent.
    fn unload(&self) -> NTSTATUS;
}

/// Owns a module at a fixed heap address: the NMR holds pointers to it from
/// registration until the deregistration wait returns, so it never moves, is
/// only ever shared (`&T`, never `&mut T`, which would alias the callbacks'
/// references), and is freed only after [`Unload::unload`] has returned.
pub struct ModuleBox<T: Unload> {
    ptr: core::ptr::NonNull<T>,
}

// SAFETY: a `ModuleBox` hands out only `&T`, so it is `Send`/`Sync` exactly when
// `&T` may be shared between threads.
unsafe impl<T: Unload + Sync + Send> Send for ModuleBox<T> {}
// SAFETY: as above.
unsafe impl<T: Unload + Sync> Sync for ModuleBox<T> {}

impl<T: Unload> ModuleBox<T> {
    /// Places `module` on the heap, or gives it back when the heap is exhausted.
    pub fn new(module: T) -> Result<Self, T> {
        crate::binding::try_box(module).map(|b| ModuleBox {
            ptr: core::ptr::NonNull::from(alloc::boxed::Box::leak(b)),
        })
    }

    /// The module's fixed address, to register as the NMR context.
    pub fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }
}

impl<T: Unload> core::ops::Deref for ModuleBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the box owns a live `T` until drop.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: Unload> Drop for ModuleBox<T> {
    fn drop(&mut self) {
        let status = self.unload();
        if status == STATUS_SUCCESS {
            // SAFETY: the deregistration completed (wait returned SUCCESS, or
            // there was nothing to deregister), so the NMR no longer refers to
            // the module; we own it and nothing else borrows it.
            drop(unsafe { alloc::boxed::Box::from_raw(self.ptr.as_ptr()) });
        }
        // Otherwise the NMR may still hold pointers into the module: leak it
        // (the failure was traced) rather than free memory still in use.
    }
}
