//! End-to-end: the real client and provider modules on the NMR model, in
//! every detach order and both delivery modes (docs/nmr-contract.md, "Scenarios": the
//! scenarios that concern the drivers). Calls are held in flight by the
//! testbed's gates; ordering is read from the model's event log.

use std::time::{Duration, Instant};

use nmr_common::ffi::*;
use nmr_common::module::Unload;
use nmr_common::npi::VersionRange;
use nmr_common::trace::Event;
use nmr_sim::{Config, LogEntry, NmrEvent, Sim};
use testbed::stress::{self, StressConfig};
use testbed::*;

const DATA: &[u8] = b"end-to-end checksum payload, odd length!";

fn bed(config: Config) -> TestNmr {
    TestNmr::new(Sim::new(config))
}

/// Waits (yielding, bounded) until `cond` holds: for events that another
/// thread or the model's worker produces.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::yield_now();
    }
}

fn module_events(nmr: &TestNmr, module: &str) -> Vec<(Event, NTSTATUS)> {
    nmr.sim()
        .events()
        .into_iter()
        .filter_map(|e| match e {
            LogEntry::Module {
                event,
                module: m,
                status,
                ..
            } if m == module => Some((event, status)),
            _ => None,
        })
        .collect()
}

fn count(nmr: &TestNmr, module: &str, event: Event) -> usize {
    module_events(nmr, module)
        .iter()
        .filter(|(e, _)| *e == event)
        .count()
}

fn position(nmr: &TestNmr, pred: impl Fn(&LogEntry) -> bool) -> usize {
    nmr.sim()
        .events()
        .iter()
        .position(pred)
        .expect("event in the log")
}

fn assert_clean(nmr: &TestNmr) {
    let sim = nmr.sim();
    sim.quiesce();
    assert!(
        sim.violations().is_empty(),
        "violations: {:?}",
        sim.violations()
    );
    assert_eq!(sim.live_bindings(), 0, "bindings left");
    assert_eq!(sim.live_registrations(), 0, "registrations left");
}

#[test]
fn scenario_1_client_then_provider_attach_inside_register_provider() {
    for config in Config::all_orders() {
        let nmr = bed(config);
        let client = load_client(&nmr, client_config(0));
        assert_eq!(client.binding_count(), 0);
        let provider = load_provider(&nmr, provider_config(0));
        // Attached before NmrRegisterProvider returned (R2).
        assert_eq!(client.binding_count(), 1);
        assert_eq!(provider.binding_count(), 1);
        let accepted = position(&nmr, |e| {
            e.module_event() == Some(Event::AttachAccepted)
                && e.to_string().starts_with("nmr_client:")
        });
        let registered = position(&nmr, |e| {
            e.module_event() == Some(Event::Register) && e.to_string().starts_with("nmr_provider:")
        });
        assert!(
            accepted < registered,
            "attach must run inside NmrRegisterProvider"
        );
        assert_eq!(client.call_round(DATA), 1, "the checksum is verified");
        assert_eq!(provider.notify_round(), 1);
        assert_eq!(client.counts().notifications, 1);
        drop(provider);
        drop(client);
        assert_clean(&nmr);
    }
}

#[test]
fn scenario_2_provider_then_client_attach_inside_register_client() {
    for config in Config::all_orders() {
        let nmr = bed(config);
        let provider = load_provider(&nmr, provider_config(0));
        let client = load_client(&nmr, client_config(0));
        assert_eq!((client.binding_count(), provider.binding_count()), (1, 1));
        assert_eq!(client.call_round(DATA), 1);
        drop(client);
        drop(provider);
        assert_clean(&nmr);
    }
}

#[test]
fn scenario_6_three_clients_two_providers_make_six_bindings() {
    for config in Config::all_orders() {
        let nmr = bed(config);
        let clients: Vec<_> = (0..3)
            .map(|i| load_client(&nmr, client_config(i)))
            .collect();
        let providers: Vec<_> = (0..2)
            .map(|i| load_provider(&nmr, provider_config(i)))
            .collect();
        assert_eq!(nmr.sim().stats().attaches, 6);
        for c in &clients {
            assert_eq!(c.binding_count(), 2);
            assert_eq!(c.call_round(DATA), 2);
        }
        for p in &providers {
            assert_eq!(p.binding_count(), 3);
            assert_eq!(p.notify_round(), 3);
        }
        assert_eq!(
            clients
                .iter()
                .map(|c| c.counts().notifications)
                .sum::<u64>(),
            6
        );
        drop(providers);
        for c in &clients {
            assert_eq!(c.binding_count(), 0);
            assert_eq!(c.call_round(DATA), 0);
        }
        drop(clients);
        assert_clean(&nmr);
        let s = nmr.sim().stats();
        assert_eq!((s.client_cleanups, s.provider_cleanups), (6, 6));
    }
}

#[test]
fn scenario_5_provider_declines_a_client_whose_table_does_not_fit() {
    // The client claims versions 1..=2, so it accepts a 2-only provider and
    // attaches; but its dispatch table is a version 1 table: the provider
    // checks the table against the agreed version 2 and declines.
    for config in Config::all_orders() {
        let nmr = bed(config);
        let mut p = provider_config(0);
        p.versions = VersionRange { min: 2, max: 2 };
        let provider = load_provider(&nmr, p);
        let mut c = client_config(0);
        c.versions = VersionRange { min: 1, max: 2 };
        let client = load_client(&nmr, c);
        assert_eq!((client.binding_count(), provider.binding_count()), (0, 0));
        assert_eq!(provider.counts().declined, 1);
        assert_eq!(
            client.counts().declined,
            1,
            "the client saw the decline and freed its context"
        );
        assert!(
            module_events(&nmr, "nmr_provider")
                .contains(&(Event::AttachDeclined, STATUS_NOINTERFACE))
        );
        assert!(
            module_events(&nmr, "nmr_client")
                .contains(&(Event::AttachDeclined, STATUS_NOINTERFACE))
        );
        assert_eq!(nmr.sim().stats().attaches, 0);
        drop(client);
        drop(provider);
        assert_clean(&nmr);
        let s = nmr.sim().stats();
        assert_eq!(
            (
                s.client_cleanups,
                s.provider_cleanups,
                s.client_detach_success
            ),
            (0, 0, 0)
        );
    }
}

#[test]
fn scenario_4_client_declines_a_provider_of_another_version() {
    for config in Config::all_orders() {
        let nmr = bed(config);
        let client = load_client(&nmr, client_config(0));
        let mut p = provider_config(0);
        p.versions = FUTURE_VERSIONS;
        let provider = load_provider(&nmr, p);
        assert_eq!(client.counts().declined, 1);
        assert_eq!(
            provider.counts().offered,
            0,
            "the client declined before attaching"
        );
        assert!(
            !nmr.sim()
                .events()
                .iter()
                .any(|e| e.nmr_event() == Some(NmrEvent::ProviderAttachOffered))
        );
        let line = nmr
            .sim()
            .events()
            .into_iter()
            .find(|e| e.module_event() == Some(Event::AttachDeclined))
            .unwrap();
        assert!(
            line.to_string()
                .contains("peer versions 2..=3 do not overlap ours 1..=1"),
            "{line}"
        );
        drop(provider);
        drop(client);
        assert_clean(&nmr);
    }
}

#[test]
fn scenario_8_client_unloads_with_nothing_in_flight() {
    for config in Config::all_orders() {
        let nmr = bed(config);
        let provider = load_provider(&nmr, provider_config(0));
        let client = load_client(&nmr, client_config(0));
        assert_eq!(client.unload(), STATUS_SUCCESS);
        assert_eq!(count(&nmr, "nmr_client", Event::DetachSuccess), 1);
        assert_eq!(count(&nmr, "nmr_provider", Event::DetachSuccess), 1);
        assert_eq!(count(&nmr, "nmr_client", Event::Cleanup), 1);
        assert_eq!(count(&nmr, "nmr_provider", Event::Cleanup), 1);
        assert!(module_events(&nmr, "nmr_client").contains(&(Event::WaitDone, STATUS_SUCCESS)));
        assert_eq!(provider.binding_count(), 0);
        drop(client);
        drop(provider);
        assert_clean(&nmr);
    }
}

#[test]
fn scenario_9_unload_without_binding_returns_at_once() {
    for config in Config::all_orders() {
        let nmr = bed(config);
        let client = load_client(&nmr, client_config(0));
        assert_eq!(client.unload(), STATUS_SUCCESS);
        assert!(module_events(&nmr, "nmr_client").contains(&(Event::Deregister, STATUS_PENDING)));
        assert!(module_events(&nmr, "nmr_client").contains(&(Event::WaitDone, STATUS_SUCCESS)));
        drop(client);
        assert_clean(&nmr);
    }
}

#[test]
fn scenario_10_provider_unloads_while_a_checksum_is_in_flight() {
    for config in Config::all_orders() {
        let nmr = bed(config);
        let mut p = provider_config(0);
        p.latency_us = CHECKSUM_GATE;
        let provider = load_provider(&nmr, p);
        let client = load_client(&nmr, client_config(0));
        nmr.close(CHECKSUM_GATE);
        std::thread::scope(|s| {
            let call = s.spawn(|| client.call_round(DATA));
            nmr.wait_for_waiters(CHECKSUM_GATE, 1);
            let unload = s.spawn(|| provider.unload());
            wait_until("the client's detach", || {
                count(&nmr, "nmr_client", Event::DetachPending) == 1
            });
            // Detaching: no new call is made, and nothing is cleaned up yet.
            assert_eq!(client.call_round(DATA), 0);
            assert!(client.counts().refused >= 1);
            assert_eq!(count(&nmr, "nmr_client", Event::Cleanup), 0);
            assert!(
                !unload.is_finished(),
                "the wait holds while a call is in flight"
            );
            nmr.open(CHECKSUM_GATE);
            assert_eq!(
                call.join().unwrap(),
                1,
                "the call in flight finishes and verifies"
            );
            assert_eq!(unload.join().unwrap(), STATUS_SUCCESS);
        });
        assert_eq!(count(&nmr, "nmr_client", Event::DetachComplete), 1);
        let complete = position(&nmr, |e| e.module_event() == Some(Event::DetachComplete));
        let cleanup = position(&nmr, |e| e.module_event() == Some(Event::Cleanup));
        assert!(complete < cleanup, "cleanup only after the completion");
        assert_eq!(nmr.sim().stats().client_completes, 1);
        drop(client);
        drop(provider);
        assert_clean(&nmr);
    }
}

#[test]
fn scenario_11_client_unloads_while_a_notification_is_in_flight() {
    for config in Config::all_orders() {
        let nmr = bed(config);
        let provider = load_provider(&nmr, provider_config(0));
        let mut c = client_config(0);
        c.notify_delay_us = NOTIFY_GATE;
        let client = load_client(&nmr, c);
        nmr.close(NOTIFY_GATE);
        std::thread::scope(|s| {
            let notify = s.spawn(|| provider.notify_round());
            nmr.wait_for_waiters(NOTIFY_GATE, 1);
            let unload = s.spawn(|| client.unload());
            wait_until("the provider's detach", || {
                count(&nmr, "nmr_provider", Event::DetachPending) == 1
            });
            assert_eq!(provider.notify_round(), 0, "no notification once detaching");
            assert!(!unload.is_finished());
            nmr.open(NOTIFY_GATE);
            assert_eq!(notify.join().unwrap(), 1);
            assert_eq!(unload.join().unwrap(), STATUS_SUCCESS);
        });
        assert_eq!(count(&nmr, "nmr_provider", Event::DetachComplete), 1);
        assert_eq!(nmr.sim().stats().provider_completes, 1);
        drop(client);
        drop(provider);
        assert_clean(&nmr);
    }
}

fn both_pending(first: u32, second: u32, unload_client: bool) {
    for config in Config::all_orders() {
        let nmr = bed(config);
        let mut p = provider_config(0);
        p.latency_us = CHECKSUM_GATE;
        let provider = load_provider(&nmr, p);
        let mut c = client_config(0);
        c.notify_delay_us = NOTIFY_GATE;
        let client = load_client(&nmr, c);
        nmr.close(CHECKSUM_GATE);
        nmr.close(NOTIFY_GATE);
        std::thread::scope(|s| {
            let call = s.spawn(|| client.call_round(DATA));
            let notify = s.spawn(|| provider.notify_round());
            nmr.wait_for_waiters(CHECKSUM_GATE, 1);
            nmr.wait_for_waiters(NOTIFY_GATE, 1);
            let unload = s.spawn(|| {
                if unload_client {
                    client.unload()
                } else {
                    provider.unload()
                }
            });
            wait_until("both detaches", || {
                count(&nmr, "nmr_client", Event::DetachPending) == 1
                    && count(&nmr, "nmr_provider", Event::DetachPending) == 1
            });
            nmr.open(first);
            let first_module = if first == CHECKSUM_GATE {
                "nmr_client"
            } else {
                "nmr_provider"
            };
            wait_until("the first completion", || {
                count(&nmr, first_module, Event::DetachComplete) == 1
            });
            assert_eq!(
                count(&nmr, "nmr_client", Event::Cleanup)
                    + count(&nmr, "nmr_provider", Event::Cleanup),
                0
            );
            nmr.open(second);
            assert_eq!(call.join().unwrap(), 1);
            assert_eq!(notify.join().unwrap(), 1);
            assert_eq!(unload.join().unwrap(), STATUS_SUCCESS);
        });
        assert_eq!(count(&nmr, "nmr_client", Event::Cleanup), 1);
        assert_eq!(count(&nmr, "nmr_provider", Event::Cleanup), 1);
        let last_complete = nmr
            .sim()
            .events()
            .iter()
            .rposition(|e| e.module_event() == Some(Event::DetachComplete))
            .unwrap();
        let first_cleanup = position(&nmr, |e| e.module_event() == Some(Event::Cleanup));
        assert!(
            last_complete < first_cleanup,
            "cleanups run inside the later completion"
        );
        drop(client);
        drop(provider);
        assert_clean(&nmr);
    }
}

#[test]
fn scenario_12_both_pending_checksum_drains_first() {
    both_pending(CHECKSUM_GATE, NOTIFY_GATE, false);
}

#[test]
fn scenario_12_both_pending_notify_drains_first() {
    both_pending(NOTIFY_GATE, CHECKSUM_GATE, true);
}

#[test]
fn scenario_13_both_modules_unload_at_once() {
    for config in Config::all_orders() {
        let nmr = bed(config);
        let clients: Vec<_> = (0..2)
            .map(|i| load_client(&nmr, client_config(i)))
            .collect();
        let provider = load_provider(&nmr, provider_config(0));
        std::thread::scope(|s| {
            let a = s.spawn(|| clients[0].unload());
            let b = s.spawn(|| provider.unload());
            assert_eq!(a.join().unwrap(), STATUS_SUCCESS);
            assert_eq!(b.join().unwrap(), STATUS_SUCCESS);
        });
        let s = nmr.sim().stats();
        assert_eq!(
            s.client_detach_success + s.client_detach_pending,
            2,
            "one detach per side per binding"
        );
        assert_eq!(s.provider_detach_success + s.provider_detach_pending, 2);
        drop(clients);
        drop(provider);
        assert_clean(&nmr);
    }
}

#[test]
fn scenario_17_nothing_reaches_a_module_after_its_unload() {
    for config in Config::all_orders() {
        let nmr = bed(config);
        let provider = load_provider(&nmr, provider_config(0));
        let client = load_client(&nmr, client_config(0));
        client.call_round(DATA);
        assert_eq!(provider.unload(), STATUS_SUCCESS);
        let events = nmr.sim().events();
        let unloaded = events
            .iter()
            .position(|e| {
                e.module_event() == Some(Event::Unload)
                    && e.to_string().starts_with("nmr_provider:")
            })
            .unwrap();
        let wait_done = events
            .iter()
            .position(|e| {
                e.module_event() == Some(Event::WaitDone)
                    && e.to_string().starts_with("nmr_provider:")
            })
            .unwrap();
        assert!(wait_done < unloaded, "unload returns only after the wait");
        // The client goes on: its worker finds no provider, calls nothing.
        assert_eq!(client.call_round(DATA), 0);
        assert!(
            nmr.sim().events()[unloaded + 1..]
                .iter()
                .all(|e| !e.to_string().starts_with("nmr_provider:")),
            "nothing of the provider runs after its unload"
        );
        drop(client);
        drop(provider);
        assert_clean(&nmr);
    }
}

#[test]
fn scenario_16_a_thousand_load_unload_cycles_with_calls_running() {
    let config = StressConfig {
        cycles: Some(1000),
        phase_cycles: 250,
        threads: 3,
        latency_us: 20,
        notify_latency_us: 10,
        seed: 16,
        ..StressConfig::default()
    };
    let report = stress::run(&config, &|_| {});
    assert_eq!(report.cycles, 1000);
    assert!(
        report.failures().is_empty(),
        "{:?}\n{}",
        report.failures(),
        report.table()
    );
    assert!(
        report.nmr.attaches > 100,
        "bindings were made: {}",
        report.table()
    );
    assert!(report.client.calls > 0 && report.client.verified == report.client.calls);
    assert!(
        report.nmr.attach_declines > 0,
        "the incompatible client was declined"
    );
}

#[test]
fn a_failed_deregistration_is_traced_never_waited_on_and_the_module_kept() {
    let nmr = bed(Config::default());
    let client = load_client(&nmr, client_config(0));
    nmr.fail_next_deregister(STATUS_UNSUCCESSFUL);
    assert_eq!(client.unload(), STATUS_UNSUCCESSFUL);
    let events = module_events(&nmr, "nmr_client");
    assert!(events.contains(&(Event::Deregister, STATUS_UNSUCCESSFUL)));
    assert!(
        !events.iter().any(|(e, _)| *e == Event::WaitDone),
        "never wait on a failed deregistration"
    );
    assert!(events.contains(&(Event::Unload, STATUS_UNSUCCESSFUL)));
    // Asked again (as dropping the module does), it still says it failed, so
    // the module's memory, which the NMR may still use, is never freed.
    assert_eq!(client.unload(), STATUS_UNSUCCESSFUL);
    assert_eq!(
        count(&nmr, "nmr_client", Event::Deregister),
        1,
        "deregistered once"
    );
    let line = nmr
        .sim()
        .events()
        .into_iter()
        .find(|e| e.module_event() == Some(Event::Deregister))
        .unwrap();
    assert_eq!(
        line.to_string(),
        "nmr_client: deregister binding=- status=STATUS_UNSUCCESSFUL"
    );
    // The module is leaked on purpose (it is still registered in the model).
    std::mem::forget(client);
}
