//! One test per Driver Verifier gap of the stand-ins (issue 20): each makes
//! the wrong call through the stand-in and asserts the named report, with
//! the bug check code and parameter Windows or Verifier would give.

use std::ffi::{CString, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use nmr_sim::irql::{self, Irql};
use nmr_sim::{Config, Sim};

use crate::image::ImageCtx;
use crate::model::ModelBinding;
use crate::ntoskrnl as nt;
use crate::tests::{FAULT, PROBE, child, in_child, load, synthetic_image};

const TAG: u32 = u32::from_le_bytes(*b"Test");
const NON_PAGED: u64 = 0x40;
const PAGED: u64 = 0x100;
const UNINITIALIZED: u64 = 0x2;
const RAISE_ON_FAILURE: u64 = 0x20;

/// The stand-ins' problems are process-global: hold the binding (what
/// serialises their users) and start from none.
fn bound() -> ModelBinding {
    let b = ModelBinding::bind(Sim::new(Config::default().recording()));
    let _ = crate::problems::take();
    b
}

fn reports() -> Vec<String> {
    crate::problems::take()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[track_caller]
fn assert_reported(reports: &[String], needle: &str) {
    let Some(found) = reports.iter().find(|r| r.contains(needle)) else {
        panic!("no report contains {needle:?}; the reports were {reports:#?}");
    };
    println!("reported: {found}");
}

fn handle(v: usize) -> *mut c_void {
    std::ptr::without_provenance_mut(v)
}

fn at_dispatch<R>(f: impl FnOnce() -> R) -> R {
    let old = irql::raise_to_dispatch();
    let r = f();
    irql::lower(old);
    r
}

// ------------------------------------------------------------ the table

#[test]
fn every_rule_has_one_row_with_a_source_and_the_fault_handlers_words_match() {
    use crate::rules::{self, RULES, Rule};
    assert_eq!(RULES.len(), Rule::ALL.len());
    for rule in Rule::ALL {
        let rows = RULES.iter().filter(|r| r.rule == rule).count();
        assert_eq!(rows, 1, "{rule:?}");
        assert!(!rule.row().source.is_empty(), "{rule:?}");
    }
    // The fault handler cannot format from the table (no allocation there).
    assert!(
        Rule::DispatchTableFreed
            .text("x")
            .ends_with(&format!("({})", rules::DISPATCH_FREED_OUTCOME))
    );
    assert!(
        Rule::DispatchTableChanged
            .text("x")
            .ends_with(&format!("({})", rules::DISPATCH_CHANGED_OUTCOME))
    );
}

// ----------------------------------------------------------- gap 1: IRQL

#[test]
fn gap1_zw_close_at_dispatch_is_irql_zw_passive() {
    let _b = bound();
    at_dispatch(|| nt::zw_close(handle(0x1234)));
    assert_reported(
        &reports(),
        "IRQL: ZwClose(0x1234) at DISPATCH_LEVEL (Verifier 0xC4/0x2001F)",
    );
}

#[test]
fn gap1_zw_wait_for_single_object_at_dispatch_is_reported() {
    let _b = bound();
    let mut zero = 0i64;
    at_dispatch(|| nt::zw_wait_for_single_object(handle(0x1234), 0, &mut zero));
    assert_reported(
        &reports(),
        "IRQL: ZwWaitForSingleObject at DISPATCH_LEVEL (Verifier 0xC4/0xE6)",
    );
}

#[test]
fn gap1_ps_create_system_thread_at_dispatch_is_irql_ps_passive() {
    let _b = bound();
    let d = load("KeQueryMaximumProcessorCountEx\0").unwrap();
    let mut h: *mut c_void = std::ptr::null_mut();
    let status = at_dispatch(|| {
        nt::ps_create_system_thread(
            &mut h,
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            d.image().base() + PROBE as usize,
            0,
        )
    });
    assert_eq!(status, 0);
    nt::zw_wait_for_single_object(h, 0, std::ptr::null_mut());
    nt::zw_close(h);
    assert_reported(
        &reports(),
        "IRQL: PsCreateSystemThread at DISPATCH_LEVEL (Verifier 0xC4/0x2001C)",
    );
}

/// A start routine that takes the spin lock at `lock` and terminates.
extern "win64" fn terminate_holding(lock: usize) {
    nt::ke_acquire_spin_lock_raise_to_dpc(lock as *mut usize);
    nt::ps_terminate_system_thread(0);
}

/// A start routine that takes the spin lock at `lock` and returns.
extern "win64" fn return_holding(lock: usize) {
    nt::ke_acquire_spin_lock_raise_to_dpc(lock as *mut usize);
}

fn run_as_system_thread(start: extern "win64" fn(usize), lock: &mut usize) {
    let start = start as *const () as usize;
    let lock = lock as *mut usize as usize;
    std::thread::spawn(move || {
        let stack = crate::stack::KernelStack::new("verifier.sys", "verifier.sys").unwrap();
        // SAFETY: `start` is a Windows x64 function taking one pointer.
        unsafe { crate::stack::run_on_kernel_stack(&stack, start, lock) };
    })
    .join()
    .unwrap();
}

#[test]
fn gap1_ps_terminate_system_thread_holding_a_spin_lock_is_reported() {
    let _b = bound();
    let mut lock = 0usize;
    run_as_system_thread(terminate_holding, &mut lock);
    let r = reports();
    assert_reported(
        &r,
        "IRQL: PsTerminateSystemThread at DISPATCH_LEVEL holding spin lock(s)",
    );
    assert_reported(&r, "(Verifier 0xC4/0x2001C)");
    assert_reported(&r, "ended holding spin lock(s)");
    assert_reported(&r, "(Verifier 0xC4/0x100A)");
}

#[test]
fn gap1_a_thread_that_returns_holding_a_lock_is_reported() {
    let _b = bound();
    let mut lock = 0usize;
    run_as_system_thread(return_holding, &mut lock);
    assert_eq!(lock, 1, "the lock word stays taken, as on Windows");
    let r = reports();
    assert_reported(&r, "ended at DISPATCH_LEVEL (Verifier 0xC4/0x2001C)");
    assert_reported(&r, "ended holding spin lock(s)");
    assert_reported(&r, "(Verifier 0xC4/0x100A)");
}

// ------------------------------------------------- gap 2: KeReleaseSpinLock

#[test]
fn gap2_release_with_a_new_irql_other_than_the_acquires_old_irql() {
    let _b = bound();
    let mut lock = 0usize;
    let old = nt::ke_acquire_spin_lock_raise_to_dpc(&mut lock);
    assert_eq!(old, 0);
    nt::ke_release_spin_lock(&mut lock, 2);
    irql::lower(Irql::Passive);
    assert_reported(
        &reports(),
        "NewIrql is not the PASSIVE_LEVEL its KeAcquireSpinLock returned (Verifier 0xC4/0x20015)",
    );
}

#[test]
fn gap2_release_at_passive_of_a_lock_not_held() {
    let _b = bound();
    let mut lock = 0usize;
    nt::ke_release_spin_lock(&mut lock, 0);
    let r = reports();
    assert_reported(&r, "called at PASSIVE_LEVEL (Verifier 0xC4/0x20015)");
    assert_reported(&r, "of a lock not held (Verifier 0xC4/0x1007)");
}

#[test]
fn gap2_release_by_a_thread_that_did_not_acquire() {
    let _b = bound();
    let lock = Box::leak(Box::new(0usize));
    let at = lock as *mut usize as usize;
    std::thread::spawn(move || {
        nt::ke_acquire_spin_lock_raise_to_dpc(at as *mut usize);
    })
    .join()
    .unwrap();
    at_dispatch(|| nt::ke_release_spin_lock(at as *mut usize, 2));
    assert_reported(
        &reports(),
        "by a thread that did not acquire it (Verifier 0xC4/0x1004)",
    );
}

#[test]
fn gap2_a_nested_release_to_passive_then_a_delay_under_the_outer_lock() {
    let _b = bound();
    let (mut outer, mut inner) = (0usize, 0usize);
    let o = nt::ke_acquire_spin_lock_raise_to_dpc(&mut outer);
    let _i = nt::ke_acquire_spin_lock_raise_to_dpc(&mut inner);
    nt::ke_release_spin_lock(&mut inner, 0); // should be 2
    let mut interval = -1i64;
    nt::ke_delay_execution_thread(0, 0, &mut interval);
    irql::raise_to_dispatch();
    nt::ke_release_spin_lock(&mut outer, o);
    let r = reports();
    assert_reported(
        &r,
        "NewIrql is not the DISPATCH_LEVEL its KeAcquireSpinLock returned (Verifier 0xC4/0x20015)",
    );
    assert_reported(
        &r,
        "spin lock: KeDelayExecutionThread while holding spin lock(s)",
    );
}

// --------------------------------------------------- gap 3: kernel stacks

/// The synthetic image with its `Overflow` routine exported as `DriverEntry`.
fn overflowing_driver_entry() -> Vec<u8> {
    let mut f = synthetic_image("KeQueryMaximumProcessorCountEx\0");
    let file = |rva: usize| rva - 0x2000 + 0x600;
    // The fourth name ("Probe", at 0x21BA) becomes "DriverEntry" -> Overflow.
    f[file(0x21BA)..file(0x21BA) + 12].copy_from_slice(b"DriverEntry\0");
    f[file(0x2180) + 6..file(0x2180) + 8].copy_from_slice(&2u16.to_le_bytes());
    f
}

#[test]
fn gap3_driver_entry_runs_on_a_guarded_24_kib_kernel_stack() {
    if in_child().is_some() {
        let mut d = crate::Driver::load_bytes(
            &overflowing_driver_entry(),
            "synthetic.sys",
            "target/synthetic.sys",
        )
        .unwrap();
        d.start();
        unreachable!("the overflow ends the process");
    }
    let (code, stderr) = child(
        "verifier_tests::gap3_driver_entry_runs_on_a_guarded_24_kib_kernel_stack",
        "driver-entry-overflow",
    );
    assert_eq!(code, Some(crate::FAULT_EXIT_CODE), "{stderr}");
    assert!(
        stderr.contains("guard page of a 24 KiB kernel stack of synthetic.sys: STACK OVERFLOW"),
        "{stderr}"
    );
}

// ------------------------------------------------------ gap 4: pool flags

fn ctx() -> &'static ImageCtx {
    Box::leak(Box::new(ImageCtx::new("verifier.sys", "verifier.sys")))
}

fn free(p: *mut c_void) {
    if !p.is_null() {
        nt::ex_free_pool_with_tag(p, TAG, std::ptr::null());
    }
}

#[test]
fn gap4_flags_zero_and_two_pool_types_are_refused() {
    let _b = bound();
    let c = ctx();
    let none = nt::ex_allocate_pool2(0, 16, TAG, c);
    let both = nt::ex_allocate_pool2(PAGED | NON_PAGED, 16, TAG, c);
    let r = reports();
    free(none);
    free(both);
    assert_reported(
        &r,
        "pool: ExAllocatePool2(0x0, 16, 'Test'): no pool type (NON_PAGED, NON_PAGED_EXECUTE or \
         PAGED) (Windows: ExAllocatePool2 returns NULL)",
    );
    assert_reported(
        &r,
        "ExAllocatePool2(0x140, 16, 'Test'): more than one pool type",
    );
    assert!(none.is_null() && both.is_null());
}

#[test]
fn gap4_paged_at_dispatch_and_freeing_paged_at_dispatch() {
    let _b = bound();
    let c = ctx();
    let a = at_dispatch(|| nt::ex_allocate_pool2(PAGED, 16, TAG, c));
    let b = nt::ex_allocate_pool2(PAGED, 16, TAG, c);
    at_dispatch(|| free(b));
    free(a);
    let r = reports();
    assert_reported(
        &r,
        "pool: ExAllocatePool2(0x100, 16, 'Test') at DISPATCH_LEVEL (Verifier 0xC4/0x1)",
    );
    assert_reported(
        &r,
        "of a paged block at DISPATCH_LEVEL (Verifier 0xC4/0x11)",
    );
}

#[test]
fn gap4_zero_bytes_and_a_tag_without_letters_or_digits() {
    let _b = bound();
    let c = ctx();
    let zero = nt::ex_allocate_pool2(NON_PAGED, 0, TAG, c);
    let dashes = u32::from_le_bytes(*b"----");
    let odd = nt::ex_allocate_pool2(NON_PAGED, 8, dashes, c);
    let r = reports();
    free(zero);
    if !odd.is_null() {
        nt::ex_free_pool_with_tag(odd, dashes, std::ptr::null());
    }
    assert_reported(
        &r,
        "pool: ExAllocatePool2(0x40, 0, 'Test') (Verifier 0xC4/0x0)",
    );
    assert_reported(&r, "ExAllocatePool2(0x40, 8, '----'): tag bytes");
    assert_reported(&r, "(Windows: bug check 0xC2/0x9D)");
}

#[test]
fn gap4_uninitialized_is_not_zeroed_and_raise_on_failure_is_reported() {
    let _b = bound();
    let c = ctx();
    let p = nt::ex_allocate_pool2(NON_PAGED | UNINITIALIZED, 64, TAG, c);
    // SAFETY: 64 bytes just allocated.
    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), 64) }.to_vec();
    free(p);
    assert!(
        bytes.iter().any(|&b| b != 0),
        "POOL_FLAG_UNINITIALIZED returned zeroed memory: {bytes:?}"
    );
    crate::plan::FaultPlan::set(crate::plan::FaultMode::FailNth(0));
    let failed = nt::ex_allocate_pool2(NON_PAGED | RAISE_ON_FAILURE, 16, TAG, c);
    crate::plan::FaultPlan::set(crate::plan::FaultMode::Off);
    assert!(failed.is_null());
    assert_reported(
        &reports(),
        "failed with POOL_FLAG_RAISE_ON_FAILURE: it raises, it does not return NULL \
         (Windows: bug check 0x1E/0xC000009A)",
    );
}

// ------------------------------------------------------ gap 5: underruns

#[test]
fn gap5_a_write_before_a_block_is_seen_at_free() {
    let _b = bound();
    let p = crate::pool::allocate(40, TAG, 9_020, "verifier.sys");
    // SAFETY: 8 bytes before the block, in its first page (the block ends
    // a page, so it does not start one).
    unsafe { p.sub(8).write_bytes(0, 8) };
    crate::pool::free(p, TAG, "verifier.sys");
    assert_reported(
        &reports(),
        "pool underrun: a 40-byte block of tag 'Test' was written 8 byte(s) before its start \
         (Windows: bug check 0xC1/0x23)",
    );
}

// ---------------------------------------------- gap 6: dispatch tables

/// A pool-held dispatch table `{version 0, size 16, Probe}` and the peer's copy.
fn table_and_copy(d: &crate::Driver) -> (*mut u8, *const c_void) {
    let table = crate::pool::allocate(16, TAG, 9_021, "owner.sys");
    // SAFETY: 16 bytes just allocated.
    unsafe {
        table.cast::<u16>().write(0);
        table.add(2).cast::<u16>().write(16);
        table
            .add(8)
            .cast::<usize>()
            .write(d.image().base() + PROBE as usize);
    }
    (table, crate::dispatch::wrap(table.cast_const().cast()))
}

fn call_slot(copy: *const c_void) -> u32 {
    // SAFETY: the copy's first function slot, a Windows x64 function of no
    // arguments returning a u32 (Probe, through its counting thunk).
    unsafe {
        let f = copy.cast::<u8>().add(8).cast::<usize>().read_unaligned();
        std::mem::transmute::<usize, unsafe extern "win64" fn() -> u32>(f)()
    }
}

#[test]
fn gap6_a_call_through_a_table_its_owner_freed_faults() {
    if in_child().is_some() {
        let d = load("KeQueryMaximumProcessorCountEx\0").unwrap();
        let (table, copy) = table_and_copy(&d);
        assert_eq!(call_slot(copy), 0x1234);
        crate::pool::free(table, TAG, "owner.sys");
        let after = call_slot(copy);
        eprintln!("the peer called through the freed table and got {after:#x}");
        std::process::exit(0);
    }
    let (code, stderr) = child(
        "verifier_tests::gap6_a_call_through_a_table_its_owner_freed_faults",
        "freed-table",
    );
    assert_eq!(code, Some(crate::FAULT_EXIT_CODE), "{stderr}");
    assert!(
        stderr.contains(
            "in a call through owner.sys's dispatch table: dispatch table: the owner freed its \
             table while a peer could still call through it (Windows: bug check 0x50/0x0)"
        ),
        "{stderr}"
    );
}

#[test]
fn gap6_a_call_through_a_table_its_owner_changed_stops() {
    if in_child().is_some() {
        let d = load("KeQueryMaximumProcessorCountEx\0").unwrap();
        let (table, copy) = table_and_copy(&d);
        assert_eq!(call_slot(copy), 0x1234);
        // SAFETY: the table's first function slot, in the live block.
        unsafe {
            table
                .add(8)
                .cast::<usize>()
                .write(d.image().base() + FAULT as usize + 0x100)
        };
        let after = call_slot(copy);
        eprintln!("the peer called through the changed table and got {after:#x}");
        std::process::exit(0);
    }
    let (code, stderr) = child(
        "verifier_tests::gap6_a_call_through_a_table_its_owner_changed_stops",
        "changed-table",
    );
    assert_eq!(code, Some(crate::FAULT_EXIT_CODE), "{stderr}");
    assert!(
        stderr.contains("dispatch table: the owner changed a function pointer in its table"),
        "{stderr}"
    );
}

// ------------------------------------------------------- gap 7: timeouts

#[test]
fn gap7_a_positive_delay_is_an_absolute_time_and_null_is_reported() {
    let _b = bound();
    // Meant: 10 s relative (that is -100_000_000). As an absolute time it
    // is in 1601: Windows returns at once.
    let mut interval = 100_000_000i64;
    let t = std::time::Instant::now();
    nt::ke_delay_execution_thread(0, 0, &mut interval);
    let took = t.elapsed();
    nt::ke_delay_execution_thread(0, 0, std::ptr::null_mut());
    let r = reports();
    assert_reported(
        &r,
        "wait: KeDelayExecutionThread with a positive interval 100000000 (an absolute time,",
    );
    assert_reported(
        &r,
        "in the past: returns at once); a relative one is negative",
    );
    assert!(took < std::time::Duration::from_secs(5), "slept {took:?}");
    assert_reported(
        &r,
        "wait: KeDelayExecutionThread(Interval = NULL) (Windows: bug check 0x50/0x0)",
    );
}

// ------------------------------------------------ gap 8: lock ordering

#[test]
fn gap8_two_locks_taken_in_both_orders_is_a_lock_hierarchy_violation() {
    let _b = bound();
    static A: AtomicUsize = AtomicUsize::new(0);
    static B: AtomicUsize = AtomicUsize::new(0);
    let (a, b) = (A.as_ptr(), B.as_ptr());
    let o = nt::ke_acquire_spin_lock_raise_to_dpc(a);
    let i = nt::ke_acquire_spin_lock_raise_to_dpc(b);
    nt::ke_release_spin_lock(b, i);
    nt::ke_release_spin_lock(a, o);
    let o = nt::ke_acquire_spin_lock_raise_to_dpc(b);
    let i = nt::ke_acquire_spin_lock_raise_to_dpc(a);
    nt::ke_release_spin_lock(a, i);
    nt::ke_release_spin_lock(b, o);
    assert_eq!(A.load(Ordering::Relaxed) + B.load(Ordering::Relaxed), 0);
    assert_reported(&reports(), "the two orders deadlock (Verifier 0xC4/0x1001)");
}

// ---------------------------------------------------- gap 9: DbgPrintEx

#[test]
fn gap9_a_message_over_512_bytes_is_reported() {
    let _b = bound();
    let long = CString::new("x".repeat(600)).unwrap();
    nt::dbg_print_ex(80, 0, c"%s".as_ptr(), long.as_ptr() as usize);
    assert_reported(
        &reports(),
        "DbgPrintEx: a 600-byte message (the first 40: \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\") \
         (Windows: DbgPrintEx transmits at most 512 bytes: the rest is lost)",
    );
}

// ------------------------------- gap 3: the nested path, and entry checks

use nmr_common::ffi::{
    GUID, NPI_CLIENT_ATTACH_PROVIDER_FN, NPI_CLIENT_CHARACTERISTICS, NPI_CLIENT_DETACH_PROVIDER_FN,
    NPI_MODULEID, NPI_PROVIDER_ATTACH_CLIENT_FN, NPI_PROVIDER_CHARACTERISTICS,
    NPI_PROVIDER_DETACH_CLIENT_FN, NPI_REGISTRATION_INSTANCE,
};

/// Image code: `mov [rdx], rsp; mov eax, STATUS_NOINTERFACE; ret`. As a
/// `ClientAttachProvider` it writes where it runs into its client context
/// and declines.
const RECORD_RSP: u32 = 0x1080;

fn image_with_rsp_recorder() -> crate::Driver {
    let mut f = synthetic_image("KeQueryMaximumProcessorCountEx\0");
    let at = RECORD_RSP as usize - 0x1000 + 0x400;
    f[at..at + 9].copy_from_slice(&[0x48, 0x89, 0x22, 0xB8, 0xB9, 0x02, 0x00, 0xC0, 0xC3]);
    crate::Driver::load_bytes(&f, "synthetic.sys", "target/synthetic.sys").unwrap()
}

fn instance(npi: &'static GUID, module: &'static NPI_MODULEID) -> NPI_REGISTRATION_INSTANCE {
    NPI_REGISTRATION_INSTANCE {
        Version: 0,
        Size: size_of::<NPI_REGISTRATION_INSTANCE>() as u16,
        NpiId: npi,
        ModuleId: module,
        Number: 0,
        NpiSpecificCharacteristics: std::ptr::null(),
    }
}

extern "win64" fn never_attach(
    _: *mut c_void,
    _: *mut c_void,
    _: *const NPI_REGISTRATION_INSTANCE,
    _: *mut c_void,
    _: *const c_void,
    _: *mut *mut c_void,
    _: *mut *const c_void,
) -> i32 {
    0xC000_02B9_u32 as i32
}
extern "win64" fn never_detach(_: *mut c_void) -> i32 {
    0
}

/// What the system thread below reports back.
struct Registering {
    provider: *const NPI_PROVIDER_CHARACTERISTICS,
    handle: *mut c_void,
    /// Where the thread was when it called NmrRegisterProvider.
    caller_rsp: usize,
    stack: (usize, usize),
}

extern "win64" fn register_provider_from_a_system_thread(ctx: usize) {
    // SAFETY: the test's `Registering`, alive across the thread.
    let r = unsafe { &mut *(ctx as *mut Registering) };
    let here = 0u8;
    r.caller_rsp = &raw const here as usize;
    let status = crate::netio::nmr_register_provider(
        r.provider,
        std::ptr::null_mut(),
        &mut r.handle,
        std::ptr::null(),
    );
    assert_eq!(status, 0);
}

#[test]
fn gap3_a_callback_under_an_nmr_call_runs_on_the_callers_kernel_stack_below_netios_frames() {
    let _b = bound();
    let d = image_with_rsp_recorder();
    let npi: &'static GUID = Box::leak(Box::new(GUID::from_u128(
        0x7e57_0003_0000_4000_8000_0000_0000_0001,
    )));
    let client_id: &'static NPI_MODULEID = Box::leak(Box::new(NPI_MODULEID::from_guid(
        GUID::from_u128(0x7e57_0003_0000_4000_8000_0000_0000_0002),
    )));
    let provider_id: &'static NPI_MODULEID = Box::leak(Box::new(NPI_MODULEID::from_guid(
        GUID::from_u128(0x7e57_0003_0000_4000_8000_0000_0000_0003),
    )));
    let base = d.image().base();
    // SAFETY: image functions of the callbacks' Windows x64 signatures
    // (RECORD_RSP as an attach; Probe returns and is never called).
    let client = unsafe {
        NPI_CLIENT_CHARACTERISTICS {
            Version: 0,
            Length: size_of::<NPI_CLIENT_CHARACTERISTICS>() as u16,
            ClientAttachProvider: Some(
                std::mem::transmute::<usize, NPI_CLIENT_ATTACH_PROVIDER_FN>(
                    base + RECORD_RSP as usize,
                ),
            ),
            ClientDetachProvider: Some(
                std::mem::transmute::<usize, NPI_CLIENT_DETACH_PROVIDER_FN>(base + PROBE as usize),
            ),
            ClientCleanupBindingContext: None,
            ClientRegistrationInstance: instance(npi, client_id),
        }
    };
    // SAFETY: Windows x64 functions of the provider callbacks' signatures.
    let provider =
        unsafe {
            NPI_PROVIDER_CHARACTERISTICS {
                Version: 0,
                Length: size_of::<NPI_PROVIDER_CHARACTERISTICS>() as u16,
                ProviderAttachClient: Some(std::mem::transmute::<
                    usize,
                    NPI_PROVIDER_ATTACH_CLIENT_FN,
                >(never_attach as *const () as usize)),
                ProviderDetachClient: Some(std::mem::transmute::<
                    usize,
                    NPI_PROVIDER_DETACH_CLIENT_FN,
                >(never_detach as *const () as usize)),
                ProviderCleanupBindingContext: None,
                ProviderRegistrationInstance: instance(npi, provider_id),
            }
        };
    let mut seen_rsp = 0usize;
    let mut client_handle: *mut c_void = std::ptr::null_mut();
    let status = crate::netio::nmr_register_client(
        &client,
        (&raw mut seen_rsp).cast(),
        &mut client_handle,
        std::ptr::null(),
    );
    assert_eq!(status, 0);
    let mut r = Registering {
        provider: &provider,
        handle: std::ptr::null_mut(),
        caller_rsp: 0,
        stack: (0, 0),
    };
    let at = &raw mut r as usize;
    std::thread::spawn(move || {
        let stack = crate::stack::KernelStack::new("verifier.sys", "verifier.sys").unwrap();
        // SAFETY: the test's `Registering` outlives the thread (joined).
        unsafe { (*(at as *mut Registering)).stack = (stack.lo(), stack.top()) };
        // SAFETY: a Windows x64 function taking one pointer.
        unsafe {
            crate::stack::run_on_kernel_stack(
                &stack,
                register_provider_from_a_system_thread as *const () as usize,
                at,
            )
        };
    })
    .join()
    .unwrap();
    crate::netio::nmr_deregister_provider(r.handle, std::ptr::null());
    crate::netio::nmr_wait_for_provider_deregister_complete(r.handle);
    crate::netio::nmr_deregister_client(client_handle, std::ptr::null());
    crate::netio::nmr_wait_for_client_deregister_complete(client_handle);
    let (lo, hi) = r.stack;
    assert!(seen_rsp != 0, "the client's attach callback was not called");
    assert!(
        (lo..hi).contains(&seen_rsp),
        "the attach callback ran at {seen_rsp:#x}, not on the caller's kernel stack {lo:#x}..{hi:#x}"
    );
    assert!(
        seen_rsp <= r.caller_rsp - crate::stack::NETIO_FRAME_BUDGET,
        "the callback ran at {seen_rsp:#x}, less than NETIO's {} bytes below the NMR call at {:#x}",
        crate::stack::NETIO_FRAME_BUDGET,
        r.caller_rsp
    );
    drop(d);
}

/// A routine that takes the spin lock at `lock` and returns: at
/// DISPATCH_LEVEL, holding it.
extern "win64" fn raise_and_return(lock: usize, _: usize) -> usize {
    nt::ke_acquire_spin_lock_raise_to_dpc(lock as *mut usize);
    0
}

#[test]
fn gap1_a_routine_the_system_calls_returning_raised_and_holding_a_lock_is_reported() {
    let _b = bound();
    let mut lock = 0usize;
    // SAFETY: a Windows x64 function of two pointer-sized arguments.
    unsafe {
        crate::stack::call_image(
            raise_and_return as *const () as usize,
            &raw mut lock as usize,
            0,
        )
    };
    irql::lower(Irql::Passive);
    let r = reports();
    assert_reported(&r, "returned at DISPATCH_LEVEL, called at PASSIVE_LEVEL");
    assert_reported(&r, "returned holding spin lock(s)");
}

/// A start routine that prints one trace line.
extern "win64" fn print_one_line(_: usize) {
    nt::dbg_print_ex(80, 0, c"%s".as_ptr(), c"one line".as_ptr() as usize);
}

#[test]
fn gap3_dbg_print_ex_is_charged_its_frames_on_the_callers_kernel_stack() {
    let _b = bound();
    let used = std::thread::spawn(|| {
        let stack = crate::stack::KernelStack::new("verifier.sys", "verifier.sys").unwrap();
        // SAFETY: a Windows x64 function taking one pointer.
        unsafe {
            crate::stack::run_on_kernel_stack(&stack, print_one_line as *const () as usize, 0)
        };
        stack.used()
    })
    .join()
    .unwrap();
    println!("a DbgPrintEx from a system thread used {used} bytes of its kernel stack");
    assert!(
        used >= 1024,
        "DbgPrintEx used {used} bytes of the caller's kernel stack: Windows formats its \
         512-byte message there"
    );
}

#[test]
fn gap7_a_positive_wait_timeout_is_an_absolute_time() {
    let _b = bound();
    let d = load("KeQueryMaximumProcessorCountEx\0").unwrap();
    let mut h: *mut c_void = std::ptr::null_mut();
    let status = nt::ps_create_system_thread(
        &mut h,
        0,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        d.image().base() + PROBE as usize,
        0,
    );
    assert_eq!(status, 0);
    let mut timeout = 100_000_000i64; // meant: 10 s relative
    let waited = nt::zw_wait_for_single_object(h, 0, &mut timeout);
    // The thread may not have ended: an absolute time in 1601 is past.
    nt::zw_wait_for_single_object(h, 0, std::ptr::null_mut());
    nt::zw_close(h);
    assert!(waited == 0 || waited == 0x102, "{waited:#x}");
    assert_reported(
        &reports(),
        "wait: ZwWaitForSingleObject with a positive interval 100000000 (an absolute time,",
    );
}

#[test]
fn gap9_only_error_level_lines_are_shown_by_windows_default_filter() {
    let _b = bound();
    let (shown, all) = (nt::trace_lines_shown_by_default(), nt::trace_lines());
    for level in [0u32, 1, 2, 3] {
        nt::dbg_print_ex(80, level, c"%s".as_ptr(), c"a line".as_ptr() as usize);
    }
    assert_eq!(nt::trace_lines() - all, 4);
    assert_eq!(
        nt::trace_lines_shown_by_default() - shown,
        1,
        "DPFLTR_ERROR_LEVEL only"
    );
    assert!(nt::shown_by_default(0) && !nt::shown_by_default(3));
    assert!(nt::shown_by_default(0x8000_0001) && !nt::shown_by_default(0x8000_0000));
}

#[test]
fn gap2_nested_locks_released_out_of_order_and_a_lock_taken_twice() {
    let _b = bound();
    let (mut a, mut b) = (0usize, 0usize);
    let oa = nt::ke_acquire_spin_lock_raise_to_dpc(&mut a);
    let ob = nt::ke_acquire_spin_lock_raise_to_dpc(&mut b);
    nt::ke_release_spin_lock(&mut a, ob); // b is still held: out of order
    nt::ke_release_spin_lock(&mut b, oa);
    let mut c = 0usize;
    let oc = nt::ke_acquire_spin_lock_raise_to_dpc(&mut c);
    // Taken again by its holder: reported, not spun on (it would never end).
    let inner = nt::ke_acquire_spin_lock_raise_to_dpc(&mut c);
    nt::ke_release_spin_lock(&mut c, inner);
    nt::ke_release_spin_lock(&mut c, oc);
    irql::lower(Irql::Passive);
    let r = reports();
    assert_reported(
        &r,
        "while a spin lock acquired after it is still held (Verifier 0xC4/0x1003)",
    );
    assert_reported(&r, "by the thread that holds it (Verifier 0xC4/0x1000)");
}
