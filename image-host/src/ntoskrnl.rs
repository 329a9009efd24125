//! `ntoskrnl.exe` stand-ins, `extern "win64"`, with the Windows semantics the
//! images rely on: the pool ([`crate::pool`]), system threads on 24 KiB
//! kernel stacks, thread handles, the delay, the spin lock raising the
//! model's IRQL, `DbgPrintEx`, `KeBugCheckEx`, the `mem*` functions, and the
//! processor queries.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use nmr_common::ffi::*;
use nmr_sim::Irql;
use nmr_sim::irql;

use crate::fault::FAULT_EXIT_CODE;
use crate::image::{ImageCtx, name_at};
use crate::plan::{FaultPlan, Site};
use crate::pool;
use crate::problems::{self, Kind};
use crate::rules::{Rule, irql_name};
use crate::stack::{self, KernelStack};

const STATUS_TIMEOUT: NTSTATUS = 0x102;
const STATUS_INVALID_HANDLE: NTSTATUS = 0xC000_0008_u32 as i32;
/// `POOL_FLAG_UNINITIALIZED`: the caller does not need zeroed memory.
const POOL_FLAG_UNINITIALIZED: u64 = 0x2;
/// `POOL_FLAG_RAISE_ON_FAILURE`: raise an exception instead of returning NULL.
const POOL_FLAG_RAISE_ON_FAILURE: u64 = 0x20;
/// `POOL_FLAG_NON_PAGED`.
const POOL_FLAG_NON_PAGED: u64 = 0x40;
/// `POOL_FLAG_NON_PAGED_EXECUTE`.
const POOL_FLAG_NON_PAGED_EXECUTE: u64 = 0x80;
/// `POOL_FLAG_PAGED`.
const POOL_FLAG_PAGED: u64 = 0x100;
/// The required flags (low 32 bits) `kernel/pool_flags` defines for drivers:
/// USE_QUOTA, UNINITIALIZED, SESSION, CACHE_ALIGNED, RAISE_ON_FAILURE and the
/// three pool types; 0x10, 0x200 and 0x400 are reserved for the system.
const POOL_FLAGS_KNOWN_REQUIRED: u64 = 0x1 | 0x2 | 0x4 | 0x8 | 0x20 | 0x40 | 0x80 | 0x100;
/// The longest message `DbgPrintEx` transmits.
const DBG_PRINT_MAX: usize = 512;
const PASSIVE_LEVEL: u8 = 0;
const DISPATCH_LEVEL: u8 = 2;

// ------------------------------------------------------------------- knobs

/// Microseconds an image's worker thread is held in `KeReleaseSpinLock` when
/// it lowers to PASSIVE: the drivers take a binding's rundown under the list
/// lock and call after releasing it, so this keeps each NPI call in flight
/// that long (the latency knob that forces PENDING detaches).
static CALL_LATENCY_US: AtomicU32 = AtomicU32::new(0);
/// The longest an image's system thread sleeps in `KeDelayExecutionThread`,
/// in microseconds (`u32::MAX`: as asked). Scales the worker period down so
/// that a short run makes many calls.
static DELAY_CAP_US: AtomicU32 = AtomicU32::new(u32::MAX);

/// Sets the call latency knob: how long an image's worker thread is held
/// in `KeReleaseSpinLock` when it lowers to PASSIVE, with its NPI call's
/// rundown already taken (so detaches find the call in flight: PENDING).
pub fn set_call_latency_us(us: u32) {
    CALL_LATENCY_US.store(us, Ordering::Relaxed);
}

/// Caps the delays of image threads at `us` microseconds.
pub fn set_delay_cap_us(us: u32) {
    DELAY_CAP_US.store(us, Ordering::Relaxed);
}

// ------------------------------------------------------------------- trace

type Sink = Box<dyn Fn(&str) + Send + Sync>;
static TRACE_SINK: RwLock<Option<Sink>> = RwLock::new(None);
static TRACE_LINES: AtomicU64 = AtomicU64::new(0);

/// Where `DbgPrintEx` lines go (the testbed prints them with `--trace`).
pub fn set_trace_sink(sink: Option<Sink>) {
    *TRACE_SINK.write().unwrap_or_else(|e| e.into_inner()) = sink;
}

/// `DbgPrintEx` lines so far.
pub fn trace_lines() -> u64 {
    TRACE_LINES.load(Ordering::Relaxed)
}

/// The printf subset the images use: `%s %d %i %u %x %X %p %c %%` with at
/// most one argument (the shell prints every line as `"%s"`).
fn format_printf(format: &[u8], arg: usize) -> Result<String, String> {
    let mut out = String::new();
    let mut used = false;
    let mut it = format.iter().copied();
    while let Some(c) = it.next() {
        if c != b'%' {
            out.push(c as char);
            continue;
        }
        let Some(conv) = it.next() else {
            return Err("format ends in '%'".into());
        };
        if conv == b'%' {
            out.push('%');
            continue;
        }
        if used {
            return Err("more than one argument (the stand-in reads one)".into());
        }
        used = true;
        match conv {
            b's' => {
                let p = arg as *const std::ffi::c_char;
                if p.is_null() {
                    out.push_str("(null)");
                } else {
                    // SAFETY: %s takes a NUL-terminated string (printf's contract).
                    out.push_str(&unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy());
                }
            }
            b'd' | b'i' => {
                let _ = write!(out, "{}", arg as i32);
            }
            b'u' => {
                let _ = write!(out, "{}", arg as u32);
            }
            b'x' => {
                let _ = write!(out, "{:x}", arg as u32);
            }
            b'X' => {
                let _ = write!(out, "{:X}", arg as u32);
            }
            b'p' => {
                let _ = write!(out, "{arg:016X}");
            }
            b'c' => out.push(arg as u8 as char),
            other => return Err(format!("conversion %{} not supported", other as char)),
        }
    }
    Ok(out)
}

/// `DPFLTR_ERROR_LEVEL`: the one level Windows shows without a `Debug Print
/// Filter` registry value.
const DPFLTR_ERROR_LEVEL: u32 = 0;
static TRACE_LINES_SHOWN_BY_DEFAULT: AtomicU64 = AtomicU64::new(0);

/// `DbgPrintEx` lines Windows would show with no `Debug Print Filter` set:
/// a `Level` of 0..=31 is a bit index into the component's mask, a larger
/// one is the mask itself; the default mask is `DPFLTR_ERROR_LEVEL` only
/// (devtest/reading-and-filtering-debugging-messages). The others reach the
/// trace sink as they would a debugger with the filter opened to all.
pub fn trace_lines_shown_by_default() -> u64 {
    TRACE_LINES_SHOWN_BY_DEFAULT.load(Ordering::Relaxed)
}

/// Whether Windows' default filter passes a message of `level`.
pub fn shown_by_default(level: u32) -> bool {
    let mask = if level <= 31 { 1u32 << level } else { level };
    mask & (1 << DPFLTR_ERROR_LEVEL) != 0
}

/// `DbgPrintEx(ComponentId, Level, Format, ...)`: one argument is read (in R9).
pub(crate) extern "win64" fn dbg_print_ex(
    _component: u32,
    level: u32,
    format: *const std::ffi::c_char,
    arg: usize,
) -> u32 {
    stack::charge_kernel_frames(stack::DBG_PRINT_FRAME_BUDGET);
    stack::on_host_stack(|| {
        if format.is_null() {
            problems::report(Kind::BadCall, "?", "DbgPrintEx with a null format");
            return STATUS_INVALID_PARAMETER as u32;
        }
        // SAFETY: DbgPrintEx's format is a NUL-terminated string.
        let fmt = unsafe { std::ffi::CStr::from_ptr(format) }.to_bytes();
        let line = match format_printf(fmt, arg) {
            Ok(line) => line,
            Err(e) => {
                problems::report(
                    Kind::BadCall,
                    name_at(format as usize),
                    format!("DbgPrintEx: {e}"),
                );
                return STATUS_INVALID_PARAMETER as u32;
            }
        };
        if line.len() > DBG_PRINT_MAX {
            Rule::DbgPrintTooLong.report(
                name_at(format as usize),
                &format!(
                    "a {}-byte message (the first 40: {:?})",
                    line.len(),
                    &line[..line.floor_char_boundary(40)]
                ),
            );
        }
        let line = line.trim_end_matches('\n');
        TRACE_LINES.fetch_add(1, Ordering::Relaxed);
        if shown_by_default(level) {
            TRACE_LINES_SHOWN_BY_DEFAULT.fetch_add(1, Ordering::Relaxed);
        }
        if line.contains(" peer-fault ") {
            problems::report(Kind::PeerFault, name_at(format as usize), line.to_owned());
        }
        if let Some(sink) = &*TRACE_SINK.read().unwrap_or_else(|e| e.into_inner()) {
            sink(line);
        }
        STATUS_SUCCESS as u32
    })
}

// -------------------------------------------------------------------- pool

/// Why `flags` is not a valid `POOL_FLAGS` for a driver, if it is not.
fn pool_flags_problem(flags: u64) -> Option<String> {
    let required = flags & 0xFFFF_FFFF;
    let unknown = required & !POOL_FLAGS_KNOWN_REQUIRED;
    if unknown != 0 {
        return Some(format!(
            "required bits {unknown:#x} are reserved or unknown"
        ));
    }
    let types = [
        POOL_FLAG_NON_PAGED,
        POOL_FLAG_NON_PAGED_EXECUTE,
        POOL_FLAG_PAGED,
    ]
    .iter()
    .filter(|&&t| flags & t != 0)
    .count();
    match types {
        1 => None,
        0 => Some("no pool type (NON_PAGED, NON_PAGED_EXECUTE or PAGED)".into()),
        _ => Some("more than one pool type".into()),
    }
}

/// The tag's rule broken, if any (checked after tag 0).
fn pool_tag_problem(tag: u32) -> Option<Rule> {
    let bytes = tag.to_le_bytes();
    if !bytes.iter().any(u8::is_ascii_alphanumeric) {
        Some(Rule::PoolTagNoAlnum)
    } else if !bytes.iter().all(|b| (0x20..=0x7E).contains(b)) {
        Some(Rule::PoolTagNotPrintable)
    } else {
        None
    }
}

/// `ExAllocatePool2(Flags, NumberOfBytes, Tag)`; the thunk adds the image in R9.
pub(crate) extern "win64" fn ex_allocate_pool2(
    flags: u64,
    size: usize,
    tag: u32,
    image: *const ImageCtx,
) -> *mut c_void {
    // SAFETY: the thunk passes the image's context, which outlives its mapping.
    let Some(image) = (unsafe { ImageCtx::from_ptr(image) }) else {
        return std::ptr::null_mut();
    };
    let call = format!(
        "ExAllocatePool2({flags:#x}, {size}, '{}')",
        pool::tag_text(tag)
    );
    if let Some(why) = pool_flags_problem(flags) {
        Rule::PoolBadFlags.report(image.name, &format!("{call}: {why}"));
        return std::ptr::null_mut();
    }
    if tag == 0 {
        Rule::PoolTagZero.report(image.name, &call);
        return std::ptr::null_mut();
    }
    if let Some(rule) = pool_tag_problem(tag) {
        rule.report(
            image.name,
            &format!("{call}: tag bytes {:02X?}", tag.to_le_bytes()),
        );
    }
    let paged = flags & POOL_FLAG_PAGED != 0;
    if paged && irql::current() != Irql::Passive {
        Rule::PoolPagedAtDispatch.report(image.name, &format!("{call} at DISPATCH_LEVEL"));
    }
    if size == 0 {
        Rule::PoolZeroBytes.report(image.name, &call);
    }
    if FaultPlan::should_fail(Site::ExAllocatePool2, image.name) {
        pool::count_failed();
        if flags & POOL_FLAG_RAISE_ON_FAILURE != 0 {
            Rule::PoolRaiseOnFailure.report(
                image.name,
                &format!("{call} failed with POOL_FLAG_RAISE_ON_FAILURE: it raises, it does not return NULL"),
            );
        }
        return std::ptr::null_mut();
    }
    let fill = if flags & POOL_FLAG_UNINITIALIZED != 0 {
        pool::Fill::Garbage
    } else {
        pool::Fill::Zero
    };
    pool::allocate_with(size, tag, image.id, image.name, paged, fill).cast()
}

/// `ExFreePoolWithTag(P, Tag)`; the thunk adds the image in R8.
pub(crate) extern "win64" fn ex_free_pool_with_tag(
    p: *mut c_void,
    tag: u32,
    image: *const ImageCtx,
) {
    // SAFETY: as for ex_allocate_pool2.
    let name = unsafe { ImageCtx::from_ptr(image) }.map_or("?", |i| i.name);
    if irql::current() != Irql::Passive && pool::is_paged(p as usize) {
        Rule::PoolFreePagedAtDispatch.report(
            name,
            &format!("ExFreePoolWithTag({p:p}) of a paged block at DISPATCH_LEVEL"),
        );
    }
    pool::free(p.cast(), tag, name);
}

// ----------------------------------------------------------------- threads

struct ThreadRec {
    image: u64,
    image_name: &'static str,
    done: Arc<(Mutex<bool>, Condvar)>,
    join: Option<std::thread::JoinHandle<()>>,
}

static THREADS: Mutex<Option<HashMap<usize, ThreadRec>>> = Mutex::new(None);
static NEXT_HANDLE: AtomicUsize = AtomicUsize::new(1);
static THREADS_CREATED: AtomicU64 = AtomicU64::new(0);
static THREADS_RUNNING: AtomicU64 = AtomicU64::new(0);
/// Image threads running, per load of an image (counted from creation).
static RUNNING_BY_IMAGE: Mutex<Option<HashMap<u64, u64>>> = Mutex::new(None);

fn running_by_image(image: u64, delta: i64) {
    let mut g = RUNNING_BY_IMAGE.lock().unwrap_or_else(|e| e.into_inner());
    let n = g.get_or_insert_with(HashMap::new).entry(image).or_insert(0);
    *n = n.saturating_add_signed(delta);
}

/// Threads of the load `image` still running (created and not yet ended).
pub fn running_threads_of(image: u64) -> u64 {
    let g = RUNNING_BY_IMAGE.lock().unwrap_or_else(|e| e.into_inner());
    g.as_ref().and_then(|m| m.get(&image)).copied().unwrap_or(0)
}
static THREADS_PEAK: AtomicU64 = AtomicU64::new(0);
static STACK_PEAK: AtomicUsize = AtomicUsize::new(0);

fn threads<R>(f: impl FnOnce(&mut HashMap<usize, ThreadRec>) -> R) -> R {
    let mut g = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(HashMap::new))
}

/// Thread figures for the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadStats {
    /// `PsCreateSystemThread` calls that started a thread.
    pub created: u64,
    /// Most image threads running at once.
    pub peak_running: u64,
    /// Image threads running now.
    pub running: u64,
    /// The deepest any image thread used its kernel stack, in bytes.
    pub stack_peak: usize,
}

/// The thread figures so far.
pub fn thread_stats() -> ThreadStats {
    ThreadStats {
        created: THREADS_CREATED.load(Ordering::Relaxed),
        peak_running: THREADS_PEAK.load(Ordering::Relaxed),
        running: THREADS_RUNNING.load(Ordering::Relaxed),
        stack_peak: STACK_PEAK.load(Ordering::Relaxed),
    }
}

/// Threads of image `image` still running, and handles it left open.
pub fn threads_of(image: u64) -> (usize, usize) {
    threads(|t| {
        let mine: Vec<&ThreadRec> = t.values().filter(|r| r.image == image).collect();
        let running = mine
            .iter()
            .filter(|r| !*r.done.0.lock().unwrap_or_else(|e| e.into_inner()))
            .count();
        (running, mine.len())
    })
}

/// Forgets image `image`'s handles after they were reported (the image is gone).
pub fn forget_threads_of(image: u64) {
    threads(|t| t.retain(|_, r| r.image != image));
}

/// Kernel handles have the top bit set; ours are multiples of 4 like Windows'.
fn new_handle() -> usize {
    0xFFFF_FFFF_8000_0000 | (NEXT_HANDLE.fetch_add(1, Ordering::Relaxed) * 4)
}

/// `PsCreateSystemThread`: a host thread that runs the start routine on a
/// 24 KiB kernel stack with a guard page below.
#[allow(clippy::too_many_arguments)]
pub(crate) extern "win64" fn ps_create_system_thread(
    handle_out: *mut HANDLE,
    _access: u32,
    _attributes: *mut c_void,
    _process: HANDLE,
    _client_id: *mut c_void,
    start: usize,
    context: usize,
) -> NTSTATUS {
    let image = crate::registry::image_at(start);
    let (image_name, image_path) = image.map_or(("?", "?"), |i| (i.name, i.path));
    if handle_out.is_null() || image.is_none() {
        problems::report(
            Kind::BadCall,
            image_name,
            "PsCreateSystemThread: null handle pointer, or a start routine outside any image",
        );
        return STATUS_INVALID_PARAMETER;
    }
    if irql::current() != Irql::Passive {
        Rule::IrqlPsPassive.report(image_name, "PsCreateSystemThread at DISPATCH_LEVEL");
    }
    if FaultPlan::should_fail(Site::PsCreateSystemThread, image_name) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    let image_id = crate::driver::image_id_at(start);
    let stack = match KernelStack::new(image_name, image_path) {
        Ok(s) => s,
        Err(_) => return STATUS_INSUFFICIENT_RESOURCES,
    };
    let done = Arc::new((Mutex::new(false), Condvar::new()));
    let done2 = done.clone();
    running_by_image(image_id, 1);
    let spawned = std::thread::Builder::new()
        .name(format!("{image_name} system thread"))
        .spawn(move || {
            let alt = crate::fault::AltStack::install();
            let running = THREADS_RUNNING.fetch_add(1, Ordering::Relaxed) + 1;
            THREADS_PEAK.fetch_max(running, Ordering::Relaxed);
            // SAFETY: `start` is inside a mapped image (checked); the image
            // stays mapped until its threads are waited for (DriverUnload).
            unsafe { stack::run_on_kernel_stack(&stack, start, context) };
            STACK_PEAK.fetch_max(stack.used(), Ordering::Relaxed);
            drop(alt);
            THREADS_RUNNING.fetch_sub(1, Ordering::Relaxed);
            running_by_image(image_id, -1);
            let (m, cv) = &*done2;
            *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        });
    let Ok(join) = spawned else {
        running_by_image(image_id, -1);
        return STATUS_INSUFFICIENT_RESOURCES;
    };
    THREADS_CREATED.fetch_add(1, Ordering::Relaxed);
    let handle = new_handle();
    threads(|t| {
        t.insert(
            handle,
            ThreadRec {
                image: image_id,
                image_name,
                done,
                join: Some(join),
            },
        )
    });
    // SAFETY: checked non-null; the caller's HANDLE.
    unsafe { *handle_out = std::ptr::without_provenance_mut(handle) };
    STATUS_SUCCESS
}

/// `PsTerminateSystemThread`: ends the calling image thread without
/// unwinding its frames.
pub(crate) extern "win64" fn ps_terminate_system_thread(_status: NTSTATUS) -> NTSTATUS {
    if irql::current() != Irql::Passive {
        Rule::IrqlPsPassive.report(
            &held_locks_image(),
            &format!(
                "PsTerminateSystemThread at DISPATCH_LEVEL{}",
                held_locks_text()
            ),
        );
    }
    if !stack::on_system_thread() {
        problems::report(
            Kind::BadCall,
            "?",
            "PsTerminateSystemThread on a thread PsCreateSystemThread did not create",
        );
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: on an image thread, inside run_on_kernel_stack; this frame
    // holds nothing that needs dropping.
    unsafe { stack::exit_kernel_stack() }
}

/// `ZwWaitForSingleObject` on a thread handle: waits for it to end.
pub(crate) extern "win64" fn zw_wait_for_single_object(
    handle: HANDLE,
    _alertable: u8,
    timeout: *mut i64,
) -> NTSTATUS {
    if irql::current() != Irql::Passive {
        Rule::ZwNotPassive.report(
            stack::current_image(),
            "ZwWaitForSingleObject at DISPATCH_LEVEL",
        );
    }
    blocking_with_lock_held("ZwWaitForSingleObject");
    let Some(done) = threads(|t| t.get(&(handle as usize)).map(|r| r.done.clone())) else {
        problems::report(
            Kind::BadCall,
            "?",
            format!("ZwWaitForSingleObject({handle:p}): not a thread handle"),
        );
        return STATUS_INVALID_HANDLE;
    };
    // SAFETY: null or the caller's LARGE_INTEGER.
    let timeout = unsafe { timeout.as_ref() }.copied();
    let (m, cv) = &*done;
    let mut finished = m.lock().unwrap_or_else(|e| e.into_inner());
    match timeout {
        None => {
            // Without a timeout Windows waits forever; the host gives up
            // after the model's deadline, so that a driver thread that never
            // ends fails the run (a panic here aborts the process) instead
            // of hanging it.
            let (g, _) = cv
                .wait_timeout_while(finished, nmr_sim::WAIT_DEADLINE, |f| !*f)
                .unwrap_or_else(|e| e.into_inner());
            finished = g;
            assert!(
                *finished,
                "ZwWaitForSingleObject({handle:p}): the thread has not ended after {:?}",
                nmr_sim::WAIT_DEADLINE
            );
        }
        Some(t) => {
            let wait = timeout_duration("ZwWaitForSingleObject", t);
            let (g, _) = cv
                .wait_timeout_while(finished, wait, |f| !*f)
                .unwrap_or_else(|e| e.into_inner());
            finished = g;
            if !*finished {
                return STATUS_TIMEOUT;
            }
        }
    }
    STATUS_SUCCESS
}

/// `ZwClose` on a thread handle; joins the host thread if it has ended.
pub(crate) extern "win64" fn zw_close(handle: HANDLE) -> NTSTATUS {
    if irql::current() != Irql::Passive {
        Rule::IrqlZwPassive.report(
            stack::current_image(),
            &format!("ZwClose({handle:p}) at DISPATCH_LEVEL"),
        );
    }
    let Some(mut rec) = threads(|t| t.remove(&(handle as usize))) else {
        problems::report(
            Kind::BadCall,
            "?",
            format!("ZwClose({handle:p}): not an open handle"),
        );
        return STATUS_INVALID_HANDLE;
    };
    if *rec.done.0.lock().unwrap_or_else(|e| e.into_inner())
        && let Some(j) = rec.join.take()
    {
        let _ = j.join();
    }
    let _ = rec.image_name;
    STATUS_SUCCESS
}

/// 100 ns units from 1601-01-01 to 1970-01-01 (the Unix epoch).
const EPOCH_1601_TO_1970: i64 = 11_644_473_600 * 10_000_000;

/// The system time now, as `KeQuerySystemTime` gives it.
fn system_time_now() -> i64 {
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    EPOCH_1601_TO_1970 + (since_unix.as_nanos() / 100) as i64
}

/// How long a wait with `t` (100 ns units) lasts: negative is relative,
/// positive an absolute system time (reported: the images mean relative
/// waits, and a positive value is the classic sign bug).
fn timeout_duration(call: &str, t: i64) -> Duration {
    if t <= 0 {
        return Duration::from_nanos(t.unsigned_abs().saturating_mul(100));
    }
    let now = system_time_now();
    let left = t.saturating_sub(now);
    let when = if left <= 0 {
        format!(
            "{:.1} s in the past: returns at once",
            (now - t) as f64 / 1e7
        )
    } else {
        format!("{:.1} s from now", left as f64 / 1e7)
    };
    Rule::AbsoluteTimeout.report(
        stack::current_image(),
        &format!("{call} with a positive interval {t} (an absolute time, {when}); a relative one is negative"),
    );
    Duration::from_nanos(left.max(0) as u64 * 100)
}

/// `KeDelayExecutionThread(WaitMode, Alertable, Interval)`.
pub(crate) extern "win64" fn ke_delay_execution_thread(
    _mode: i8,
    _alertable: u8,
    interval: *mut i64,
) -> NTSTATUS {
    if irql::current() != Irql::Passive {
        Rule::IrqlKeApcLte1.report(
            stack::current_image(),
            "KeDelayExecutionThread at DISPATCH_LEVEL",
        );
    }
    blocking_with_lock_held("KeDelayExecutionThread");
    // SAFETY: null or the caller's LARGE_INTEGER.
    let Some(&t) = (unsafe { interval.as_ref() }) else {
        Rule::DelayNullInterval.report(
            stack::current_image(),
            "KeDelayExecutionThread(Interval = NULL)",
        );
        return STATUS_INVALID_PARAMETER;
    };
    let mut us = (timeout_duration("KeDelayExecutionThread", t).as_nanos() / 1000) as u64;
    if stack::on_system_thread() {
        us = us.min(u64::from(DELAY_CAP_US.load(Ordering::Relaxed)));
    }
    if us == 0 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(us));
    }
    STATUS_SUCCESS
}

// --------------------------------------------------------------- spin lock

fn level_to_irql(level: u8) -> Irql {
    if level >= DISPATCH_LEVEL {
        Irql::Dispatch
    } else {
        Irql::Passive
    }
}

// What Driver Verifier's Deadlock Detection and the spin lock DDI rules
// need: the locks each thread holds (with the IRQL each acquire returned),
// which thread holds each lock, and the order in which locks were ever
// taken while another was held.

/// One spin lock held by this thread.
#[derive(Clone, Copy, Debug)]
struct Held {
    lock: usize,
    old_irql: u8,
}

thread_local! {
    /// The spin locks this thread holds, innermost last.
    static HELD: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
    /// This thread's id for the owner table.
    static THREAD_ID: u64 = NEXT_THREAD_ID.fetch_add(1, Ordering::Relaxed);
}
static NEXT_THREAD_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
struct LockGraph {
    /// Lock -> the thread holding it.
    owner: HashMap<usize, u64>,
    /// (a, b): b was acquired while a was held.
    order: HashSet<(usize, usize)>,
}

static LOCKS: Mutex<Option<LockGraph>> = Mutex::new(None);
static LOCK_ACQUIRES: AtomicU64 = AtomicU64::new(0);
static LOCK_NESTED_ACQUIRES: AtomicU64 = AtomicU64::new(0);

/// Spin lock figures: acquires checked, and how many were nested under
/// another lock (what the order check has to work with).
pub fn lock_stats() -> (u64, u64) {
    (
        LOCK_ACQUIRES.load(Ordering::Relaxed),
        LOCK_NESTED_ACQUIRES.load(Ordering::Relaxed),
    )
}

fn locks<R>(f: impl FnOnce(&mut LockGraph) -> R) -> R {
    let mut g = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(LockGraph::default))
}

/// Forgets the locks in `start..start + len` (freed pool: the address may
/// be a different lock next time).
pub(crate) fn forget_locks_in(start: usize, len: usize) {
    let inside = |a: usize| a >= start && a - start < len;
    locks(|g| {
        g.owner.retain(|&l, _| !inside(l));
        g.order.retain(|&(a, b)| !inside(a) && !inside(b));
    });
}

/// The spin locks this thread holds now.
pub fn held_locks() -> Vec<usize> {
    HELD.with(|h| h.borrow().iter().map(|l| l.lock).collect())
}

fn held_locks_text() -> String {
    let held = held_locks();
    if held.is_empty() {
        String::new()
    } else {
        format!(" holding spin lock(s) {held:x?}")
    }
}

/// The image of the innermost lock held (or `?`).
fn held_locks_image() -> String {
    held_locks()
        .last()
        .map_or("?", |&l| lock_image(l))
        .to_owned()
}

/// The image a lock belongs to: the pool block's owner or the image it is in.
fn lock_image(lock: usize) -> &'static str {
    pool::owner_of(lock).unwrap_or_else(|| name_at(lock))
}

/// Reports a wait with a spin lock held (the IRQL was lowered by a wrong release).
fn blocking_with_lock_held(call: &str) {
    let held = held_locks();
    if let Some(&lock) = held.last() {
        Rule::BlockingWithLockHeld.report(
            lock_image(lock),
            &format!("{call} while holding spin lock(s) {held:x?}"),
        );
    }
}

/// At a system thread's end: what it must not leave behind.
pub(crate) fn check_thread_end(image: &str, start: usize) {
    let what = format!(
        "the system thread started at {}",
        stack::name_with_offset(start)
    );
    let level = irql::current();
    if level != Irql::Passive {
        Rule::ThreadExitRaisedIrql.report(image, &format!("{what} ended at DISPATCH_LEVEL"));
    }
    let held = held_locks();
    if !held.is_empty() {
        Rule::ThreadExitOwnsLock.report(
            image,
            &format!("{what} ended holding spin lock(s) {held:x?}"),
        );
    }
    end_of_entry_cleanup();
}

/// The IRQL and the number of spin locks held now: what a routine the
/// system calls must give back unchanged.
pub(crate) fn entry_state() -> (u8, usize) {
    let level = match irql::current() {
        Irql::Passive => PASSIVE_LEVEL,
        Irql::Dispatch => DISPATCH_LEVEL,
    };
    (level, HELD.with(|h| h.borrow().len()))
}

/// Checks that `routine` gave back the state it was called in, `before`.
pub(crate) fn check_entry_return(routine: &str, image: &str, before: (u8, usize)) {
    let after = entry_state();
    if after.0 != before.0 {
        Rule::ReturnAtOtherIrql.report(
            image,
            &format!(
                "{routine} returned at {}, called at {}",
                irql_name(after.0),
                irql_name(before.0)
            ),
        );
    }
    if after.1 > before.1 {
        let held = held_locks();
        Rule::ReturnHoldingLock.report(
            image,
            &format!(
                "{routine} returned holding spin lock(s) {:x?}",
                &held[before.1..]
            ),
        );
    }
}

/// Forgets this thread's held locks and IRQL after they were reported.
fn end_of_entry_cleanup() {
    let held = HELD.with(|h| std::mem::take(&mut *h.borrow_mut()));
    let me = THREAD_ID.with(|t| *t);
    locks(|g| {
        for l in held {
            if g.owner.get(&l.lock) == Some(&me) {
                g.owner.remove(&l.lock);
            }
        }
    });
    irql::lower(Irql::Passive);
}

/// `KeAcquireSpinLockRaiseToDpc`: raises the model's IRQL, spins, returns the old level.
pub(crate) extern "win64" fn ke_acquire_spin_lock_raise_to_dpc(lock: *mut usize) -> u8 {
    let old = irql::raise_to_dispatch();
    let old_level = match old {
        Irql::Passive => PASSIVE_LEVEL,
        Irql::Dispatch => DISPATCH_LEVEL,
    };
    let lock_addr = lock as usize;
    let held = held_locks();
    LOCK_ACQUIRES.fetch_add(1, Ordering::Relaxed);
    if !held.is_empty() {
        LOCK_NESTED_ACQUIRES.fetch_add(1, Ordering::Relaxed);
    }
    if held.contains(&lock_addr) {
        // Spinning would never end: report and do not spin (Verifier stops here).
        Rule::SelfDeadlock.report(
            lock_image(lock_addr),
            &format!("KeAcquireSpinLockRaiseToDpc({lock_addr:#x}) by the thread that holds it"),
        );
        HELD.with(|h| {
            h.borrow_mut().push(Held {
                lock: lock_addr,
                old_irql: old_level,
            })
        });
        return old_level;
    }
    let inversion = locks(|g| {
        let bad = held
            .iter()
            .copied()
            .find(|&outer| g.order.contains(&(lock_addr, outer)));
        for &outer in &held {
            g.order.insert((outer, lock_addr));
        }
        bad
    });
    if let Some(outer) = inversion {
        Rule::LockHierarchy.report(
            lock_image(lock_addr),
            &format!(
                "spin lock {lock_addr:#x} acquired while holding {outer:#x}, which was \
                 acquired while holding {lock_addr:#x} before: the two orders deadlock"
            ),
        );
    }
    // SAFETY: a KSPIN_LOCK is a pointer-sized, aligned word the caller owns.
    let word = unsafe { std::sync::atomic::AtomicUsize::from_ptr(lock) };
    let mut spins = 0u32;
    while word
        .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(64) {
            std::thread::yield_now(); // the holder may be descheduled
        } else {
            std::hint::spin_loop();
        }
    }
    let me = THREAD_ID.with(|t| *t);
    locks(|g| g.owner.insert(lock_addr, me));
    HELD.with(|h| {
        h.borrow_mut().push(Held {
            lock: lock_addr,
            old_irql: old_level,
        })
    });
    old_level
}

/// `KeReleaseSpinLock(SpinLock, NewIrql)`: releases and lowers; checks what
/// Verifier checks (IrqlKeReleaseSpinLock, Deadlock Detection).
pub(crate) extern "win64" fn ke_release_spin_lock(lock: *mut usize, new_irql: u8) {
    let lock_addr = lock as usize;
    // Worded only when something is reported (this is the hot path).
    let report = |rule: Rule, what: &str| {
        rule.report(
            lock_image(lock_addr),
            &format!(
                "KeReleaseSpinLock({lock_addr:#x}, {}){what}",
                irql_name(new_irql)
            ),
        )
    };
    if irql::current() != Irql::Dispatch {
        report(Rule::IrqlKeReleaseSpinLock, " called at PASSIVE_LEVEL");
    }
    let me = THREAD_ID.with(|t| *t);
    let mine = HELD.with(|h| {
        let mut h = h.borrow_mut();
        let at = h.iter().rposition(|l| l.lock == lock_addr)?;
        let innermost = at + 1 == h.len();
        Some((h.remove(at), innermost))
    });
    match mine {
        Some((held, innermost)) => {
            if held.old_irql != new_irql {
                report(
                    Rule::IrqlKeReleaseSpinLock,
                    &format!(
                        ": NewIrql is not the {} its KeAcquireSpinLock returned",
                        irql_name(held.old_irql)
                    ),
                );
            }
            if !innermost {
                report(
                    Rule::ReleaseOrder,
                    " while a spin lock acquired after it is still held",
                );
            }
            locks(|g| g.owner.remove(&lock_addr));
        }
        None => {
            // SAFETY: as below: the caller's KSPIN_LOCK.
            let taken = unsafe { std::sync::atomic::AtomicUsize::from_ptr(lock) }
                .load(Ordering::Relaxed)
                != 0;
            let owner = locks(|g| g.owner.get(&lock_addr).copied());
            match owner {
                Some(o) if o != me && taken => report(
                    Rule::ReleaseWrongThread,
                    " by a thread that did not acquire it",
                ),
                _ => report(Rule::ReleaseUnacquired, " of a lock not held"),
            }
        }
    }
    // SAFETY: as above.
    let word = unsafe { std::sync::atomic::AtomicUsize::from_ptr(lock) };
    if word.swap(0, Ordering::Release) == 0 && mine.is_some() {
        problems::report(
            Kind::BadCall,
            lock_image(lock_addr),
            format!("KeReleaseSpinLock({lock_addr:#x}): the lock word was already 0"),
        );
    }
    irql::lower(level_to_irql(new_irql));
    let latency = CALL_LATENCY_US.load(Ordering::Relaxed);
    if latency != 0 && new_irql == PASSIVE_LEVEL && stack::on_system_thread() {
        std::thread::sleep(Duration::from_micros(u64::from(latency)));
    }
}

// --------------------------------------------------------------- bug check

/// `KeBugCheckEx`: reports the code and parameters and stops the run.
pub(crate) extern "win64" fn ke_bug_check_ex(
    code: u32,
    p1: usize,
    p2: usize,
    p3: usize,
    p4: usize,
) -> ! {
    let image = [p2, p1, p3, p4]
        .into_iter()
        .find_map(crate::registry::image_at)
        .map_or("?", |f| f.name);
    let mut text = format!(
        "\nBUGCHECK: KeBugCheckEx(0x{code:08X}, {p1:#x}, {p2:#x}, {p3:#x}, {p4:#x}) from {image}"
    );
    if code == 0x5250_4E43 {
        // A Rust panic ("RPNC", as wdk-panic and the shell raise it): the file
        // name's address in P1 and its length in P2, the line in P3, the
        // column in P4.
        let mut file = String::new();
        for i in 0..p2.min(260) {
            if crate::registry::image_at(p1 + i).is_none() {
                break;
            }
            // SAFETY: inside a mapped image (checked per byte just above),
            // whose sections are all readable.
            let b = unsafe { *((p1 + i) as *const u8) };
            if !(b.is_ascii_graphic() || b == b' ') {
                break;
            }
            file.push(b as char);
        }
        let _ = write!(text, "\n  a Rust panic in the driver at {file}:{p3}:{p4}");
    }
    eprintln!("{text}");
    // SAFETY: _exit ends the process without running anything of the images.
    unsafe { libc::_exit(FAULT_EXIT_CODE) }
}

// ---------------------------------------------------------- C memory functions

pub(crate) extern "win64" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: memcpy's contract: both valid for n bytes, not overlapping.
    unsafe { std::ptr::copy_nonoverlapping(src, dest, n) };
    dest
}

pub(crate) extern "win64" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: memmove's contract: both valid for n bytes.
    unsafe { std::ptr::copy(src, dest, n) };
    dest
}

pub(crate) extern "win64" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: memset's contract: dest valid for n bytes.
    unsafe { std::ptr::write_bytes(dest, c as u8, n) };
    dest
}

pub(crate) extern "win64" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: memcmp's contract: both readable for n bytes.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, n),
            std::slice::from_raw_parts(b, n),
        )
    };
    a.iter()
        .zip(b)
        .find(|(x, y)| x != y)
        .map_or(0, |(x, y)| i32::from(*x) - i32::from(*y))
}

// -------------------------------------------------------------- processors

/// The processors the host offers.
pub(crate) fn processor_count() -> u32 {
    // Read once: `available_parallelism` reads the cgroup files under /proc
    // at every call, which made `KeGetCurrentProcessorNumberEx` (on every
    // NPI call of the images) cost tens of microseconds.
    static COUNT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
}

/// The processor the calling thread runs on, below [`processor_count`]: what
/// `KeGetCurrentProcessorNumberEx` answers and what a stand-in KPCR holds.
pub(crate) fn current_processor_index() -> u32 {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).unwrap_or(0).min(processor_count() - 1)
}

/// `KeQueryMaximumProcessorCountEx(GroupNumber)`: one group holds them all.
pub(crate) extern "win64" fn ke_query_maximum_processor_count_ex(group: u16) -> u32 {
    const ALL_PROCESSOR_GROUPS: u16 = 0xFFFF;
    if group == 0 || group == ALL_PROCESSOR_GROUPS {
        processor_count()
    } else {
        0
    }
}

/// `PROCESSOR_NUMBER`.
#[repr(C)]
pub(crate) struct ProcessorNumber {
    group: u16,
    number: u8,
    reserved: u8,
}

/// `KeGetCurrentProcessorNumberEx(ProcNumber)`: the CPU this thread runs on
/// (sched_getcpu), clamped below the count.
pub(crate) extern "win64" fn ke_get_current_processor_number_ex(
    number: *mut ProcessorNumber,
) -> u32 {
    let cpu = current_processor_index();
    // SAFETY: null or the caller's PROCESSOR_NUMBER.
    if let Some(n) = unsafe { number.as_mut() } {
        *n = ProcessorNumber {
            group: 0,
            number: cpu as u8,
            reserved: 0,
        };
    }
    cpu
}
