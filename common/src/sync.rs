//! A spin lock whose raw part the platform supplies.
//!
//! The module's binding lists are touched by cleanup callbacks, which the NMR
//! may run at DISPATCH_LEVEL. A plain spin flag would deadlock there: a
//! PASSIVE thread holding it can be preempted on its processor by DISPATCH
//! code spinning for it. So the raw lock raises the IRQL to DISPATCH_LEVEL
//! while held: `KeAcquireSpinLockRaiseToDpc` on Windows; the model raises its
//! simulated IRQL, so that anything that would block under the lock is caught.

use core::cell::UnsafeCell;
use core::marker::PhantomData;

/// The platform's raw spin lock.
///
/// # Safety
///
/// `lock` must not return while another holder has not called `unlock`
/// (mutual exclusion), and `unlock` must make the holder's writes visible to
/// the next `lock` (acquire/release semantics).
///
/// Callers of `lock`/`unlock` (this crate only: [`SpinLock::with`] and the
/// binding set's per-processor locks) in turn keep the kernel's rules, which
/// an implementation may rely on: a lock is released on the processor, and by
/// the thread, that took it, and locks held together are released in the
/// reverse order they were taken (LIFO), so that each `unlock` restores the
/// IRQL its own `lock` saved and the IRQL never drops to PASSIVE while a lock
/// is still held.
pub unsafe trait RawSpinLock: Send + Sync {
    /// What `lock` saves and `unlock` restores (the previous IRQL).
    type Saved;
    /// A new, unlocked lock.
    fn new() -> Self;
    /// Spins until the lock is held, raising to DISPATCH_LEVEL.
    fn lock(&self) -> Self::Saved;
    /// Releases the lock and restores what `lock` saved.
    ///
    /// # Safety
    ///
    /// The caller holds the lock, took it on this thread, has released every
    /// lock it took after this one (LIFO), and `saved` is what its `lock`
    /// returned.
    unsafe fn unlock(&self, saved: Self::Saved);
}

/// Data protected by a [`RawSpinLock`].
///
/// The data is reached only inside [`SpinLock::with`], for the duration of a
/// closure: there is no guard value, so a lock can be neither released on
/// another thread (nothing to send) nor released out of order (nested `with`
/// calls end innermost first, by construction).
///
/// Like `std::sync::Mutex`, the lock is `Sync` when `T: Send`; the `&mut T`
/// the closure gets can be shared with another thread only if `T: Sync`:
///
/// ```compile_fail
/// use core::cell::Cell;
/// use nmr_common::sync::{FlagLock, SpinLock};
/// let lock = SpinLock::<FlagLock, Cell<u32>>::new(Cell::new(0));
/// lock.with(|cell| {
///     std::thread::scope(|s| {
///         let shared: &Cell<u32> = cell;
///         s.spawn(move || shared.set(1)); // `Cell` is not `Sync`: does not compile
///         shared.set(2);
///     })
/// });
/// ```
///
/// Nor does the data escape the closure:
///
/// ```compile_fail
/// use nmr_common::sync::{FlagLock, SpinLock};
/// let lock = SpinLock::<FlagLock, u32>::new(0);
/// let escaped: &mut u32 = lock.with(|value| value);
/// ```
pub struct SpinLock<R: RawSpinLock, T> {
    raw: R,
    data: UnsafeCell<T>,
}

// SAFETY: the raw lock gives mutual exclusion, so sharing the lock shares `T`
// between threads one at a time: `T: Send` is what that needs.
unsafe impl<R: RawSpinLock, T: Send> Sync for SpinLock<R, T> {}
// SAFETY: moving the lock moves `T`.
unsafe impl<R: RawSpinLock, T: Send> Send for SpinLock<R, T> {}

impl<R: RawSpinLock, T> SpinLock<R, T> {
    /// A new, unlocked lock around `data`.
    pub fn new(data: T) -> Self {
        SpinLock {
            raw: R::new(),
            data: UnsafeCell::new(data),
        }
    }

    /// Spins until held, runs `f` on the data, releases. Keep `f` short;
    /// never block or call out of the module inside it (it runs at
    /// DISPATCH_LEVEL on Windows).
    pub fn with<U>(&self, f: impl FnOnce(&mut T) -> U) -> U {
        let held = Held {
            raw: &self.raw,
            saved: Some(self.raw.lock()),
            _not_send: PhantomData,
        };
        // SAFETY: we hold the lock, so no one else reaches `data`; the borrow
        // ends with `f`, before `held` releases.
        let result = f(unsafe { &mut *self.data.get() });
        drop(held);
        result
    }
}

/// The release of one [`SpinLock::with`], also on unwinding. Private and
/// `!Send`: it never leaves the `with` frame that made it.
struct Held<'a, R: RawSpinLock> {
    raw: &'a R,
    saved: Option<R::Saved>,
    _not_send: PhantomData<*const ()>,
}

impl<R: RawSpinLock> Drop for Held<'_, R> {
    fn drop(&mut self) {
        if let Some(saved) = self.saved.take() {
            // SAFETY: taken by this frame, on this thread; any lock taken
            // inside `f` was released when its own `with` returned (LIFO).
            unsafe { self.raw.unlock(saved) };
        }
    }
}

#[cfg(not(loom))]
use core::sync::atomic::{AtomicBool, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{AtomicBool, Ordering};

/// A portable raw lock with no IRQL: a test-and-test-and-set flag. For host
/// code that has no IRQL to raise (unit tests, loom models); never for the
/// kernel.
pub struct FlagLock(AtomicBool);

// SAFETY: `lock` takes the flag with an Acquire swap and returns only once it
// saw it clear; `unlock` clears it with Release.
unsafe impl RawSpinLock for FlagLock {
    type Saved = ();
    fn new() -> Self {
        FlagLock(AtomicBool::new(false))
    }
    fn lock(&self) {
        while self
            .0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // Loom: retry the read-modify-write (a relaxed load may be shown
            // a stale value over and over) and let the holder run.
            #[cfg(loom)]
            loom::thread::yield_now();
            #[cfg(not(loom))]
            while self.0.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }
    unsafe fn unlock(&self, _: ()) {
        self.0.store(false, Ordering::Release);
    }
}

/// An `UnsafeCell` whose accesses loom checks: under `--cfg loom` it is
/// loom's cell, which reports any two conflicting accesses not ordered by
/// the model's synchronisation; otherwise `core`'s, at no cost.
pub(crate) struct CheckedCell<T> {
    #[cfg(not(loom))]
    cell: UnsafeCell<T>,
    #[cfg(loom)]
    cell: loom::cell::UnsafeCell<T>,
}

impl<T> CheckedCell<T> {
    pub(crate) fn new(value: T) -> Self {
        CheckedCell {
            #[cfg(not(loom))]
            cell: UnsafeCell::new(value),
            #[cfg(loom)]
            cell: loom::cell::UnsafeCell::new(value),
        }
    }

    /// Reads through a pointer valid for the closure's duration.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        #[cfg(not(loom))]
        return f(self.cell.get());
        #[cfg(loom)]
        return self.cell.with(f);
    }

    /// Writes through a pointer valid for the closure's duration.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        #[cfg(not(loom))]
        return f(self.cell.get());
        #[cfg(loom)]
        return self.cell.with_mut(f);
    }
}

/// `KSPIN_LOCK` with `KeAcquireSpinLockRaiseToDpc` / `KeReleaseSpinLock`.
#[cfg(all(target_os = "windows", feature = "kernel"))]
pub struct KernelSpinLock(UnsafeCell<usize>);

#[cfg(all(target_os = "windows", feature = "kernel"))]
mod kernel_lock {
    use super::*;

    #[cfg_attr(
        feature = "raw-dylib",
        link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")
    )]
    #[cfg_attr(not(feature = "raw-dylib"), link(name = "ntoskrnl"))]
    unsafe extern "system" {
        fn KeAcquireSpinLockRaiseToDpc(SpinLock: *mut usize) -> u8;
        fn KeReleaseSpinLock(SpinLock: *mut usize, NewIrql: u8);
    }

    // SAFETY: the kernel spin lock gives mutual exclusion with acquire/release
    // semantics at DISPATCH_LEVEL; the cell is only touched by those calls.
    unsafe impl Send for KernelSpinLock {}
    // SAFETY: as above.
    unsafe impl Sync for KernelSpinLock {}

    // SAFETY: see the kernel documentation of `KeAcquireSpinLockRaiseToDpc`.
    unsafe impl RawSpinLock for KernelSpinLock {
        type Saved = u8;
        fn new() -> Self {
            // A KSPIN_LOCK is initialised by zeroing (`KeInitializeSpinLock`).
            KernelSpinLock(UnsafeCell::new(0))
        }
        fn lock(&self) -> u8 {
            // SAFETY: the cell is a valid, initialised KSPIN_LOCK that does not
            // move while held (it lives inside a pinned module); caller <= DISPATCH.
            unsafe { KeAcquireSpinLockRaiseToDpc(self.0.get()) }
        }
        unsafe fn unlock(&self, saved: u8) {
            // SAFETY: the caller holds the lock and `saved` is the IRQL it returned.
            unsafe { KeReleaseSpinLock(self.0.get(), saved) }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    extern crate std;

    #[test]
    fn lock_excludes_and_publishes() {
        let lock = std::sync::Arc::new(SpinLock::<FlagLock, u64>::new(0));
        let threads: std::vec::Vec<_> = (0..4)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        lock.with(|n| *n += 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(lock.with(|n| *n), 40_000);
    }

    /// Nested locks release innermost first: the model lock below records
    /// the order, and `with` gives no way to write another.
    #[test]
    fn nested_locks_release_in_lifo_order() {
        use std::sync::Mutex;
        static ORDER: Mutex<std::vec::Vec<(&str, u8)>> = Mutex::new(std::vec::Vec::new());
        struct Named(&'static str, FlagLock);
        // SAFETY: delegates to `FlagLock`.
        unsafe impl RawSpinLock for Named {
            type Saved = ();
            fn new() -> Self {
                Named("?", FlagLock::new())
            }
            fn lock(&self) {
                self.1.lock();
                ORDER.lock().unwrap().push((self.0, b'+'));
            }
            unsafe fn unlock(&self, (): ()) {
                ORDER.lock().unwrap().push((self.0, b'-'));
                // SAFETY: forwarded contract.
                unsafe { self.1.unlock(()) }
            }
        }
        let outer = SpinLock {
            raw: Named("outer", FlagLock::new()),
            data: UnsafeCell::new(1),
        };
        let inner = SpinLock {
            raw: Named("inner", FlagLock::new()),
            data: UnsafeCell::new(2),
        };
        let sum = outer.with(|a| inner.with(|b| *a + *b));
        assert_eq!(sum, 3);
        assert_eq!(
            *ORDER.lock().unwrap(),
            [
                ("outer", b'+'),
                ("inner", b'+'),
                ("inner", b'-'),
                ("outer", b'-')
            ]
        );
    }
}
