//! What the model knows about the calling thread: the module callbacks it
//! is running on this thread (innermost last), how deep the thread is in NMR
//! entry points, whether it is a model worker, and the last model it called.
//! The R4, R9 and wait-deadlock checks and the violation policy read it.

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Weak};

use crate::core::Inner;
use crate::violation::Callback;

/// A model callback on a thread's stack.
pub(crate) struct Frame {
    pub(crate) sim: Arc<Inner>,
    pub(crate) binding: usize,
    pub(crate) callback: Callback,
    pub(crate) module: Arc<str>,
}

thread_local! {
    /// The module callbacks the model is running on this thread, innermost last.
    pub(crate) static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
    /// How deep this thread is in NMR entry points.
    pub(crate) static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// This is a model worker thread.
    pub(crate) static WORKER: Cell<bool> = const { Cell::new(false) };
    /// The last model this thread called (for `assert_can_block`).
    pub(crate) static LAST_SIM: RefCell<Weak<Inner>> = const { RefCell::new(Weak::new()) };
}

/// The module whose callback is innermost on this thread, for `sim`.
pub(crate) fn current_module(sim: &Arc<Inner>) -> Option<String> {
    FRAMES.with(|f| {
        f.borrow()
            .iter()
            .rev()
            .find(|fr| Arc::ptr_eq(&fr.sim, sim))
            .map(|fr| fr.module.to_string())
    })
}

/// Whether a callback of `binding` (one of `kinds`, any if empty) of `sim` is
/// on this thread's stack.
pub(crate) fn on_stack(sim: &Arc<Inner>, binding: usize, kinds: &[Callback]) -> bool {
    FRAMES.with(|f| {
        f.borrow().iter().any(|fr| {
            Arc::ptr_eq(&fr.sim, sim)
                && fr.binding == binding
                && (kinds.is_empty() || kinds.contains(&fr.callback))
        })
    })
}
