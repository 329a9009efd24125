//! What kernel Control Flow Guard costs one indirect call of a shipped
//! image, as the image host enforces it, side by side in one run (issue 19):
//!
//! - `direct`: `call reg` to a function of the image: an image built
//!   without CFG;
//! - `nop_dispatch`: `call` through a routine that only jumps to RAX: a CFG
//!   image whose slot holds the shell's no-op routine (CFG not enforced, the
//!   instrumentation alone);
//! - `host_dispatch`: `call` through the routine the image host writes into
//!   the image's dispatch slot, which looks the target up in the image's
//!   guard function table, then jumps to it.
//!
//! The target is the first entry of `nmr_client.sys`'s guard table, checked
//! to be `mov eax, 1; ret` (the shell's `__CxxFrameHandler3`), so that the
//! call itself costs next to nothing and the difference is the dispatch.
//! Windows' own dispatch routine reads a bitmap instead; this measures the
//! host's, not the kernel's.
//!
//! Run: `cargo xtask package && cargo bench -p testbed --bench cfg --
//! --warm-up-time 1 --measurement-time 3` (x86_64 Linux; says SKIPPED without
//! the images).

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod x64 {
    use std::arch::{asm, global_asm};

    // The no-op dispatch routine, as the shell's (shell/src/cfg_support.rs).
    global_asm!(
        ".text",
        ".p2align 4",
        ".globl testbed_cfg_nop_dispatch",
        "testbed_cfg_nop_dispatch:",
        "    jmp rax",
    );

    unsafe extern "C" {
        fn testbed_cfg_nop_dispatch();
    }

    pub fn nop_dispatch() -> usize {
        testbed_cfg_nop_dispatch as *const () as usize
    }

    /// `call target` (`dispatch == 0`) or `call dispatch` with RAX = target,
    /// Windows x64 convention, RSP 16-aligned with a 32-byte home area.
    ///
    /// # Safety
    ///
    /// `target` is a Windows x64 function that takes nothing and returns a
    /// value in EAX; `dispatch` is 0 or a CFG dispatch routine.
    #[inline(always)]
    pub unsafe fn call(dispatch: usize, target: usize) -> u32 {
        let ret: usize;
        let via = if dispatch == 0 { target } else { dispatch };
        // SAFETY: the function's contract; RSP is restored from R12 (kept
        // by the callee: Windows x64 nonvolatile) after the aligned call.
        unsafe {
            asm!(
                "mov r12, rsp",
                "and rsp, -16",
                "sub rsp, 32",
                "call {via}",
                "mov rsp, r12",
                via = in(reg) via,
                inout("rax") target => ret,
                out("r12") _,
                clobber_abi("win64"),
            );
        }
        ret as u32
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn bench(c: &mut Criterion) {
    use nmr_image_host::{Driver, cfg};

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sys/nmr_client.sys");
    let driver = match Driver::load(&path) {
        Ok(d) => d,
        Err(e) => {
            println!(
                "*** SKIPPED: {}: {e} (run `cargo xtask package` first) ***",
                path.display()
            );
            return;
        }
    };
    let table = driver
        .image()
        .guard()
        .table()
        .expect("nmr_client.sys has a guard function table (CFG build)");
    let target = driver.image().base() + table[0] as usize;
    // SAFETY: a table entry is code inside the mapped image (checked at load).
    let code = unsafe { std::slice::from_raw_parts(target as *const u8, 6) };
    assert_eq!(
        code,
        [0xB8, 0x01, 0x00, 0x00, 0x00, 0xC3],
        "the first guard table entry is `mov eax, 1; ret`"
    );
    let host = cfg::dispatch_routine();
    let nop = x64::nop_dispatch();
    let mut g = c.benchmark_group("cfg_indirect_call");
    for (name, via) in [
        ("direct", 0),
        ("nop_dispatch", nop),
        ("host_dispatch", host),
    ] {
        g.bench_function(name, |b| {
            // SAFETY: the target is `mov eax, 1; ret`; the routines are
            // dispatch routines (the host's validates the target: valid).
            b.iter(|| unsafe { x64::call(black_box(via), black_box(target)) })
        });
    }
    g.finish();
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn bench(_: &mut Criterion) {
    println!("*** SKIPPED: the images run on x86_64 Linux only ***");
}

criterion_group!(benches, bench);
criterion_main!(benches);
