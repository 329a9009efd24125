//! What every module has and does, whichever side of the NPI it takes:
//! [`ModuleCore`] (its NMR, name, identity and registration, its trace lines
//! and its peer check), [`Registration`] (register once, deregister once,
//! wait only when the NMR says so) and [`ModuleBox`] (a fixed address until
//! the NMR is done with it).

use core::ffi::c_void;
use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicU8, Ordering};

use core::sync::atomic::AtomicU64;

use crate::ffi::{
    GUID, HANDLE, NPI_CLIENT_CHARACTERISTICS, NPI_MODULEID, NPI_PROVIDER_CHARACTERISTICS,
    NPI_REGISTRATION_INSTANCE, NPIID, NTSTATUS, STATUS_PENDING, STATUS_SUCCESS, nt_success,
};
use crate::nmr::Nmr;
use crate::npi::{self, NPI_ID, NPI_VERSION, NpiCharacteristics, PeerMismatch, VersionRange};
use crate::trace::{Event, Record};

static NPI: NPIID = NPI_ID;

/// What every module has: the NMR it runs on, its name in trace lines, the
/// identity it registers with (module id, NPI characteristics) and its
/// registration. Lives inside the module, so at its fixed address.
pub struct ModuleCore<N: Nmr> {
    nmr: N,
    name: &'static str,
    npi_id: &'static NPIID,
    module_id: NPI_MODULEID,
    npi_characteristics: NpiCharacteristics,
    registration: Registration,
}

impl<N: Nmr> ModuleCore<N> {
    /// A module of this project's NPI ([`NPI_ID`]) named `name` with id
    /// `module_id`, speaking `versions`.
    pub fn new(nmr: N, name: &'static str, module_id: GUID, versions: VersionRange) -> Self {
        Self::with_npi(nmr, name, &NPI, module_id, versions)
    }

    /// As [`ModuleCore::new`], for the NPI `npi_id`.
    pub fn with_npi(
        nmr: N,
        name: &'static str,
        npi_id: &'static NPIID,
        module_id: GUID,
        versions: VersionRange,
    ) -> Self {
        ModuleCore {
            nmr,
            name,
            npi_id,
            module_id: NPI_MODULEID::from_guid(module_id),
            npi_characteristics: NpiCharacteristics::new(versions),
            registration: Registration::new(),
        }
    }

    /// The NMR this module runs on.
    pub fn nmr(&self) -> &N {
        &self.nmr
    }

    /// The module's name, as in its trace lines.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// A registration instance with no pointers yet, to build the
    /// characteristics with before the module has its final address.
    pub const fn unplaced_instance() -> NPI_REGISTRATION_INSTANCE {
        NPI_REGISTRATION_INSTANCE {
            Version: 0,
            Size: size_of::<NPI_REGISTRATION_INSTANCE>() as u16,
            NpiId: core::ptr::null(),
            ModuleId: core::ptr::null(),
            Number: NPI_VERSION as u32,
            NpiSpecificCharacteristics: core::ptr::null(),
        }
    }

    /// This module's registration instance: the NPI id, and pointers to the
    /// core's module id and NPI characteristics.
    ///
    /// # Safety
    ///
    /// `this` is the core at its final address, where it stays until the
    /// deregistration wait returns (the NMR keeps these pointers until then).
    pub unsafe fn registration_instance(this: *const Self) -> NPI_REGISTRATION_INSTANCE {
        NPI_REGISTRATION_INSTANCE {
            // SAFETY: a raw read of a field of a live core.
            NpiId: unsafe { (*this).npi_id },
            // SAFETY: raw projections of a live core; no reference is made.
            ModuleId: unsafe { &raw const (*this).module_id },
            // SAFETY: as above.
            NpiSpecificCharacteristics: unsafe { (&raw const (*this).npi_characteristics).cast() },
            ..Self::unplaced_instance()
        }
    }

    /// Emits one trace line of this module.
    pub fn trace(
        &self,
        event: Event,
        binding: Option<usize>,
        status: NTSTATUS,
        detail: Option<core::fmt::Arguments<'_>>,
    ) {
        self.nmr.trace(&Record {
            module: self.name,
            binding,
            event,
            status,
            detail,
        });
    }

    /// Declines the peer offered with `handle`: counts it in `declined`,
    /// traces why, and returns `status` for the attach callback to return.
    pub fn decline(
        &self,
        declined: &AtomicU64,
        handle: HANDLE,
        status: NTSTATUS,
        why: &dyn core::fmt::Display,
    ) -> NTSTATUS {
        declined.fetch_add(1, Ordering::Relaxed);
        self.trace(
            Event::AttachDeclined,
            None,
            status,
            Some(format_args!("nmr-handle={handle:p} {why}")),
        );
        status
    }

    /// Checks what the peer published: our NPI id, a well-formed GUID module
    /// id and an NPI version range that overlaps ours. Returns the version to
    /// speak.
    ///
    /// # Safety
    ///
    /// `peer` is the peer's registration instance, as the NMR hands it to an
    /// attach callback: valid for the duration of the callback.
    pub unsafe fn check_peer(
        &self,
        peer: *const NPI_REGISTRATION_INSTANCE,
    ) -> Result<u16, PeerMismatch> {
        // SAFETY: see the function's contract.
        let peer = unsafe { &*peer };
        // SAFETY: a non-null NPI id points to the peer's GUID.
        if peer.NpiId.is_null() || unsafe { *peer.NpiId } != *self.npi_id {
            return Err(PeerMismatch::NpiId);
        }
        // SAFETY: a non-null module id points to the peer's `NPI_MODULEID`.
        if peer.ModuleId.is_null() || unsafe { (*peer.ModuleId).guid() }.is_none() {
            return Err(PeerMismatch::ModuleId);
        }
        // SAFETY: the peer's publication; read no further than its declared size.
        unsafe {
            npi::negotiate_peer(
                peer.NpiSpecificCharacteristics,
                self.npi_characteristics.versions,
            )
        }
    }

    /// Registers as a client (`NmrRegisterClient`), once.
    ///
    /// # Safety
    ///
    /// As [`Nmr::register_client`]: `characteristics`, what it points to and
    /// `context` stay valid until [`ModuleCore::unload_client`] has returned
    /// `STATUS_SUCCESS`.
    pub unsafe fn register_client(
        &self,
        characteristics: *const NPI_CLIENT_CHARACTERISTICS,
        context: *mut c_void,
    ) -> NTSTATUS {
        self.registration
            .register(&self.nmr, self.name, Side::Client, |handle| {
                // SAFETY: forwarded: see the function's contract; `handle` is the
                // registration's own slot.
                unsafe { self.nmr.register_client(characteristics, context, handle) }
            })
    }

    /// Registers as a provider (`NmrRegisterProvider`), once.
    ///
    /// # Safety
    ///
    /// As [`ModuleCore::register_client`].
    pub unsafe fn register_provider(
        &self,
        characteristics: *const NPI_PROVIDER_CHARACTERISTICS,
        context: *mut c_void,
    ) -> NTSTATUS {
        self.registration
            .register(&self.nmr, self.name, Side::Provider, |handle| {
                // SAFETY: forwarded: see the function's contract.
                unsafe { self.nmr.register_provider(characteristics, context, handle) }
            })
    }

    /// Deregisters a client and waits: see [`Registration::unload_client`].
    pub fn unload_client(&self) -> NTSTATUS {
        self.registration.unload_client(&self.nmr, self.name)
    }

    /// Deregisters a provider and waits: see [`Registration::unload_client`].
    pub fn unload_provider(&self) -> NTSTATUS {
        self.registration.unload_provider(&self.nmr, self.name)
    }
}

/// Which `NmrRegister*` made a registration: its deregistration and wait use
/// the same side's functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Provider,
}

const UNREGISTERED: u8 = 0;
const REGISTERING: u8 = 1;
const REGISTERED: u8 = 2;
const UNLOADED: u8 = 3;

/// A module's NMR registration: its handle and where it is in its life.
///
/// The handle is written only by the side's own `NmrRegister*`, and the
/// unload deregisters it with the same side's functions: no caller can hand
/// it another value, or a client handle to `NmrDeregisterProvider`.
pub struct Registration {
    state: AtomicU8,
    // Written with the handle, before REGISTERED is published.
    side: AtomicU8,
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
            side: AtomicU8::new(0),
            handle: AtomicPtr::new(core::ptr::null_mut()),
            outcome: AtomicI32::new(STATUS_SUCCESS),
        }
    }

    /// Registers through `register` (the `side`'s `NmrRegister*`, called
    /// with the handle's slot), once; traces the result. A failure leaves the
    /// module unregistered (nothing to undo on the NMR side).
    fn register<N: Nmr>(
        &self,
        nmr: &N,
        module: &'static str,
        side: Side,
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
            self.side.store(side as u8, Ordering::Release);
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
    /// A registration made as a provider is refused with
    /// `STATUS_INVALID_PARAMETER` and left registered: a provider handle never
    /// reaches `NmrDeregisterClient`. Each side names only its own functions,
    /// so a driver image imports only its own side's.
    ///
    /// One thread loads and unloads a module: not to be called concurrently
    /// with registering.
    pub fn unload_client<N: Nmr>(&self, nmr: &N, module: &'static str) -> NTSTATUS {
        if !self.registered_as(Side::Client) {
            return self.wrong_side(nmr, module);
        }
        self.unload_with(
            nmr,
            module,
            N::deregister_client,
            N::wait_for_client_deregister_complete,
        )
    }

    /// As [`Registration::unload_client`], for a provider.
    pub fn unload_provider<N: Nmr>(&self, nmr: &N, module: &'static str) -> NTSTATUS {
        if !self.registered_as(Side::Provider) {
            return self.wrong_side(nmr, module);
        }
        self.unload_with(
            nmr,
            module,
            N::deregister_provider,
            N::wait_for_provider_deregister_complete,
        )
    }

    /// Whether the registration, if any, was made by `side`.
    fn registered_as(&self, side: Side) -> bool {
        self.state.load(Ordering::Acquire) != REGISTERED
            || self.side.load(Ordering::Acquire) == side as u8
    }

    /// The other side's unload was asked for: refused, traced.
    fn wrong_side<N: Nmr>(&self, nmr: &N, module: &'static str) -> NTSTATUS {
        let status = crate::ffi::STATUS_INVALID_PARAMETER;
        nmr.trace(&Record {
            module,
            binding: None,
            event: Event::Deregister,
            status,
            detail: Some(format_args!("refused: registered as the other side")),
        });
        status
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
