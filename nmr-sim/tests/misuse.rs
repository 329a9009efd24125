//! R12: every misuse is provoked once and observed as its exact named
//! violation (with `Policy::Record`), and the model's answer is checked.
//! Also: the `Policy::Panic` behaviour.

mod common;

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use common::*;
use nmr_common::ffi::*;
use nmr_common::nmr::Nmr;
use nmr_common::sync::SpinLock;
use nmr_sim::*;

fn recording() -> Vec<Config> {
    Config::all_orders()
        .into_iter()
        .map(Config::recording)
        .collect()
}

/// A bound client and provider on a recording model.
fn bound(config: Config) -> (Sim, Arc<TestModule>, Arc<TestModule>) {
    let sim = Sim::new(config);
    let c = TestModule::client(&sim, "c", NPI_A);
    let p = TestModule::provider(&sim, "p", NPI_A);
    assert_eq!(p.register(), STATUS_SUCCESS);
    assert_eq!(c.register(), STATUS_SUCCESS);
    (sim, c, p)
}

fn one(sim: &Sim) -> Violation {
    let v = sim.violations();
    assert_eq!(v.len(), 1, "{v:#?}");
    v[0].clone()
}

/// The model is whole afterwards: nothing live once everything unloaded.
fn drain(sim: &Sim, modules: &[&Arc<TestModule>]) {
    for m in modules {
        let _ = m.unload();
    }
    sim.quiesce();
    assert_eq!(sim.live_bindings(), 0);
    assert_eq!(sim.live_registrations(), 0);
}

#[test]
fn bad_characteristics() {
    type Breaker = fn(&mut NPI_CLIENT_CHARACTERISTICS);
    let cases: [(&str, Breaker); 8] = [
        ("Version is not 0", |c| c.Version = 1),
        ("Length is not the size of the characteristics", |c| {
            c.Length = 8
        }),
        ("registration instance Version is not 0", |c| {
            c.ClientRegistrationInstance.Version = 1
        }),
        (
            "registration instance Size is not sizeof(NPI_REGISTRATION_INSTANCE)",
            |c| c.ClientRegistrationInstance.Size = 12,
        ),
        ("NpiId is null", |c| {
            c.ClientRegistrationInstance.NpiId = ptr::null()
        }),
        ("ModuleId is null", |c| {
            c.ClientRegistrationInstance.ModuleId = ptr::null()
        }),
        ("the attach callback is null", |c| {
            c.ClientAttachProvider = None
        }),
        ("the detach callback is null", |c| {
            c.ClientDetachProvider = None
        }),
    ];
    for (problem, breaker) in cases {
        let sim = Sim::new(Config::default().recording());
        let m = TestModule::client(&sim, "c", NPI_A);
        let mut chars = m.client_chars();
        breaker(&mut chars);
        let mut h: HANDLE = ptr::null_mut();
        // SAFETY: misuse on purpose; everything is readable for the call.
        let st = unsafe { sim.register_client(&chars, ptr::null_mut(), &mut h) };
        assert_eq!(st, STATUS_INVALID_PARAMETER, "{problem}");
        assert!(h.is_null());
        let Violation::BadCharacteristics {
            side: Side::Client,
            problem: got,
            ..
        } = one(&sim)
        else {
            panic!("{:?}", sim.violations())
        };
        assert_eq!(got, problem);
        assert_eq!(sim.live_registrations(), 0);
    }
    // The provider side, and the null pointers.
    let sim = Sim::new(Config::default().recording());
    let m = TestModule::provider(&sim, "p", NPI_A);
    let mut chars = m.provider_chars();
    chars.ProviderDetachClient = None;
    let mut h: HANDLE = ptr::null_mut();
    // SAFETY: misuse on purpose.
    let st = unsafe { sim.register_provider(&chars, ptr::null_mut(), &mut h) };
    assert_eq!(st, STATUS_INVALID_PARAMETER);
    // SAFETY: misuse on purpose.
    let st = unsafe { sim.register_provider(ptr::null(), ptr::null_mut(), &mut h) };
    assert_eq!(st, STATUS_INVALID_PARAMETER);
    let chars = m.provider_chars();
    // SAFETY: misuse on purpose.
    let st = unsafe { sim.register_provider(&chars, ptr::null_mut(), ptr::null_mut()) };
    assert_eq!(st, STATUS_INVALID_PARAMETER);
    let problems: Vec<_> = sim
        .violations()
        .into_iter()
        .map(|v| match v {
            Violation::BadCharacteristics {
                side: Side::Provider,
                problem,
                ..
            } => problem,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        problems,
        [
            "the detach callback is null",
            "the characteristics pointer is null",
            "the handle pointer is null"
        ]
    );
    assert_eq!(sim.live_registrations(), 0);
    assert!(
        sim.violations()[0]
            .to_string()
            .starts_with("R12: NmrRegisterProvider")
    );
}

#[test]
fn unknown_handle() {
    let (sim, c, p) = bound(Config::default().recording());
    let junk = 0x4242 as HANDLE;
    // SAFETY: misuse on purpose: the model checks every handle.
    unsafe {
        assert_eq!(sim.deregister_client(junk), STATUS_INVALID_PARAMETER);
        assert_eq!(
            sim.wait_for_provider_deregister_complete(junk),
            STATUS_INVALID_PARAMETER
        );
        sim.client_detach_provider_complete(junk);
        sim.provider_detach_client_complete(ptr::null_mut());
    }
    sim.incoming_call(junk);
    let v = sim.violations();
    assert_eq!(v.len(), 5);
    assert_eq!(
        v[0],
        Violation::UnknownHandle {
            call: "NmrDeregisterClient",
            handle: 0x4242
        }
    );
    assert!(
        v.iter()
            .all(|v| matches!(v, Violation::UnknownHandle { .. }))
    );
    // Nothing changed.
    assert_eq!(sim.live_bindings(), 1);
    drain(&sim, &[&c, &p]);
}

#[test]
fn stale_handle() {
    for config in recording() {
        let (sim, c, p) = bound(config);
        let (cb, pb) = (c.only(), p.only());
        assert_eq!(c.unload(), STATUS_SUCCESS);
        cb.complete();
        pb.call_peer(); // into the cleaned-up client side
        assert_eq!(c.deregister(), STATUS_INVALID_PARAMETER);
        assert_eq!(c.wait(), STATUS_INVALID_PARAMETER);
        let v = sim.violations();
        assert_eq!(
            v,
            [
                Violation::StaleHandle {
                    call: "NmrClientDetachProviderComplete",
                    handle: cb.handle
                },
                Violation::StaleHandle {
                    call: "Nmr::incoming_call",
                    handle: cb.handle
                },
                Violation::StaleHandle {
                    call: "NmrDeregisterClient",
                    handle: c.handle() as usize
                },
                Violation::StaleHandle {
                    call: "NmrWaitForClientDeregisterComplete",
                    handle: c.handle() as usize
                },
            ]
        );
        drain(&sim, &[&p]);
    }
}

#[test]
fn wrong_handle() {
    let (sim, c, p) = bound(Config::default().recording());
    let pb = p.only();
    // SAFETY: misuse on purpose.
    unsafe {
        assert_eq!(sim.deregister_client(p.handle()), STATUS_INVALID_PARAMETER);
        assert_eq!(
            sim.wait_for_provider_deregister_complete(pb.handle as HANDLE),
            STATUS_INVALID_PARAMETER
        );
        sim.client_detach_provider_complete(pb.handle as HANDLE);
    }
    sim.incoming_call(c.handle());
    let v = sim.violations();
    assert_eq!(
        v[0],
        Violation::WrongHandle {
            call: "NmrDeregisterClient",
            handle: p.handle() as usize,
            expected: "a client registration handle"
        }
    );
    assert_eq!(
        v[2],
        Violation::WrongHandle {
            call: "NmrClientDetachProviderComplete",
            handle: pb.handle,
            expected: "a client binding handle"
        }
    );
    assert_eq!(v.len(), 4);
    assert!(v.iter().all(|v| v.rule() == "R5"));
    assert_eq!(sim.live_bindings(), 1);
    drain(&sim, &[&c, &p]);
}

#[test]
fn double_deregister() {
    for config in recording() {
        let (sim, c, p) = bound(config);
        assert_eq!(c.deregister(), STATUS_PENDING);
        assert_eq!(c.deregister(), STATUS_INVALID_PARAMETER);
        assert_eq!(
            one(&sim),
            Violation::DoubleDeregister {
                module: "c".into(),
                handle: c.handle() as usize
            }
        );
        assert_eq!(c.wait(), STATUS_SUCCESS);
        // Still one detach per side.
        assert_eq!(
            c.bindings()[0]
                .detach_calls
                .load(std::sync::atomic::Ordering::SeqCst),
            1
        );
        drain(&sim, &[&p]);
    }
}

#[test]
fn wait_not_deregistered() {
    let (sim, c, p) = bound(Config::default().recording());
    assert_eq!(c.wait(), STATUS_INVALID_PARAMETER);
    assert_eq!(
        one(&sim),
        Violation::WaitNotDeregistered {
            module: "c".into(),
            handle: c.handle() as usize
        }
    );
    assert_eq!(sim.live_bindings(), 1);
    drain(&sim, &[&c, &p]);
}

#[test]
fn wait_twice() {
    for config in recording() {
        let (sim, c, p) = bound(config);
        c.set(|b| b.reply = Reply::Pending);
        assert_eq!(c.deregister(), STATUS_PENDING);
        let (tx, rx) = mpsc::channel();
        let first = {
            let c = c.clone();
            thread::spawn(move || tx.send(c.wait()).unwrap())
        };
        sim.await_blocked_waiters(1);
        assert_eq!(c.wait(), STATUS_INVALID_PARAMETER);
        assert_eq!(
            one(&sim),
            Violation::WaitTwice {
                module: "c".into(),
                handle: c.handle() as usize
            }
        );
        sim.quiesce();
        c.only().complete();
        assert_eq!(rx.recv().unwrap(), STATUS_SUCCESS);
        first.join().unwrap();
        drain(&sim, &[&p]);
    }
}

#[test]
fn wait_would_deadlock() {
    for config in recording() {
        let config = Config {
            detach_at_dispatch: false,
            ..config
        };
        let (sim, c, p) = bound(config);
        let got = Arc::new(Mutex::new(None));
        let slot = got.clone();
        c.set(|b| b.on_detach = Some(Arc::new(move |m, _| *slot.lock().unwrap() = Some(m.wait()))));
        assert_eq!(c.deregister(), STATUS_PENDING);
        sim.quiesce();
        assert_eq!(*got.lock().unwrap(), Some(STATUS_INVALID_PARAMETER));
        assert_eq!(
            one(&sim),
            Violation::WaitWouldDeadlock {
                module: "c".into(),
                handle: c.handle() as usize
            }
        );
        assert_eq!(c.wait(), STATUS_SUCCESS);
        drain(&sim, &[&p]);
    }
}

#[test]
fn complete_twice() {
    for config in recording() {
        let (sim, c, p) = bound(config);
        p.set(|b| b.reply = Reply::Pending);
        c.set(|b| b.reply = Reply::Pending);
        let (cb, pb) = (c.only(), p.only());
        c.deregister();
        sim.quiesce();
        pb.complete();
        pb.complete();
        assert_eq!(
            one(&sim),
            Violation::CompleteTwice {
                call: "NmrProviderDetachClientComplete",
                module: "p".into(),
                binding: pb.handle
            }
        );
        assert!(
            one(&sim)
                .to_string()
                .starts_with("R8: NmrProviderDetachClientComplete called twice for binding 0x")
        );
        // The state is unchanged: the binding waits for the client.
        assert_eq!(sim.live_bindings(), 1);
        cb.complete();
        assert_eq!(c.wait(), STATUS_SUCCESS);
        assert_eq!(sim.stats().provider_cleanups, 1);
        drain(&sim, &[&p]);
    }
}

#[test]
fn complete_after_success() {
    for config in recording() {
        let (sim, c, p) = bound(config);
        c.set(|b| b.reply = Reply::Pending);
        let (cb, pb) = (c.only(), p.only());
        c.deregister();
        sim.quiesce();
        pb.complete(); // its detach returned SUCCESS
        assert_eq!(
            one(&sim),
            Violation::CompleteAfterSuccess {
                call: "NmrProviderDetachClientComplete",
                module: "p".into(),
                binding: pb.handle
            }
        );
        assert_eq!(sim.live_bindings(), 1);
        cb.complete();
        assert_eq!(c.wait(), STATUS_SUCCESS);
        drain(&sim, &[&p]);
    }
    // Complete inside the detach callback, which then returns SUCCESS.
    for config in recording() {
        let (sim, c, p) = bound(config);
        let cb = c.only();
        c.set(|b| {
            b.reply = Reply::Success;
            b.on_detach = Some(Arc::new(|_, b| b.complete()));
        });
        assert_eq!(c.unload(), STATUS_SUCCESS);
        assert_eq!(
            one(&sim),
            Violation::CompleteAfterSuccess {
                call: "NmrClientDetachProviderComplete",
                module: "c".into(),
                binding: cb.handle
            }
        );
        assert_eq!(sim.stats().client_cleanups, 1);
        drain(&sim, &[&p]);
    }
}

#[test]
fn complete_before_detach() {
    let (sim, c, p) = bound(Config::default().recording());
    let cb = c.only();
    cb.complete();
    assert_eq!(
        one(&sim),
        Violation::CompleteBeforeDetach {
            call: "NmrClientDetachProviderComplete",
            module: "c".into(),
            binding: cb.handle
        }
    );
    // The later, real detach is unaffected.
    assert_eq!(c.unload(), STATUS_SUCCESS);
    assert_eq!(sim.violations().len(), 1);
    drain(&sim, &[&p]);
}

#[test]
fn bad_detach_status() {
    for config in recording() {
        let (sim, c, p) = bound(config);
        p.set(|b| b.reply = Reply::Status(STATUS_UNSUCCESSFUL));
        let pb = p.only();
        assert_eq!(c.unload(), STATUS_SUCCESS); // treated as SUCCESS
        assert_eq!(
            one(&sim),
            Violation::BadDetachStatus {
                side: Side::Provider,
                module: "p".into(),
                binding: pb.handle,
                status: STATUS_UNSUCCESSFUL
            }
        );
        drain(&sim, &[&p]);
    }
}

fn raw_attach(sim: &Sim, handle: HANDLE) -> NTSTATUS {
    let mut context: *mut c_void = ptr::null_mut();
    let mut dispatch: *const c_void = ptr::null();
    // SAFETY: misuse on purpose; the model checks before touching anything.
    unsafe {
        sim.client_attach_provider(
            handle,
            ptr::null_mut(),
            ptr::null(),
            &mut context,
            &mut dispatch,
        )
    }
}

#[test]
fn attach_outside_callback() {
    let config = Config {
        detach_at_dispatch: false,
        ..Config::default().recording()
    };
    let (sim, c, p) = bound(config);
    let cb = c.only();
    assert_eq!(
        raw_attach(&sim, cb.handle as HANDLE),
        STATUS_INVALID_PARAMETER
    );
    assert_eq!(
        one(&sim),
        Violation::AttachOutsideCallback {
            module: None,
            binding: cb.handle
        }
    );
    // From a detach callback, too: the violation names the running module.
    // (Hooks record results; a panic cannot leave an extern "system" callback.)
    let got = Arc::new(Mutex::new(None));
    let (s2, slot) = (sim.clone(), got.clone());
    c.set(|b| {
        b.on_detach = Some(Arc::new(move |_, b| {
            *slot.lock().unwrap() = Some(raw_attach(&s2, b.handle as HANDLE));
        }))
    });
    c.unload();
    assert_eq!(*got.lock().unwrap(), Some(STATUS_INVALID_PARAMETER));
    assert_eq!(
        sim.violations()[1],
        Violation::AttachOutsideCallback {
            module: Some("c".into()),
            binding: cb.handle
        }
    );
    assert_eq!(sim.stats().attaches, 1);
    drain(&sim, &[&p]);
}

#[test]
fn attach_twice() {
    for config in recording() {
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        let got = Arc::new(Mutex::new(None));
        let slot = got.clone();
        c.set(|b| {
            b.on_attach = Some(Arc::new(move |m, h| {
                let st = m.attach_to_provider(h);
                *slot.lock().unwrap() = Some(raw_attach(&m.sim, h));
                st
            }))
        });
        p.register();
        c.register();
        assert_eq!(*got.lock().unwrap(), Some(STATUS_INVALID_PARAMETER));
        assert_eq!(
            one(&sim),
            Violation::AttachTwice {
                module: "c".into(),
                binding: c.only().handle
            }
        );
        // The first attach stands; the provider attached once.
        assert_eq!(p.live().len(), 1);
        drain(&sim, &[&c, &p]);
        assert_eq!(sim.stats().bindings_cleaned_up, 1);
    }
}

#[test]
fn attach_null_out() {
    let sim = Sim::new(Config::default().recording());
    let c = TestModule::client(&sim, "c", NPI_A);
    let p = TestModule::provider(&sim, "p", NPI_A);
    c.set(|b| {
        b.on_attach = Some(Arc::new(|m, h| {
            // SAFETY: misuse on purpose: null out pointers.
            unsafe {
                m.sim.client_attach_provider(
                    h,
                    ptr::null_mut(),
                    ptr::null(),
                    ptr::null_mut(),
                    ptr::null_mut(),
                )
            }
        }))
    });
    p.register();
    c.register();
    let Violation::AttachNullOut { module, .. } = one(&sim) else {
        panic!("{:?}", sim.violations())
    };
    assert_eq!(module, "c");
    assert!(p.seen().is_empty(), "the provider was never offered");
    assert_eq!(sim.live_bindings(), 0);
    drain(&sim, &[&c, &p]);
}

#[test]
fn attach_status_mismatch() {
    for config in recording() {
        // Provider attached, client says no.
        let sim = Sim::new(config.clone());
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        c.set(|b| {
            b.on_attach = Some(Arc::new(|m, h| {
                m.attach_to_provider(h);
                STATUS_NOINTERFACE
            }))
        });
        p.register();
        c.register();
        let h = c.bindings()[0].handle;
        assert_eq!(
            one(&sim),
            Violation::AttachStatusMismatch {
                module: "c".into(),
                binding: h,
                client_status: STATUS_NOINTERFACE,
                provider_status: Some(STATUS_SUCCESS)
            }
        );
        // R3 (revised): the model recovers. The provider's side is detached
        // and cleaned up (on the delivery thread: quiesce); the client's
        // side gets neither.
        sim.quiesce();
        assert_eq!(sim.live_bindings(), 0);
        drain(&sim, &[&c, &p]);
        let s = sim.stats();
        assert_eq!(
            (
                s.provider_detach_success + s.provider_detach_pending,
                s.provider_cleanups
            ),
            (1, 1)
        );
        assert_eq!(
            (
                s.client_detach_success + s.client_detach_pending,
                s.client_cleanups
            ),
            (0, 0)
        );

        // Client says yes without attaching.
        let sim = Sim::new(config);
        let c = TestModule::client(&sim, "c", NPI_A);
        let p = TestModule::provider(&sim, "p", NPI_A);
        c.set(|b| b.on_attach = Some(Arc::new(|_, _| STATUS_SUCCESS)));
        p.register();
        c.register();
        assert!(matches!(
            one(&sim),
            Violation::AttachStatusMismatch {
                client_status: STATUS_SUCCESS,
                provider_status: None,
                ..
            }
        ));
        assert_eq!(sim.live_bindings(), 0);
        drain(&sim, &[&c, &p]);
    }
}

#[test]
fn provider_attach_no_dispatch() {
    let sim = Sim::new(Config::default().recording());
    let c = TestModule::client(&sim, "c", NPI_A);
    let p = TestModule::provider(&sim, "p", NPI_A);
    p.set(|b| b.null_dispatch = true);
    p.register();
    c.register();
    assert_eq!(
        one(&sim),
        Violation::ProviderAttachNoDispatch {
            module: "p".into(),
            binding: p.only().handle
        }
    );
    drain(&sim, &[&c, &p]);
}

#[test]
fn nmr_call_at_dispatch() {
    let sim = Sim::new(Config::default().recording());
    let c = TestModule::client(&sim, "c", NPI_A);
    let p = TestModule::provider(&sim, "p", NPI_A);
    // Register under a spin lock.
    let lock = SpinLock::<SimLock, ()>::new(());
    lock.with(|()| {
        assert_eq!(irql::current(), Irql::Dispatch);
        assert_eq!(p.register(), STATUS_UNSUCCESSFUL);
    });
    assert_eq!(irql::current(), Irql::Passive);
    assert_eq!(
        one(&sim),
        Violation::NmrCallAtDispatch {
            call: "NmrRegisterProvider",
            module: None
        }
    );
    assert_eq!(sim.live_registrations(), 0);
    // NmrClientAttachProvider at DISPATCH inside the attach callback.
    c.set(|b| {
        b.on_attach = Some(Arc::new(|m, h| {
            let old = irql::raise_to_dispatch();
            let st = m.attach_to_provider(h);
            irql::lower(old);
            st
        }))
    });
    p.register();
    c.register();
    assert_eq!(
        sim.violations()[1],
        Violation::NmrCallAtDispatch {
            call: "NmrClientAttachProvider",
            module: Some("c".into())
        }
    );
    assert_eq!(sim.live_bindings(), 0);
    // A wait at DISPATCH fails instead of blocking.
    c.deregister();
    let old = irql::raise_to_dispatch();
    assert_eq!(c.wait(), STATUS_UNSUCCESSFUL);
    irql::lower(old);
    assert_eq!(
        sim.violations()[2],
        Violation::NmrCallAtDispatch {
            call: "NmrWaitForClientDeregisterComplete",
            module: None
        }
    );
    assert_eq!(c.wait(), STATUS_SUCCESS);
    drain(&sim, &[&p]);
}

#[test]
fn blocking_at_dispatch() {
    let sim = Sim::new(Config::default().recording());
    // Nmr::delay under a spin lock.
    let lock = SpinLock::<SimLock, ()>::new(());
    lock.with(|()| sim.delay(1));
    assert_eq!(
        one(&sim),
        Violation::BlockingAtDispatch {
            what: "Nmr::delay",
            module: None
        }
    );
    // A module's blocking helper inside a detach callback (at DISPATCH).
    let c = TestModule::client(&sim, "c", NPI_A);
    let p = TestModule::provider(&sim, "p", NPI_A);
    p.register();
    c.register();
    c.set(|b| b.on_detach = Some(Arc::new(|_, _| irql::assert_can_block("rundown wait"))));
    c.unload();
    assert_eq!(
        sim.violations()[1],
        Violation::BlockingAtDispatch {
            what: "rundown wait",
            module: Some("c".into())
        }
    );
    drain(&sim, &[&p]);
    // With no model on the thread at all, it panics.
    let r = thread::spawn(|| {
        let old = irql::raise_to_dispatch();
        let r = catch_unwind(|| irql::assert_can_block("a wait"));
        irql::lower(old);
        r.is_err()
    })
    .join()
    .unwrap();
    assert!(r);
    // At PASSIVE it is fine.
    irql::assert_can_block("a wait");
}

#[test]
fn irql_not_restored() {
    let config = Config {
        detach_at_dispatch: false,
        ..Config::default().recording()
    };
    let (sim, c, p) = bound(config);
    let cb = c.only();
    c.set(|b| {
        b.on_detach = Some(Arc::new(|_, _| {
            irql::raise_to_dispatch(); // and never lowered
        }))
    });
    c.unload();
    assert_eq!(
        one(&sim),
        Violation::IrqlNotRestored {
            callback: Callback::ClientDetachProvider,
            module: "c".into(),
            binding: cb.handle
        }
    );
    assert_eq!(irql::current(), Irql::Passive);
    drain(&sim, &[&p]);
}

#[test]
fn call_after_detach() {
    for config in recording() {
        let (sim, c, p) = bound(config);
        c.set(|b| b.on_detach = Some(Arc::new(|_, b| b.call_peer())));
        let pb = p.only();
        c.unload();
        assert_eq!(
            one(&sim),
            Violation::CallAfterDetach {
                caller: "c".into(),
                callee: "p".into(),
                binding: pb.handle
            }
        );
        assert!(one(&sim).to_string().starts_with("R9: "));
        drain(&sim, &[&p]);
    }
}

#[test]
fn call_in_flight_while_detach_runs_elsewhere_is_not_a_violation() {
    // A call admitted before the caller's detach began may reach the callee
    // while that detach runs on another thread: R9 allows it.
    let (sim, c, p) = bound(Config::default());
    let (gate, ctl) = gate();
    c.set(|b| b.detach_gate = Some(gate));
    let cb = c.only();
    let t = {
        let p = p.clone();
        thread::spawn(move || p.unload())
    };
    ctl.wait_entered(); // the client's detach callback has begun
    cb.call_peer();
    ctl.release();
    assert_eq!(t.join().unwrap(), STATUS_SUCCESS);
    assert!(sim.violations().is_empty());
    drain(&sim, &[&c]);
}

#[test]
fn panic_policy_panics_at_the_misusing_call() {
    let (sim, c, p) = bound(Config::default());
    assert_eq!(c.deregister(), STATUS_PENDING);
    let err = catch_unwind(AssertUnwindSafe(|| c.deregister())).unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.starts_with("R11: c deregistered handle"), "{msg}");
    assert_eq!(sim.violations().len(), 1);
    // The model is intact after the panic.
    assert_eq!(c.wait(), STATUS_SUCCESS);
    drain(&sim, &[&p]);
}

#[test]
fn panic_policy_defers_past_callbacks_and_the_worker() {
    for config in Config::all_orders() {
        // A violation inside a detach callback cannot unwind through it: the
        // panic comes when the outermost NMR call returns (Inline), or at the
        // next quiesce/check on a test thread (Worker).
        let (sim, c, p) = bound(config.clone());
        c.set(|b| {
            b.reply = Reply::Pending;
            b.on_detach = Some(Arc::new(|_, b| {
                b.complete();
                b.complete();
            }))
        });
        let err = catch_unwind(AssertUnwindSafe(|| {
            c.deregister();
            sim.quiesce();
        }))
        .unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.starts_with("R8: NmrClientDetachProviderComplete called twice"),
            "{msg}"
        );
        // Raised once only.
        sim.check();
        assert_eq!(c.wait(), STATUS_SUCCESS);
        drain(&sim, &[&p]);
    }
}

#[test]
fn violations_display_names_the_rule() {
    let v = Violation::CompleteTwice {
        call: "NmrClientDetachProviderComplete",
        module: "nmr_client".into(),
        binding: 0x10020,
    };
    assert_eq!(
        v.to_string(),
        "R8: NmrClientDetachProviderComplete called twice for binding 0x10020 (nmr_client)"
    );
    assert_eq!(v.module(), Some("nmr_client"));
    assert_eq!(v.handle(), Some(0x10020));
}

#[test]
fn panic_policy_raises_a_call_after_detach_at_the_next_safe_point() {
    // incoming_call runs inside the callee's dispatch function (extern
    // "system" here): it records, and the panic comes from `check`.
    let (sim, c, p) = bound(Config::default());
    p.set(|b| b.reply = Reply::Pending);
    let (cb, pb) = (c.only(), p.only());
    c.deregister();
    cb.call_peer(); // R9: the client's detach returned SUCCESS
    assert_eq!(sim.violations().len(), 1);
    let err = catch_unwind(AssertUnwindSafe(|| sim.check())).unwrap_err();
    assert!(
        err.downcast_ref::<String>()
            .unwrap()
            .starts_with("R9: c called into p")
    );
    pb.complete();
    assert_eq!(c.wait(), STATUS_SUCCESS);
    drain(&sim, &[&p]);
}
