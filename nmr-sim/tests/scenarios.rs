//! docs/nmr-contract.md, "Scenarios": 1-17, each in every detach order and both
//! delivery modes (`Config::all_orders()`), against small test modules.
//! Ordering comes from the model's knobs, gates and its event log; no sleeps.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;

use common::*;
use nmr_common::ffi::*;
use nmr_sim::*;

/// Every configuration, with a label for failure messages.
fn configs() -> Vec<Config> {
    Config::all_orders()
}

/// No violation, nothing left: the end of every conforming run.
fn assert_clean(sim: &Sim) {
    sim.quiesce();
    assert_eq!(sim.violations(), vec![], "{:?}", sim.config());
    assert_eq!(sim.live_bindings(), 0, "{:?}", sim.config());
    assert_eq!(sim.live_registrations(), 0, "{:?}", sim.config());
    let s = sim.stats();
    assert_eq!(s.bindings_made, s.bindings_cleaned_up, "{s:?}");
    assert_eq!(
        s.client_detach_success + s.client_detach_pending,
        s.bindings_made,
        "{s:?}"
    );
    assert_eq!(
        s.provider_detach_success + s.provider_detach_pending,
        s.bindings_made,
        "{s:?}"
    );
    assert_eq!(s.client_completes, s.client_detach_pending, "{s:?}");
    assert_eq!(s.provider_completes, s.provider_detach_pending, "{s:?}");
    assert_eq!(s.client_cleanups, s.bindings_made, "{s:?}");
    assert_eq!(s.provider_cleanups, s.bindings_made, "{s:?}");
    assert_eq!(s.registrations, s.waits, "{s:?}");
}

/// Index of the first model event `e` (with `binding`, if given).
fn pos(sim: &Sim, e: NmrEvent, binding: Option<usize>) -> usize {
    sim.nmr_events()
        .iter()
        .position(|(ev, b)| *ev == e && (binding.is_none() || *b == binding))
        .unwrap_or_else(|| panic!("no {e} for {binding:x?} in {:#?}", sim.nmr_events()))
}

fn count(sim: &Sim, e: NmrEvent) -> usize {
    sim.nmr_events().iter().filter(|(ev, _)| *ev == e).count()
}

/// Each side of each binding a module made saw one detach and one cleanup.
fn assert_once_each(m: &TestModule) {
    for b in m.bindings() {
        assert_eq!(
            b.detach_calls.load(Ordering::SeqCst),
            1,
            "{} detach",
            m.name
        );
        assert_eq!(
            b.cleanup_calls.load(Ordering::SeqCst),
            1,
            "{} cleanup",
            m.name
        );
        assert_eq!(b.calls_after_cleanup.load(Ordering::SeqCst), 0);
    }
}

fn assert_bound(c: &TestModule, p: &TestModule) {
    let cb = c.only();
    let pb = p.only();
    assert_eq!(cb.peer_context(), Arc::as_ptr(&pb) as usize);
    assert_eq!(cb.peer_dispatch(), &PROVIDER_DISPATCH as *const _ as usize);
    assert_eq!(pb.peer_context(), Arc::as_ptr(&cb) as usize);
    assert_eq!(pb.peer_dispatch(), &CLIENT_DISPATCH as *const _ as usize);
    // And each can call the other.
    let call = cb.begin_call().expect("client can call");
    cb.end_call(call);
    let call = pb.begin_call().expect("provider can call");
    pb.end_call(call);
    assert_eq!(pb.calls_received.load(Ordering::SeqCst), 1);
    assert_eq!(cb.calls_received.load(Ordering::SeqCst), 1);
}

#[test]
fn s01_client_then_provider_attaches_inside_register_provider() {
    for config in configs() {
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        assert_eq!(c.register(), STATUS_SUCCESS);
        assert!(c.seen().is_empty());
        assert_eq!(p.register(), STATUS_SUCCESS);
        // Attached before NmrRegisterProvider returned.
        assert_bound(&c, &p);
        let cb = c.only().handle;
        assert!(
            pos(&sim, NmrEvent::Attached, Some(cb))
                < pos(&sim, NmrEvent::Register(Side::Provider), None)
        );
        // R5: each side has its own handle.
        assert_ne!(c.only().handle, p.only().handle);
        assert_eq!(c.unload(), STATUS_SUCCESS);
        assert_eq!(p.unload(), STATUS_SUCCESS);
        assert_once_each(&c);
        assert_once_each(&p);
        assert_clean(&sim);
    }
}

#[test]
fn s02_provider_then_client_attaches_inside_register_client() {
    for config in configs() {
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        assert_eq!(p.register(), STATUS_SUCCESS);
        assert!(p.seen().is_empty());
        assert_eq!(c.register(), STATUS_SUCCESS);
        assert_bound(&c, &p);
        assert!(
            pos(&sim, NmrEvent::Attached, None) < pos(&sim, NmrEvent::Register(Side::Client), None)
        );
        assert_eq!(p.unload(), STATUS_SUCCESS);
        assert_eq!(c.unload(), STATUS_SUCCESS);
        assert_once_each(&c);
        assert_once_each(&p);
        assert_clean(&sim);
    }
}

#[test]
fn s03_different_npi_ids_no_callback() {
    for config in configs() {
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_B);
        assert_eq!(c.register(), STATUS_SUCCESS);
        assert_eq!(p.register(), STATUS_SUCCESS);
        assert_eq!(c.unload(), STATUS_SUCCESS);
        assert_eq!(p.unload(), STATUS_SUCCESS);
        assert!(c.seen().is_empty());
        assert!(p.seen().is_empty());
        assert_eq!(sim.stats().attach_offers, 0);
        assert_clean(&sim);
    }
}

#[test]
fn s04_client_declines_no_provider_attach_no_detach_no_cleanup() {
    for config in configs() {
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        c.set(|b| b.decline = true);
        assert_eq!(p.register(), STATUS_SUCCESS);
        assert_eq!(c.register(), STATUS_SUCCESS);
        assert_eq!(sim.live_bindings(), 0);
        assert_eq!(p.unload(), STATUS_SUCCESS);
        assert_eq!(c.unload(), STATUS_SUCCESS);
        assert!(p.seen().is_empty(), "{:?}", p.seen());
        let h = match c.seen()[0] {
            Cb::AttachOffered(h) => h,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            c.seen(),
            vec![Cb::AttachOffered(h), Cb::Declined(h, STATUS_NOINTERFACE)]
        );
        let s = sim.stats();
        assert_eq!((s.attach_offers, s.attaches, s.attach_declines), (1, 0, 1));
        assert_eq!(count(&sim, NmrEvent::ProviderAttachOffered), 0);
        assert_clean(&sim);
    }
}

#[test]
fn s05_provider_declines_noninterface_reaches_client_no_cleanup() {
    for config in configs() {
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        p.set(|b| b.decline = true);
        assert_eq!(c.register(), STATUS_SUCCESS);
        assert_eq!(p.register(), STATUS_SUCCESS);
        // The client saw NOINTERFACE from NmrClientAttachProvider and freed
        // its context (the test module drops its Arc; nothing kept it).
        assert!(matches!(c.seen()[1], Cb::Declined(_, STATUS_NOINTERFACE)));
        assert!(c.bindings().is_empty());
        assert_eq!(c.unload(), STATUS_SUCCESS);
        assert_eq!(p.unload(), STATUS_SUCCESS);
        assert_eq!(c.count(|e| matches!(e, Cb::Detach(..) | Cb::Cleanup(_))), 0);
        assert_eq!(p.count(|e| matches!(e, Cb::Detach(..) | Cb::Cleanup(_))), 0);
        assert_eq!(count(&sim, NmrEvent::DetachCalled(Side::Client)), 0);
        assert_eq!(sim.stats().attach_declines, 1);
        assert_clean(&sim);
    }
}

#[test]
fn s06_three_clients_two_providers_six_bindings_distinct_handles() {
    for config in configs() {
        let sim = Sim::new(config);
        let clients: Vec<_> = ["c1", "c2", "c3"]
            .into_iter()
            .map(|n| TestModule::client(&sim, n, NPI_A))
            .collect();
        let providers: Vec<_> = ["p1", "p2"]
            .into_iter()
            .map(|n| TestModule::provider(&sim, n, NPI_A))
            .collect();
        // Interleave the registrations.
        assert_eq!(clients[0].register(), 0);
        assert_eq!(providers[0].register(), 0);
        assert_eq!(clients[1].register(), 0);
        assert_eq!(providers[1].register(), 0);
        assert_eq!(clients[2].register(), 0);
        assert_eq!(sim.live_bindings(), 6);
        let mut handles: Vec<usize> = Vec::new();
        for c in &clients {
            assert_eq!(c.live().len(), 2);
            handles.extend(c.live().iter().map(|b| b.handle));
        }
        for p in &providers {
            assert_eq!(p.live().len(), 3);
            handles.extend(p.live().iter().map(|b| b.handle));
        }
        let regs: Vec<usize> = clients
            .iter()
            .chain(&providers)
            .map(|m| m.handle() as usize)
            .collect();
        handles.extend(&regs);
        let n = handles.len();
        handles.sort();
        handles.dedup();
        assert_eq!(handles.len(), n, "handles are distinct");
        assert_eq!(n, 12 + 5);
        assert!(!handles.contains(&0));
        for p in &providers {
            assert_eq!(p.unload(), 0);
        }
        for c in &clients {
            assert_eq!(c.unload(), 0);
        }
        for m in clients.iter().chain(&providers) {
            assert_once_each(m);
        }
        assert_eq!(sim.stats().bindings_cleaned_up, 6);
        assert_clean(&sim);
    }
}

#[test]
fn s07_client_of_a_and_provider_of_b_are_independent() {
    for config in configs() {
        let sim = Sim::new(config);
        let id = GUID::from_u128(0x7000_0000_0000_4000_8000_0000_0000_0007);
        let m_client_a = TestModule::new(&sim, "m", NPI_A, Side::Client, Some(id));
        let m_provider_b = TestModule::new(&sim, "m", NPI_B, Side::Provider, Some(id));
        let pa = TestModule::provider(&sim, "pa", NPI_A);
        let cb = TestModule::client(&sim, "cb", NPI_B);
        for m in [&m_client_a, &m_provider_b, &pa, &cb] {
            assert_eq!(m.register(), 0);
        }
        assert_eq!(sim.live_bindings(), 2);
        assert_bound(&m_client_a, &pa);
        assert_bound(&cb, &m_provider_b);
        // Deregistering the client-of-A role leaves the provider-of-B binding alone.
        assert_eq!(m_client_a.unload(), 0);
        sim.quiesce();
        assert_eq!(sim.live_bindings(), 1);
        assert!(!m_provider_b.only().detaching());
        let call = cb.only().begin_call().expect("B still bound");
        cb.only().end_call(call);
        for m in [&m_provider_b, &pa, &cb] {
            assert_eq!(m.unload(), 0);
        }
        assert_clean(&sim);
    }
}

#[test]
fn s08_client_deregisters_nothing_in_flight() {
    for config in configs() {
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        assert_eq!(p.register(), 0);
        assert_eq!(c.register(), 0);
        let (ch, ph) = (c.only().handle, p.only().handle);
        assert_eq!(c.deregister(), STATUS_PENDING);
        assert_eq!(c.wait(), STATUS_SUCCESS);
        assert_eq!(c.seen()[2..], [Cb::Detach(ch, 0), Cb::Cleanup(ch)]);
        assert_eq!(p.seen()[2..], [Cb::Detach(ph, 0), Cb::Cleanup(ph)]);
        // Both detaches returned before either cleanup; the client's cleanup
        // runs first; the wait returns after the binding is gone.
        let cleanup = pos(&sim, NmrEvent::Cleanup(Side::Client), Some(ch));
        assert!(pos(&sim, NmrEvent::DetachReturned(Side::Client), Some(ch)) < cleanup);
        assert!(pos(&sim, NmrEvent::DetachReturned(Side::Provider), Some(ph)) < cleanup);
        assert!(cleanup < pos(&sim, NmrEvent::Cleanup(Side::Provider), Some(ph)));
        assert!(
            pos(&sim, NmrEvent::CleanedUp, Some(ch))
                < pos(&sim, NmrEvent::WaitDone(Side::Client), None)
        );
        // The provider stays registered, unbound.
        assert_eq!(sim.live_registrations(), 1);
        assert_eq!(p.unload(), STATUS_SUCCESS);
        assert_once_each(&c);
        assert_once_each(&p);
        assert_clean(&sim);
    }
}

#[test]
fn s08_detach_order_follows_the_knob() {
    for config in configs() {
        let (order, delivery) = (config.detach_order, config.delivery);
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        p.register();
        c.register();
        c.unload();
        let client_first = pos(&sim, NmrEvent::DetachCalled(Side::Client), None)
            < pos(&sim, NmrEvent::DetachCalled(Side::Provider), None);
        // With Delivery::Parallel the two callbacks run at once: no order.
        match (order, delivery) {
            (_, Delivery::Parallel) | (DetachOrder::Random, _) => {}
            (DetachOrder::ClientFirst, _) => assert!(client_first),
            (DetachOrder::ProviderFirst, _) => assert!(!client_first),
        }
        p.unload();
        assert_clean(&sim);
    }
    // Random really varies with the seed.
    let mut firsts = std::collections::HashSet::new();
    for seed in 0..16 {
        let sim = Sim::new(Config {
            detach_order: DetachOrder::Random,
            seed,
            ..Config::default()
        });
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        p.register();
        c.register();
        c.unload();
        firsts.insert(
            pos(&sim, NmrEvent::DetachCalled(Side::Client), None)
                < pos(&sim, NmrEvent::DetachCalled(Side::Provider), None),
        );
        p.unload();
    }
    assert_eq!(firsts.len(), 2);
}

#[test]
fn s09_deregister_with_no_binding_wait_returns_at_once() {
    for config in configs() {
        let sim = Sim::new(config);
        for m in [
            TestModule::client(&sim, "c", NPI_A),
            TestModule::provider(&sim, "p", NPI_B),
        ] {
            assert_eq!(m.register(), 0);
            assert_eq!(m.deregister(), STATUS_PENDING);
            assert_eq!(m.wait(), STATUS_SUCCESS);
        }
        assert_eq!(count(&sim, NmrEvent::DetachCalled(Side::Client)), 0);
        assert_clean(&sim);
    }
}

/// Scenarios 10 and 11: `caller` has a call in flight into `callee` when the
/// callee deregisters.
fn call_in_flight_when_peer_deregisters(caller_side: Side) {
    for config in configs() {
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        p.register();
        c.register();
        let (caller, callee) = match caller_side {
            Side::Client => (c.clone(), p.clone()),
            Side::Provider => (p.clone(), c.clone()),
        };
        let cb = caller.only();
        let call = cb.begin_call().expect("bound");
        assert_eq!(callee.deregister(), STATUS_PENDING);
        sim.quiesce();
        // The caller's detach answered PENDING; the callee's SUCCESS.
        assert_eq!(
            caller.count(|e| *e == Cb::Detach(cb.handle, STATUS_PENDING)),
            1
        );
        assert_eq!(
            callee.count(|e| matches!(e, Cb::Detach(_, STATUS_SUCCESS))),
            1
        );
        // The callee's wait holds.
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let callee = callee.clone();
            thread::spawn(move || tx.send(callee.wait()).unwrap())
        };
        sim.await_blocked_waiters(1);
        assert!(
            rx.try_recv().is_err(),
            "wait returned with a call in flight"
        );
        assert_eq!(sim.live_bindings(), 1);
        assert_eq!(
            sim.stats().client_cleanups + sim.stats().provider_cleanups,
            0
        );
        // New calls are refused meanwhile.
        assert!(cb.begin_call().is_none());
        // The call returns: the caller completes, cleanup runs, the wait returns.
        cb.end_call(call);
        assert_eq!(rx.recv().unwrap(), STATUS_SUCCESS);
        waiter.join().unwrap();
        let complete = pos(&sim, NmrEvent::Complete(caller_side), Some(cb.handle));
        assert!(complete < pos(&sim, NmrEvent::Cleanup(Side::Client), None));
        assert_eq!(caller.unload(), STATUS_SUCCESS);
        assert_once_each(&c);
        assert_once_each(&p);
        assert_clean(&sim);
    }
}

#[test]
fn s10_client_call_in_flight_when_provider_deregisters() {
    call_in_flight_when_peer_deregisters(Side::Client);
}

#[test]
fn s11_provider_notification_in_flight_when_client_deregisters() {
    call_in_flight_when_peer_deregisters(Side::Provider);
}

#[test]
fn s12_both_pending_completions_in_either_order() {
    for config in configs() {
        for first in [Side::Client, Side::Provider] {
            let sim = Sim::new(config.clone());
            let c = TestModule::client(&sim, "c", NPI_A);
            let p = TestModule::provider(&sim, "p", NPI_A);
            c.set(|b| b.reply = Reply::Pending);
            p.set(|b| b.reply = Reply::Pending);
            p.register();
            c.register();
            let (cb, pb) = (c.only(), p.only());
            assert_eq!(c.deregister(), STATUS_PENDING);
            sim.quiesce();
            assert_eq!(sim.stats().client_detach_pending, 1);
            assert_eq!(sim.stats().provider_detach_pending, 1);
            let (one, two) = match first {
                Side::Client => (&cb, &pb),
                Side::Provider => (&pb, &cb),
            };
            one.complete();
            assert_eq!(
                sim.stats().client_cleanups + sim.stats().provider_cleanups,
                0
            );
            assert_eq!(sim.live_bindings(), 1);
            two.complete();
            // Inside the later completion: done by the time it returned.
            assert_eq!(sim.stats().client_cleanups, 1);
            assert_eq!(sim.stats().provider_cleanups, 1);
            assert!(
                pos(&sim, NmrEvent::Complete(first.other()), None)
                    < pos(&sim, NmrEvent::Cleanup(Side::Client), None)
            );
            assert_eq!(c.wait(), STATUS_SUCCESS);
            assert_eq!(p.unload(), STATUS_SUCCESS);
            assert_once_each(&c);
            assert_once_each(&p);
            assert_clean(&sim);
        }
    }
}

#[test]
fn s12_complete_before_the_detach_callback_returns() {
    // R8: the last call can drain on another processor before the detach
    // callback returns PENDING. Here the detach callback itself completes
    // first, and, with a gate, a completion arrives from another thread.
    for config in configs() {
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        c.set(|b| {
            b.reply = Reply::Pending;
            b.on_detach = Some(Arc::new(|_, b| b.complete()));
        });
        let (gate, ctl) = gate();
        p.set(|b| {
            b.reply = Reply::Pending;
            b.detach_gate = Some(gate);
        });
        p.register();
        c.register();
        let pb = p.only();
        let deregister = {
            let c = c.clone();
            thread::spawn(move || c.deregister())
        };
        ctl.wait_entered();
        // The provider's detach callback is running (held at the gate).
        pb.complete();
        assert_eq!(sim.live_bindings(), 1);
        ctl.release();
        assert_eq!(deregister.join().unwrap(), STATUS_PENDING);
        assert_eq!(c.wait(), STATUS_SUCCESS);
        let ev = sim.nmr_events();
        let i = |e| ev.iter().position(|(x, _)| *x == e).unwrap();
        assert!(
            i(NmrEvent::Complete(Side::Provider)) < i(NmrEvent::DetachReturned(Side::Provider))
        );
        assert!(i(NmrEvent::Complete(Side::Client)) < i(NmrEvent::DetachReturned(Side::Client)));
        assert_eq!(p.unload(), STATUS_SUCCESS);
        assert_once_each(&c);
        assert_once_each(&p);
        assert_clean(&sim);
    }
}

#[test]
fn s13_both_modules_deregister_at_the_same_time() {
    for config in configs() {
        // Racing threads, two clients and two providers (four bindings).
        for _ in 0..20 {
            let sim = Sim::new(config.clone());
            let c = [
                TestModule::client(&sim, "c1", NPI_A),
                TestModule::client(&sim, "c2", NPI_A),
            ];
            let p = [
                TestModule::provider(&sim, "p1", NPI_A),
                TestModule::provider(&sim, "p2", NPI_A),
            ];
            for m in c.iter().chain(&p) {
                m.register();
            }
            assert_eq!(sim.live_bindings(), 4);
            let barrier = Arc::new(Barrier::new(2));
            let run = |m: Arc<TestModule>, barrier: Arc<Barrier>| {
                thread::spawn(move || {
                    barrier.wait();
                    m.unload()
                })
            };
            let a = run(c[0].clone(), barrier.clone());
            let b = run(p[0].clone(), barrier);
            assert_eq!(a.join().unwrap(), STATUS_SUCCESS);
            assert_eq!(b.join().unwrap(), STATUS_SUCCESS);
            for m in [&c[1], &p[1]] {
                assert_eq!(m.unload(), STATUS_SUCCESS);
            }
            for m in c.iter().chain(&p) {
                assert_once_each(m);
            }
            assert_clean(&sim);
        }
        // Deterministic: the second deregistration arrives while the
        // binding is still detaching (both PENDING).
        let sim = Sim::new(config.clone());
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        c.set(|b| b.reply = Reply::Pending);
        p.set(|b| b.reply = Reply::Pending);
        p.register();
        c.register();
        assert_eq!(c.deregister(), STATUS_PENDING);
        assert_eq!(p.deregister(), STATUS_PENDING);
        sim.quiesce();
        c.only().complete();
        p.only().complete();
        assert_eq!(p.wait(), STATUS_SUCCESS);
        assert_eq!(c.wait(), STATUS_SUCCESS);
        assert_once_each(&c);
        assert_once_each(&p);
        assert_clean(&sim);
    }
}

#[test]
fn s14_call_after_detach_began_is_a_violation() {
    for config in configs() {
        let config = config.recording();
        // (a) after the caller's detach returned SUCCESS.
        let sim = Sim::new(config.clone());
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        p.set(|b| b.reply = Reply::Pending); // keeps the binding alive
        p.register();
        c.register();
        let (cb, pb) = (c.only(), p.only());
        c.deregister();
        sim.quiesce();
        assert!(sim.violations().is_empty());
        cb.call_peer();
        assert_eq!(
            sim.violations(),
            vec![Violation::CallAfterDetach {
                caller: "c".into(),
                callee: "p".into(),
                binding: pb.handle,
            }]
        );
        pb.complete();
        assert_eq!(c.wait(), STATUS_SUCCESS);
        p.unload();

        // (b) from inside the caller's own detach callback.
        let sim = Sim::new(config.clone());
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        p.set(|b| b.on_detach = Some(Arc::new(|_, b| b.call_peer())));
        c.register();
        p.register();
        let cb = c.only();
        p.unload();
        assert_eq!(
            sim.violations(),
            vec![Violation::CallAfterDetach {
                caller: "p".into(),
                callee: "c".into(),
                binding: cb.handle,
            }]
        );
        c.unload();

        // (c) after PENDING and the completion.
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        c.set(|b| b.reply = Reply::Pending);
        p.set(|b| b.reply = Reply::Pending);
        c.register();
        p.register();
        let (cb, pb) = (c.only(), p.only());
        p.deregister();
        sim.quiesce();
        pb.complete();
        assert!(sim.violations().is_empty());
        pb.call_peer();
        assert!(matches!(
            sim.violations()[..],
            [Violation::CallAfterDetach { ref caller, .. }] if caller == "p"
        ));
        cb.complete();
        assert_eq!(p.wait(), STATUS_SUCCESS);
        c.unload();
        // After cleanup, the stale handle is reported too.
        cb.call_peer();
        assert!(matches!(
            sim.violations().last(),
            Some(Violation::StaleHandle { .. })
        ));
    }
}

#[test]
fn s15_misuse_is_named_and_the_model_survives() {
    // Every R12 misuse in a row on one model (each is also its own test in
    // tests/misuse.rs); afterwards the model still does a clean cycle.
    for config in configs() {
        let sim = Sim::new(config.recording());
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        c.set(|b| b.reply = Reply::Pending);
        p.set(|b| b.reply = Reply::Pending);
        p.register();
        c.register();
        let (cb, pb) = (c.only(), p.only());
        // Complete before detach; NmrClientAttachProvider outside attach.
        cb.complete();
        let mut slot = std::ptr::null_mut();
        let mut disp = std::ptr::null();
        // SAFETY: misuse on purpose; the model validates the handle first.
        let st = unsafe {
            nmr_common::nmr::Nmr::client_attach_provider(
                &sim,
                cb.handle as HANDLE,
                std::ptr::null_mut(),
                std::ptr::null(),
                &mut slot,
                &mut disp,
            )
        };
        assert_eq!(st, STATUS_INVALID_PARAMETER);
        // Wait before deregister; unknown handle; double deregister.
        assert_eq!(c.wait(), STATUS_INVALID_PARAMETER);
        // SAFETY: misuse on purpose; the model checks the handle.
        let st = unsafe { nmr_common::nmr::Nmr::deregister_client(&sim, 0x42 as HANDLE) };
        assert_eq!(st, STATUS_INVALID_PARAMETER);
        assert_eq!(c.deregister(), STATUS_PENDING);
        assert_eq!(c.deregister(), STATUS_INVALID_PARAMETER);
        sim.quiesce();
        // Complete twice; the wrong side's handle; a completion after cleanup.
        cb.complete();
        cb.complete();
        // SAFETY: misuse on purpose.
        unsafe { nmr_common::nmr::Nmr::client_detach_provider_complete(&sim, pb.handle as HANDLE) };
        pb.complete();
        pb.complete();
        assert_eq!(c.wait(), STATUS_SUCCESS);
        // Stale handle after the wait.
        assert_eq!(c.wait(), STATUS_INVALID_PARAMETER);
        p.set(|b| b.reply = Reply::Auto);
        let kinds: Vec<String> = sim
            .violations()
            .iter()
            .map(|v| format!("{v:?}").split(' ').next().unwrap().to_owned())
            .collect();
        assert_eq!(
            kinds,
            [
                "CompleteBeforeDetach",
                "AttachOutsideCallback",
                "WaitNotDeregistered",
                "UnknownHandle",
                "DoubleDeregister",
                "CompleteTwice",
                "WrongHandle",
                "StaleHandle",
                "StaleHandle",
            ]
        );
        // The model is intact: a fresh client binds and unbinds cleanly.
        let before = sim.violations().len();
        let c2 = TestModule::client(&sim, "c2", NPI_A);
        c2.register();
        assert_bound(&c2, &p);
        c2.unload();
        p.unload();
        assert_eq!(sim.violations().len(), before);
        assert_eq!(sim.live_bindings(), 0);
        assert_eq!(sim.live_registrations(), 0);
    }
}

#[test]
fn s16_reload_loop_with_calls_running() {
    const CYCLES: usize = 1000;
    let start = std::time::Instant::now();
    for config in configs() {
        let sim = Sim::new(config.clone());
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        let stop = Arc::new(AtomicBool::new(false));
        // Callers in both directions, all the time.
        let callers: Vec<_> = [c.clone(), p.clone()]
            .into_iter()
            .map(|m| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut made = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for b in m.live() {
                            if let Some(call) = b.begin_call() {
                                made += 1;
                                b.end_call(call);
                            }
                        }
                        thread::yield_now();
                    }
                    made
                })
            })
            .collect();
        // One reload: the reloading module keeps a call of its own in flight
        // across its deregistration (its detach may answer PENDING), then
        // ends it and waits. Returns the calls it made.
        fn cycle(m: &Arc<TestModule>) -> u64 {
            assert_eq!(m.register(), STATUS_SUCCESS);
            let calls: Vec<_> = m
                .live()
                .into_iter()
                .filter_map(|b| b.begin_call().map(|call| (b, call)))
                .collect();
            assert_eq!(m.deregister(), STATUS_PENDING);
            let made = calls.len() as u64;
            for (b, call) in calls {
                b.end_call(call);
            }
            assert_eq!(m.wait(), STATUS_SUCCESS);
            m.prune();
            made
        }
        let mut made = 0;
        // Each side reloads against a peer that stays.
        p.register();
        for _ in 0..CYCLES {
            made += cycle(&c);
        }
        assert_eq!(made, CYCLES as u64, "one call per reload");
        p.unload();
        c.register();
        for _ in 0..CYCLES {
            made += cycle(&p);
        }
        c.unload();
        // Both at once.
        let both: Vec<_> = [c.clone(), p.clone()]
            .into_iter()
            .map(|m| thread::spawn(move || (0..CYCLES).map(|_| cycle(&m)).sum::<u64>()))
            .collect();
        for t in both {
            made += t.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        made += callers.into_iter().map(|t| t.join().unwrap()).sum::<u64>();
        assert_eq!(sim.stats().incoming_calls, made);
        let s = sim.stats();
        assert_eq!(s.registrations, 4 * CYCLES as u64 + 2);
        assert!(s.bindings_made >= 2 * CYCLES as u64, "{s:?}");
        assert_eq!(c.after_unload.load(Ordering::SeqCst), 0);
        assert_clean(&sim);
        sim.take_events();
    }
    assert!(
        start.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn s17_unload_returns_only_after_wait_and_nothing_calls_in_afterwards() {
    for config in configs() {
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        p.register();
        c.register();
        let cb = c.only();
        let call = cb.begin_call().unwrap();
        let (tx, rx) = mpsc::channel();
        let unload = {
            let p = p.clone();
            thread::spawn(move || tx.send(p.unload()).unwrap())
        };
        sim.await_blocked_waiters(1);
        assert!(rx.try_recv().is_err(), "unload returned before its wait");
        cb.end_call(call);
        assert_eq!(rx.recv().unwrap(), STATUS_SUCCESS);
        unload.join().unwrap();
        // The provider is unloaded: new clients and the old one never reach it.
        let c2 = TestModule::client(&sim, "c2", NPI_A);
        c2.register();
        assert!(c2.seen().is_empty());
        c2.unload();
        c.unload();
        assert_eq!(p.after_unload.load(Ordering::SeqCst), 0);
        // The provider can load again (same characteristics) and bind afresh.
        let c3 = TestModule::client(&sim, "c3", NPI_A);
        c3.register();
        p.register();
        assert_bound(&c3, &p);
        p.unload();
        c3.unload();
        assert_eq!(p.after_unload.load(Ordering::SeqCst), 0);
        assert_eq!(c.after_unload.load(Ordering::SeqCst), 0);
        assert_clean(&sim);
    }
}
