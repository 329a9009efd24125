//! The last release frees the rundown's owner while the drain may still be
//! returning (issue 17, F6): under Miri, no reference to anything but an
//! atomic may be live in the drain or in a release once the count can reach
//! zero. Each round releases on another thread as soon as the drain starts;
//! Miri's random preemption puts that release inside `begin_drain` in some
//! rounds (more with `-Zmiri-many-seeds`). Natively it checks the report
//! count only.

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use nmr_common::arena::SlotArena;
use nmr_common::rundown::{Drain, Rundown, RundownGuard, RundownOwner};

struct Owner {
    rundown: Rundown,
    reports: Arc<AtomicUsize>,
    /// The pointer `Box::into_raw` gave, as the NMR keeps a binding context:
    /// the free goes through it, as a cleanup callback's does.
    context: Arc<AtomicPtr<Owner>>,
}

// SAFETY: `rundown` always returns the field of `self`.
unsafe impl RundownOwner for Owner {
    fn rundown(&self) -> &Rundown {
        &self.rundown
    }
    fn current_processor(&self) -> usize {
        0
    }
    unsafe fn drained(this: NonNull<Self>) {
        // SAFETY: valid on entry; the reference ends with the statement.
        let context = unsafe { this.as_ref() }.context.clone();
        // SAFETY: the context came from `Box::into_raw`, and this is the one
        // drain report: it frees the owner, as a binding's cleanup would.
        let owner = unsafe { Box::from_raw(context.load(Ordering::Relaxed)) };
        owner.reports.fetch_add(1, Ordering::Relaxed);
    }
}

struct SendPtr(NonNull<Owner>);
// SAFETY: the owner is `Sync`; the pointer only travels to the releasing thread.
unsafe impl Send for SendPtr {}

/// Calls in flight when the drain starts, each released on its own thread:
/// every release but the last, and the drain itself, may still be returning
/// when the last release frees the owner.
const RELEASERS: usize = 3;

#[test]
fn the_last_release_may_free_the_owner_while_the_drain_returns() {
    let rounds = if cfg!(miri) { 20 } else { 300 };
    for _ in 0..rounds {
        let slots = SlotArena::new(2);
        let reports = Arc::new(AtomicUsize::new(0));
        let context = Arc::new(AtomicPtr::new(std::ptr::null_mut()));
        let raw = Box::into_raw(Box::new(Owner {
            rundown: Rundown::try_new(&slots).unwrap(),
            reports: reports.clone(),
            context: context.clone(),
        }));
        context.store(raw, Ordering::Relaxed);
        let owner = NonNull::new(raw).unwrap();
        let acquired = Arc::new(AtomicUsize::new(0));
        let draining = Arc::new(AtomicBool::new(false));
        let releasers: Vec<_> = (0..RELEASERS)
            .map(|_| {
                let (ptr, acquired, draining) =
                    (SendPtr(owner), acquired.clone(), draining.clone());
                std::thread::spawn(move || {
                    let ptr = ptr;
                    // SAFETY: the owner is alive until the drain is
                    // reported, which needs this call released first.
                    let guard = RundownGuard::try_acquire(unsafe { ptr.0.as_ref() }).unwrap();
                    acquired.fetch_add(1, Ordering::Release);
                    while !draining.load(Ordering::Acquire) {
                        std::thread::yield_now();
                    }
                    drop(guard); // may be the last release: frees the owner
                })
            })
            .collect();
        while acquired.load(Ordering::Acquire) < RELEASERS {
            std::thread::yield_now();
        }
        draining.store(true, Ordering::Release);
        // A pointer to the rundown, with no reference to the owner (as the
        // detach callback has one to the binding context).
        // SAFETY: alive: the releasers' calls are still counted.
        let rundown = unsafe { NonNull::new_unchecked(&raw mut (*raw).rundown) };
        // SAFETY: alive on entry; not touched after unless Drained, when
        // nothing else frees it.
        let drain = unsafe { Rundown::begin_drain(rundown) };
        if drain == Drain::Drained {
            // SAFETY: nothing else holds it: no report will come.
            let owner = unsafe { Box::from_raw(raw) };
            owner.reports.fetch_add(1, Ordering::Relaxed);
        }
        for releaser in releasers {
            releaser.join().unwrap();
        }
        assert_eq!(reports.load(Ordering::Relaxed), 1, "freed exactly once");
    }
}
