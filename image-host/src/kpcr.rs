//! A stand-in KPCR per thread that runs image code, behind `gs`.
//!
//! On Windows x64 `gs` points at the current processor's KPCR in kernel mode,
//! and drivers read it inline: wdm.h's `KeGetCurrentProcessorIndex` is one
//! `gs:[0x1a4]` load (`nmr_common::ffi::KPCR_PROCESSOR_INDEX_OFFSET`), which
//! the shipped images do on every NPI call. Linux x86_64 user space leaves
//! `gs` unused (glibc's TLS is on `fs`), and `arch_prctl(ARCH_SET_GS)` sets
//! its base per thread. So each thread that runs image code gets a page of
//! its own as its KPCR: `Self` and `CurrentPrcb` filled in as Windows does,
//! and the processor index, refreshed from `sched_getcpu` on every entry and
//! kept below the count the `KeQueryMaximumProcessorCountEx` stand-in gives.
//! The index is a hint to the images (their rundown releases on the slot it
//! acquired and drains every slot), so a thread that migrates between two
//! entries reads a stale but in-range index, as a preempted Windows thread
//! at PASSIVE can.
//!
//! [`ensure_current_thread`] is idempotent and cheap (a thread-local check,
//! `sched_getcpu`, one store). `stack::enter_image_code`, which every entry
//! into image code passes (`DriverEntry`, `DriverUnload`, a system thread's
//! start, every callback from the model or the host), calls it. A thread
//! that reaches image code without it reads
//! `gs:[0x1a4]` with a zero base: a SIGSEGV at a low address, which the fault
//! handler reports with the image, the offset and this cause.

use std::cell::Cell;

use nmr_common::ffi::KPCR_PROCESSOR_INDEX_OFFSET;

/// `KPCR.Self` (x64): the KPCR's own address.
const KPCR_SELF: usize = 0x18;
/// `KPCR.CurrentPrcb` (x64): the address of its `Prcb`.
const KPCR_CURRENT_PRCB: usize = 0x20;
/// `KPCR.Prcb` (x64): the KPRCB, inside the KPCR.
const KPCR_PRCB: usize = 0x180;
/// asm/prctl.h: `arch_prctl` codes (libc does not export them).
const ARCH_SET_GS: libc::c_int = 0x1001;
const ARCH_GET_GS: libc::c_int = 0x1004;
/// One page: covers every offset wdm.h's inline functions read.
const KPCR_BYTES: usize = 4096;

const _: () = assert!((KPCR_PROCESSOR_INDEX_OFFSET as usize) + 4 <= KPCR_BYTES);
const _: () = assert!(KPCR_PROCESSOR_INDEX_OFFSET as usize == KPCR_PRCB + 0x24);

/// One thread's stand-in KPCR (page-aligned, zeroed but for the fields set).
#[repr(C, align(4096))]
struct Kpcr([u8; KPCR_BYTES]);

/// Frees the thread's KPCR at thread exit, after clearing `gs`.
struct Installed {
    _page: Box<Kpcr>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        // SAFETY: arch_prctl(ARCH_SET_GS, 0) only changes this thread's gs
        // base; no image code runs on this thread any more (it is exiting).
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_GS, 0usize) };
    }
}

thread_local! {
    static KPCR: Cell<Option<*mut Kpcr>> = const { Cell::new(None) };
    static OWNER: std::cell::RefCell<Option<Installed>> = const { std::cell::RefCell::new(None) };
}

/// Makes `gs` of the calling thread point at its stand-in KPCR (allocating
/// it on the first call), and refreshes its processor index. Idempotent.
pub(crate) fn ensure_current_thread() {
    set_index_here(crate::ntoskrnl::current_processor_index());
}

/// Gives the calling thread its stand-in KPCR behind `gs` (allocated on the
/// first call, freed at thread exit) and sets the processor index that a
/// `gs:[0x1a4]` load reads on this thread to `index`, until the next entry
/// into image code refreshes it. For measuring that load, as the images do
/// it, outside an image (the rundown benchmark's `call_percpu_gs`).
pub fn stand_in_kpcr_here(index: u32) {
    set_index_here(index);
}

fn set_index_here(index: u32) {
    let kpcr = KPCR.with(|k| match k.get() {
        Some(p) => p,
        None => install_here(),
    });
    // SAFETY: `kpcr` is this thread's live page; the field is in range
    // (checked at compile time) and 4-aligned. Code on this thread reads it
    // only between our writes, never concurrently with one.
    unsafe {
        kpcr.cast::<u8>()
            .add(KPCR_PROCESSOR_INDEX_OFFSET as usize)
            .cast::<u32>()
            .write(index);
    }
}

#[cold]
fn install_here() -> *mut Kpcr {
    let mut page = Box::new(Kpcr([0; KPCR_BYTES]));
    let base = std::ptr::from_mut(&mut *page);
    let address = base as usize;
    page.0[KPCR_SELF..KPCR_SELF + 8].copy_from_slice(&address.to_le_bytes());
    page.0[KPCR_CURRENT_PRCB..KPCR_CURRENT_PRCB + 8]
        .copy_from_slice(&(address + KPCR_PRCB).to_le_bytes());
    // SAFETY: arch_prctl(ARCH_SET_GS, base) sets this thread's gs base only;
    // nothing in the host uses gs (glibc's thread pointer is fs).
    let rc = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_GS, address) };
    assert_eq!(
        rc, 0,
        "arch_prctl(ARCH_SET_GS) failed: images cannot run on this host"
    );
    OWNER.with(|o| *o.borrow_mut() = Some(Installed { _page: page }));
    KPCR.with(|k| k.set(Some(base)));
    base
}

/// This thread's `gs` base, for the fault report (async-signal-safe: one
/// system call).
pub(crate) fn gs_base() -> usize {
    let mut base: usize = 0;
    // SAFETY: ARCH_GET_GS writes the base to the address given.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_GS, &raw mut base) };
    base
}

/// The processor index image code on this thread reads now, if a stand-in
/// KPCR is installed.
#[cfg(test)]
pub(crate) fn index_here() -> Option<u32> {
    let kpcr = KPCR.with(Cell::get)?;
    // SAFETY: this thread's live page; the field is in range.
    Some(unsafe {
        kpcr.cast::<u8>()
            .add(KPCR_PROCESSOR_INDEX_OFFSET as usize)
            .cast::<u32>()
            .read()
    })
}
