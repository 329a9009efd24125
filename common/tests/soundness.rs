//! F1-F5 of the soundness review: what safe code could do with the API
//! before, shown impossible now. The compile-time halves are `compile_fail`
//! doctests in the crate root ("What safe code cannot do"); these are the
//! run-time halves: the paths that remain do the right thing. Miri runs this
//! file in CI (`.ci/run`, miri step).

use std::ffi::c_void;
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex};

use nmr_common::arena::SlotArena;
use nmr_common::binding::{AlreadyPublished, Binding, detach_callback};
use nmr_common::ffi::*;
use nmr_common::module::ModuleCore;
use nmr_common::nmr::Nmr;
use nmr_common::npi::VersionRange;
use nmr_common::sync::FlagLock;
use nmr_common::trace::Record;

/// Records what the module asked of the NMR.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Recorder {
    fn log(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
    fn seen(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn count(&self, what: &str) -> usize {
        self.seen().iter().filter(|s| s.starts_with(what)).count()
    }
}

const CLIENT_HANDLE: usize = 0xc1;
const PROVIDER_HANDLE: usize = 0xb2;

impl Nmr for Recorder {
    type Lock = FlagLock;
    unsafe fn register_client(
        &self,
        _: *const NPI_CLIENT_CHARACTERISTICS,
        _: *mut c_void,
        handle: *mut HANDLE,
    ) -> NTSTATUS {
        // SAFETY: the caller passes a writable handle slot.
        unsafe { handle.write(ptr::without_provenance_mut(CLIENT_HANDLE)) };
        STATUS_SUCCESS
    }
    unsafe fn deregister_client(&self, handle: HANDLE) -> NTSTATUS {
        self.log(format!("deregister_client {handle:p}"));
        STATUS_SUCCESS
    }
    unsafe fn wait_for_client_deregister_complete(&self, _: HANDLE) -> NTSTATUS {
        STATUS_SUCCESS
    }
    unsafe fn client_attach_provider(
        &self,
        _: HANDLE,
        _: *mut c_void,
        _: *const c_void,
        _: *mut *mut c_void,
        _: *mut *const c_void,
    ) -> NTSTATUS {
        STATUS_SUCCESS
    }
    unsafe fn client_detach_provider_complete(&self, handle: HANDLE) {
        self.log(format!("client_detach_provider_complete {handle:p}"));
    }
    unsafe fn register_provider(
        &self,
        _: *const NPI_PROVIDER_CHARACTERISTICS,
        _: *mut c_void,
        handle: *mut HANDLE,
    ) -> NTSTATUS {
        // SAFETY: the caller passes a writable handle slot.
        unsafe { handle.write(ptr::without_provenance_mut(PROVIDER_HANDLE)) };
        STATUS_SUCCESS
    }
    unsafe fn deregister_provider(&self, handle: HANDLE) -> NTSTATUS {
        self.log(format!("deregister_provider {handle:p}"));
        STATUS_SUCCESS
    }
    unsafe fn wait_for_provider_deregister_complete(&self, _: HANDLE) -> NTSTATUS {
        STATUS_SUCCESS
    }
    unsafe fn provider_detach_client_complete(&self, handle: HANDLE) {
        self.log(format!("provider_detach_client_complete {handle:p}"));
    }
    fn trace(&self, _: &Record<'_>) {}
    fn delay(&self, _: u32) {}
    fn processor_count(&self) -> u32 {
        2
    }
    fn current_processor(&self) -> u32 {
        0
    }
}

struct Table;
static TABLE: Table = Table;
type TestBinding = Binding<Recorder, Table, ()>;

/// The rundown slots of every binding below: a static outlives them all
/// (Miri does not count what a static reaches as leaked).
static SLOTS: std::sync::LazyLock<SlotArena> = std::sync::LazyLock::new(|| SlotArena::new(2));

fn binding(nmr: &Recorder) -> Box<TestBinding> {
    // SAFETY: detached only through `detach_callback`, or never.
    unsafe {
        TestBinding::for_client(
            nmr.clone(),
            &SLOTS,
            "soundness",
            ptr::without_provenance_mut(0x77),
            (),
        )
    }
    .unwrap_or_else(|()| panic!("memory"))
}

/// F3: the only way left to begin a drain is the detach callback, and then
/// the completion comes exactly once, after it, for the binding's handle.
#[test]
fn f3_the_completion_follows_a_detach_and_only_one() {
    let nmr = Recorder::default();
    let b = binding(&nmr);
    // SAFETY: the static table, with a null context, once.
    unsafe { b.publish_peer(ptr::null_mut(), &TABLE) }.unwrap();
    let call = b.acquire().expect("callable");
    assert_eq!(nmr.count("client_detach_provider_complete"), 0);
    let raw = NonNull::from(&*b);
    // SAFETY: the NMR's detach callback on a live binding made by this test.
    let status = unsafe { detach_callback::<Recorder, Table, ()>(raw.as_ptr().cast()) };
    assert_eq!(status, STATUS_PENDING);
    assert!(b.acquire().is_none(), "no call after the detach began");
    assert_eq!(
        nmr.count("client_detach_provider_complete"),
        0,
        "not before the last release"
    );
    drop(call);
    assert_eq!(
        nmr.seen(),
        ["client_detach_provider_complete 0x77"],
        "one completion, with the binding's own handle"
    );
}

/// F4: a provider's registration is deregistered with the provider's
/// functions and the handle the NMR wrote, never NULL, never a client's: the
/// other side's unload is refused and deregisters nothing.
#[test]
fn f4_unload_uses_the_registering_side_and_its_handle() {
    let nmr = Recorder::default();
    let core = ModuleCore::new(nmr.clone(), "f4", GUID::from_u128(1), VersionRange::CURRENT);
    // SAFETY: the mock NMR keeps no pointer (null characteristics are never read).
    let status = unsafe { core.register_provider(ptr::null(), ptr::null_mut()) };
    assert_eq!(status, STATUS_SUCCESS);
    assert_eq!(core.unload_client(), STATUS_INVALID_PARAMETER, "wrong side");
    assert!(
        nmr.seen().is_empty(),
        "nothing deregistered: {:?}",
        nmr.seen()
    );
    assert_eq!(core.unload_provider(), STATUS_SUCCESS);
    let again = core.unload_provider();
    assert_eq!(again, STATUS_SUCCESS, "a second unload does nothing");
    assert_eq!(nmr.seen(), ["deregister_provider 0xb2"]);

    let nmr = Recorder::default();
    let core = ModuleCore::new(nmr.clone(), "f4", GUID::from_u128(2), VersionRange::CURRENT);
    // SAFETY: as above.
    unsafe { core.register_client(ptr::null(), ptr::null_mut()) };
    assert_eq!(
        core.unload_provider(),
        STATUS_INVALID_PARAMETER,
        "wrong side"
    );
    assert_eq!(core.unload_client(), STATUS_SUCCESS);
    assert_eq!(nmr.seen(), ["deregister_client 0xc1"]);
}

/// F5: the first publication stands; a second is refused whole, so a caller
/// never sees one publication's table with another's context.
#[test]
fn f5_a_second_publish_is_refused_whole() {
    let nmr = Recorder::default();
    let b = binding(&nmr);
    let first = ptr::without_provenance_mut::<c_void>(0x1000);
    let second = ptr::without_provenance_mut::<c_void>(0x2000);
    // SAFETY: the static table, with contexts the test never dereferences.
    unsafe { b.publish_peer(first, &TABLE) }.unwrap();
    // SAFETY: as above.
    let again = unsafe { b.publish_peer(second, &TABLE) };
    assert_eq!(again, Err(AlreadyPublished));
    let call = b.acquire().expect("published");
    assert_eq!(call.context(), first);
}
