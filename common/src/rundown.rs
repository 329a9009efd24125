//! The in-flight call counter ("rundown") of one side of one binding: one
//! 8-byte slot per processor, leased from the module's arena (each
//! processor's slots of many bindings share a line that only that processor
//! writes), so that calls on different processors never write the same
//! cache line.
//!
//! Each slot is one machine word, `in_flight << 1 | DRAINING`, counting the
//! calls admitted on that slot; a shared word, `pending`, is touched only once
//! the drain has begun.
//!
//! - [`RundownGuard::try_acquire`]: one `fetch_add` on the slot of the
//!   processor the caller runs on. If the slot was already closed
//!   (`DRAINING`), the call is refused and taken back at once with a
//!   `fetch_sub`. That transient increment disturbs nobody: the drain read
//!   the slot once, atomically, when it closed it, so a later increment is
//!   never in its total; a counted release decides by the `DRAINING` bit
//!   alone; and the refused caller holds a reference to the owner for the
//!   whole acquire, so the owner (whose cleanup gives the slot's index back
//!   to the arena) outlives both writes. (With a single shared word whose
//!   drain waits for zero, as `EX_RUNDOWN_REF`'s, "increment first, back
//!   out" is a known bug; here it is not, and the loom models check it.) A
//!   compare-and-swap that never increments a closed slot did the same at
//!   about 1.2 ns more per call (docs/benchmarks.md).
//! - The guard remembers its slot, and dropping it releases there: one
//!   `fetch_sub`. A PASSIVE caller may have moved to another processor in
//!   between; releasing on the slot it acquired keeps every slot's count
//!   exact (never negative), so the drain can read each slot once.
//! - [`Rundown::begin_drain`] (the detach callback) sets `DRAINING` on every
//!   slot with one `fetch_or` each, in order, and adds up the counts it found:
//!   `total` calls were admitted and not yet released when their slot was
//!   closed. From a slot's `fetch_or` on, no call is admitted there, and each
//!   of those `total` calls, and only those, release with `DRAINING` set.
//!   Such a release also decrements `pending`. The drain then adds `total` to
//!   `pending` with one `fetch_add`. Releases that came first have taken
//!   `pending` below zero (it wraps; only differences matter), so after the
//!   add `pending` is exactly the number of counted calls still in flight, and
//!   it was never 1 before the add:
//!   - `pending` is 0 after the add (or `total` was 0): every counted call has
//!     returned. The drain answers [`Drain::Drained`]; no release will report.
//!   - otherwise it answers [`Drain::Pending`], and the release that takes
//!     `pending` from 1 to 0 is the one, and the only one, that reports the
//!     drain: it calls [`RundownOwner::drained`] inline, in the releasing
//!     thread, at whatever IRQL that thread runs. No wait, no timer, no work
//!     item. The drain's cost is one atomic per slot: O(processors), never
//!     blocking.
//! - Draining is final: no slot ever goes back, so a drained rundown cannot be
//!   reused; a second `begin_drain` is a no-op answered with
//!   [`Drain::AlreadyDraining`].
//!
//! Memory orderings, and why:
//! - acquire: `Acquire`, so the call that follows cannot be hoisted above the
//!   point where it was admitted; the refused caller's take-back is
//!   `Relaxed`, since nothing reads that count (it publishes nothing).
//! - slot release: `Release`, which publishes the call's effects: to the
//!   drain's `fetch_or` on that slot (`AcqRel`) when the release comes first;
//!   the slot's read-modify-writes form one release sequence, so the drain
//!   sees every call that returned on it before it was closed.
//! - `pending`: `AcqRel` on both sides. A counted call's release (which comes
//!   after its slot `fetch_sub` in program order, so after the call) and the
//!   drain's add are read-modify-writes of one word: one release sequence.
//!   Whoever brings it to zero, the last release or the drain itself, acquires
//!   from all of them, and so sees every call's effects and everything the
//!   drain saw, before it reports (which may free the binding).
//! - `draining` (the first-drain flag): `AcqRel` swap, so a second drain is
//!   ordered after the first.

use core::marker::PhantomData;
use core::ptr::NonNull;

use crate::arena::{LeaseParts, SlotArena};
use crate::binding::OutOfMemory;

#[cfg(not(loom))]
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const DRAINING: usize = 1;
const ONE_CALL: usize = 2;

/// Adds one call to `slot` unless it is draining. One `fetch_add`: a slot the
/// drain has closed gets the call added and at once taken back, which the
/// drain never sees (it read the slot once, when it closed it). See the
/// module's notes on why the transient increment is harmless.
#[inline(always)]
fn slot_try_acquire(slot: &AtomicUsize) -> bool {
    let before = slot.fetch_add(ONE_CALL, Ordering::Acquire);
    if before & DRAINING == 0 {
        return true;
    }
    // Refused: take the call back. No counted release reads this count (a
    // release decides by the DRAINING bit alone), and the drain's total was
    // read when the slot closed, before this increment.
    slot.fetch_sub(ONE_CALL, Ordering::Relaxed);
    false
}

/// Removes one call from `slot`; true when the drain had closed it first,
/// that is, when the drain counted this call.
///
/// Only [`RundownGuard`]'s drop calls this, once per successful acquire, on
/// the slot that admitted the call.
#[inline(always)]
fn slot_release(slot: &AtomicUsize) -> bool {
    let before = slot.fetch_sub(ONE_CALL, Ordering::Release);
    debug_assert!(
        before >= ONE_CALL,
        "rundown slot released more often than acquired"
    );
    before & DRAINING != 0
}

/// Counts the calls in flight through one side of one binding, per processor.
#[derive(Debug)]
pub struct Rundown {
    /// This side's slot on processor 0's page of its module's arena; the
    /// other processors' follow a page apart (a lease, taken apart so that
    /// its fields pack with the flag below: 32 bytes in all). Given back
    /// when the rundown is dropped.
    first: NonNull<AtomicUsize>,
    chunk: NonNull<crate::arena::Chunk>,
    processors: u32,
    index: u8,
    /// Counted calls still in flight once the drain has added its total
    /// (wrapping: releases may come first). Touched only after the drain began.
    pending: AtomicUsize,
    /// Whether a drain has begun (for [`Drain::AlreadyDraining`] and
    /// [`Rundown::is_draining`]; the call path reads the slots only).
    draining: AtomicBool,
}

/// What [`Rundown::begin_drain`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Nothing was in flight: drained now, and no [`RundownOwner::drained`] call
    /// will follow. A detach callback returns `STATUS_SUCCESS`.
    Drained,
    /// Calls were in flight: exactly one later release calls
    /// [`RundownOwner::drained`]. A detach callback returns `STATUS_PENDING`.
    /// That release may already have happened by the time this value is seen.
    Pending {
        /// How many calls were in flight when their slots were closed.
        in_flight: usize,
    },
    /// The drain had already begun: nothing changed (a second detach is a
    /// contract violation of the caller; the rundown stays consistent).
    AlreadyDraining,
}

impl Rundown {
    /// A rundown with one slot per processor, leased from `arena` (its index
    /// on every processor's page), no call in flight, not draining: made
    /// before the binding is handed to anyone, so calls can never arrive
    /// before it exists. `Err` when the arena is full and cannot grow (the
    /// attach is declined). The slot index goes back to the arena when the
    /// rundown is dropped.
    pub fn try_new(arena: &SlotArena) -> Result<Self, OutOfMemory> {
        let LeaseParts {
            first,
            chunk,
            processors,
            index,
        } = arena.lease()?.into_parts();
        Ok(Rundown {
            first,
            chunk,
            processors,
            index,
            pending: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
        })
    }

    /// Begins the drain: closes every slot, so that from its return on every
    /// acquire fails. O(slots), never blocks.
    ///
    /// # Safety
    ///
    /// `this` is valid on entry, and no reference to the rundown or to its
    /// owner is live across the call (the detach callback holds a pointer).
    /// Once the drain's total reaches `pending` the last release may free the
    /// owner at any moment (its report runs the cleanup inline), so this
    /// function forms only references to atomics for its last operation, as
    /// `Arc`'s drop does, and the caller must not touch `this` afterwards
    /// unless the answer is [`Drain::Drained`] or [`Drain::AlreadyDraining`]
    /// (then nothing else frees it).
    pub unsafe fn begin_drain(this: NonNull<Self>) -> Drain {
        let this = this.as_ptr();
        // SAFETY: valid on entry; a reference to an atomic field only.
        let draining = unsafe { &(*this).draining };
        if draining.swap(true, Ordering::AcqRel) {
            return Drain::AlreadyDraining;
        }
        // SAFETY: valid until our total reaches `pending` below (only then
        // can a release report the drain); a copy, not a reference.
        let (first, processors) = unsafe { ((*this).first, (*this).processors) };
        let mut total: usize = 0;
        for processor in 0..processors as usize {
            // The slot lives in the arena, not in the owner.
            let slot: &AtomicUsize = crate::arena::slot_at(first, processors, processor);
            let before = slot.fetch_or(DRAINING, Ordering::AcqRel);
            total = total.wrapping_add(before >> 1);
        }
        if total == 0 {
            // No call was in flight on any slot when it closed: no release
            // will see `DRAINING`, and `pending` stays untouched.
            return Drain::Drained;
        }
        // SAFETY: still valid (the add below is what lets the count reach
        // zero); only a reference to the atomic itself, which stays usable
        // if the owner is freed during the add's return.
        let pending = unsafe { &(*this).pending };
        let before = pending.fetch_add(total, Ordering::AcqRel);
        if before.wrapping_add(total) == 0 {
            // Every counted call returned while we were closing the slots.
            Drain::Drained
        } else {
            Drain::Pending { in_flight: total }
        }
    }

    /// The lease, put together again (a copy).
    #[inline(always)]
    fn slots(&self) -> LeaseParts {
        LeaseParts {
            first: self.first,
            chunk: self.chunk,
            processors: self.processors,
            index: self.index,
        }
    }

    /// This side's slot on `processor`'s page (folded into range).
    #[inline(always)]
    fn slot(&self, processor: usize) -> &AtomicUsize {
        crate::arena::slot_at(self.first, self.processors, processor)
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Calls in flight now, over every slot (a snapshot, for traces and tests).
    pub fn in_flight(&self) -> usize {
        (0..self.processors as usize)
            .map(|p| self.slot(p).load(Ordering::Relaxed) >> 1)
            .sum()
    }

    /// How many per-processor slots this rundown has.
    pub fn slot_count(&self) -> usize {
        self.processors as usize
    }

    /// The arena bytes of its slots: one 8-byte word per processor (the
    /// chunk's bookkeeping, shared by the bindings of one chunk, aside).
    pub fn heap_bytes(&self) -> usize {
        self.processors as usize * size_of::<usize>()
    }

    /// Admits one call on the slot of `processor`; the slot, or `None` once
    /// that slot has been closed by the drain. `processor` is a hint: any
    /// value is correct (out of range folds into range), since the guard
    /// releases on the slot it got and the drain reads every slot.
    #[inline(always)]
    fn try_acquire(&self, processor: usize) -> Option<NonNull<AtomicUsize>> {
        let slot = self.slot(processor);
        slot_try_acquire(slot).then(|| NonNull::from(slot))
    }

    /// The release of a call the drain counted: true for the one release that
    /// brings `pending` to zero, which must report the drain.
    ///
    /// # Safety
    ///
    /// `this` is valid on entry and the caller's call was counted by the
    /// drain, so `pending` cannot reach zero before this decrement. Only the
    /// atomic is referenced: another release may bring `pending` to zero and
    /// free the owner right after our decrement, before we return.
    unsafe fn release_counted(this: NonNull<Self>) -> bool {
        // SAFETY: see above.
        let pending = unsafe { &(*this.as_ptr()).pending };
        pending.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

impl Drop for Rundown {
    fn drop(&mut self) {
        // SAFETY: the lease was taken apart once, in `try_new`, and is given
        // back once, here; no slot of it is touched after (every guard of
        // this rundown borrowed its owner, which is being dropped).
        unsafe { self.slots().give_back() };
    }
}

// SAFETY: the slots are atomics in the module's arena, which outlives the
// rundown; nothing in it is tied to a thread.
unsafe impl Send for Rundown {}
// SAFETY: as above: only shared references to atomics are handed out.
unsafe impl Sync for Rundown {}

/// An object that owns a [`Rundown`] and knows how to report its drain.
///
/// # Safety
///
/// Implementors promise that [`RundownOwner::rundown`] always returns the same
/// `Rundown`, stored inside `self`, so that the count that guards `self` is the
/// count that the guard releases.
pub unsafe trait RundownOwner {
    /// The rundown that counts the calls through `self`.
    fn rundown(&self) -> &Rundown;

    /// The processor the calling thread runs on now (any value is safe; one
    /// below the rundown's slot count spreads calls best).
    fn current_processor(&self) -> usize;

    /// Reports the drain: called exactly once, inline, by the release that
    /// drained the rundown after [`Rundown::begin_drain`] answered
    /// [`Drain::Pending`]; possibly at DISPATCH_LEVEL, so it must not block.
    ///
    /// # Safety
    ///
    /// `this` is valid on entry. The callee may cause it to be freed (an NMR
    /// completion runs the cleanup callback inline), so it takes a pointer, not
    /// a reference, and the caller never touches `this` again.
    unsafe fn drained(this: NonNull<Self>);
}

/// Proof that one call is counted in flight on an owner's rundown.
///
/// The only way to reach the owner's peer (it derefs to the owner) and the
/// only way to release: releasing without acquiring cannot be written.
/// Dropping it releases on the slot that admitted it, wherever the thread
/// runs by then, and reports the drain if it was the last call.
/// Never drop it while holding a lock that the drain report might take.
#[must_use = "dropping the guard at once releases the call"]
pub struct RundownGuard<'a, O: RundownOwner> {
    // Pointers, not references: the last release may free the owner (and the
    // slot with it), and no reference to either may be alive then.
    owner: NonNull<O>,
    slot: NonNull<AtomicUsize>,
    _owner: PhantomData<&'a O>,
}

impl<'a, O: RundownOwner> RundownGuard<'a, O> {
    /// Counts one call on `owner`, on the slot of the processor the caller
    /// runs on, or `None` once the drain has closed that slot.
    #[inline(always)]
    pub fn try_acquire(owner: &'a O) -> Option<Self> {
        let slot = owner.rundown().try_acquire(owner.current_processor())?;
        Some(RundownGuard {
            owner: NonNull::from(owner),
            slot,
            _owner: PhantomData,
        })
    }
}

impl<O: RundownOwner> core::ops::Deref for RundownGuard<'_, O> {
    type Target = O;
    fn deref(&self) -> &O {
        // SAFETY: the guard holds one count on the owner's rundown, and an owner
        // is freed only after its drain is reported, which needs this count gone.
        unsafe { self.owner.as_ref() }
    }
}

impl<O: RundownOwner> Drop for RundownGuard<'_, O> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: the slot lives in the module's arena, which outlives every
        // binding; our count keeps the lease (hence the index) ours until this
        // release. Only the atomic is referenced.
        let counted = slot_release(unsafe { self.slot.as_ref() });
        if !counted {
            // Released before the drain closed the slot: the drain never sees
            // this call, and we touch nothing more (the owner may be freed by
            // now).
            return;
        }
        // SAFETY: the drain counted this call, so `pending` cannot reach zero
        // before our decrement, and no report (hence no free) can come before
        // it: the owner is alive. The references end with the statement:
        // only a pointer is kept.
        let rundown = NonNull::from(unsafe { self.owner.as_ref() }.rundown());
        // SAFETY: as above; `release_counted` references only the atomic, so
        // another release freeing the owner right after our decrement is fine.
        let last = unsafe { Rundown::release_counted(rundown) };
        if last {
            // SAFETY: this release brought `pending` to zero after
            // `begin_drain` answered Pending, so it is the one and only drain
            // report; the owner is still valid (only the report can lead to
            // its cleanup) and we never touch it again.
            unsafe { O::drained(self.owner) };
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    extern crate std;
    use core::sync::atomic::AtomicUsize as Counter;

    struct Owner {
        rundown: Rundown,
        /// Dropped after the rundown (fields drop in order): the lease
        /// goes back first.
        _arena: SlotArena,
        reports: Counter,
        /// The processor `current_processor` answers.
        cpu: Counter,
    }

    // SAFETY: `rundown` always returns the field of `self`.
    unsafe impl RundownOwner for Owner {
        fn rundown(&self) -> &Rundown {
            &self.rundown
        }
        fn current_processor(&self) -> usize {
            self.cpu.load(Ordering::Relaxed)
        }
        unsafe fn drained(this: NonNull<Self>) {
            // SAFETY: valid on entry; the tests' owners live on the stack.
            unsafe { this.as_ref() }
                .reports
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn owner_with(slots: usize) -> Owner {
        let arena = SlotArena::new(slots);
        Owner {
            rundown: Rundown::try_new(&arena).unwrap(),
            _arena: arena,
            reports: Counter::new(0),
            cpu: Counter::new(0),
        }
    }

    fn drain(rundown: &Rundown) -> Drain {
        // SAFETY: the tests' owners outlive their drains (they live on the
        // stack or in an `Arc`, and the report does not free them).
        unsafe { Rundown::begin_drain(NonNull::from(rundown)) }
    }

    fn in_flight_on(rundown: &Rundown, processor: usize) -> usize {
        rundown.slot(processor).load(Ordering::Relaxed) >> 1
    }

    fn owner() -> Owner {
        owner_with(4)
    }

    #[test]
    fn drain_with_nothing_in_flight_is_immediate_and_never_reports() {
        let o = owner();
        assert_eq!(drain(&o.rundown), Drain::Drained);
        assert!(RundownGuard::try_acquire(&o).is_none());
        assert_eq!(o.reports.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn drain_with_calls_in_flight_reports_once_on_the_last_release() {
        let o = owner();
        let a = RundownGuard::try_acquire(&o).unwrap();
        let b = RundownGuard::try_acquire(&o).unwrap();
        assert_eq!(o.rundown.in_flight(), 2);
        assert_eq!(drain(&o.rundown), Drain::Pending { in_flight: 2 });
        assert!(
            RundownGuard::try_acquire(&o).is_none(),
            "no new call once draining"
        );
        drop(a);
        assert_eq!(
            o.reports.load(Ordering::Relaxed),
            0,
            "not before the last release"
        );
        drop(b);
        assert_eq!(o.reports.load(Ordering::Relaxed), 1);
        assert_eq!(o.rundown.in_flight(), 0);
    }

    #[test]
    fn releases_before_drain_never_report() {
        let o = owner();
        for _ in 0..3 {
            let g = RundownGuard::try_acquire(&o).unwrap();
            drop(g);
        }
        assert_eq!(o.reports.load(Ordering::Relaxed), 0);
        assert_eq!(drain(&o.rundown), Drain::Drained);
        assert_eq!(o.reports.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn second_drain_is_a_named_no_op() {
        let o = owner();
        let g = RundownGuard::try_acquire(&o).unwrap();
        assert_eq!(drain(&o.rundown), Drain::Pending { in_flight: 1 });
        assert_eq!(drain(&o.rundown), Drain::AlreadyDraining);
        drop(g);
        assert_eq!(o.reports.load(Ordering::Relaxed), 1);
        assert_eq!(drain(&o.rundown), Drain::AlreadyDraining);
        assert_eq!(o.reports.load(Ordering::Relaxed), 1);
        assert!(o.rundown.is_draining());
    }

    #[test]
    fn guard_derefs_to_its_owner() {
        let o = owner();
        let g = RundownGuard::try_acquire(&o).unwrap();
        assert_eq!(g.rundown().in_flight(), 1);
    }

    #[test]
    fn a_call_released_after_migrating_releases_on_its_own_slot() {
        let o = owner_with(2);
        let a = RundownGuard::try_acquire(&o).unwrap(); // on processor 0
        o.cpu.store(1, Ordering::Relaxed); // the caller moves
        let b = RundownGuard::try_acquire(&o).unwrap(); // on processor 1
        drop(a); // releases slot 0, not slot 1
        assert_eq!(in_flight_on(&o.rundown, 0), 0);
        assert_eq!(in_flight_on(&o.rundown, 1), 1);
        assert_eq!(drain(&o.rundown), Drain::Pending { in_flight: 1 });
        drop(b);
        assert_eq!(o.reports.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn calls_on_every_slot_drain_once_on_the_very_last_release() {
        let o = owner_with(3);
        let mut held = std::vec::Vec::new();
        for cpu in [0, 1, 2, 2, 5] {
            o.cpu.store(cpu, Ordering::Relaxed); // 5 is out of range: shares a slot
            held.push(RundownGuard::try_acquire(&o).unwrap());
        }
        assert_eq!(o.rundown.in_flight(), 5);
        assert_eq!(drain(&o.rundown), Drain::Pending { in_flight: 5 });
        for cpu in 0..6 {
            o.cpu.store(cpu, Ordering::Relaxed);
            assert!(RundownGuard::try_acquire(&o).is_none(), "slot {cpu} closed");
        }
        while let Some(g) = held.pop() {
            assert_eq!(o.reports.load(Ordering::Relaxed), 0);
            drop(g);
        }
        assert_eq!(o.reports.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_rundown_is_four_words() {
        assert_eq!(size_of::<Rundown>(), 4 * size_of::<usize>());
    }

    #[test]
    fn memory_is_one_word_per_processor() {
        let o = owner_with(64);
        assert_eq!(o.rundown.slot_count(), 64);
        assert_eq!(o.rundown.heap_bytes(), 64 * 8);
    }

    #[test]
    fn threads_racing_a_drain_report_exactly_once() {
        use std::sync::Arc;
        for round in 0..200 {
            let o = Arc::new(owner_with(1 + round % 3));
            let started = Arc::new(Counter::new(0));
            let workers: std::vec::Vec<_> = (0..3)
                .map(|_| {
                    let (o, started) = (o.clone(), started.clone());
                    std::thread::spawn(move || {
                        let mut admitted = 0;
                        for i in 0..50 {
                            // Spread the calls over the slots, as migrating
                            // callers would.
                            o.cpu.store(i % 3, Ordering::Relaxed);
                            if let Some(g) = RundownGuard::try_acquire(&*o) {
                                admitted += 1;
                                started.fetch_add(1, Ordering::Relaxed);
                                drop(g);
                            }
                        }
                        admitted
                    })
                })
                .collect();
            let pending = matches!(drain(&o.rundown), Drain::Pending { .. });
            for w in workers {
                w.join().unwrap();
            }
            assert_eq!(o.reports.load(Ordering::Relaxed), usize::from(pending));
            assert_eq!(o.rundown.in_flight(), 0);
        }
    }
}
