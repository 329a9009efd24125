//! The kernel surface from windows-drivers-rs: `wdk-sys` bindings, linked
//! through the WDK's import libraries (wdk-sys names them, wdk-build finds
//! them), and wdk-panic's panic handler.
//!
//! Compiled only on a Windows host with the WDK (the `wdk` feature); the
//! Linux CI cannot build it. It is the twin of `km_raw.rs`: the same public
//! items with the same signatures, each a thin wrapper of one kernel function
//! (`tests/twins.rs` checks it). Policy (access masks, pool flags and tag,
//! which failures to trace) is in `shell.rs`, shared by both.

use core::ffi::c_void;

use nmr_common::ffi::{HANDLE, NTSTATUS};
use wdk_sys::ntddk::{
    DbgPrintEx, ExAllocatePool2, ExFreePoolWithTag, KeDelayExecutionThread, PsCreateSystemThread,
    PsTerminateSystemThread, ZwClose, ZwWaitForSingleObject,
};

use super::{DriverUnload, StartRoutine};

// The panic handler: wdk-panic's (it bug-checks with "RPNC"). Like the
// windows-drivers-rs samples' `#[cfg(not(test))] extern crate wdk_panic;`:
// this module is never part of a test build (see lib.rs), where std's handler
// would clash with it (E0152).
extern crate wdk_panic;

// The flag shell.rs passes to `allocate_pool` is the WDK's.
const _: () = assert!(super::POOL_FLAG_NON_PAGED == wdk_sys::POOL_FLAG_NON_PAGED);

/// The system's `DRIVER_OBJECT`.
pub type DriverObject = wdk_sys::DRIVER_OBJECT;

/// `DbgPrintEx(component, level, "%s", line)`.
///
/// # Safety
///
/// `line` is NUL-terminated.
pub unsafe fn dbg_print(component: u32, level: u32, line: *const u8) {
    // SAFETY: "%s" with one NUL-terminated string argument. The count of
    // characters printed that DbgPrintEx returns is of no use.
    unsafe { DbgPrintEx(component, level, c"%s".as_ptr(), line) };
}

/// `PsCreateSystemThread` in the system process: null object attributes,
/// process and client id.
///
/// # Safety
///
/// PASSIVE, in the system process (DriverEntry); `context` is valid for as
/// long as the thread uses it.
#[must_use]
pub unsafe fn create_system_thread(
    thread: &mut HANDLE,
    access: u32,
    start: StartRoutine,
    context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: see the function's contract; the handle is written on success.
    unsafe {
        PsCreateSystemThread(
            thread,
            access,
            core::ptr::null_mut(),
            core::ptr::null_mut(),
            core::ptr::null_mut(),
            Some(start),
            context,
        )
    }
}

/// `ZwWaitForSingleObject(handle, FALSE, NULL)`: waits without a timeout.
///
/// # Safety
///
/// PASSIVE; `handle` is an open handle of the system process.
#[must_use]
pub unsafe fn wait_for_object(handle: HANDLE) -> NTSTATUS {
    // SAFETY: see the function's contract.
    unsafe { ZwWaitForSingleObject(handle, 0, core::ptr::null_mut()) }
}

/// `ZwClose`.
///
/// # Safety
///
/// PASSIVE; `handle` is an open handle of the system process, closed once.
#[must_use]
pub unsafe fn close_handle(handle: HANDLE) -> NTSTATUS {
    // SAFETY: see the function's contract.
    unsafe { ZwClose(handle) }
}

/// `KeDelayExecutionThread(KernelMode, FALSE, &interval)`; a negative
/// interval is relative, in 100 ns units.
///
/// # Safety
///
/// IRQL at most APC_LEVEL.
#[must_use]
pub unsafe fn delay_execution(interval: i64) -> NTSTATUS {
    let mut interval = wdk_sys::LARGE_INTEGER { QuadPart: interval };
    // SAFETY: KernelMode (0), not alertable, an interval that lives across
    // the call; the IRQL is the caller's contract.
    unsafe { KeDelayExecutionThread(0, 0, &mut interval) }
}

/// `PsTerminateSystemThread(status)`: ends the calling system thread, and
/// returns only if the caller is not one (`STATUS_INVALID_PARAMETER`).
///
/// # Safety
///
/// Called by a system thread the driver created, holding nothing.
#[must_use]
pub unsafe fn terminate_system_thread(status: NTSTATUS) -> NTSTATUS {
    // SAFETY: see the function's contract.
    unsafe { PsTerminateSystemThread(status) }
}

/// Sets `DriverObject->DriverUnload`.
///
/// # Safety
///
/// `driver` is the system's driver object of this image, at PASSIVE in DriverEntry.
pub unsafe fn set_unload(driver: *mut DriverObject, unload: DriverUnload) {
    // SAFETY: see the function's contract.
    unsafe { (*driver).DriverUnload = Some(unload) };
}

/// `ExAllocatePool2(flags, size, tag)`: a zeroed block, 16-aligned on x64,
/// or null.
///
/// # Safety
///
/// `size` is not zero; the IRQL suits `flags` (DISPATCH_LEVEL or below for
/// non-paged pool).
#[must_use]
pub unsafe fn allocate_pool(flags: u64, size: usize, tag: u32) -> *mut u8 {
    // SAFETY: see the function's contract.
    unsafe { ExAllocatePool2(flags, size as wdk_sys::SIZE_T, tag) }.cast()
}

/// `ExFreePoolWithTag(block, tag)`.
///
/// # Safety
///
/// `block` came from [`allocate_pool`] with `tag` and is freed once, at
/// DISPATCH_LEVEL or below.
pub unsafe fn free_pool(block: *mut u8, tag: u32) {
    // SAFETY: see the function's contract.
    unsafe { ExFreePoolWithTag(block.cast(), tag) };
}
