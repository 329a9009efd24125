//! Attaching: the offer to the client (`ClientAttachProvider`), the
//! provider's side inside `NmrClientAttachProvider` (R3, R4), and the
//! outcome: a binding, a decline, a late comer detached at once (R6), or the
//! recovery from a client that fails after its provider attached (R3).

use std::ffi::c_void;
use std::ptr;
use std::sync::Arc;

use nmr_common::ffi::*;

use crate::context::{FRAMES, current_module};
use crate::core::Sim;
use crate::level::{self as irql, Irql};
use crate::log::{NmrEvent, Side};
use crate::state::{AttachFn, Phase, Raw, Resolved};
use crate::violation::{Callback, Violation};

impl Sim {
    /// Offers binding `id` to its client, and settles the outcome.
    pub(crate) fn attach(&self, id: usize) {
        let offer = {
            let mut st = self.state();
            let Some(b) = st.bindings.get(&id) else {
                return;
            };
            let (c, p) = (&st.regs[&b.client.reg], &st.regs[&b.provider.reg]);
            if c.deregistering || p.deregistering {
                // One of them began deregistering before the offer: withdraw it.
                let name = b.client.name.clone();
                st.remove_binding(id);
                st.log(NmrEvent::AttachSkipped, &name, Some(id), STATUS_SUCCESS);
                drop(st);
                self.inner.cond.notify_all();
                return;
            }
            let AttachFn::Client(f) = c.attach else {
                unreachable!("client registration with a provider attach callback")
            };
            let offer = (f, c.context, p.instance, b.client.name.clone());
            st.stats.attach_offers += 1;
            st.log(NmrEvent::AttachOffered, &offer.3, Some(id), STATUS_SUCCESS);
            offer
        };
        let (f, context, provider_instance, name) = offer;
        let status = self.callout(id, Callback::ClientAttachProvider, &name, None, || {
            // SAFETY: the client registered this callback and context and keeps
            // them valid until its wait returns; the provider's instance is
            // valid likewise, and the binding handle is the client's own.
            unsafe {
                f.call(
                    std::ptr::without_provenance_mut(id),
                    context.0,
                    provider_instance.0,
                )
            }
        });

        let mut violation = None;
        // The binding to detach now, and the side to call first.
        let mut late = None;
        let raise;
        {
            let mut st = self.state();
            let b = st
                .bindings
                .get_mut(&id)
                .expect("an attaching binding stays");
            let provider_ok = b.provider_status.is_some_and(nt_success);
            let attached = provider_ok && nt_success(status);
            if !attached && (provider_ok || nt_success(status)) {
                violation = Some(Violation::AttachStatusMismatch {
                    module: name.to_string(),
                    binding: id,
                    client_status: status,
                    provider_status: b.provider_status,
                });
            }
            if attached {
                b.phase = Phase::Attached;
                st.stats.bindings_made += 1;
                st.log(NmrEvent::Attached, &name, Some(id), status);
                let b = &st.bindings[&id];
                let deregistering =
                    st.regs[&b.client.reg].deregistering || st.regs[&b.provider.reg].deregistering;
                if deregistering {
                    // R6: a module began deregistering while this attach ran.
                    late = Some(st.begin_detach(id, self.inner.config.detach_order));
                }
            } else if provider_ok {
                // R3: the client failed after NmrClientAttachProvider
                // succeeded. The provider holds a binding: detach its side
                // (honouring PENDING and its Complete) and clean it up, as the
                // real NMR does. The client's side gets neither: it is done
                // already, with no cleanup, and has freed its own context.
                st.stats.attach_declines += 1;
                st.log(NmrEvent::AttachDeclined, &name, Some(id), status);
                let b = st
                    .bindings
                    .get_mut(&id)
                    .expect("an attaching binding stays");
                b.client.state.called = true;
                b.client.state.returned = Some(STATUS_SUCCESS);
                b.client.cleanup = None;
                b.phase = Phase::Detaching;
                late = Some(Side::Provider);
            } else {
                st.remove_binding(id);
                st.stats.attach_declines += 1;
                st.log(NmrEvent::AttachDeclined, &name, Some(id), status);
            }
            raise = violation.and_then(|v| self.record(&mut st, v, false));
        }
        self.inner.cond.notify_all();
        // Detach first: a raised violation must not skip the recovery.
        if let Some(first) = late {
            self.deliver(vec![(id, first)]);
        }
        if let Some(msg) = raise {
            panic!("{msg}");
        }
    }

    // ---- detach -------------------------------------------------------

    /// `NmrClientAttachProvider` (R4): only inside `ClientAttachProvider` for
    /// this very binding; calls `ProviderAttachClient` synchronously and
    /// returns its status, with the provider's context and dispatch written
    /// to the client's out slots on success.
    pub(crate) fn client_attach_provider_inner(
        &self,
        binding: HANDLE,
        client_binding_context: *mut c_void,
        client_dispatch: *const c_void,
        provider_binding_context: *mut *mut c_void,
        provider_dispatch: *mut *const c_void,
    ) -> NTSTATUS {
        const CALL: &str = "NmrClientAttachProvider";
        if irql::current() != Irql::Passive {
            self.report(Violation::NmrCallAtDispatch {
                call: CALL,
                module: current_module(&self.inner),
            });
            return STATUS_UNSUCCESSFUL;
        }
        let h = binding as usize;
        // R4: the innermost callback of this model on this thread must be
        // ClientAttachProvider for this very binding.
        let inside = FRAMES.with(|f| {
            f.borrow()
                .iter()
                .rev()
                .find(|fr| Arc::ptr_eq(&fr.sim, &self.inner))
                .is_some_and(|fr| fr.callback == Callback::ClientAttachProvider && fr.binding == h)
        });
        let offer = {
            let mut st = self.state();
            let r = st.resolve(h);
            let id = match r {
                Resolved::Binding(id, Side::Client) => id,
                r => {
                    drop(st);
                    self.bad_handle(&r, CALL, h, "a client binding handle");
                    return STATUS_INVALID_PARAMETER;
                }
            };
            let b = st.bindings.get_mut(&id).expect("resolved");
            let module = b.client.name.to_string();
            let v = if !inside || b.phase != Phase::Attaching {
                Some(Violation::AttachOutsideCallback {
                    module: current_module(&self.inner),
                    binding: h,
                })
            } else if b.attach_called {
                Some(Violation::AttachTwice { module, binding: h })
            } else if provider_binding_context.is_null() || provider_dispatch.is_null() {
                Some(Violation::AttachNullOut { module, binding: h })
            } else {
                None
            };
            if let Some(v) = v {
                drop(st);
                self.report(v);
                return STATUS_INVALID_PARAMETER;
            }
            b.attach_called = true;
            b.client.context = Raw(client_binding_context);
            b.client.dispatch = Raw(client_dispatch.cast_mut());
            let (preg, creg) = (b.provider.reg, b.client.reg);
            let (provider_handle, provider_name) = (b.provider.handle, b.provider.name.clone());
            let (preg, creg) = (&st.regs[&preg], &st.regs[&creg]);
            let AttachFn::Provider(f) = preg.attach else {
                unreachable!("provider registration with a client attach callback")
            };
            let offer = (
                f,
                preg.context,
                creg.instance,
                provider_handle,
                provider_name,
            );
            st.log(NmrEvent::ProviderAttachOffered, &offer.4, Some(offer.3), 0);
            offer
        };
        let (f, provider_context, client_instance, provider_handle, name) = offer;
        let mut out_context: *mut c_void = ptr::null_mut();
        let mut out_dispatch: *const c_void = ptr::null();
        let status = self.callout(h, Callback::ProviderAttachClient, &name, None, || {
            // SAFETY: the provider registered this callback and context, the
            // client's instance is valid until its wait returns, and the two
            // out pointers are this frame's locals.
            unsafe {
                f.call(
                    std::ptr::without_provenance_mut(provider_handle),
                    provider_context.0,
                    client_instance.0,
                    client_binding_context,
                    client_dispatch,
                    &mut out_context,
                    &mut out_dispatch,
                )
            }
        });
        let accepted = nt_success(status);
        {
            let mut st = self.state();
            let b = st.bindings.get_mut(&h).expect("an attaching binding stays");
            b.provider_status = Some(status);
            if accepted {
                b.provider.context = Raw(out_context);
                b.provider.dispatch = Raw(out_dispatch.cast_mut());
                st.stats.attaches += 1;
            }
            st.log(
                NmrEvent::ProviderAttachReturned,
                &name,
                Some(provider_handle),
                status,
            );
        }
        if accepted {
            if out_dispatch.is_null() {
                self.report(Violation::ProviderAttachNoDispatch {
                    module: name.to_string(),
                    binding: provider_handle,
                });
            }
            // SAFETY: checked non-null above; the client gave writable slots.
            unsafe {
                *provider_binding_context = out_context;
                *provider_dispatch = out_dispatch;
            }
        }
        status
    }
}
