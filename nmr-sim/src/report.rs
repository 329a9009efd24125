//! Violation reporting: every misuse is recorded under the state lock, logged,
//! counted, and raised according to [`Policy`] (at once outside callbacks;
//! otherwise deferred to the next safe point, so that a panic never unwinds
//! through module code). Also the IRQL check for blocking calls.

use std::cell::Cell;
use std::sync::Arc;

use nmr_common::ffi::*;

use crate::config::Policy;
use crate::context::{DEPTH, FRAMES, LAST_SIM, WORKER, current_module};
use crate::core::Sim;
use crate::level::{self as irql, Irql};
use crate::log::{NmrEvent, Side};
use crate::running::Mark;
use crate::state::{Resolved, State};
use crate::violation::Violation;

/// Declares that the caller is about to block (wait, sleep).
///
/// At DISPATCH_LEVEL this is a [`Violation::BlockingAtDispatch`],
/// reported to the model the thread is running in: the one whose callback is
/// on this thread's stack, or else the last one this thread called. With no
/// model at all, it panics with the violation's text.
pub fn assert_can_block(what: &'static str) {
    if irql::current() == Irql::Passive {
        return;
    }
    blocking_at_dispatch(what);
}

/// `irql::assert_can_block` at DISPATCH: report to the thread's model.
fn blocking_at_dispatch(what: &'static str) {
    let sim = FRAMES
        .with(|f| f.borrow().last().map(|fr| fr.sim.clone()))
        .or_else(|| LAST_SIM.with(|l| l.borrow().upgrade()));
    match sim {
        Some(inner) => {
            let module = current_module(&inner);
            Sim { inner }.report(Violation::BlockingAtDispatch { what, module });
        }
        None => panic!("{}", Violation::BlockingAtDispatch { what, module: None }),
    }
}

/// Marks an NMR entry point on this thread (and the model's code as
/// running); raises a deferred [`Policy::Panic`] violation when the
/// outermost one ends.
pub(crate) struct Entry<'a> {
    sim: &'a Sim,
    _running: Mark,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let depth = DEPTH.with(|d| {
            d.set(d.get() - 1);
            d.get()
        });
        if depth == 0 && !WORKER.with(Cell::get) && !std::thread::panicking() {
            self.sim.raise_pending();
        }
    }
}

impl Sim {
    /// With [`Policy::Panic`]: panics now with the first violation not yet
    /// raised (one seen on the worker thread or inside a callback).
    pub fn check(&self) {
        if DEPTH.with(Cell::get) == 0 && !WORKER.with(Cell::get) {
            self.raise_pending();
        }
    }

    pub(crate) fn raise_pending(&self) {
        if self.inner.config.policy != Policy::Panic {
            return;
        }
        let pending = self.state().pending_panic.take();
        if let Some(msg) = pending {
            panic!("{msg}");
        }
    }

    pub(crate) fn enter(&self) -> Entry<'_> {
        let outer = DEPTH.with(|d| {
            d.set(d.get() + 1);
            d.get() == 1
        });
        LAST_SIM.with(|l| *l.borrow_mut() = Arc::downgrade(&self.inner));
        let entry = Entry {
            sim: self,
            _running: Mark::model(),
        };
        if outer && !WORKER.with(Cell::get) {
            self.raise_pending();
        }
        entry
    }

    /// `NmrRegister*` with a null characteristics pointer: a named violation.
    pub(crate) fn null_characteristics(&self, side: Side) -> NTSTATUS {
        self.report(Violation::BadCharacteristics {
            side,
            module: "?".into(),
            problem: "the characteristics pointer is null",
        });
        STATUS_INVALID_PARAMETER
    }

    pub(crate) fn report(&self, v: Violation) {
        self.report_from(v, false);
    }

    /// Records a violation; `hook` says it was seen in a hook the modules
    /// call from code of unknown ABI (`incoming_call` runs inside dispatch
    /// functions, typically `extern "system"`), where a panic would abort the
    /// process: its panic always waits for the next safe point.
    pub(crate) fn report_from(&self, v: Violation, hook: bool) {
        let raise = {
            let mut st = self.state();
            self.record(&mut st, v, hook)
        };
        if let Some(msg) = raise {
            panic!("{msg}");
        }
    }

    /// Records a violation while the caller holds the state lock, so that no
    /// thread can see what the misuse led to (a side marked done, a waiter
    /// woken) before the violation is on record. Returns the message to panic
    /// with once the lock is dropped, when the policy says to panic at once.
    pub(crate) fn record(&self, st: &mut State, v: Violation, hook: bool) -> Option<String> {
        let msg = v.to_string();
        let at_once = !hook && DEPTH.with(Cell::get) == 0 && !WORKER.with(Cell::get);
        let panic = self.inner.config.policy == Policy::Panic;
        let module = v.module().unwrap_or("?").to_owned();
        st.log(NmrEvent::Violation, &module, v.handle(), 0);
        st.violations.push(v);
        st.stats.violations += 1;
        if panic && !at_once && st.pending_panic.is_none() {
            st.pending_panic = Some(msg.clone());
        }
        if self.inner.config.echo {
            eprintln!("nmr: VIOLATION {msg}");
        }
        (panic && at_once).then_some(msg)
    }

    /// Reports a resolution failure for `call`; `expected` names the kind.
    pub(crate) fn bad_handle(
        &self,
        r: &Resolved,
        call: &'static str,
        handle: usize,
        expected: &'static str,
    ) {
        let v = match r {
            Resolved::Stale => Violation::StaleHandle { call, handle },
            Resolved::Unknown => Violation::UnknownHandle { call, handle },
            _ => Violation::WrongHandle {
                call,
                handle,
                expected,
            },
        };
        self.report(v);
    }

    // ---- registration -------------------------------------------------
}
