//! Small NMR modules written for the conformance suite (not the real drivers).
//!
//! A [`TestModule`] is one registration, client or provider, with raw
//! `extern "system"` callbacks and a [`Behaviour`] the test sets: accept or
//! decline, how the detach callback answers, gates that hold a callback until
//! the test releases it, and hooks for misuse. Its binding contexts are
//! [`TestBinding`]s (an `Arc` leaked at attach, taken back at cleanup; the
//! module keeps a clone so a test can look at a binding after cleanup).
//!
//! A "call in flight" is a [`TestBinding::begin_call`] that has not been
//! ended: the call into the peer's dispatch table happens at once (so the
//! model sees it through `incoming_call`), and the call counts as in flight
//! until the test calls [`TestBinding::end_call`]. No sleeps anywhere.

#![allow(dead_code)]

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use nmr_common::ffi::*;
use nmr_common::nmr::Nmr;
use nmr_sim::{Side, Sim};

/// Two NPIs.
pub const NPI_A: GUID = GUID::from_u128(0xa1a1_a1a1_0000_4000_8000_0000_0000_00a1);
/// The second NPI.
pub const NPI_B: GUID = GUID::from_u128(0xb2b2_b2b2_0000_4000_8000_0000_0000_00b2);

/// The test NPI's dispatch table (both directions use the same shape).
#[repr(C)]
pub struct TestDispatch {
    /// One call into the peer; `context` is the peer's binding context.
    pub call: unsafe extern "system" fn(context: *mut c_void) -> NTSTATUS,
}

/// The client's dispatch table (provider -> client "notifications").
pub static CLIENT_DISPATCH: TestDispatch = TestDispatch {
    call: dispatch_call,
};
/// The provider's dispatch table (client -> provider calls).
pub static PROVIDER_DISPATCH: TestDispatch = TestDispatch {
    call: dispatch_call,
};

/// How a detach callback answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// PENDING if calls are in flight (the last `end_call` completes), else SUCCESS.
    Auto,
    /// Always PENDING; the test completes with [`TestBinding::complete`].
    Pending,
    /// Always SUCCESS (misuse when calls are in flight).
    Success,
    /// This status (misuse).
    Status(NTSTATUS),
}

/// A point where a callback stops until the test lets it go.
pub struct Gate {
    entered: Mutex<Sender<()>>,
    release: Mutex<Receiver<()>>,
}

/// The test's end of a [`Gate`].
pub struct GateCtl {
    entered: Receiver<()>,
    release: Sender<()>,
}

/// A gate and its control.
pub fn gate() -> (Arc<Gate>, GateCtl) {
    let (etx, erx) = channel();
    let (rtx, rrx) = channel();
    (
        Arc::new(Gate {
            entered: Mutex::new(etx),
            release: Mutex::new(rrx),
        }),
        GateCtl {
            entered: erx,
            release: rtx,
        },
    )
}

impl Gate {
    /// Waits to be let through; opens itself when the test's control is
    /// dropped (the test panicked) or after [`nmr_sim::WAIT_DEADLINE`].
    fn pass(&self) {
        let _ = self.entered.lock().unwrap().send(());
        let _ = self
            .release
            .lock()
            .unwrap()
            .recv_timeout(nmr_sim::WAIT_DEADLINE);
    }
}

impl GateCtl {
    /// Blocks until a callback has reached the gate.
    pub fn wait_entered(&self) {
        self.entered
            .recv_timeout(nmr_sim::WAIT_DEADLINE)
            .expect("a callback reaches the gate in time");
    }
    /// Lets one callback through.
    pub fn release(&self) {
        self.release.send(()).expect("gate released");
    }
}

/// Runs inside a detach callback, before it answers.
pub type DetachHook = Arc<dyn Fn(&TestModule, &Arc<TestBinding>) + Send + Sync>;
/// Runs instead of the client's attach logic; returns its status.
pub type AttachHook = Arc<dyn Fn(&TestModule, HANDLE) -> NTSTATUS + Send + Sync>;
/// Runs at the start of `ClientAttachProvider`, before the normal logic.
pub type PreAttachHook = Arc<dyn Fn(&TestModule) + Send + Sync>;
/// Runs inside a cleanup callback.
pub type CleanupHook = Arc<dyn Fn(&TestModule, &Arc<TestBinding>) + Send + Sync>;

/// What a module does.
#[derive(Clone)]
pub struct Behaviour {
    /// Decline every offer with `STATUS_NOINTERFACE`.
    pub decline: bool,
    /// How the detach callback answers.
    pub reply: Reply,
    /// Provider only: accept without setting a dispatch table (misuse).
    pub null_dispatch: bool,
    /// Held on entry to the detach callback.
    pub detach_gate: Option<Arc<Gate>>,
    /// Held on entry to `ClientAttachProvider`.
    pub attach_gate: Option<Arc<Gate>>,
    /// Runs in the detach callback before it answers.
    pub on_detach: Option<DetachHook>,
    /// Client only: replaces the attach logic.
    pub on_attach: Option<AttachHook>,
    /// Client only: runs first in the attach callback.
    pub pre_attach: Option<PreAttachHook>,
    /// Runs in the cleanup callback.
    pub on_cleanup: Option<CleanupHook>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            decline: false,
            reply: Reply::Auto,
            null_dispatch: false,
            detach_gate: None,
            attach_gate: None,
            on_detach: None,
            on_attach: None,
            pre_attach: None,
            on_cleanup: None,
        }
    }
}

/// A callback the module saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cb {
    /// Attach callback entered (binding handle).
    AttachOffered(usize),
    /// Attached (binding handle).
    Attached(usize),
    /// The attach failed with this status (binding handle, status).
    Declined(usize, NTSTATUS),
    /// Detach callback answered (binding handle, status).
    Detach(usize, NTSTATUS),
    /// Cleanup callback (binding handle).
    Cleanup(usize),
}

static NEXT_MODULE: AtomicU32 = AtomicU32::new(1);

/// One registration of a test module.
pub struct TestModule {
    me: std::sync::Weak<TestModule>,
    /// Its name (also registered with the model).
    pub name: &'static str,
    /// Client or provider.
    pub side: Side,
    /// The model.
    pub sim: Sim,
    npi: Box<GUID>,
    module_id: Box<NPI_MODULEID>,
    client_chars: Box<NPI_CLIENT_CHARACTERISTICS>,
    provider_chars: Box<NPI_PROVIDER_CHARACTERISTICS>,
    handle: AtomicUsize,
    behaviour: Mutex<Behaviour>,
    seen: Mutex<Vec<Cb>>,
    bindings: Mutex<Vec<Arc<TestBinding>>>,
    unloaded: AtomicBool,
    /// Callbacks that arrived after `unload` returned (must stay 0).
    pub after_unload: AtomicUsize,
}

impl TestModule {
    /// A client of `npi`.
    pub fn client(sim: &Sim, name: &'static str, npi: GUID) -> Arc<TestModule> {
        Self::new(sim, name, npi, Side::Client, None)
    }

    /// A provider of `npi`.
    pub fn provider(sim: &Sim, name: &'static str, npi: GUID) -> Arc<TestModule> {
        Self::new(sim, name, npi, Side::Provider, None)
    }

    /// A registration with an explicit module id (one module, two roles).
    pub fn new(
        sim: &Sim,
        name: &'static str,
        npi: GUID,
        side: Side,
        module_guid: Option<GUID>,
    ) -> Arc<TestModule> {
        let guid = module_guid.unwrap_or_else(|| {
            GUID::from_u128(
                0x7e57_0000_0000_4000_8000_0000_0000_0000
                    | u128::from(NEXT_MODULE.fetch_add(1, Ordering::Relaxed)),
            )
        });
        sim.name_module(guid, name);
        let npi = Box::new(npi);
        let module_id = Box::new(NPI_MODULEID::from_guid(guid));
        let instance = NPI_REGISTRATION_INSTANCE {
            Version: 0,
            Size: size_of::<NPI_REGISTRATION_INSTANCE>() as u16,
            NpiId: &*npi,
            ModuleId: &*module_id,
            Number: 0,
            NpiSpecificCharacteristics: ptr::null(),
        };
        Arc::new_cyclic(|me| TestModule {
            me: me.clone(),
            name,
            side,
            sim: sim.clone(),
            client_chars: Box::new(NPI_CLIENT_CHARACTERISTICS {
                Version: 0,
                Length: size_of::<NPI_CLIENT_CHARACTERISTICS>() as u16,
                ClientAttachProvider: Some(client_attach),
                ClientDetachProvider: Some(detach),
                ClientCleanupBindingContext: Some(cleanup),
                ClientRegistrationInstance: instance,
            }),
            provider_chars: Box::new(NPI_PROVIDER_CHARACTERISTICS {
                Version: 0,
                Length: size_of::<NPI_PROVIDER_CHARACTERISTICS>() as u16,
                ProviderAttachClient: Some(provider_attach),
                ProviderDetachClient: Some(detach),
                ProviderCleanupBindingContext: Some(cleanup),
                ProviderRegistrationInstance: instance,
            }),
            npi,
            module_id,
            handle: AtomicUsize::new(0),
            behaviour: Mutex::new(Behaviour::default()),
            seen: Mutex::new(Vec::new()),
            bindings: Mutex::new(Vec::new()),
            unloaded: AtomicBool::new(false),
            after_unload: AtomicUsize::new(0),
        })
    }

    /// Changes the behaviour.
    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.behaviour.lock().unwrap());
    }

    fn behaviour(&self) -> Behaviour {
        self.behaviour.lock().unwrap().clone()
    }

    /// The client characteristics, for misuse tests to copy and break.
    pub fn client_chars(&self) -> NPI_CLIENT_CHARACTERISTICS {
        *self.client_chars
    }

    /// The provider characteristics, for misuse tests to copy and break.
    pub fn provider_chars(&self) -> NPI_PROVIDER_CHARACTERISTICS {
        *self.provider_chars
    }

    /// `NmrRegister*`; the handle is kept.
    pub fn register(self: &Arc<Self>) -> NTSTATUS {
        self.unloaded.store(false, Ordering::SeqCst);
        let context = Arc::as_ptr(self).cast_mut().cast::<c_void>();
        // The model writes the handle before any attach callback runs, so
        // hooks can use it from there: hand it the atomic's own storage.
        let handle = self.handle.as_ptr().cast::<HANDLE>();
        // SAFETY: the characteristics and the module live as long as the
        // test's Arc, beyond the wait; `handle` is writable (usize and HANDLE
        // have one size), and nothing else writes it during the call.
        unsafe {
            match self.side {
                Side::Client => self
                    .sim
                    .register_client(&*self.client_chars, context, handle),
                Side::Provider => {
                    self.sim
                        .register_provider(&*self.provider_chars, context, handle)
                }
            }
        }
    }

    /// The registration handle.
    pub fn handle(&self) -> HANDLE {
        self.handle.load(Ordering::SeqCst) as HANDLE
    }

    /// `NmrDeregister*`.
    pub fn deregister(&self) -> NTSTATUS {
        // SAFETY: the handle came from register (misuse tests break this on purpose).
        unsafe {
            match self.side {
                Side::Client => self.sim.deregister_client(self.handle()),
                Side::Provider => self.sim.deregister_provider(self.handle()),
            }
        }
    }

    /// `NmrWaitFor*DeregisterComplete`.
    pub fn wait(&self) -> NTSTATUS {
        // SAFETY: as for deregister.
        unsafe {
            match self.side {
                Side::Client => self.sim.wait_for_client_deregister_complete(self.handle()),
                Side::Provider => self
                    .sim
                    .wait_for_provider_deregister_complete(self.handle()),
            }
        }
    }

    /// What a driver's unload does: deregister, wait on PENDING; afterwards
    /// any callback into this module counts in `after_unload`.
    pub fn unload(&self) -> NTSTATUS {
        let status = match self.deregister() {
            STATUS_PENDING => self.wait(),
            other => other,
        };
        self.unloaded.store(true, Ordering::SeqCst);
        status
    }

    fn check_loaded(&self) {
        if self.unloaded.load(Ordering::SeqCst) {
            self.after_unload.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn saw(&self, cb: Cb) {
        self.seen.lock().unwrap().push(cb);
    }

    /// The callbacks this module saw, in order.
    pub fn seen(&self) -> Vec<Cb> {
        self.seen.lock().unwrap().clone()
    }

    /// How many of the seen callbacks match `f`.
    pub fn count(&self, f: impl Fn(&Cb) -> bool) -> usize {
        self.seen().iter().filter(|c| f(c)).count()
    }

    /// Every binding this module ever made (cleaned ones included).
    pub fn bindings(&self) -> Vec<Arc<TestBinding>> {
        self.bindings.lock().unwrap().clone()
    }

    /// The bindings not yet cleaned up.
    pub fn live(&self) -> Vec<Arc<TestBinding>> {
        self.bindings()
            .into_iter()
            .filter(|b| !b.cleaned.load(Ordering::SeqCst))
            .collect()
    }

    /// The one binding (panics unless exactly one is live).
    pub fn only(&self) -> Arc<TestBinding> {
        let live = self.live();
        assert_eq!(
            live.len(),
            1,
            "{}: expected exactly one live binding",
            self.name
        );
        live[0].clone()
    }

    /// Forgets bindings already cleaned up (long loops).
    pub fn prune(&self) {
        self.bindings
            .lock()
            .unwrap()
            .retain(|b| !b.cleaned.load(Ordering::SeqCst));
    }

    fn new_binding(&self, handle: HANDLE) -> Arc<TestBinding> {
        Arc::new(TestBinding {
            owner: self.me.clone(),
            module: self.name,
            side: self.side,
            sim: self.sim.clone(),
            handle: handle as usize,
            peer_context: AtomicUsize::new(0),
            peer_dispatch: AtomicUsize::new(0),
            state: Mutex::new(BindingState::default()),
            cleaned: AtomicBool::new(false),
            detach_calls: AtomicUsize::new(0),
            cleanup_calls: AtomicUsize::new(0),
            calls_received: AtomicUsize::new(0),
            calls_after_cleanup: AtomicUsize::new(0),
        })
    }
}

#[derive(Default, Debug)]
struct BindingState {
    in_flight: usize,
    detaching: bool,
    /// Auto reply answered PENDING: the last end_call completes.
    auto_pending: bool,
}

/// One side of one binding of a test module: its binding context.
pub struct TestBinding {
    owner: std::sync::Weak<TestModule>,
    /// The owner's name.
    pub module: &'static str,
    /// The owner's side.
    pub side: Side,
    sim: Sim,
    /// This side's NMR binding handle.
    pub handle: usize,
    peer_context: AtomicUsize,
    peer_dispatch: AtomicUsize,
    state: Mutex<BindingState>,
    /// Cleanup ran.
    pub cleaned: AtomicBool,
    /// Detach callbacks received.
    pub detach_calls: AtomicUsize,
    /// Cleanup callbacks received.
    pub cleanup_calls: AtomicUsize,
    /// Calls the peer made into this side.
    pub calls_received: AtomicUsize,
    /// Calls the peer made into this side after its cleanup.
    pub calls_after_cleanup: AtomicUsize,
}

/// A call in flight; end it with [`TestBinding::end_call`].
#[must_use = "a call stays in flight until end_call"]
pub struct InFlight;

impl TestBinding {
    /// The peer's binding context.
    pub fn peer_context(&self) -> usize {
        self.peer_context.load(Ordering::SeqCst)
    }

    /// The peer's dispatch table.
    pub fn peer_dispatch(&self) -> usize {
        self.peer_dispatch.load(Ordering::SeqCst)
    }

    /// Starts a call into the peer, refused (`None`) once detach began.
    pub fn begin_call(&self) -> Option<InFlight> {
        {
            let mut st = self.state.lock().unwrap();
            if st.detaching || self.peer_dispatch() == 0 {
                return None;
            }
            st.in_flight += 1;
        }
        self.call_peer();
        Some(InFlight)
    }

    /// Ends a call; the last one of a detaching binding completes the detach.
    pub fn end_call(&self, call: InFlight) {
        let _ = call;
        let complete = {
            let mut st = self.state.lock().unwrap();
            st.in_flight -= 1;
            st.in_flight == 0 && st.detaching && std::mem::take(&mut st.auto_pending)
        };
        if complete {
            self.complete();
        }
    }

    /// Calls the peer whatever the state (misuse: a call after detach).
    pub fn call_peer(&self) {
        let dispatch = self.peer_dispatch() as *const TestDispatch;
        assert!(!dispatch.is_null());
        // SAFETY: the peer's dispatch table is one of the statics above, and
        // its context an Arc<TestBinding> that the peer module keeps alive.
        unsafe { ((*dispatch).call)(self.peer_context() as *mut c_void) };
    }

    /// Whether the detach callback ran.
    pub fn detaching(&self) -> bool {
        self.state.lock().unwrap().detaching
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> usize {
        self.state.lock().unwrap().in_flight
    }

    /// `Nmr*DetachComplete` for this side.
    pub fn complete(&self) {
        // SAFETY: the handle is this side's binding handle (misuse tests
        // call this at wrong times on purpose; the model checks).
        unsafe {
            match self.side {
                Side::Client => self
                    .sim
                    .client_detach_provider_complete(self.handle as HANDLE),
                Side::Provider => self
                    .sim
                    .provider_detach_client_complete(self.handle as HANDLE),
            }
        }
    }
}

/// # Safety
/// `module` is the context registered: a live `TestModule`.
unsafe fn module<'a>(context: *mut c_void) -> &'a TestModule {
    // SAFETY: the caller passes the registration context.
    unsafe { &*context.cast::<TestModule>() }
}

/// # Safety
/// `context` is a binding context this suite made with `Arc::into_raw`.
unsafe fn binding(context: *mut c_void) -> Arc<TestBinding> {
    let ptr = context.cast_const().cast::<TestBinding>();
    // SAFETY: made by Arc::into_raw and not yet taken back (cleanup takes it
    // back last); take a new strong count for the caller.
    unsafe {
        Arc::increment_strong_count(ptr);
        Arc::from_raw(ptr)
    }
}

unsafe extern "system" fn dispatch_call(context: *mut c_void) -> NTSTATUS {
    // SAFETY: the peer passes our binding context; the module list keeps the
    // Arc alive even after cleanup.
    let b = unsafe { binding(context) };
    if b.cleaned.load(Ordering::SeqCst) {
        b.calls_after_cleanup.fetch_add(1, Ordering::SeqCst);
    }
    b.sim.incoming_call(b.handle as HANDLE);
    b.calls_received.fetch_add(1, Ordering::SeqCst);
    STATUS_SUCCESS
}

unsafe extern "system" fn client_attach(
    handle: HANDLE,
    context: *mut c_void,
    _provider: *const NPI_REGISTRATION_INSTANCE,
) -> NTSTATUS {
    // SAFETY: our registration context.
    let m = unsafe { module(context) };
    m.check_loaded();
    m.saw(Cb::AttachOffered(handle as usize));
    let bh = m.behaviour();
    if let Some(g) = &bh.attach_gate {
        g.pass();
    }
    if let Some(hook) = &bh.pre_attach {
        hook(m);
    }
    if let Some(hook) = &bh.on_attach {
        return hook(m, handle);
    }
    if bh.decline {
        m.saw(Cb::Declined(handle as usize, STATUS_NOINTERFACE));
        return STATUS_NOINTERFACE;
    }
    m.attach_to_provider(handle)
}

impl TestModule {
    /// The client's normal attach: a new binding context, then
    /// `NmrClientAttachProvider`; on failure the context is freed here (R3).
    /// Hooks call it to misbehave around a real attach.
    pub fn attach_to_provider(&self, handle: HANDLE) -> NTSTATUS {
        let m = self;
        let b = m.new_binding(handle);
        let raw = Arc::into_raw(b.clone()).cast_mut().cast::<c_void>();
        let mut pctx: *mut c_void = ptr::null_mut();
        let mut pdisp: *const c_void = ptr::null();
        // SAFETY: inside our attach callback for this handle; the context and the
        // static dispatch table outlive the binding; the out slots are locals.
        let status = unsafe {
            m.sim.client_attach_provider(
                handle,
                raw,
                ptr::from_ref(&CLIENT_DISPATCH).cast(),
                &mut pctx,
                &mut pdisp,
            )
        };
        if nt_success(status) {
            b.peer_context.store(pctx as usize, Ordering::SeqCst);
            b.peer_dispatch.store(pdisp as usize, Ordering::SeqCst);
            m.bindings.lock().unwrap().push(b);
            m.saw(Cb::Attached(handle as usize));
        } else {
            // R3: no detach or cleanup will come: free our own context now.
            // SAFETY: `raw` came from Arc::into_raw above and nobody else has it.
            drop(unsafe { Arc::from_raw(raw.cast_const().cast::<TestBinding>()) });
            m.saw(Cb::Declined(handle as usize, status));
        }
        status
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "system" fn provider_attach(
    handle: HANDLE,
    context: *mut c_void,
    _client: *const NPI_REGISTRATION_INSTANCE,
    client_context: *mut c_void,
    client_dispatch: *const c_void,
    out_context: *mut *mut c_void,
    out_dispatch: *mut *const c_void,
) -> NTSTATUS {
    // SAFETY: our registration context.
    let m = unsafe { module(context) };
    m.check_loaded();
    m.saw(Cb::AttachOffered(handle as usize));
    let bh = m.behaviour();
    if bh.decline {
        m.saw(Cb::Declined(handle as usize, STATUS_NOINTERFACE));
        return STATUS_NOINTERFACE;
    }
    let b = m.new_binding(handle);
    b.peer_context
        .store(client_context as usize, Ordering::SeqCst);
    b.peer_dispatch
        .store(client_dispatch as usize, Ordering::SeqCst);
    let raw = Arc::into_raw(b.clone()).cast_mut().cast::<c_void>();
    let dispatch: *const c_void = if bh.null_dispatch {
        ptr::null()
    } else {
        ptr::from_ref(&PROVIDER_DISPATCH).cast()
    };
    // SAFETY: the NMR gives writable out slots.
    unsafe {
        *out_context = raw;
        *out_dispatch = dispatch;
    }
    m.bindings.lock().unwrap().push(b);
    m.saw(Cb::Attached(handle as usize));
    STATUS_SUCCESS
}

unsafe extern "system" fn detach(context: *mut c_void) -> NTSTATUS {
    // SAFETY: our binding context, valid until cleanup.
    let b = unsafe { binding(context) };
    let m = find_module(&b);
    if let Some(m) = &m {
        m.check_loaded();
    }
    b.detach_calls.fetch_add(1, Ordering::SeqCst);
    let bh = m.as_ref().map(|m| m.behaviour()).unwrap_or_default();
    if let Some(g) = &bh.detach_gate {
        g.pass();
    }
    let status = match bh.reply {
        Reply::Auto => {
            let mut st = b.state.lock().unwrap();
            st.detaching = true;
            if st.in_flight == 0 {
                STATUS_SUCCESS
            } else {
                st.auto_pending = true;
                STATUS_PENDING
            }
        }
        Reply::Pending => {
            b.state.lock().unwrap().detaching = true;
            STATUS_PENDING
        }
        Reply::Success => {
            b.state.lock().unwrap().detaching = true;
            STATUS_SUCCESS
        }
        Reply::Status(s) => {
            b.state.lock().unwrap().detaching = true;
            s
        }
    };
    if let (Some(hook), Some(m)) = (&bh.on_detach, &m) {
        hook(m, &b);
    }
    if let Some(m) = &m {
        m.saw(Cb::Detach(b.handle, status));
    }
    status
}

unsafe extern "system" fn cleanup(context: *mut c_void) {
    // SAFETY: made by Arc::into_raw at attach; the NMR hands it back once.
    let b = unsafe { Arc::from_raw(context.cast_const().cast::<TestBinding>()) };
    b.cleanup_calls.fetch_add(1, Ordering::SeqCst);
    b.cleaned.store(true, Ordering::SeqCst);
    if let Some(m) = find_module(&b) {
        m.check_loaded();
        m.saw(Cb::Cleanup(b.handle));
        if let Some(hook) = m.behaviour().on_cleanup {
            hook(&m, &b);
        }
    }
}

fn find_module(b: &TestBinding) -> Option<Arc<TestModule>> {
    b.owner.upgrade()
}

// SAFETY: the raw pointers in the characteristics point into the module's own
// boxes (NPI id, module id), which are never written after construction; the
// rest is atomics and mutexes.
unsafe impl Send for TestModule {}
// SAFETY: as above.
unsafe impl Sync for TestModule {}
