//! Calling into a module: no model lock held, a frame on the thread's stack
//! (for the R4, R9 and deadlock checks), at the IRQL the contract gives the
//! callback, and a check that the callback gave the IRQL back.

use std::sync::Arc;

use crate::context::{FRAMES, Frame};
use crate::core::Sim;
use crate::level::{self as irql, Irql};
use crate::running::{Mark, Running};
use crate::violation::{Callback, Violation};

impl Sim {
    /// Calls a module callback: no model lock held, a frame on the thread's
    /// stack, at `level` (or the current level when `None`); checks that the
    /// callback gave the IRQL back.
    pub(crate) fn callout<R>(
        &self,
        binding: usize,
        callback: Callback,
        module: &Arc<str>,
        level: Option<Irql>,
        f: impl FnOnce() -> R,
    ) -> R {
        let before = irql::current();
        let level = level.unwrap_or(before);
        irql::set(level);
        FRAMES.with(|fr| {
            fr.borrow_mut().push(Frame {
                sim: self.inner.clone(),
                binding,
                callback,
                module: module.clone(),
            })
        });
        let result = {
            let _running = Mark::set(Running::Module(callback.side()));
            f()
        };
        FRAMES.with(|fr| fr.borrow_mut().pop());
        let after = irql::set(before);
        if after != level {
            self.report(Violation::IrqlNotRestored {
                callback,
                module: module.to_string(),
                binding,
            });
        }
        result
    }
}
