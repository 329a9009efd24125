//! One side of a detaching binding: its detach callback and what it answered
//! (R8), its completion, and the cleanups, run once both sides are done,
//! inside whichever came last, outside the lock, at DISPATCH_LEVEL (R10).

use nmr_common::ffi::*;

use crate::core::Sim;
use crate::level::Irql;
use crate::log::{NmrEvent, Side};
use crate::state::{CleanupJob, Phase, Resolved};
use crate::violation::{Callback, Violation};

impl Sim {
    /// Calls one side's detach callback and records its answer.
    pub(crate) fn detach_side(&self, id: usize, side: Side) {
        let (f, context, name) = {
            let mut st = self.state();
            let Some(b) = st.bindings.get_mut(&id) else {
                return;
            };
            if b.phase != Phase::Detaching || b.end(side).state.called {
                return;
            }
            let end = b.end_mut(side);
            end.state.called = true;
            let call = (end.detach, end.context, end.name.clone(), end.handle);
            st.log(NmrEvent::DetachCalled(side), &call.2, Some(call.3), 0);
            (call.0, call.1, call.2)
        };
        let level = self
            .inner
            .config
            .detach_at_dispatch
            .then_some(Irql::Dispatch);
        let status = self.callout(id, Callback::detach(side), &name, level, || {
            // SAFETY: the module registered this callback, and the binding
            // context it gave at attach stays valid until cleanup, which
            // cannot run before this side is done.
            unsafe { f.call(context.0) }
        });

        let mut violations = Vec::new();
        let mut raise = None;
        let cleanup = {
            let mut st = self.state();
            let b = st
                .bindings
                .get_mut(&id)
                .expect("a detaching side keeps its binding");
            let end = b.end_mut(side);
            end.state.returned = Some(status);
            let (handle, completed) = (end.handle, end.state.completed);
            if status != STATUS_SUCCESS && status != STATUS_PENDING {
                violations.push(Violation::BadDetachStatus {
                    side,
                    module: name.to_string(),
                    binding: handle,
                    status,
                });
            }
            if status != STATUS_PENDING && completed {
                violations.push(Violation::CompleteAfterSuccess {
                    call: complete_name(side),
                    module: name.to_string(),
                    binding: handle,
                });
            }
            let s = &mut st.stats;
            match (side, status == STATUS_PENDING) {
                (Side::Client, true) => s.client_detach_pending += 1,
                (Side::Client, false) => s.client_detach_success += 1,
                (Side::Provider, true) => s.provider_detach_pending += 1,
                (Side::Provider, false) => s.provider_detach_success += 1,
            }
            st.log(NmrEvent::DetachReturned(side), &name, Some(handle), status);
            for v in violations {
                raise = raise.or(self.record(&mut st, v, false));
            }
            st.finish_if_done(id)
        };
        if let Some(msg) = raise {
            panic!("{msg}");
        }
        if let Some(job) = cleanup {
            self.run_cleanup(job);
        }
    }

    pub(crate) fn complete(&self, side: Side, handle: HANDLE) {
        let call = complete_name(side);
        let h = handle as usize;
        let cleanup = {
            let mut st = self.state();
            let id = match st.resolve(h) {
                Resolved::Binding(id, s) if s == side => id,
                r => {
                    drop(st);
                    let expected = match side {
                        Side::Client => "a client binding handle",
                        Side::Provider => "a provider binding handle",
                    };
                    return self.bad_handle(&r, call, h, expected);
                }
            };
            let b = st.bindings.get_mut(&id).expect("resolved");
            let end = b.end_mut(side);
            let module = end.name.to_string();
            let v = if !end.state.called {
                Some(Violation::CompleteBeforeDetach {
                    call,
                    module,
                    binding: h,
                })
            } else if end.state.completed {
                Some(Violation::CompleteTwice {
                    call,
                    module,
                    binding: h,
                })
            } else if end.state.returned.is_some_and(|s| s != STATUS_PENDING) {
                Some(Violation::CompleteAfterSuccess {
                    call,
                    module,
                    binding: h,
                })
            } else {
                None
            };
            if let Some(v) = v {
                drop(st);
                return self.report(v);
            }
            end.state.completed = true;
            let name = end.name.clone();
            match side {
                Side::Client => st.stats.client_completes += 1,
                Side::Provider => st.stats.provider_completes += 1,
            }
            st.log(NmrEvent::Complete(side), &name, Some(h), STATUS_SUCCESS);
            st.finish_if_done(id)
        };
        if let Some(job) = cleanup {
            self.run_cleanup(job);
        }
    }

    /// Both sides are done: run the cleanups (client first), outside the
    /// lock, at DISPATCH_LEVEL; then the binding is gone.
    pub(crate) fn run_cleanup(&self, job: CleanupJob) {
        for (side, f, context, name, handle) in &job.calls {
            let Some(f) = *f else { continue };
            {
                let mut st = self.state();
                match side {
                    Side::Client => st.stats.client_cleanups += 1,
                    Side::Provider => st.stats.provider_cleanups += 1,
                }
                st.log(NmrEvent::Cleanup(*side), name, Some(*handle), 0);
            }
            self.callout(
                job.id,
                Callback::cleanup(*side),
                name,
                Some(Irql::Dispatch),
                || {
                    // SAFETY: both sides completed detachment; the context is
                    // the one the module gave at attach, handed back once.
                    unsafe { f.call(context.0) }
                },
            );
        }
        {
            let mut st = self.state();
            let name = job.calls[0].3.clone();
            st.remove_binding(job.id);
            st.stats.bindings_cleaned_up += 1;
            st.log(NmrEvent::CleanedUp, &name, Some(job.id), STATUS_SUCCESS);
        }
        self.inner.cond.notify_all();
    }
}

pub(crate) fn complete_name(side: Side) -> &'static str {
    match side {
        Side::Client => "NmrClientDetachProviderComplete",
        Side::Provider => "NmrProviderDetachClientComplete",
    }
}
