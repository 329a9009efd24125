//! `NETIO.SYS` stand-ins: the nine NMR functions, bound to the model
//! ([`crate::model`]), so every rule `nmr-sim` polices applies to the shipped
//! binary. The images' callbacks are registered as Windows x64 functions
//! (`register_*_win64`), each through an entry thunk
//! ([`crate::stack::entry_thunk`]) so that the model's call runs on a kernel
//! stack; the model gets a copy of the characteristics holding the thunks,
//! kept until the image is unmapped. The model runs on the host stack
//! ([`crate::stack::on_host_stack`]): it stands in for `netio.sys`, whose
//! frames are charged as [`crate::stack::NETIO_FRAME_BUDGET`].

use std::ffi::c_void;
use std::sync::Mutex;

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

/// The copies of characteristics the model holds, with the image base of
/// their callbacks (dropped when that image is unmapped).
#[allow(dead_code)] // held for the model, never read here
enum Kept {
    Client(Box<NPI_CLIENT_CHARACTERISTICS>),
    Provider(Box<NPI_PROVIDER_CHARACTERISTICS>),
}
// SAFETY: the copies are plain data the model reads; their pointers lead
// into the image (ids, GUIDs), which is immutable while registered.
unsafe impl Send for Kept {}
static COPIES: Mutex<Vec<(usize, Kept)>> = Mutex::new(Vec::new());

/// Keeps a copy for the model, until the image at `base` is unmapped.
fn keep(base: usize, copy: Kept) {
    COPIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((base, copy));
}

/// Drops the copies whose callbacks are in the image mapped at `base`.
pub(crate) fn forget_image(base: usize) {
    COPIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(b, _)| *b != base);
}

/// The entry thunk for a callback in an image (itself otherwise).
fn thunked<F: Copy>(f: Option<F>) -> Option<F> {
    let f = f?;
    // SAFETY: F is a function pointer type (the callback's), pointer-sized.
    let addr = unsafe { std::mem::transmute_copy::<F, usize>(&f) };
    if crate::registry::image_at(addr).is_none() {
        return Some(f);
    }
    let thunk = crate::stack::entry_thunk(addr)?;
    // SAFETY: the thunk takes and returns what the callback does.
    Some(unsafe { std::mem::transmute_copy::<usize, F>(&thunk) })
}

/// The base of the image holding the first callback, or 0.
fn callback_image(f: Option<usize>) -> usize {
    f.and_then(crate::registry::image_at).map_or(0, |i| i.base)
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
    // SAFETY: null or the image's characteristics (NmrRegisterClient's contract).
    let characteristics = match unsafe { characteristics.as_ref() } {
        Some(c) => {
            let copy = Box::new(NPI_CLIENT_CHARACTERISTICS {
                ClientAttachProvider: thunked(c.ClientAttachProvider),
                ClientDetachProvider: thunked(c.ClientDetachProvider),
                ClientCleanupBindingContext: thunked(c.ClientCleanupBindingContext),
                ..*c
            });
            let ptr: *const NPI_CLIENT_CHARACTERISTICS = &*copy;
            let base = callback_image(c.ClientAttachProvider.map(|f| f as usize));
            keep(base, Kept::Client(copy));
            ptr
        }
        None => characteristics,
    };
    // SAFETY: the image upholds NmrRegisterClient's contract; its callbacks
    // are Windows x64 functions (it was compiled for x86_64-pc-windows-msvc),
    // and so are the entry thunks standing for them.
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
    // SAFETY: null or the image's characteristics (NmrRegisterProvider's contract).
    let characteristics = match unsafe { characteristics.as_ref() } {
        Some(c) => {
            let copy = Box::new(NPI_PROVIDER_CHARACTERISTICS {
                ProviderAttachClient: thunked(c.ProviderAttachClient),
                ProviderDetachClient: thunked(c.ProviderDetachClient),
                ProviderCleanupBindingContext: thunked(c.ProviderCleanupBindingContext),
                ..*c
            });
            let ptr: *const NPI_PROVIDER_CHARACTERISTICS = &*copy;
            let base = callback_image(c.ProviderAttachClient.map(|f| f as usize));
            keep(base, Kept::Provider(copy));
            ptr
        }
        None => characteristics,
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
