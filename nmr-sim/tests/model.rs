//! The model's own promises beyond the scenarios: R6 late comers, the gaps
//! of Microsoft's usersim that this model must not have, the IRQL model, the
//! event log and the worker's lifetime.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use common::*;
use nmr_common::ffi::*;
use nmr_common::nmr::Nmr;
use nmr_common::sync::SpinLock;
use nmr_common::trace::{Event, Record};
use nmr_sim::*;

fn assert_clean(sim: &Sim) {
    sim.quiesce();
    assert_eq!(sim.violations(), vec![]);
    assert_eq!(sim.live_bindings(), 0);
    assert_eq!(sim.live_registrations(), 0);
    let s = sim.stats();
    assert_eq!(s.bindings_made, s.bindings_cleaned_up, "{s:?}");
    assert_eq!(s.client_cleanups, s.bindings_made, "{s:?}");
    assert_eq!(s.provider_cleanups, s.bindings_made, "{s:?}");
}

fn position(sim: &Sim, e: NmrEvent) -> usize {
    sim.nmr_events()
        .iter()
        .position(|(x, _)| *x == e)
        .unwrap_or_else(|| panic!("no {e}"))
}

#[test]
fn r6_peer_deregisters_from_inside_the_attach_callback() {
    for config in Config::all_orders() {
        let inline = config.delivery == Delivery::Inline;
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        p.register();
        let pp = p.clone();
        c.set(|b| {
            b.pre_attach = Some(Arc::new(move |_| {
                pp.deregister();
            }))
        });
        assert_eq!(c.register(), STATUS_SUCCESS);
        if inline {
            // Attached, then detached, all before NmrRegisterClient returned.
            assert!(
                position(&sim, NmrEvent::Attached)
                    < position(&sim, NmrEvent::DetachCalled(Side::Client))
            );
            assert!(
                position(&sim, NmrEvent::CleanedUp)
                    < position(&sim, NmrEvent::Register(Side::Client))
            );
        }
        assert_eq!(p.wait(), STATUS_SUCCESS);
        assert_eq!(c.only_or_none(), 0);
        c.set(|b| b.pre_attach = None);
        assert_eq!(c.unload(), STATUS_SUCCESS);
        assert_eq!(sim.stats().bindings_made, 1);
        assert_clean(&sim);
    }
}

#[test]
fn r6_registering_module_deregisters_itself_inside_its_attach() {
    for config in Config::all_orders() {
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p1 = TestModule::provider(&sim, "p1", NPI_A);
        let p2 = TestModule::provider(&sim, "p2", NPI_A);
        p1.register();
        p2.register();
        // The first offer deregisters the client itself (its handle is
        // already written): that binding attaches then detaches; the second
        // offer is withdrawn.
        let fired = Arc::new(AtomicBool::new(false));
        c.set(|b| {
            b.pre_attach = Some(Arc::new(move |m| {
                if !fired.swap(true, Ordering::SeqCst) {
                    m.deregister();
                }
            }))
        });
        assert_eq!(c.register(), STATUS_SUCCESS);
        assert_eq!(c.wait(), STATUS_SUCCESS);
        assert_eq!(sim.stats().attach_offers, 1);
        assert_eq!(sim.stats().bindings_made, 1);
        assert_eq!(
            sim.nmr_events()
                .iter()
                .filter(|(e, _)| *e == NmrEvent::AttachSkipped)
                .count(),
            1
        );
        p1.unload();
        p2.unload();
        assert_clean(&sim);
    }
}

#[test]
fn r6_deregistration_on_another_thread_while_an_attach_is_held() {
    // usersim's hang: Wait while an attach is in progress. Here the wait
    // blocks until the attach finishes and the late detach cleans up.
    for config in Config::all_orders() {
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        let (gate, ctl) = gate();
        c.set(|b| b.attach_gate = Some(gate));
        p.register();
        let reg = {
            let c = c.clone();
            thread::spawn(move || c.register())
        };
        ctl.wait_entered();
        assert_eq!(p.deregister(), STATUS_PENDING);
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let p = p.clone();
            thread::spawn(move || tx.send(p.wait()).unwrap())
        };
        sim.await_blocked_waiters(1);
        assert!(rx.try_recv().is_err());
        ctl.release();
        assert_eq!(reg.join().unwrap(), STATUS_SUCCESS);
        assert_eq!(rx.recv().unwrap(), STATUS_SUCCESS);
        waiter.join().unwrap();
        let cb = &c.bindings()[0];
        assert_eq!(cb.detach_calls.load(Ordering::SeqCst), 1);
        assert_eq!(cb.cleanup_calls.load(Ordering::SeqCst), 1);
        c.set(|b| b.attach_gate = None);
        c.unload();
        assert_clean(&sim);
    }
}

#[test]
fn cleanup_may_call_back_into_the_nmr() {
    // usersim runs cleanup under its global lock: a cleanup that calls the
    // NMR deadlocks there. Here it deregisters another module from inside.
    for config in Config::all_orders() {
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        let other = TestModule::client(&sim, "other", NPI_B);
        other.register();
        p.register();
        c.register();
        let o = other.clone();
        let seen = Arc::new(AtomicUsize::new(0));
        let seen2 = seen.clone();
        c.set(|b| {
            b.on_cleanup = Some(Arc::new(move |m, _| {
                // (No asserts in callbacks: a panic cannot leave extern "system".)
                let dispatch = usize::from(irql::current() == Irql::Dispatch);
                seen2.store(
                    m.sim.live_bindings() + 100 + 1000 * dispatch,
                    Ordering::SeqCst,
                );
                o.deregister(); // allowed at DISPATCH
            }))
        });
        c.unload();
        assert_eq!(seen.load(Ordering::SeqCst), 1101);
        assert_eq!(other.wait(), STATUS_SUCCESS);
        p.unload();
        assert_clean(&sim);
    }
}

#[test]
fn irql_of_each_callback() {
    for detach_at_dispatch in [true, false] {
        let sim = Sim::new(Config {
            detach_at_dispatch,
            ..Config::default()
        });
        let levels = Arc::new(Mutex::new(Vec::new()));
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        let l = levels.clone();
        c.set(|b| {
            b.pre_attach = Some(Arc::new(move |_| {
                l.lock().unwrap().push(("attach", irql::current()))
            }))
        });
        let l = levels.clone();
        c.set(|b| {
            b.on_detach = Some(Arc::new(move |_, _| {
                l.lock().unwrap().push(("detach", irql::current()))
            }))
        });
        let l = levels.clone();
        c.set(|b| {
            b.on_cleanup = Some(Arc::new(move |_, _| {
                l.lock().unwrap().push(("cleanup", irql::current()))
            }))
        });
        p.register();
        c.register();
        c.unload();
        p.unload();
        let detach = if detach_at_dispatch {
            Irql::Dispatch
        } else {
            Irql::Passive
        };
        assert_eq!(
            *levels.lock().unwrap(),
            [
                ("attach", Irql::Passive),
                ("detach", detach),
                ("cleanup", Irql::Dispatch)
            ]
        );
        assert_eq!(irql::current(), Irql::Passive);
        assert_clean(&sim);
    }
}

#[test]
fn sim_lock_raises_and_restores_the_irql() {
    let lock = Arc::new(SpinLock::<SimLock, u64>::new(0));
    assert_eq!(irql::current(), Irql::Passive);
    lock.with(|g| {
        assert_eq!(irql::current(), Irql::Dispatch);
        *g += 1;
        let inner = SpinLock::<SimLock, ()>::new(());
        inner.with(|()| assert_eq!(irql::current(), Irql::Dispatch));
        assert_eq!(irql::current(), Irql::Dispatch);
    });
    assert_eq!(irql::current(), Irql::Passive);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let lock = lock.clone();
            thread::spawn(move || {
                for _ in 0..5000 {
                    lock.with(|n| *n += 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(lock.with(|n| *n), 20_001);
}

#[test]
fn module_trace_lines_join_the_log_in_order() {
    let sim = Sim::new(Config::default());
    let c = TestModule::client(&sim, "c", NPI_A);
    c.register();
    sim.trace(&Record {
        module: "nmr_client",
        binding: Some(0x1f30),
        event: Event::DetachPending,
        status: STATUS_PENDING,
        detail: Some(format_args!("in-flight={}", 2)),
    });
    c.unload();
    let lines: Vec<String> = sim.events().iter().map(|e| e.to_string()).collect();
    assert_eq!(
        lines,
        [
            format!(
                "nmr: c: register-client binding={:#x} status=STATUS_SUCCESS",
                c.handle() as usize
            ),
            "nmr_client: detach-pending binding=0x1f30 status=STATUS_PENDING in-flight=2"
                .to_string(),
            format!(
                "nmr: c: deregister-client binding={:#x} status=STATUS_PENDING",
                c.handle() as usize
            ),
            format!(
                "nmr: c: wait-client-done binding={:#x} status=STATUS_SUCCESS",
                c.handle() as usize
            ),
        ]
    );
    let module = &sim.events()[1];
    assert_eq!(module.module_event(), Some(Event::DetachPending));
    assert_eq!(module.binding(), Some(0x1f30));
    assert_eq!(module.status(), STATUS_PENDING);
    assert_eq!(sim.take_events().len(), 4);
    assert!(sim.events().is_empty());
}

#[test]
fn unnamed_modules_are_named_by_their_guid() {
    let sim = Sim::new(Config::default());
    let c = TestModule::client(&sim, "ignored", NPI_A);
    // A fresh model has no name for the module id.
    let other = Sim::new(Config::default());
    let chars = c.client_chars();
    let mut h: HANDLE = std::ptr::null_mut();
    // SAFETY: the characteristics point into `c`, alive for the whole test.
    let st = unsafe { other.register_client(&chars, std::ptr::null_mut(), &mut h) };
    assert_eq!(st, STATUS_SUCCESS);
    let LogEntry::Nmr { module, .. } = &other.events()[0] else {
        panic!()
    };
    assert!(module.starts_with("7e570000-0000-4000-8000-"), "{module}");
    // SAFETY: the handle came from register_client.
    unsafe {
        assert_eq!(other.deregister_client(h), STATUS_PENDING);
        assert_eq!(other.wait_for_client_deregister_complete(h), STATUS_SUCCESS);
    }
}

#[test]
fn delay_sleeps_at_passive() {
    let sim = Sim::new(Config::default());
    let t = std::time::Instant::now();
    sim.delay(1000);
    assert!(t.elapsed() >= std::time::Duration::from_micros(1000));
    assert!(sim.violations().is_empty());
}

#[test]
fn stats_count_each_kind() {
    let sim = Sim::new(Config::default());
    let c = TestModule::client(&sim, "c", NPI_A);
    let p = TestModule::provider(&sim, "p", NPI_A);
    c.set(|b| b.reply = Reply::Pending);
    p.register();
    c.register();
    let cb = c.only();
    c.deregister();
    cb.complete();
    c.wait();
    p.unload();
    let s = sim.stats();
    assert_eq!(
        s,
        Stats {
            registrations: 2,
            deregistrations: 2,
            attach_offers: 1,
            attaches: 1,
            attach_declines: 0,
            bindings_made: 1,
            client_detach_success: 0,
            client_detach_pending: 1,
            provider_detach_success: 1,
            provider_detach_pending: 0,
            client_completes: 1,
            provider_completes: 0,
            client_cleanups: 1,
            provider_cleanups: 1,
            bindings_cleaned_up: 1,
            waits: 2,
            incoming_calls: 0,
            violations: 0,
        }
    );
    assert!(sim.bindings().is_empty());
}

#[test]
fn bindings_describe_the_live_ones() {
    let sim = Sim::new(Config::default());
    let c = TestModule::client(&sim, "c", NPI_A);
    let p = TestModule::provider(&sim, "p", NPI_A);
    p.register();
    c.register();
    assert_eq!(
        sim.bindings(),
        [BindingInfo {
            client_handle: c.only().handle,
            provider_handle: p.only().handle,
            client: "c".into(),
            provider: "p".into(),
            phase: "attached",
        }]
    );
    c.unload();
    p.unload();
}

trait OnlyOrNone {
    fn only_or_none(&self) -> usize;
}
impl OnlyOrNone for TestModule {
    fn only_or_none(&self) -> usize {
        self.live().len()
    }
}
