//! R3 recovery: a client that returns failure after `NmrClientAttachProvider`
//! succeeded breaks the contract, and the model (as the real NMR) still
//! leaves nothing behind: it detaches the provider's side, honouring PENDING
//! and its Complete, runs the provider's cleanup, gives the client's side
//! neither, and records the client's misuse. The provider is the real
//! module; the client is a raw one that misbehaves on purpose. Every
//! delivery, with the provider's detach answering SUCCESS (nothing in
//! flight) and PENDING (a `notify` into the client in flight).

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use nmr_common::ffi::*;
use nmr_common::nmr::Nmr;
use nmr_common::npi::{
    ClientDispatch, DispatchHeader, NPI_ID, NPI_VERSION, NpiCharacteristics, VersionRange,
};
use nmr_provider_module::provider::{ProviderConfig, ProviderModule};
use nmr_sim::{Config, Delivery, Policy, Sim, Violation};

/// A gate a `notify` can be held at. Bounded both ways: a held `notify`
/// lets itself through after the deadline (the test then fails on its
/// counts instead of hanging inside `std::thread::scope`), and waiting for
/// one to arrive panics after it.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, u32)>, // (open, held)
    changed: Condvar,
}

impl Gate {
    fn wait_while(&self, what: &str, mut cond: impl FnMut(&(bool, u32)) -> bool) -> bool {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (st, timeout) = self
            .changed
            .wait_timeout_while(st, testbed::GATE_DEADLINE, |st| cond(st))
            .unwrap_or_else(PoisonError::into_inner);
        drop(st);
        if timeout.timed_out() {
            eprintln!("{what}: not in {:?}", testbed::GATE_DEADLINE);
        }
        !timeout.timed_out()
    }
    fn hold(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1 += 1;
        self.changed.notify_all();
        self.wait_while("the held notify was let through", |st| !st.0);
    }
    fn await_held(&self) {
        assert!(self.wait_while("a notify reached the gate", |st| st.1 == 0));
    }
    fn open(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0 = true;
        self.changed.notify_all();
    }
}

/// The misbehaving client: its registration context and its one binding
/// context (the same object, kept by the test so that nothing is freed
/// under a call).
struct BadClient {
    sim: Sim,
    characteristics: NPI_CLIENT_CHARACTERISTICS,
    module_id: NPI_MODULEID,
    npi_characteristics: NpiCharacteristics,
    dispatch: ClientDispatch,
    /// With a call held: the provider's notifier, started from inside our
    /// attach once the provider has attached, and held at the gate.
    notifier: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    notifier_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    gate: Gate,
    attaches: AtomicU32,
    detaches: AtomicU32,
    cleanups: AtomicU32,
    notifications: AtomicU32,
}

unsafe extern "system" fn bad_attach(
    handle: HANDLE,
    context: *mut c_void,
    _provider: *const NPI_REGISTRATION_INSTANCE,
) -> NTSTATUS {
    // SAFETY: our registration context, alive for the whole test.
    let client = unsafe { &*context.cast::<BadClient>() };
    client.attaches.fetch_add(1, SeqCst);
    let (mut peer_context, mut peer_dispatch) = (ptr::null_mut(), ptr::null());
    // SAFETY: inside ClientAttachProvider for `handle`; our context and
    // dispatch table live for the whole test; the out slots are locals.
    let status = unsafe {
        client.sim.client_attach_provider(
            handle,
            context,
            (&raw const client.dispatch).cast(),
            &mut peer_context,
            &mut peer_dispatch,
        )
    };
    assert_eq!(status, STATUS_SUCCESS, "the real provider attaches");
    if let Some(notify) = client.notifier.lock().unwrap().take() {
        *client.notifier_thread.lock().unwrap() = Some(std::thread::spawn(notify));
        client.gate.await_held();
    }
    // The misuse: a failure after the provider attached (R3).
    STATUS_INSUFFICIENT_RESOURCES
}

unsafe extern "system" fn bad_detach(context: *mut c_void) -> NTSTATUS {
    // SAFETY: our context, alive for the whole test.
    unsafe { &*context.cast::<BadClient>() }
        .detaches
        .fetch_add(1, SeqCst);
    STATUS_SUCCESS
}

unsafe extern "system" fn bad_cleanup(context: *mut c_void) {
    // SAFETY: as above.
    unsafe { &*context.cast::<BadClient>() }
        .cleanups
        .fetch_add(1, SeqCst);
}

unsafe extern "system" fn bad_notify(context: *mut c_void, _event: u32, _value: u64) {
    // SAFETY: as above.
    let client = unsafe { &*context.cast::<BadClient>() };
    client.notifications.fetch_add(1, SeqCst);
    client.gate.hold();
}

impl BadClient {
    fn new(sim: &Sim) -> Box<BadClient> {
        let mut client = Box::new(BadClient {
            sim: sim.clone(),
            characteristics: NPI_CLIENT_CHARACTERISTICS {
                Version: 0,
                Length: size_of::<NPI_CLIENT_CHARACTERISTICS>() as u16,
                ClientAttachProvider: Some(bad_attach),
                ClientDetachProvider: Some(bad_detach),
                ClientCleanupBindingContext: Some(bad_cleanup),
                ClientRegistrationInstance: NPI_REGISTRATION_INSTANCE {
                    Version: 0,
                    Size: size_of::<NPI_REGISTRATION_INSTANCE>() as u16,
                    NpiId: &NPI_ID,
                    ModuleId: ptr::null(),
                    Number: u32::from(NPI_VERSION),
                    NpiSpecificCharacteristics: ptr::null(),
                },
            },
            module_id: NPI_MODULEID::from_guid(GUID::from_u128(0xbad0_c11e)),
            npi_characteristics: NpiCharacteristics::new(VersionRange::CURRENT),
            dispatch: ClientDispatch {
                header: DispatchHeader {
                    version: NPI_VERSION,
                    size: size_of::<ClientDispatch>() as u16,
                },
                notify: bad_notify,
            },
            notifier: Mutex::new(None),
            notifier_thread: Mutex::new(None),
            gate: Gate::default(),
            attaches: AtomicU32::new(0),
            detaches: AtomicU32::new(0),
            cleanups: AtomicU32::new(0),
            notifications: AtomicU32::new(0),
        });
        let instance = &mut client.characteristics.ClientRegistrationInstance;
        instance.ModuleId = &raw const client.module_id;
        instance.NpiSpecificCharacteristics = (&raw const client.npi_characteristics).cast();
        client
    }

    fn register(&self) -> HANDLE {
        let mut handle = ptr::null_mut();
        // SAFETY: characteristics and context live in `self`, which the test
        // keeps until after the deregistration wait.
        let status = unsafe {
            self.sim.register_client(
                &self.characteristics,
                ptr::from_ref(self).cast_mut().cast(),
                &mut handle,
            )
        };
        assert_eq!(status, STATUS_SUCCESS);
        handle
    }

    fn unload(&self, handle: HANDLE) {
        // SAFETY: our registration, deregistered once, then waited for.
        unsafe {
            assert_eq!(self.sim.deregister_client(handle), STATUS_PENDING);
            assert_eq!(
                self.sim.wait_for_client_deregister_complete(handle),
                STATUS_SUCCESS
            );
        }
    }
}

fn recovery(delivery: Delivery, call_in_flight: bool) {
    let sim = Sim::new(Config {
        delivery,
        policy: Policy::Record,
        ..Config::default()
    });
    let provider = Arc::new(ProviderModule::load(sim.clone(), ProviderConfig::default()).unwrap());
    let client = BadClient::new(&sim);
    if call_in_flight {
        let notifier = provider.clone();
        *client.notifier.lock().unwrap() = Some(Box::new(move || {
            assert_eq!(notifier.notify_round(), 1);
        }));
    }
    let handle = client.register();
    // The provider's detach has run (on the delivery thread: quiesce).
    sim.quiesce();
    let what = format!("{delivery:?}, call in flight: {call_in_flight}");
    let s = sim.stats();
    assert_eq!(s.attaches, 1, "{what}");
    assert_eq!(
        (s.provider_detach_success, s.provider_detach_pending),
        if call_in_flight { (0, 1) } else { (1, 0) },
        "{what}"
    );
    if call_in_flight {
        // PENDING: nothing is cleaned up while the call is in flight.
        assert_eq!(
            (s.provider_cleanups, s.provider_completes),
            (0, 0),
            "{what}"
        );
        assert_eq!(provider.binding_count(), 1);
        client.gate.open();
        // The notifier's last release completes the detach inline, and the
        // cleanup runs inside that Complete, on the notifier's thread.
        let notifier = client.notifier_thread.lock().unwrap().take();
        notifier.expect("the notifier ran").join().unwrap();
        assert_eq!(sim.stats().provider_completes, 1, "{what}");
    }
    let s = sim.stats();
    assert_eq!(
        s.provider_cleanups, 1,
        "{what}: the provider's side is cleaned up"
    );
    assert_eq!(
        (client.detaches.load(SeqCst), client.cleanups.load(SeqCst)),
        (0, 0),
        "{what}: the client's side gets neither detach nor cleanup"
    );
    assert_eq!(s.client_cleanups, 0);
    assert_eq!(sim.live_bindings(), 0, "{what}");
    // No leak: the provider freed its binding context; no call after
    // cleanup: its notifier finds no client.
    let counts = provider.counts();
    assert_eq!((counts.attached, counts.cleaned_up), (1, 1), "{what}");
    assert_eq!(provider.binding_count(), 0);
    let notified = client.notifications.load(SeqCst);
    assert_eq!(provider.notify_round(), 0, "{what}");
    assert_eq!(client.notifications.load(SeqCst), notified);
    // The misuse is on record, and is the only violation.
    let violations = sim.violations();
    assert!(
        matches!(
            violations.as_slice(),
            [Violation::AttachStatusMismatch {
                client_status: STATUS_INSUFFICIENT_RESOURCES,
                provider_status: Some(STATUS_SUCCESS),
                ..
            }]
        ),
        "{what}: {violations:?}"
    );
    client.unload(handle);
    drop(provider);
    assert_eq!(sim.live_registrations(), 0);
    assert_eq!(sim.violations().len(), 1, "{what}");
    assert_eq!(client.attaches.load(SeqCst), 1);
}

#[test]
fn a_client_failing_after_attach_gets_its_provider_detached_and_cleaned_up() {
    for delivery in [Delivery::Inline, Delivery::Worker, Delivery::Parallel] {
        recovery(delivery, false);
    }
}

#[test]
fn the_recovery_honours_a_pending_provider_detach_and_its_complete() {
    for delivery in [Delivery::Inline, Delivery::Worker, Delivery::Parallel] {
        recovery(delivery, true);
    }
}
