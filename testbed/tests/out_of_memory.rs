//! Out of memory: an attach whose binding cannot be allocated declines with
//! `STATUS_INSUFFICIENT_RESOURCES`, frees what it took, and leaves no binding
//! behind; a module that cannot be allocated fails to load. The allocator of
//! this test binary fails, when armed, the next allocation made on the arming
//! thread. It is armed by a trace observer at the module's `attach-offered`
//! line, after which the binding is the attach callback's first allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use nmr_client_module::client::ClientModule;
use nmr_common::ffi::*;
use nmr_common::trace::Event;
use nmr_provider_module::provider::ProviderModule;
use nmr_sim::{Config, LogEntry, Sim};
use testbed::*;

thread_local! {
    static FAIL_NEXT: Cell<bool> = const { Cell::new(false) };
}

struct FailingOnce;

// SAFETY: forwards to the system allocator, except that it returns null (a
// legal answer) for the one allocation it was armed for.
unsafe impl GlobalAlloc for FailingOnce {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if FAIL_NEXT.try_with(|f| f.replace(false)) == Ok(true) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; `ptr` came from `System.alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: FailingOnce = FailingOnce;

fn fail_next_allocation() {
    FAIL_NEXT.with(|f| f.set(true));
}

fn armed() -> bool {
    FAIL_NEXT.with(Cell::get)
}

/// Fails the first allocation `module` makes after it traces `attach-offered`.
fn fail_binding_allocation_of(nmr: &TestNmr, module: &'static str) {
    nmr.observe_traces(Box::new(move |record| {
        if record.module == module && record.event == Event::AttachOffered {
            fail_next_allocation();
        }
    }));
}

fn declined_with(nmr: &TestNmr, module: &str, status: NTSTATUS) -> bool {
    nmr.sim().events().iter().any(|e| {
        matches!(e, LogEntry::Module { event: Event::AttachDeclined, module: m, status: s, .. }
            if *m == module && *s == status)
    })
}

#[test]
fn client_out_of_memory_for_its_binding_declines_before_attaching() {
    let nmr = TestNmr::new(Sim::new(Config::default()));
    let provider = load_provider(&nmr, provider_config(0));
    fail_binding_allocation_of(&nmr, "nmr_client");
    let client = load_client(&nmr, client_config(0));
    nmr.observe_traces(Box::new(|_| {}));
    assert!(!armed(), "the binding allocation was attempted and failed");
    assert!(declined_with(
        &nmr,
        "nmr_client",
        STATUS_INSUFFICIENT_RESOURCES
    ));
    assert_eq!(client.counts().declined, 1);
    assert_eq!(
        provider.counts().offered,
        0,
        "declined before NmrClientAttachProvider"
    );
    assert_eq!((client.binding_count(), nmr.sim().live_bindings()), (0, 0));
    // The next provider to come gets attached: nothing was left half-made.
    let second = load_provider(&nmr, provider_config(1));
    assert_eq!(client.binding_count(), 1);
    assert_eq!(client.call_round(b"after the failure"), 1);
    drop((client, provider, second));
    assert!(nmr.sim().violations().is_empty());
    assert_eq!(nmr.sim().live_bindings(), 0);
}

#[test]
fn provider_out_of_memory_for_its_binding_declines_and_the_client_frees_its_own() {
    let nmr = TestNmr::new(Sim::new(Config::default()));
    let provider = load_provider(&nmr, provider_config(0));
    fail_binding_allocation_of(&nmr, "nmr_provider");
    let client = load_client(&nmr, client_config(0));
    nmr.observe_traces(Box::new(|_| {}));
    assert!(!armed(), "the binding allocation was attempted and failed");
    assert!(declined_with(
        &nmr,
        "nmr_provider",
        STATUS_INSUFFICIENT_RESOURCES
    ));
    assert!(
        declined_with(&nmr, "nmr_client", STATUS_INSUFFICIENT_RESOURCES),
        "the client returns the provider's status and frees its own context"
    );
    assert_eq!(
        (client.counts().declined, provider.counts().declined),
        (1, 1)
    );
    assert_eq!(nmr.sim().stats().attaches, 0);
    assert_eq!(nmr.sim().live_bindings(), 0);
    drop((client, provider));
    let s = nmr.sim().stats();
    assert_eq!(
        (s.client_cleanups, s.provider_cleanups),
        (0, 0),
        "a failed attach is never cleaned up"
    );
    assert!(nmr.sim().violations().is_empty());
}

#[test]
fn a_module_that_cannot_be_allocated_fails_to_load() {
    let nmr = TestNmr::new(Sim::new(Config::default()));
    let (client, provider) = (client_config(0), provider_config(0));
    // The module is `load`'s first allocation.
    fail_next_allocation();
    let status = ClientModule::load(nmr.clone(), client).err();
    assert_eq!(status, Some(STATUS_INSUFFICIENT_RESOURCES));
    fail_next_allocation();
    let status = ProviderModule::load(nmr.clone(), provider).err();
    assert_eq!(status, Some(STATUS_INSUFFICIENT_RESOURCES));
    assert_eq!(nmr.sim().live_registrations(), 0, "nothing was registered");
}
