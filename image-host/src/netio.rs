//! `NETIO.SYS` stand-ins: the nine NMR functions, bound to the model
//! ([`crate::model`]), so every rule `nmr-sim` polices applies to the shipped
//! binary. The images' callbacks are registered as Windows x64 functions
//! (`register_*_win64`); the model then calls them directly. The model runs
//! on the host stack ([`crate::stack::on_host_stack`]): it stands in for
//! `netio.sys`, whose stack use is not the driver's.

use std::ffi::c_void;

use nmr_common::ffi::*;
use nmr_common::nmr::Nmr;
use nmr_sim::Sim;

use crate::image::{ImageCtx, name_at};
use crate::plan::{FaultPlan, Site};
use crate::problems::{self, Kind};
use crate::stack::on_host_stack;

/// The status an injected NMR failure returns.
const INJECTED: NTSTATUS = STATUS_INSUFFICIENT_RESOURCES;
/// The status an injected deregistration failure returns.
const INJECTED_DEREGISTER: NTSTATUS = STATUS_INVALID_PARAMETER;

fn model(call: &str, image: &str) -> Option<Sim> {
    let sim = crate::model::current();
    if sim.is_none() {
        problems::report(Kind::BadCall, image, format!("{call}: no model is bound"));
    }
    sim
}

fn image_name(image: *const ImageCtx) -> &'static str {
    // SAFETY: the thunk passes the image's context, which outlives its mapping.
    unsafe { ImageCtx::from_ptr(image) }.map_or("?", |i| i.name)
}

/// `NmrRegisterClient`; the thunk adds the image in R9.
pub(crate) extern "win64" fn nmr_register_client(
    characteristics: *const NPI_CLIENT_CHARACTERISTICS,
    context: *mut c_void,
    handle: *mut HANDLE,
    image: *const ImageCtx,
) -> NTSTATUS {
    let name = image_name(image);
    if FaultPlan::should_fail(Site::NmrRegisterClient, name) {
        return INJECTED;
    }
    let Some(sim) = model("NmrRegisterClient", name) else {
        return STATUS_UNSUCCESSFUL;
    };
    // SAFETY: the image upholds NmrRegisterClient's contract; its callbacks
    // are Windows x64 functions (it was compiled for x86_64-pc-windows-msvc).
    crate::plan::in_register(|| {
        // SAFETY: as above.
        on_host_stack(|| unsafe { sim.register_client_win64(characteristics, context, handle) })
    })
}

/// `NmrRegisterProvider`; the thunk adds the image in R9.
pub(crate) extern "win64" fn nmr_register_provider(
    characteristics: *const NPI_PROVIDER_CHARACTERISTICS,
    context: *mut c_void,
    handle: *mut HANDLE,
    image: *const ImageCtx,
) -> NTSTATUS {
    let name = image_name(image);
    if FaultPlan::should_fail(Site::NmrRegisterProvider, name) {
        return INJECTED;
    }
    let Some(sim) = model("NmrRegisterProvider", name) else {
        return STATUS_UNSUCCESSFUL;
    };
    // SAFETY: as for nmr_register_client.
    crate::plan::in_register(|| {
        // SAFETY: as above.
        on_host_stack(|| unsafe { sim.register_provider_win64(characteristics, context, handle) })
    })
}

/// `NmrDeregisterClient`; the thunk adds the image in RDX.
pub(crate) extern "win64" fn nmr_deregister_client(
    handle: HANDLE,
    image: *const ImageCtx,
) -> NTSTATUS {
    let name = image_name(image);
    if FaultPlan::should_fail(Site::NmrDeregisterClient, name) {
        return INJECTED_DEREGISTER;
    }
    let Some(sim) = model("NmrDeregisterClient", name) else {
        return STATUS_UNSUCCESSFUL;
    };
    // SAFETY: the image upholds the call's contract; the model checks the handle.
    on_host_stack(|| unsafe { sim.deregister_client(handle) })
}

/// `NmrDeregisterProvider`; the thunk adds the image in RDX.
pub(crate) extern "win64" fn nmr_deregister_provider(
    handle: HANDLE,
    image: *const ImageCtx,
) -> NTSTATUS {
    let name = image_name(image);
    if FaultPlan::should_fail(Site::NmrDeregisterProvider, name) {
        return INJECTED_DEREGISTER;
    }
    let Some(sim) = model("NmrDeregisterProvider", name) else {
        return STATUS_UNSUCCESSFUL;
    };
    // SAFETY: as for nmr_deregister_client.
    on_host_stack(|| unsafe { sim.deregister_provider(handle) })
}

/// `NmrWaitForClientDeregisterComplete`.
pub(crate) extern "win64" fn nmr_wait_for_client_deregister_complete(handle: HANDLE) -> NTSTATUS {
    let Some(sim) = model("NmrWaitForClientDeregisterComplete", "?") else {
        return STATUS_UNSUCCESSFUL;
    };
    // SAFETY: as for nmr_deregister_client.
    on_host_stack(|| unsafe { sim.wait_for_client_deregister_complete(handle) })
}

/// `NmrWaitForProviderDeregisterComplete`.
pub(crate) extern "win64" fn nmr_wait_for_provider_deregister_complete(handle: HANDLE) -> NTSTATUS {
    let Some(sim) = model("NmrWaitForProviderDeregisterComplete", "?") else {
        return STATUS_UNSUCCESSFUL;
    };
    // SAFETY: as for nmr_deregister_client.
    on_host_stack(|| unsafe { sim.wait_for_provider_deregister_complete(handle) })
}

/// `NmrClientAttachProvider`. The calling image is the one that allocated
/// the binding context it passes (or whose image holds it).
pub(crate) extern "win64" fn nmr_client_attach_provider(
    binding: HANDLE,
    client_binding_context: *mut c_void,
    client_dispatch: *const c_void,
    provider_binding_context: *mut *mut c_void,
    provider_dispatch: *mut *const c_void,
) -> NTSTATUS {
    let name = crate::pool::owner_of(client_binding_context as usize)
        .or_else(|| crate::pool::owner_of(client_dispatch as usize))
        .unwrap_or_else(|| name_at(client_dispatch as usize));
    if FaultPlan::should_fail(Site::NmrClientAttachProvider, name) {
        return INJECTED;
    }
    let Some(sim) = model("NmrClientAttachProvider", name) else {
        return STATUS_UNSUCCESSFUL;
    };
    // Each side gets a counted copy of the other's table (dispatch.rs).
    let client_dispatch = crate::dispatch::wrap(client_dispatch);
    // SAFETY: the image upholds the call's contract; the model checks it.
    let status = on_host_stack(|| unsafe {
        sim.client_attach_provider(
            binding,
            client_binding_context,
            client_dispatch,
            provider_binding_context,
            provider_dispatch,
        )
    });
    if nt_success(status) && !provider_dispatch.is_null() {
        // SAFETY: the model wrote the provider's table through the client's
        // out pointer, which stays writable for the call.
        unsafe { *provider_dispatch = crate::dispatch::wrap(*provider_dispatch) };
    }
    status
}

/// `NmrClientDetachProviderComplete`.
pub(crate) extern "win64" fn nmr_client_detach_provider_complete(binding: HANDLE) {
    let Some(sim) = model("NmrClientDetachProviderComplete", "?") else {
        return;
    };
    // SAFETY: the image upholds the call's contract; the model checks it.
    on_host_stack(|| unsafe { sim.client_detach_provider_complete(binding) });
}

/// `NmrProviderDetachClientComplete`.
pub(crate) extern "win64" fn nmr_provider_detach_client_complete(binding: HANDLE) {
    let Some(sim) = model("NmrProviderDetachClientComplete", "?") else {
        return;
    };
    // SAFETY: the image upholds the call's contract; the model checks it.
    on_host_stack(|| unsafe { sim.provider_detach_client_complete(binding) });
}
