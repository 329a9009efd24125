//! The model's records and their transitions: registrations, bindings (with
//! each side's detach state), handles, the log and the counters, all guarded
//! by the one model mutex (`core::Inner::state`). Nothing here calls a module.
//!
//! Each binding goes `Attaching -> Attached -> Detaching -> CleaningUp ->
//! (gone)`, or from `Attaching` straight to gone when it is declined. In
//! `Detaching` each side is tracked by a [`SideState`]: the side is done when
//! its detach callback returned SUCCESS, or returned PENDING and its
//! completion arrived (in either order).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::c_void;
use std::ptr;
use std::sync::Arc;

use nmr_common::ffi::*;

use crate::config::DetachOrder;
use crate::log::{LogEntry, NmrEvent, Side};
use crate::violation::Violation;

/// Handles are `HANDLE_BASE + n * HANDLE_STEP`, never reused within a model:
/// distinct, non-null, and any value in that range that is no longer live is
/// known to be stale.
pub(crate) const HANDLE_BASE: usize = 0x1_0000;
pub(crate) const HANDLE_STEP: usize = 0x10;

/// Counters of what the model did. `Clone`, so tests can compare snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Successful `NmrRegister*` calls.
    pub registrations: u64,
    /// Accepted `NmrDeregister*` calls.
    pub deregistrations: u64,
    /// `ClientAttachProvider` calls.
    pub attach_offers: u64,
    /// Successful `NmrClientAttachProvider` calls (provider accepted).
    pub attaches: u64,
    /// Offers that did not become a binding (either side declined, or the
    /// client broke R3).
    pub attach_declines: u64,
    /// Bindings made (both sides attached).
    pub bindings_made: u64,
    /// `ClientDetachProvider` returned SUCCESS.
    pub client_detach_success: u64,
    /// `ClientDetachProvider` returned PENDING.
    pub client_detach_pending: u64,
    /// `ProviderDetachClient` returned SUCCESS.
    pub provider_detach_success: u64,
    /// `ProviderDetachClient` returned PENDING.
    pub provider_detach_pending: u64,
    /// Accepted `NmrClientDetachProviderComplete` calls.
    pub client_completes: u64,
    /// Accepted `NmrProviderDetachClientComplete` calls.
    pub provider_completes: u64,
    /// `ClientCleanupBindingContext` calls.
    pub client_cleanups: u64,
    /// `ProviderCleanupBindingContext` calls.
    pub provider_cleanups: u64,
    /// Bindings fully cleaned up.
    pub bindings_cleaned_up: u64,
    /// `NmrWaitFor*DeregisterComplete` calls that returned SUCCESS.
    pub waits: u64,
    /// `Nmr::incoming_call` reports.
    pub incoming_calls: u64,
    /// Violations recorded.
    pub violations: u64,
}

impl Stats {
    /// Adds `other` (another model instance's counters) to `self`, counter
    /// by counter: the totals of a run over many instances.
    pub fn add(&mut self, other: &Stats) {
        self.registrations += other.registrations;
        self.deregistrations += other.deregistrations;
        self.attach_offers += other.attach_offers;
        self.attaches += other.attaches;
        self.attach_declines += other.attach_declines;
        self.bindings_made += other.bindings_made;
        self.client_detach_success += other.client_detach_success;
        self.client_detach_pending += other.client_detach_pending;
        self.provider_detach_success += other.provider_detach_success;
        self.provider_detach_pending += other.provider_detach_pending;
        self.client_completes += other.client_completes;
        self.provider_completes += other.provider_completes;
        self.client_cleanups += other.client_cleanups;
        self.provider_cleanups += other.provider_cleanups;
        self.bindings_cleaned_up += other.bindings_cleaned_up;
        self.waits += other.waits;
        self.incoming_calls += other.incoming_calls;
        self.violations += other.violations;
    }

    /// The detach rows of a run's summary table: each side's SUCCESS and
    /// PENDING answers, its completions and its cleanups.
    pub fn detach_rows(&self) -> [(&'static str, String); 4] {
        [
            (
                "client detach SUCCESS / PENDING",
                format!(
                    "{} / {}",
                    self.client_detach_success, self.client_detach_pending
                ),
            ),
            (
                "provider detach SUCCESS / PENDING",
                format!(
                    "{} / {}",
                    self.provider_detach_success, self.provider_detach_pending
                ),
            ),
            (
                "completions client / provider",
                format!("{} / {}", self.client_completes, self.provider_completes),
            ),
            (
                "cleanups client / provider",
                format!("{} / {}", self.client_cleanups, self.provider_cleanups),
            ),
        ]
    }

    /// Where the detach books of a finished run (every module unloaded) do
    /// not balance: every PENDING completed exactly once, every binding
    /// detached once per side and cleaned up once per side. The client side
    /// counts the bindings made; the provider side every attach it accepted,
    /// which also counts those of a client that failed after
    /// `NmrClientAttachProvider` succeeded (R3): the NMR detaches and cleans
    /// up their provider side alone. Empty when they balance.
    pub fn detach_imbalances(&self) -> Vec<String> {
        let (client, provider) = (self.bindings_made, self.attaches);
        let mut problems = Vec::new();
        if self.client_completes != self.client_detach_pending
            || self.provider_completes != self.provider_detach_pending
        {
            problems.push("a PENDING detach was not completed exactly once".into());
        }
        if self.client_cleanups != client || self.provider_cleanups != provider {
            problems.push(format!(
                "cleanups ({} client, {} provider) do not match bindings made ({client} client \
                 side, {provider} provider side)",
                self.client_cleanups, self.provider_cleanups
            ));
        }
        if self.client_detach_success + self.client_detach_pending != client
            || self.provider_detach_success + self.provider_detach_pending != provider
        {
            problems.push("a binding was not detached exactly once per side".into());
        }
        problems
    }
}

/// A live binding, as [`crate::Sim::bindings`] describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingInfo {
    /// The handle given to the client.
    pub client_handle: usize,
    /// The handle given to the provider.
    pub provider_handle: usize,
    /// The client module.
    pub client: String,
    /// The provider module.
    pub provider: String,
    /// `attaching`, `attached`, `detaching` or `cleaning-up`.
    pub phase: &'static str,
}

pub(crate) use crate::abi::{CleanupFn, DetachFn};

/// A raw pointer the model stores and hands back, never dereferences.
pub(crate) struct Raw<T>(pub(crate) *mut T);
impl<T> Clone for Raw<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Raw<T> {}
impl<T> Raw<T> {
    pub(crate) fn null() -> Self {
        Raw(ptr::null_mut())
    }
}
// SAFETY: the model only stores these pointers and passes them back to the
// module's callbacks, which the contract lets run on any thread.
unsafe impl<T> Send for Raw<T> {}

#[derive(Clone, Copy)]
pub(crate) enum AttachFn {
    Client(crate::abi::ClientAttach),
    Provider(crate::abi::ProviderAttach),
}

pub(crate) struct Registration {
    pub(crate) side: Side,
    pub(crate) name: Arc<str>,
    pub(crate) npi: GUID,
    pub(crate) context: Raw<c_void>,
    pub(crate) instance: Raw<NPI_REGISTRATION_INSTANCE>,
    pub(crate) attach: AttachFn,
    pub(crate) detach: DetachFn,
    pub(crate) cleanup: Option<CleanupFn>,
    pub(crate) deregistering: bool,
    pub(crate) waiting: bool,
    /// Bindings offered, attached or detaching, not yet gone.
    pub(crate) bindings: BTreeSet<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Attaching,
    Attached,
    Detaching,
    CleaningUp,
}

impl Phase {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Attaching => "attaching",
            Phase::Attached => "attached",
            Phase::Detaching => "detaching",
            Phase::CleaningUp => "cleaning-up",
        }
    }
}

/// One side of a detaching binding.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SideState {
    pub(crate) called: bool,
    pub(crate) returned: Option<NTSTATUS>,
    pub(crate) completed: bool,
}

impl SideState {
    /// Returned SUCCESS (or anything but PENDING, treated as SUCCESS), or
    /// returned PENDING and completed.
    pub(crate) fn done(&self) -> bool {
        match self.returned {
            Some(STATUS_PENDING) => self.completed,
            Some(_) => true,
            None => false,
        }
    }
}

pub(crate) struct End {
    pub(crate) handle: usize,
    pub(crate) reg: usize,
    pub(crate) name: Arc<str>,
    pub(crate) context: Raw<c_void>,
    pub(crate) dispatch: Raw<c_void>,
    pub(crate) detach: DetachFn,
    pub(crate) cleanup: Option<CleanupFn>,
    pub(crate) state: SideState,
}

pub(crate) struct BindingRec {
    pub(crate) phase: Phase,
    /// `NmrClientAttachProvider` was called for it.
    pub(crate) attach_called: bool,
    /// What `ProviderAttachClient` returned.
    pub(crate) provider_status: Option<NTSTATUS>,
    pub(crate) client: End,
    pub(crate) provider: End,
}

impl BindingRec {
    pub(crate) fn end(&self, side: Side) -> &End {
        match side {
            Side::Client => &self.client,
            Side::Provider => &self.provider,
        }
    }
    pub(crate) fn end_mut(&mut self, side: Side) -> &mut End {
        match side {
            Side::Client => &mut self.client,
            Side::Provider => &mut self.provider,
        }
    }
}

pub(crate) enum Resolved {
    Registration(Side),
    Binding(usize, Side),
    Stale,
    Unknown,
}

/// One cleanup call: side, callback (maybe null), context, module, handle.
pub(crate) type CleanupCall = (Side, Option<CleanupFn>, Raw<c_void>, Arc<str>, usize);

/// What the last "done" transition hands to [`Sim::run_cleanup`].
pub(crate) struct CleanupJob {
    pub(crate) id: usize,
    pub(crate) calls: [CleanupCall; 2],
}

/// SplitMix64: a tiny, well-known seeded generator for [`DetachOrder::Random`].
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

pub(crate) struct State {
    pub(crate) next_handle: usize,
    pub(crate) regs: BTreeMap<usize, Registration>,
    /// By id: the client-side handle.
    pub(crate) bindings: HashMap<usize, BindingRec>,
    /// Both side handles of every live binding -> (id, side).
    pub(crate) side_handles: HashMap<usize, (usize, Side)>,
    pub(crate) log: Vec<LogEntry>,
    pub(crate) violations: Vec<Violation>,
    pub(crate) stats: Stats,
    pub(crate) names: HashMap<GUID, &'static str>,
    pub(crate) rng: Rng,
    pub(crate) echo: bool,
    /// Threads blocked in a wait.
    pub(crate) blocked_waiters: usize,
    /// [`Policy::Panic`]: the first violation not yet raised.
    pub(crate) pending_panic: Option<String>,
}

impl State {
    pub(crate) fn alloc_handle(&mut self) -> usize {
        let h = self.next_handle;
        self.next_handle += HANDLE_STEP;
        h
    }

    pub(crate) fn resolve(&self, handle: usize) -> Resolved {
        if let Some(reg) = self.regs.get(&handle) {
            return Resolved::Registration(reg.side);
        }
        if let Some(&(id, side)) = self.side_handles.get(&handle) {
            return Resolved::Binding(id, side);
        }
        if handle >= HANDLE_BASE
            && handle < self.next_handle
            && (handle - HANDLE_BASE).is_multiple_of(HANDLE_STEP)
        {
            Resolved::Stale
        } else {
            Resolved::Unknown
        }
    }

    pub(crate) fn log(
        &mut self,
        event: NmrEvent,
        module: &str,
        binding: Option<usize>,
        status: NTSTATUS,
    ) {
        let entry = LogEntry::Nmr {
            event,
            module: module.to_owned(),
            binding,
            status,
        };
        if self.echo {
            eprintln!("{entry}");
        }
        self.log.push(entry);
    }

    /// Removes a binding that is gone (declined, skipped or cleaned up).
    pub(crate) fn remove_binding(&mut self, id: usize) -> Option<BindingRec> {
        let b = self.bindings.remove(&id)?;
        for end in [&b.client, &b.provider] {
            self.side_handles.remove(&end.handle);
            if let Some(reg) = self.regs.get_mut(&end.reg) {
                reg.bindings.remove(&id);
            }
        }
        Some(b)
    }

    /// If both sides of a detaching binding are done, moves it to
    /// `CleaningUp` and returns what the cleanup needs.
    pub(crate) fn finish_if_done(&mut self, id: usize) -> Option<CleanupJob> {
        let b = self.bindings.get_mut(&id)?;
        if b.phase != Phase::Detaching || !b.client.state.done() || !b.provider.state.done() {
            return None;
        }
        b.phase = Phase::CleaningUp;
        let call = |side: Side, e: &End| (side, e.cleanup, e.context, e.name.clone(), e.handle);
        Some(CleanupJob {
            id,
            calls: [
                call(Side::Client, &b.client),
                call(Side::Provider, &b.provider),
            ],
        })
    }

    /// Starts detaching an attached binding; returns the side to call first.
    pub(crate) fn begin_detach(&mut self, id: usize, order: DetachOrder) -> Side {
        if let Some(b) = self.bindings.get_mut(&id) {
            b.phase = Phase::Detaching;
        }
        match order {
            DetachOrder::ClientFirst => Side::Client,
            DetachOrder::ProviderFirst => Side::Provider,
            DetachOrder::Random => {
                if self.rng.below(2) == 0 {
                    Side::Client
                } else {
                    Side::Provider
                }
            }
        }
    }
}
