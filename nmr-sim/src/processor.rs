//! The model's processors: how many a per-processor structure gets
//! ([`processor_count`]) and which one a thread runs on
//! ([`current_processor`]), for `Nmr::processor_count` and
//! `Nmr::current_processor`.
//!
//! By default, the host's: its processor count, and `sched_getcpu` on Linux
//! (a read of the rseq area glibc keeps per thread: a few nanoseconds).
//! [`crate::Config::processors`] forces a count instead; the index is then a
//! per-thread number, handed out in thread-creation order, modulo the count:
//! `n` threads spread over `n` slots whatever the host's scheduler does, so a
//! test can make calls acquire and release on distinct slots. Threads do not
//! migrate in that mode; the rundown's own tests and loom models cover that.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};

/// The slot count for `forced` (the configuration's knob) or the host.
pub(crate) fn processor_count(forced: Option<u32>) -> u32 {
    match forced {
        Some(n) => n.max(1),
        None => host_count(),
    }
}

/// The processor the calling thread runs on, below [`processor_count`].
#[inline]
pub(crate) fn current_processor(forced: Option<u32>) -> u32 {
    let (index, count) = match forced {
        Some(n) => (thread_index(), n.max(1)),
        None => (host_current(), host_count()),
    };
    below(index, count)
}

/// `index` brought below `count`. The division runs only when the index is
/// out of range (a cpuset whose processor numbers exceed its size, or more
/// threads than forced slots): on the call path it is one compare.
#[inline]
fn below(index: u32, count: u32) -> u32 {
    if index < count { index } else { index % count }
}

/// Under Miri, two (with per-thread indices): it cannot read the host's
/// count (std reads cgroup files, which Miri's isolation refuses).
#[cfg(miri)]
fn host_count() -> u32 {
    2
}

#[cfg(not(miri))]
fn host_count() -> u32 {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    match COUNT.load(Ordering::Relaxed) {
        0 => {
            let n = std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
            COUNT.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
}

/// A number per thread, in the order threads first ask.
fn thread_index() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    thread_local! {
        static INDEX: Cell<Option<u32>> = const { Cell::new(None) };
    }
    INDEX.with(|index| match index.get() {
        Some(i) => i,
        None => {
            let i = NEXT.fetch_add(1, Ordering::Relaxed);
            index.set(Some(i));
            i
        }
    })
}

#[cfg(all(target_os = "linux", not(miri)))]
fn host_current() -> u32 {
    unsafe extern "C" {
        // glibc and musl: the processor the calling thread runs on, or -1.
        fn sched_getcpu() -> core::ffi::c_int;
    }
    // SAFETY: no arguments, no preconditions.
    let cpu = unsafe { sched_getcpu() };
    u32::try_from(cpu).unwrap_or_else(|_| thread_index())
}

/// Elsewhere (and under Miri, which has no `sched_getcpu`): a per-thread index.
#[cfg(not(all(target_os = "linux", not(miri))))]
fn host_current() -> u32 {
    thread_index()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_stay_below_the_count() {
        for forced in [None, Some(1), Some(3), Some(0)] {
            let count = processor_count(forced);
            assert!(count >= 1);
            assert!(current_processor(forced) < count, "{forced:?}");
        }
    }

    #[test]
    fn a_forced_count_spreads_threads_over_the_slots() {
        let seen: Vec<u32> = (0..4)
            .map(|_| std::thread::spawn(|| current_processor(Some(4))))
            .map(|t| t.join().unwrap())
            .collect();
        // Four fresh threads take four consecutive numbers (other tests may
        // take numbers in between, so only distinctness is certain when none
        // did; at least two distinct slots always).
        let mut distinct = seen.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() >= 2, "{seen:?}");
    }
}
