//! The model's processors: how many a per-processor structure gets
//! ([`processor_count`]) and which one a thread runs on
//! ([`current_processor`]), for `Nmr::processor_count` and
//! `Nmr::current_processor`.
//!
//! By default, the host's: its processor count, and on x86_64 Linux one
//! inline `fs:`-relative load of the `cpu_id` the kernel keeps current in the
//! thread's rseq area (glibc registers it and exports where it is:
//! `__rseq_offset` from the thread pointer, `__rseq_size`), as Windows'
//! `KeGetCurrentProcessorIndex` is one `gs:` load. Without a registered
//! rseq area (glibc before 2.35, `glibc.pthread.rseq=0`, another libc) it
//! falls back to `sched_getcpu`. The index is a hint: the rundown releases
//! on the slot it acquired and the drain reads every slot, so a stale or
//! wrong index costs a shared line, never correctness.
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
#[inline]
fn host_current() -> u32 {
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = rseq::cpu_id() {
        return cpu;
    }
    sched_getcpu()
}

#[cfg(all(target_os = "linux", not(miri)))]
#[cold]
fn sched_getcpu() -> u32 {
    unsafe extern "C" {
        // glibc and musl: the processor the calling thread runs on, or -1.
        fn sched_getcpu() -> core::ffi::c_int;
    }
    // SAFETY: no arguments, no preconditions.
    let cpu = unsafe { sched_getcpu() };
    u32::try_from(cpu).unwrap_or_else(|_| thread_index())
}

/// The rseq area's `cpu_id`, read inline.
#[cfg(all(target_os = "linux", target_arch = "x86_64", not(miri)))]
mod rseq {
    use core::ffi::{c_char, c_void};
    use std::sync::atomic::{AtomicIsize, Ordering};

    /// `offsetof(struct rseq, cpu_id)` (linux/rseq.h: `u32 cpu_id_start`,
    /// then `u32 cpu_id`).
    const CPU_ID: isize = 4;
    /// Not looked up yet.
    const UNKNOWN: isize = isize::MIN;
    /// No rseq area registered: use `sched_getcpu`.
    const ABSENT: isize = isize::MIN + 1;

    /// `__rseq_offset + CPU_ID`, or one of the two markers.
    static FROM_THREAD_POINTER: AtomicIsize = AtomicIsize::new(UNKNOWN);

    /// The processor the kernel last ran this thread on (updated on every
    /// return to user space after a migration), or `None` without rseq.
    #[inline(always)]
    pub(super) fn cpu_id() -> Option<u32> {
        let mut offset = FROM_THREAD_POINTER.load(Ordering::Relaxed);
        if offset == UNKNOWN {
            offset = look_up();
        }
        if offset == ABSENT {
            return None;
        }
        let cpu: u32;
        // SAFETY: glibc registered this thread's rseq area at `__rseq_offset`
        // from the thread pointer (the `fs` base on x86_64) for every thread
        // it starts, before any user code runs, and `__rseq_size` says it
        // did. The load reads 4 bytes of that area; no memory is written.
        unsafe {
            core::arch::asm!(
                "mov {cpu:e}, dword ptr fs:[{offset}]",
                cpu = lateout(reg) cpu,
                offset = in(reg) offset,
                options(nostack, readonly, preserves_flags),
            );
        }
        // -1 (not yet registered) or -2 (registration failed): fall back.
        (cpu < u32::MAX - 1).then_some(cpu)
    }

    #[cold]
    fn look_up() -> isize {
        unsafe extern "C" {
            fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
        }
        // RTLD_DEFAULT: the global symbol scope.
        let find = |name: &core::ffi::CStr| {
            // SAFETY: a NUL-terminated name; a null handle is RTLD_DEFAULT.
            unsafe { dlsym(core::ptr::null_mut(), name.as_ptr()) }
        };
        let (offset, size) = (find(c"__rseq_offset"), find(c"__rseq_size"));
        let found = if offset.is_null() || size.is_null() {
            ABSENT
        } else {
            // SAFETY: glibc's `const ptrdiff_t __rseq_offset` and `const
            // unsigned int __rseq_size`, set before `main` and never changed.
            let (offset, size) = unsafe { (*offset.cast::<isize>(), *size.cast::<u32>()) };
            if size == 0 { ABSENT } else { offset + CPU_ID }
        };
        FROM_THREAD_POINTER.store(found, Ordering::Relaxed);
        found
    }
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

    #[cfg(all(target_os = "linux", target_arch = "x86_64", not(miri)))]
    #[test]
    fn the_inline_rseq_read_agrees_with_sched_getcpu() {
        // glibc 2.35 and later register rseq: the inline read must work here.
        let Some(_) = rseq::cpu_id() else {
            panic!("no rseq area: this host's glibc is older than 2.35 or rseq is off");
        };
        // The thread may migrate between the two reads: most of them agree.
        let agree = (0..1000)
            .filter(|_| rseq::cpu_id() == Some(sched_getcpu()))
            .count();
        assert!(agree > 900, "{agree} of 1000 reads agreed");
        assert!(host_current() < host_count() * 64, "a plausible index");
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
