//! What one NPI call's protection costs, side by side in one run, with one
//! thread and with two threads through the same binding (issue 11):
//!
//! - `floor`: one `fetch_add` and one `fetch_sub` on one shared word, with no
//!   drain check; `floor_call`: the same around the indirect call. The
//!   targets are stated against `floor_call`.
//! - `direct_call`: the indirect call through the dispatch table, unprotected.
//! - `word_rundown`: the single-word rundown nmr-common had before the
//!   per-processor one (CAS acquire, `fetch_sub` release), kept here as the
//!   baseline.
//! - `ex_rundown`: the shape of Windows' `EX_RUNDOWN_REF`: CAS acquire, CAS
//!   release.
//! - `ex_cache_aware`: the shape of Windows' `EX_RUNDOWN_REF_CACHE_AWARE`:
//!   one `EX_RUNDOWN_REF` per processor, each on its own padded line (128 B
//!   per processor per object), CAS acquire and CAS-loop release, both on the
//!   current processor's (a count may go below zero on one processor; the
//!   drain adds them up). It asks the model for the processor as
//!   `percpu_rundown` does.
//! - `percpu_rundown`: nmr-common's `Rundown`: `fetch_add` on the caller's
//!   processor's 8-byte slot in the module's arena, `fetch_sub` on the slot
//!   the guard remembers.
//! - `call_word`, `call_ex`: the whole call path (load the peer's table and
//!   context, acquire, indirect call, release) with each baseline, written as
//!   `Binding::acquire` is; `call_ex_cache_aware` over the cache-aware shape;
//!   `call_percpu`: the real `Binding::acquire` on the model, which asks it
//!   for the current processor (an inline `fs:` read of the rseq `cpu_id`).
//!
//! - `call_percpu_gs`: `call_percpu` over an NMR surface whose
//!   `current_processor` is the images' own: one `gs:[0x1a4]` load (wdm.h's
//!   `KeGetCurrentProcessorIndex`), from a stand-in KPCR that the image host
//!   puts behind `gs` (index 0 for the measuring thread, 1 for the second).
//!   The whole call path as the drivers run it, lookup included.
//! - `percpu_rundown_at_0`: `percpu_rundown` with the processor given (slot
//!   0 always), no lookup: what the slot's CAS and release cost alone. (In
//!   `2_threads/` both threads then share slot 0, on purpose: it shows what
//!   per-processor slots save.)
//!
//! In `2_threads/`, a second thread runs the same operation on the same
//! objects for the whole measurement. Then `drain/`: `begin_drain` and the
//! release of the one call in flight, which reports the drain inline, for 2,
//! 64 and 640 slots. The memory of one binding side is printed first.
//!
//! Run (about 2 minutes): `cargo bench -p testbed --bench rundown -- --warm-up-time 0.5 --measurement-time 2`.

use std::hint::black_box;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use nmr_client_module::client::ProviderBinding;
use nmr_common::arena::SlotArena;
use nmr_common::binding::Binding;
use nmr_common::nmr::Nmr;
use nmr_common::rundown::{Drain, Rundown, RundownGuard, RundownOwner};
use nmr_sim::Sim;

#[repr(C)]
struct Table {
    f: extern "system" fn(u64) -> u64,
}
extern "system" fn work(x: u64) -> u64 {
    x.wrapping_mul(3)
}
static TABLE: Table = Table { f: work };

const DRAINING: usize = 1;
const ONE_CALL: usize = 2;

/// A rundown the call path can use: admit or refuse, then release.
trait Protect: Send + Sync {
    fn acquire(&self) -> bool;
    fn release(&self);
}

/// nmr-common's rundown before issue 11: one word, CAS acquire, `fetch_sub`.
struct WordRundown(AtomicUsize);

impl Protect for WordRundown {
    #[inline(always)]
    fn acquire(&self) -> bool {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            if current & DRAINING != 0 {
                return false;
            }
            match self.0.compare_exchange_weak(
                current,
                current + ONE_CALL,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }
    #[inline(always)]
    fn release(&self) {
        let before = self.0.fetch_sub(ONE_CALL, Ordering::AcqRel);
        black_box(before == ONE_CALL | DRAINING);
    }
}

/// `EX_RUNDOWN_REF`'s shape: CAS acquire, and a CAS loop to release (it must
/// tell a plain count from a pointer to the drain's wait block).
struct ExRundown(AtomicUsize);

impl Protect for ExRundown {
    #[inline(always)]
    fn acquire(&self) -> bool {
        WordRundown::acquire(
            // SAFETY: both are one `AtomicUsize` with the same encoding.
            unsafe { &*ptr::from_ref(self).cast::<WordRundown>() },
        )
    }
    #[inline(always)]
    fn release(&self) {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            if current & DRAINING != 0 {
                // A drain's wait block: the slow path, never taken here.
                self.0.fetch_sub(ONE_CALL, Ordering::AcqRel);
                return;
            }
            match self.0.compare_exchange_weak(
                current,
                current - ONE_CALL,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }
}

/// `EX_RUNDOWN_REF_CACHE_AWARE`'s shape: one `EX_RUNDOWN_REF` per processor,
/// each padded to its own line; acquire and release on the current
/// processor's (the release need not be on the acquiring one's: only the sum
/// over processors matters to its drain).
struct ExCacheAware {
    refs: Box<[CacheLine<ExRundown>]>,
    nmr: Sim,
}

#[repr(C, align(128))]
struct CacheLine<T>(T);

impl ExCacheAware {
    fn new(nmr: Sim) -> Self {
        let refs = (0..nmr.processor_count())
            .map(|_| CacheLine(ExRundown(AtomicUsize::new(0))))
            .collect();
        ExCacheAware { refs, nmr }
    }
    #[inline(always)]
    fn current(&self) -> &ExRundown {
        let p = self.nmr.current_processor() as usize;
        &self.refs[if p < self.refs.len() {
            p
        } else {
            p % self.refs.len()
        }]
        .0
    }
}

impl Protect for ExCacheAware {
    #[inline(always)]
    fn acquire(&self) -> bool {
        self.current().acquire()
    }
    #[inline(always)]
    fn release(&self) {
        // As on Windows, the release looks the processor up again and
        // releases on that processor's count: the same cost. A call that
        // migrated takes Windows' count below zero; `ExRundown`'s encoding
        // wraps instead, which is harmless here (nothing drains this one;
        // only the cost is measured).
        self.current().release();
    }
}

/// An NMR surface that only answers the processor the way the images do:
/// one `gs:[0x1a4]` load from the thread's stand-in KPCR (the image host's).
/// The bench's bindings are never registered, attached or detached.
#[derive(Clone)]
struct GsNmr;

impl Nmr for GsNmr {
    type Lock = <Sim as Nmr>::Lock;

    unsafe fn register_client(
        &self,
        _: *const nmr_common::ffi::NPI_CLIENT_CHARACTERISTICS,
        _: *mut core::ffi::c_void,
        _: *mut nmr_common::ffi::HANDLE,
    ) -> nmr_common::ffi::NTSTATUS {
        unreachable!("the bench registers nothing")
    }
    unsafe fn deregister_client(&self, _: nmr_common::ffi::HANDLE) -> nmr_common::ffi::NTSTATUS {
        unreachable!()
    }
    unsafe fn wait_for_client_deregister_complete(
        &self,
        _: nmr_common::ffi::HANDLE,
    ) -> nmr_common::ffi::NTSTATUS {
        unreachable!()
    }
    unsafe fn client_attach_provider(
        &self,
        _: nmr_common::ffi::HANDLE,
        _: *mut core::ffi::c_void,
        _: *const core::ffi::c_void,
        _: *mut *mut core::ffi::c_void,
        _: *mut *const core::ffi::c_void,
    ) -> nmr_common::ffi::NTSTATUS {
        unreachable!()
    }
    unsafe fn client_detach_provider_complete(&self, _: nmr_common::ffi::HANDLE) {
        unreachable!("the bench detaches nothing")
    }
    unsafe fn register_provider(
        &self,
        _: *const nmr_common::ffi::NPI_PROVIDER_CHARACTERISTICS,
        _: *mut core::ffi::c_void,
        _: *mut nmr_common::ffi::HANDLE,
    ) -> nmr_common::ffi::NTSTATUS {
        unreachable!()
    }
    unsafe fn deregister_provider(&self, _: nmr_common::ffi::HANDLE) -> nmr_common::ffi::NTSTATUS {
        unreachable!()
    }
    unsafe fn wait_for_provider_deregister_complete(
        &self,
        _: nmr_common::ffi::HANDLE,
    ) -> nmr_common::ffi::NTSTATUS {
        unreachable!()
    }
    unsafe fn provider_detach_client_complete(&self, _: nmr_common::ffi::HANDLE) {
        unreachable!()
    }
    fn trace(&self, _: &nmr_common::trace::Record<'_>) {}
    fn delay(&self, _: u32) {
        unreachable!()
    }
    fn processor_count(&self) -> u32 {
        2
    }
    #[inline(always)]
    fn current_processor(&self) -> u32 {
        // SAFETY: every thread that runs the bench's operations has a
        // stand-in KPCR behind `gs` (`stand_in_kpcr_here`, before its first
        // operation).
        unsafe { nmr_common::nmr::kpcr_processor_index() }
    }
}

/// The whole call path of `Binding::acquire`, over a baseline rundown.
struct CallPath<R> {
    dispatch: AtomicPtr<Table>,
    context: AtomicPtr<u8>,
    rundown: R,
}

impl<R: Protect> CallPath<R> {
    fn new(rundown: R) -> Self {
        CallPath {
            dispatch: AtomicPtr::new(ptr::from_ref(&TABLE).cast_mut()),
            context: AtomicPtr::new(ptr::null_mut()),
            rundown,
        }
    }

    #[inline(always)]
    fn call(&self, x: u64) -> Option<u64> {
        let dispatch = self.dispatch.load(Ordering::Acquire);
        if dispatch.is_null() {
            return None;
        }
        black_box(self.context.load(Ordering::Relaxed));
        if !self.rundown.acquire() {
            return None;
        }
        // SAFETY: the table is a static.
        let answer = (unsafe { &*dispatch }.f)(x);
        self.rundown.release();
        Some(answer)
    }
}

/// An owner of nmr-common's per-processor rundown, asking the model (like a
/// binding does) which processor it runs on, or, with `at` set, always
/// using that slot (to tell the lookup's cost from the rundown's).
struct PerCpu {
    rundown: Rundown,
    nmr: Sim,
    at: Option<usize>,
    reports: AtomicUsize,
    /// Dropped after the rundown, whose slot index it lends.
    _arena: SlotArena,
}

impl PerCpu {
    fn new(slots: usize, nmr: Sim) -> Self {
        let arena = SlotArena::new(slots);
        PerCpu {
            rundown: Rundown::try_new(&arena).expect("memory"),
            nmr,
            at: None,
            reports: AtomicUsize::new(0),
            _arena: arena,
        }
    }
}

// SAFETY: `rundown` returns the field of `self`.
unsafe impl RundownOwner for PerCpu {
    fn rundown(&self) -> &Rundown {
        &self.rundown
    }
    #[inline(always)]
    fn current_processor(&self) -> usize {
        match self.at {
            Some(processor) => processor,
            None => self.nmr.current_processor() as usize,
        }
    }
    unsafe fn drained(this: NonNull<Self>) {
        // SAFETY: valid on entry; the benchmark frees owners after their report.
        unsafe { this.as_ref() }
            .reports
            .fetch_add(1, Ordering::Relaxed);
    }
}

struct Fixture {
    floor: AtomicUsize,
    word: WordRundown,
    ex: ExRundown,
    ex_cache_aware: ExCacheAware,
    percpu: PerCpu,
    percpu_at_0: PerCpu,
    call_word: CallPath<WordRundown>,
    call_ex: CallPath<ExRundown>,
    call_ex_cache_aware: CallPath<ExCacheAware>,
    binding: Box<Binding<Sim, Table, ()>>,
    /// The arena of `binding`'s slots: dropped after it.
    _slots: SlotArena,
    binding_gs: Box<Binding<GsNmr, Table, ()>>,
    /// The arena of `binding_gs`'s slots (2 processors): dropped after it.
    _slots_gs: SlotArena,
}

impl Fixture {
    fn new() -> Self {
        let sim = Sim::new(nmr_sim::Config::default());
        let slots = SlotArena::new(sim.processor_count() as usize);
        // SAFETY: never detached (the fixture measures calls only).
        let binding = unsafe {
            Binding::<Sim, Table, ()>::for_client(sim.clone(), &slots, "bench", ptr::null_mut(), ())
        }
        .unwrap_or_else(|_| panic!("memory"));
        // SAFETY: the static table, with a null context it never reads.
        unsafe { binding.publish_peer(ptr::null_mut(), &TABLE) }.expect("published once");
        let slots_gs = SlotArena::new(GsNmr.processor_count() as usize);
        // SAFETY: as above.
        let binding_gs = unsafe {
            Binding::<GsNmr, Table, ()>::for_client(GsNmr, &slots_gs, "bench", ptr::null_mut(), ())
        }
        .unwrap_or_else(|_| panic!("memory"));
        // SAFETY: as above.
        unsafe { binding_gs.publish_peer(ptr::null_mut(), &TABLE) }.expect("published once");
        Fixture {
            floor: AtomicUsize::new(0),
            word: WordRundown(AtomicUsize::new(0)),
            ex: ExRundown(AtomicUsize::new(0)),
            ex_cache_aware: ExCacheAware::new(sim.clone()),
            percpu: PerCpu::new(sim.processor_count() as usize, sim.clone()),
            percpu_at_0: PerCpu {
                at: Some(0),
                ..PerCpu::new(sim.processor_count() as usize, sim.clone())
            },
            call_word: CallPath::new(WordRundown(AtomicUsize::new(0))),
            call_ex: CallPath::new(ExRundown(AtomicUsize::new(0))),
            call_ex_cache_aware: CallPath::new(ExCacheAware::new(sim)),
            binding,
            _slots: slots,
            binding_gs,
            _slots_gs: slots_gs,
        }
    }
}

const OPS: [&str; 14] = [
    "floor",
    "floor_call",
    "direct_call",
    "word_rundown",
    "ex_rundown",
    "ex_cache_aware",
    "percpu_rundown",
    "call_word",
    "call_ex",
    "call_ex_cache_aware",
    "call_percpu",
    "percpu_rundown_at_0",
    "call_percpu_gs",
    "stop",
];
const STOP: usize = 13;

/// One operation; `op` is a constant where it is measured, so each variant
/// compiles to its own straight-line code.
#[inline(always)]
fn run(f: &Fixture, op: usize) {
    match op {
        0 => {
            black_box(f.floor.fetch_add(1, Ordering::AcqRel));
            black_box(f.floor.fetch_sub(1, Ordering::AcqRel));
        }
        1 => {
            black_box(f.floor.fetch_add(1, Ordering::AcqRel));
            black_box((black_box(&TABLE).f)(black_box(7)));
            black_box(f.floor.fetch_sub(1, Ordering::AcqRel));
        }
        2 => {
            black_box((black_box(&TABLE).f)(black_box(7)));
        }
        // A refused acquire (never here: nothing drains) falls to `_`.
        3 if f.word.acquire() => f.word.release(),
        4 if f.ex.acquire() => f.ex.release(),
        5 if f.ex_cache_aware.acquire() => f.ex_cache_aware.release(),
        6 => drop(black_box(RundownGuard::try_acquire(&f.percpu))),
        7 => {
            black_box(f.call_word.call(black_box(7)));
        }
        8 => {
            black_box(f.call_ex.call(black_box(7)));
        }
        9 => {
            black_box(f.call_ex_cache_aware.call(black_box(7)));
        }
        10 => {
            black_box(f.binding.acquire().map(|p| (p.dispatch().f)(black_box(7))));
        }
        11 => drop(black_box(RundownGuard::try_acquire(&f.percpu_at_0))),
        12 => {
            black_box(
                f.binding_gs
                    .acquire()
                    .map(|p| (p.dispatch().f)(black_box(7))),
            );
        }
        _ => {}
    }
}

fn per_call(c: &mut Criterion, threads: usize) {
    let fixture = Arc::new(Fixture::new());
    let mode = Arc::new(AtomicUsize::new(STOP));
    let hammer = (threads == 2).then(|| {
        let (fixture, mode) = (fixture.clone(), mode.clone());
        std::thread::spawn(move || {
            // The second thread is processor 1 to the `gs:` lookup.
            nmr_image_host::stand_in_kpcr_here(1);
            loop {
                let op = mode.load(Ordering::Relaxed);
                if op == usize::MAX {
                    return;
                }
                for _ in 0..256 {
                    run(&fixture, op);
                }
            }
        })
    });
    // Criterion measures on this thread: processor 0 to the `gs:` lookup.
    nmr_image_host::stand_in_kpcr_here(0);
    let mut g = c.benchmark_group(format!("{threads}_threads"));
    macro_rules! bench {
        ($op:literal) => {
            mode.store($op, Ordering::Relaxed);
            g.bench_function(OPS[$op], |b| b.iter(|| run(&fixture, $op)));
        };
    }
    bench!(0);
    bench!(1);
    bench!(2);
    bench!(3);
    bench!(4);
    bench!(5);
    bench!(6);
    bench!(7);
    bench!(8);
    bench!(9);
    bench!(10);
    bench!(11);
    bench!(12);
    g.finish();
    mode.store(usize::MAX, Ordering::Relaxed);
    if let Some(h) = hammer {
        h.join().unwrap();
    }
}

/// `begin_drain` with one call in flight, and that call's release, which
/// reports the drain inline: the detach callback's PENDING path end to end.
fn drain(c: &mut Criterion) {
    let sim = Sim::new(nmr_sim::Config::default());
    let mut g = c.benchmark_group("drain");
    for slots in [2usize, 64, 640] {
        g.bench_function(format!("{slots}_slots"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let owner = PerCpu::new(slots, sim.clone());
                    let held = RundownGuard::try_acquire(&owner).expect("not draining");
                    let began = Instant::now();
                    // SAFETY: the owner lives on this stack; its report
                    // only counts.
                    let drain = unsafe { Rundown::begin_drain(NonNull::from(&owner.rundown)) };
                    drop(held);
                    total += began.elapsed();
                    assert!(matches!(drain, Drain::Pending { in_flight: 1 }));
                    assert_eq!(owner.reports.load(Ordering::Relaxed), 1);
                }
                total
            })
        });
    }
    g.finish();
}

/// The memory of one binding side, for the bench's `Binding` and for the
/// client module's real one, at several processor counts: the struct, its
/// 8-byte slot per processor, and its share of a full chunk's bookkeeping.
fn memory() {
    println!("memory per binding side (struct + per-processor slots in the module's arena):");
    for processors in [1u32, 2, 64, 640] {
        let sim = Sim::new(nmr_sim::Config {
            processors: Some(processors),
            ..nmr_sim::Config::default()
        });
        let slots = SlotArena::new(processors as usize);
        // SAFETY: never detached: measured, then dropped.
        let bench = unsafe {
            Binding::<Sim, Table, ()>::for_client(sim.clone(), &slots, "m", ptr::null_mut(), ())
        }
        .unwrap_or_else(|_| panic!("memory"));
        let per_lease = slots.bytes_per_lease();
        println!(
            "  {processors:>3} processors: {} bytes ({} struct + {} slots) with a full chunk; \
             chunk {} bytes for {} bindings; client module's binding struct {} bytes; \
             EX_RUNDOWN_REF_CACHE_AWARE shape {} bytes",
            size_of::<Binding<Sim, Table, ()>>() + per_lease,
            size_of::<Binding<Sim, Table, ()>>(),
            per_lease,
            slots.chunk_bytes(),
            nmr_common::arena::SLOTS_PER_PAGE,
            size_of::<ProviderBinding<Sim>>(),
            processors as usize * size_of::<CacheLine<ExRundown>>(),
        );
        drop(bench);
    }
}

fn bench(c: &mut Criterion) {
    memory();
    per_call(c, 1);
    per_call(c, 2);
    drain(c);
}

criterion_group!(benches, bench);
criterion_main!(benches);
