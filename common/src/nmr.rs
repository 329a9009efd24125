//! The seam between the module logic and the registrar it runs on.
//!
//! [`Nmr`] is the nine NMR functions of `netioddk.h`, plus the three kernel
//! services the portable logic needs (a DISPATCH-safe spin lock, a trace sink,
//! a PASSIVE delay). `Netio` implements it in Windows kernel images (the
//! `kernel` feature) by calling `netio.sys` and `ntoskrnl.exe`;
//! `nmr_sim::Sim` implements it on any host as a model.
//! Module logic is generic over `N: Nmr` and keeps its own `N`.

use core::ffi::c_void;

use crate::ffi::*;
use crate::sync::RawSpinLock;
use crate::trace::Record;

/// The NMR, as seen by one module.
///
/// The functions mirror `netioddk.h` one for one; their safety conditions are
/// the NMR's own (docs/nmr-contract.md, "Rules"). IRQL requirements are in brackets.
///
/// `Clone` because a completion must not borrow the module: the code that
/// reports a drain clones the `N` it needs onto its stack first, since the
/// module may be gone by the time the completion call returns.
pub trait Nmr: Clone + Send + Sync + 'static {
    /// The spin lock for data that DISPATCH_LEVEL callbacks touch.
    type Lock: RawSpinLock;

    /// `NmrRegisterClient` (PASSIVE). Attach callbacks may run before it returns.
    ///
    /// # Safety
    /// `characteristics` and everything it points to, and `context`, stay valid
    /// until the deregistration wait returns; `handle` is writable.
    unsafe fn register_client(
        &self,
        characteristics: *const NPI_CLIENT_CHARACTERISTICS,
        context: *mut c_void,
        handle: *mut HANDLE,
    ) -> NTSTATUS;

    /// `NmrDeregisterClient` (<= DISPATCH).
    ///
    /// # Safety
    /// `handle` came from `register_client` and was not deregistered before.
    unsafe fn deregister_client(&self, handle: HANDLE) -> NTSTATUS;

    /// `NmrWaitForClientDeregisterComplete` (< DISPATCH).
    ///
    /// # Safety
    /// `handle` came from `register_client` and was deregistered.
    unsafe fn wait_for_client_deregister_complete(&self, handle: HANDLE) -> NTSTATUS;

    /// `NmrClientAttachProvider` (PASSIVE), inside `ClientAttachProvider` only.
    ///
    /// # Safety
    /// `binding` is the handle given to the running `ClientAttachProvider`;
    /// `client_binding_context` and `client_dispatch` stay valid until cleanup;
    /// the two out pointers are writable.
    unsafe fn client_attach_provider(
        &self,
        binding: HANDLE,
        client_binding_context: *mut c_void,
        client_dispatch: *const c_void,
        provider_binding_context: *mut *mut c_void,
        provider_dispatch: *mut *const c_void,
    ) -> NTSTATUS;

    /// `NmrClientDetachProviderComplete` (<= DISPATCH).
    ///
    /// # Safety
    /// Once per binding, only after `ClientDetachProvider` returned (or is about
    /// to return) `STATUS_PENDING`. The binding context may be freed inside.
    unsafe fn client_detach_provider_complete(&self, binding: HANDLE);

    /// `NmrRegisterProvider` (PASSIVE). Attach callbacks may run before it returns.
    ///
    /// # Safety
    /// As for [`Nmr::register_client`].
    unsafe fn register_provider(
        &self,
        characteristics: *const NPI_PROVIDER_CHARACTERISTICS,
        context: *mut c_void,
        handle: *mut HANDLE,
    ) -> NTSTATUS;

    /// `NmrDeregisterProvider` (<= DISPATCH).
    ///
    /// # Safety
    /// As for [`Nmr::deregister_client`].
    unsafe fn deregister_provider(&self, handle: HANDLE) -> NTSTATUS;

    /// `NmrWaitForProviderDeregisterComplete` (< DISPATCH).
    ///
    /// # Safety
    /// As for [`Nmr::wait_for_client_deregister_complete`].
    unsafe fn wait_for_provider_deregister_complete(&self, handle: HANDLE) -> NTSTATUS;

    /// `NmrProviderDetachClientComplete` (<= DISPATCH).
    ///
    /// # Safety
    /// As for [`Nmr::client_detach_provider_complete`].
    unsafe fn provider_detach_client_complete(&self, binding: HANDLE);

    /// Emits one trace line. Must not block: it runs at any IRQL.
    fn trace(&self, record: &Record<'_>);

    /// Waits `micros` microseconds (PASSIVE only): the provider's latency knob.
    fn delay(&self, micros: u32);

    /// How many processors the system can have, at least 1: the slot count of
    /// a per-processor rundown (any IRQL). On Windows,
    /// `KeQueryMaximumProcessorCountEx(ALL_PROCESSOR_GROUPS)`, which counts
    /// every group and the processors that may be hot-added later, so that
    /// [`Nmr::current_processor`] stays below it.
    fn processor_count(&self) -> u32;

    /// The index of the processor the calling thread runs on, below
    /// [`Nmr::processor_count`] (any IRQL). On Windows x64, what wdm.h's
    /// `KeGetCurrentProcessorIndex` does: one `gs:`-relative load
    /// ([`crate::ffi::KPCR_PROCESSOR_INDEX_OFFSET`]), no call; elsewhere
    /// `KeGetCurrentProcessorNumberEx(NULL)`. A thread below DISPATCH_LEVEL
    /// may move to another processor right after: a hint to pick a slot with,
    /// never an identity (a guard remembers its slot instead, the drain reads
    /// every slot, and an index out of range folds into range).
    fn current_processor(&self) -> u32;

    /// A dispatch function reports that the peer called it through the binding
    /// whose handle (on the callee's side) is `callee_binding`. The real NMR
    /// never sees NPI calls, so on Windows this does nothing and compiles away;
    /// the model checks that the caller's detach had not begun (R9).
    #[inline(always)]
    fn incoming_call(&self, callee_binding: HANDLE) {
        let _ = callee_binding;
    }
}

/// The real NMR: `netio.sys`, and `ntoskrnl.exe` for the lock and the delay.
#[cfg(all(target_os = "windows", feature = "kernel"))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Netio;

/// The processor index in the KPCR that `gs` points at: what wdm.h's AMD64
/// `KeGetCurrentProcessorIndex` does, one load at
/// [`crate::ffi::KPCR_PROCESSOR_INDEX_OFFSET`]. `Netio::current_processor`
/// on Windows x64; also the rundown benchmark's, over the image host's
/// stand-in KPCR, so that it times the images' own instruction.
///
/// # Safety
///
/// `gs` points at a KPCR, or at anything with at least
/// `KPCR_PROCESSOR_INDEX_OFFSET + 4` readable bytes: in kernel mode it always
/// does; in user mode only where a stand-in was put behind it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn kpcr_processor_index() -> u32 {
    let index: u32;
    // SAFETY: see the function's contract. A 4-byte read, no write, no
    // stack. Not `pure`: the thread may move between two reads, so each call
    // reads again.
    unsafe {
        core::arch::asm!(
            "mov {index:e}, dword ptr gs:[{offset}]",
            index = lateout(reg) index,
            offset = const crate::ffi::KPCR_PROCESSOR_INDEX_OFFSET,
            options(nostack, readonly, preserves_flags),
        );
    }
    index
}

#[cfg(all(target_os = "windows", feature = "kernel"))]
mod netio_impl {
    use super::*;
    use crate::ffi::netio as sys;

    #[cfg_attr(
        feature = "raw-dylib",
        link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")
    )]
    #[cfg_attr(not(feature = "raw-dylib"), link(name = "ntoskrnl"))]
    unsafe extern "system" {
        fn KeDelayExecutionThread(WaitMode: i8, Alertable: u8, Interval: *const i64) -> NTSTATUS;
        fn KeQueryMaximumProcessorCountEx(GroupNumber: u16) -> u32;
    }

    // Where wdm.h has no inline form (not x64), the exported function.
    #[cfg(not(target_arch = "x86_64"))]
    #[cfg_attr(
        feature = "raw-dylib",
        link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")
    )]
    #[cfg_attr(not(feature = "raw-dylib"), link(name = "ntoskrnl"))]
    unsafe extern "system" {
        // `ProcNumber` is a `PPROCESSOR_NUMBER`; we always pass NULL.
        fn KeGetCurrentProcessorNumberEx(ProcNumber: *mut c_void) -> u32;
    }

    /// `ALL_PROCESSOR_GROUPS` (wdm.h): count the processors of every group.
    const ALL_PROCESSOR_GROUPS: u16 = 0xffff;

    impl Nmr for Netio {
        type Lock = crate::sync::KernelSpinLock;

        unsafe fn register_client(
            &self,
            characteristics: *const NPI_CLIENT_CHARACTERISTICS,
            context: *mut c_void,
            handle: *mut HANDLE,
        ) -> NTSTATUS {
            // SAFETY: the caller upholds `NmrRegisterClient`'s contract.
            unsafe { sys::NmrRegisterClient(characteristics, context, handle) }
        }
        unsafe fn deregister_client(&self, handle: HANDLE) -> NTSTATUS {
            // SAFETY: the caller upholds `NmrDeregisterClient`'s contract.
            unsafe { sys::NmrDeregisterClient(handle) }
        }
        unsafe fn wait_for_client_deregister_complete(&self, handle: HANDLE) -> NTSTATUS {
            // SAFETY: the caller upholds the wait's contract.
            unsafe { sys::NmrWaitForClientDeregisterComplete(handle) }
        }
        unsafe fn client_attach_provider(
            &self,
            binding: HANDLE,
            client_binding_context: *mut c_void,
            client_dispatch: *const c_void,
            provider_binding_context: *mut *mut c_void,
            provider_dispatch: *mut *const c_void,
        ) -> NTSTATUS {
            // SAFETY: the caller upholds `NmrClientAttachProvider`'s contract.
            unsafe {
                sys::NmrClientAttachProvider(
                    binding,
                    client_binding_context,
                    client_dispatch,
                    provider_binding_context,
                    provider_dispatch,
                )
            }
        }
        unsafe fn client_detach_provider_complete(&self, binding: HANDLE) {
            // SAFETY: the caller upholds the completion's contract.
            unsafe { sys::NmrClientDetachProviderComplete(binding) }
        }
        unsafe fn register_provider(
            &self,
            characteristics: *const NPI_PROVIDER_CHARACTERISTICS,
            context: *mut c_void,
            handle: *mut HANDLE,
        ) -> NTSTATUS {
            // SAFETY: the caller upholds `NmrRegisterProvider`'s contract.
            unsafe { sys::NmrRegisterProvider(characteristics, context, handle) }
        }
        unsafe fn deregister_provider(&self, handle: HANDLE) -> NTSTATUS {
            // SAFETY: the caller upholds `NmrDeregisterProvider`'s contract.
            unsafe { sys::NmrDeregisterProvider(handle) }
        }
        unsafe fn wait_for_provider_deregister_complete(&self, handle: HANDLE) -> NTSTATUS {
            // SAFETY: the caller upholds the wait's contract.
            unsafe { sys::NmrWaitForProviderDeregisterComplete(handle) }
        }
        unsafe fn provider_detach_client_complete(&self, binding: HANDLE) {
            // SAFETY: the caller upholds the completion's contract.
            unsafe { sys::NmrProviderDetachClientComplete(binding) }
        }
        fn trace(&self, record: &Record<'_>) {
            crate::trace::emit(record);
        }
        fn delay(&self, micros: u32) {
            // Negative: relative time, in 100 ns units.
            let interval = -(i64::from(micros) * 10);
            // SAFETY: `interval` is a valid LARGE_INTEGER for the call's
            // duration; KernelMode (0), not alertable; the caller is at PASSIVE.
            unsafe { KeDelayExecutionThread(0, 0, &interval) };
        }
        fn processor_count(&self) -> u32 {
            // SAFETY: no pointer arguments; callable at any IRQL.
            unsafe { KeQueryMaximumProcessorCountEx(ALL_PROCESSOR_GROUPS) }.max(1)
        }
        /// A hint: the caller folds it into range, and correctness never
        /// depends on it (see [`Nmr::current_processor`]).
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        fn current_processor(&self) -> u32 {
            // SAFETY: in kernel mode `gs` is the current processor's KPCR at
            // any IRQL, and the dword at this offset is its index (wdm.h's
            // `KeGetCurrentProcessorIndex`, pinned in `ffi`).
            unsafe { super::kpcr_processor_index() }
        }
        #[cfg(not(target_arch = "x86_64"))]
        #[inline(always)]
        fn current_processor(&self) -> u32 {
            // SAFETY: NULL asks for the system-wide index only (no
            // group-relative number is written); callable at any IRQL.
            unsafe { KeGetCurrentProcessorNumberEx(core::ptr::null_mut()) }
        }
    }
}
