//! The kernel surface from windows-drivers-rs: `wdk-sys` bindings, the WDK's
//! import libraries (linked by wdk-build), `WdkAllocator` and `wdk-panic`.
//!
//! Compiled only on a Windows host with the WDK (the `wdk` feature); the
//! Linux CI cannot build it. Keep it a line-for-line twin of `km_raw.rs`.

use core::ffi::c_void;

use nmr_common::ffi::{HANDLE, NTSTATUS, STATUS_SUCCESS};
use wdk_sys::ntddk::{
    DbgPrintEx, KeDelayExecutionThread, PsCreateSystemThread, PsTerminateSystemThread, ZwClose,
    ZwWaitForSingleObject,
};

// The panic handler: wdk-panic's (it halts the system).
extern crate wdk_panic;

#[global_allocator]
static ALLOCATOR: wdk_alloc::WdkAllocator = wdk_alloc::WdkAllocator;

/// The system's `DRIVER_OBJECT`.
pub type DriverObject = wdk_sys::DRIVER_OBJECT;
/// `DRIVER_UNLOAD`.
pub type DriverUnload = unsafe extern "C" fn(*mut DriverObject);
/// `KSTART_ROUTINE`.
pub type StartRoutine = unsafe extern "C" fn(*mut c_void);

/// `THREAD_ALL_ACCESS`: `STANDARD_RIGHTS_REQUIRED | SYNCHRONIZE | 0xFFFF`.
const THREAD_ALL_ACCESS: u32 = 0x001F_FFFF;

/// `DbgPrintEx(component, level, "%s", line)`.
///
/// # Safety
///
/// `line` is NUL-terminated.
pub unsafe fn dbg_print(component: u32, level: u32, line: *const u8) {
    // SAFETY: "%s" with one NUL-terminated string argument.
    unsafe { DbgPrintEx(component, level, c"%s".as_ptr(), line) };
}

/// `PsCreateSystemThread` in the system process.
///
/// # Safety
///
/// `context` is valid for as long as the thread uses it.
pub unsafe fn create_system_thread(
    start: StartRoutine,
    context: *mut c_void,
) -> Result<HANDLE, NTSTATUS> {
    let mut thread: HANDLE = core::ptr::null_mut();
    // SAFETY: null object attributes and process: a thread of the system
    // process (DriverEntry runs there, so the handle is one of its handles).
    let status = unsafe {
        PsCreateSystemThread(
            &mut thread,
            THREAD_ALL_ACCESS,
            core::ptr::null_mut(),
            core::ptr::null_mut(),
            core::ptr::null_mut(),
            Some(start),
            context,
        )
    };
    if status == STATUS_SUCCESS {
        Ok(thread)
    } else {
        Err(status)
    }
}

/// Waits for the thread to terminate, then closes its handle (PASSIVE).
///
/// # Safety
///
/// `thread` is a handle from [`create_system_thread`], not closed yet.
pub unsafe fn wait_and_close(thread: HANDLE) -> NTSTATUS {
    // SAFETY: a valid thread handle of the system process; no timeout.
    let status = unsafe { ZwWaitForSingleObject(thread, 0, core::ptr::null_mut()) };
    // SAFETY: closed once.
    unsafe { ZwClose(thread) };
    status
}

/// `KeDelayExecutionThread` for `ms` milliseconds (PASSIVE).
pub fn delay_ms(ms: u32) {
    let mut interval = wdk_sys::LARGE_INTEGER {
        QuadPart: -(i64::from(ms) * 10_000),
    };
    // SAFETY: KernelMode (0), not alertable, a relative interval that lives
    // across the call.
    unsafe { KeDelayExecutionThread(0, 0, &mut interval) };
}

/// `PsTerminateSystemThread(STATUS_SUCCESS)`: ends the calling system thread.
///
/// # Safety
///
/// Called by a system thread the driver created, holding nothing.
pub unsafe fn terminate_thread() -> ! {
    // SAFETY: see the function's contract.
    unsafe { PsTerminateSystemThread(STATUS_SUCCESS) };
    unreachable!("PsTerminateSystemThread returned")
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
