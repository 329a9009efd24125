//! The calling convention of a registration's callbacks.
//!
//! A module compiled for the host registers `extern "system"` callbacks, which
//! on Linux is the System V convention. The shipped `.sys` images, run on
//! Linux by the image host (`nmr-image-host`), were compiled for Windows x64:
//! their callbacks follow the Windows x64 convention even though the
//! characteristics' field types say `extern "system"`. Such a module registers
//! through [`Sim::register_client_win64`] / [`Sim::register_provider_win64`],
//! and the model then calls its attach, detach and cleanup callbacks as
//! `extern "win64"`. Everything else (the NMR functions the images call, the
//! NPI calls between images) needs no conversion: the image host binds the
//! former to `extern "win64"` stand-ins, and the latter are Windows x64 on both
//! sides.

use std::ffi::c_void;

use nmr_common::ffi::*;

use crate::core::Sim;
use crate::log::Side;
use crate::state::AttachFn;

/// How the model calls one registration's callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallbackAbi {
    /// As declared: `extern "system"` (host-compiled modules).
    System,
    /// The Windows x64 convention (`.sys` images loaded on an x86_64 host).
    #[cfg(target_arch = "x86_64")]
    Win64,
}

/// A registration's `ClientAttachProvider`, with its convention.
#[derive(Clone, Copy)]
pub(crate) struct ClientAttach(NPI_CLIENT_ATTACH_PROVIDER_FN, CallbackAbi);
/// A registration's `ProviderAttachClient`, with its convention.
#[derive(Clone, Copy)]
pub(crate) struct ProviderAttach(NPI_PROVIDER_ATTACH_CLIENT_FN, CallbackAbi);
/// A detach callback (either side), with its convention.
#[derive(Clone, Copy)]
pub(crate) struct DetachFn(NPI_CLIENT_DETACH_PROVIDER_FN, CallbackAbi);
/// A cleanup callback (either side), with its convention.
#[derive(Clone, Copy)]
pub(crate) struct CleanupFn(NPI_CLIENT_CLEANUP_BINDING_CONTEXT_FN, CallbackAbi);

impl ClientAttach {
    /// Calls it.
    ///
    /// # Safety
    /// As for the callback itself (docs/nmr-contract.md, "Rules").
    pub(crate) unsafe fn call(
        self,
        binding: HANDLE,
        context: *mut c_void,
        provider: *const NPI_REGISTRATION_INSTANCE,
    ) -> NTSTATUS {
        match self.1 {
            // SAFETY: the caller upholds the callback's contract.
            CallbackAbi::System => unsafe { (self.0)(binding, context, provider) },
            #[cfg(target_arch = "x86_64")]
            CallbackAbi::Win64 => {
                type F = unsafe extern "win64" fn(
                    HANDLE,
                    *mut c_void,
                    *const NPI_REGISTRATION_INSTANCE,
                ) -> NTSTATUS;
                // SAFETY: registered through `register_client_win64`: the
                // pointer is a Windows x64 function of this very signature.
                let f = unsafe { std::mem::transmute::<NPI_CLIENT_ATTACH_PROVIDER_FN, F>(self.0) };
                // SAFETY: the caller upholds the callback's contract.
                unsafe { f(binding, context, provider) }
            }
        }
    }
}

impl ProviderAttach {
    /// Calls it.
    ///
    /// # Safety
    /// As for the callback itself (docs/nmr-contract.md, "Rules").
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn call(
        self,
        binding: HANDLE,
        context: *mut c_void,
        client: *const NPI_REGISTRATION_INSTANCE,
        client_binding_context: *mut c_void,
        client_dispatch: *const c_void,
        provider_binding_context: *mut *mut c_void,
        provider_dispatch: *mut *const c_void,
    ) -> NTSTATUS {
        match self.1 {
            // SAFETY: the caller upholds the callback's contract.
            CallbackAbi::System => unsafe {
                (self.0)(
                    binding,
                    context,
                    client,
                    client_binding_context,
                    client_dispatch,
                    provider_binding_context,
                    provider_dispatch,
                )
            },
            #[cfg(target_arch = "x86_64")]
            CallbackAbi::Win64 => {
                type F = unsafe extern "win64" fn(
                    HANDLE,
                    *mut c_void,
                    *const NPI_REGISTRATION_INSTANCE,
                    *mut c_void,
                    *const c_void,
                    *mut *mut c_void,
                    *mut *const c_void,
                ) -> NTSTATUS;
                // SAFETY: registered through `register_provider_win64`: the
                // pointer is a Windows x64 function of this very signature.
                let f = unsafe { std::mem::transmute::<NPI_PROVIDER_ATTACH_CLIENT_FN, F>(self.0) };
                // SAFETY: the caller upholds the callback's contract.
                unsafe {
                    f(
                        binding,
                        context,
                        client,
                        client_binding_context,
                        client_dispatch,
                        provider_binding_context,
                        provider_dispatch,
                    )
                }
            }
        }
    }
}

impl DetachFn {
    /// Calls it.
    ///
    /// # Safety
    /// As for the callback itself (docs/nmr-contract.md, "Rules").
    pub(crate) unsafe fn call(self, binding_context: *mut c_void) -> NTSTATUS {
        match self.1 {
            // SAFETY: the caller upholds the callback's contract.
            CallbackAbi::System => unsafe { (self.0)(binding_context) },
            #[cfg(target_arch = "x86_64")]
            CallbackAbi::Win64 => {
                type F = unsafe extern "win64" fn(*mut c_void) -> NTSTATUS;
                // SAFETY: registered through a `*_win64` entry point: a Windows
                // x64 function of this very signature.
                let f = unsafe { std::mem::transmute::<NPI_CLIENT_DETACH_PROVIDER_FN, F>(self.0) };
                // SAFETY: the caller upholds the callback's contract.
                unsafe { f(binding_context) }
            }
        }
    }
}

impl CleanupFn {
    /// Calls it.
    ///
    /// # Safety
    /// As for the callback itself (docs/nmr-contract.md, "Rules").
    pub(crate) unsafe fn call(self, binding_context: *mut c_void) {
        match self.1 {
            // SAFETY: the caller upholds the callback's contract.
            CallbackAbi::System => unsafe { (self.0)(binding_context) },
            #[cfg(target_arch = "x86_64")]
            CallbackAbi::Win64 => {
                type F = unsafe extern "win64" fn(*mut c_void);
                // SAFETY: registered through a `*_win64` entry point: a Windows
                // x64 function of this very signature.
                let f = unsafe {
                    std::mem::transmute::<NPI_CLIENT_CLEANUP_BINDING_CONTEXT_FN, F>(self.0)
                };
                // SAFETY: the caller upholds the callback's contract.
                unsafe { f(binding_context) }
            }
        }
    }
}

impl Sim {
    /// `NmrRegisterClient` for a module whose callbacks follow `abi`.
    ///
    /// # Safety
    /// As for [`nmr_common::nmr::Nmr::register_client`]; with
    /// [`CallbackAbi::Win64`], every callback is a Windows x64 function.
    pub(crate) unsafe fn register_client_abi(
        &self,
        abi: CallbackAbi,
        characteristics: *const NPI_CLIENT_CHARACTERISTICS,
        context: *mut c_void,
        handle: *mut HANDLE,
    ) -> NTSTATUS {
        let _entry = self.enter();
        // SAFETY: null or the caller's characteristics, valid until the wait returns.
        let Some(c) = (unsafe { characteristics.as_ref() }) else {
            return self.null_characteristics(Side::Client);
        };
        self.register(
            Side::Client,
            c.Version,
            c.Length,
            size_of::<NPI_CLIENT_CHARACTERISTICS>(),
            &raw const c.ClientRegistrationInstance,
            c.ClientAttachProvider
                .map(|f| AttachFn::Client(ClientAttach(f, abi))),
            c.ClientDetachProvider.map(|f| DetachFn(f, abi)),
            c.ClientCleanupBindingContext.map(|f| CleanupFn(f, abi)),
            context,
            handle,
        )
    }

    /// `NmrRegisterProvider` for a module whose callbacks follow `abi`.
    ///
    /// # Safety
    /// As for [`nmr_common::nmr::Nmr::register_provider`]; with
    /// [`CallbackAbi::Win64`], every callback is a Windows x64 function.
    pub(crate) unsafe fn register_provider_abi(
        &self,
        abi: CallbackAbi,
        characteristics: *const NPI_PROVIDER_CHARACTERISTICS,
        context: *mut c_void,
        handle: *mut HANDLE,
    ) -> NTSTATUS {
        let _entry = self.enter();
        // SAFETY: null or the caller's characteristics, valid until the wait returns.
        let Some(c) = (unsafe { characteristics.as_ref() }) else {
            return self.null_characteristics(Side::Provider);
        };
        self.register(
            Side::Provider,
            c.Version,
            c.Length,
            size_of::<NPI_PROVIDER_CHARACTERISTICS>(),
            &raw const c.ProviderRegistrationInstance,
            c.ProviderAttachClient
                .map(|f| AttachFn::Provider(ProviderAttach(f, abi))),
            c.ProviderDetachClient.map(|f| DetachFn(f, abi)),
            c.ProviderCleanupBindingContext.map(|f| CleanupFn(f, abi)),
            context,
            handle,
        )
    }

    /// `NmrRegisterClient` for a module compiled for Windows x64 (a `.sys`
    /// image loaded on an x86_64 host): the model calls its attach, detach and
    /// cleanup callbacks with the Windows x64 convention.
    ///
    /// # Safety
    /// As for [`nmr_common::nmr::Nmr::register_client`], and every callback in
    /// `characteristics` is an `extern "win64"` function of its declared
    /// signature.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn register_client_win64(
        &self,
        characteristics: *const NPI_CLIENT_CHARACTERISTICS,
        context: *mut c_void,
        handle: *mut HANDLE,
    ) -> NTSTATUS {
        // SAFETY: forwarded; the caller vouches for the convention.
        unsafe { self.register_client_abi(CallbackAbi::Win64, characteristics, context, handle) }
    }

    /// `NmrRegisterProvider` for a module compiled for Windows x64; see
    /// [`Sim::register_client_win64`].
    ///
    /// # Safety
    /// As for [`nmr_common::nmr::Nmr::register_provider`], and every callback
    /// in `characteristics` is an `extern "win64"` function of its declared
    /// signature.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn register_provider_win64(
        &self,
        characteristics: *const NPI_PROVIDER_CHARACTERISTICS,
        context: *mut c_void,
        handle: *mut HANDLE,
    ) -> NTSTATUS {
        // SAFETY: forwarded; the caller vouches for the convention.
        unsafe { self.register_provider_abi(CallbackAbi::Win64, characteristics, context, handle) }
    }
}
