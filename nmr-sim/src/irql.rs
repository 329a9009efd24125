//! The model's IRQL: one simulated level per thread.
//!
//! Windows runs code at an interrupt request level; at DISPATCH_LEVEL a thread
//! must not block. The model keeps a per-thread [`Irql`] that it raises while
//! it runs detach and cleanup callbacks, that [`crate::SimLock`] raises while
//! held, and that its blocking entry points (and the modules' own blocking
//! helpers, through [`assert_can_block`]) check.

use std::cell::Cell;

/// A simulated interrupt request level. Only the two levels the NMR contract
/// speaks of exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Irql {
    /// PASSIVE_LEVEL: may block.
    #[default]
    Passive,
    /// DISPATCH_LEVEL: must not block.
    Dispatch,
}

thread_local! {
    static CURRENT: Cell<Irql> = const { Cell::new(Irql::Passive) };
}

/// The current thread's IRQL.
pub fn current() -> Irql {
    CURRENT.with(Cell::get)
}

/// Raises the current thread to DISPATCH_LEVEL (`KeRaiseIrql`); returns the
/// previous level, to hand back to [`lower`].
pub fn raise_to_dispatch() -> Irql {
    CURRENT.with(|c| c.replace(Irql::Dispatch))
}

/// Returns the current thread to `old` (`KeLowerIrql`).
pub fn lower(old: Irql) {
    CURRENT.with(|c| c.set(old));
}

/// Sets the level, returning the previous one (the model's own use).
pub(crate) fn set(level: Irql) -> Irql {
    CURRENT.with(|c| c.replace(level))
}

/// Declares that the caller is about to block (wait, sleep).
///
/// At DISPATCH_LEVEL this is a [`crate::Violation::BlockingAtDispatch`],
/// reported to the model the thread is running in: the one whose callback is
/// on this thread's stack, or else the last one this thread called. With no
/// model at all, it panics with the violation's text.
pub fn assert_can_block(what: &'static str) {
    if current() == Irql::Passive {
        return;
    }
    crate::sim::blocking_at_dispatch(what);
}
