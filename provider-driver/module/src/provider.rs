//! The NPI provider module, generic over the NMR it runs on.
//!
//! It serves `get_info` and `checksum` to every client of the checksum NPI
//! whose registration, versions and dispatch table fit (the `nmr` library
//! checks them), and its notifier ([`Provider::notify_round`]) pushes its
//! call count to every attached client through `notify`.

use core::sync::atomic::Ordering::Relaxed;

use nmr::{AsProvider, Callee, Decline, Identity, Offer};
use nmr_checksum_npi::{
    ChecksumNpi, ClientCalls, EVENT_CALL_COUNT, FEATURE_CHECKSUM, ProviderDispatch, Serve,
    VersionRange,
};
use nmr_common::counters::PerProcessorCounters;
use nmr_common::ffi::{GUID, NTSTATUS, STATUS_INSUFFICIENT_RESOURCES};
use nmr_common::module::Unload;
use nmr_common::nmr::Nmr;
use nmr_common::npi::internet_checksum;

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

/// The provider module: its configuration and call counters. The `nmr`
/// library owns its bindings.
pub struct ProviderModule<N: Nmr> {
    nmr: N,
    config: ProviderConfig,
    // One set per processor: the call path bumps only its own line.
    stats: PerProcessorCounters<ProviderStats>,
}

impl<N: Nmr> nmr::ProviderModule for ProviderModule<N> {
    type Nmr = N;
    type Npi = ChecksumNpi;
    type Binding = ();

    fn dispatch() -> ProviderDispatch {
        nmr_checksum_npi::provider_table::<Self>()
    }

    fn attach(&self, _offer: &Offer) -> Result<(), Decline> {
        // Every client the library let through is welcome.
        Ok(())
    }
}

impl<N: Nmr> Serve for ProviderModule<N> {
    fn features(callee: &Callee<'_, AsProvider<Self>>) -> u32 {
        callee.module().served();
        FEATURE_CHECKSUM
    }

    fn checksum(callee: &Callee<'_, AsProvider<Self>>, data: &[u8]) -> Result<u16, NTSTATUS> {
        let module = callee.module();
        if module.config.latency_us != 0 {
            module.nmr.delay(module.config.latency_us);
        }
        let sum = internet_checksum(data);
        module.served();
        Ok(sum)
    }
}

/// The provider's side of one binding, as the library allocates it (for size
/// measurements).
pub type ClientBinding<N> = nmr::BindingContext<AsProvider<ProviderModule<N>>>;

/// A loaded provider: registered with the NMR until dropped or unloaded.
pub struct Provider<N: Nmr>(nmr::Provider<ProviderModule<N>>);

impl<N: Nmr> ProviderModule<N> {
    /// Builds the module, then registers it: clients already registered are
    /// attached before this returns (R2).
    pub fn load(nmr: N, config: ProviderConfig) -> Result<Provider<N>, NTSTATUS> {
        let stats = PerProcessorCounters::try_new(nmr.processor_count())
            .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        let identity = Identity {
            name: config.name,
            module_id: config.module_id,
            versions: config.versions,
        };
        let module = ProviderModule {
            nmr: nmr.clone(),
            config,
            stats,
        };
        nmr::Provider::register(nmr, identity, module).map(Provider)
    }

    /// The counters of the processor this runs on.
    #[inline(always)]
    fn counters(&self) -> &ProviderStats {
        self.stats.on(self.nmr.current_processor())
    }

    /// Counts one call served.
    #[inline(always)]
    fn served(&self) {
        self.counters().served.fetch_add(1, Relaxed);
    }
}

impl<N: Nmr> Provider<N> {
    /// The module's name.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// One round of the notifier: `notify(EVENT_CALL_COUNT, served)` to every
    /// active client. Returns how many clients were notified.
    pub fn notify_round(&self) -> u64 {
        let counters = self.0.counters();
        // The value sent: this processor's count (see `EVENT_CALL_COUNT`).
        let served = counters.served.load(Relaxed);
        let mut notified = 0;
        self.0.for_each_peer(|client| {
            client.notify(EVENT_CALL_COUNT, served);
            notified += 1;
        });
        if notified != 0 {
            counters.notifications.fetch_add(notified, Relaxed);
        }
        notified
    }

    /// Bindings currently linked (attached and not yet cleaned up).
    pub fn binding_count(&self) -> usize {
        self.0.binding_count()
    }

    /// A snapshot of the counters: the module's, and the library's binding
    /// lifecycle counts.
    pub fn counts(&self) -> ProviderCounts {
        let life = self.0.life();
        ProviderCounts {
            offered: life.offered,
            attached: life.attached,
            declined: life.declined,
            cleaned_up: life.cleaned_up,
            refused: life.refused,
            ..self.0.stats.snapshot()
        }
    }
}

impl<N: Nmr> Unload for Provider<N> {
    fn unload(&self) -> NTSTATUS {
        self.0.unload()
    }
}
