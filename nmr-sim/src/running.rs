//! Whose code a thread is running: the model's, a module's (and which side
//! of the NPI), or neither (the harness that drives them). Tools that charge
//! work to a module read it, as Driver Verifier charges each pool allocation
//! to the driver that made it: testbed's fault injection fails the
//! allocations of module code, one at a time, and never the model's.
//!
//! The model marks its own entry points (every `Nmr` function it implements,
//! its delivery threads) and each callout into a module; a harness marks its
//! direct calls into a module (load, the module's worker rounds, unload)
//! with [`as_module`]. A module's call into its peer's dispatch table runs
//! under the caller's mark: the model does not see it.

use std::cell::Cell;

use crate::log::Side;

/// Whose code runs on a thread, as far as the model knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Running {
    /// Neither the model nor a module: the harness (the default).
    Harness,
    /// The model itself.
    Model,
    /// A module of that side: inside one of its callbacks, or a direct call
    /// from the harness marked with [`as_module`].
    Module(Side),
}

thread_local! {
    static RUNNING: Cell<Running> = const { Cell::new(Running::Harness) };
}

/// Whose code this thread runs now. Never allocates, so a global allocator
/// may call it.
pub fn running() -> Running {
    RUNNING.try_with(Cell::get).unwrap_or(Running::Harness)
}

/// Runs `f`, a direct call into a module of `side` (its load, its worker's
/// rounds, its unload), marked as that module's code.
pub fn as_module<R>(side: Side, f: impl FnOnce() -> R) -> R {
    let _mark = Mark::set(Running::Module(side));
    f()
}

/// Marks this thread as running `who` until dropped, then restores the mark
/// it replaced.
pub(crate) struct Mark(Running);

impl Mark {
    pub(crate) fn set(who: Running) -> Mark {
        Mark(RUNNING.replace(who))
    }

    /// The model's own code.
    pub(crate) fn model() -> Mark {
        Mark::set(Running::Model)
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        RUNNING.set(self.0);
    }
}
