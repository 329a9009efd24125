//! Tests of the image host that need no built image: a small PE32+ image is
//! assembled here, byte by byte, the way lld lays one out (including an
//! export directory at an unaligned address).

use std::ffi::c_void;
use std::process::Command;

use crate::driver::Driver;
use crate::pe::LoadError;

const PREFERRED: u64 = 0x1_8000_0000;

/// RVAs of the synthetic image's functions.
const PROBE: u32 = 0x1000;
const FAULT: u32 = 0x1010;
const OVERFLOW: u32 = 0x1020;
const CALL_IMPORT: u32 = 0x1050;

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}
fn put16(buf: &mut [u8], at: usize, v: u16) {
    put(buf, at, &v.to_le_bytes());
}
fn put32(buf: &mut [u8], at: usize, v: u32) {
    put(buf, at, &v.to_le_bytes());
}
fn put64(buf: &mut [u8], at: usize, v: u64) {
    put(buf, at, &v.to_le_bytes());
}

/// A PE32+ x64 image: .text (RX), .rdata (R: imports, IAT, exports),
/// .data (RW: one pointer with a DIR64 relocation), .reloc. It imports
/// `ntoskrnl.exe!<import>`.
fn synthetic_image(import: &str) -> Vec<u8> {
    // (name, rva, file offset, characteristics)
    let sections: [(&[u8; 8], u32, u32, u32); 4] = [
        (b".text\0\0\0", 0x1000, 0x400, 0x6000_0020),
        (b".rdata\0\0", 0x2000, 0x600, 0x4000_0040),
        (b".data\0\0\0", 0x3000, 0xA00, 0xC000_0040),
        (b".reloc\0\0", 0x4000, 0xC00, 0x4200_0040),
    ];
    let raw_size = |i: usize| if i == 1 { 0x400 } else { 0x200 };
    let mut f = vec![0u8; 0xE00];
    // DOS header and PE signature.
    put(&mut f, 0, b"MZ");
    put32(&mut f, 0x3C, 0x40);
    put(&mut f, 0x40, b"PE\0\0");
    // COFF header.
    let coff = 0x44;
    put16(&mut f, coff, 0x8664);
    put16(&mut f, coff + 2, sections.len() as u16);
    put16(&mut f, coff + 16, 240);
    put16(&mut f, coff + 18, 0x2022);
    // Optional header (PE32+).
    let opt = coff + 20;
    put16(&mut f, opt, 0x20B);
    put32(&mut f, opt + 16, PROBE); // AddressOfEntryPoint
    put32(&mut f, opt + 20, 0x1000); // BaseOfCode
    put64(&mut f, opt + 24, PREFERRED);
    put32(&mut f, opt + 32, 0x1000); // SectionAlignment
    put32(&mut f, opt + 36, 0x200); // FileAlignment
    put16(&mut f, opt + 40, 6); // OS version
    put16(&mut f, opt + 48, 6); // subsystem version
    put32(&mut f, opt + 56, 0x5000); // SizeOfImage
    put32(&mut f, opt + 60, 0x400); // SizeOfHeaders
    put16(&mut f, opt + 68, 1); // NATIVE
    put16(&mut f, opt + 70, 0x0160); // DYNAMIC_BASE | NX_COMPAT | HIGH_ENTROPY_VA
    put32(&mut f, opt + 108, 16); // NumberOfRvaAndSizes
    let dir = |i: usize| opt + 112 + 8 * i;
    put32(&mut f, dir(0), 0x2101); // export, unaligned as lld places it
    put32(&mut f, dir(0) + 4, 0x100);
    put32(&mut f, dir(1), 0x2000); // import
    put32(&mut f, dir(1) + 4, 40);
    put32(&mut f, dir(5), 0x4000); // base relocations
    put32(&mut f, dir(5) + 4, 12);
    put32(&mut f, dir(12), 0x2060); // IAT
    put32(&mut f, dir(12) + 4, 16);
    // Section headers.
    let sh = opt + 240;
    for (i, (name, rva, raw, ch)) in sections.iter().enumerate() {
        let h = sh + 40 * i;
        put(&mut f, h, *name);
        put32(&mut f, h + 8, raw_size(i)); // VirtualSize
        put32(&mut f, h + 12, *rva);
        put32(&mut f, h + 16, raw_size(i)); // SizeOfRawData
        put32(&mut f, h + 20, *raw);
        put32(&mut f, h + 36, *ch);
    }
    let file = |rva: u32| {
        let (_, s_rva, s_raw, _) = sections
            .iter()
            .find(|s| rva >= s.1 && rva < s.1 + 0x1000)
            .unwrap();
        (rva - s_rva + s_raw) as usize
    };
    // .text
    put(&mut f, file(PROBE), &[0xB8, 0x34, 0x12, 0x00, 0x00, 0xC3]); // mov eax, 0x1234; ret
    put(
        &mut f,
        file(FAULT),
        &[0x48, 0x8B, 0x04, 0x25, 0, 0, 0, 0, 0xC3],
    ); // mov rax, [0]; ret
    // sub rsp, 0x1000; mov [rsp], rax; jmp back: probes down until the guard page.
    put(
        &mut f,
        file(OVERFLOW),
        &[
            0x48, 0x81, 0xEC, 0x00, 0x10, 0x00, 0x00, 0x48, 0x89, 0x04, 0x24, 0xEB, 0xF3,
        ],
    );
    // mov ecx, 0xFFFF; jmp [rip + IAT slot]
    put(
        &mut f,
        file(CALL_IMPORT),
        &[0xB9, 0xFF, 0xFF, 0x00, 0x00, 0xFF, 0x25],
    );
    let next = CALL_IMPORT + 11;
    put32(&mut f, file(CALL_IMPORT + 7), 0x2060 - next);
    // .rdata: import descriptor, ILT, IAT, hint/name, DLL name.
    put32(&mut f, file(0x2000), 0x2040); // OriginalFirstThunk
    put32(&mut f, file(0x2000) + 12, 0x20C0); // Name
    put32(&mut f, file(0x2000) + 16, 0x2060); // FirstThunk
    put64(&mut f, file(0x2040), 0x2080);
    put64(&mut f, file(0x2060), 0x2080);
    put(&mut f, file(0x2082), import.as_bytes());
    put(&mut f, file(0x20C0), b"ntoskrnl.exe\0");
    // Export directory at 0x2101.
    let e = file(0x2101);
    put32(&mut f, e + 12, 0x2200); // Name
    put32(&mut f, e + 16, 1); // Base
    put32(&mut f, e + 20, 4);
    put32(&mut f, e + 24, 4);
    put32(&mut f, e + 28, 0x2140);
    put32(&mut f, e + 32, 0x2160);
    put32(&mut f, e + 36, 0x2180);
    for (i, rva) in [PROBE, FAULT, OVERFLOW, CALL_IMPORT].iter().enumerate() {
        put32(&mut f, file(0x2140) + 4 * i, *rva);
    }
    // Names in lexical order, with their ordinals (indexes into the functions).
    let names: [(&[u8], u16); 4] = [
        (b"CallImport\0", 3),
        (b"Fault\0", 1),
        (b"Overflow\0", 2),
        (b"Probe\0", 0),
    ];
    let mut at = 0x21A0u32;
    for (i, (name, ordinal)) in names.iter().enumerate() {
        put32(&mut f, file(0x2160) + 4 * i, at);
        put16(&mut f, file(0x2180) + 2 * i, *ordinal);
        put(&mut f, file(at), name);
        at += name.len() as u32;
    }
    put(&mut f, file(0x2200), b"synthetic.sys\0");
    // .data: the preferred address of .rdata, relocated at load.
    put64(&mut f, file(0x3000), PREFERRED + 0x2000);
    // .reloc: one block, one DIR64 entry and one ABSOLUTE pad.
    put32(&mut f, file(0x4000), 0x3000);
    put32(&mut f, file(0x4000) + 4, 12);
    put16(&mut f, file(0x4000) + 8, 0xA000);
    f
}

fn load(import: &str) -> Result<Driver, LoadError> {
    Driver::load_bytes(
        &synthetic_image(import),
        "synthetic.sys",
        "target/synthetic.sys",
    )
}

#[test]
fn maps_relocates_binds_and_runs_at_a_non_preferred_base() {
    let d = load("KeQueryMaximumProcessorCountEx\0").expect("the synthetic image loads");
    let image = d.image();
    assert_ne!(image.base() as u64, PREFERRED);
    assert_eq!(image.relocations(), 1);
    // SAFETY: .data is mapped readable; the relocated pointer is read only.
    let relocated = unsafe { ((image.base() + 0x3000) as *const u64).read() };
    assert_eq!(
        relocated,
        image.base() as u64 + 0x2000,
        "DIR64 relocation applied"
    );
    assert_eq!(
        image.imports(),
        [(
            "ntoskrnl.exe".to_string(),
            "KeQueryMaximumProcessorCountEx".to_string()
        )]
    );
    // The export directory (unaligned) read by hand.
    assert_eq!(
        image.export("Probe").unwrap(),
        image.base() + PROBE as usize
    );
    assert!(matches!(
        image.export("Nope"),
        Err(LoadError::MissingExport(_))
    ));
    // Code runs, and reaches the stand-in through the IAT.
    type F = unsafe extern "win64" fn() -> u32;
    // SAFETY: the functions assembled above, mapped RX.
    let (probe, call) = unsafe {
        (
            std::mem::transmute::<usize, F>(image.export("Probe").unwrap()),
            std::mem::transmute::<usize, F>(image.export("CallImport").unwrap()),
        )
    };
    // SAFETY: they take nothing and return a u32.
    assert_eq!(unsafe { probe() }, 0x1234);
    let cpus = std::thread::available_parallelism().unwrap().get() as u32;
    // SAFETY: as above.
    assert_eq!(unsafe { call() }, cpus);
}

#[test]
fn sections_get_their_protection_and_the_iat_is_read_only() {
    let d = load("KeQueryMaximumProcessorCountEx\0").unwrap();
    let prot: Vec<(String, i32)> = d
        .image()
        .sections()
        .iter()
        .map(|s| (s.name.trim_end_matches('\0').to_string(), s.prot))
        .collect();
    assert_eq!(
        prot,
        [
            (".text".to_string(), libc::PROT_READ | libc::PROT_EXEC),
            (".rdata".to_string(), libc::PROT_READ),
            (".data".to_string(), libc::PROT_READ | libc::PROT_WRITE),
            (".reloc".to_string(), libc::PROT_READ),
        ]
    );
    // The kernel agrees: /proc/self/maps shows the IAT's page read-only.
    let iat = d.image().base() + d.image().iat().0 as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| {
            let (range, _) = l.split_once(' ').unwrap();
            let (lo, hi) = range.split_once('-').unwrap();
            let (lo, hi) = (
                usize::from_str_radix(lo, 16).unwrap(),
                usize::from_str_radix(hi, 16).unwrap(),
            );
            iat >= lo && iat < hi
        })
        .expect("the IAT is mapped");
    assert!(
        line.split_whitespace().nth(1).unwrap().starts_with("r--"),
        "{line}"
    );
}

#[test]
fn an_import_without_a_stand_in_refuses_the_load_naming_dll_and_function() {
    let err = load("NoSuchKernelFunction\0").err().expect("refused");
    assert_eq!(
        err,
        LoadError::MissingImport {
            dll: "ntoskrnl.exe".into(),
            function: "NoSuchKernelFunction".into()
        }
    );
    let text = err.to_string();
    assert!(text.contains("ntoskrnl.exe!NoSuchKernelFunction"), "{text}");
}

#[test]
fn a_file_that_is_not_pe_is_refused() {
    let err = Driver::load_bytes(b"MZ not really", "x.sys", "x.sys")
        .err()
        .expect("refused");
    assert!(matches!(err, LoadError::Malformed(_)), "{err}");
}

/// The stand-ins are the import allow-list of `cargo xtask check`: the same
/// names, both ways.
#[test]
fn stand_ins_equal_the_check_sys_allow_list() {
    let py = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tools/check-sys/check_sys.py"
    ))
    .unwrap();
    let block = |start: &str| -> Vec<String> {
        let from = py
            .find(start)
            .unwrap_or_else(|| panic!("{start} in check_sys.py"));
        let body = &py[from..];
        let body = &body[..body.find("\n}").unwrap()];
        body.lines()
            .filter_map(|l| l.trim().strip_prefix('"'))
            .filter_map(|l| l.split('"').next())
            .filter(|s| !s.is_empty() && !s.starts_with("nmr_"))
            .map(str::to_owned)
            .collect()
    };
    let mut allowed: Vec<String> = block("NTOSKRNL_ALLOWED = {")
        .into_iter()
        .map(|f| format!("ntoskrnl.exe!{f}"))
        .collect();
    allowed.extend(
        block("NETIO_REQUIRED = {")
            .into_iter()
            .map(|f| format!("NETIO.SYS!{f}")),
    );
    allowed.sort();
    allowed.dedup();
    let mut ours: Vec<String> = crate::stand_ins()
        .into_iter()
        .map(|(d, f)| format!("{d}!{f}"))
        .collect();
    ours.sort();
    assert_eq!(ours, allowed);
}

/// Runs this very test in a child process with `NMR_IH_CHILD=<what>`, and
/// returns its exit code and stderr.
fn child(test: &str, what: &str) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env("NMR_IH_CHILD", what)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn in_child() -> Option<String> {
    std::env::var("NMR_IH_CHILD").ok()
}

#[test]
fn a_fault_in_image_code_names_image_offset_and_the_symbolizer_command() {
    if in_child().is_some() {
        let d = load("KeQueryMaximumProcessorCountEx\0").unwrap();
        type F = unsafe extern "win64" fn() -> u64;
        // SAFETY: deliberately faults (reads address 0) in image code.
        let f = unsafe { std::mem::transmute::<usize, F>(d.image().export("Fault").unwrap()) };
        // SAFETY: as above: the fault handler ends the process.
        unsafe { f() };
        unreachable!("the fault ends the process");
    }
    let (code, stderr) = child(
        "tests::a_fault_in_image_code_names_image_offset_and_the_symbolizer_command",
        "fault",
    );
    assert_eq!(code, Some(crate::FAULT_EXIT_CODE), "{stderr}");
    assert!(
        stderr.contains("FAULT: SIGSEGV (access violation) accessing 0x0"),
        "{stderr}"
    );
    assert!(stderr.contains("at synthetic.sys+0x1010"), "{stderr}");
    assert!(
        stderr.contains("llvm-symbolizer --obj=target/synthetic.sys 0x180001010"),
        "{stderr}"
    );
}

#[test]
fn a_stack_overflow_in_a_driver_thread_hits_the_guard_page_of_its_24_kib_stack() {
    if in_child().is_some() {
        let d = load("KeQueryMaximumProcessorCountEx\0").unwrap();
        let mut handle: *mut c_void = std::ptr::null_mut();
        let start = d.image().export("Overflow").unwrap();
        let status = crate::ntoskrnl::ps_create_system_thread(
            &mut handle,
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            start,
            0,
        );
        assert_eq!(status, 0);
        crate::ntoskrnl::zw_wait_for_single_object(handle, 0, std::ptr::null_mut());
        unreachable!("the overflow ends the process");
    }
    let (code, stderr) = child(
        "tests::a_stack_overflow_in_a_driver_thread_hits_the_guard_page_of_its_24_kib_stack",
        "overflow",
    );
    assert_eq!(code, Some(crate::FAULT_EXIT_CODE), "{stderr}");
    assert!(
        stderr.contains("guard page of a 24 KiB kernel stack of synthetic.sys: STACK OVERFLOW"),
        "{stderr}"
    );
    assert!(stderr.contains("at synthetic.sys+0x1027"), "{stderr}");
}

#[test]
fn a_thread_runs_on_its_kernel_stack_and_terminates_without_unwinding() {
    // A start routine that calls PsTerminateSystemThread at once: the image
    // cannot, so use the stand-in's own address as the start routine is not
    // possible either; instead run `Probe` (returns) as the start routine:
    // returning from it ends the thread like PsTerminateSystemThread.
    let d = load("KeQueryMaximumProcessorCountEx\0").unwrap();
    let mut handle: *mut c_void = std::ptr::null_mut();
    let before = crate::ntoskrnl::thread_stats().created;
    let status = crate::ntoskrnl::ps_create_system_thread(
        &mut handle,
        0,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        d.image().export("Probe").unwrap(),
        0,
    );
    assert_eq!(status, 0);
    assert_eq!(
        crate::ntoskrnl::zw_wait_for_single_object(handle, 0, std::ptr::null_mut()),
        0
    );
    assert_eq!(crate::ntoskrnl::zw_close(handle), 0);
    assert!(crate::ntoskrnl::thread_stats().created > before);
    assert_eq!(crate::ntoskrnl::threads_of(d.id()), (0, 0));
}

#[test]
fn the_pool_accounts_per_image_and_catches_overruns_and_bad_frees() {
    let a = crate::pool::allocate(40, u32::from_le_bytes(*b"Test"), 9_001, "pooltest.sys");
    assert!(!a.is_null());
    assert_eq!(a as usize % 16, 0);
    // SAFETY: 40 bytes allocated; the 41st is slack guarded by GUARD bytes.
    unsafe { a.add(40).write(0) };
    assert_eq!(crate::pool::live_blocks_of(9_001), ["tag 'Test', 40 bytes"]);
    crate::pool::free(a, u32::from_le_bytes(*b"Test"), "pooltest.sys");
    crate::pool::free(a, u32::from_le_bytes(*b"Test"), "pooltest.sys");
    let problems: Vec<_> = crate::problems::take()
        .into_iter()
        .filter(|p| p.image == "pooltest.sys")
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].text.contains(
            "pool overrun: a 40-byte block of tag 'Test' was written 1 byte(s) past its end"
        ),
        "{}",
        problems[0]
    );
    assert!(problems[1].text.contains("double free"), "{}", problems[1]);
    assert!(crate::pool::live_blocks_of(9_001).is_empty());
}

#[test]
fn a_bug_check_reports_code_parameters_and_the_image_and_stops_the_run() {
    if in_child().is_some() {
        let d = load("KeQueryMaximumProcessorCountEx\0").unwrap();
        // What the panic handler passes (wdk-panic's layout, on both
        // surfaces): "RPNC", the file name's address and length (here: the
        // image's "synthetic.sys" export name), the line, the column.
        let file = d.image().base() + 0x2200;
        crate::ntoskrnl::ke_bug_check_ex(0x5250_4E43, file, "synthetic.sys".len(), 42, 7);
    }
    let (code, stderr) = child(
        "tests::a_bug_check_reports_code_parameters_and_the_image_and_stops_the_run",
        "bugcheck",
    );
    assert_eq!(code, Some(crate::FAULT_EXIT_CODE), "{stderr}");
    assert!(
        stderr.contains("BUGCHECK: KeBugCheckEx(0x52504E43, "),
        "{stderr}"
    );
    assert!(stderr.contains("from synthetic.sys"), "{stderr}");
    assert!(
        stderr.contains("a Rust panic in the driver at synthetic.sys:42:7"),
        "{stderr}"
    );
}
