//! The kernel surface declared by hand: the functions the shell uses,
//! imported with `raw-dylib` from `ntoskrnl.exe` (no WDK, no import library),
//! the one `DRIVER_OBJECT` field it writes, a pool allocator, a panic handler
//! that bug-checks, and the CRT symbols every driver image needs.
//!
//! A line-for-line twin of `km_wdk.rs`; the layout checks at the bottom pin
//! what it declares to the WDK headers (NMR-CONTRACT.md §1).

#![allow(non_snake_case)]

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

use nmr_common::ffi::{HANDLE, NTSTATUS, STATUS_SUCCESS};

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

/// `DRIVER_UNLOAD`.
pub type DriverUnload = unsafe extern "C" fn(*mut DriverObject);
/// `KSTART_ROUTINE`.
pub type StartRoutine = unsafe extern "C" fn(*mut c_void);

/// `THREAD_ALL_ACCESS`: `STANDARD_RIGHTS_REQUIRED | SYNCHRONIZE | 0xFFFF`.
const THREAD_ALL_ACCESS: u32 = 0x001F_FFFF;
/// `POOL_FLAG_NON_PAGED`: usable at DISPATCH_LEVEL, where cleanups run.
const POOL_FLAG_NON_PAGED: u64 = 0x0000_0000_0000_0040;
/// What `ExAllocatePool2` guarantees on x64 without help.
const POOL_ALIGNMENT: usize = 16;
/// The bug check a panic raises: a driver-defined code, with the panic's
/// line in parameter 1 and its file name's address in parameter 2.
pub const BUGCHECK_RUST_PANIC: u32 = 0x5255_5354; // "RUST"

/// `DbgPrintEx(component, level, "%s", line)`.
///
/// # Safety
///
/// `line` is NUL-terminated.
pub unsafe fn dbg_print(component: u32, level: u32, line: *const u8) {
    // SAFETY: "%s" with one NUL-terminated string argument.
    unsafe { DbgPrintEx(component, level, c"%s".as_ptr().cast(), line) };
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
            start,
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
    let mut interval: i64 = -(i64::from(ms) * 10_000);
    // SAFETY: KernelMode (0), not alertable, a relative interval (LARGE_INTEGER)
    // that lives across the call.
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

/// Non-paged pool with our tag. Alignments above the pool's 16 bytes are
/// honoured by over-allocating and keeping the pool's pointer just below the
/// aligned block.
struct PoolAllocator;

#[global_allocator]
static ALLOCATOR: PoolAllocator = PoolAllocator;

// SAFETY: every block comes from ExAllocatePool2 (non-paged, so usable at
// DISPATCH_LEVEL), is aligned as asked (see `alloc`), and is returned with the
// same tag; null is returned on failure, as GlobalAlloc requires.
unsafe impl GlobalAlloc for PoolAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= POOL_ALIGNMENT {
            // SAFETY: a plain pool allocation; the caller handles null.
            return unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, layout.size(), crate::POOL_TAG) }
                .cast();
        }
        let Some(total) = layout.size().checked_add(layout.align()) else {
            return core::ptr::null_mut();
        };
        // SAFETY: as above.
        let raw =
            unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, total, crate::POOL_TAG) }.cast::<u8>();
        if raw.is_null() {
            return raw;
        }
        // `raw` is 16-aligned and `align` a larger power of two, so the first
        // aligned address at least 8 bytes in is at most `align` bytes in:
        // the block fits in `total`, and the word below it is ours.
        let offset = (raw.addr() + 8).next_multiple_of(layout.align()) - raw.addr();
        // SAFETY: `offset <= align`, so `aligned .. aligned + size` and the
        // word before `aligned` lie inside the allocation.
        unsafe {
            let aligned = raw.add(offset);
            aligned.cast::<*mut u8>().sub(1).write(raw);
            aligned
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let raw = if layout.align() <= POOL_ALIGNMENT {
            ptr
        } else {
            // SAFETY: `alloc` stored the pool's pointer in the word below.
            unsafe { ptr.cast::<*mut u8>().sub(1).read() }
        };
        // SAFETY: `raw` came from ExAllocatePool2 with our tag.
        unsafe { ExFreePoolWithTag(raw.cast(), crate::POOL_TAG) };
    }
}

/// A panic in the kernel is a bug: stop the machine with our bug check, so
/// that `!analyze -v` shows where.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let (line, file) = info
        .location()
        .map_or((0, 0), |l| (l.line() as usize, l.file().as_ptr().addr()));
    // SAFETY: KeBugCheckEx may be called at any IRQL and does not return.
    unsafe { KeBugCheckEx(BUGCHECK_RUST_PANIC, line, file, 0, 0) }
}

// `_fltused` and `__CxxFrameHandler3` are defined in assembly, not as Rust
// `#[no_mangle]` items: rustc exports every `#[no_mangle]` item of a cdylib,
// and a driver image must export `DriverEntry` alone (scripts/check-sys.sh).
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
