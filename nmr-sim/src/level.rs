//! The model's IRQL: one simulated level per thread (the bottom layer: it
//! depends on nothing else of the model; the public face is [`crate::irql`]).
//!
//! Windows runs code at an interrupt request level; at DISPATCH_LEVEL a thread
//! must not block. The model keeps a per-thread [`Irql`] that it raises while
//! it runs detach and cleanup callbacks, that [`crate::SimLock`] raises while
//! held, and that its blocking entry points (and the modules' own blocking
//! helpers, through [`crate::irql::assert_can_block`]) check.

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
