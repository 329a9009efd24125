//! Kernel Control Flow Guard, enforced by the host as the kernel enforces it.
//!
//! An image built with CFG (`GUARD_CF` in its DLL characteristics) calls every
//! function pointer through `__guard_dispatch_icall_fptr`, with the target in
//! RAX, and lists its valid call targets in the guard function table of its
//! load configuration. The kernel's loader writes its own dispatch (and
//! check) routine into the image's two slots before the image runs; the
//! routine looks the target up in the CFG bitmap, built from the guard tables
//! of every loaded image, and stops the machine on a miss: bug check 0x139
//! `KERNEL_SECURITY_CHECK_FAILURE`, parameter 1 = 10,
//! `FAST_FAIL_GUARD_ICALL_CHECK_FAILURE`.
//!
//! Here the loader (`install`, called by `pe.rs` while the image is still
//! writable) writes the host's two routines into the slots the load
//! configuration names, and each image's table is registered while it is
//! mapped (`register`, by `driver.rs`). A target is valid when:
//!
//! - it lies in an image with a guard table and is exactly one of its
//!   entries (the kernel's bitmap has 16-byte granularity: it would also take
//!   the other bytes of a 16-byte slot holding a function that is not
//!   16-aligned; ours all are, as the linker aligns them);
//! - it lies in an image without CFG (the kernel lets anything in such an
//!   image be called, as it cannot know its functions);
//! - it is a counting copy of an NPI dispatch table entry (`dispatch.rs`,
//!   which the real NMR does not have): the copy's thunk is seen through, and
//!   the function it forwards to must be valid by the rules above;
//! - it is a stand-in bound to an import of a loaded image: a kernel export,
//!   which the kernel's bitmap allows (ntoskrnl.exe and netio.sys are CFG
//!   images, their exports are in their tables).
//!
//! Anything else is stopped: the report names the target (image and offset,
//! and the nearest valid entry below it), the caller (the return address
//! the call pushed) with the `llvm-symbolizer` command for each, and the
//! process exits with [`FAULT_EXIT_CODE`], as a CFG failure stops Windows.
//!
//! Not checked here, unlike on Windows: the calls the host itself makes into
//! an image (the model calling the NMR callbacks, a thread's start routine,
//! `DriverEntry`, `DriverUnload`). `cargo xtask check` checks statically
//! that every one of those functions is in its image's guard table.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use nmr_shell::load_config::{
    IMAGE_DLLCHARACTERISTICS_GUARD_CF, IMAGE_GUARD_CF_FUNCTION_TABLE_PRESENT,
    IMAGE_GUARD_CF_INSTRUMENTED, ImageLoadConfigDirectory64 as LoadConfig, guard_table_stride,
};

use crate::fault::FAULT_EXIT_CODE;
use crate::pe::{LoadError, SectionInfo};
use crate::registry;

/// `KERNEL_SECURITY_CHECK_FAILURE`: the bug check of a failed CFG check.
const KERNEL_SECURITY_CHECK_FAILURE: u32 = 0x139;
/// Its parameter 1 for a failed indirect call check.
const FAST_FAIL_GUARD_ICALL_CHECK_FAILURE: u32 = 10;

/// What CFG says of one mapped image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// No `GUARD_CF`: its code may be called anywhere, its calls are unchecked.
    Unguarded,
    /// `GUARD_CF`: the host's routines are in its slots; these RVAs (sorted)
    /// are its valid call targets.
    Table(&'static [u32]),
}

impl Guard {
    /// The image's valid call targets (RVAs), if it has CFG.
    pub fn table(&self) -> Option<&'static [u32]> {
        match self {
            Guard::Unguarded => None,
            Guard::Table(t) => Some(t),
        }
    }
}

fn bad(e: impl Into<String>) -> LoadError {
    LoadError::Malformed(format!("Control Flow Guard: {}", e.into()))
}

/// Reads the load configuration of a mapped image (relocated, imports bound,
/// still writable) and, for a CFG image, writes the host's check and
/// dispatch routines into the slots it names. An image that says it has CFG
/// but whose load configuration, slots or table are not usable is refused,
/// as the kernel refuses it.
///
/// `image` is the whole mapping; `load_config` the data directory's
/// `(rva, size)`.
pub(crate) fn install(
    image: &mut [u8],
    preferred_base: u64,
    dll_characteristics: u16,
    load_config: Option<(u32, u32)>,
    sections: &[SectionInfo],
) -> Result<Guard, LoadError> {
    if dll_characteristics & IMAGE_DLLCHARACTERISTICS_GUARD_CF == 0 {
        return Ok(Guard::Unguarded);
    }
    let base = image.as_ptr() as u64;
    let (rva, dir_size) = load_config
        .filter(|&(rva, _)| rva != 0)
        .ok_or_else(|| bad("GUARD_CF is set but the image has no load configuration"))?;
    let rva = rva as usize;
    let field_end = |offset: usize, width: usize| offset + width;
    let need = field_end(std::mem::offset_of!(LoadConfig, GuardFlags), 4);
    let u32_at = |image: &[u8], at: usize| -> Result<u32, LoadError> {
        image
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| {
                bad(format!(
                    "load configuration field at {at:#x} outside the image"
                ))
            })
    };
    let u64_at = |image: &[u8], at: usize| -> Result<u64, LoadError> {
        image
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| {
                bad(format!(
                    "load configuration field at {at:#x} outside the image"
                ))
            })
    };
    let size = u32_at(image, rva)? as usize;
    if size < need || (dir_size as usize) < need {
        return Err(bad(format!(
            "the load configuration is {size:#x} bytes (directory {dir_size:#x}): it does not \
             reach GuardFlags ({need:#x})"
        )));
    }
    let field = |name: usize| rva + name;
    let check_va = u64_at(
        image,
        field(std::mem::offset_of!(
            LoadConfig,
            GuardCFCheckFunctionPointer
        )),
    )?;
    let dispatch_va = u64_at(
        image,
        field(std::mem::offset_of!(
            LoadConfig,
            GuardCFDispatchFunctionPointer
        )),
    )?;
    let table_va = u64_at(
        image,
        field(std::mem::offset_of!(LoadConfig, GuardCFFunctionTable)),
    )?;
    let count = u64_at(
        image,
        field(std::mem::offset_of!(LoadConfig, GuardCFFunctionCount)),
    )?;
    let flags = u32_at(image, field(std::mem::offset_of!(LoadConfig, GuardFlags)))?;
    let want = IMAGE_GUARD_CF_INSTRUMENTED | IMAGE_GUARD_CF_FUNCTION_TABLE_PRESENT;
    if flags & want != want {
        return Err(bad(format!(
            "GUARD_CF is set but GuardFlags {flags:#x} lacks CF_INSTRUMENTED | \
             CF_FUNCTION_TABLE_PRESENT"
        )));
    }
    // The slots: 8 bytes each, inside the image, in a section that will be
    // read-only (a writable slot could be redirected by anyone).
    let slot_rva = |what: &str, va: u64| -> Result<usize, LoadError> {
        let at = va.wrapping_sub(base) as usize;
        let holder = sections
            .iter()
            .find(|s| at >= s.rva as usize && at + 8 <= (s.rva + s.size) as usize);
        match holder {
            Some(s) if s.prot & libc::PROT_WRITE == 0 && s.prot & libc::PROT_EXEC == 0 => Ok(at),
            Some(s) => Err(bad(format!(
                "{what} slot at RVA {at:#x} is in {}, which is writable or executable",
                s.name.trim_end_matches('\0')
            ))),
            None => Err(bad(format!(
                "{what} slot {va:#x} (preferred {:#x}) is not inside a section of the image",
                va.wrapping_sub(base).wrapping_add(preferred_base)
            ))),
        }
    };
    let check_at = slot_rva("GuardCFCheckFunctionPointer", check_va)?;
    let dispatch_at = slot_rva("GuardCFDispatchFunctionPointer", dispatch_va)?;

    // The table: `count` entries of `stride` bytes, each an RVA of code.
    let stride = guard_table_stride(flags);
    let table_at = table_va.wrapping_sub(base) as usize;
    let bytes = usize::try_from(count)
        .ok()
        .and_then(|c| c.checked_mul(stride))
        .filter(|&n| {
            table_at
                .checked_add(n)
                .is_some_and(|end| end <= image.len())
        })
        .ok_or_else(|| {
            bad(format!(
                "guard function table of {count} entries at {table_va:#x} is not inside the image"
            ))
        })?;
    let mut rvas = Vec::with_capacity(count as usize);
    for entry in image[table_at..table_at + bytes].chunks_exact(stride) {
        let target = u32::from_le_bytes(entry[..4].try_into().expect("4 bytes"));
        let in_code = sections
            .iter()
            .any(|s| s.prot & libc::PROT_EXEC != 0 && target >= s.rva && target < s.rva + s.size);
        if !in_code {
            return Err(bad(format!(
                "guard function table entry RVA {target:#x} is not in an executable section"
            )));
        }
        rvas.push(target);
    }
    rvas.sort_unstable();
    rvas.dedup();

    image[check_at..check_at + 8].copy_from_slice(&(host_check_routine() as u64).to_le_bytes());
    image[dispatch_at..dispatch_at + 8]
        .copy_from_slice(&(host_dispatch_routine() as u64).to_le_bytes());
    Ok(Guard::Table(intern_table(rvas)))
}

/// One copy of each distinct table, for good: images are loaded again and
/// again from the same few files, and a table must outlive any check that
/// may still read it.
fn intern_table(rvas: Vec<u32>) -> &'static [u32] {
    static TABLES: Mutex<Vec<&'static [u32]>> = Mutex::new(Vec::new());
    let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = tables.iter().find(|t| ***t == *rvas) {
        return t;
    }
    let leaked: &'static [u32] = Box::leak(rvas.into_boxed_slice());
    tables.push(leaked);
    leaked
}

// ------------------------------------------------------------ the tables

/// Ranges registered at once, per table: generous (images that cannot be
/// unloaded stay registered for good); the scan stops at the highest slot used.
const SLOTS: usize = 1024;

/// A range with a pointer-sized payload; `base == 0`: free, 1: being filled.
struct Slot {
    base: AtomicUsize,
    len: AtomicUsize,
    /// Images: the table's address (0: an image without CFG). Forwarders:
    /// the offset of the first thunk.
    a: AtomicUsize,
    /// Images: the table's length. Forwarders: thunk size << 16 | offset of
    /// the destination in a thunk.
    b: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    base: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    a: AtomicUsize::new(0),
    b: AtomicUsize::new(0),
};

struct Table {
    slots: [Slot; SLOTS],
    /// One past the highest slot ever claimed.
    high: AtomicUsize,
}

static IMAGES: Table = Table {
    slots: [FREE; SLOTS],
    high: AtomicUsize::new(0),
};
static FORWARDERS: Table = Table {
    slots: [FREE; SLOTS],
    high: AtomicUsize::new(0),
};

impl Table {
    fn claim(&'static self, base: usize, len: usize, a: usize, b: usize) -> Option<Registered> {
        for (index, slot) in self.slots.iter().enumerate() {
            if slot
                .base
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                slot.len.store(len, Ordering::Relaxed);
                slot.a.store(a, Ordering::Relaxed);
                slot.b.store(b, Ordering::Relaxed);
                self.high.fetch_max(index + 1, Ordering::AcqRel);
                slot.base.store(base, Ordering::Release);
                return Some(Registered { table: self, index });
            }
        }
        None
    }

    /// `(base, a, b)` of the range holding `addr`.
    #[inline]
    fn find(&self, addr: usize) -> Option<(usize, usize, usize)> {
        let high = self.high.load(Ordering::Acquire);
        self.slots[..high].iter().find_map(|slot| {
            let base = slot.base.load(Ordering::Acquire);
            (base > 1 && addr >= base && addr - base < slot.len.load(Ordering::Relaxed)).then(
                || {
                    (
                        base,
                        slot.a.load(Ordering::Relaxed),
                        slot.b.load(Ordering::Relaxed),
                    )
                },
            )
        })
    }
}

/// A registered range; unregistered on drop.
pub(crate) struct Registered {
    table: &'static Table,
    index: usize,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table.slots[self.index]
            .base
            .store(0, Ordering::Release);
    }
}

/// Registers a mapped image's guard for the checks, while it stays mapped.
pub(crate) fn register(base: usize, len: usize, guard: Guard) -> Option<Registered> {
    let (table, count) = guard
        .table()
        .map_or((0, 0), |t| (t.as_ptr() as usize, t.len()));
    IMAGES.claim(base, len, table, count)
}

/// Registers a page of forwarding thunks (`dispatch.rs`): from
/// `first_thunk` on, a thunk every `thunk_size` bytes, each holding the
/// address it jumps to at `dest_offset`. The page must stay mapped, and
/// unchanged, while registered.
pub(crate) fn register_forwarders(
    page: usize,
    len: usize,
    first_thunk: usize,
    thunk_size: usize,
    dest_offset: usize,
) -> Registered {
    assert!(thunk_size < 1 << 16 && dest_offset + 8 <= thunk_size);
    FORWARDERS
        .claim(page, len, first_thunk, thunk_size << 16 | dest_offset)
        .expect("more than 1024 dispatch table copies at once")
}

/// The addresses bound to the images' imports: kernel exports, valid targets.
static EXPORTS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];

/// Records a stand-in bound to an import (a kernel export): a valid target.
pub(crate) fn allow_export(addr: usize) {
    for slot in &EXPORTS {
        match slot.compare_exchange(0, addr, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(a) if a == addr => return,
            Err(_) => {}
        }
    }
    panic!("more than 256 distinct import bindings");
}

fn is_export(addr: usize) -> bool {
    EXPORTS
        .iter()
        .map(|s| s.load(Ordering::Acquire))
        .take_while(|&a| a != 0)
        .any(|a| a == addr)
}

// ------------------------------------------------------------- the check

static COUNTING: AtomicBool = AtomicBool::new(false);
static CHECKED: AtomicU64 = AtomicU64::new(0);

/// Counts the indirect calls validated from now on (off by default: a
/// shared counter on every indirect call would be measured by the
/// benchmarks). Returns the count so far.
pub fn count_checks(on: bool) -> u64 {
    COUNTING.store(on, Ordering::Relaxed);
    CHECKED.load(Ordering::Relaxed)
}

/// Whether an image allows `target`: exactly a table entry, or anything in
/// an image without CFG. None when `target` is in no image.
#[inline]
fn image_allows(target: usize) -> Option<bool> {
    let (base, table, count) = IMAGES.find(target)?;
    if table == 0 {
        return Some(true);
    }
    // SAFETY: an interned table (leaked, never freed or changed) of `count`
    // entries, published with the slot.
    let rvas = unsafe { std::slice::from_raw_parts(table as *const u32, count) };
    Some(u32::try_from(target - base).is_ok_and(|rva| rvas.binary_search(&rva).is_ok()))
}

/// The destination of the forwarding thunk at `target`, if it is one
/// (Err(()) for an address inside a forwarder page that is no thunk's start).
fn forwarded(target: usize) -> Option<Result<usize, ()>> {
    let (page, first, b) = FORWARDERS.find(target)?;
    let (size, dest) = (b >> 16, b & 0xFFFF);
    let offset = target - page;
    if offset < first || !(offset - first).is_multiple_of(size) {
        return Some(Err(()));
    }
    // SAFETY: a thunk of a registered page, mapped and unchanged while
    // registered (the caller is calling it, so it is live).
    Some(Ok(unsafe {
        ((target + dest) as *const usize).read_unaligned()
    }))
}

/// The host's check of one indirect call, from the routines below: returns
/// when `target` is valid; otherwise reports and ends the process.
extern "win64" fn validate(target: usize, return_address: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        CHECKED.fetch_add(1, Ordering::Relaxed);
    }
    match image_allows(target) {
        Some(true) => return,
        Some(false) => stop(target, None, return_address),
        None => {}
    }
    match forwarded(target) {
        Some(Ok(dest)) if image_allows(dest) == Some(true) => return,
        Some(Ok(dest)) => stop(target, Some(dest), return_address),
        Some(Err(())) => stop(target, None, return_address),
        None => {}
    }
    if !is_export(target) {
        stop(target, None, return_address);
    }
}

/// `name+0xoff` and the symbolizer command for an address in an image.
/// With `as_target`, also where `addr` stands in its image's guard table.
fn describe(out: &mut String, what: &str, addr: usize, as_target: bool) {
    match registry::image_at(addr) {
        Some(i) => {
            let offset = addr - i.base;
            let _ = write!(
                out,
                "\n  {what} {}+{offset:#x}: llvm-symbolizer --obj={} {:#x}",
                i.name,
                i.path,
                i.preferred + offset
            );
            let found = IMAGES.find(addr).filter(|(_, t, _)| as_target && *t != 0);
            if let Some((base, table, count)) = found {
                // SAFETY: as in `image_allows`.
                let rvas = unsafe { std::slice::from_raw_parts(table as *const u32, count) };
                let rva = (addr - base) as u32;
                match rvas.iter().rev().find(|&&r| r <= rva) {
                    Some(&r) if r == rva => {
                        let _ = write!(out, " (in its guard function table)");
                    }
                    Some(&r) => {
                        let _ = write!(
                            out,
                            "\n    not in the guard function table of {} ({} entries); the \
                             nearest entry below is {}+{r:#x}, {} bytes before: the middle of a \
                             function",
                            i.name,
                            rvas.len(),
                            i.name,
                            rva - r
                        );
                    }
                    None => {
                        let _ = write!(
                            out,
                            "\n    not in the guard function table of {} (below its first entry)",
                            i.name
                        );
                    }
                }
            }
        }
        None => {
            let _ = write!(
                out,
                "\n  {what} {addr:#x}: in no loaded image, and no kernel export"
            );
        }
    }
}

fn stop(target: usize, forwarded_to: Option<usize>, return_address: usize) -> ! {
    static ONE: Mutex<()> = Mutex::new(());
    // One report: a second thread failing meanwhile waits for the exit.
    let _one = ONE.lock();
    let mut out = format!(
        "\nCFG: indirect call to an invalid target, stopped (Windows: bug check {:#x} \
         KERNEL_SECURITY_CHECK_FAILURE, parameter 1 = {} FAST_FAIL_GUARD_ICALL_CHECK_FAILURE)",
        KERNEL_SECURITY_CHECK_FAILURE, FAST_FAIL_GUARD_ICALL_CHECK_FAILURE
    );
    match forwarded_to {
        Some(dest) => {
            let _ = write!(
                out,
                "\n  target {target:#x}: an entry of the NPI dispatch table the caller was \
                 given (its counting copy), which points to"
            );
            describe(&mut out, "target", dest, true);
        }
        None => describe(&mut out, "target", target, true),
    }
    describe(&mut out, "caller (return address)", return_address, false);
    out.push('\n');
    // SAFETY: write(2) of an owned buffer, then _exit(2): nothing else runs.
    unsafe {
        libc::write(2, out.as_ptr().cast(), out.len());
        libc::_exit(FAULT_EXIT_CODE);
    }
}

// --------------------------------------------------------- the routines

// The two routines the images' slots get. Both are called from image code,
// Windows x64 convention, with the stack as at a call (RSP = 8 mod 16):
// - dispatch: target in RAX, the target's arguments in RCX, RDX, R8, R9,
//   XMM0-XMM3 and on the stack; validates, then jumps to RAX with all of
//   them as they were (the dispatch contract lets it clobber R10 and R11
//   only; it keeps those too).
// - check: target in RCX; validates and returns, every register preserved
//   (LLVM's CFGuard_Check convention).
// Each saves RAX, RCX, RDX, R8-R11 and XMM0-XMM5 (the registers a Windows
// x64 function may change), calls `validate` (a Windows x64 function, which
// keeps the others), and restores them.
/// Saves what a Windows x64 function may change, and makes room for the
/// call: 7 pushes and 128 bytes (RSP 16-aligned again, a 32-byte home area,
/// XMM0-XMM5 at +32). The caller's return address is then at RSP + 184.
macro_rules! save_volatile {
    () => {
        concat!(
            "push rax\n",
            "push rcx\n",
            "push rdx\n",
            "push r8\n",
            "push r9\n",
            "push r10\n",
            "push r11\n",
            "sub rsp, 128\n",
            "movdqu [rsp + 32], xmm0\n",
            "movdqu [rsp + 48], xmm1\n",
            "movdqu [rsp + 64], xmm2\n",
            "movdqu [rsp + 80], xmm3\n",
            "movdqu [rsp + 96], xmm4\n",
            "movdqu [rsp + 112], xmm5\n",
            "mov rdx, [rsp + 184]\n",
        )
    };
}

/// Undoes `save_volatile!`.
macro_rules! restore_volatile {
    () => {
        concat!(
            "movdqu xmm0, [rsp + 32]\n",
            "movdqu xmm1, [rsp + 48]\n",
            "movdqu xmm2, [rsp + 64]\n",
            "movdqu xmm3, [rsp + 80]\n",
            "movdqu xmm4, [rsp + 96]\n",
            "movdqu xmm5, [rsp + 112]\n",
            "add rsp, 128\n",
            "pop r11\n",
            "pop r10\n",
            "pop r9\n",
            "pop r8\n",
            "pop rdx\n",
            "pop rcx\n",
            "pop rax\n",
        )
    };
}

core::arch::global_asm!(
    ".text",
    ".p2align 4",
    ".globl nmr_ih_cfg_dispatch",
    "nmr_ih_cfg_dispatch:",
    save_volatile!(), // RDX = the return address
    "mov rcx, rax",   // the target
    "call {validate}",
    restore_volatile!(),
    "jmp rax",
    ".p2align 4",
    ".globl nmr_ih_cfg_check",
    "nmr_ih_cfg_check:",
    save_volatile!(), // RCX: the target already
    "call {validate}",
    restore_volatile!(),
    "ret",
    validate = sym validate,
);

unsafe extern "C" {
    fn nmr_ih_cfg_dispatch();
    fn nmr_ih_cfg_check();
}

fn host_dispatch_routine() -> usize {
    nmr_ih_cfg_dispatch as *const () as usize
}

fn host_check_routine() -> usize {
    nmr_ih_cfg_check as *const () as usize
}

/// The host's dispatch routine's address (what the images' dispatch slots
/// hold once loaded).
pub fn dispatch_routine() -> usize {
    host_dispatch_routine()
}

// ------------------------------------------------------------ test knob

/// Bytes added to every function pointer of the next NPI dispatch table the
/// host copies for an image named `MISDIRECT_IMAGE`: a table entry pointing
/// into the middle of a function, to show that CFG stops the call. 0: off.
static MISDIRECT_BY: AtomicUsize = AtomicUsize::new(0);
static MISDIRECT_IMAGE: Mutex<Option<String>> = Mutex::new(None);

/// From now on, the dispatch tables of `image` reach their peers with every
/// function pointer `bytes` past the function's start (a corrupted or
/// hostile table). For tests only: CFG must stop the first call through one.
pub fn misdirect_dispatch_tables(image: &str, bytes: usize) {
    *MISDIRECT_IMAGE.lock().unwrap_or_else(|e| e.into_inner()) = Some(image.to_owned());
    MISDIRECT_BY.store(bytes, Ordering::Release);
}

/// What `dispatch.rs` applies to each function pointer of a table of
/// `image` it copies: the pointer itself, unless a test misdirects it.
pub(crate) fn table_entry(image: &str, function: usize) -> usize {
    let by = MISDIRECT_BY.load(Ordering::Acquire);
    if by == 0 {
        return function;
    }
    let g = MISDIRECT_IMAGE.lock().unwrap_or_else(|e| e.into_inner());
    if g.as_deref() == Some(image) {
        function + by
    } else {
        function
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_valid_exactly_at_a_table_entry_or_anywhere_in_an_image_without_cfg() {
        static TABLE: [u32; 3] = [0x1000, 0x1040, 0x2000];
        // Address ranges no real mapping uses (the checks only compare).
        let (guarded, plain) = (0x7e00_0000_0000_usize, 0x7e00_1000_0000_usize);
        let _g = register(guarded, 0x10000, Guard::Table(&TABLE)).unwrap();
        let _p = register(plain, 0x10000, Guard::Unguarded).unwrap();
        assert_eq!(image_allows(guarded + 0x1040), Some(true));
        assert_eq!(image_allows(guarded + 0x1044), Some(false), "mid-function");
        assert_eq!(image_allows(guarded + 0x0fff), Some(false));
        assert_eq!(image_allows(plain + 0x1234), Some(true));
        assert_eq!(image_allows(guarded + 0x10000), None, "past the image");
    }

    #[test]
    fn a_forwarding_thunk_is_seen_through_only_at_a_thunk_start() {
        // A fake page: thunks of 32 bytes from offset 256, the destination
        // at offset 16 of each.
        let mut page = vec![0u8; 4096];
        page[256 + 16..256 + 24].copy_from_slice(&0x1234_5678_usize.to_le_bytes());
        page[288 + 16..288 + 24].copy_from_slice(&0x9abc_def0_usize.to_le_bytes());
        let base = page.as_ptr() as usize;
        let _f = register_forwarders(base, page.len(), 256, 32, 16);
        assert_eq!(forwarded(base + 256), Some(Ok(0x1234_5678)));
        assert_eq!(forwarded(base + 288), Some(Ok(0x9abc_def0)));
        assert_eq!(forwarded(base + 260), Some(Err(())), "inside a thunk");
        assert_eq!(forwarded(base + 8), Some(Err(())), "the table copy itself");
        assert_eq!(forwarded(base + 4096), None);
    }
}
