//! Kernel stacks: 24 KiB with a guard page below, as Windows gives a kernel
//! thread, and the stack switches the host needs: into the kernel stack to
//! run an image's thread (and back out at `PsTerminateSystemThread`, without
//! unwinding through driver frames); back onto the host stack to run the
//! model (the stand-in for `netio.sys`) from a NETIO import; and into image
//! code from the host ([`entry_thunk`], [`call_image`]): every entry runs on
//! a guarded kernel stack. An entry from the model under an NMR call made on
//! a kernel stack (worker -> NPI call -> last release ->
//! `Nmr*DetachComplete` -> cleanup callback) continues on that same stack,
//! [`NETIO_FRAME_BUDGET`] bytes below the point where the image called
//! NETIO; any other entry (DriverEntry, DriverUnload, a callback from host
//! code) gets a fresh 24 KiB stack of its own.
//!
//! [`enter_image_code`] is the one place every entry passes on its way in:
//! per-thread set-up for image code belongs there.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::pe::{LoadError, Pages, page_size};
use crate::registry::{self, Registered};

/// `KERNEL_STACK_SIZE` on x64: what a system thread gets.
pub const KERNEL_STACK_SIZE: usize = 24 * 1024;

/// What an untouched stack byte holds, to measure the deepest use.
const STACK_FILL: u8 = 0xA5;

/// Bytes of kernel stack charged for the `NETIO.SYS` frames between a
/// driver's call into an NMR function and the callback that call makes
/// (`NmrClientDetachProviderComplete` -> the NMR's release of the binding
/// -> the cleanup callback). Microsoft publishes no figure for those frames
/// (the WDK pages on the kernel stack give only its size, 24 KiB on x64),
/// so the figure is chosen: the host's own stand-in for that path (the
/// model, release build) uses about 1.5 KiB of stack between the NMR call
/// and the callback; 2 KiB is that, rounded up to half a page. The stress
/// summary prints the charged figure next to the model's measured one.
pub const NETIO_FRAME_BUDGET: usize = 2048;

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

    /// The lowest usable address (just above the guard page).
    pub fn lo(&self) -> usize {
        self.pages.base() as usize + page_size()
    }

    /// The deepest the stack was used, in bytes (0 when never run).
    pub fn used(&self) -> usize {
        // SAFETY: the stack part is mapped RW; no frame on it is live now.
        unsafe { used_between(self.lo(), self.top()) }
    }

    /// Fills the stack again, to measure the next use from scratch.
    fn refill(&self) {
        // SAFETY: the stack part is RW and no frame on it is live.
        unsafe { (self.lo() as *mut u8).write_bytes(STACK_FILL, KERNEL_STACK_SIZE) };
    }
}

/// The deepest use of the stack `lo..hi`: from `hi` down to the lowest
/// byte that is not [`STACK_FILL`].
///
/// # Safety
///
/// `lo..hi` is mapped and readable.
unsafe fn used_between(lo: usize, hi: usize) -> usize {
    // SAFETY: the caller's contract.
    let stack = unsafe { std::slice::from_raw_parts(lo as *const u8, hi - lo) };
    let untouched = stack.iter().take_while(|&&b| b == STACK_FILL).count();
    hi - lo - untouched
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
    // nmr_ih_enter_image: a Windows x64 function that takes whatever the
    // callback takes (up to 8 arguments), with the callback in R11 (set by
    // the entry thunk). Asks nmr_ih_enter_begin for the kernel stack top,
    // copies arguments 5 to 8 there, calls the callback on that stack, then
    // nmr_ih_enter_end, and returns the callback's RAX.
    ".p2align 4",
    ".globl nmr_ih_enter_image",
    "nmr_ih_enter_image:",
    "    push rbp",
    "    mov rbp, rsp",
    "    push rbx",
    "    push r12",
    "    push rcx",
    "    push rdx",
    "    push r8",
    "    push r9",
    "    push r11",
    "    sub rsp, 40",
    "    lea rcx, [rbp - 64]",
    "    mov rdx, r11",
    "    call {begin}",
    "    mov rbx, rax",
    "    sub rbx, 80",
    "    mov rax, [rbp + 48]",
    "    mov [rbx + 32], rax",
    "    mov rax, [rbp + 56]",
    "    mov [rbx + 40], rax",
    "    mov rax, [rbp + 64]",
    "    mov [rbx + 48], rax",
    "    mov rax, [rbp + 72]",
    "    mov [rbx + 56], rax",
    "    mov r12, [rbp - 56]",
    "    mov r9, [rbp - 48]",
    "    mov r8, [rbp - 40]",
    "    mov rdx, [rbp - 32]",
    "    mov rcx, [rbp - 24]",
    "    mov rsp, rbx",
    "    call r12",
    "    lea rsp, [rbp - 96]",
    "    mov [rbp - 24], rax",
    "    call {end}",
    "    mov rax, [rbp - 24]",
    "    lea rsp, [rbp - 16]",
    "    pop r12",
    "    pop rbx",
    "    pop rbp",
    "    ret",
    begin = sym enter_begin,
    end = sym enter_end,
);

unsafe extern "C" {
    fn nmr_ih_run_on_stack(start: usize, context: usize, stack_top: usize, saved: *mut usize);
    fn nmr_ih_exit_to(saved: usize) -> !;
    fn nmr_ih_call_on_stack(f: unsafe extern "C" fn(*mut c_void), arg: *mut c_void, top: usize);
    fn nmr_ih_enter_image();
}

thread_local! {
    /// Where the host RSP was saved when this thread entered its kernel
    /// stack; null when not running image code on a kernel stack (or while
    /// [`on_host_stack`] has switched back).
    static SAVED_AT: Cell<*mut usize> = const { Cell::new(std::ptr::null_mut()) };
    /// Where the host RSP was saved when this system thread entered its
    /// kernel stack (for `PsTerminateSystemThread`); null on other threads.
    static THREAD_SAVED: Cell<*mut usize> = const { Cell::new(std::ptr::null_mut()) };
    /// The kernel stack image code on this thread runs on: (lo, hi, whether
    /// it is a system thread's); (0, 0, false) when none.
    static CURRENT: Cell<(usize, usize, bool)> = const { Cell::new((0, 0, false)) };
    /// The kernel RSPs at which image code called the model
    /// ([`on_host_stack`]), innermost last.
    static RESUME: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// The entries from the host in progress, innermost last.
    static ENTRIES: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
    /// A stack kept for the next entry from the host into the same image on
    /// this thread (its guard page is registered under that image's name).
    static SPARE: RefCell<Option<(&'static str, KernelStack)>> = const { RefCell::new(None) };
    /// The alternate signal stack of a thread that entered image code from
    /// the host (a system thread has its own): a stack overflow is reported.
    static ALT: RefCell<Option<crate::fault::AltStack>> = const { RefCell::new(None) };
    /// The image this thread's image code belongs to (for reports).
    static IMAGE: Cell<&'static str> = const { Cell::new("?") };
}

/// Whether this thread is running image code on a kernel stack.
pub fn on_kernel_stack() -> bool {
    !SAVED_AT.with(Cell::get).is_null()
}

/// Whether this thread is an image's system thread (PsCreateSystemThread).
pub fn on_system_thread() -> bool {
    !THREAD_SAVED.with(Cell::get).is_null()
}

/// The image whose code this thread runs (or last ran), `?` if none.
pub fn current_image() -> &'static str {
    IMAGE.with(Cell::get)
}

/// One entry into image code from the host.
struct Entry {
    /// The host RSP below which host code may run while the entry lasts.
    host_rsp: Box<usize>,
    prev_saved: *mut usize,
    prev_current: (usize, usize, bool),
    prev_image: &'static str,
    /// The stack taken for it (an entry not nested under an NMR call).
    fresh: Option<KernelStack>,
    /// Nested under an NMR call on a kernel stack (the NETIO budget charged).
    nested: bool,
    /// Already on a kernel stack: nothing switched.
    same: bool,
    target: usize,
    state: (u8, usize),
}

/// Deepest use of a system thread's stack by an entry nested under an NMR
/// call (worker -> NPI call -> release -> `Nmr*DetachComplete` -> cleanup),
/// bytes, budget included.
static NESTED_PEAK: AtomicUsize = AtomicUsize::new(0);
/// Entries nested under an NMR call on a system thread.
static NESTED_ENTRIES: AtomicU64 = AtomicU64::new(0);
/// Deepest use of a stack taken for an entry from the host (DriverEntry,
/// DriverUnload, and what they call, nested entries included).
static HOST_ENTRY_PEAK: AtomicUsize = AtomicUsize::new(0);
/// Entries from the host.
static HOST_ENTRIES: AtomicU64 = AtomicU64::new(0);
/// Most host stack the model used between an NMR call and a callback.
static MODEL_PATH_PEAK: AtomicUsize = AtomicUsize::new(0);

/// Stack figures for the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryStats {
    /// The deepest use of a system thread's kernel stack measured when an
    /// entry nested under an NMR call returned (worker -> NPI call -> last
    /// release -> `Nmr*DetachComplete` -> cleanup), NETIO's frames charged;
    /// bytes, since the process started.
    pub nested_peak: usize,
    /// Entries nested under an NMR call on a system thread.
    pub nested_entries: u64,
    /// The deepest use of a stack taken for an entry from the host
    /// (DriverEntry, DriverUnload and what runs nested in them), bytes,
    /// since the process started.
    pub host_entry_peak: usize,
    /// Entries from the host.
    pub host_entries: u64,
}

/// The stack figures so far.
pub fn entry_stats() -> EntryStats {
    EntryStats {
        nested_peak: NESTED_PEAK.load(Ordering::Relaxed),
        nested_entries: NESTED_ENTRIES.load(Ordering::Relaxed),
        host_entry_peak: HOST_ENTRY_PEAK.load(Ordering::Relaxed),
        host_entries: HOST_ENTRIES.load(Ordering::Relaxed),
    }
}

/// The most host stack the model (the NETIO stand-in) used between an NMR
/// call and a callback it made: what the real NETIO frames are compared with.
pub fn model_path_peak() -> usize {
    MODEL_PATH_PEAK.load(Ordering::Relaxed)
}

/// Bytes of the caller's kernel stack `DbgPrintEx` is charged with: Windows
/// formats the message on the caller's stack, and `nf-wdm-dbgprintex` says
/// a message is at most 512 bytes; 1 KiB is that buffer and a few frames
/// (a chosen figure, as for [`NETIO_FRAME_BUDGET`]).
pub const DBG_PRINT_FRAME_BUDGET: usize = 1024;

/// Charges `bytes` of the current kernel stack below the caller, for the
/// frames the real kernel routine would have there (the stand-in runs its
/// own code elsewhere): marks the deepest byte as used, or, if the stack
/// has not that much left, touches its guard page (a named stack overflow).
/// Nothing off a kernel stack.
pub fn charge_kernel_frames(bytes: usize) {
    if !on_kernel_stack() {
        return;
    }
    let (lo, _, _) = CURRENT.with(Cell::get);
    let here = 0u8;
    let deepest = (&raw const here as usize).saturating_sub(bytes);
    let at = if deepest < lo { lo - 8 } else { deepest };
    // SAFETY: `at` is free stack below this frame (nothing lives below the
    // stack pointer: signals run on the alternate stack) or the guard page
    // just below the stack, whose touch faults into the fault handler.
    unsafe { std::ptr::write_volatile(at as *mut u8, 0) };
}

/// Every entry into image code passes here first, on the thread that will
/// run it (a system thread at its start, any other entry from the host):
/// the place for per-thread set-up that image code relies on.
pub fn enter_image_code(image: &'static str) {
    IMAGE.with(|i| i.set(image));
    // Image code reads the processor index through `gs` (wdm.h's
    // `KeGetCurrentProcessorIndex`): a stand-in KPCR, index refreshed.
    crate::kpcr::ensure_current_thread();
}

/// `nmr_ih_enter_image`'s first half: picks the stack for an entry into
/// `target` made from host code whose stack pointer is below `host_rsp`;
/// returns its top.
extern "win64" fn enter_begin(host_rsp: usize, target: usize) -> usize {
    let image = crate::registry::image_at(target);
    let name = image.map_or("?", |i| i.name);
    let state = crate::ntoskrnl::entry_state();
    let prev_saved = SAVED_AT.with(Cell::get);
    let prev_current = CURRENT.with(Cell::get);
    let prev_image = IMAGE.with(Cell::get);
    let mut entry = Entry {
        host_rsp: Box::new(host_rsp),
        prev_saved,
        prev_current,
        prev_image,
        fresh: None,
        nested: false,
        same: false,
        target,
        state,
    };
    let top = if !prev_saved.is_null() {
        // Host code called straight from image code: stay on its stack.
        entry.same = true;
        (host_rsp - 64) & !15
    } else if let Some(resume) = RESUME.with(|r| r.borrow().last().copied()) {
        // Under an NMR call from image code: below it, NETIO's frames charged.
        entry.nested = true;
        if let Some(model_used) = resume_host_depth(host_rsp) {
            MODEL_PATH_PEAK.fetch_max(model_used, Ordering::Relaxed);
        }
        // Never below the usable stack: the first push then hits the guard page.
        (resume.saturating_sub(NETIO_FRAME_BUDGET) & !15).max(prev_current.0)
    } else {
        let spare = SPARE.with(|s| {
            let mut s = s.borrow_mut();
            match s.take() {
                Some((owner, stack)) if owner == name => Some(stack),
                other => {
                    *s = other;
                    None
                }
            }
        });
        let stack = spare.map_or_else(|| KernelStack::new(name, image.map_or("?", |i| i.path)), Ok);
        match stack {
            Ok(stack) => {
                ALT.with(|a| {
                    let mut a = a.borrow_mut();
                    if a.is_none() {
                        *a = crate::fault::AltStack::install().ok();
                    }
                });
                HOST_ENTRIES.fetch_add(1, Ordering::Relaxed);
                CURRENT.with(|c| c.set((stack.lo(), stack.top(), false)));
                let top = stack.top();
                entry.fresh = Some(stack);
                top
            }
            Err(_) => {
                // No memory for a stack: run where we are, as before.
                entry.same = true;
                (host_rsp - 64) & !15
            }
        }
    };
    if !entry.same {
        let at: *const usize = &*entry.host_rsp;
        SAVED_AT.with(|c| c.set(at.cast_mut()));
    }
    if entry.nested && prev_current.2 {
        NESTED_ENTRIES.fetch_add(1, Ordering::Relaxed);
    }
    enter_image_code(name);
    ENTRIES.with(|e| e.borrow_mut().push(entry));
    top
}

/// `nmr_ih_enter_image`'s second half, after the callback returned: checks
/// the IRQL and locks it gave back, measures the stack, restores the state.
extern "win64" fn enter_end() {
    let Some(entry) = ENTRIES.with(|e| e.borrow_mut().pop()) else {
        return;
    };
    let image = crate::registry::image_at(entry.target).map_or("?", |i| i.name);
    let routine = format!("the routine at {}", name_with_offset(entry.target));
    crate::ntoskrnl::check_entry_return(&routine, image, entry.state);
    if entry.same {
        IMAGE.with(|i| i.set(entry.prev_image));
        return;
    }
    let (lo, hi, system) = CURRENT.with(Cell::get);
    if entry.nested && lo != 0 {
        // SAFETY: this thread's current kernel stack, mapped; read only.
        let used = unsafe { used_between(lo, hi) };
        if system {
            NESTED_PEAK.fetch_max(used, Ordering::Relaxed);
        } else {
            HOST_ENTRY_PEAK.fetch_max(used, Ordering::Relaxed);
        }
    }
    if let Some(stack) = entry.fresh {
        HOST_ENTRY_PEAK.fetch_max(stack.used(), Ordering::Relaxed);
        stack.refill();
        SPARE.with(|s| *s.borrow_mut() = Some((image, stack)));
    }
    SAVED_AT.with(|c| c.set(entry.prev_saved));
    CURRENT.with(|c| c.set(entry.prev_current));
    IMAGE.with(|i| i.set(entry.prev_image));
}

/// `image+0xoffset` for an address in a mapped image, else the address.
pub fn name_with_offset(addr: usize) -> String {
    match crate::registry::image_at(addr) {
        Some(i) => format!("{}+{:#x}", i.name, addr - i.base),
        None => format!("{addr:#x}"),
    }
}

/// The host stack the model used from the innermost [`on_host_stack`] down
/// to `rsp`, if known.
fn resume_host_depth(rsp: usize) -> Option<usize> {
    HOST_TOPS.with(|t| t.borrow().last().map(|&top| top.saturating_sub(rsp)))
}

thread_local! {
    /// The host stack tops [`on_host_stack`] switched to, innermost last.
    static HOST_TOPS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Thunks that enter image code through [`nmr_ih_enter_image`], one per
/// target, kept for the process (one per callback per mapping). Each block
/// is two pages: the thunks' code (written once, then read-execute for
/// good: other threads may be running a thunk of it at any time) and the
/// targets they load (plain data, written when a thunk is handed out).
struct ThunkBlocks {
    blocks: Vec<Pages>,
    /// Thunks handed out in the last block.
    used: usize,
    by_target: std::collections::HashMap<usize, usize>,
}

static THUNKS: Mutex<Option<ThunkBlocks>> = Mutex::new(None);
const ENTRY_THUNK_SIZE: usize = 32;

/// A new block of thunks: thunk `i` is `mov r11, [slot i]; mov rax,
/// nmr_ih_enter_image; jmp rax`, slot `i` in the second page.
fn new_thunk_block() -> Option<Pages> {
    let page = page_size();
    let pages = Pages::new(2 * page).ok()?;
    let base = pages.base() as usize;
    for i in 0..page / ENTRY_THUNK_SIZE {
        let at = base + i * ENTRY_THUNK_SIZE;
        let slot = base + page + i * 8;
        let disp = (slot as i64 - (at as i64 + 7)) as i32;
        let mut code = Vec::with_capacity(ENTRY_THUNK_SIZE);
        code.extend_from_slice(&[0x4C, 0x8B, 0x1D]); // mov r11, [rip + disp32]
        code.extend_from_slice(&disp.to_le_bytes());
        code.extend_from_slice(&[0x48, 0xB8]); // mov rax, nmr_ih_enter_image
        code.extend_from_slice(&(nmr_ih_enter_image as *const () as u64).to_le_bytes());
        code.extend_from_slice(&[0xFF, 0xE0]); // jmp rax
        code.resize(ENTRY_THUNK_SIZE, 0xCC);
        // SAFETY: inside the first page, RW until protected below.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), at as *mut u8, ENTRY_THUNK_SIZE) };
    }
    pages
        .protect(0, page, libc::PROT_READ | libc::PROT_EXEC)
        .ok()?;
    Some(pages)
}

/// A Windows x64 function that runs `target` (a Windows x64 function of up
/// to 8 arguments, in a mapped image) on a kernel stack: what the model is
/// handed instead of the image's callback. None when no page can be mapped.
pub fn entry_thunk(target: usize) -> Option<usize> {
    let mut g = THUNKS.lock().unwrap_or_else(|e| e.into_inner());
    let per_block = page_size() / ENTRY_THUNK_SIZE;
    let t = g.get_or_insert_with(|| ThunkBlocks {
        blocks: Vec::new(),
        used: per_block,
        by_target: std::collections::HashMap::new(),
    });
    if let Some(&thunk) = t.by_target.get(&target) {
        return Some(thunk);
    }
    if t.used == per_block {
        t.blocks.push(new_thunk_block()?);
        t.used = 0;
    }
    let base = t.blocks.last().expect("pushed").base() as usize;
    let i = t.used;
    // SAFETY: slot `i` of the block's data page (RW), not yet handed out:
    // no thunk reads it before this function returns its address.
    unsafe { ((base + page_size() + i * 8) as *mut usize).write(target) };
    t.used += 1;
    let thunk = base + i * ENTRY_THUNK_SIZE;
    t.by_target.insert(target, thunk);
    Some(thunk)
}

/// Calls the image's Windows x64 function `target(a, b)` from the host on a
/// kernel stack (DriverEntry, DriverUnload).
///
/// # Safety
///
/// `target` is a Windows x64 function taking two pointer-sized arguments
/// (a one-argument function ignores the second), in a mapped image.
pub unsafe fn call_image(target: usize, a: usize, b: usize) -> usize {
    let thunk = entry_thunk(target).unwrap_or(target);
    type F = unsafe extern "win64" fn(usize, usize) -> usize;
    // SAFETY: the thunk forwards to `target` with its arguments untouched.
    let f = unsafe { std::mem::transmute::<usize, F>(thunk) };
    // SAFETY: the caller's contract.
    unsafe { f(a, b) }
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
    enter_image_code(crate::registry::image_at(start).map_or("?", |i| i.name));
    // The trampoline writes the host RSP there before switching.
    SAVED_AT.with(|c| c.set(&raw mut saved));
    THREAD_SAVED.with(|c| c.set(&raw mut saved));
    CURRENT.with(|c| c.set((stack.lo(), stack.top(), true)));
    // SAFETY: the stack is mapped RW with a guard below; `start` is a Windows
    // x64 function (the caller's contract); `saved` outlives the call.
    unsafe { nmr_ih_run_on_stack(start, context, stack.top(), &raw mut saved) };
    SAVED_AT.with(|c| c.set(std::ptr::null_mut()));
    THREAD_SAVED.with(|c| c.set(std::ptr::null_mut()));
    crate::ntoskrnl::check_thread_end(current_image(), start);
    CURRENT.with(|c| c.set((0, 0, false)));
    // A PsTerminateSystemThread from inside a nested entry left these.
    ENTRIES.with(|e| e.borrow_mut().clear());
    RESUME.with(|r| r.borrow_mut().clear());
    HOST_TOPS.with(|r| r.borrow_mut().clear());
}

/// `PsTerminateSystemThread` on an image thread: leaves the kernel stack for
/// the host frame that entered it, without unwinding anything.
///
/// # Safety
///
/// Called on a thread inside [`run_on_kernel_stack`]; nothing on the kernel
/// stack above this call needs dropping (the caller holds nothing).
pub unsafe fn exit_kernel_stack() -> ! {
    let at = THREAD_SAVED.with(Cell::get);
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
    // A callback the model makes meanwhile enters the image again on this
    // kernel stack, below here (enter_begin charges NETIO's frames).
    let kernel_here = &raw const job as usize;
    RESUME.with(|r| r.borrow_mut().push(kernel_here));
    HOST_TOPS.with(|r| r.borrow_mut().push(top));
    SAVED_AT.with(|c| c.set(std::ptr::null_mut()));
    // SAFETY: `top` is free host stack (above); the trampoline matches F and R.
    unsafe { nmr_ih_call_on_stack(trampoline::<F, R>, (&raw mut job).cast(), top) };
    SAVED_AT.with(|c| c.set(at));
    HOST_TOPS.with(|r| r.borrow_mut().pop());
    RESUME.with(|r| r.borrow_mut().pop());
    job.1.expect("the trampoline ran")
}
