//! The per-call cost of the rundown, side by side with its floor and with
//! what a driver would otherwise use to keep a peer alive during a call.
//!
//! - `floor`: one `fetch_add` and one `fetch_sub` (no drain check at all);
//! - `rundown`: `RundownGuard::try_acquire` + drop (CAS + fetch_sub);
//! - `binding_call`: the full NPI call path, `Binding::call` with an
//!   indirect call through the peer's dispatch table, against `direct_call`
//!   (the same indirect call with no protection);
//! - `arc_clone`: an `Arc` clone and drop (reference counting);
//! - `spinlock`: a counter under a spin lock (lock, inc, unlock; lock, dec, unlock);
//! - `mutex`: the same under `std::sync::Mutex`.
//!
//! Each also runs with a second thread hammering the same word (`contended/`).

use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use criterion::{Criterion, criterion_group, criterion_main};
use nmr_common::binding::Binding;
use nmr_common::rundown::{Rundown, RundownGuard, RundownOwner};
use nmr_common::sync::{FlagLock, SpinLock};
use nmr_sim::Sim;

struct Owner(Rundown);
// SAFETY: `rundown` returns the field of `self`.
unsafe impl RundownOwner for Owner {
    fn rundown(&self) -> &Rundown {
        &self.0
    }
    unsafe fn drained(_: NonNull<Self>) {}
}

#[repr(C)]
struct Table {
    f: extern "system" fn(u64) -> u64,
}
extern "system" fn work(x: u64) -> u64 {
    x.wrapping_mul(3)
}
static TABLE: Table = Table { f: work };

fn variants(c: &mut Criterion, group: &str, contend: bool) {
    let owner = Arc::new(Owner(Rundown::new()));
    let floor = Arc::new(AtomicUsize::new(0));
    let arc = Arc::new(0u64);
    let spin = Arc::new(SpinLock::<FlagLock, usize>::new(0));
    let mutex = Arc::new(Mutex::new(0usize));
    let sim = Sim::new(nmr_sim::Config::default());
    let binding = Binding::<Sim, Table, ()>::for_client(sim, "bench", std::ptr::null_mut(), ())
        .ok()
        .unwrap();
    binding.publish_peer(std::ptr::null_mut(), &TABLE);
    let binding = Arc::new(binding);

    let stop = Arc::new(AtomicBool::new(false));
    let hammer = contend.then(|| {
        let (owner, floor, arc, spin, mutex, binding, stop) = (
            owner.clone(),
            floor.clone(),
            arc.clone(),
            spin.clone(),
            mutex.clone(),
            binding.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                drop(RundownGuard::try_acquire(&*owner));
                floor.fetch_add(1, Ordering::AcqRel);
                floor.fetch_sub(1, Ordering::AcqRel);
                drop(arc.clone());
                *spin.lock() += 1;
                *mutex.lock().unwrap() += 1;
                if let Some(p) = binding.acquire() {
                    (p.dispatch().f)(1);
                }
            }
        })
    });

    let mut g = c.benchmark_group(group);
    g.bench_function("floor", |b| {
        b.iter(|| {
            black_box(floor.fetch_add(1, Ordering::AcqRel));
            black_box(floor.fetch_sub(1, Ordering::AcqRel));
        })
    });
    g.bench_function("rundown", |b| {
        b.iter(|| drop(black_box(RundownGuard::try_acquire(&*owner))))
    });
    g.bench_function("direct_call", |b| {
        b.iter(|| black_box((black_box(&TABLE).f)(black_box(7))))
    });
    g.bench_function("binding_call", |b| {
        b.iter(|| black_box(binding.acquire().map(|p| (p.dispatch().f)(black_box(7)))))
    });
    g.bench_function("arc_clone", |b| b.iter(|| drop(black_box(arc.clone()))));
    g.bench_function("spinlock", |b| {
        b.iter(|| {
            *spin.lock() += 1;
            *spin.lock() -= 1;
        })
    });
    g.bench_function("mutex", |b| {
        b.iter(|| {
            *mutex.lock().unwrap() += 1;
            *mutex.lock().unwrap() -= 1;
        })
    });
    g.finish();
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = hammer {
        h.join().unwrap();
    }
}

fn bench(c: &mut Criterion) {
    variants(c, "uncontended", false);
    variants(c, "contended", true);
}

criterion_group!(benches, bench);
criterion_main!(benches);
