//! The NPI client module, generic over the NMR it runs on.
//!
//! It attaches to every provider of the checksum NPI whose registration,
//! versions and dispatch table fit (the `nmr` library checks them), and its
//! worker ([`Client::call_round`]) calls `checksum` through every active
//! binding and verifies each answer. Providers call back with `notify`.

use core::sync::atomic::Ordering::Relaxed;

use nmr::{AsClient, Callee, Decline, Identity, Offer};
use nmr_checksum_npi::{ChecksumNpi, ClientDispatch, Notify, ProviderCalls, VersionRange};
use nmr_common::counters::PerProcessorCounters;
use nmr_common::ffi::{GUID, NTSTATUS, STATUS_INSUFFICIENT_RESOURCES, STATUS_SUCCESS};
use nmr_common::module::Unload;
use nmr_common::nmr::Nmr;
use nmr_common::npi::internet_checksum;
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
        /// Providers declined (registration, versions, dispatch) or failed attaches.
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

/// The client module: its configuration and call counters. The `nmr`
/// library owns its bindings.
pub struct ClientModule<N: Nmr> {
    nmr: N,
    config: ClientConfig,
    // One set per processor: the call path bumps only its own line. The
    // binding lifecycle counts are the library's.
    stats: PerProcessorCounters<ClientStats>,
}

/// The client's side of one binding, as the library allocates it (for size
/// measurements).
pub type ProviderBinding<N> = nmr::BindingContext<AsClient<ClientModule<N>>>;

impl<N: Nmr> nmr::ClientModule for ClientModule<N> {
    type Nmr = N;
    type Npi = ChecksumNpi;
    type Binding = ();

    fn dispatch() -> ClientDispatch {
        nmr_checksum_npi::client_table::<Self>()
    }

    fn attach(&self, _offer: &Offer) -> Result<(), Decline> {
        // Every provider the library let through is welcome.
        Ok(())
    }
}

impl<N: Nmr> Notify for ClientModule<N> {
    fn notify(callee: &Callee<'_, AsClient<Self>>, _event: u32, _value: u64) {
        let module = callee.module();
        module.counters().notifications.fetch_add(1, Relaxed);
        if module.config.notify_delay_us != 0 {
            module.nmr.delay(module.config.notify_delay_us);
        }
    }
}

/// A loaded client: registered with the NMR until dropped or unloaded.
pub struct Client<N: Nmr>(nmr::Client<ClientModule<N>>);

impl<N: Nmr> ClientModule<N> {
    /// Builds the module, then registers it: providers already registered
    /// are attached before this returns (R2).
    pub fn load(nmr: N, config: ClientConfig) -> Result<Client<N>, NTSTATUS> {
        let stats = PerProcessorCounters::try_new(nmr.processor_count())
            .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        let identity = Identity {
            name: config.name,
            module_id: config.module_id,
            versions: config.versions,
        };
        let module = ClientModule {
            nmr: nmr.clone(),
            config,
            stats,
        };
        nmr::Client::register(nmr, identity, module).map(Client)
    }

    /// The counters of the processor this runs on.
    #[inline(always)]
    fn counters(&self) -> &ClientStats {
        self.stats.on(self.nmr.current_processor())
    }
}

impl<N: Nmr> Client<N> {
    /// The module's name.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// One round of the worker: `checksum(payload)` through every active
    /// binding, each answer checked against our own computation. Returns how
    /// many calls were verified.
    pub fn call_round(&self, payload: &[u8]) -> u64 {
        let expected = internet_checksum(payload);
        // This processor's counters, chosen once a round: a thread that
        // migrates mid-round shares a line for a while, and loses no count.
        let counters = self.0.counters();
        let mut verified = 0;
        self.0.for_each_peer(|provider| {
            let answer = provider.checksum(payload);
            counters.calls.fetch_add(1, Relaxed);
            if answer == Ok(expected) {
                verified += 1;
            } else {
                counters.mismatched.fetch_add(1, Relaxed);
                let (status, got) = match answer {
                    Ok(got) => (STATUS_SUCCESS, got),
                    Err(status) => (status, 0),
                };
                self.0.nmr().trace(&nmr_common::trace::Record {
                    module: self.name(),
                    binding: Some(provider.id()),
                    event: Event::PeerFault,
                    status,
                    detail: Some(format_args!(
                        "checksum answered {got:#06x}, expected {expected:#06x}"
                    )),
                });
            }
        });
        if verified != 0 {
            counters.verified.fetch_add(verified, Relaxed);
        }
        verified
    }

    /// Bindings currently linked (attached and not yet cleaned up).
    pub fn binding_count(&self) -> usize {
        self.0.binding_count()
    }

    /// A snapshot of the counters: the module's, and the library's binding
    /// lifecycle counts.
    pub fn counts(&self) -> ClientCounts {
        let life = self.0.life();
        ClientCounts {
            offered: life.offered,
            attached: life.attached,
            declined: life.declined,
            cleaned_up: life.cleaned_up,
            refused: life.refused,
            ..self.0.stats.snapshot()
        }
    }
}

impl<N: Nmr> Unload for Client<N> {
    fn unload(&self) -> NTSTATUS {
        self.0.unload()
    }
}
