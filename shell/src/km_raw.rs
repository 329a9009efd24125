//! The kernel surface declared by hand: the functions the shell uses,
//! imported with `raw-dylib` from `ntoskrnl.exe` (no WDK, no import library),
//! the one `DRIVER_OBJECT` field it writes, a panic handler that bug-checks the
//! way wdk-panic does, and the CRT symbols every driver image needs.
//!
//! The twin of `km_wdk.rs`: the same public items with the same signatures,
//! each a thin wrapper of one kernel function (`tests/twins.rs` checks it).
//! Policy is in `shell.rs`, shared by both. The layout checks at the bottom
//! pin what this file declares to the WDK headers (docs/nmr-contract.md, "ABI").

#![allow(non_snake_case)]

use core::ffi::c_void;

use nmr_common::ffi::{HANDLE, NTSTATUS};

use super::{DriverUnload, StartRoutine};

#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "system" {
    fn DbgPrintEx(ComponentId: u32, Level: u32, Format: *const u8, ...) -> u32;
    fn PsCreateSystemThread(
        ThreadHandle: *mut HANDLE,
        DesiredAccess: u32,
        ObjectAttributes: *mut c_void,
        ProcessHandle: HANDLE,
        ClientId: *mut c_void,
        StartRoutine: StartRoutine,
        StartContext: *mut c_void,
    ) -> NTSTATUS;
    fn PsTerminateSystemThread(ExitStatus: NTSTATUS) -> NTSTATUS;
    fn ZwWaitForSingleObject(Handle: HANDLE, Alertable: u8, Timeout: *mut i64) -> NTSTATUS;
    fn ZwClose(Handle: HANDLE) -> NTSTATUS;
    fn KeDelayExecutionThread(WaitMode: i8, Alertable: u8, Interval: *mut i64) -> NTSTATUS;
    fn ExAllocatePool2(Flags: u64, NumberOfBytes: usize, Tag: u32) -> *mut c_void;
    fn ExFreePoolWithTag(P: *mut c_void, Tag: u32);
    fn KeBugCheckEx(BugCheckCode: u32, P1: usize, P2: usize, P3: usize, P4: usize) -> !;
}

// The C memory functions LLVM emits calls to (struct copies, zeroing,
// `copy_from_slice`, slice equality). On the MSVC targets `compiler_builtins`
// does not define them: a C driver gets them from the WDK's ntoskrnl.lib, which
// forwards to the kernel's own exports, so we import the same exports. Nothing
// in Rust calls them by name; only the ones LLVM actually emits end up in the
// image's import table (the linker pulls an import only when referenced).
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
#[allow(
    dead_code,
    reason = "referenced by the code LLVM generates, not by name"
)]
unsafe extern "C" {
    fn memcpy(dest: *mut c_void, src: *const c_void, n: usize) -> *mut c_void;
    fn memmove(dest: *mut c_void, src: *const c_void, n: usize) -> *mut c_void;
    fn memset(dest: *mut c_void, c: i32, n: usize) -> *mut c_void;
    fn memcmp(a: *const c_void, b: *const c_void, n: usize) -> i32;
}

/// The system's `DRIVER_OBJECT` (336 bytes on x64): only `DriverUnload` is
/// declared; the rest is opaque.
#[repr(C)]
pub struct DriverObject {
    _before: [u8; 104],
    /// `DriverUnload`, at offset 104.
    pub DriverUnload: Option<DriverUnload>,
    _after: [u8; 224],
}

/// The bug check a panic raises: wdk-panic 0.5's, so that a panic reads the
/// same in `!analyze -v` from either image: `"RPNC"`, then the panic's file
/// name (address, length), line and column. (A debug build breaks into the
/// debugger first, as wdk-panic's does: see the panic handler below.)
const RUST_PANIC_BUGCHECK_CODE: u32 = u32::from_be_bytes(*b"RPNC");

/// `DbgPrintEx(component, level, "%s", line)`.
///
/// # Safety
///
/// `line` is NUL-terminated.
pub unsafe fn dbg_print(component: u32, level: u32, line: *const u8) {
    // SAFETY: "%s" with one NUL-terminated string argument. The count of
    // characters printed that DbgPrintEx returns is of no use.
    unsafe { DbgPrintEx(component, level, c"%s".as_ptr().cast(), line) };
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
            start,
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
    let mut interval = interval;
    // SAFETY: KernelMode (0), not alertable, an interval (LARGE_INTEGER) that
    // lives across the call; the IRQL is the caller's contract.
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
    unsafe { ExAllocatePool2(flags, size, tag) }.cast()
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

/// A panic in the kernel is a bug: stop the machine the way wdk-panic 0.5
/// does, so that both images behave alike in each profile.
///
/// - Release build (`cargo xtask package`, `cargo make default --release`):
///   bug check `0x52504E43` ("RPNC"), parameters: the panic's file name
///   (address, length), line, column; `!analyze -v` shows where.
/// - Debug build (debug assertions on: `cargo make`'s default profile):
///   first `int 3`, as wdk-panic's `dbg_break()`. With a kernel debugger
///   attached it breaks in at the panic, and `g` goes on to the RPNC bug
///   check. With none, the breakpoint exception is unhandled in kernel mode
///   and the machine stops with bug check 0x1E (KMODE_EXCEPTION_NOT_HANDLED,
///   parameter 1 = 0x80000003, STATUS_BREAKPOINT; parameter 2 the address of
///   the `int 3` in this handler), not RPNC: docs/windbg.md.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    #[cfg(debug_assertions)]
    // SAFETY: `int 3` only raises a breakpoint exception; it touches no
    // memory or register the compiler relies on (as wdk::dbg_break()).
    unsafe {
        core::arch::asm!("int 3", options(nomem, nostack))
    };
    let (file, file_len, line, column) = info.location().map_or((0, 0, 0, 0), |l| {
        (
            l.file().as_ptr().addr(),
            l.file().len(),
            l.line() as usize,
            l.column() as usize,
        )
    });
    // SAFETY: KeBugCheckEx may be called at any IRQL and does not return.
    unsafe { KeBugCheckEx(RUST_PANIC_BUGCHECK_CODE, file, file_len, line, column) }
}

// `_fltused` and `__CxxFrameHandler3` are defined in assembly, not as Rust
// `#[no_mangle]` items: rustc exports every `#[no_mangle]` item of a cdylib,
// and a driver image must export `DriverEntry` alone (`cargo xtask check`).
//
// `_fltused`: the MSVC toolchain's marker that the image uses floating point;
// objects that touch floats reference it, nothing reads it.
//
// `__CxxFrameHandler3`: the C++ exception personality routine that the unwind
// tables of MSVC-target objects (the precompiled `core` among them) name.
// With `panic = "abort"` nothing ever unwinds through a Rust frame, so there
// is never anything to do: answer `ExceptionContinueSearch` (1).
core::arch::global_asm!(
    ".section .rdata,\"dr\"",
    ".globl _fltused",
    ".p2align 2",
    "_fltused:",
    "    .long 0",
    ".text",
    ".globl __CxxFrameHandler3",
    ".p2align 4",
    "__CxxFrameHandler3:",
    "    mov eax, 1",
    "    ret",
);

// `__chkstk`: the stack probe the compiler calls before a frame larger than a
// page. RAX holds the frame size; the probe touches every page of the new
// frame, top down, so that the kernel's guard page is hit in order (a
// skipped page would fault without extending the stack), and preserves every
// register but R10 and R11. It does not move RSP: the caller subtracts RAX.
core::arch::global_asm!(
    ".globl __chkstk",
    "__chkstk:",
    "    mov r10, rsp", // r10 = frame top, as the caller sees it
    "    add r10, 8",   //   (skip our return address)
    "    mov r11, rax", // r11 = bytes still to probe
    "2:",
    "    cmp r11, 0x1000",
    "    jb 3f",
    "    sub r10, 0x1000",        // next page down
    "    test byte ptr [r10], 0", // touch it
    "    sub r11, 0x1000",
    "    jmp 2b",
    "3:",
    "    sub r10, r11", // the last partial page
    "    test byte ptr [r10], 0",
    "    ret",
);

// Layout pins: the WDK 10.0.16299 headers for x86_64-pc-windows-msvc.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<DriverObject>() == 336);
    assert!(offset_of!(DriverObject, DriverUnload) == 104);
    assert!(size_of::<Option<DriverUnload>>() == 8);
};
