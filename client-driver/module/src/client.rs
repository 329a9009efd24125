//! The NPI client module, generic over the NMR it runs on.
//!
//! It attaches to every provider of [`NPI_ID`] whose versions and dispatch
//! table fit, and its worker ([`ClientModule::call_round`]) calls `checksum`
//! through every active binding and verifies each answer. Providers call back
//! with `notify`.

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering::Relaxed;

use nmr_common::binding::{Binding, BindingSet, detach_callback};
use nmr_common::counters::PerProcessorCounters;
use nmr_common::ffi::*;
use nmr_common::module::{ModuleBox, ModuleCore, Unload};
use nmr_common::nmr::Nmr;
use nmr_common::npi::*;
use nmr_common::trace::Event;

/// The module name: in traces, the driver image, the service.
pub const NAME: &str = "nmr_client";

/// The module id the real driver registers with.
pub const MODULE_ID: GUID = GUID::from_u128(0x3b0f_9c52_1e7a_4d8e_b6c4_2a91_5fd3_0c71);

/// How a client module is set up.
#[derive(Clone, Copy, Debug)]
pub struct ClientConfig {
    /// Name in trace lines.
    pub name: &'static str,
    /// Module id (distinct per module instance).
    pub module_id: GUID,
    /// NPI versions this client speaks.
    pub versions: VersionRange,
    /// Test knob: microseconds each `notify` takes (0 in the drivers). Makes
    /// a notification stay in flight; only for PASSIVE callers.
    pub notify_delay_us: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            name: NAME,
            module_id: MODULE_ID,
            versions: VersionRange::CURRENT,
            notify_delay_us: 0,
        }
    }
}

nmr_common::counters! {
    /// Counters of one client module (monotonic).
    pub struct ClientStats => ClientCounts {
        /// Providers offered by the NMR.
        offered,
        /// Bindings made.
        attached,
        /// Providers declined (versions, dispatch, module id) or failed attaches.
        declined,
        /// Bindings cleaned up (freed).
        cleaned_up,
        /// `checksum` calls made.
        calls,
        /// Calls whose answer matched our own checksum.
        verified,
        /// Calls that failed or answered wrong.
        mismatched,
        /// Bindings skipped because they were detaching.
        refused,
        /// `notify` calls received.
        notifications,
    }
}

/// The client's side of one binding: the provider is the peer.
pub type ProviderBinding<N> = Binding<N, ProviderDispatch, BindingData<N>>;

/// What the client keeps per binding.
pub struct BindingData<N: Nmr> {
    module: *const ClientModule<N>,
    /// The NPI version agreed with this provider.
    pub version: u16,
}

// SAFETY: `module` points to the module, which is `Sync` and outlives every
// binding (it is freed only after the deregistration wait).
unsafe impl<N: Nmr> Sync for BindingData<N> {}
// SAFETY: as above.
unsafe impl<N: Nmr> Send for BindingData<N> {}

/// The client module. Lives at a fixed address inside a [`Client`].
pub struct ClientModule<N: Nmr> {
    core: ModuleCore<N>,
    config: ClientConfig,
    dispatch: ClientDispatch,
    // Filled in `load` once the module has its final address; read by the NMR.
    characteristics: UnsafeCell<NPI_CLIENT_CHARACTERISTICS>,
    bindings: BindingSet<N, ProviderDispatch, BindingData<N>>,
    // One set per processor: the call path bumps only its own line.
    stats: PerProcessorCounters<ClientStats>,
}

// SAFETY: `characteristics` is written once in `load` before the module is
// shared, then only read; everything else is `Sync`.
unsafe impl<N: Nmr> Sync for ClientModule<N> {}
// SAFETY: nothing in the module is tied to a thread.
unsafe impl<N: Nmr> Send for ClientModule<N> {}

/// A loaded client: registered with the NMR until dropped or unloaded.
pub type Client<N> = ModuleBox<ClientModule<N>>;

impl<N: Nmr> ClientModule<N> {
    /// Builds the module, fully initialised, then registers it: providers
    /// already registered are attached before this returns (R2).
    pub fn load(nmr: N, config: ClientConfig) -> Result<Client<N>, NTSTATUS> {
        // One reader lock per processor: sized by the NMR, allocated fallibly.
        let bindings =
            BindingSet::try_new(nmr.clone()).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        let stats = PerProcessorCounters::try_new(nmr.processor_count())
            .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        let module = ClientModule {
            core: ModuleCore::new(nmr, config.name, config.module_id, config.versions),
            config,
            dispatch: ClientDispatch {
                header: DispatchHeader {
                    version: NPI_VERSION,
                    size: size_of::<ClientDispatch>() as u16,
                },
                notify: notify::<N>,
            },
            characteristics: UnsafeCell::new(NPI_CLIENT_CHARACTERISTICS {
                Version: 0,
                Length: size_of::<NPI_CLIENT_CHARACTERISTICS>() as u16,
                ClientAttachProvider: Some(attach_provider::<N>),
                ClientDetachProvider: Some(detach_callback::<N, ProviderDispatch, BindingData<N>>),
                ClientCleanupBindingContext: Some(cleanup_binding::<N>),
                ClientRegistrationInstance: ModuleCore::<N>::unplaced_instance(),
            }),
            bindings,
            stats,
        };
        let client = ModuleBox::new(module).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        let this = client.as_ptr();
        // SAFETY: the module is at its final address and not shared yet; the
        // pointers written point into it and stay valid until it is freed,
        // which happens only after the deregistration wait.
        unsafe {
            (*(*this).characteristics.get()).ClientRegistrationInstance =
                ModuleCore::registration_instance(&raw const (*this).core);
        }
        // SAFETY: characteristics and context live in the module, which
        // outlives the registration (freed only after the wait returns).
        let status = unsafe {
            client
                .core
                .register_client(client.characteristics.get(), this.cast())
        };
        if nt_success(status) {
            Ok(client)
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
    fn counters(&self) -> &ClientStats {
        self.stats.on(self.core.nmr().current_processor())
    }

    /// One round of the worker: `checksum(payload)` through every active
    /// binding, each answer checked against our own computation. Returns how
    /// many calls were verified.
    pub fn call_round(&self, payload: &[u8]) -> u64 {
        let expected = internet_checksum(payload);
        // This processor's counters, chosen once a round: a thread that
        // migrates mid-round shares a line for a while, and loses no count.
        let counters = self.counters();
        let mut verified = 0;
        let refused = self.bindings.for_each_call(|provider| {
            let mut answer = 0u16;
            // SAFETY: the dispatch table passed `check_dispatch` and stays
            // valid while the call is counted; `payload` and `answer` are live
            // for the call; the context is the provider's own.
            let status = unsafe {
                (provider.dispatch().checksum)(
                    provider.context(),
                    payload.as_ptr(),
                    payload.len(),
                    &mut answer,
                )
            };
            counters.calls.fetch_add(1, Relaxed);
            if status == STATUS_SUCCESS && answer == expected {
                verified += 1;
            } else {
                counters.mismatched.fetch_add(1, Relaxed);
                self.core.trace(
                    Event::PeerFault,
                    Some(provider.binding().id()),
                    status,
                    Some(format_args!(
                        "checksum answered {answer:#06x}, expected {expected:#06x}"
                    )),
                );
            }
        });
        if verified != 0 {
            counters.verified.fetch_add(verified, Relaxed);
        }
        if refused != 0 {
            counters.refused.fetch_add(refused as u64, Relaxed);
        }
        verified
    }

    /// Bindings currently linked (attached and not yet cleaned up).
    pub fn binding_count(&self) -> usize {
        self.bindings.len()
    }

    /// A snapshot of the counters.
    pub fn counts(&self) -> ClientCounts {
        self.stats.snapshot()
    }
}

impl<N: Nmr> Unload for ClientModule<N> {
    fn unload(&self) -> NTSTATUS {
        self.core.unload()
    }
}

/// `ClientAttachProvider` (PASSIVE).
///
/// # Safety
///
/// Called by the NMR: `context` is the registered module, `provider` the
/// provider's live registration instance.
unsafe extern "system" fn attach_provider<N: Nmr>(
    handle: HANDLE,
    context: *mut c_void,
    provider: *const NPI_REGISTRATION_INSTANCE,
) -> NTSTATUS {
    // SAFETY: the NMR passes back the context we registered: the module, which
    // outlives its registration.
    let module = unsafe { &*context.cast::<ClientModule<N>>() };
    module.counters().offered.fetch_add(1, Relaxed);
    // Traces name this binding by its NMR handle until the context exists.
    module.core.trace(
        Event::AttachOffered,
        None,
        STATUS_SUCCESS,
        Some(format_args!("nmr-handle={handle:p}")),
    );

    // SAFETY: the NMR hands us the provider's registration instance, valid for the
    // duration of this callback.
    let version = match unsafe { module.core.check_peer(provider) } {
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

    let data = BindingData { module, version };
    // SAFETY: `handle` is this ClientAttachProvider's binding handle, and the
    // binding becomes its client binding context (or is dropped undetached).
    let binding = unsafe {
        ProviderBinding::for_client(module.core.nmr().clone(), module.core.name(), handle, data)
    };
    let Ok(binding) = binding else {
        return module.core.decline(
            &module.counters().declined,
            handle,
            STATUS_INSUFFICIENT_RESOURCES,
            &"no memory for the binding",
        );
    };
    // The binding's place in our list, held now: once NmrClientAttachProvider
    // succeeds the binding cannot be declined, so linking it must not fail.
    let Ok(place) = module.bindings.reserve() else {
        drop(binding);
        return module.core.decline(
            &module.counters().declined,
            handle,
            STATUS_INSUFFICIENT_RESOURCES,
            &"no memory to list the binding",
        );
    };
    let binding = Box::into_raw(binding);
    let (mut peer_context, mut peer_dispatch) = (ptr::null_mut(), ptr::null());
    // SAFETY: inside ClientAttachProvider for `handle`; our context and
    // dispatch table live until cleanup (the table lives in the module); the
    // out pointers are our locals.
    let status = unsafe {
        module.core.nmr().client_attach_provider(
            handle,
            binding.cast(),
            (&raw const module.dispatch).cast(),
            &mut peer_context,
            &mut peer_dispatch,
        )
    };
    if !nt_success(status) {
        // R3: a failed attach has no detach and no cleanup: we free it (and
        // give its place in the list back).
        // SAFETY: the binding came from `Box::into_raw`, and the provider
        // declined, so nobody else has it.
        drop(unsafe { Box::from_raw(binding) });
        return module.core.decline(
            &module.counters().declined,
            handle,
            status,
            &"the provider declined",
        );
    }
    // SAFETY: attached, and no detach (so no cleanup) can come before this
    // callback returns. Shared only: the provider may already be notifying.
    let binding_ref = unsafe { &*binding };
    let id = binding_ref.id();
    // SAFETY: the provider wrote its table's address; the check reads the
    // header first and never past the size it declares. The table stays valid
    // until cleanup.
    match unsafe { check_dispatch::<ProviderDispatch>(peer_dispatch, version) } {
        Ok(table) => {
            // SAFETY: the table and context the provider gave for this binding,
            // valid until cleanup; published once, here.
            let _first = unsafe { binding_ref.publish_peer(peer_context, table) };
        }
        // Too late to decline: the binding exists. It is never published, so
        // never called, and is detached and cleaned up like any other.
        Err(why) => module.core.trace(
            Event::PeerFault,
            Some(id),
            STATUS_NOINTERFACE,
            Some(format_args!("{why}; binding unused")),
        ),
    }
    // SAFETY: `binding` (from `Box::into_raw`, so non-null) stays valid
    // until cleanup, which unlinks it first.
    unsafe { place.link(NonNull::new_unchecked(binding)) };
    module.counters().attached.fetch_add(1, Relaxed);
    module.core.trace(
        Event::AttachAccepted,
        Some(id),
        status,
        Some(format_args!("nmr-handle={handle:p} version={version}")),
    );
    status
}

/// `ClientCleanupBindingContext` (<= DISPATCH): unlinks and frees.
///
/// # Safety
///
/// Called by the NMR once, after both sides completed detaching.
unsafe extern "system" fn cleanup_binding<N: Nmr>(context: *mut c_void) {
    let Some(binding) = NonNull::new(context.cast::<ProviderBinding<N>>()) else {
        return;
    };
    // SAFETY: live until `destroy` below; the module outlives its bindings.
    let module = unsafe { &*binding.as_ref().data.module };
    module.bindings.remove(binding);
    module.counters().cleaned_up.fetch_add(1, Relaxed);
    // SAFETY: both sides completed, and it is unlinked: nothing refers to it.
    unsafe { ProviderBinding::destroy(binding) };
}

/// `notify`, the client's dispatch function (<= DISPATCH): counts the event.
///
/// # Safety
///
/// Called by a provider with the client binding context it was given.
unsafe extern "system" fn notify<N: Nmr>(context: *mut c_void, event: u32, value: u64) {
    let Some(binding) = NonNull::new(context.cast::<ProviderBinding<N>>()) else {
        return;
    };
    // SAFETY: the provider may call until both sides completed detaching, and
    // the binding is freed only at cleanup, after that.
    let binding = unsafe { binding.as_ref() };
    // SAFETY: the module outlives its bindings.
    let module = unsafe { &*binding.data.module };
    module.core.nmr().incoming_call(binding.handle());
    module.counters().notifications.fetch_add(1, Relaxed);
    let _ = (event, value);
    if module.config.notify_delay_us != 0 {
        module.core.nmr().delay(module.config.notify_delay_us);
    }
}

use alloc::boxed::Box;
