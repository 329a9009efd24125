//! Loom models of the rundown and of one binding's detach (NMR-CONTRACT.md
//! §2 R7–R10): every interleaving of a few calls, releases and drains, up to
//! the preemption bound, checked for
//!
//! - a drain reported (a detach completed) exactly once when `begin_drain`
//!   answered Pending / the detach answered `STATUS_PENDING`, and never when it
//!   answered Drained / `STATUS_SUCCESS`;
//! - never before the last call returned (a loom counter of the calls still
//!   inside must read zero in the report, and a loom cell the calls read is
//!   written by the cleanup, so loom flags any call not ordered before it);
//! - no call admitted once the drain has begun;
//! - with both sides detaching, one cleanup per side, after both completed.
//!
//! - a call released on the slot that admitted it, after moving to another
//!   processor; the drain racing releases on every slot and its own summing;
//! - the binding set's lookup (per-processor reader locks) against a cleanup
//!   that unlinks and frees the binding inline (the set's list is a loom cell);
//! - a rundown slot index of the module's arena reused after the cleanup
//!   while a release of the old binding may still be running
//!   (`rundown_index_reused_after_cleanup_vs_stale_release`, exhaustive).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p nmr-common --release --test loom --target-dir target/loom`
//! (a few minutes on two cores). `rundown_two_calls_vs_drain`,
//! `rundown_last_release_vs_drain`, `rundown_acquire_fails_after_drain`,
//! `rundown_migrated_release_vs_drain` and `binding_last_call_vs_detach` are
//! exhaustive; `rundown_releases_on_every_slot_vs_drain_summing` and
//! `binding_set_worker_round_vs_detach_and_cleanup` are bounded at 3
//! preemptions, `binding_calls_vs_detach` at 5 and `binding_both_sides_detach`
//! (five threads) at 3. `LOOM_MAX_PREEMPTIONS` overrides every bound.
//!
//! Breakages of the per-processor rundown each of which these models catch
//! (tried, then reverted): releasing on the current processor's slot instead
//! of the guard's (2 models: a slot counted forever, no report); the drain
//! storing its total into `pending` instead of adding it (6: lost reports);
//! a slot release with `Relaxed` instead of `Release` (6: a report that does
//! not see the last call); reporting when the releaser's own slot empties,
//! ignoring the others (6: reports after Drained, and early). Writers of the
//! binding set taking only the first processor's lock fail the set model
//! (loom: concurrent read and write of the list). "Increment first, back out
//! when draining" with a bare `fetch_sub` is *not* a counting bug here (see
//! below). The index-reuse model catches giving the slot index back to the
//! arena when the drain has closed the slots rather than at the cleanup
//! ("a stale release hit a reused slot": the old call's release lands on the
//! new binding's slot), and a release that settles `pending` before its slot
//! decrement (a lost report: "the old side cleaned up once", 0). The acquire
//! is "increment first, back out when draining" (one `fetch_add`, and a bare
//! `fetch_sub` when refused), which is *not* a counting bug here: the drain
//! reads each slot once, atomically, so a later transient increment is never
//! in its total, and a refused caller holds the owner, so its take-back
//! lands before the cleanup can give the slot's index back. Every model
//! here ran with both that acquire and the compare-and-swap it replaced.

#![cfg(loom)]

use core::ffi::c_void;
use core::ptr::{self, NonNull};

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

use std::cell::Cell;

use nmr_common::arena::SlotArena;
use nmr_common::binding::{Binding, BindingSet, PeerCall};
use nmr_common::ffi::{
    HANDLE, NPI_CLIENT_CHARACTERISTICS, NPI_PROVIDER_CHARACTERISTICS, NTSTATUS, STATUS_PENDING,
    STATUS_SUCCESS,
};
use nmr_common::nmr::Nmr;
use nmr_common::rundown::{Drain, Rundown, RundownGuard, RundownOwner};
use nmr_common::sync::FlagLock;
use nmr_common::trace::Record;

/// Explores `f` with at most `preemption_bound` preemptions per execution
/// (`None`: exhaustive), unless `LOOM_MAX_PREEMPTIONS` says otherwise.
///
/// One model at a time: loom maps a fresh stack for every thread of every
/// execution, and models running side by side in one process contend on the
/// address space, which makes the file take twice as long on two cores.
fn model(preemption_bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    model_with(preemption_bound, 1_000, f);
}

/// As [`model`], allowing `max_branches` branches per execution: a model
/// whose threads spin on a lock held by a preempted thread takes many.
fn model_with(
    preemption_bound: Option<usize>,
    max_branches: usize,
    f: impl Fn() + Sync + Send + 'static,
) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A model that failed poisons the lock; the others still run.
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut builder = loom::model::Builder::new();
    builder.max_branches = builder.max_branches.max(max_branches);
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = preemption_bound;
    }
    builder.check(f);
}

/// A pointer to a heap object that loom threads share, freed by the model
/// itself (after the joins, or by the cleanup callback).
struct Shared<T>(NonNull<T>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Shared<T> {}

// SAFETY: only `&T` is reached through it from other threads, and `T: Sync`.
unsafe impl<T: Sync> Send for Shared<T> {}

impl<T> Shared<T> {
    fn new(value: Box<T>) -> Self {
        Shared(NonNull::from(Box::leak(value)))
    }

    /// # Safety
    ///
    /// The object is not freed while the reference is used.
    unsafe fn get<'a>(self) -> &'a T {
        // SAFETY: the caller keeps the object alive for `'a`.
        unsafe { self.0.as_ref() }
    }
}

// ---------------------------------------------------------------------------
// Processors: each loom thread says which one it runs on, and may move.
// ---------------------------------------------------------------------------

loom::thread_local! {
    static CPU: Cell<usize> = Cell::new(0);
}

/// The calling loom thread now runs on `processor` (a migration, when it
/// changes while a call is held).
fn run_on(processor: usize) {
    CPU.with(|cpu| cpu.set(processor));
}

fn current_cpu() -> usize {
    CPU.with(Cell::get)
}

// ---------------------------------------------------------------------------
// The rundown alone.
// ---------------------------------------------------------------------------

struct Owner {
    rundown: Rundown,
    /// Calls admitted and not yet returned.
    inside: AtomicUsize,
    /// Drain reports.
    reports: AtomicUsize,
    /// The arena of the rundown's slots: dropped after it (field order).
    _arena: SlotArena,
}

/// Begins the drain of a rundown that outlives it (the models free owners
/// only after the joins, or the report frees it and the caller never
/// touches it again).
fn drain(rundown: &Rundown) -> Drain {
    // SAFETY: see above.
    unsafe { Rundown::begin_drain(NonNull::from(rundown)) }
}

impl Owner {
    /// An owner with two per-processor slots.
    fn new() -> Self {
        Self::with_slots(2)
    }

    fn with_slots(slots: usize) -> Self {
        let arena = SlotArena::new(slots);
        Owner {
            rundown: Rundown::try_new(&arena).expect("memory"),
            _arena: arena,
            inside: AtomicUsize::new(0),
            reports: AtomicUsize::new(0),
        }
    }
}

// SAFETY: `rundown` always returns the field of `self`.
unsafe impl RundownOwner for Owner {
    fn rundown(&self) -> &Rundown {
        &self.rundown
    }

    fn current_processor(&self) -> usize {
        current_cpu()
    }

    unsafe fn drained(this: NonNull<Self>) {
        // SAFETY: valid on entry; the models free owners only after the joins.
        let owner = unsafe { this.as_ref() };
        assert_eq!(
            owner.inside.load(Ordering::Relaxed),
            0,
            "drain reported before the last call returned"
        );
        assert_eq!(
            owner.reports.fetch_add(1, Ordering::Relaxed),
            0,
            "drain reported twice"
        );
    }
}

/// One call: admitted or refused.
fn call(owner: &Owner) -> bool {
    match RundownGuard::try_acquire(owner) {
        Some(guard) => {
            guard.inside.fetch_add(1, Ordering::Relaxed);
            guard.inside.fetch_sub(1, Ordering::Relaxed);
            drop(guard);
            true
        }
        None => false,
    }
}

/// Checks the end state of a model: every call returned, the drain reported
/// once if it answered Pending and never if it answered Drained.
fn check_drained(owner: &Owner, drain: Drain, max_in_flight: usize) {
    assert!(owner.rundown.is_draining());
    assert_eq!(owner.rundown.in_flight(), 0);
    let reports = owner.reports.load(Ordering::Relaxed);
    match drain {
        Drain::Drained => assert_eq!(reports, 0, "drain reported after Drained"),
        Drain::Pending { in_flight } => {
            assert!((1..=max_in_flight).contains(&in_flight), "{in_flight}");
            assert_eq!(reports, 1, "Pending without exactly one drain report");
        }
        Drain::AlreadyDraining => panic!("first drain answered AlreadyDraining"),
    }
}

/// Two threads call once each while a third begins the drain.
#[test]
fn rundown_two_calls_vs_drain() {
    model(None, || {
        let owner = Arc::new(Owner::new());
        let callers: Vec<_> = (0..2)
            .map(|cpu| {
                let owner = owner.clone();
                thread::spawn(move || {
                    run_on(cpu);
                    call(&owner)
                })
            })
            .collect();
        let drain = drain(&owner.rundown);
        assert!(!call(&owner), "call admitted after the drain began");
        for caller in callers {
            caller.join().unwrap();
        }
        check_drained(&owner, drain, 2);
    });
}

/// A call in flight returns while another thread begins the drain: the last
/// release and the drain race; one more thread calls meanwhile.
#[test]
fn rundown_last_release_vs_drain() {
    model(None, || {
        let owner = Arc::new(Owner::new());
        let held = RundownGuard::try_acquire(&*owner).unwrap();
        held.inside.fetch_add(1, Ordering::Relaxed);
        let drainer = {
            let owner = owner.clone();
            thread::spawn(move || drain(&owner.rundown))
        };
        let caller = {
            let owner = owner.clone();
            thread::spawn(move || {
                run_on(1);
                call(&owner)
            })
        };
        held.inside.fetch_sub(1, Ordering::Relaxed);
        drop(held);
        caller.join().unwrap();
        let drain = drainer.join().unwrap();
        check_drained(&owner, drain, 2);
    });
}

/// An acquire races the drain while the last call returns: once the drain
/// has begun (as seen by the acquiring thread) the acquire fails, and a
/// refused acquire never disturbs the drain's count (its transient
/// increment comes after the slot was read and closed).
#[test]
fn rundown_acquire_fails_after_drain() {
    model(None, || {
        let owner = Arc::new(Owner::new());
        let drain_begun = Arc::new(AtomicBool::new(false));
        let held = RundownGuard::try_acquire(&*owner).unwrap();
        let drainer = {
            let (owner, drain_begun) = (owner.clone(), drain_begun.clone());
            thread::spawn(move || {
                let drain = drain(&owner.rundown);
                drain_begun.store(true, Ordering::Release);
                drain
            })
        };
        let caller = {
            let (owner, drain_begun) = (owner.clone(), drain_begun.clone());
            thread::spawn(move || {
                run_on(1);
                let after_drain = drain_begun.load(Ordering::Acquire);
                let admitted = call(&owner);
                assert!(
                    !(after_drain && admitted),
                    "call admitted after the drain began"
                );
            })
        };
        drop(held);
        caller.join().unwrap();
        let drain = drainer.join().unwrap();
        check_drained(&owner, drain, 2);
    });
}

/// A call admitted on processor 0 migrates to processor 1 before it returns,
/// while another thread calls on processor 1 and a third begins the drain:
/// the release goes to the slot that admitted the call (releasing on the
/// current processor's slot leaves slot 0 counted forever, and takes slot 1
/// below zero).
#[test]
fn rundown_migrated_release_vs_drain() {
    model(None, || {
        let owner = Arc::new(Owner::new());
        let drainer = {
            let owner = owner.clone();
            thread::spawn(move || drain(&owner.rundown))
        };
        let other = {
            let owner = owner.clone();
            thread::spawn(move || {
                run_on(1);
                call(&owner)
            })
        };
        run_on(0);
        if let Some(guard) = RundownGuard::try_acquire(&*owner) {
            guard.inside.fetch_add(1, Ordering::Relaxed);
            run_on(1); // preempted and moved while the call runs
            guard.inside.fetch_sub(1, Ordering::Relaxed);
            drop(guard);
        }
        other.join().unwrap();
        let drain = drainer.join().unwrap();
        check_drained(&owner, drain, 2);
    });
}

/// A guard that a model moves to another thread to release there (a call
/// handed over, or a thread that moved): the owner outlives every thread.
struct Handed(RundownGuard<'static, Owner>);
// SAFETY: the guard only points at an `Owner` (which is `Sync`) that the
// model frees after joining every thread.
unsafe impl Send for Handed {}

/// Three calls in flight, one on each of three slots, return on three
/// threads while the drain closes the slots one by one and adds up what it
/// found: every release may come before or after its slot is closed, and
/// before or after the drain's own sum reaches `pending`. Exactly one report,
/// after the last call, or none when the drain saw them all return.
#[test]
fn rundown_releases_on_every_slot_vs_drain_summing() {
    model(Some(3), || {
        let owner = Shared::new(Box::new(Owner::with_slots(3)));
        // SAFETY: freed below, after every thread joined.
        let o = unsafe { owner.get() };
        let releasers: Vec<_> = (0..3)
            .map(|cpu| {
                run_on(cpu);
                let held = Handed(RundownGuard::try_acquire(o).expect("not draining"));
                held.0.inside.fetch_add(1, Ordering::Relaxed);
                thread::spawn(move || {
                    let held = held;
                    held.0.inside.fetch_sub(1, Ordering::Relaxed);
                    drop(held);
                })
            })
            .collect();
        let drain = drain(&o.rundown);
        for cpu in 0..3 {
            run_on(cpu);
            assert!(
                RundownGuard::try_acquire(o).is_none(),
                "call admitted on slot {cpu} after the drain"
            );
        }
        for releaser in releasers {
            releaser.join().unwrap();
        }
        check_drained(o, drain, 3);
        // SAFETY: every thread joined; nothing refers to the owner.
        drop(unsafe { Box::from_raw(owner.0.as_ptr()) });
    });
}

/// An owner whose drain report frees it, as a binding's cleanup does: its
/// rundown's slot index goes back to the shared arena then.
struct FreeingOwner {
    rundown: Rundown,
    reports: Arc<AtomicUsize>,
}

// SAFETY: `rundown` always returns the field of `self`.
unsafe impl RundownOwner for FreeingOwner {
    fn rundown(&self) -> &Rundown {
        &self.rundown
    }
    fn current_processor(&self) -> usize {
        current_cpu()
    }
    unsafe fn drained(this: NonNull<Self>) {
        // SAFETY: boxed by the model; this is the one report: free it.
        let owner = unsafe { Box::from_raw(this.as_ptr()) };
        owner.reports.fetch_add(1, Ordering::Relaxed);
    }
}

struct HandedFreeing(RundownGuard<'static, FreeingOwner>);
// SAFETY: the guard's count keeps the owner alive until its release, on
// whichever thread; the owner is `Sync`.
unsafe impl Send for HandedFreeing {}

/// A binding side's slot index is reused after its cleanup while a release
/// of one of its calls may still be running: one call in flight returns on
/// another thread as the drain begins; the report (or the drainer, on
/// Drained) frees the owner, which gives its index back; meanwhile a new
/// rundown leases from the same arena (one processor: one word per index),
/// possibly that very index, and counts a call. A release that touched its
/// slot after the index went back would be counted on the new rundown.
#[test]
fn rundown_index_reused_after_cleanup_vs_stale_release() {
    model(None, || {
        let arena = Arc::new(SlotArena::new(1));
        let reports = Arc::new(AtomicUsize::new(0));
        let old = Box::into_raw(Box::new(FreeingOwner {
            rundown: Rundown::try_new(&arena).expect("memory"),
            reports: reports.clone(),
        }));
        // SAFETY: alive until its report, which needs this call released.
        let held = HandedFreeing(RundownGuard::try_acquire(unsafe { &*old }).unwrap());
        let releaser = thread::spawn(move || drop(held.0));
        // SAFETY: alive on entry; not touched afterwards unless Drained.
        let old_drain =
            unsafe { Rundown::begin_drain(NonNull::new_unchecked(&raw mut (*old).rundown)) };
        if old_drain == Drain::Drained {
            // SAFETY: no report will come: the cleanup is ours.
            let owner = unsafe { Box::from_raw(old) };
            owner.reports.fetch_add(1, Ordering::Relaxed);
        }
        let new = Owner {
            rundown: Rundown::try_new(&arena).expect("memory"),
            inside: AtomicUsize::new(0),
            reports: AtomicUsize::new(0),
            _arena: SlotArena::new(1),
        };
        let call = RundownGuard::try_acquire(&new).expect("a fresh rundown admits a call");
        assert_eq!(
            new.rundown.in_flight(),
            1,
            "a stale release hit a reused slot"
        );
        releaser.join().unwrap();
        assert_eq!(
            new.rundown.in_flight(),
            1,
            "a stale release hit a reused slot"
        );
        assert_eq!(
            reports.load(Ordering::Relaxed),
            1,
            "the old side cleaned up once"
        );
        assert_eq!(drain(&new.rundown), Drain::Pending { in_flight: 1 });
        drop(call);
        assert_eq!(new.reports.load(Ordering::Relaxed), 1);
    });
}

// ---------------------------------------------------------------------------
// Bindings, over a mock NMR.
// ---------------------------------------------------------------------------

const CLIENT: usize = 0;
const PROVIDER: usize = 1;
/// This side's NMR binding handle (opaque; only compared).
const HANDLES: [usize; 2] = [0x10, 0x20];
/// What a live binding's payload holds; the cleanup overwrites it.
const LIVE: u64 = 0x1fe;
const FREED: u64 = 0xdead;

/// The peer's dispatch table.
#[repr(C)]
struct Table {
    ping: extern "C" fn(context: *mut c_void) -> u32,
}

extern "C" fn ping(_context: *mut c_void) -> u32 {
    7
}

static TABLE: Table = Table { ping };

/// The owner's per-binding data: a payload every call reads and the cleanup
/// writes (standing for the free), so that loom reports any call that is not
/// ordered before the cleanup.
struct Data {
    payload: UnsafeCell<u64>,
}

// SAFETY: every access to `payload` goes through loom's cell, which checks
// that no two conflicting accesses are unordered.
unsafe impl Sync for Data {}

type TestBinding = Binding<MockNmr, Table, Data>;

/// What the mock NMR knows of one side of the binding.
#[derive(Default)]
struct Side {
    /// Calls through this side's binding that were admitted and not yet
    /// returned.
    inside: AtomicUsize,
    /// `Nmr*DetachComplete` calls for this side.
    completions: AtomicUsize,
    /// `STATUS_PENDING` returned + completion arrived: the second one
    /// finishes the side's detachment.
    pending_events: AtomicUsize,
    /// Times this side finished detaching.
    finished: AtomicUsize,
    /// Cleanup callbacks run for this side.
    cleanups: AtomicUsize,
    /// This side's binding while linked, as in `BindingSet`: callers look it
    /// up and acquire a call under the lock; the cleanup unlinks it under the
    /// lock before freeing it.
    linked: Mutex<Option<Shared<TestBinding>>>,
}

type TestSet = BindingSet<MockNmr, Table, Data>;

struct World {
    sides: [Side; 2],
    /// Run the cleanup (R10) once both sides finished detaching. Off when the
    /// model drives one side only and frees it itself.
    cleanup: bool,
    /// Sides that finished detaching.
    sides_done: AtomicUsize,
    /// The client module's binding set, when the model uses one: the
    /// client's cleanup unlinks its binding from it before freeing it.
    client_set: Mutex<Option<Shared<TestSet>>>,
    /// The rundown slots of the bindings (the module's arena).
    slots: SlotArena,
}

/// The NMR as the bindings see it: records completions, and in the two-sided
/// model finishes each side's detachment and runs the cleanup after both.
#[derive(Clone)]
struct MockNmr(Arc<World>);

impl MockNmr {
    fn new(cleanup: bool) -> Self {
        MockNmr(Arc::new(World {
            sides: Default::default(),
            cleanup,
            sides_done: AtomicUsize::new(0),
            client_set: Mutex::new(None),
            slots: SlotArena::new(2),
        }))
    }

    fn side(&self, side: usize) -> &Side {
        &self.0.sides[side]
    }

    /// `Nmr*DetachComplete` for `side`.
    fn complete(&self, side: usize, handle: HANDLE) {
        assert_eq!(
            handle.addr(),
            HANDLES[side],
            "completion with a wrong handle"
        );
        let s = self.side(side);
        assert_eq!(
            s.inside.load(Ordering::Relaxed),
            0,
            "detach completed before the last call returned"
        );
        assert_eq!(
            s.completions.fetch_add(1, Ordering::Relaxed),
            0,
            "detach completed twice"
        );
        if self.0.cleanup {
            self.pending_event(side);
        }
    }

    /// The detach callback of `side` returned `status`.
    fn detach_returned(&self, side: usize, status: NTSTATUS) {
        match status {
            STATUS_SUCCESS => self.side_finished(side),
            STATUS_PENDING => self.pending_event(side),
            other => panic!("detach returned {other:#x}"),
        }
    }

    /// One of the two events of a pending detach: the second finishes it.
    fn pending_event(&self, side: usize) {
        if self
            .side(side)
            .pending_events
            .fetch_add(1, Ordering::AcqRel)
            == 1
        {
            self.side_finished(side);
        }
    }

    fn side_finished(&self, side: usize) {
        assert_eq!(
            self.side(side).finished.fetch_add(1, Ordering::AcqRel),
            0,
            "side finished detaching twice"
        );
        if self.0.sides_done.fetch_add(1, Ordering::AcqRel) == 1 {
            // R10: both sides completed; cleanup runs inline, once per side.
            for side in [CLIENT, PROVIDER] {
                self.cleanup(side);
            }
        }
    }

    fn cleanup(&self, side: usize) {
        let s = self.side(side);
        assert_eq!(
            s.inside.load(Ordering::Relaxed),
            0,
            "cleanup before the side's last call returned"
        );
        assert_eq!(
            s.cleanups.fetch_add(1, Ordering::Relaxed),
            0,
            "cleanup ran twice"
        );
        let binding = s.linked.lock().unwrap().take().expect("binding linked");
        let binding = binding.0;
        if side == CLIENT
            && let Some(set) = *self.0.client_set.lock().unwrap()
        {
            // SAFETY: the model frees the set after every thread joined.
            assert!(unsafe { set.get() }.remove(binding), "linked in the set");
        }
        // SAFETY: both sides completed detachment, so no call is counted on
        // either binding and none can be admitted; the write stands for the
        // free, and loom checks it against every call's read.
        unsafe { binding.as_ref() }
            .data
            .payload
            .with_mut(|p| unsafe { *p = FREED });
        // SAFETY: the binding was boxed by `new_binding`; this cleanup runs
        // once per side, and nothing touches the binding afterwards.
        unsafe { TestBinding::destroy(binding) };
    }
}

impl Nmr for MockNmr {
    type Lock = FlagLock;

    unsafe fn register_client(
        &self,
        _: *const NPI_CLIENT_CHARACTERISTICS,
        _: *mut c_void,
        _: *mut HANDLE,
    ) -> NTSTATUS {
        unreachable!()
    }
    unsafe fn deregister_client(&self, _: HANDLE) -> NTSTATUS {
        unreachable!()
    }
    unsafe fn wait_for_client_deregister_complete(&self, _: HANDLE) -> NTSTATUS {
        unreachable!()
    }
    unsafe fn client_attach_provider(
        &self,
        _: HANDLE,
        _: *mut c_void,
        _: *const c_void,
        _: *mut *mut c_void,
        _: *mut *const c_void,
    ) -> NTSTATUS {
        unreachable!()
    }
    unsafe fn client_detach_provider_complete(&self, binding: HANDLE) {
        self.complete(CLIENT, binding);
    }
    unsafe fn register_provider(
        &self,
        _: *const NPI_PROVIDER_CHARACTERISTICS,
        _: *mut c_void,
        _: *mut HANDLE,
    ) -> NTSTATUS {
        unreachable!()
    }
    unsafe fn deregister_provider(&self, _: HANDLE) -> NTSTATUS {
        unreachable!()
    }
    unsafe fn wait_for_provider_deregister_complete(&self, _: HANDLE) -> NTSTATUS {
        unreachable!()
    }
    unsafe fn provider_detach_client_complete(&self, binding: HANDLE) {
        self.complete(PROVIDER, binding);
    }
    fn trace(&self, _: &Record<'_>) {}
    fn delay(&self, _: u32) {
        unreachable!()
    }
    fn processor_count(&self) -> u32 {
        2
    }
    fn current_processor(&self) -> u32 {
        current_cpu() as u32
    }
}

/// A boxed binding for `side`, registered with the mock NMR, peer not set.
fn new_binding(nmr: &MockNmr, side: usize) -> Shared<TestBinding> {
    let handle = ptr::without_provenance_mut(HANDLES[side]);
    let data = Data {
        payload: UnsafeCell::new(LIVE),
    };
    // `handle` is the handle the mock NMR completes for `side`, the binding
    // is linked to it below (the mock's detach and cleanup use it), and the
    // arena `nmr.0.slots` lives as long as the mock, which outlives every
    // binding of the model.
    let binding = if side == CLIENT {
        // SAFETY: as said above, for the client's side.
        unsafe { Binding::for_client(nmr.clone(), &nmr.0.slots, "loom", handle, data) }
    } else {
        // SAFETY: as said above, for the provider's side.
        unsafe { Binding::for_provider(nmr.clone(), &nmr.0.slots, "loom", handle, data) }
    };
    let binding = binding.unwrap_or_else(|_| panic!("out of memory"));
    let shared = Shared::new(binding);
    *nmr.side(side).linked.lock().unwrap() = Some(shared);
    shared
}

/// Publishes the peer of a binding (the attach path), before any thread
/// calls through it.
fn publish_peer(binding: Shared<TestBinding>, peer_context: *mut c_void) {
    // SAFETY: the binding is live: the models free it only after the threads
    // that use it started. `TABLE` is a `'static` table that passes the
    // dispatch check, and `peer_context` is the context each model calls it
    // with.
    unsafe { binding.get().publish_peer(peer_context, &TABLE) }
        .expect("each model publishes a binding's peer once");
}

/// Reads a live binding's payload (loom checks it is ordered before the free).
fn read_payload(binding: &TestBinding) {
    // SAFETY: loom checks the read against the cleanup's write.
    let payload = binding.data.payload.with(|p| unsafe { *p });
    assert_eq!(payload, LIVE, "call into a freed binding");
}

/// The body of one call on `side`: reads this side's and, when the peer
/// context is a binding, the peer's payload.
fn run_call(
    nmr: &MockNmr,
    side: usize,
    peer: &PeerCall<'_, MockNmr, Table, Data>,
    peer_is_binding: bool,
) {
    let inside = &nmr.side(side).inside;
    inside.fetch_add(1, Ordering::Relaxed);
    read_payload(peer.binding());
    if peer_is_binding {
        // SAFETY: the peer's context is the peer's binding, valid until the
        // cleanup, which cannot run while this call is counted.
        read_payload(unsafe { &*peer.context().cast::<TestBinding>() });
    }
    assert_eq!((peer.dispatch().ping)(peer.context()), 7);
    inside.fetch_sub(1, Ordering::Relaxed);
}

/// One call through `binding` (this side is `side`); false when refused.
fn call_through(nmr: &MockNmr, side: usize, binding: &TestBinding) -> bool {
    // The call is dropped here while `binding` (an argument) is live: fine in
    // the models that use this, which free the binding only after every
    // caller joined; the model that frees inside the last completion calls
    // through `call_linked` instead.
    match binding.acquire() {
        Some(peer) => {
            run_call(nmr, side, &peer, false);
            true
        }
        None => false,
    }
}

/// One call through `side`'s binding found in its link slot, acquired under
/// the slot's lock and made after it is dropped (the `BindingSet` protocol);
/// false when unlinked or refused.
fn call_linked(nmr: &MockNmr, side: usize) -> bool {
    let call = {
        let linked = nmr.side(side).linked.lock().unwrap();
        // SAFETY: a linked binding is freed only after the cleanup unlinked
        // it, which takes this lock; once acquired, the counted call keeps it
        // alive after the lock is dropped.
        linked.and_then(|b| unsafe { b.get() }.acquire())
    };
    match call {
        Some(peer) => {
            run_call(nmr, side, &peer, true);
            true
        }
        None => false,
    }
}

/// Checks one side after its detach returned `status` and every thread joined.
fn check_side(nmr: &MockNmr, side: usize, status: NTSTATUS) {
    let s = nmr.side(side);
    assert_eq!(s.inside.load(Ordering::Relaxed), 0);
    let completions = s.completions.load(Ordering::Relaxed);
    match status {
        STATUS_SUCCESS => assert_eq!(completions, 0, "completion after STATUS_SUCCESS"),
        STATUS_PENDING => assert_eq!(completions, 1, "STATUS_PENDING without one completion"),
        other => panic!("detach returned {other:#x}"),
    }
}

/// Two threads call through a binding while a third detaches it; after detach
/// returned, calls are refused (seen from the detaching thread, and from a
/// caller that saw the detach return).
#[test]
fn binding_calls_vs_detach() {
    model(Some(5), || {
        let nmr = MockNmr::new(false);
        let binding = new_binding(&nmr, CLIENT);
        publish_peer(binding, ptr::null_mut());
        let detached = Arc::new(AtomicBool::new(false));
        let callers: Vec<_> = (0..2)
            .map(|i| {
                let (nmr, detached) = (nmr.clone(), detached.clone());
                thread::spawn(move || {
                    run_on(i);
                    // SAFETY: freed only after the joins.
                    let b = unsafe { binding.get() };
                    let after_detach = i == 1 && detached.load(Ordering::Acquire);
                    let admitted = call_through(&nmr, CLIENT, b);
                    assert!(
                        !(after_detach && admitted),
                        "call admitted after detach returned"
                    );
                })
            })
            .collect();
        // SAFETY: live until the destroy below.
        let status = unsafe { TestBinding::detach(binding.0) };
        detached.store(true, Ordering::Release);
        // SAFETY: no cleanup in this model: still live.
        let b = unsafe { binding.get() };
        assert!(b.is_detaching());
        assert!(
            !call_through(&nmr, CLIENT, b),
            "call admitted after detach returned"
        );
        for caller in callers {
            caller.join().unwrap();
        }
        check_side(&nmr, CLIENT, status);
        // SAFETY: every thread joined and the detach finished: the model's
        // stand-in for cleanup.
        unsafe { TestBinding::destroy(binding.0) };
    });
}

/// The last call in flight returns while another thread detaches, and a
/// third thread calls meanwhile.
#[test]
fn binding_last_call_vs_detach() {
    model(None, || {
        let nmr = MockNmr::new(false);
        let binding = new_binding(&nmr, PROVIDER);
        publish_peer(binding, ptr::null_mut());
        // SAFETY: freed only after the joins.
        let b = unsafe { binding.get() };
        let held = b.acquire().expect("not detaching yet");
        nmr.side(PROVIDER).inside.fetch_add(1, Ordering::Relaxed);
        let detacher = thread::spawn(move || {
            // SAFETY: live until the destroy below, after the joins.
            unsafe { TestBinding::detach(binding.0) }
        });
        let caller = {
            let nmr = nmr.clone();
            thread::spawn(move || {
                run_on(1);
                // SAFETY: freed only after the joins.
                call_through(&nmr, PROVIDER, unsafe { binding.get() })
            })
        };
        read_payload(held.binding());
        nmr.side(PROVIDER).inside.fetch_sub(1, Ordering::Relaxed);
        drop(held);
        caller.join().unwrap();
        let status = detacher.join().unwrap();
        assert!(b.acquire().is_none(), "call admitted after detach returned");
        check_side(&nmr, PROVIDER, status);
        // SAFETY: every thread joined and the detach finished.
        unsafe { TestBinding::destroy(binding.0) };
    });
}

/// Both sides of one binding detach at once (R7) on two threads, each side
/// with a call in flight from its own thread. The mock NMR finishes a side
/// when its detach returned SUCCESS, or returned PENDING and its completion
/// came (either order), and runs both cleanups, freeing both bindings, inline
/// in whichever finish came last (R10).
#[test]
fn binding_both_sides_detach() {
    model(Some(3), || {
        let nmr = MockNmr::new(true);
        let client = new_binding(&nmr, CLIENT);
        let provider = new_binding(&nmr, PROVIDER);
        // Each side's peer context is the other side's binding.
        publish_peer(client, provider.0.as_ptr().cast());
        publish_peer(provider, client.0.as_ptr().cast());
        let mut callers = Vec::new();
        let mut detachers = Vec::new();
        for (side, binding) in [(CLIENT, client), (PROVIDER, provider)] {
            let nmr_for_caller = nmr.clone();
            callers.push(thread::spawn(move || {
                run_on(side);
                call_linked(&nmr_for_caller, side)
            }));
            let nmr_for_detacher = nmr.clone();
            detachers.push(thread::spawn(move || {
                // SAFETY: live until the cleanup, which needs this detach to
                // return first; not touched afterwards.
                let status = unsafe { TestBinding::detach(binding.0) };
                nmr_for_detacher.detach_returned(side, status);
                status
            }));
        }
        for caller in callers {
            caller.join().unwrap();
        }
        let statuses: Vec<NTSTATUS> = detachers.into_iter().map(|d| d.join().unwrap()).collect();
        for side in [CLIENT, PROVIDER] {
            check_side(&nmr, side, statuses[side]);
            let s = nmr.side(side);
            assert_eq!(s.finished.load(Ordering::Relaxed), 1, "side never finished");
            assert_eq!(s.cleanups.load(Ordering::Relaxed), 1, "no cleanup");
        }
        assert_eq!(nmr.0.sides_done.load(Ordering::Relaxed), 2);
    });
}

/// The call path's lookup (issue 11, point 3): a thread on processor 1 runs
/// the client's worker round through a real `BindingSet` (taking only its
/// own processor's reader lock) while the main thread, on processor 0,
/// detaches the client's side; the provider's side detached first with
/// nothing in flight. Whichever finish comes last (the detach returning or
/// the call's release) runs both cleanups inline: the client's unlinks its
/// binding from the set (taking every processor's lock) and frees it. Loom
/// checks the set's list against the reader (it is a loom cell), the call's
/// reads against the cleanup's write, and the completion counts.
#[test]
fn binding_set_worker_round_vs_detach_and_cleanup() {
    model_with(Some(3), 100_000, || {
        let nmr = MockNmr::new(true);
        let client = new_binding(&nmr, CLIENT);
        let provider = new_binding(&nmr, PROVIDER);
        publish_peer(client, provider.0.as_ptr().cast());
        publish_peer(provider, client.0.as_ptr().cast());
        let set = Shared::new(Box::new(
            TestSet::try_new(nmr.clone()).unwrap_or_else(|_| panic!("memory")),
        ));
        *nmr.0.client_set.lock().unwrap() = Some(set);
        // SAFETY: the set is live until the end of the model; the binding
        // stays valid until its cleanup unlinks it.
        unsafe { set.get().insert(client.0) }.expect("memory");
        // SAFETY: live; nothing calls through the provider's side here.
        let provider_status = unsafe { TestBinding::detach(provider.0) };
        assert_eq!(provider_status, STATUS_SUCCESS);
        nmr.detach_returned(PROVIDER, provider_status);

        let caller = {
            let nmr = nmr.clone();
            thread::spawn(move || {
                run_on(1);
                // SAFETY: freed only after the join.
                let set = unsafe { set.get() };
                let mut made = 0;
                let refused = set.for_each_call(|call| {
                    run_call(&nmr, CLIENT, &call, true);
                    made += 1;
                });
                assert!(made + refused <= 1, "one binding visited at most once");
            })
        };
        run_on(0);
        // SAFETY: live until the cleanup, which needs this detach to return
        // first; not touched afterwards.
        let status = unsafe { TestBinding::detach(client.0) };
        nmr.detach_returned(CLIENT, status);
        caller.join().unwrap();
        check_side(&nmr, CLIENT, status);
        for side in [CLIENT, PROVIDER] {
            assert_eq!(
                nmr.side(side).cleanups.load(Ordering::Relaxed),
                1,
                "no cleanup"
            );
        }
        // SAFETY: every thread joined.
        let set = unsafe { Box::from_raw(set.0.as_ptr()) };
        assert!(set.is_empty(), "the cleanup unlinked the binding");
        *nmr.0.client_set.lock().unwrap() = None;
    });
}
