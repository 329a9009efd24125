//! Out of memory: an attach whose binding cannot be allocated declines with
//! `STATUS_INSUFFICIENT_RESOURCES`, frees what it took, and leaves no binding
//! behind; a module that cannot be allocated fails to load. The allocator of
//! this test binary fails, once, the next allocation of a chosen size made on
//! the test's own thread (attach callbacks run inline on the registering
//! thread).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use nmr_client_module::client::{ClientModule, ProviderBinding};
use nmr_common::ffi::*;
use nmr_common::trace::Event;
use nmr_provider_module::provider::{ClientBinding, ProviderModule};
use nmr_sim::{Config, LogEntry, Sim};
use testbed::*;

thread_local! {
    static FAIL_NEXT_OF_SIZE: Cell<usize> = const { Cell::new(0) };
}

struct FailingOnce;

// SAFETY: forwards to the system allocator, except that it returns null (a
// legal answer) for one chosen allocation.
unsafe impl GlobalAlloc for FailingOnce {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let fail = FAIL_NEXT_OF_SIZE.try_with(|f| {
            if f.get() != 0 && f.get() == layout.size() {
                f.set(0);
                true
            } else {
                false
            }
        });
        if fail == Ok(true) {
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

fn fail_next_allocation_of(size: usize) {
    FAIL_NEXT_OF_SIZE.with(|f| f.set(size));
}

fn declined_with(nmr: &TestNmr, module: &str, status: NTSTATUS) -> bool {
    nmr.sim().events().iter().any(|e| {
        matches!(e, LogEntry::Module { event: Event::AttachDeclined, module: m, status: s, .. } if *m == module && *s == status)
    })
}

#[test]
fn client_out_of_memory_for_its_binding_declines_before_attaching() {
    let nmr = TestNmr::new(Sim::new(Config::default()));
    let provider = load_provider(&nmr, provider_config(0));
    fail_next_allocation_of(size_of::<ProviderBinding<TestNmr>>());
    let client = load_client(&nmr, client_config(0));
    assert_eq!(
        FAIL_NEXT_OF_SIZE.with(Cell::get),
        0,
        "the binding allocation was attempted and failed"
    );
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
    fail_next_allocation_of(size_of::<ClientBinding<TestNmr>>());
    let client = load_client(&nmr, client_config(0));
    assert_eq!(FAIL_NEXT_OF_SIZE.with(Cell::get), 0);
    assert!(declined_with(
        &nmr,
        "nmr_provider",
        STATUS_INSUFFICIENT_RESOURCES
    ));
    assert!(
        declined_with(&nmr, "nmr_client", STATUS_INSUFFICIENT_RESOURCES),
        "the client returns the provider's status"
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
        "a failed attach is never cleaned up by the NMR"
    );
    assert!(nmr.sim().violations().is_empty());
}

#[test]
fn a_module_that_cannot_be_allocated_fails_to_load() {
    let nmr = TestNmr::new(Sim::new(Config::default()));
    fail_next_allocation_of(size_of::<ClientModule<TestNmr>>());
    let status = ClientModule::load(nmr.clone(), client_config(0)).err();
    assert_eq!(status, Some(STATUS_INSUFFICIENT_RESOURCES));
    fail_next_allocation_of(size_of::<ProviderModule<TestNmr>>());
    let status = ProviderModule::load(nmr.clone(), provider_config(0)).err();
    assert_eq!(status, Some(STATUS_INSUFFICIENT_RESOURCES));
    assert_eq!(nmr.sim().live_registrations(), 0, "nothing was registered");
}
