//! Kernel stacks: 24 KiB with a guard page below, as Windows gives a kernel
//! thread, and the two stack switches the host needs: into the kernel stack
//! to run an image's thread (and back out at `PsTerminateSystemThread`,
//! without unwinding through driver frames), and back onto the host stack to
//! run the model (the stand-in for `netio.sys`) from a NETIO import.

use std::cell::Cell;
use std::ffi::c_void;

use crate::pe::{LoadError, Pages, page_size};
use crate::registry::{self, Registered};

/// `KERNEL_STACK_SIZE` on x64: what a system thread gets.
pub const KERNEL_STACK_SIZE: usize = 24 * 1024;

/// What an untouched stack byte holds, to measure the deepest use.
const STACK_FILL: u8 = 0xA5;

/// A kernel stack: one guard page (no access) below `KERNEL_STACK_SIZE`
/// bytes. Touching the guard page faults, and the fault handler names it.
pub struct KernelStack {
    pages: Pages,
    _guard: Registered,
}

impl KernelStack {
    /// Maps a new stack for a thread of `image`.
    pub fn new(image: &str, path: &str) -> Result<KernelStack, LoadError> {
        let guard = page_size();
        let pages = Pages::new(guard + KERNEL_STACK_SIZE)?;
        pages.protect(0, guard, libc::PROT_NONE)?;
        // SAFETY: the stack part is RW and ours alone until the thread starts.
        unsafe {
            pages
                .base()
                .add(guard)
                .write_bytes(STACK_FILL, KERNEL_STACK_SIZE)
        };
        let registered = registry::register_guard(pages.base() as usize, guard, image, path)
            .ok_or_else(|| LoadError::Os("too many kernel stacks at once".into()))?;
        Ok(KernelStack {
            pages,
            _guard: registered,
        })
    }

    /// The initial stack pointer (16-aligned).
    pub fn top(&self) -> usize {
        self.pages.base() as usize + self.pages.len()
    }

    /// The deepest the stack was used, in bytes (0 when never run).
    pub fn used(&self) -> usize {
        let lo = page_size();
        // SAFETY: the stack part is RW and the thread that used it has ended.
        let stack =
            unsafe { std::slice::from_raw_parts(self.pages.base().add(lo), KERNEL_STACK_SIZE) };
        let untouched = stack.iter().take_while(|&&b| b == STACK_FILL).count();
        KERNEL_STACK_SIZE - untouched
    }
}

// The two switches. System V on the host side; the image's start routine is
// called with the Windows x64 convention (context in RCX, 32 bytes of home
// space above the return address).
//
// ih_run_on_stack(start, context, stack_top, saved_rsp_out) (rdi, rsi, rdx, rcx):
//   saves the callee-saved registers on the host stack, records the host RSP
//   in *saved_rsp_out, switches to stack_top, calls start(context). If start
//   returns, restores the host RSP from *saved_rsp_out (kept in R12, which a
//   Windows x64 callee preserves too) and returns.
// ih_exit_to(saved_rsp) (rdi): PsTerminateSystemThread's way out: back onto
//   the host stack as if start had returned; the kernel stack is abandoned.
// ih_call_on_stack(f, arg, stack_top) (rdi, rsi, rdx): calls the System V
//   function f(arg) with RSP = stack_top, then restores RSP.
core::arch::global_asm!(
    ".text",
    ".p2align 4",
    ".globl nmr_ih_run_on_stack",
    "nmr_ih_run_on_stack:",
    "    push rbp",
    "    push rbx",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov [rcx], rsp",
    "    mov r12, rcx",
    "    mov rsp, rdx",
    "    sub rsp, 32",
    "    mov rax, rdi",
    "    mov rcx, rsi",
    "    call rax",
    "    mov rsp, [r12]",
    "    jmp 2f",
    ".p2align 4",
    ".globl nmr_ih_exit_to",
    "nmr_ih_exit_to:",
    "    mov rsp, rdi",
    "2:",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbx",
    "    pop rbp",
    "    ret",
    ".p2align 4",
    ".globl nmr_ih_call_on_stack",
    "nmr_ih_call_on_stack:",
    "    push rbp",
    "    mov rbp, rsp",
    "    mov rsp, rdx",
    "    mov rax, rdi",
    "    mov rdi, rsi",
    "    call rax",
    "    mov rsp, rbp",
    "    pop rbp",
    "    ret",
);

unsafe extern "C" {
    fn nmr_ih_run_on_stack(start: usize, context: usize, stack_top: usize, saved: *mut usize);
    fn nmr_ih_exit_to(saved: usize) -> !;
    fn nmr_ih_call_on_stack(f: unsafe extern "C" fn(*mut c_void), arg: *mut c_void, top: usize);
}

thread_local! {
    /// Where the host RSP was saved when this thread entered its kernel
    /// stack; null when not running image code on a kernel stack (or while
    /// [`on_host_stack`] has switched back).
    static SAVED_AT: Cell<*mut usize> = const { Cell::new(std::ptr::null_mut()) };
}

/// Whether this thread is running an image's system thread on its kernel stack.
pub fn on_kernel_stack() -> bool {
    !SAVED_AT.with(Cell::get).is_null()
}

/// Runs the image's `KSTART_ROUTINE` `start(context)` on `stack`; returns
/// when it returns or calls `PsTerminateSystemThread` ([`exit_kernel_stack`]).
///
/// # Safety
///
/// `start` is a Windows x64 function taking one pointer, in a mapped image
/// that stays mapped while it runs.
pub unsafe fn run_on_kernel_stack(stack: &KernelStack, start: usize, context: usize) {
    let mut saved = 0usize;
    // The trampoline writes the host RSP there before switching.
    SAVED_AT.with(|c| c.set(&raw mut saved));
    // SAFETY: the stack is mapped RW with a guard below; `start` is a Windows
    // x64 function (the caller's contract); `saved` outlives the call.
    unsafe { nmr_ih_run_on_stack(start, context, stack.top(), &raw mut saved) };
    SAVED_AT.with(|c| c.set(std::ptr::null_mut()));
}

/// `PsTerminateSystemThread` on an image thread: leaves the kernel stack for
/// the host frame that entered it, without unwinding anything.
///
/// # Safety
///
/// Called on a thread inside [`run_on_kernel_stack`]; nothing on the kernel
/// stack above this call needs dropping (the caller holds nothing).
pub unsafe fn exit_kernel_stack() -> ! {
    let at = SAVED_AT.with(Cell::get);
    assert!(
        !at.is_null(),
        "exit_kernel_stack outside run_on_kernel_stack"
    );
    // SAFETY: written by nmr_ih_run_on_stack before the switch, on the host
    // frame that is still live below us.
    let rsp = unsafe { *at };
    // SAFETY: `rsp` is the host stack pointer saved by nmr_ih_run_on_stack,
    // whose frame is still live; jumping there returns from it.
    unsafe { nmr_ih_exit_to(rsp) }
}

/// Runs `f` on the host stack when called from image code on a kernel stack
/// (the model is the stand-in for netio.sys: its stack use is not the real
/// NMR's and is not charged to the driver's 24 KiB); elsewhere calls `f`.
pub fn on_host_stack<R, F: FnOnce() -> R>(f: F) -> R {
    let at = SAVED_AT.with(Cell::get);
    if at.is_null() {
        return f();
    }
    // SAFETY: the saved host RSP, written before the switch; the host frames
    // live above it, the space below it is free (the host thread is inside
    // nmr_ih_run_on_stack). Leave the red zone and align to 16.
    let host_rsp = unsafe { *at };
    let top = (host_rsp - 256) & !15;
    let mut job: (Option<F>, Option<R>) = (Some(f), None);
    unsafe extern "C" fn trampoline<G: FnOnce() -> S, S>(p: *mut c_void) {
        // SAFETY: `p` is the `job` tuple below, live across the call.
        let job = unsafe { &mut *p.cast::<(Option<G>, Option<S>)>() };
        let f = job.0.take().expect("called once");
        job.1 = Some(f());
    }
    // Nested calls (the model calling back into the image, which calls
    // another import) run where they are: the host stack below `top` is live.
    SAVED_AT.with(|c| c.set(std::ptr::null_mut()));
    // SAFETY: `top` is free host stack (above); the trampoline matches F and R.
    unsafe { nmr_ih_call_on_stack(trampoline::<F, R>, (&raw mut job).cast(), top) };
    SAVED_AT.with(|c| c.set(at));
    job.1.expect("the trampoline ran")
}
