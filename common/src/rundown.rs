//! The in-flight call counter ("rundown") of one side of one binding.
//!
//! One machine word: `in_flight << 1 | DRAINING`.
//!
//! - [`RundownGuard::try_acquire`]: a compare-and-swap that adds one call only
//!   while `DRAINING` is clear. It never increments once draining has begun, so
//!   the count can reach zero after the drain began only once (the known bug of
//!   "increment first, back out when draining" brings it to zero twice and
//!   completes twice).
//! - Dropping the guard: one `fetch_sub`. The release that takes the word from
//!   `1 call | DRAINING` to `DRAINING` is the one, and the only one, that reports
//!   the drain: it calls [`RundownOwner::drained`] inline, in the releasing
//!   thread, at whatever IRQL that thread runs. No wait, no timer, no work item.
//! - [`Rundown::begin_drain`] (the detach callback): one `fetch_or(DRAINING)`.
//!   If nothing was in flight the rundown is drained at once and no `drained`
//!   call will ever follow; otherwise exactly one later release reports it.
//! - Draining is final: the word never goes back, so a drained rundown cannot
//!   be reused; a second `begin_drain` is a no-op answered with
//!   [`Drain::AlreadyDraining`].
//!
//! Memory orderings, and why:
//! - acquire: `Acquire` on success, so the call that follows cannot be hoisted
//!   above the point where it was admitted; `Relaxed` on failure, since a
//!   refused caller touches nothing.
//! - release: `AcqRel`. `Release` publishes the call's effects; every release is
//!   a read-modify-write of the same word, so they form one release sequence,
//!   and the `Acquire` half of the last one makes every call's effects visible
//!   to the code that reports the drain (which may free the binding).
//! - begin_drain: `AcqRel`. `Acquire` so that a drain that finds the count at
//!   zero sees every earlier call's effects before it answers "drained";
//!   `Release` so that the last releaser sees what the detach path did before it.

use core::marker::PhantomData;
use core::ptr::NonNull;

#[cfg(not(loom))]
use core::sync::atomic::{AtomicUsize, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{AtomicUsize, Ordering};

const DRAINING: usize = 1;
const ONE_CALL: usize = 2;

/// Counts the calls in flight through one side of one binding.
#[derive(Debug)]
pub struct Rundown {
    word: AtomicUsize,
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
        /// How many calls were in flight when the drain began.
        in_flight: usize,
    },
    /// The drain had already begun: nothing changed (a second detach is a
    /// contract violation of the caller; the rundown stays consistent).
    AlreadyDraining,
}

impl Rundown {
    /// A rundown with no call in flight, not draining: ready before the binding
    /// is handed to anyone, so calls can never arrive before it exists.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Rundown {
            word: AtomicUsize::new(0),
        }
    }

    /// A rundown with no call in flight, not draining.
    #[cfg(loom)]
    pub fn new() -> Self {
        Rundown {
            word: AtomicUsize::new(0),
        }
    }

    /// Begins the drain. From now on every acquire fails.
    pub fn begin_drain(&self) -> Drain {
        let before = self.word.fetch_or(DRAINING, Ordering::AcqRel);
        if before & DRAINING != 0 {
            Drain::AlreadyDraining
        } else if before == 0 {
            Drain::Drained
        } else {
            Drain::Pending {
                in_flight: before >> 1,
            }
        }
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.word.load(Ordering::Relaxed) & DRAINING != 0
    }

    /// Calls in flight now (a snapshot, for traces and tests).
    pub fn in_flight(&self) -> usize {
        self.word.load(Ordering::Relaxed) >> 1
    }

    /// Adds one call unless draining. The only way to increment.
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

    /// Removes one call; true when this release drained a draining rundown.
    ///
    /// Only [`RundownGuard`]'s drop calls this, once per successful acquire.
    fn release(&self) -> bool {
        let before = self.word.fetch_sub(ONE_CALL, Ordering::AcqRel);
        debug_assert!(
            before >= ONE_CALL,
            "rundown released more often than acquired"
        );
        before == ONE_CALL | DRAINING
    }
}

impl Default for Rundown {
    fn default() -> Self {
        Self::new()
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
/// Dropping it releases, and reports the drain if it was the last call.
/// Never drop it while holding a lock that the drain report might take.
#[must_use = "dropping the guard at once releases the call"]
pub struct RundownGuard<'a, O: RundownOwner> {
    // A pointer, not a reference: the last release may free the owner, and no
    // reference to it may be alive then.
    owner: NonNull<O>,
    _owner: PhantomData<&'a O>,
}

impl<'a, O: RundownOwner> RundownGuard<'a, O> {
    /// Counts one call on `owner`, or `None` once its drain has begun.
    pub fn try_acquire(owner: &'a O) -> Option<Self> {
        owner.rundown().try_acquire().then(|| RundownGuard {
            owner: NonNull::from(owner),
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
    fn drop(&mut self) {
        // SAFETY: as in `deref`: our count keeps the owner alive until the
        // release below; the reference does not outlive this statement.
        let last = unsafe { self.owner.as_ref() }.rundown().release();
        if last {
            // SAFETY: this release drained the rundown after `begin_drain`
            // answered Pending, so it is the one and only drain report; the
            // owner is still valid (only the report can lead to its cleanup) and
            // we never touch it again.
            unsafe { O::drained(self.owner) };
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicUsize as Counter;

    struct Owner {
        rundown: Rundown,
        reports: Counter,
    }

    // SAFETY: `rundown` always returns the field of `self`.
    unsafe impl RundownOwner for Owner {
        fn rundown(&self) -> &Rundown {
            &self.rundown
        }
        unsafe fn drained(this: NonNull<Self>) {
            // SAFETY: valid on entry; the tests' owners live on the stack.
            unsafe { this.as_ref() }
                .reports
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn owner() -> Owner {
        Owner {
            rundown: Rundown::new(),
            reports: Counter::new(0),
        }
    }

    #[test]
    fn drain_with_nothing_in_flight_is_immediate_and_never_reports() {
        let o = owner();
        assert_eq!(o.rundown.begin_drain(), Drain::Drained);
        assert!(RundownGuard::try_acquire(&o).is_none());
        assert_eq!(o.reports.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn drain_with_calls_in_flight_reports_once_on_the_last_release() {
        let o = owner();
        let a = RundownGuard::try_acquire(&o).unwrap();
        let b = RundownGuard::try_acquire(&o).unwrap();
        assert_eq!(o.rundown.in_flight(), 2);
        assert_eq!(o.rundown.begin_drain(), Drain::Pending { in_flight: 2 });
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
        assert_eq!(o.rundown.begin_drain(), Drain::Drained);
        assert_eq!(o.reports.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn second_drain_is_a_named_no_op() {
        let o = owner();
        let g = RundownGuard::try_acquire(&o).unwrap();
        assert_eq!(o.rundown.begin_drain(), Drain::Pending { in_flight: 1 });
        assert_eq!(o.rundown.begin_drain(), Drain::AlreadyDraining);
        drop(g);
        assert_eq!(o.reports.load(Ordering::Relaxed), 1);
        assert_eq!(o.rundown.begin_drain(), Drain::AlreadyDraining);
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
    fn threads_racing_a_drain_report_exactly_once() {
        extern crate std;
        use std::sync::Arc;
        for _ in 0..200 {
            let o = Arc::new(owner());
            let started = Arc::new(Counter::new(0));
            let workers: std::vec::Vec<_> = (0..3)
                .map(|_| {
                    let (o, started) = (o.clone(), started.clone());
                    std::thread::spawn(move || {
                        let mut admitted = 0;
                        for _ in 0..50 {
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
            let pending = matches!(o.rundown.begin_drain(), Drain::Pending { .. });
            for w in workers {
                w.join().unwrap();
            }
            assert_eq!(o.reports.load(Ordering::Relaxed), usize::from(pending));
            assert_eq!(o.rundown.in_flight(), 0);
        }
    }
}
