//! The NPI provider module, generic over the NMR it runs on.
//!
//! It serves `get_info` and `checksum` to every client of [`NPI_ID`] whose
//! versions and dispatch table fit, and its notifier
//! ([`ProviderModule::notify_round`]) pushes its call count to every attached
//! client through `notify`.

use alloc::boxed::Box;
use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::ptr::NonNull;
use core::sync::atomic::Ordering::Relaxed;

use nmr_common::binding::{Binding, BindingSet, detach_callback};
use nmr_common::counters::PerProcessorCounters;
use nmr_common::ffi::*;
use nmr_common::module::{ModuleBox, ModuleCore, Unload};
use nmr_common::nmr::Nmr;
use nmr_common::npi::*;
use nmr_common::trace::Event;

/// The module name: in traces, the driver image, the service.
pub const NAME: &str = "nmr_provider";

/// The module id the real driver registers with.
pub const MODULE_ID: GUID = GUID::from_u128(0x9d47_e2a0_5c3b_4f6e_8a12_c7d0_94b3_e158);

/// How a provider module is set up.
#[derive(Clone, Copy, Debug)]
pub struct ProviderConfig {
    /// Name in trace lines.
    pub name: &'static str,
    /// Module id (distinct per module instance).
    pub module_id: GUID,
    /// NPI versions this provider speaks.
    pub versions: VersionRange,
    /// The latency knob: microseconds each `checksum` call takes, so that a
    /// detach meets calls in flight. Non-zero makes `checksum` PASSIVE-only.
    pub latency_us: u32,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            name: NAME,
            module_id: MODULE_ID,
            versions: VersionRange::CURRENT,
            latency_us: 0,
        }
    }
}

nmr_common::counters! {
    /// Counters of one provider module (monotonic).
    pub struct ProviderStats => ProviderCounts {
        /// Clients offered by the NMR.
        offered,
        /// Bindings made.
        attached,
        /// Clients declined.
        declined,
        /// Bindings cleaned up (freed).
        cleaned_up,
        /// `checksum` and `get_info` calls served.
        served,
        /// `notify` calls made.
        notifications,
        /// Bindings skipped by the notifier because they were detaching.
        refused,
    }
}

/// The provider's side of one binding: the client is the peer.
pub type ClientBinding<N> = Binding<N, ClientDispatch, BindingData<N>>;

/// What the provider keeps per binding.
pub struct BindingData<N: Nmr> {
    module: *const ProviderModule<N>,
    /// The NPI version agreed with this client.
    pub version: u16,
}

// SAFETY: `module` points to the module, which is `Sync` and outlives every
// binding (it is freed only after the deregistration wait).
unsafe impl<N: Nmr> Sync for BindingData<N> {}
// SAFETY: as above.
unsafe impl<N: Nmr> Send for BindingData<N> {}

/// The provider module. Lives at a fixed address inside a [`Provider`].
pub struct ProviderModule<N: Nmr> {
    core: ModuleCore<N>,
    config: ProviderConfig,
    dispatch: ProviderDispatch,
    // Filled in `load` once the module has its final address; read by the NMR.
    characteristics: UnsafeCell<NPI_PROVIDER_CHARACTERISTICS>,
    bindings: BindingSet<N, ClientDispatch, BindingData<N>>,
    // One set per processor: the call path bumps only its own line.
    stats: PerProcessorCounters<ProviderStats>,
}

// SAFETY: `characteristics` is written once in `load` before the module is
// shared, then only read; everything else is `Sync`.
unsafe impl<N: Nmr> Sync for ProviderModule<N> {}
// SAFETY: nothing in the module is tied to a thread.
unsafe impl<N: Nmr> Send for ProviderModule<N> {}

/// A loaded provider: registered with the NMR until dropped or unloaded.
pub type Provider<N> = ModuleBox<ProviderModule<N>>;

impl<N: Nmr> ProviderModule<N> {
    /// Builds the module, fully initialised, then registers it: clients
    /// already registered are attached before this returns (R2).
    pub fn load(nmr: N, config: ProviderConfig) -> Result<Provider<N>, NTSTATUS> {
        // One reader lock per processor: sized by the NMR, allocated fallibly.
        let bindings =
            BindingSet::try_new(nmr.clone()).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        let stats = PerProcessorCounters::try_new(nmr.processor_count())
            .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        let module = ProviderModule {
            core: ModuleCore::new(nmr, config.name, config.module_id, config.versions),
            config,
            dispatch: ProviderDispatch {
                header: DispatchHeader {
                    version: NPI_VERSION,
                    size: size_of::<ProviderDispatch>() as u16,
                },
                get_info: get_info::<N>,
                checksum: checksum::<N>,
            },
            characteristics: UnsafeCell::new(NPI_PROVIDER_CHARACTERISTICS {
                Version: 0,
                Length: size_of::<NPI_PROVIDER_CHARACTERISTICS>() as u16,
                ProviderAttachClient: Some(attach_client::<N>),
                ProviderDetachClient: Some(detach_callback::<N, ClientDispatch, BindingData<N>>),
                ProviderCleanupBindingContext: Some(cleanup_binding::<N>),
                ProviderRegistrationInstance: ModuleCore::<N>::unplaced_instance(),
            }),
            bindings,
            stats,
        };
        let provider = ModuleBox::new(module).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        let this = provider.as_ptr();
        // SAFETY: the module is at its final address and not shared yet; the
        // pointers written point into it and stay valid until it is freed,
        // which happens only after the deregistration wait.
        unsafe {
            (*(*this).characteristics.get()).ProviderRegistrationInstance =
                ModuleCore::registration_instance(&raw const (*this).core);
        }
        // SAFETY: characteristics and context live in the module, which
        // outlives the registration (freed only after the wait returns).
        let status = unsafe {
            provider
                .core
                .register_provider(provider.characteristics.get(), this.cast())
        };
        if nt_success(status) {
            Ok(provider)
        } else {
            Err(status)
        }
    }

    /// The module's name.
    pub fn name(&self) -> &'static str {
        self.core.name()
    }

    /// The counters of the processor this runs on.
    #[inline(always)]
    fn counters(&self) -> &ProviderStats {
        self.stats.on(self.core.nmr().current_processor())
    }

    /// One round of the notifier: `notify(EVENT_CALL_COUNT, served)` to every
    /// active client. Returns how many clients were notified.
    pub fn notify_round(&self) -> u64 {
        let counters = self.counters();
        // The value sent: this processor's count (see `EVENT_CALL_COUNT`).
        let served = counters.served.load(Relaxed);
        let mut notified = 0;
        let refused = self.bindings.for_each_call(|client| {
            // SAFETY: the dispatch table passed `check_dispatch` and stays
            // valid while the call is counted; the context is the client's own.
            unsafe { (client.dispatch().notify)(client.context(), EVENT_CALL_COUNT, served) };
            notified += 1;
        });
        if notified != 0 {
            counters.notifications.fetch_add(notified, Relaxed);
        }
        if refused != 0 {
            counters.refused.fetch_add(refused as u64, Relaxed);
        }
        notified
    }

    /// Bindings currently linked (attached and not yet cleaned up).
    pub fn binding_count(&self) -> usize {
        self.bindings.len()
    }

    /// A snapshot of the counters.
    pub fn counts(&self) -> ProviderCounts {
        self.stats.snapshot()
    }
}

impl<N: Nmr> Unload for ProviderModule<N> {
    fn unload(&self) -> NTSTATUS {
        self.core.unload()
    }
}

/// `ProviderAttachClient` (PASSIVE).
///
/// # Safety
///
/// Called by the NMR inside `NmrClientAttachProvider`: `context` is the
/// registered module, `client` the client's live registration instance, the
/// client's context and dispatch valid until cleanup, the out pointers writable.
unsafe extern "system" fn attach_client<N: Nmr>(
    handle: HANDLE,
    context: *mut c_void,
    client: *const NPI_REGISTRATION_INSTANCE,
    client_context: *mut c_void,
    client_dispatch: *const c_void,
    provider_context: *mut *mut c_void,
    provider_dispatch: *mut *const c_void,
) -> NTSTATUS {
    // SAFETY: the NMR passes back the context we registered: the module, which
    // outlives its registration.
    let module = unsafe { &*context.cast::<ProviderModule<N>>() };
    module.counters().offered.fetch_add(1, Relaxed);
    module.core.trace(
        Event::AttachOffered,
        None,
        STATUS_SUCCESS,
        Some(format_args!("nmr-handle={handle:p}")),
    );

    // SAFETY: the NMR hands us the client's registration instance, valid for the
    // duration of this callback.
    let version = match unsafe { module.core.check_peer(client) } {
        Ok(v) => v,
        Err(why) => {
            return module.core.decline(
                &module.counters().declined,
                handle,
                STATUS_NOINTERFACE,
                &why,
            );
        }
    };
    // SAFETY: the client's dispatch table (or null), valid until cleanup; the
    // check reads its header first and never past its declared size.
    let table = match unsafe { check_dispatch::<ClientDispatch>(client_dispatch, version) } {
        Ok(table) => table,
        Err(why) => {
            return module.core.decline(
                &module.counters().declined,
                handle,
                STATUS_NOINTERFACE,
                &why,
            );
        }
    };

    let data = BindingData { module, version };
    // SAFETY: `handle` is this ProviderAttachClient's binding handle, and
    // the binding becomes its provider binding context (or is dropped).
    let binding = unsafe {
        ClientBinding::for_provider(module.core.nmr().clone(), module.core.name(), handle, data)
    };
    let Ok(binding) = binding else {
        return module.core.decline(
            &module.counters().declined,
            handle,
            STATUS_INSUFFICIENT_RESOURCES,
            &"no memory for the binding",
        );
    };
    // SAFETY: the table and context the client gave for this binding, valid
    // until cleanup; a fresh binding, published once.
    let _first = unsafe { binding.publish_peer(client_context, table) };
    let binding = NonNull::from(Box::leak(binding));
    // SAFETY: the binding stays valid until cleanup, which unlinks it first.
    if unsafe { module.bindings.insert(binding) }.is_err() {
        // SAFETY: not linked, not handed out: ours to free.
        drop(unsafe { Box::from_raw(binding.as_ptr()) });
        return module.core.decline(
            &module.counters().declined,
            handle,
            STATUS_INSUFFICIENT_RESOURCES,
            &"no memory to list the binding",
        );
    }
    // SAFETY: the NMR gave us writable out pointers; our dispatch table lives
    // in the module, which outlives the binding.
    unsafe {
        provider_context.write(binding.as_ptr().cast());
        provider_dispatch.write((&raw const module.dispatch).cast());
    }
    module.counters().attached.fetch_add(1, Relaxed);
    // SAFETY: linked and live; the id is only its address.
    let id = unsafe { binding.as_ref() }.id();
    module.core.trace(
        Event::AttachAccepted,
        Some(id),
        STATUS_SUCCESS,
        Some(format_args!("nmr-handle={handle:p} version={version}")),
    );
    STATUS_SUCCESS
}

/// `ProviderCleanupBindingContext` (<= DISPATCH): unlinks and frees.
///
/// # Safety
///
/// Called by the NMR once, after both sides completed detaching.
unsafe extern "system" fn cleanup_binding<N: Nmr>(context: *mut c_void) {
    let Some(binding) = NonNull::new(context.cast::<ClientBinding<N>>()) else {
        return;
    };
    // SAFETY: live until `destroy` below; the module outlives its bindings.
    let module = unsafe { &*binding.as_ref().data.module };
    module.bindings.remove(binding);
    module.counters().cleaned_up.fetch_add(1, Relaxed);
    // SAFETY: both sides completed, and it is unlinked: nothing refers to it.
    unsafe { ClientBinding::destroy(binding) };
}

/// Resolves a provider binding context handed back by a client.
///
/// # Safety
///
/// `context` is null or a provider binding context we gave that client; the
/// client may call until both sides completed detaching, and the binding is
/// freed only at cleanup, after that.
unsafe fn called_binding<'a, N: Nmr>(
    context: *mut c_void,
) -> Option<(&'a ProviderModule<N>, &'a ClientBinding<N>)> {
    let binding = NonNull::new(context.cast::<ClientBinding<N>>())?;
    // SAFETY: see the function's contract.
    let binding = unsafe { binding.as_ref() };
    // SAFETY: the module outlives its bindings.
    let module = unsafe { &*binding.data.module };
    module.core.nmr().incoming_call(binding.handle());
    Some((module, binding))
}

/// `get_info` (<= DISPATCH).
///
/// # Safety
///
/// Called by a client with the provider binding context it was given, and
/// `info` null or writable for the `size` it declares.
unsafe extern "system" fn get_info<N: Nmr>(
    context: *mut c_void,
    info: *mut ProviderInfo,
) -> NTSTATUS {
    // SAFETY: the caller passes the context we gave it.
    let Some((module, binding)) = (unsafe { called_binding::<N>(context) }) else {
        return STATUS_INVALID_PARAMETER;
    };
    if info.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: non-null; every `ProviderInfo` starts with its `u16` size.
    let size = unsafe { info.cast::<u16>().read_unaligned() };
    if usize::from(size) < size_of::<ProviderInfo>() {
        return STATUS_BUFFER_TOO_SMALL;
    }
    let answer = ProviderInfo {
        size: size_of::<ProviderInfo>() as u16,
        version: binding.data.version,
        features: FEATURE_CHECKSUM,
    };
    // SAFETY: the caller declared at least `size_of::<ProviderInfo>()` bytes.
    unsafe { info.write_unaligned(answer) };
    module.counters().served.fetch_add(1, Relaxed);
    STATUS_SUCCESS
}

/// `checksum` (PASSIVE with the latency knob set, else <= DISPATCH).
///
/// # Safety
///
/// Called by a client with the provider binding context it was given,
/// `data` readable for `len` bytes, `out` writable.
unsafe extern "system" fn checksum<N: Nmr>(
    context: *mut c_void,
    data: *const u8,
    len: usize,
    out: *mut u16,
) -> NTSTATUS {
    // SAFETY: the caller passes the context we gave it.
    let Some((module, _binding)) = (unsafe { called_binding::<N>(context) }) else {
        return STATUS_INVALID_PARAMETER;
    };
    if out.is_null() || (data.is_null() && len != 0) {
        return STATUS_INVALID_PARAMETER;
    }
    let bytes: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: non-null and readable for `len` bytes per the NPI contract.
        unsafe { core::slice::from_raw_parts(data, len) }
    };
    if module.config.latency_us != 0 {
        module.core.nmr().delay(module.config.latency_us);
    }
    let sum = internet_checksum(bytes);
    // SAFETY: non-null and writable per the NPI contract.
    unsafe { out.write_unaligned(sum) };
    module.counters().served.fetch_add(1, Relaxed);
    STATUS_SUCCESS
}
