//! The model as an [`Nmr`]: the nine NMR functions as thin adapters onto the
//! parts that implement them, the trace sink, the delay, and the R9 check on
//! incoming NPI calls.

use std::ffi::c_void;

use nmr_common::ffi::*;
use nmr_common::nmr::Nmr;
use nmr_common::trace::Record;

use crate::abi::CallbackAbi;
use crate::context::{current_module, on_stack};
use crate::core::Sim;
use crate::level::{self as irql, Irql};
use crate::lock::SimLock;
use crate::log::{LogEntry, Side};
use crate::running::Mark;
use crate::state::Resolved;
use crate::violation::{Callback, Violation};

impl Nmr for Sim {
    type Lock = SimLock;

    unsafe fn register_client(
        &self,
        characteristics: *const NPI_CLIENT_CHARACTERISTICS,
        context: *mut c_void,
        handle: *mut HANDLE,
    ) -> NTSTATUS {
        // SAFETY: forwarded; a host module's callbacks are `extern "system"`.
        unsafe { self.register_client_abi(CallbackAbi::System, characteristics, context, handle) }
    }

    unsafe fn deregister_client(&self, handle: HANDLE) -> NTSTATUS {
        let _entry = self.enter();
        self.deregister(Side::Client, handle)
    }

    unsafe fn wait_for_client_deregister_complete(&self, handle: HANDLE) -> NTSTATUS {
        let _entry = self.enter();
        self.wait(Side::Client, handle)
    }

    unsafe fn client_attach_provider(
        &self,
        binding: HANDLE,
        client_binding_context: *mut c_void,
        client_dispatch: *const c_void,
        provider_binding_context: *mut *mut c_void,
        provider_dispatch: *mut *const c_void,
    ) -> NTSTATUS {
        let _entry = self.enter();
        self.client_attach_provider_inner(
            binding,
            client_binding_context,
            client_dispatch,
            provider_binding_context,
            provider_dispatch,
        )
    }

    unsafe fn client_detach_provider_complete(&self, binding: HANDLE) {
        let _entry = self.enter();
        self.complete(Side::Client, binding);
    }

    unsafe fn register_provider(
        &self,
        characteristics: *const NPI_PROVIDER_CHARACTERISTICS,
        context: *mut c_void,
        handle: *mut HANDLE,
    ) -> NTSTATUS {
        // SAFETY: forwarded; a host module's callbacks are `extern "system"`.
        unsafe { self.register_provider_abi(CallbackAbi::System, characteristics, context, handle) }
    }

    unsafe fn deregister_provider(&self, handle: HANDLE) -> NTSTATUS {
        let _entry = self.enter();
        self.deregister(Side::Provider, handle)
    }

    unsafe fn wait_for_provider_deregister_complete(&self, handle: HANDLE) -> NTSTATUS {
        let _entry = self.enter();
        self.wait(Side::Provider, handle)
    }

    unsafe fn provider_detach_client_complete(&self, binding: HANDLE) {
        let _entry = self.enter();
        self.complete(Side::Provider, binding);
    }

    fn trace(&self, record: &Record<'_>) {
        let _running = Mark::model();
        let entry = LogEntry::Module {
            line: record.to_string(),
            event: record.event,
            module: record.module,
            binding: record.binding,
            status: record.status,
        };
        if self.inner.config.echo {
            eprintln!("{entry}");
        }
        self.state().log.push(entry);
    }

    fn delay(&self, micros: u32) {
        let _running = Mark::model();
        if irql::current() != Irql::Passive {
            self.report(Violation::BlockingAtDispatch {
                what: "Nmr::delay",
                module: current_module(&self.inner),
            });
            return;
        }
        std::thread::sleep(std::time::Duration::from_micros(micros.into()));
    }

    fn incoming_call(&self, callee_binding: HANDLE) {
        let _running = Mark::model();
        let h = callee_binding as usize;
        let v = {
            let mut st = self.state();
            st.stats.incoming_calls += 1;
            match st.resolve(h) {
                Resolved::Binding(id, callee_side) => {
                    let b = &st.bindings[&id];
                    let caller_side = callee_side.other();
                    let caller = b.end(caller_side);
                    // A call that arrives while the caller's detach runs on
                    // another thread may have been started before it: only
                    // the two certain cases are violations.
                    let after = caller.state.done()
                        || (caller.state.called
                            && on_stack(&self.inner, id, &[Callback::detach(caller_side)]));
                    after.then(|| Violation::CallAfterDetach {
                        caller: caller.name.to_string(),
                        callee: b.end(callee_side).name.to_string(),
                        binding: h,
                    })
                }
                Resolved::Stale => Some(Violation::StaleHandle {
                    call: "Nmr::incoming_call",
                    handle: h,
                }),
                Resolved::Unknown => Some(Violation::UnknownHandle {
                    call: "Nmr::incoming_call",
                    handle: h,
                }),
                Resolved::Registration(_) => Some(Violation::WrongHandle {
                    call: "Nmr::incoming_call",
                    handle: h,
                    expected: "a binding handle",
                }),
            }
        };
        if let Some(v) = v {
            self.report_from(v, true);
        }
    }
}
