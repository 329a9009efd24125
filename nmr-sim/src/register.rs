//! Registrations: `NmrRegister*` (checks the characteristics, records the
//! module, offers every matching peer at once, R1/R2) and `NmrDeregister*`
//! (starts the detach of every attached binding, R7/R11).

use std::collections::BTreeSet;
use std::ffi::c_void;
use std::fmt::Write as _;
use std::sync::Arc;

use nmr_common::ffi::*;

use crate::config::DetachOrder;
use crate::context::current_module;
use crate::core::Sim;
use crate::level::{self as irql, Irql};
use crate::log::{NmrEvent, Side};
use crate::state::{
    AttachFn, BindingRec, CleanupFn, DetachFn, End, Phase, Raw, Registration, Resolved, SideState,
    State,
};
use crate::violation::Violation;

impl Sim {
    pub(crate) fn module_name(st: &State, module_id: *const NPI_MODULEID) -> String {
        if module_id.is_null() {
            return "?".into();
        }
        // SAFETY: the registering module keeps its module id valid until its
        // deregistration wait returns (R11); the model reads it only inside
        // the register call.
        let id = unsafe { *module_id };
        if let Some(g) = id.guid() {
            if let Some(name) = st.names.get(&g) {
                return (*name).to_owned();
            }
            let mut s = String::new();
            let _ = write!(
                s,
                "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-",
                g.Data1, g.Data2, g.Data3, g.Data4[0], g.Data4[1]
            );
            for b in &g.Data4[2..] {
                let _ = write!(s, "{b:02x}");
            }
            s
        } else if let Some(l) = id.luid() {
            format!("luid-{:x}:{:x}", l.HighPart, l.LowPart)
        } else {
            "module-id-?".into()
        }
    }

    /// Checks the registration instance; `Err` names the problem.
    pub(crate) fn check_instance(inst: &NPI_REGISTRATION_INSTANCE) -> Result<(), &'static str> {
        if inst.Version != 0 {
            return Err("registration instance Version is not 0");
        }
        if usize::from(inst.Size) != size_of::<NPI_REGISTRATION_INSTANCE>() {
            return Err("registration instance Size is not sizeof(NPI_REGISTRATION_INSTANCE)");
        }
        if inst.NpiId.is_null() {
            return Err("NpiId is null");
        }
        if inst.ModuleId.is_null() {
            return Err("ModuleId is null");
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn register(
        &self,
        side: Side,
        version: u16,
        length: u16,
        expected_length: usize,
        instance: *const NPI_REGISTRATION_INSTANCE,
        attach: Option<AttachFn>,
        detach: Option<DetachFn>,
        cleanup: Option<CleanupFn>,
        context: *mut c_void,
        handle_out: *mut HANDLE,
    ) -> NTSTATUS {
        let call = match side {
            Side::Client => "NmrRegisterClient",
            Side::Provider => "NmrRegisterProvider",
        };
        if irql::current() != Irql::Passive {
            self.report(Violation::NmrCallAtDispatch {
                call,
                module: current_module(&self.inner),
            });
            return STATUS_UNSUCCESSFUL;
        }
        // SAFETY: `instance` points into the caller's characteristics, valid
        // for the call (checked non-null by the callers of this function).
        let inst = unsafe { &*instance };
        let name: Arc<str> = Self::module_name(&self.state(), inst.ModuleId).into();
        let problem = Self::check_instance(inst).err().or(if version != 0 {
            Some("Version is not 0")
        } else if usize::from(length) != expected_length {
            Some("Length is not the size of the characteristics")
        } else if attach.is_none() {
            Some("the attach callback is null")
        } else if detach.is_none() {
            Some("the detach callback is null")
        } else if handle_out.is_null() {
            Some("the handle pointer is null")
        } else {
            None
        });
        let (Some(attach), Some(detach), None) = (attach, detach, problem) else {
            self.report(Violation::BadCharacteristics {
                side,
                module: name.to_string(),
                problem: problem.unwrap_or("?"),
            });
            return STATUS_INVALID_PARAMETER;
        };
        // SAFETY: checked non-null; valid until the wait returns (R11).
        let npi = unsafe { *inst.NpiId };

        let (handle, offers) = {
            let mut st = self.state();
            let handle = st.alloc_handle();
            let peers: Vec<usize> = st
                .regs
                .iter()
                .filter(|(_, r)| r.side != side && r.npi == npi && !r.deregistering)
                .map(|(h, _)| *h)
                .collect();
            st.regs.insert(
                handle,
                Registration {
                    side,
                    name: name.clone(),
                    npi,
                    context: Raw(context),
                    instance: Raw(instance.cast_mut()),
                    attach,
                    detach,
                    cleanup,
                    deregistering: false,
                    waiting: false,
                    bindings: BTreeSet::new(),
                },
            );
            let mut offers = Vec::new();
            for peer in peers {
                let (c, p) = match side {
                    Side::Client => (handle, peer),
                    Side::Provider => (peer, handle),
                };
                let client_handle = st.alloc_handle();
                let provider_handle = st.alloc_handle();
                let end = |st: &State, reg: usize, h: usize| {
                    let r = &st.regs[&reg];
                    End {
                        handle: h,
                        reg,
                        name: r.name.clone(),
                        context: Raw::null(),
                        dispatch: Raw::null(),
                        detach: r.detach,
                        cleanup: r.cleanup,
                        state: SideState::default(),
                    }
                };
                let rec = BindingRec {
                    phase: Phase::Attaching,
                    attach_called: false,
                    provider_status: None,
                    client: end(&st, c, client_handle),
                    provider: end(&st, p, provider_handle),
                };
                let id = client_handle;
                st.bindings.insert(id, rec);
                st.side_handles.insert(client_handle, (id, Side::Client));
                st.side_handles
                    .insert(provider_handle, (id, Side::Provider));
                for reg in [c, p] {
                    if let Some(r) = st.regs.get_mut(&reg) {
                        r.bindings.insert(id);
                    }
                }
                offers.push(id);
            }
            st.stats.registrations += 1;
            (handle, offers)
        };
        // SAFETY: checked non-null; the caller gives a writable HANDLE. It is
        // written before any attach callback runs, so a module may use it there.
        unsafe { *handle_out = std::ptr::without_provenance_mut(handle) };
        for id in offers {
            self.attach(id);
        }
        self.state().log(
            NmrEvent::Register(side),
            &name,
            Some(handle),
            STATUS_SUCCESS,
        );
        STATUS_SUCCESS
    }

    pub(crate) fn deregister(&self, side: Side, handle: HANDLE) -> NTSTATUS {
        let call = match side {
            Side::Client => "NmrDeregisterClient",
            Side::Provider => "NmrDeregisterProvider",
        };
        let h = handle as usize;
        let jobs = {
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
            let reg = st.regs.get_mut(&h).expect("resolved");
            if reg.deregistering {
                let module = reg.name.to_string();
                drop(st);
                self.report(Violation::DoubleDeregister { module, handle: h });
                return STATUS_INVALID_PARAMETER;
            }
            reg.deregistering = true;
            let name = reg.name.clone();
            let mut ids: Vec<usize> = reg.bindings.iter().copied().collect();
            st.stats.deregistrations += 1;
            st.log(NmrEvent::Deregister(side), &name, Some(h), STATUS_PENDING);
            ids.retain(|id| st.bindings[id].phase == Phase::Attached);
            let order = self.inner.config.detach_order;
            if order == DetachOrder::Random {
                for i in (1..ids.len()).rev() {
                    let j = st.rng.below(i + 1);
                    ids.swap(i, j);
                }
            }
            ids.into_iter()
                .map(|id| (id, st.begin_detach(id, order)))
                .collect::<Vec<_>>()
        };
        self.deliver(jobs);
        STATUS_PENDING
    }
}
