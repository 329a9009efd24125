//! The load configuration and the two CFG function-pointer slots, in the
//! image (see [`crate::load_config`] for why the shell defines them).
//!
//! Written in assembly, like `_fltused` in `km_raw.rs`: the fields hold the
//! linker's `__guard_*` symbols, some of them absolute numbers (counts,
//! flags) that a Rust static cannot name, and `.globl` assembly symbols are
//! not exported from the image (rustc exports `#[no_mangle]` items of a
//! cdylib; a driver image exports `DriverEntry` alone). Every offset comes
//! from the Rust declaration of the structure, whose layout is pinned against
//! `winnt.h`, so the assembly cannot drift from it.
//!
//! - `__guard_check_icall_fptr` and `__guard_dispatch_icall_fptr` live in
//!   `.00cfg`, which the linker merges into the read-only `.rdata`, as in the
//!   MSVC CRT. They start as the no-op routines below: the check returns, the
//!   dispatch jumps to RAX. That is an image running without CFG. The
//!   kernel's loader writes its own check and dispatch routines into them
//!   (and the image host writes its own) before the image runs.
//! - `_load_config_used`: the `IMAGE_LOAD_CONFIG_DIRECTORY64` the linker
//!   points the load configuration data directory at, `Size` = the whole
//!   declared structure.
//!
//! With `/guard:cf` the linker fills the guard function table and sets
//! `__guard_flags`; without it every `__guard_*` symbol is 0 (the image then
//! has a load configuration and no CFG: `cargo xtask check` fails it).

use core::mem::offset_of;

use crate::load_config::{ImageLoadConfigDirectory64 as L, LOAD_CONFIG_SIZE};

/// Zero bytes from the end of one emitted field to the start of the next.
const fn gap(from_end: usize, to: usize) -> usize {
    assert!(to >= from_end);
    to - from_end
}

const CHECK: usize = offset_of!(L, GuardCFCheckFunctionPointer);
const FLAGS: usize = offset_of!(L, GuardFlags);
const IAT: usize = offset_of!(L, GuardAddressTakenIatEntryTable);
const LONGJMP_COUNT: usize = offset_of!(L, GuardLongJumpTargetCount);
const EH_CONT: usize = offset_of!(L, GuardEHContinuationTable);
const EH_CONT_COUNT: usize = offset_of!(L, GuardEHContinuationCount);

// The runs of fields emitted back to back below, as the structure has them.
const _: () = {
    assert!(offset_of!(L, GuardCFDispatchFunctionPointer) == CHECK + 8);
    assert!(offset_of!(L, GuardCFFunctionTable) == CHECK + 16);
    assert!(offset_of!(L, GuardCFFunctionCount) == CHECK + 24);
    assert!(FLAGS == CHECK + 32);
    assert!(offset_of!(L, GuardAddressTakenIatEntryCount) == IAT + 8);
    assert!(offset_of!(L, GuardLongJumpTargetTable) == IAT + 16);
    assert!(LONGJMP_COUNT == IAT + 24);
    assert!(EH_CONT_COUNT == EH_CONT + 8);
};

core::arch::global_asm!(
    // The default routines: what an image without CFG does.
    ".text",
    ".p2align 4",
    "nmr_guard_check_icall_nop:", // target in RCX; valid: return
    "    ret",
    ".p2align 4",
    "nmr_guard_dispatch_icall_nop:", // target in RAX, arguments untouched
    "    jmp rax",
    // The slots the loader overwrites (read-only once the image is mapped).
    ".section .00cfg,\"dr\"",
    ".p2align 3",
    ".globl __guard_check_icall_fptr",
    "__guard_check_icall_fptr:",
    "    .quad nmr_guard_check_icall_nop",
    ".globl __guard_dispatch_icall_fptr",
    "__guard_dispatch_icall_fptr:",
    "    .quad nmr_guard_dispatch_icall_nop",
    // IMAGE_LOAD_CONFIG_DIRECTORY64.
    ".section .rdata,\"dr\"",
    ".p2align 3",
    ".globl _load_config_used",
    "_load_config_used:",
    "    .long {size}", // Size
    "    .fill {to_check}, 1, 0",
    "    .quad __guard_check_icall_fptr", // GuardCFCheckFunctionPointer
    "    .quad __guard_dispatch_icall_fptr", // GuardCFDispatchFunctionPointer
    "    .quad __guard_fids_table", // GuardCFFunctionTable
    "    .quad __guard_fids_count", // GuardCFFunctionCount
    "    .long __guard_flags", // GuardFlags
    "    .fill {to_iat}, 1, 0", // CodeIntegrity
    "    .quad __guard_iat_table", // GuardAddressTakenIatEntryTable
    "    .quad __guard_iat_count", // GuardAddressTakenIatEntryCount
    "    .quad __guard_longjmp_table", // GuardLongJumpTargetTable
    "    .quad __guard_longjmp_count", // GuardLongJumpTargetCount
    "    .fill {to_eh_cont}, 1, 0",
    "    .quad __guard_eh_cont_table", // GuardEHContinuationTable
    "    .quad __guard_eh_cont_count", // GuardEHContinuationCount
    "    .fill {to_end}, 1, 0",
    size = const LOAD_CONFIG_SIZE,
    to_check = const gap(4, CHECK),
    to_iat = const gap(FLAGS + 4, IAT),
    to_eh_cont = const gap(LONGJMP_COUNT + 8, EH_CONT),
    to_end = const gap(EH_CONT_COUNT + 8, LOAD_CONFIG_SIZE),
);
