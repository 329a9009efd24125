//! `NmrWaitFor*DeregisterComplete` (R11): blocks until every binding of the
//! registration is gone, after checking that waiting is legal here.

use std::cell::Cell;
use std::sync::PoisonError;
use std::time::Duration;

use nmr_common::ffi::*;

use crate::context::{WORKER, current_module, on_stack};
use crate::core::Sim;
use crate::level::{self as irql, Irql};
use crate::log::{NmrEvent, Side};
use crate::state::Resolved;
use crate::violation::Violation;

/// The longest `NmrWaitFor*DeregisterComplete` (and the model's other test
/// waits) block. The real NMR waits forever; the model panics past this,
/// naming what it waited for, so that a module that never completes a
/// PENDING detach fails its test instead of hanging it.
pub const WAIT_DEADLINE: Duration = Duration::from_secs(120);

impl Sim {
    pub(crate) fn wait(&self, side: Side, handle: HANDLE) -> NTSTATUS {
        let call = match side {
            Side::Client => "NmrWaitForClientDeregisterComplete",
            Side::Provider => "NmrWaitForProviderDeregisterComplete",
        };
        if irql::current() != Irql::Passive {
            self.report(Violation::NmrCallAtDispatch {
                call,
                module: current_module(&self.inner),
            });
            return STATUS_UNSUCCESSFUL;
        }
        let h = handle as usize;
        let mut st = self.state();
        match st.resolve(h) {
            Resolved::Registration(s) if s == side => {}
            r => {
                drop(st);
                let expected = match side {
                    Side::Client => "a client registration handle",
                    Side::Provider => "a provider registration handle",
                };
                self.bad_handle(&r, call, h, expected);
                return STATUS_INVALID_PARAMETER;
            }
        }
        let reg = &st.regs[&h];
        let module = reg.name.to_string();
        let deadlock = !reg.bindings.is_empty()
            && (WORKER.with(Cell::get)
                || reg
                    .bindings
                    .iter()
                    .any(|id| on_stack(&self.inner, *id, &[])));
        let v = if !reg.deregistering {
            Some(Violation::WaitNotDeregistered { module, handle: h })
        } else if reg.waiting {
            Some(Violation::WaitTwice { module, handle: h })
        } else if deadlock {
            Some(Violation::WaitWouldDeadlock { module, handle: h })
        } else {
            None
        };
        if let Some(v) = v {
            drop(st);
            self.report(v);
            return STATUS_INVALID_PARAMETER;
        }
        st.regs.get_mut(&h).expect("resolved").waiting = true;
        st.blocked_waiters += 1;
        self.inner.cond.notify_all();
        let (mut st, done) = self
            .inner
            .cond
            .wait_timeout_while(st, WAIT_DEADLINE, |st| !st.regs[&h].bindings.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        if done.timed_out() {
            let (module, bindings) = (st.regs[&h].name.clone(), st.regs[&h].bindings.len());
            drop(st);
            panic!(
                "{call}({module}): {bindings} binding(s) still not detached and cleaned up \
                 after {WAIT_DEADLINE:?} (a PENDING detach never completed?)"
            );
        }
        st.blocked_waiters -= 1;
        // Forget the registration: nothing of it is touched again.
        let reg = st.regs.remove(&h).expect("only its waiter removes it");
        st.stats.waits += 1;
        st.log(NmrEvent::WaitDone(side), &reg.name, Some(h), STATUS_SUCCESS);
        STATUS_SUCCESS
    }
}
