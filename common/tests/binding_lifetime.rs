//! The completion may free the binding inline: the NMR runs the cleanup
//! callbacks inside the last `Nmr*DetachComplete`. These tests make a mock
//! NMR do exactly that, so that running them under Miri
//! (`cargo +nightly miri test -p nmr-common`) checks that nothing touches a
//! binding, or holds a reference to it, once its last call has been released.

use std::ffi::c_void;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nmr_common::arena::SlotArena;
use nmr_common::binding::{Binding, BindingSet};
use nmr_common::ffi::*;
use nmr_common::nmr::Nmr;
use nmr_common::sync::FlagLock;
use nmr_common::trace::Record;

#[repr(C)]
struct Table {
    ping: extern "C" fn(*mut c_void) -> u32,
}
extern "C" fn ping(_: *mut c_void) -> u32 {
    7
}
static TABLE: Table = Table { ping };

type TestBinding = Binding<FreeingNmr, Table, u64>;

/// A mock NMR whose client completion is the last completion of the binding:
/// it runs the cleanup inline, which unlinks and frees the binding.
#[derive(Clone, Default)]
struct FreeingNmr(Arc<State>);

#[derive(Default)]
struct State {
    binding: AtomicPtr<TestBinding>,
    set: Mutex<Option<Arc<BindingSet<FreeingNmr, Table, u64>>>>,
    completions: AtomicUsize,
}

impl Nmr for FreeingNmr {
    type Lock = FlagLock;
    unsafe fn register_client(
        &self,
        _: *const NPI_CLIENT_CHARACTERISTICS,
        _: *mut c_void,
        _: *mut HANDLE,
    ) -> NTSTATUS {
        unreachable!()
    }
    unsafe fn deregister_client(&self, _: HANDLE) -> NTSTATUS {
        unreachable!()
    }
    unsafe fn wait_for_client_deregister_complete(&self, _: HANDLE) -> NTSTATUS {
        unreachable!()
    }
    unsafe fn client_attach_provider(
        &self,
        _: HANDLE,
        _: *mut c_void,
        _: *const c_void,
        _: *mut *mut c_void,
        _: *mut *const c_void,
    ) -> NTSTATUS {
        unreachable!()
    }
    unsafe fn client_detach_provider_complete(&self, _: HANDLE) {
        self.0.completions.fetch_add(1, Ordering::Relaxed);
        let binding = NonNull::new(self.0.binding.swap(ptr::null_mut(), Ordering::AcqRel))
            .expect("one completion");
        if let Some(set) = &*self.0.set.lock().unwrap() {
            assert!(set.remove(binding));
        }
        // SAFETY: both sides are done (this mock's provider side detached with
        // SUCCESS), and the binding is unlinked: the cleanup frees it.
        unsafe { TestBinding::destroy(binding) };
    }
    unsafe fn register_provider(
        &self,
        _: *const NPI_PROVIDER_CHARACTERISTICS,
        _: *mut c_void,
        _: *mut HANDLE,
    ) -> NTSTATUS {
        unreachable!()
    }
    unsafe fn deregister_provider(&self, _: HANDLE) -> NTSTATUS {
        unreachable!()
    }
    unsafe fn wait_for_provider_deregister_complete(&self, _: HANDLE) -> NTSTATUS {
        unreachable!()
    }
    unsafe fn provider_detach_client_complete(&self, _: HANDLE) {
        unreachable!("these bindings are client sides")
    }
    fn trace(&self, _: &Record<'_>) {}
    fn delay(&self, _: u32) {}
    fn processor_count(&self) -> u32 {
        PROCESSORS
    }
    fn current_processor(&self) -> u32 {
        thread_processor()
    }
}

/// Three processors, so that the threads below acquire on different slots
/// of each rundown and different reader locks of the set.
const PROCESSORS: u32 = 3;

/// A processor per thread, in the order threads first ask (a stand-in for
/// `KeGetCurrentProcessorNumberEx` that Miri can run).
fn thread_processor() -> u32 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: u32 = (NEXT.fetch_add(1, Ordering::Relaxed) % PROCESSORS as usize) as u32;
    }
    MINE.with(|p| *p)
}

/// The rundown slots of every binding below: a static outlives them all
/// (Miri does not count what a static reaches as leaked).
static SLOTS: std::sync::LazyLock<SlotArena> =
    std::sync::LazyLock::new(|| SlotArena::new(PROCESSORS as usize));

fn new_binding(nmr: &FreeingNmr) -> NonNull<TestBinding> {
    // SAFETY: the test NMR's completion frees nothing but the binding, and
    // the binding is only detached through `detach_callback`.
    let binding =
        unsafe { TestBinding::for_client(nmr.clone(), &SLOTS, "lifetime", ptr::null_mut(), 0) }
            .ok()
            .unwrap();
    // SAFETY: the static table, with the (null) context the tests pair it with.
    unsafe { binding.publish_peer(ptr::null_mut(), &TABLE) }.unwrap();
    let binding = NonNull::from(Box::leak(binding));
    nmr.0.binding.store(binding.as_ptr(), Ordering::Release);
    binding
}

#[test]
fn the_last_call_frees_the_binding_inline() {
    let nmr = FreeingNmr::default();
    let binding = new_binding(&nmr);
    let call = {
        // SAFETY: live: it is freed only by the completion below.
        let b = unsafe { binding.as_ref() };
        b.acquire().unwrap()
    };
    assert_eq!((call.dispatch().ping)(call.context()), 7);
    // SAFETY: live; `detach` touches nothing after the drain.
    assert_eq!(unsafe { TestBinding::detach(binding) }, STATUS_PENDING);
    drop(call); // completes, and the cleanup frees the binding
    assert_eq!(nmr.0.completions.load(Ordering::Relaxed), 1);
}

#[test]
fn a_binding_with_nothing_in_flight_detaches_with_success() {
    let nmr = FreeingNmr::default();
    let binding = new_binding(&nmr);
    // SAFETY: live.
    assert_eq!(unsafe { TestBinding::detach(binding) }, STATUS_SUCCESS);
    // SAFETY: live.
    let refused = unsafe { binding.as_ref() }.acquire().is_none();
    assert!(refused, "no call once detaching");
    assert_eq!(nmr.0.completions.load(Ordering::Relaxed), 0);
    // SAFETY: the NMR's cleanup after a SUCCESS detach: nothing refers to it.
    unsafe { TestBinding::destroy(binding) };
}

#[test]
fn releases_on_other_threads_free_the_binding_through_the_set() {
    for _ in 0..if cfg!(miri) { 3 } else { 100 } {
        let nmr = FreeingNmr::default();
        let set = Arc::new(BindingSet::<FreeingNmr, Table, u64>::try_new(nmr.clone()).unwrap());
        *nmr.0.set.lock().unwrap() = Some(set.clone());
        let binding = new_binding(&nmr);
        // SAFETY: live until its cleanup, which unlinks it first.
        unsafe { set.insert(binding) }.unwrap();
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let set = set.clone();
                std::thread::spawn(move || {
                    let mut made = 0;
                    for _ in 0..3 {
                        set.for_each_call(|call| {
                            assert_eq!((call.dispatch().ping)(call.context()), 7);
                            made += 1;
                        });
                    }
                    made
                })
            })
            .collect();
        // SAFETY: linked, so live until the cleanup, which needs this detach.
        let status = unsafe { TestBinding::detach(binding) };
        for caller in callers {
            caller.join().unwrap();
        }
        if status == STATUS_SUCCESS {
            assert_eq!(nmr.0.completions.load(Ordering::Relaxed), 0);
            assert!(set.remove(binding));
            // SAFETY: detached with SUCCESS and unlinked: the cleanup.
            unsafe { TestBinding::destroy(binding) };
        } else {
            assert_eq!(
                nmr.0.completions.load(Ordering::Relaxed),
                1,
                "freed by the last release"
            );
        }
        assert!(set.is_empty());
        // The set holds the NMR, which holds the set: break the cycle.
        *nmr.0.set.lock().unwrap() = None;
    }
}

#[test]
fn an_unpublished_binding_is_never_callable() {
    let nmr = FreeingNmr::default();
    // SAFETY: never detached; dropped at the end.
    let binding = unsafe { TestBinding::for_client(nmr, &SLOTS, "misuse", ptr::null_mut(), 0) }
        .ok()
        .unwrap();
    assert!(binding.acquire().is_none(), "no peer table published yet");
    // SAFETY: the static table, with the (null) context the tests pair it with.
    unsafe { binding.publish_peer(ptr::null_mut(), &TABLE) }.unwrap();
    assert!(binding.acquire().is_some());
}

#[test]
fn a_second_detach_is_answered_pending_and_completes_nothing() {
    let nmr = FreeingNmr::default();
    let binding = NonNull::from(Box::leak(
        // SAFETY: detached only through `Binding::detach`, freed by `destroy`.
        unsafe { TestBinding::for_client(nmr.clone(), &SLOTS, "misuse", ptr::null_mut(), 0) }
            .ok()
            .unwrap(),
    ));
    // SAFETY: live until the destroy below.
    assert_eq!(unsafe { TestBinding::detach(binding) }, STATUS_SUCCESS);
    // An NMR that calls detach twice breaks R7. SUCCESS again could let it
    // free the binding under a completion still to come; PENDING never can.
    // SAFETY: live.
    assert_eq!(unsafe { TestBinding::detach(binding) }, STATUS_PENDING);
    assert_eq!(nmr.0.completions.load(Ordering::Relaxed), 0);
    // SAFETY: nothing refers to it any more.
    unsafe { TestBinding::destroy(binding) };
}
