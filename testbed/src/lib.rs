//! The testbed: the real client and provider modules, loaded into `nmr-sim`.
//!
//! - [`TestNmr`]: the model, plus gates that hold the modules' latency
//!   delays, so a test can keep a call in flight exactly as long as it wants
//!   (no sleeps): the provider's `checksum` latency and the client's `notify`
//!   delay each wait at their gate while it is closed.
//! - [`stress`]: the load/unload stress with calls flowing both ways, shared
//!   by the `testbed stress` command and the end-to-end tests.
//! - [`alloc_count`]: a counting global allocator, for leak checks.
//! - [`throughput`]: calls per second through the real modules, 1 and 2
//!   calling threads (`testbed throughput`).
//! - [`fault`]: systematic fault injection: every allocation the modules
//!   make, failed in turn.

pub mod alloc_count;
pub mod demo;
pub mod fault;
pub mod images;
pub mod stress;
pub mod throughput;

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, PoisonError, Weak};
use std::thread::ThreadId;
use std::time::Duration;

use nmr_client_module::client::{Client, ClientConfig, ClientModule};
use nmr_common::ffi::*;
use nmr_common::nmr::Nmr;
use nmr_common::npi::VersionRange;
use nmr_common::trace::Record;
use nmr_provider_module::provider::{Provider, ProviderConfig, ProviderModule};
use nmr_sim::Sim;

/// Gate number of the provider's `checksum` latency (its `latency_us`).
pub const CHECKSUM_GATE: u32 = 1;
/// Gate number of the client's `notify` delay (its `notify_delay_us`).
pub const NOTIFY_GATE: u32 = 2;

/// The longest a test waits at a gate, or for waiters at one: past it the
/// wait fails (or the gate opens itself) instead of hanging the test.
pub const GATE_DEADLINE: Duration = Duration::from_secs(60);

struct Gate {
    waiters: usize,
    // The thread that closed it: if that thread panics, the gate opens.
    closer: ThreadId,
}

#[derive(Default)]
struct Gates {
    closed: Mutex<HashMap<u32, Gate>>, // present = closed
    // Gates a delay held past GATE_DEADLINE opened.
    forced: Mutex<Vec<u32>>,
    changed: Condvar,
}

impl Gates {
    /// Opens every gate `thread` closed.
    fn open_closed_by(&self, thread: ThreadId) {
        self.lock().retain(|_, gate| gate.closer != thread);
        self.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Gate>> {
        self.closed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Every live set of gates, for the panic hook.
static LIVE_GATES: Mutex<Vec<Weak<Gates>>> = Mutex::new(Vec::new());

/// A panic hook, installed once, that opens the gates the panicking thread
/// closed before the default hook prints the panic: a test that fails while
/// another thread is held at its gate (inside `std::thread::scope`, which
/// joins that thread) then fails instead of hanging.
fn open_gates_on_panic() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let me = std::thread::current().id();
            let live: Vec<_> = LIVE_GATES
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter_map(Weak::upgrade)
                .collect();
            for gates in live {
                gates.open_closed_by(me);
            }
            previous(info);
        }));
    });
}

/// The model with gates on the modules' delays. Cheap to clone.
#[derive(Clone)]
pub struct TestNmr {
    sim: Sim,
    gates: Arc<Gates>,
    // A status the next `NmrDeregister*` returns instead of reaching the model.
    fail_deregister: Arc<std::sync::atomic::AtomicI32>,
    // Called with every trace record, after the model has logged it.
    observer: Arc<Mutex<Option<TraceObserver>>>,
}

/// A function that sees every trace line a module emits.
pub type TraceObserver = Box<dyn Fn(&Record<'_>) + Send + Sync>;

impl TestNmr {
    /// Wraps a model.
    pub fn new(sim: Sim) -> Self {
        open_gates_on_panic();
        let gates = Arc::default();
        let mut live = LIVE_GATES.lock().unwrap_or_else(PoisonError::into_inner);
        live.retain(|g| g.strong_count() != 0);
        live.push(Arc::downgrade(&gates));
        drop(live);
        TestNmr {
            sim,
            gates,
            fail_deregister: Arc::default(),
            observer: Arc::default(),
        }
    }

    /// Calls `observer` with every trace record, on the emitting thread,
    /// after the model has logged it (for tests that act at a precise point
    /// of a module's callback).
    pub fn observe_traces(&self, observer: TraceObserver) {
        *self.observer.lock().unwrap() = Some(observer);
    }

    /// Makes the next `NmrDeregister*` fail with `status` without reaching the
    /// model (a deregistration failure the real NMR could report).
    pub fn fail_next_deregister(&self, status: NTSTATUS) {
        self.fail_deregister
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    fn forced_deregister_failure(&self) -> Option<NTSTATUS> {
        let status = self
            .fail_deregister
            .swap(0, std::sync::atomic::Ordering::SeqCst);
        (status != 0).then_some(status)
    }

    /// The model.
    pub fn sim(&self) -> &Sim {
        &self.sim
    }

    /// Closes gate `micros`: delays of that many microseconds wait until it
    /// opens. It opens itself if the closing thread panics (so a failing
    /// test never leaves a thread held), and a delay held longer than
    /// [`GATE_DEADLINE`] opens it too; [`TestNmr::open`] then fails.
    pub fn close(&self, micros: u32) {
        let closer = std::thread::current().id();
        self.gates
            .lock()
            .insert(micros, Gate { waiters: 0, closer });
    }

    /// Opens gate `micros`, releasing every delay waiting at it. Panics if
    /// the gate had already opened itself (a delay held past its deadline).
    pub fn open(&self, micros: u32) {
        self.gates.lock().remove(&micros);
        self.gates.changed.notify_all();
        let forced = self
            .gates
            .forced
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        assert!(
            !forced.contains(&micros),
            "gate {micros} opened itself: a delay was held there past {GATE_DEADLINE:?}"
        );
    }

    /// Blocks until `count` delays are waiting at the closed gate `micros`.
    /// Panics after [`GATE_DEADLINE`].
    pub fn wait_for_waiters(&self, micros: u32, count: usize) {
        let waiting = |closed: &HashMap<u32, Gate>| closed.get(&micros).map_or(0, |g| g.waiters);
        let (closed, _) = self
            .gates
            .changed
            .wait_timeout_while(self.gates.lock(), GATE_DEADLINE, |c| waiting(c) < count)
            .unwrap_or_else(PoisonError::into_inner);
        let arrived = waiting(&closed);
        assert!(
            arrived >= count,
            "gate {micros}: {arrived} of {count} delays arrived in {GATE_DEADLINE:?}"
        );
    }
}

impl Nmr for TestNmr {
    type Lock = <Sim as Nmr>::Lock;

    unsafe fn register_client(
        &self,
        c: *const NPI_CLIENT_CHARACTERISTICS,
        x: *mut c_void,
        h: *mut HANDLE,
    ) -> NTSTATUS {
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        unsafe { self.sim.register_client(c, x, h) }
    }
    unsafe fn deregister_client(&self, h: HANDLE) -> NTSTATUS {
        if let Some(status) = self.forced_deregister_failure() {
            return status;
        }
        // SAFETY: forwarded unchanged.
        unsafe { self.sim.deregister_client(h) }
    }
    unsafe fn wait_for_client_deregister_complete(&self, h: HANDLE) -> NTSTATUS {
        // SAFETY: forwarded unchanged.
        unsafe { self.sim.wait_for_client_deregister_complete(h) }
    }
    unsafe fn client_attach_provider(
        &self,
        b: HANDLE,
        ctx: *mut c_void,
        d: *const c_void,
        pctx: *mut *mut c_void,
        pd: *mut *const c_void,
    ) -> NTSTATUS {
        // SAFETY: forwarded unchanged.
        unsafe { self.sim.client_attach_provider(b, ctx, d, pctx, pd) }
    }
    unsafe fn client_detach_provider_complete(&self, b: HANDLE) {
        // SAFETY: forwarded unchanged.
        unsafe { self.sim.client_detach_provider_complete(b) }
    }
    unsafe fn register_provider(
        &self,
        c: *const NPI_PROVIDER_CHARACTERISTICS,
        x: *mut c_void,
        h: *mut HANDLE,
    ) -> NTSTATUS {
        // SAFETY: forwarded unchanged.
        unsafe { self.sim.register_provider(c, x, h) }
    }
    unsafe fn deregister_provider(&self, h: HANDLE) -> NTSTATUS {
        if let Some(status) = self.forced_deregister_failure() {
            return status;
        }
        // SAFETY: forwarded unchanged.
        unsafe { self.sim.deregister_provider(h) }
    }
    unsafe fn wait_for_provider_deregister_complete(&self, h: HANDLE) -> NTSTATUS {
        // SAFETY: forwarded unchanged.
        unsafe { self.sim.wait_for_provider_deregister_complete(h) }
    }
    unsafe fn provider_detach_client_complete(&self, b: HANDLE) {
        // SAFETY: forwarded unchanged.
        unsafe { self.sim.provider_detach_client_complete(b) }
    }
    fn trace(&self, record: &Record<'_>) {
        self.sim.trace(record);
        if let Some(observer) = &*self.observer.lock().unwrap() {
            observer(record);
        }
    }
    fn delay(&self, micros: u32) {
        nmr_sim::irql::assert_can_block("a module's delay");
        let mut closed = self.gates.lock();
        if let Some(gate) = closed.get_mut(&micros) {
            gate.waiters += 1;
            self.gates.changed.notify_all();
            // Bounded: a test that never opens the gate (or is stuck
            // elsewhere) gets its thread back, and `open` reports it.
            let (mut closed, held) = self
                .gates
                .changed
                .wait_timeout_while(closed, GATE_DEADLINE, |c| c.contains_key(&micros))
                .unwrap_or_else(PoisonError::into_inner);
            if held.timed_out() {
                closed.remove(&micros);
                self.gates
                    .forced
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(micros);
                eprintln!("gate {micros}: held past {GATE_DEADLINE:?}; it opens itself");
                self.gates.changed.notify_all();
            }
            return;
        }
        drop(closed);
        self.sim.delay(micros);
    }
    fn processor_count(&self) -> u32 {
        self.sim.processor_count()
    }
    fn current_processor(&self) -> u32 {
        self.sim.current_processor()
    }
    fn incoming_call(&self, callee_binding: HANDLE) {
        self.sim.incoming_call(callee_binding);
    }
}

/// Module ids: distinct per instance, so several clients and providers can
/// share one model.
pub fn module_id(kind: u8, index: u32) -> GUID {
    GUID::from_u128(
        0x7e57_0000_0000_4000_8000_0000_0000_0000 | (u128::from(kind) << 64) | u128::from(index),
    )
}

/// Trace names for module instances (`&'static` as the modules need).
pub fn instance_name(prefix: &str, index: u32) -> &'static str {
    static NAMES: Mutex<Vec<(String, &'static str)>> = Mutex::new(Vec::new());
    let wanted = if index == 0 {
        prefix.to_owned()
    } else {
        format!("{prefix}#{index}")
    };
    let mut names = NAMES.lock().unwrap();
    if let Some((_, name)) = names.iter().find(|(n, _)| *n == wanted) {
        return name;
    }
    let name: &'static str = Box::leak(wanted.clone().into_boxed_str());
    names.push((wanted, name));
    name
}

/// A client config for instance `index` (0 is the real driver's name and id).
pub fn client_config(index: u32) -> ClientConfig {
    ClientConfig {
        name: instance_name(nmr_client_module::client::NAME, index),
        module_id: module_id(1, index),
        ..ClientConfig::default()
    }
}

/// A provider config for instance `index`.
pub fn provider_config(index: u32) -> ProviderConfig {
    ProviderConfig {
        name: instance_name(nmr_provider_module::provider::NAME, index),
        module_id: module_id(2, index),
        ..ProviderConfig::default()
    }
}

/// Versions no build of this NPI speaks: a peer that must be declined.
pub const FUTURE_VERSIONS: VersionRange = VersionRange { min: 2, max: 3 };

/// Loads a client into the model.
pub fn load_client(nmr: &TestNmr, config: ClientConfig) -> Client<TestNmr> {
    ClientModule::load(nmr.clone(), config).expect("client registers")
}

/// Loads a provider into the model.
pub fn load_provider(nmr: &TestNmr, config: ProviderConfig) -> Provider<TestNmr> {
    ProviderModule::load(nmr.clone(), config).expect("provider registers")
}

/// The payload the workers checksum.
pub fn payload(seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let len = rng.usize(1..=1500);
    (0..len).map(|_| rng.u8(..)).collect()
}
