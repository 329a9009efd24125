//! Systematic fault injection on the model, as Driver Verifier's
//! low-resources simulation does it on Windows: every allocation the modules
//! make fails in turn, and each time they must unwind cleanly.
//!
//! [`Faulty`] is a global allocator that charges each allocation to whoever
//! runs ([`nmr_sim::running`]: the model marks its own code and its callouts
//! into the modules; the sweep marks its direct calls into them). While a
//! sweep runs, it numbers the modules' allocations (reallocations included,
//! they can fail too), fails the one it is told to, and keeps the address of
//! every block the modules hold, so that a leak is found by address, whoever
//! else allocates meanwhile.
//!
//! [`sweep`] first runs the cycle (load both modules, attach, a call each
//! way, unload both) and counts the modules' allocations, naming each site
//! by its call stack; then runs it once per allocation with that one failing.
//! Every run must end with the failed load refused with
//! `STATUS_INSUFFICIENT_RESOURCES`, or the attach declined by both sides, or
//! a binding that works (a verified call each way); and with no block of the
//! modules live, no binding or registration left in the model, and no
//! contract violation. A test binary installs [`Faulty`] with
//! `#[global_allocator]` and runs one sweep at a time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use nmr_client_module::client::{ClientConfig, ClientModule};
use nmr_common::ffi::*;
use nmr_common::module::Unload;
use nmr_provider_module::provider::{ProviderConfig, ProviderModule};
use nmr_sim::running::{Running, as_module, running};
use nmr_sim::{Config, Delivery, Policy, Side, Sim};

use crate::TestNmr;

/// No allocation is to fail.
const NEVER: u64 = u64::MAX;

/// A sweep is running: count, fail, track.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The modules' allocations seen in this run.
static SEEN: AtomicU64 = AtomicU64::new(0);
/// The number (from 0) of the module allocation to fail.
static FAIL_AT: AtomicU64 = AtomicU64::new(NEVER);
/// The side whose allocation was failed, if one was (0 none, 1 client, 2 provider).
static FAILED_SIDE: AtomicU64 = AtomicU64::new(0);
/// Record a call stack for each module allocation (the counting run).
static RECORD: AtomicBool = AtomicBool::new(false);

/// What the allocator keeps for the sweep, behind one lock.
struct Book {
    /// Blocks the modules allocated and nobody has freed yet.
    live: Vec<(usize, Side)>,
    /// One entry per module allocation of a recording run.
    sites: Vec<(Side, Backtrace)>,
}

static BOOK: Mutex<Book> = Mutex::new(Book {
    live: Vec::new(),
    sites: Vec::new(),
});

thread_local! {
    /// This thread is inside the allocator's own bookkeeping: allocations
    /// it makes there are neither counted nor failed.
    static IN_BOOK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` on the book, unless this thread is already in it (`None`).
fn with_book<R>(f: impl FnOnce(&mut Book) -> R) -> Option<R> {
    if IN_BOOK.try_with(|b| b.replace(true)) != Ok(false) {
        return None;
    }
    let result = f(&mut BOOK.lock().unwrap_or_else(|e| e.into_inner()));
    IN_BOOK.with(|b| b.set(false));
    Some(result)
}

fn in_book() -> bool {
    IN_BOOK.try_with(Cell::get).unwrap_or(true)
}

fn side_code(side: Side) -> u64 {
    match side {
        Side::Client => 1,
        Side::Provider => 2,
    }
}

/// The side whose module code makes this allocation, while a sweep runs.
fn module_allocation() -> Option<Side> {
    if !ACTIVE.load(SeqCst) || in_book() {
        return None;
    }
    match running() {
        Running::Module(side) => Some(side),
        Running::Model | Running::Harness => None,
    }
}

/// Numbers a module allocation; `false` if it is the one to fail.
fn admit(side: Side) -> bool {
    let n = SEEN.fetch_add(1, SeqCst);
    if RECORD.load(SeqCst) {
        // Captured inside the book: its own allocations are not the module's.
        with_book(|book| book.sites.push((side, Backtrace::force_capture())));
    }
    if n == FAIL_AT.load(SeqCst) {
        FAILED_SIDE.store(side_code(side), SeqCst);
        return false;
    }
    true
}

fn track(ptr: *mut u8, side: Side) {
    if !ptr.is_null() {
        with_book(|book| book.live.push((ptr.addr(), side)));
    }
}

fn untrack(ptr: *mut u8) -> Option<Side> {
    if !ACTIVE.load(SeqCst) {
        return None;
    }
    with_book(|book| {
        let i = book.live.iter().position(|(p, _)| *p == ptr.addr())?;
        Some(book.live.swap_remove(i).1)
    })
    .flatten()
}

/// The system allocator, with the sweep's counting, failing and tracking of
/// the modules' allocations.
pub struct Faulty;

// SAFETY: every call is forwarded to the system allocator unchanged, except
// that a module allocation the sweep chose gets null (a legal answer: the
// allocation failed, and for `realloc` the old block is untouched).
unsafe impl GlobalAlloc for Faulty {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let side = module_allocation();
        if side.is_some_and(|s| !admit(s)) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded; the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        side.inspect(|s| track(p, *s));
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let side = module_allocation();
        if side.is_some_and(|s| !admit(s)) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded.
        let p = unsafe { System.alloc_zeroed(layout) };
        side.inspect(|s| track(p, *s));
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        untrack(ptr);
        // SAFETY: forwarded; `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let side = module_allocation();
        if side.is_some_and(|s| !admit(s)) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded; on success the old block is gone, on failure kept.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // The block changed hands: it stays charged to whoever had it.
            if let Some(owner) = untrack(ptr).or(side) {
                track(p, owner);
            }
        }
        p
    }
}

/// How a cycle loads its two modules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadOrder {
    /// The client registers first; the attach runs inside the provider's
    /// registration.
    ClientFirst,
    /// The provider registers first; the attach runs inside the client's.
    ProviderFirst,
}

/// How a cycle ended, when it ended well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// That module's load failed with `STATUS_INSUFFICIENT_RESOURCES`.
    LoadFailed(Side),
    /// Both loaded, and the attach was declined by both sides.
    Declined,
    /// Both loaded and bound; a call each way was verified.
    Bound,
}

/// One allocation site of the modules, as the counting run found it.
#[derive(Clone, Debug)]
pub struct Site {
    /// Its number in the cycle, from 0.
    pub index: u64,
    /// The module that allocates.
    pub side: Side,
    /// Where: the module function, and the allocating function with its line.
    pub at: String,
}

/// One run of the sweep, with one allocation failing.
#[derive(Clone, Debug)]
pub struct Run {
    /// The site that failed.
    pub site: Site,
    /// How the cycle ended, or what was wrong with it.
    pub result: Result<Outcome, String>,
}

/// What a sweep found.
#[derive(Clone, Debug)]
pub struct SweepReport {
    /// The delivery and the load order it ran with.
    pub delivery: Delivery,
    /// The load order.
    pub order: LoadOrder,
    /// How the cycle ended with nothing failing.
    pub clean: Result<Outcome, String>,
    /// Every module allocation of the cycle.
    pub sites: Vec<Site>,
    /// One per site, with that allocation failing.
    pub runs: Vec<Run>,
}

impl SweepReport {
    /// Sites of one module.
    pub fn sites_of(&self, side: Side) -> usize {
        self.sites.iter().filter(|s| s.side == side).count()
    }

    /// Everything wrong, one line each: empty when the sweep passed.
    pub fn failures(&self) -> Vec<String> {
        let mut all = Vec::new();
        match &self.clean {
            Ok(Outcome::Bound) => {}
            other => all.push(format!("with no failure the cycle ended {other:?}")),
        }
        for run in &self.runs {
            if let Err(why) = &run.result {
                let s = &run.site;
                all.push(format!(
                    "site {} ({} at {}): {why}",
                    s.index,
                    s.side.name(),
                    s.at
                ));
            }
        }
        all
    }
}

/// Sweeps the modules' allocations in one cycle with `delivery` and `order`:
/// counts them, then fails each once. Needs [`Faulty`] as the global
/// allocator, and no other sweep at the same time.
pub fn sweep(delivery: Delivery, order: LoadOrder) -> SweepReport {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());

    RECORD.store(true, SeqCst);
    let (clean, seen) = run_once(delivery, order, NEVER);
    RECORD.store(false, SeqCst);
    let traces = with_book(|book| std::mem::take(&mut book.sites)).unwrap_or_default();
    assert!(
        seen > 0 && traces.len() as u64 == seen,
        "no module allocation was seen: install testbed::fault::Faulty as the global allocator"
    );
    let sites: Vec<Site> = traces
        .iter()
        .zip(0..)
        .map(|((side, trace), index)| Site {
            index,
            side: *side,
            at: site_name(trace),
        })
        .collect();
    drop(traces);

    let runs = sites
        .iter()
        .map(|site| {
            let (result, _) = run_once(delivery, order, site.index);
            let failed = FAILED_SIDE.load(SeqCst);
            let result = match result {
                // The cycle must have reached that allocation, made by the
                // same module as in the counting run (it is deterministic).
                Ok(_) if failed == 0 => Err("the allocation was never made".into()),
                Ok(_) if failed != side_code(site.side) => {
                    Err("a different module made that allocation".into())
                }
                other => other,
            };
            Run {
                site: site.clone(),
                result,
            }
        })
        .collect();
    SweepReport {
        delivery,
        order,
        clean,
        sites,
        runs,
    }
}

/// One cycle with module allocation `fail_at` failing; returns how it ended
/// and how many module allocations it made.
fn run_once(delivery: Delivery, order: LoadOrder, fail_at: u64) -> (Result<Outcome, String>, u64) {
    with_book(|book| book.live.clear());
    SEEN.store(0, SeqCst);
    FAILED_SIDE.store(0, SeqCst);
    FAIL_AT.store(fail_at, SeqCst);
    ACTIVE.store(true, SeqCst);
    let result = cycle(delivery, order);
    ACTIVE.store(false, SeqCst);
    FAIL_AT.store(NEVER, SeqCst);
    let leaked = with_book(|book| std::mem::take(&mut book.live)).unwrap_or_default();
    let result = result.and_then(|outcome| {
        if leaked.is_empty() {
            Ok(outcome)
        } else {
            let (client, provider) = (
                leaked.iter().filter(|(_, s)| *s == Side::Client).count(),
                leaked.iter().filter(|(_, s)| *s == Side::Provider).count(),
            );
            Err(format!(
                "leaked {client} block(s) of the client and {provider} of the provider"
            ))
        }
    });
    (result, SEEN.load(SeqCst))
}

/// The cycle: load (in `order`), attach, a call each way, unload both.
fn cycle(delivery: Delivery, order: LoadOrder) -> Result<Outcome, String> {
    let nmr = TestNmr::new(Sim::new(Config {
        delivery,
        policy: Policy::Record,
        ..Config::default()
    }));
    let load_client = || {
        as_module(Side::Client, || {
            ClientModule::load(nmr.clone(), ClientConfig::default())
        })
    };
    let load_provider = || {
        as_module(Side::Provider, || {
            ProviderModule::load(nmr.clone(), ProviderConfig::default())
        })
    };
    let (client, provider) = match order {
        LoadOrder::ClientFirst => {
            let c = load_client();
            (c, load_provider())
        }
        LoadOrder::ProviderFirst => {
            let p = load_provider();
            (load_client(), p)
        }
    };
    let mut problems = Vec::new();
    let outcome = match (&client, &provider) {
        (Err(status), _) | (_, Err(status)) if *status != STATUS_INSUFFICIENT_RESOURCES => {
            problems.push(format!("a load failed with {status:#x}"));
            None
        }
        (Err(_), _) => Some(Outcome::LoadFailed(Side::Client)),
        (_, Err(_)) => Some(Outcome::LoadFailed(Side::Provider)),
        (Ok(c), Ok(p)) => {
            let listed = (c.binding_count(), p.binding_count());
            let in_model = nmr.sim().live_bindings();
            match (listed, in_model) {
                ((1, 1), 1) => {
                    let verified = as_module(Side::Client, || c.call_round(b"fault sweep"));
                    let notified = as_module(Side::Provider, || p.notify_round());
                    let received = c.counts().notifications;
                    if (verified, notified, received) == (1, 1, 1) {
                        Some(Outcome::Bound)
                    } else {
                        problems.push(format!(
                            "bound, but {verified} checksum verified, {notified} notify made, \
                             {received} received (1 each expected)"
                        ));
                        None
                    }
                }
                ((0, 0), 0) if c.counts().declined == 1 => Some(Outcome::Declined),
                _ => {
                    problems.push(format!(
                        "half a binding: the client lists {}, the provider {}, the model has {in_model}",
                        listed.0, listed.1
                    ));
                    None
                }
            }
        }
    };
    // Unload: the client, then the provider.
    if let Ok(c) = &client {
        let status = as_module(Side::Client, || c.unload());
        if status != STATUS_SUCCESS {
            problems.push(format!("the client's unload returned {status:#x}"));
        }
    }
    if let Ok(p) = &provider {
        let status = as_module(Side::Provider, || p.unload());
        if status != STATUS_SUCCESS {
            problems.push(format!("the provider's unload returned {status:#x}"));
        }
    }
    as_module(Side::Client, || drop(client));
    as_module(Side::Provider, || drop(provider));
    nmr.sim().quiesce();
    let sim = nmr.sim();
    for v in sim.violations() {
        problems.push(format!("violation: {v}"));
    }
    if sim.live_bindings() != 0 || sim.live_registrations() != 0 {
        problems.push(format!(
            "the model still has {} binding(s) and {} registration(s)",
            sim.live_bindings(),
            sim.live_registrations()
        ));
    }
    match (outcome, problems.is_empty()) {
        (Some(outcome), true) => Ok(outcome),
        _ => Err(problems.join("; ")),
    }
}

/// Names an allocation site from its call stack: the module function that
/// allocates, and the innermost function of ours with its source line.
fn site_name(trace: &Backtrace) -> String {
    let text = trace.to_string();
    let mut frames: Vec<(String, String)> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let line = line.trim();
        let Some((number, symbol)) = line.split_once(": ") else {
            continue;
        };
        if number.parse::<u32>().is_err() {
            continue;
        }
        let at = lines
            .peek()
            .and_then(|l| l.trim().strip_prefix("at "))
            .map(|l| l.rsplit('/').next().unwrap_or(l).to_owned())
            .unwrap_or_default();
        frames.push((plain(symbol), at));
    }
    let ours = |s: &str| s.starts_with("nmr_") && !s.starts_with("nmr_sim");
    let innermost = frames.iter().find(|(s, _)| ours(s));
    let module = frames
        .iter()
        .find(|(s, _)| s.starts_with("nmr_client_module") || s.starts_with("nmr_provider_module"));
    match (module, innermost) {
        (Some((m, _)), Some((i, at))) if m != i => format!("{m} > {i} ({at})"),
        (_, Some((i, at))) => format!("{i} ({at})"),
        _ => "an unknown place (no symbols)".into(),
    }
}

/// A symbol without generic arguments, closures or hash: `<a::B<T>>::f`
/// becomes `a::B::f`, `a::f::<T>` becomes `a::f`.
fn plain(symbol: &str) -> String {
    let mut out = String::new();
    // For each open `<`: whether it opens generic arguments (dropped whole)
    // rather than a qualified path (kept, without the brackets).
    let mut open: Vec<bool> = Vec::new();
    for c in symbol.chars() {
        let skipping = open.contains(&true);
        match c {
            '<' => {
                let generic = skipping
                    || out
                        .chars()
                        .last()
                        .is_some_and(|p| p.is_alphanumeric() || p == '_' || p == ':');
                open.push(generic);
            }
            '>' => {
                open.pop();
            }
            _ if skipping => {}
            _ => out.push(c),
        }
    }
    let out = out.replace("::::", "::").replace("::{closure#0}", "");
    let out = out.trim_end_matches("::").to_owned();
    match out.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            head.to_owned()
        }
        _ => out,
    }
}
