//! Catching faults in image code: SIGSEGV, SIGBUS, SIGILL and SIGFPE raised
//! while an image's code runs (or by a touch of a kernel stack's guard page)
//! are reported with the image name, the offset, and the command that maps
//! it to a source line with the `.pdb`; then the process exits with
//! [`FAULT_EXIT_CODE`], as a fault in a driver stops Windows with a bug
//! check. Any other fault goes to the handler that was there before.

use std::fmt::Write as _;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use crate::registry;

/// The exit status of a run stopped by a fault or a bug check in image code.
pub const FAULT_EXIT_CODE: i32 = 4;

const SIGNALS: [libc::c_int; 4] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE];

/// The handlers that were installed before ours, per signal in `SIGNALS`.
static PREVIOUS: [AtomicPtr<libc::sigaction>; 4] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; 4];

/// Set by the first fault reported.
static REPORTING: AtomicBool = AtomicBool::new(false);
/// Where the report is formatted (no allocation in a signal handler).
static mut REPORT: Buf = Buf {
    bytes: [0; 2048],
    len: 0,
};

/// A fixed buffer for formatting in the signal handler (no allocation).
struct Buf {
    bytes: [u8; 2048],
    len: usize,
}

impl std::fmt::Write for Buf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Whether the instruction at `rip` (in a mapped, readable image section)
/// carries the `gs` segment prefix (0x65), among its legacy and REX prefixes.
fn reads_gs(rip: usize) -> bool {
    for i in 0..5 {
        let Some(word) = read_word(rip + i) else {
            return false;
        };
        match word as u8 {
            0x65 => return true,
            // Other legacy prefixes, REX: keep looking.
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x40..=0x4f => {}
            _ => return false,
        }
    }
    false
}

fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV (access violation)",
        libc::SIGBUS => "SIGBUS (bus error)",
        libc::SIGILL => "SIGILL (illegal instruction)",
        libc::SIGFPE => "SIGFPE (divide error)",
        _ => "signal",
    }
}

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo and ucontext to an
    // SA_SIGINFO handler.
    let (addr, rip, rsp) = unsafe {
        let uc = &*context.cast::<libc::ucontext_t>();
        (
            (*info).si_addr() as usize,
            uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize,
            uc.uc_mcontext.gregs[libc::REG_RSP as usize] as usize,
        )
    };
    let guard = registry::guard_at(addr);
    let image = registry::image_at(rip);
    let table = registry::dispatch_at(rip);
    let on_kernel_stack = crate::stack::on_kernel_stack();
    if guard.is_none() && image.is_none() && table.is_none() && !on_kernel_stack {
        // Not ours: restore the previous handler and return; the faulting
        // instruction runs again and faults into it.
        let index = SIGNALS.iter().position(|&s| s == sig).unwrap_or(0);
        let previous = PREVIOUS[index].load(Ordering::Acquire);
        // SAFETY: `previous` is null or the leaked sigaction saved at install.
        unsafe {
            if previous.is_null() {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            } else {
                libc::sigaction(sig, previous, std::ptr::null_mut());
            }
        }
        return;
    }
    // One report at a time, into a static buffer (the alternate signal stack
    // is small); a second thread faulting meanwhile waits for the exit.
    if REPORTING.swap(true, Ordering::AcqRel) {
        loop {
            // SAFETY: pause(2) is async-signal-safe; the first report exits.
            unsafe { libc::pause() };
        }
    }
    let report = &raw mut REPORT;
    // SAFETY: only the thread that won REPORTING gets here, once.
    let b = unsafe { &mut *report };
    let _ = write!(b, "\nFAULT: {} ", signal_name(sig));
    if let Some(g) = guard {
        let _ = write!(
            b,
            "on the guard page of a {} KiB kernel stack of {}: STACK OVERFLOW in image code \
             (Windows: bug check 0x7F UNEXPECTED_KERNEL_MODE_TRAP, double fault)",
            crate::stack::KERNEL_STACK_SIZE / 1024,
            g.name
        );
    } else if let Some(t) = table {
        // The words are the rules table's (rules.rs), formatted here without
        // allocating.
        if sig == libc::SIGILL {
            let _ = write!(
                b,
                "in a call through {}'s dispatch table: dispatch table: the owner changed a \
                 function pointer in its table while a peer was bound to it ({})",
                t.name,
                crate::rules::DISPATCH_CHANGED_OUTCOME
            );
        } else {
            let _ = write!(
                b,
                "accessing {addr:#x} in a call through {}'s dispatch table: dispatch table: the \
                 owner freed its table while a peer could still call through it ({})",
                t.name,
                crate::rules::DISPATCH_FREED_OUTCOME
            );
        }
    } else {
        let _ = write!(b, "accessing {addr:#x}");
    }
    match image {
        Some(i) => {
            let offset = rip - i.base;
            let _ = write!(
                b,
                "\n  at {}+{:#x}\n  source line: llvm-symbolizer --obj={} {:#x}\n",
                i.name,
                offset,
                i.path,
                i.preferred + offset
            );
            if reads_gs(rip) && crate::kpcr::gs_base() == 0 {
                let _ = writeln!(
                    b,
                    "  cause: a gs:-relative read (the KPCR, e.g. wdm.h's KeGetCurrentProcessorIndex) \
                     on a thread with no stand-in KPCR: this thread entered image code without \
                     passing stack::enter_image_code"
                );
            }
        }
        None if table.is_some() => {
            let _ = write!(
                b,
                "\n  at {rip:#x}, in the counting thunk of the peer's copy of that table (the \
                 caller's frames follow)\n"
            );
        }
        None => {
            let _ = write!(
                b,
                "\n  at {rip:#x}, in the host (a stand-in called by image code, on an image thread)\n"
            );
        }
    }
    // The words on the stack that point into image code: the callers (return
    // addresses), most recent first; for a fault in a leaf such as __chkstk
    // the first is the function that needed the big frame.
    let mut shown = 0;
    for i in 0..512 {
        let Some(word) = read_word(rsp + 8 * i) else {
            break;
        };
        if let Some(img) = registry::image_at(word) {
            let offset = word - img.base;
            let _ = writeln!(
                b,
                "  called from {}+{:#x}: llvm-symbolizer --obj={} {:#x}",
                img.name,
                offset,
                img.path,
                img.preferred + offset
            );
            shown += 1;
            if shown == 4 {
                break;
            }
        }
    }
    // SAFETY: write(2) and _exit(2) are async-signal-safe.
    unsafe {
        libc::write(2, b.bytes.as_ptr().cast(), b.len);
        libc::_exit(FAULT_EXIT_CODE);
    }
}

/// Reads a word of this process's memory without faulting (None if it is
/// not mapped): `process_vm_readv` on ourselves is async-signal-safe.
fn read_word(addr: usize) -> Option<usize> {
    let mut word = 0usize;
    let local = libc::iovec {
        iov_base: (&raw mut word).cast(),
        iov_len: 8,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: 8,
    };
    // SAFETY: reads 8 bytes into `word`; the kernel checks `addr`.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    (n == 8).then_some(word)
}

/// Installs the fault handler once, for the whole process.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (i, &sig) in SIGNALS.iter().enumerate() {
            // SAFETY: a zeroed sigaction is a valid starting point; the
            // handler is an SA_SIGINFO handler of the right signature; the old
            // action is leaked so the handler can restore it any time.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_fault as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                let old = Box::into_raw(Box::new(std::mem::zeroed::<libc::sigaction>()));
                libc::sigaction(sig, &action, old);
                PREVIOUS[i].store(old, Ordering::Release);
            }
        }
    });
}

/// An alternate signal stack for the calling thread, so that a stack
/// overflow can be reported; removed on drop.
pub struct AltStack {
    pages: crate::pe::Pages,
}

impl AltStack {
    /// Installs one on the calling thread.
    pub fn install() -> Result<AltStack, crate::pe::LoadError> {
        let pages = crate::pe::Pages::new(64 * 1024)?;
        let st = libc::stack_t {
            ss_sp: pages.base().cast(),
            ss_flags: 0,
            ss_size: pages.len(),
        };
        // SAFETY: the stack is mapped and outlives its use (drop removes it
        // before unmapping).
        unsafe { libc::sigaltstack(&st, std::ptr::null_mut()) };
        Ok(AltStack { pages })
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        let st = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: not on the alternate stack now (no handler runs); disables it.
        unsafe { libc::sigaltstack(&st, std::ptr::null_mut()) };
        let _ = self.pages.len();
    }
}
