//! [`SimLock`]: the model's raw spin lock for `nmr_common::sync::SpinLock`.

use std::sync::atomic::{AtomicBool, Ordering};

use nmr_common::sync::RawSpinLock;

use crate::level::{self as irql, Irql};

/// A spin flag that also raises the holder's model IRQL to DISPATCH_LEVEL,
/// like `KeAcquireSpinLockRaiseToDpc`: anything that blocks while holding it
/// is caught by [`crate::irql::assert_can_block`].
#[derive(Debug)]
pub struct SimLock {
    held: AtomicBool,
}

// SAFETY: `lock` returns only after an Acquire swap saw the flag clear and set
// it (mutual exclusion, acquire); `unlock` clears it with Release.
unsafe impl RawSpinLock for SimLock {
    type Saved = Irql;

    fn new() -> Self {
        SimLock {
            held: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> Irql {
        let old = irql::raise_to_dispatch();
        let mut spins = 0u32;
        while self.held.swap(true, Ordering::Acquire) {
            while self.held.load(Ordering::Relaxed) {
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(64) {
                    // A host thread holding the flag may be descheduled: let it run.
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        old
    }

    unsafe fn unlock(&self, saved: Irql) {
        self.held.store(false, Ordering::Release);
        irql::lower(saved);
    }
}
