//! The in-flight call counter ("rundown") of one side of one binding: one
//! cache-line-padded slot per processor, so that calls on different
//! processors never write the same cache line.
//!
//! Each slot is one machine word, `in_flight << 1 | DRAINING`, counting the
//! calls admitted on that slot; a shared word, `pending`, is touched only once
//! the drain has begun.
//!
//! - [`RundownGuard::try_acquire`]: a compare-and-swap on the slot of the
//!   processor the caller runs on, that adds one call only while that slot's
//!   `DRAINING` is clear. It never increments a draining slot, so no refused
//!   caller can disturb a count the drain has already read (the known bug of
//!   "increment first, back out when draining" does).
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
//! - acquire: `Acquire` on success, so the call that follows cannot be hoisted
//!   above the point where it was admitted; `Relaxed` on failure, since a
//!   refused caller touches nothing.
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

use crate::binding::OutOfMemory;
use crate::percpu::PerProcessor;

#[cfg(not(loom))]
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const DRAINING: usize = 1;
const ONE_CALL: usize = 2;

/// One processor's count of calls in flight: `in_flight << 1 | DRAINING`.
#[derive(Debug)]
pub struct Slot {
    word: AtomicUsize,
}

impl Slot {
    fn new() -> Self {
        Slot {
            word: AtomicUsize::new(0),
        }
    }

    /// Adds one call unless this slot is draining. The only way to increment.
    #[inline(always)]
    fn try_acquire(&self) -> bool {
        let mut current = self.word.load(Ordering::Relaxed);
        loop {
            if current & DRAINING != 0 {
                return false;
            }
            let Some(next) = current.checked_add(ONE_CALL) else {
                return false; // 2^63 calls in flight: refuse rather than wrap.
            };
            match self.word.compare_exchange_weak(
                current,
                next,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// Removes one call; true when the drain had closed this slot first, that
    /// is, when the drain counted this call.
    ///
    /// Only [`RundownGuard`]'s drop calls this, once per successful acquire,
    /// on the slot that admitted the call.
    #[inline(always)]
    fn release(&self) -> bool {
        let before = self.word.fetch_sub(ONE_CALL, Ordering::Release);
        debug_assert!(
            before >= ONE_CALL,
            "rundown slot released more often than acquired"
        );
        before & DRAINING != 0
    }

    fn in_flight(&self) -> usize {
        self.word.load(Ordering::Relaxed) >> 1
    }
}

/// Counts the calls in flight through one side of one binding, per processor.
#[derive(Debug)]
pub struct Rundown {
    slots: PerProcessor<Slot>,
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
    /// A rundown with one slot per processor (`processors`, at least one), no
    /// call in flight, not draining: made before the binding is handed to
    /// anyone, so calls can never arrive before it exists. `Err` when the heap
    /// is exhausted.
    pub fn try_new(processors: usize) -> Result<Self, OutOfMemory> {
        Ok(Rundown {
            slots: PerProcessor::try_new(processors, Slot::new)?,
            pending: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
        })
    }

    /// Begins the drain: closes every slot, so that from its return on every
    /// acquire fails. O(slots), never blocks.
    ///
    /// # Safety
    ///
    /// Beginning the drain arms the report: when this answers
    /// [`Drain::Pending`], the last release calls the owner's
    /// [`RundownOwner::drained`], which may complete a detach and free the
    /// owner. So the caller is the one party entitled to start that: for an
    /// NMR binding, its detach callback (a drain begun anywhere else would
    /// complete a detach that never ran). The owner must stay valid until
    /// this returns.
    pub unsafe fn begin_drain(&self) -> Drain {
        if self.draining.swap(true, Ordering::AcqRel) {
            return Drain::AlreadyDraining;
        }
        let mut total: usize = 0;
        for slot in self.slots.iter() {
            let before = slot.word.fetch_or(DRAINING, Ordering::AcqRel);
            total = total.wrapping_add(before >> 1);
        }
        if total == 0 {
            // No call was in flight on any slot when it closed: no release
            // will see `DRAINING`, and `pending` stays untouched.
            return Drain::Drained;
        }
        // After this add, `self` may be freed at any moment by the last
        // release: only locals are used below.
        let before = self.pending.fetch_add(total, Ordering::AcqRel);
        if before.wrapping_add(total) == 0 {
            // Every counted call returned while we were closing the slots.
            Drain::Drained
        } else {
            Drain::Pending { in_flight: total }
        }
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Calls in flight now, over every slot (a snapshot, for traces and tests).
    pub fn in_flight(&self) -> usize {
        self.slots.iter().map(Slot::in_flight).sum()
    }

    /// How many per-processor slots this rundown has.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The heap bytes of its slots (the rest lives inside its owner).
    pub fn heap_bytes(&self) -> usize {
        self.slots.heap_bytes()
    }

    /// Admits one call on the slot of `processor`; the slot, or `None` once
    /// that slot has been closed by the drain.
    #[inline(always)]
    fn try_acquire(&self, processor: usize) -> Option<NonNull<Slot>> {
        let slot = self.slots.at(self.slots.index_of(processor));
        slot.try_acquire().then(|| NonNull::from(slot))
    }

    /// The release of a call the drain counted: true for the one release that
    /// brings `pending` to zero, which must report the drain.
    fn release_counted(&self) -> bool {
        self.pending.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

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
    slot: NonNull<Slot>,
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
        // SAFETY: our count keeps the owner, and so its slots, alive until this
        // release; the reference does not outlive this statement.
        let counted = unsafe { self.slot.as_ref() }.release();
        if !counted {
            // Released before the drain closed the slot: the drain never sees
            // this call, and we touch nothing more (the owner may be freed by
            // now).
            return;
        }
        // SAFETY: the drain counted this call, so `pending` cannot reach zero
        // before the decrement below, and no report (hence no free) can come
        // before it: the owner is alive. The reference ends with the statement.
        let last = unsafe { self.owner.as_ref() }.rundown().release_counted();
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

    /// Begins a drain on a test owner's rundown.
    fn begin_drain(rundown: &Rundown) -> Drain {
        // SAFETY: the test owners' `drained` only records the report (it completes
        // no detach and frees nothing), so any caller may begin their drain.
        unsafe { rundown.begin_drain() }
    }

    struct Owner {
        rundown: Rundown,
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
        Owner {
            rundown: Rundown::try_new(slots).unwrap(),
            reports: Counter::new(0),
            cpu: Counter::new(0),
        }
    }

    fn owner() -> Owner {
        owner_with(4)
    }

    #[test]
    fn drain_with_nothing_in_flight_is_immediate_and_never_reports() {
        let o = owner();
        assert_eq!(begin_drain(&o.rundown), Drain::Drained);
        assert!(RundownGuard::try_acquire(&o).is_none());
        assert_eq!(o.reports.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn drain_with_calls_in_flight_reports_once_on_the_last_release() {
        let o = owner();
        let a = RundownGuard::try_acquire(&o).unwrap();
        let b = RundownGuard::try_acquire(&o).unwrap();
        assert_eq!(o.rundown.in_flight(), 2);
        assert_eq!(begin_drain(&o.rundown), Drain::Pending { in_flight: 2 });
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
        assert_eq!(begin_drain(&o.rundown), Drain::Drained);
        assert_eq!(o.reports.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn second_drain_is_a_named_no_op() {
        let o = owner();
        let g = RundownGuard::try_acquire(&o).unwrap();
        assert_eq!(begin_drain(&o.rundown), Drain::Pending { in_flight: 1 });
        assert_eq!(begin_drain(&o.rundown), Drain::AlreadyDraining);
        drop(g);
        assert_eq!(o.reports.load(Ordering::Relaxed), 1);
        assert_eq!(begin_drain(&o.rundown), Drain::AlreadyDraining);
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
        assert_eq!(o.rundown.slots.at(0).in_flight(), 0);
        assert_eq!(o.rundown.slots.at(1).in_flight(), 1);
        assert_eq!(begin_drain(&o.rundown), Drain::Pending { in_flight: 1 });
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
        assert_eq!(begin_drain(&o.rundown), Drain::Pending { in_flight: 5 });
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
    fn memory_is_one_padded_slot_per_processor() {
        let o = owner_with(64);
        assert_eq!(o.rundown.slot_count(), 64);
        assert_eq!(o.rundown.heap_bytes(), 64 * crate::percpu::SLOT_BYTES);
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
            let pending = matches!(begin_drain(&o.rundown), Drain::Pending { .. });
            for w in workers {
                w.join().unwrap();
            }
            assert_eq!(o.reports.load(Ordering::Relaxed), usize::from(pending));
            assert_eq!(o.rundown.in_flight(), 0);
        }
    }
}
