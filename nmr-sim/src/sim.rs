//! The model itself: registrations, bindings, their state machine, delivery.
//!
//! One mutex guards the whole model state (`State`); it is never held while a
//! module callback runs. Each binding goes
//! `Attaching -> Attached -> Detaching -> CleaningUp -> (gone)`, or from
//! `Attaching` straight to gone when it is declined. In `Detaching` each side
//! is tracked by a [`SideState`]: the side is done when its detach callback
//! returned SUCCESS, or returned PENDING and its completion arrived (in either
//! order). The thread that makes the last "done" transition runs both cleanups,
//! outside the lock, at DISPATCH_LEVEL, then removes the binding and wakes the
//! waiters.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::c_void;
use std::fmt::Write as _;
use std::ptr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};

use nmr_common::ffi::*;
use nmr_common::nmr::Nmr;
use nmr_common::trace::Record;

use crate::config::{Config, Delivery, DetachOrder, Policy};
use crate::irql::{self, Irql};
use crate::lock::SimLock;
use crate::log::{LogEntry, NmrEvent, Side};
use crate::violation::{Callback, Violation};

/// Handles are `HANDLE_BASE + n * HANDLE_STEP`, never reused within a model:
/// distinct, non-null, and any value in that range that is no longer live is
/// known to be stale.
const HANDLE_BASE: usize = 0x1_0000;
const HANDLE_STEP: usize = 0x10;

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

/// A live binding, as [`Sim::bindings`] describes it.
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

type DetachFn = unsafe extern "system" fn(*mut c_void) -> NTSTATUS;
type CleanupFn = unsafe extern "system" fn(*mut c_void);

/// A raw pointer the model stores and hands back, never dereferences.
struct Raw<T>(*mut T);
impl<T> Clone for Raw<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Raw<T> {}
impl<T> Raw<T> {
    fn null() -> Self {
        Raw(ptr::null_mut())
    }
}
// SAFETY: the model only stores these pointers and passes them back to the
// module's callbacks, which the contract lets run on any thread.
unsafe impl<T> Send for Raw<T> {}

#[derive(Clone, Copy)]
enum AttachFn {
    Client(NPI_CLIENT_ATTACH_PROVIDER_FN),
    Provider(NPI_PROVIDER_ATTACH_CLIENT_FN),
}

struct Registration {
    side: Side,
    name: Arc<str>,
    npi: GUID,
    context: Raw<c_void>,
    instance: Raw<NPI_REGISTRATION_INSTANCE>,
    attach: AttachFn,
    detach: DetachFn,
    cleanup: Option<CleanupFn>,
    deregistering: bool,
    waiting: bool,
    /// Bindings offered, attached or detaching, not yet gone.
    bindings: BTreeSet<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Attaching,
    Attached,
    Detaching,
    CleaningUp,
}

impl Phase {
    fn name(self) -> &'static str {
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
struct SideState {
    called: bool,
    returned: Option<NTSTATUS>,
    completed: bool,
}

impl SideState {
    /// Returned SUCCESS (or anything but PENDING, treated as SUCCESS), or
    /// returned PENDING and completed.
    fn done(&self) -> bool {
        match self.returned {
            Some(STATUS_PENDING) => self.completed,
            Some(_) => true,
            None => false,
        }
    }
}

struct End {
    handle: usize,
    reg: usize,
    name: Arc<str>,
    context: Raw<c_void>,
    dispatch: Raw<c_void>,
    detach: DetachFn,
    cleanup: Option<CleanupFn>,
    state: SideState,
}

struct BindingRec {
    phase: Phase,
    /// `NmrClientAttachProvider` was called for it.
    attach_called: bool,
    /// What `ProviderAttachClient` returned.
    provider_status: Option<NTSTATUS>,
    client: End,
    provider: End,
}

impl BindingRec {
    fn end(&self, side: Side) -> &End {
        match side {
            Side::Client => &self.client,
            Side::Provider => &self.provider,
        }
    }
    fn end_mut(&mut self, side: Side) -> &mut End {
        match side {
            Side::Client => &mut self.client,
            Side::Provider => &mut self.provider,
        }
    }
}

enum Resolved {
    Registration(Side),
    Binding(usize, Side),
    Stale,
    Unknown,
}

/// One cleanup call: side, callback (maybe null), context, module, handle.
type CleanupCall = (Side, Option<CleanupFn>, Raw<c_void>, Arc<str>, usize);

/// What the last "done" transition hands to [`Sim::run_cleanup`].
struct CleanupJob {
    id: usize,
    calls: [CleanupCall; 2],
}

/// SplitMix64: a tiny, well-known seeded generator for [`DetachOrder::Random`].
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct State {
    next_handle: usize,
    regs: BTreeMap<usize, Registration>,
    /// By id: the client-side handle.
    bindings: HashMap<usize, BindingRec>,
    /// Both side handles of every live binding -> (id, side).
    side_handles: HashMap<usize, (usize, Side)>,
    log: Vec<LogEntry>,
    violations: Vec<Violation>,
    stats: Stats,
    names: HashMap<GUID, &'static str>,
    rng: Rng,
    echo: bool,
    /// Threads blocked in a wait.
    blocked_waiters: usize,
    /// [`Policy::Panic`]: the first violation not yet raised.
    pending_panic: Option<String>,
}

impl State {
    fn alloc_handle(&mut self) -> usize {
        let h = self.next_handle;
        self.next_handle += HANDLE_STEP;
        h
    }

    fn resolve(&self, handle: usize) -> Resolved {
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

    fn log(&mut self, event: NmrEvent, module: &str, binding: Option<usize>, status: NTSTATUS) {
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
    fn remove_binding(&mut self, id: usize) -> Option<BindingRec> {
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
    fn finish_if_done(&mut self, id: usize) -> Option<CleanupJob> {
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
    fn begin_detach(&mut self, id: usize, order: DetachOrder) -> Side {
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

/// The worker's queue of detach deliveries.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    cond: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<(usize, Side)>,
    busy: bool,
    shutdown: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Module code never runs under the model's locks, so a poisoned lock can
    // only come from a panic of the model's own bookkeeping; keep going.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Inner {
    config: Config,
    state: Mutex<State>,
    /// Signalled whenever a binding or a registration goes away, and when a
    /// waiter blocks.
    cond: Condvar,
    queue: Option<Arc<Queue>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let pending = lock(&self.state).pending_panic.take();
        if let Some(msg) = pending {
            // Never raised (no NMR call, quiesce or check came after it).
            eprintln!(
                "nmr-sim: contract violation never raised before the model was dropped: {msg}"
            );
        }
        if let Some(q) = &self.queue {
            lock(&q.state).shutdown = true;
            q.cond.notify_all();
        }
    }
}

/// A model callback on a thread's stack.
struct Frame {
    sim: Arc<Inner>,
    binding: usize,
    callback: Callback,
    module: Arc<str>,
}

thread_local! {
    /// The module callbacks the model is running on this thread, innermost last.
    static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
    /// How deep this thread is in NMR entry points.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// This is a model worker thread.
    static WORKER: Cell<bool> = const { Cell::new(false) };
    /// The last model this thread called (for `assert_can_block`).
    static LAST_SIM: RefCell<Weak<Inner>> = const { RefCell::new(Weak::new()) };
}

/// The module whose callback is innermost on this thread, for `sim`.
fn current_module(sim: &Arc<Inner>) -> Option<String> {
    FRAMES.with(|f| {
        f.borrow()
            .iter()
            .rev()
            .find(|fr| Arc::ptr_eq(&fr.sim, sim))
            .map(|fr| fr.module.to_string())
    })
}

/// Whether a callback of `binding` (one of `kinds`, any if empty) of `sim` is
/// on this thread's stack.
fn on_stack(sim: &Arc<Inner>, binding: usize, kinds: &[Callback]) -> bool {
    FRAMES.with(|f| {
        f.borrow().iter().any(|fr| {
            Arc::ptr_eq(&fr.sim, sim)
                && fr.binding == binding
                && (kinds.is_empty() || kinds.contains(&fr.callback))
        })
    })
}

/// `irql::assert_can_block` at DISPATCH: report to the thread's model.
pub(crate) fn blocking_at_dispatch(what: &'static str) {
    let sim = FRAMES
        .with(|f| f.borrow().last().map(|fr| fr.sim.clone()))
        .or_else(|| LAST_SIM.with(|l| l.borrow().upgrade()));
    match sim {
        Some(inner) => {
            let module = current_module(&inner);
            Sim { inner }.report(Violation::BlockingAtDispatch { what, module });
        }
        None => panic!("{}", Violation::BlockingAtDispatch { what, module: None }),
    }
}

/// A handle to one model instance: cheap to clone, `Send + Sync + 'static`.
/// The model's worker thread (with [`Delivery::Worker`]) ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Marks an NMR entry point on this thread; raises a deferred
/// [`Policy::Panic`] violation when the outermost one ends.
struct Entry<'a>(&'a Sim);

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let depth = DEPTH.with(|d| {
            d.set(d.get() - 1);
            d.get()
        });
        if depth == 0 && !WORKER.with(Cell::get) && !std::thread::panicking() {
            self.0.raise_pending();
        }
    }
}

impl Sim {
    /// A new model with `config`. With [`Delivery::Worker`] or
    /// [`Delivery::Parallel`] it starts its
    /// delivery thread.
    pub fn new(config: Config) -> Sim {
        let queue = (config.delivery != Delivery::Inline).then(|| Arc::new(Queue::default()));
        let state = State {
            next_handle: HANDLE_BASE,
            regs: BTreeMap::new(),
            bindings: HashMap::new(),
            side_handles: HashMap::new(),
            log: Vec::new(),
            violations: Vec::new(),
            stats: Stats::default(),
            names: HashMap::new(),
            rng: Rng(config.seed),
            echo: config.echo,
            blocked_waiters: 0,
            pending_panic: None,
        };
        let inner = Arc::new(Inner {
            config,
            state: Mutex::new(state),
            cond: Condvar::new(),
            queue: queue.clone(),
        });
        if let Some(queue) = queue {
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("nmr-sim-worker".into())
                .spawn(move || worker(queue, weak))
                .expect("spawn the nmr-sim worker thread");
        }
        Sim { inner }
    }

    /// The configuration this model runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// Every violation recorded so far, in order.
    pub fn violations(&self) -> Vec<Violation> {
        self.state().violations.clone()
    }

    /// The event log so far, in order.
    pub fn events(&self) -> Vec<LogEntry> {
        self.state().log.clone()
    }

    /// Returns the event log so far and empties it (for long runs).
    pub fn take_events(&self) -> Vec<LogEntry> {
        std::mem::take(&mut self.state().log)
    }

    /// The model's own events so far, with their binding (or registration)
    /// handle: a compact view of [`Sim::events`] for assertions.
    pub fn nmr_events(&self) -> Vec<(NmrEvent, Option<usize>)> {
        self.state()
            .log
            .iter()
            .filter_map(|e| match e {
                LogEntry::Nmr { event, binding, .. } => Some((*event, *binding)),
                LogEntry::Module { .. } => None,
            })
            .collect()
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.state().stats.clone()
    }

    /// Bindings attached and not yet cleaned up.
    pub fn live_bindings(&self) -> usize {
        self.state()
            .bindings
            .values()
            .filter(|b| b.phase != Phase::Attaching)
            .count()
    }

    /// Registrations whose wait has not returned yet.
    pub fn live_registrations(&self) -> usize {
        self.state().regs.len()
    }

    /// Every binding not yet gone (attaching ones included), by client handle.
    pub fn bindings(&self) -> Vec<BindingInfo> {
        let st = self.state();
        let mut all: Vec<_> = st
            .bindings
            .values()
            .map(|b| BindingInfo {
                client_handle: b.client.handle,
                provider_handle: b.provider.handle,
                client: b.client.name.to_string(),
                provider: b.provider.name.to_string(),
                phase: b.phase.name(),
            })
            .collect();
        all.sort_by_key(|b| b.client_handle);
        all
    }

    /// Threads blocked in `NmrWaitFor*DeregisterComplete` now.
    pub fn blocked_waiters(&self) -> usize {
        self.state().blocked_waiters
    }

    /// Blocks until at least `n` threads are blocked in a deregistration
    /// wait: lets a test know, without sleeping, that a wait is really held.
    pub fn await_blocked_waiters(&self, n: usize) {
        let mut st = self.state();
        while st.blocked_waiters < n {
            st = self
                .inner
                .cond
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Gives the module whose `ModuleId` is the GUID `module_id` a name for
    /// the log and the violations (otherwise its GUID is used). Applies to
    /// registrations made afterwards.
    pub fn name_module(&self, module_id: GUID, name: &'static str) {
        self.state().names.insert(module_id, name);
    }

    /// With [`Delivery::Worker`]: blocks until the delivery queue is empty and
    /// the worker idle. Otherwise returns at once. Raises a deferred
    /// [`Policy::Panic`] violation.
    pub fn quiesce(&self) {
        if let Some(q) = &self.inner.queue {
            let mut qs = lock(&q.state);
            while !qs.jobs.is_empty() || qs.busy {
                qs = q.cond.wait(qs).unwrap_or_else(PoisonError::into_inner);
            }
        }
        self.check();
    }

    /// With [`Policy::Panic`]: panics now with the first violation not yet
    /// raised (one seen on the worker thread or inside a callback).
    pub fn check(&self) {
        if DEPTH.with(Cell::get) == 0 && !WORKER.with(Cell::get) {
            self.raise_pending();
        }
    }

    fn raise_pending(&self) {
        if self.inner.config.policy != Policy::Panic {
            return;
        }
        let pending = self.state().pending_panic.take();
        if let Some(msg) = pending {
            panic!("{msg}");
        }
    }

    fn enter(&self) -> Entry<'_> {
        let outer = DEPTH.with(|d| {
            d.set(d.get() + 1);
            d.get() == 1
        });
        LAST_SIM.with(|l| *l.borrow_mut() = Arc::downgrade(&self.inner));
        let entry = Entry(self);
        if outer && !WORKER.with(Cell::get) {
            self.raise_pending();
        }
        entry
    }

    /// Records a violation and applies the policy.
    /// `NmrRegister*` with a null characteristics pointer: a named violation.
    fn null_characteristics(&self, side: Side) -> NTSTATUS {
        self.report(Violation::BadCharacteristics {
            side,
            module: "?".into(),
            problem: "the characteristics pointer is null",
        });
        STATUS_INVALID_PARAMETER
    }

    fn report(&self, v: Violation) {
        self.report_from(v, false);
    }

    /// Records a violation; `hook` says it was seen in a hook the modules
    /// call from code of unknown ABI (`incoming_call` runs inside dispatch
    /// functions, typically `extern "system"`), where a panic would abort the
    /// process: its panic always waits for the next safe point.
    fn report_from(&self, v: Violation, hook: bool) {
        let raise = {
            let mut st = self.state();
            self.record(&mut st, v, hook)
        };
        if let Some(msg) = raise {
            panic!("{msg}");
        }
    }

    /// Records a violation while the caller holds the state lock, so that no
    /// thread can see what the misuse led to (a side marked done, a waiter
    /// woken) before the violation is on record. Returns the message to panic
    /// with once the lock is dropped, when the policy says to panic at once.
    fn record(&self, st: &mut State, v: Violation, hook: bool) -> Option<String> {
        let msg = v.to_string();
        let at_once = !hook && DEPTH.with(Cell::get) == 0 && !WORKER.with(Cell::get);
        let panic = self.inner.config.policy == Policy::Panic;
        let module = v.module().unwrap_or("?").to_owned();
        st.log(NmrEvent::Violation, &module, v.handle(), 0);
        st.violations.push(v);
        st.stats.violations += 1;
        if panic && !at_once && st.pending_panic.is_none() {
            st.pending_panic = Some(msg.clone());
        }
        if self.inner.config.echo {
            eprintln!("nmr: VIOLATION {msg}");
        }
        (panic && at_once).then_some(msg)
    }

    /// Calls a module callback: no model lock held, a frame on the thread's
    /// stack, at `level` (or the current level when `None`); checks that the
    /// callback gave the IRQL back.
    fn callout<R>(
        &self,
        binding: usize,
        callback: Callback,
        module: &Arc<str>,
        level: Option<Irql>,
        f: impl FnOnce() -> R,
    ) -> R {
        let before = irql::current();
        let level = level.unwrap_or(before);
        irql::set(level);
        FRAMES.with(|fr| {
            fr.borrow_mut().push(Frame {
                sim: self.inner.clone(),
                binding,
                callback,
                module: module.clone(),
            })
        });
        let result = f();
        FRAMES.with(|fr| fr.borrow_mut().pop());
        let after = irql::set(before);
        if after != level {
            self.report(Violation::IrqlNotRestored {
                callback,
                module: module.to_string(),
                binding,
            });
        }
        result
    }

    /// Reports a resolution failure for `call`; `expected` names the kind.
    fn bad_handle(&self, r: &Resolved, call: &'static str, handle: usize, expected: &'static str) {
        let v = match r {
            Resolved::Stale => Violation::StaleHandle { call, handle },
            Resolved::Unknown => Violation::UnknownHandle { call, handle },
            _ => Violation::WrongHandle {
                call,
                handle,
                expected,
            },
        };
        self.report(v);
    }

    // ---- registration -------------------------------------------------

    fn module_name(st: &State, module_id: *const NPI_MODULEID) -> String {
        if module_id.is_null() {
            return "?".into();
        }
        // SAFETY: the registering module keeps its module id valid until its
        // deregistration wait returns (R11); the model reads it only inside
        // the register call.
        let id = unsafe { *module_id };
        if let Some(g) = id.guid() {
            if let Some(name) = st.names.get(&g) {
                return (*name).to_owned();
            }
            let mut s = String::new();
            let _ = write!(
                s,
                "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-",
                g.Data1, g.Data2, g.Data3, g.Data4[0], g.Data4[1]
            );
            for b in &g.Data4[2..] {
                let _ = write!(s, "{b:02x}");
            }
            s
        } else if id.Type == MIT_IF_LUID {
            // SAFETY: `Type` says the LUID member is the one written.
            let l = unsafe { id.u.IfLuid };
            format!("luid-{:x}:{:x}", l.HighPart, l.LowPart)
        } else {
            "module-id-?".into()
        }
    }

    /// Checks the registration instance; `Err` names the problem.
    fn check_instance(inst: &NPI_REGISTRATION_INSTANCE) -> Result<(), &'static str> {
        if inst.Version != 0 {
            return Err("registration instance Version is not 0");
        }
        if usize::from(inst.Size) != size_of::<NPI_REGISTRATION_INSTANCE>() {
            return Err("registration instance Size is not sizeof(NPI_REGISTRATION_INSTANCE)");
        }
        if inst.NpiId.is_null() {
            return Err("NpiId is null");
        }
        if inst.ModuleId.is_null() {
            return Err("ModuleId is null");
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn register(
        &self,
        side: Side,
        version: u16,
        length: u16,
        expected_length: usize,
        instance: *const NPI_REGISTRATION_INSTANCE,
        attach: Option<AttachFn>,
        detach: Option<DetachFn>,
        cleanup: Option<CleanupFn>,
        context: *mut c_void,
        handle_out: *mut HANDLE,
    ) -> NTSTATUS {
        let call = match side {
            Side::Client => "NmrRegisterClient",
            Side::Provider => "NmrRegisterProvider",
        };
        if irql::current() != Irql::Passive {
            self.report(Violation::NmrCallAtDispatch {
                call,
                module: current_module(&self.inner),
            });
            return STATUS_UNSUCCESSFUL;
        }
        // SAFETY: `instance` points into the caller's characteristics, valid
        // for the call (checked non-null by the callers of this function).
        let inst = unsafe { &*instance };
        let name: Arc<str> = Self::module_name(&self.state(), inst.ModuleId).into();
        let problem = Self::check_instance(inst).err().or(if version != 0 {
            Some("Version is not 0")
        } else if usize::from(length) != expected_length {
            Some("Length is not the size of the characteristics")
        } else if attach.is_none() {
            Some("the attach callback is null")
        } else if detach.is_none() {
            Some("the detach callback is null")
        } else if handle_out.is_null() {
            Some("the handle pointer is null")
        } else {
            None
        });
        let (Some(attach), Some(detach), None) = (attach, detach, problem) else {
            self.report(Violation::BadCharacteristics {
                side,
                module: name.to_string(),
                problem: problem.unwrap_or("?"),
            });
            return STATUS_INVALID_PARAMETER;
        };
        // SAFETY: checked non-null; valid until the wait returns (R11).
        let npi = unsafe { *inst.NpiId };

        let (handle, offers) = {
            let mut st = self.state();
            let handle = st.alloc_handle();
            let peers: Vec<usize> = st
                .regs
                .iter()
                .filter(|(_, r)| r.side != side && r.npi == npi && !r.deregistering)
                .map(|(h, _)| *h)
                .collect();
            st.regs.insert(
                handle,
                Registration {
                    side,
                    name: name.clone(),
                    npi,
                    context: Raw(context),
                    instance: Raw(instance.cast_mut()),
                    attach,
                    detach,
                    cleanup,
                    deregistering: false,
                    waiting: false,
                    bindings: BTreeSet::new(),
                },
            );
            let mut offers = Vec::new();
            for peer in peers {
                let (c, p) = match side {
                    Side::Client => (handle, peer),
                    Side::Provider => (peer, handle),
                };
                let client_handle = st.alloc_handle();
                let provider_handle = st.alloc_handle();
                let end = |st: &State, reg: usize, h: usize| {
                    let r = &st.regs[&reg];
                    End {
                        handle: h,
                        reg,
                        name: r.name.clone(),
                        context: Raw::null(),
                        dispatch: Raw::null(),
                        detach: r.detach,
                        cleanup: r.cleanup,
                        state: SideState::default(),
                    }
                };
                let rec = BindingRec {
                    phase: Phase::Attaching,
                    attach_called: false,
                    provider_status: None,
                    client: end(&st, c, client_handle),
                    provider: end(&st, p, provider_handle),
                };
                let id = client_handle;
                st.bindings.insert(id, rec);
                st.side_handles.insert(client_handle, (id, Side::Client));
                st.side_handles
                    .insert(provider_handle, (id, Side::Provider));
                for reg in [c, p] {
                    if let Some(r) = st.regs.get_mut(&reg) {
                        r.bindings.insert(id);
                    }
                }
                offers.push(id);
            }
            st.stats.registrations += 1;
            (handle, offers)
        };
        // SAFETY: checked non-null; the caller gives a writable HANDLE. It is
        // written before any attach callback runs, so a module may use it there.
        unsafe { *handle_out = std::ptr::without_provenance_mut(handle) };
        for id in offers {
            self.attach(id);
        }
        self.state().log(
            NmrEvent::Register(side),
            &name,
            Some(handle),
            STATUS_SUCCESS,
        );
        STATUS_SUCCESS
    }

    /// Offers binding `id` to its client, and settles the outcome.
    fn attach(&self, id: usize) {
        let offer = {
            let mut st = self.state();
            let Some(b) = st.bindings.get(&id) else {
                return;
            };
            let (c, p) = (&st.regs[&b.client.reg], &st.regs[&b.provider.reg]);
            if c.deregistering || p.deregistering {
                // One of them began deregistering before the offer: withdraw it.
                let name = b.client.name.clone();
                st.remove_binding(id);
                st.log(NmrEvent::AttachSkipped, &name, Some(id), STATUS_SUCCESS);
                drop(st);
                self.inner.cond.notify_all();
                return;
            }
            let AttachFn::Client(f) = c.attach else {
                unreachable!("client registration with a provider attach callback")
            };
            let offer = (f, c.context, p.instance, b.client.name.clone());
            st.stats.attach_offers += 1;
            st.log(NmrEvent::AttachOffered, &offer.3, Some(id), STATUS_SUCCESS);
            offer
        };
        let (f, context, provider_instance, name) = offer;
        let status = self.callout(id, Callback::ClientAttachProvider, &name, None, || {
            // SAFETY: the client registered this callback and context and keeps
            // them valid until its wait returns; the provider's instance is
            // valid likewise, and the binding handle is the client's own.
            unsafe {
                f(
                    std::ptr::without_provenance_mut(id),
                    context.0,
                    provider_instance.0,
                )
            }
        });

        let mut violation = None;
        let mut late = None;
        let raise;
        {
            let mut st = self.state();
            let b = st
                .bindings
                .get_mut(&id)
                .expect("an attaching binding stays");
            let provider_ok = b.provider_status.is_some_and(nt_success);
            let attached = provider_ok && nt_success(status);
            if !attached && (provider_ok || nt_success(status)) {
                violation = Some(Violation::AttachStatusMismatch {
                    module: name.to_string(),
                    binding: id,
                    client_status: status,
                    provider_status: b.provider_status,
                });
            }
            if attached {
                b.phase = Phase::Attached;
                st.stats.bindings_made += 1;
                st.log(NmrEvent::Attached, &name, Some(id), status);
                let b = &st.bindings[&id];
                let deregistering =
                    st.regs[&b.client.reg].deregistering || st.regs[&b.provider.reg].deregistering;
                if deregistering {
                    // R6: a module began deregistering while this attach ran.
                    late = Some(st.begin_detach(id, self.inner.config.detach_order));
                }
            } else {
                st.remove_binding(id);
                st.stats.attach_declines += 1;
                st.log(NmrEvent::AttachDeclined, &name, Some(id), status);
            }
            raise = violation.and_then(|v| self.record(&mut st, v, false));
        }
        self.inner.cond.notify_all();
        if let Some(msg) = raise {
            panic!("{msg}");
        }
        if let Some(first) = late {
            self.deliver(vec![(id, first)]);
        }
    }

    // ---- detach -------------------------------------------------------

    fn deregister(&self, side: Side, handle: HANDLE) -> NTSTATUS {
        let call = match side {
            Side::Client => "NmrDeregisterClient",
            Side::Provider => "NmrDeregisterProvider",
        };
        let h = handle as usize;
        let jobs = {
            let mut st = self.state();
            match st.resolve(h) {
                Resolved::Registration(s) if s == side => {}
                r => {
                    drop(st);
                    let expected = match side {
                        Side::Client => "a client registration handle",
                        Side::Provider => "a provider registration handle",
                    };
                    self.bad_handle(&r, call, h, expected);
                    return STATUS_INVALID_PARAMETER;
                }
            }
            let reg = st.regs.get_mut(&h).expect("resolved");
            if reg.deregistering {
                let module = reg.name.to_string();
                drop(st);
                self.report(Violation::DoubleDeregister { module, handle: h });
                return STATUS_INVALID_PARAMETER;
            }
            reg.deregistering = true;
            let name = reg.name.clone();
            let mut ids: Vec<usize> = reg.bindings.iter().copied().collect();
            st.stats.deregistrations += 1;
            st.log(NmrEvent::Deregister(side), &name, Some(h), STATUS_PENDING);
            ids.retain(|id| st.bindings[id].phase == Phase::Attached);
            let order = self.inner.config.detach_order;
            if order == DetachOrder::Random {
                for i in (1..ids.len()).rev() {
                    let j = st.rng.below(i + 1);
                    ids.swap(i, j);
                }
            }
            ids.into_iter()
                .map(|id| (id, st.begin_detach(id, order)))
                .collect::<Vec<_>>()
        };
        self.deliver(jobs);
        STATUS_PENDING
    }

    /// Delivers the detach callbacks of bindings already moved to `Detaching`.
    fn deliver(&self, jobs: Vec<(usize, Side)>) {
        if jobs.is_empty() {
            return;
        }
        match &self.inner.queue {
            None => {
                for (id, first) in jobs {
                    self.run_detach(id, first);
                }
            }
            Some(q) => {
                lock(&q.state).jobs.extend(jobs);
                q.cond.notify_all();
            }
        }
    }

    fn run_detach(&self, id: usize, first: Side) {
        if self.inner.config.delivery == Delivery::Parallel {
            // The other side on a thread of its own while this one runs
            // `first`: the two callbacks overlap. That thread delivers too.
            std::thread::scope(|s| {
                s.spawn(|| {
                    WORKER.with(|w| w.set(true));
                    self.detach_side(id, first.other());
                });
                self.detach_side(id, first);
            });
        } else {
            self.detach_side(id, first);
            self.detach_side(id, first.other());
        }
    }

    /// Calls one side's detach callback and records its answer.
    fn detach_side(&self, id: usize, side: Side) {
        let (f, context, name) = {
            let mut st = self.state();
            let Some(b) = st.bindings.get_mut(&id) else {
                return;
            };
            if b.phase != Phase::Detaching || b.end(side).state.called {
                return;
            }
            let end = b.end_mut(side);
            end.state.called = true;
            let call = (end.detach, end.context, end.name.clone(), end.handle);
            st.log(NmrEvent::DetachCalled(side), &call.2, Some(call.3), 0);
            (call.0, call.1, call.2)
        };
        let level = self
            .inner
            .config
            .detach_at_dispatch
            .then_some(Irql::Dispatch);
        let status = self.callout(id, Callback::detach(side), &name, level, || {
            // SAFETY: the module registered this callback, and the binding
            // context it gave at attach stays valid until cleanup, which
            // cannot run before this side is done.
            unsafe { f(context.0) }
        });

        let mut violations = Vec::new();
        let mut raise = None;
        let cleanup = {
            let mut st = self.state();
            let b = st
                .bindings
                .get_mut(&id)
                .expect("a detaching side keeps its binding");
            let end = b.end_mut(side);
            end.state.returned = Some(status);
            let (handle, completed) = (end.handle, end.state.completed);
            if status != STATUS_SUCCESS && status != STATUS_PENDING {
                violations.push(Violation::BadDetachStatus {
                    side,
                    module: name.to_string(),
                    binding: handle,
                    status,
                });
            }
            if status != STATUS_PENDING && completed {
                violations.push(Violation::CompleteAfterSuccess {
                    call: complete_name(side),
                    module: name.to_string(),
                    binding: handle,
                });
            }
            let s = &mut st.stats;
            match (side, status == STATUS_PENDING) {
                (Side::Client, true) => s.client_detach_pending += 1,
                (Side::Client, false) => s.client_detach_success += 1,
                (Side::Provider, true) => s.provider_detach_pending += 1,
                (Side::Provider, false) => s.provider_detach_success += 1,
            }
            st.log(NmrEvent::DetachReturned(side), &name, Some(handle), status);
            for v in violations {
                raise = raise.or(self.record(&mut st, v, false));
            }
            st.finish_if_done(id)
        };
        if let Some(msg) = raise {
            panic!("{msg}");
        }
        if let Some(job) = cleanup {
            self.run_cleanup(job);
        }
    }

    fn complete(&self, side: Side, handle: HANDLE) {
        let call = complete_name(side);
        let h = handle as usize;
        let cleanup = {
            let mut st = self.state();
            let id = match st.resolve(h) {
                Resolved::Binding(id, s) if s == side => id,
                r => {
                    drop(st);
                    let expected = match side {
                        Side::Client => "a client binding handle",
                        Side::Provider => "a provider binding handle",
                    };
                    return self.bad_handle(&r, call, h, expected);
                }
            };
            let b = st.bindings.get_mut(&id).expect("resolved");
            let end = b.end_mut(side);
            let module = end.name.to_string();
            let v = if !end.state.called {
                Some(Violation::CompleteBeforeDetach {
                    call,
                    module,
                    binding: h,
                })
            } else if end.state.completed {
                Some(Violation::CompleteTwice {
                    call,
                    module,
                    binding: h,
                })
            } else if end.state.returned.is_some_and(|s| s != STATUS_PENDING) {
                Some(Violation::CompleteAfterSuccess {
                    call,
                    module,
                    binding: h,
                })
            } else {
                None
            };
            if let Some(v) = v {
                drop(st);
                return self.report(v);
            }
            end.state.completed = true;
            let name = end.name.clone();
            match side {
                Side::Client => st.stats.client_completes += 1,
                Side::Provider => st.stats.provider_completes += 1,
            }
            st.log(NmrEvent::Complete(side), &name, Some(h), STATUS_SUCCESS);
            st.finish_if_done(id)
        };
        if let Some(job) = cleanup {
            self.run_cleanup(job);
        }
    }

    /// Both sides are done: run the cleanups (client first), outside the
    /// lock, at DISPATCH_LEVEL; then the binding is gone.
    fn run_cleanup(&self, job: CleanupJob) {
        for (side, f, context, name, handle) in &job.calls {
            let Some(f) = *f else { continue };
            {
                let mut st = self.state();
                match side {
                    Side::Client => st.stats.client_cleanups += 1,
                    Side::Provider => st.stats.provider_cleanups += 1,
                }
                st.log(NmrEvent::Cleanup(*side), name, Some(*handle), 0);
            }
            self.callout(
                job.id,
                Callback::cleanup(*side),
                name,
                Some(Irql::Dispatch),
                || {
                    // SAFETY: both sides completed detachment; the context is
                    // the one the module gave at attach, handed back once.
                    unsafe { f(context.0) }
                },
            );
        }
        {
            let mut st = self.state();
            let name = job.calls[0].3.clone();
            st.remove_binding(job.id);
            st.stats.bindings_cleaned_up += 1;
            st.log(NmrEvent::CleanedUp, &name, Some(job.id), STATUS_SUCCESS);
        }
        self.inner.cond.notify_all();
    }

    fn wait(&self, side: Side, handle: HANDLE) -> NTSTATUS {
        let call = match side {
            Side::Client => "NmrWaitForClientDeregisterComplete",
            Side::Provider => "NmrWaitForProviderDeregisterComplete",
        };
        if irql::current() != Irql::Passive {
            self.report(Violation::NmrCallAtDispatch {
                call,
                module: current_module(&self.inner),
            });
            return STATUS_UNSUCCESSFUL;
        }
        let h = handle as usize;
        let mut st = self.state();
        match st.resolve(h) {
            Resolved::Registration(s) if s == side => {}
            r => {
                drop(st);
                let expected = match side {
                    Side::Client => "a client registration handle",
                    Side::Provider => "a provider registration handle",
                };
                self.bad_handle(&r, call, h, expected);
                return STATUS_INVALID_PARAMETER;
            }
        }
        let reg = &st.regs[&h];
        let module = reg.name.to_string();
        let deadlock = !reg.bindings.is_empty()
            && (WORKER.with(Cell::get)
                || reg
                    .bindings
                    .iter()
                    .any(|id| on_stack(&self.inner, *id, &[])));
        let v = if !reg.deregistering {
            Some(Violation::WaitNotDeregistered { module, handle: h })
        } else if reg.waiting {
            Some(Violation::WaitTwice { module, handle: h })
        } else if deadlock {
            Some(Violation::WaitWouldDeadlock { module, handle: h })
        } else {
            None
        };
        if let Some(v) = v {
            drop(st);
            self.report(v);
            return STATUS_INVALID_PARAMETER;
        }
        st.regs.get_mut(&h).expect("resolved").waiting = true;
        st.blocked_waiters += 1;
        self.inner.cond.notify_all();
        while !st.regs[&h].bindings.is_empty() {
            st = self
                .inner
                .cond
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        st.blocked_waiters -= 1;
        // Forget the registration: nothing of it is touched again.
        let reg = st.regs.remove(&h).expect("only its waiter removes it");
        st.stats.waits += 1;
        st.log(NmrEvent::WaitDone(side), &reg.name, Some(h), STATUS_SUCCESS);
        STATUS_SUCCESS
    }
}

fn complete_name(side: Side) -> &'static str {
    match side {
        Side::Client => "NmrClientDetachProviderComplete",
        Side::Provider => "NmrProviderDetachClientComplete",
    }
}

fn worker(queue: Arc<Queue>, sim: Weak<Inner>) {
    WORKER.with(|w| w.set(true));
    loop {
        let (id, first) = {
            let mut q = lock(&queue.state);
            loop {
                if q.shutdown {
                    return;
                }
                if let Some(job) = q.jobs.pop_front() {
                    q.busy = true;
                    break job;
                }
                q = queue.cond.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let Some(inner) = sim.upgrade() else { return };
        Sim { inner }.run_detach(id, first);
        let mut q = lock(&queue.state);
        q.busy = false;
        queue.cond.notify_all();
    }
}

impl Nmr for Sim {
    type Lock = SimLock;

    unsafe fn register_client(
        &self,
        characteristics: *const NPI_CLIENT_CHARACTERISTICS,
        context: *mut c_void,
        handle: *mut HANDLE,
    ) -> NTSTATUS {
        let _entry = self.enter();
        // SAFETY: null or the caller's characteristics, valid until the wait returns.
        let Some(c) = (unsafe { characteristics.as_ref() }) else {
            return self.null_characteristics(Side::Client);
        };
        self.register(
            Side::Client,
            c.Version,
            c.Length,
            size_of::<NPI_CLIENT_CHARACTERISTICS>(),
            &raw const c.ClientRegistrationInstance,
            c.ClientAttachProvider.map(AttachFn::Client),
            c.ClientDetachProvider,
            c.ClientCleanupBindingContext,
            context,
            handle,
        )
    }

    unsafe fn deregister_client(&self, handle: HANDLE) -> NTSTATUS {
        let _entry = self.enter();
        self.deregister(Side::Client, handle)
    }

    unsafe fn wait_for_client_deregister_complete(&self, handle: HANDLE) -> NTSTATUS {
        let _entry = self.enter();
        self.wait(Side::Client, handle)
    }

    unsafe fn client_attach_provider(
        &self,
        binding: HANDLE,
        client_binding_context: *mut c_void,
        client_dispatch: *const c_void,
        provider_binding_context: *mut *mut c_void,
        provider_dispatch: *mut *const c_void,
    ) -> NTSTATUS {
        let _entry = self.enter();
        const CALL: &str = "NmrClientAttachProvider";
        if irql::current() != Irql::Passive {
            self.report(Violation::NmrCallAtDispatch {
                call: CALL,
                module: current_module(&self.inner),
            });
            return STATUS_UNSUCCESSFUL;
        }
        let h = binding as usize;
        // R4: the innermost callback of this model on this thread must be
        // ClientAttachProvider for this very binding.
        let inside = FRAMES.with(|f| {
            f.borrow()
                .iter()
                .rev()
                .find(|fr| Arc::ptr_eq(&fr.sim, &self.inner))
                .is_some_and(|fr| fr.callback == Callback::ClientAttachProvider && fr.binding == h)
        });
        let offer = {
            let mut st = self.state();
            let r = st.resolve(h);
            let id = match r {
                Resolved::Binding(id, Side::Client) => id,
                r => {
                    drop(st);
                    self.bad_handle(&r, CALL, h, "a client binding handle");
                    return STATUS_INVALID_PARAMETER;
                }
            };
            let b = st.bindings.get_mut(&id).expect("resolved");
            let module = b.client.name.to_string();
            let v = if !inside || b.phase != Phase::Attaching {
                Some(Violation::AttachOutsideCallback {
                    module: current_module(&self.inner),
                    binding: h,
                })
            } else if b.attach_called {
                Some(Violation::AttachTwice { module, binding: h })
            } else if provider_binding_context.is_null() || provider_dispatch.is_null() {
                Some(Violation::AttachNullOut { module, binding: h })
            } else {
                None
            };
            if let Some(v) = v {
                drop(st);
                self.report(v);
                return STATUS_INVALID_PARAMETER;
            }
            b.attach_called = true;
            b.client.context = Raw(client_binding_context);
            b.client.dispatch = Raw(client_dispatch.cast_mut());
            let (preg, creg) = (b.provider.reg, b.client.reg);
            let (provider_handle, provider_name) = (b.provider.handle, b.provider.name.clone());
            let (preg, creg) = (&st.regs[&preg], &st.regs[&creg]);
            let AttachFn::Provider(f) = preg.attach else {
                unreachable!("provider registration with a client attach callback")
            };
            let offer = (
                f,
                preg.context,
                creg.instance,
                provider_handle,
                provider_name,
            );
            st.log(NmrEvent::ProviderAttachOffered, &offer.4, Some(offer.3), 0);
            offer
        };
        let (f, provider_context, client_instance, provider_handle, name) = offer;
        let mut out_context: *mut c_void = ptr::null_mut();
        let mut out_dispatch: *const c_void = ptr::null();
        let status = self.callout(h, Callback::ProviderAttachClient, &name, None, || {
            // SAFETY: the provider registered this callback and context, the
            // client's instance is valid until its wait returns, and the two
            // out pointers are this frame's locals.
            unsafe {
                f(
                    std::ptr::without_provenance_mut(provider_handle),
                    provider_context.0,
                    client_instance.0,
                    client_binding_context,
                    client_dispatch,
                    &mut out_context,
                    &mut out_dispatch,
                )
            }
        });
        let accepted = nt_success(status);
        {
            let mut st = self.state();
            let b = st.bindings.get_mut(&h).expect("an attaching binding stays");
            b.provider_status = Some(status);
            if accepted {
                b.provider.context = Raw(out_context);
                b.provider.dispatch = Raw(out_dispatch.cast_mut());
                st.stats.attaches += 1;
            }
            st.log(
                NmrEvent::ProviderAttachReturned,
                &name,
                Some(provider_handle),
                status,
            );
        }
        if accepted {
            if out_dispatch.is_null() {
                self.report(Violation::ProviderAttachNoDispatch {
                    module: name.to_string(),
                    binding: provider_handle,
                });
            }
            // SAFETY: checked non-null above; the client gave writable slots.
            unsafe {
                *provider_binding_context = out_context;
                *provider_dispatch = out_dispatch;
            }
        }
        status
    }

    unsafe fn client_detach_provider_complete(&self, binding: HANDLE) {
        let _entry = self.enter();
        self.complete(Side::Client, binding);
    }

    unsafe fn register_provider(
        &self,
        characteristics: *const NPI_PROVIDER_CHARACTERISTICS,
        context: *mut c_void,
        handle: *mut HANDLE,
    ) -> NTSTATUS {
        let _entry = self.enter();
        // SAFETY: null or the caller's characteristics, valid until the wait returns.
        let Some(c) = (unsafe { characteristics.as_ref() }) else {
            return self.null_characteristics(Side::Provider);
        };
        self.register(
            Side::Provider,
            c.Version,
            c.Length,
            size_of::<NPI_PROVIDER_CHARACTERISTICS>(),
            &raw const c.ProviderRegistrationInstance,
            c.ProviderAttachClient.map(AttachFn::Provider),
            c.ProviderDetachClient,
            c.ProviderCleanupBindingContext,
            context,
            handle,
        )
    }

    unsafe fn deregister_provider(&self, handle: HANDLE) -> NTSTATUS {
        let _entry = self.enter();
        self.deregister(Side::Provider, handle)
    }

    unsafe fn wait_for_provider_deregister_complete(&self, handle: HANDLE) -> NTSTATUS {
        let _entry = self.enter();
        self.wait(Side::Provider, handle)
    }

    unsafe fn provider_detach_client_complete(&self, binding: HANDLE) {
        let _entry = self.enter();
        self.complete(Side::Provider, binding);
    }

    fn trace(&self, record: &Record<'_>) {
        let entry = LogEntry::Module {
            line: record.to_string(),
            event: record.event,
            module: record.module,
            binding: record.binding,
            status: record.status,
        };
        if self.inner.config.echo {
            eprintln!("{entry}");
        }
        self.state().log.push(entry);
    }

    fn delay(&self, micros: u32) {
        if irql::current() != Irql::Passive {
            self.report(Violation::BlockingAtDispatch {
                what: "Nmr::delay",
                module: current_module(&self.inner),
            });
            return;
        }
        std::thread::sleep(std::time::Duration::from_micros(micros.into()));
    }

    fn incoming_call(&self, callee_binding: HANDLE) {
        let h = callee_binding as usize;
        let v = {
            let mut st = self.state();
            st.stats.incoming_calls += 1;
            match st.resolve(h) {
                Resolved::Binding(id, callee_side) => {
                    let b = &st.bindings[&id];
                    let caller_side = callee_side.other();
                    let caller = b.end(caller_side);
                    // A call that arrives while the caller's detach runs on
                    // another thread may have been started before it: only
                    // the two certain cases are violations.
                    let after = caller.state.done()
                        || (caller.state.called
                            && on_stack(&self.inner, id, &[Callback::detach(caller_side)]));
                    after.then(|| Violation::CallAfterDetach {
                        caller: caller.name.to_string(),
                        callee: b.end(callee_side).name.to_string(),
                        binding: h,
                    })
                }
                Resolved::Stale => Some(Violation::StaleHandle {
                    call: "Nmr::incoming_call",
                    handle: h,
                }),
                Resolved::Unknown => Some(Violation::UnknownHandle {
                    call: "Nmr::incoming_call",
                    handle: h,
                }),
                Resolved::Registration(_) => Some(Violation::WrongHandle {
                    call: "Nmr::incoming_call",
                    handle: h,
                    expected: "a binding handle",
                }),
            }
        };
        if let Some(v) = v {
            self.report_from(v, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_thread_ends_with_the_model() {
        let sims: Vec<Sim> = (0..32)
            .map(|_| {
                Sim::new(Config {
                    delivery: Delivery::Worker,
                    ..Config::default()
                })
            })
            .collect();
        let queues: Vec<Weak<Queue>> = sims
            .iter()
            .map(|s| Arc::downgrade(s.inner.queue.as_ref().unwrap()))
            .collect();
        drop(sims);
        // Each worker drops its queue when it returns: wait for all of them.
        let start = std::time::Instant::now();
        while queues.iter().any(|q| q.strong_count() > 0) {
            assert!(start.elapsed() < std::time::Duration::from_secs(10));
            std::thread::yield_now();
        }
    }

    #[test]
    fn handles_are_distinct_and_stale_ones_are_recognised() {
        let sim = Sim::new(Config::default());
        let mut st = sim.state();
        let a = st.alloc_handle();
        let b = st.alloc_handle();
        assert_ne!(a, b);
        assert_ne!(a, 0);
        assert!(matches!(st.resolve(a), Resolved::Stale));
        assert!(matches!(st.resolve(a + 1), Resolved::Unknown));
        assert!(matches!(st.resolve(b + HANDLE_STEP), Resolved::Unknown));
        assert!(matches!(st.resolve(0), Resolved::Unknown));
    }

    #[test]
    fn rng_is_seeded() {
        let mut a = Rng(7);
        let mut b = Rng(7);
        let xs: Vec<u64> = (0..8).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next()).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng(8).next(), Rng(7).next());
    }
}
