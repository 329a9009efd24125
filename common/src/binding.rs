//! One side of one binding, shared by both drivers.
//!
//! A [`Binding`] is the binding context one module hands the NMR: the peer's
//! binding context and dispatch table, the rundown that counts this side's
//! calls into the peer, this side's NMR binding handle, and the owner's own
//! per-binding data. Its life:
//!
//! ```text
//! attach ──> active ──detach──> SUCCESS (drained now) ──────────────┐
//!   │          │                PENDING ──last call returns──> complete ──> cleanup (freed)
//!   └─declined─┴─> freed by the module itself (no detach, no cleanup)
//! ```
//!
//! - Calls into the peer go through [`Binding::acquire`],
//!   which hand out a [`PeerCall`]: no guard, no peer. Once the detach callback
//!   has run, both answer `None` (R9).
//! - [`Binding::detach`] is the detach callback's body: it never blocks (R8).
//! - The release that drains a detaching binding calls
//!   `Nmr*DetachComplete` inline, exactly once, and touches nothing after.
//! - [`Binding::destroy`] is the cleanup callback's body: the only place the
//!   binding is freed (R10).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use crate::arena::SlotArena;
use crate::ffi::{HANDLE, NTSTATUS, STATUS_PENDING, STATUS_SUCCESS};
use crate::nmr::Nmr;
use crate::percpu::PerProcessor;
use crate::rundown::{Drain, Rundown, RundownGuard, RundownOwner};
use crate::sync::{CheckedCell, RawSpinLock};
use crate::trace::{Event, Record};

/// One side of one binding. `D` is the peer's dispatch table type, `T` the
/// owner's per-binding data.
pub struct Binding<N: Nmr, D: 'static, T> {
    nmr: N,
    // This side's `Nmr*DetachComplete`. Named only by the side's own
    // constructor, so a driver image never references (imports) the other
    // side's completion.
    complete: unsafe fn(&N, HANDLE),
    module: &'static str,
    handle: HANDLE,
    // Published once by `publish_peer` (the attach path), read by `acquire`.
    // A null dispatch table means "never callable". Atomics, because the peer
    // may already be calling into this binding (through our dispatch table)
    // while our attach callback publishes its table.
    peer_context: AtomicPtr<c_void>,
    peer_dispatch: AtomicPtr<c_void>,
    // Set by the one `publish_peer` that may store the two above.
    published: AtomicBool,
    rundown: Rundown,
    /// The owner's per-binding data (counters and the like). Reachable from
    /// any thread holding the binding, so it is usually atomics.
    pub data: T,
    _dispatch: PhantomData<&'static D>,
}

// SAFETY: the handle and the peer's context and table are pointers the NMR and
// the peer keep valid until cleanup and expect to be used from any thread;
// everything else is `Sync` when `N` and `T` are.
unsafe impl<N: Nmr, D: Sync, T: Sync> Sync for Binding<N, D, T> {}
// SAFETY: as above; nothing in a binding is tied to a thread.
unsafe impl<N: Nmr, D: Sync, T: Send> Send for Binding<N, D, T> {}

/// Allocates like `Box::new`, but reports failure instead of aborting: the
/// kernel heap can run out, and an attach callback must then decline.
pub fn try_box<T>(value: T) -> Result<Box<T>, T> {
    let layout = Layout::new::<T>();
    if layout.size() == 0 {
        return Ok(Box::new(value));
    }
    // SAFETY: the layout has a non-zero size.
    let raw = unsafe { alloc::alloc::alloc(layout) }.cast::<T>();
    if raw.is_null() {
        return Err(value);
    }
    // SAFETY: `raw` is a fresh allocation with `T`'s layout, written before use;
    // `Box` frees it with the same global allocator and layout.
    unsafe {
        raw.write(value);
        Ok(Box::from_raw(raw))
    }
}

impl<N: Nmr, D: 'static, T> Binding<N, D, T> {
    /// The client's side of a binding (its peer is a provider): a drain
    /// completes with `NmrClientDetachProviderComplete`. No peer yet, and the
    /// rundown ready: calls can never arrive before the rundown exists. Its
    /// slots are one index of `slots`, the module's arena (from
    /// [`BindingSet::slots`]), which must outlive the binding (else its
    /// chunk leaks). `Err` gives `data` back when the heap is exhausted or
    /// the arena cannot grow (decline the attach).
    ///
    /// # Safety
    ///
    /// `handle` is the NMR binding handle of the `ClientAttachProvider` call
    /// this binding is made in: the drain's completion passes it to
    /// `NmrClientDetachProviderComplete`. The binding is handed to the NMR as
    /// the client binding context of that handle (its detach callback is
    /// [`detach_callback`], its cleanup ends with [`Binding::destroy`]), or
    /// dropped without ever being detached.
    pub unsafe fn for_client(
        nmr: N,
        slots: &SlotArena,
        module: &'static str,
        handle: HANDLE,
        data: T,
    ) -> Result<Box<Self>, T> {
        Self::new(
            nmr,
            slots,
            N::client_detach_provider_complete,
            module,
            handle,
            data,
        )
    }

    /// The provider's side of a binding (its peer is a client): a drain
    /// completes with `NmrProviderDetachClientComplete`. As [`Binding::for_client`].
    ///
    /// # Safety
    ///
    /// As [`Binding::for_client`], for the handle of a `ProviderAttachClient`
    /// call and `NmrProviderDetachClientComplete`.
    pub unsafe fn for_provider(
        nmr: N,
        slots: &SlotArena,
        module: &'static str,
        handle: HANDLE,
        data: T,
    ) -> Result<Box<Self>, T> {
        Self::new(
            nmr,
            slots,
            N::provider_detach_client_complete,
            module,
            handle,
            data,
        )
    }

    fn new(
        nmr: N,
        slots: &SlotArena,
        complete: unsafe fn(&N, HANDLE),
        module: &'static str,
        handle: HANDLE,
        data: T,
    ) -> Result<Box<Self>, T> {
        // One rundown slot per processor the system can have, on that
        // processor's page of the module's arena: calls on different
        // processors never write the same cache line.
        let Ok(rundown) = Rundown::try_new(slots) else {
            return Err(data);
        };
        try_box(Binding {
            nmr,
            complete,
            module,
            handle,
            peer_context: AtomicPtr::new(ptr::null_mut()),
            peer_dispatch: AtomicPtr::new(ptr::null_mut()),
            published: AtomicBool::new(false),
            rundown,
            data,
            _dispatch: PhantomData,
        })
        .map_err(|b| b.data)
    }

    /// The memory this side of the binding takes: the binding itself and its
    /// rundown's per-processor slots (one word per processor of the module's
    /// arena; the chunk bookkeeping shared with its neighbours aside).
    pub fn footprint(&self) -> usize {
        size_of::<Self>() + self.rundown.heap_bytes()
    }

    /// Publishes the peer: its binding context and its dispatch table. Until
    /// this is called, [`Binding::acquire`] refuses; a binding whose peer gave
    /// an unfit table is simply never published. Once only: a second call
    /// changes nothing and answers [`AlreadyPublished`], so a caller can never
    /// see one publication's table with another's context.
    ///
    /// # Safety
    ///
    /// `dispatch` is the table the peer gave for this binding (it passed
    /// [`crate::npi::check_dispatch`] for `D`) and `context` the binding
    /// context the peer gave with it: [`PeerCall`] hands the two out together
    /// to call the peer. The table stays valid, and unchanged, until this
    /// binding's cleanup, which is as long as the NMR contract keeps it (not
    /// `'static`).
    pub unsafe fn publish_peer(
        &self,
        context: *mut c_void,
        dispatch: &D,
    ) -> Result<(), AlreadyPublished> {
        if self.published.swap(true, Ordering::Relaxed) {
            return Err(AlreadyPublished);
        }
        self.peer_context.store(context, Ordering::Relaxed);
        // Release: whoever sees the table also sees the context.
        self.peer_dispatch
            .store(ptr::from_ref(dispatch).cast_mut().cast(), Ordering::Release);
        Ok(())
    }

    /// This side's NMR binding handle.
    pub fn handle(&self) -> HANDLE {
        self.handle
    }

    /// The binding's trace id: its address.
    pub fn id(&self) -> usize {
        ptr::from_ref(self).addr()
    }

    /// Whether the detach callback has run.
    pub fn is_detaching(&self) -> bool {
        self.rundown.is_draining()
    }

    /// Calls in flight into the peer now (a snapshot).
    pub fn in_flight(&self) -> usize {
        self.rundown.in_flight()
    }

    /// Counts one call into the peer, or `None` once detaching or when the peer
    /// gave no usable dispatch table.
    ///
    /// Dropping the last [`PeerCall`] of a detaching binding may free the
    /// binding (the completion runs the cleanup inline). So no reference to
    /// the binding that outlives the drop may exist: in particular, never drop
    /// it inside a function that received the binding as `&Binding` (that
    /// reference is live for the whole call). Take the reference locally from
    /// a pointer, as [`BindingSet::for_each_call`] does, and let the call go
    /// out of scope in the caller.
    pub fn acquire(&self) -> Option<PeerCall<'_, N, D, T>> {
        let dispatch = self.peer_dispatch.load(Ordering::Acquire);
        if dispatch.is_null() {
            return None;
        }
        let context = self.peer_context.load(Ordering::Relaxed);
        RundownGuard::try_acquire(self).map(|guard| PeerCall {
            guard,
            dispatch: dispatch.cast(),
            context,
        })
    }

    /// The detach callback's body: stops new calls and answers
    /// `STATUS_SUCCESS` (nothing in flight; no completion will follow) or
    /// `STATUS_PENDING` (the last call in flight completes). Never blocks.
    ///
    /// # Safety
    ///
    /// `this` is a live binding. After the drain begins, a completion (and with
    /// it the cleanup) may run on another processor at any moment, so this
    /// function copies what it needs first and never touches `this` afterwards.
    pub unsafe fn detach(this: NonNull<Self>) -> NTSTATUS {
        // SAFETY: live on entry; the reference ends before the drain begins.
        let binding = unsafe { this.as_ref() };
        let (nmr, module, id) = (binding.nmr.clone(), binding.module, binding.id());
        let rundown = NonNull::from(&binding.rundown);
        // From here on `binding` is not used: see the safety section.
        // SAFETY: this is the detach callback's body (see `detach_callback`),
        // the one caller entitled to arm the completion; live on entry, and no
        // reference to the binding is used after this point (the drain may
        // lead to its free on another processor before `begin_drain` returns).
        let drain = unsafe { Rundown::begin_drain(rundown) };
        let (status, event) = match drain {
            Drain::Drained => (STATUS_SUCCESS, Event::DetachSuccess),
            Drain::Pending { .. } => (STATUS_PENDING, Event::DetachPending),
            // The NMR called detach twice (a contract violation). Answering
            // SUCCESS could let it free the binding under a pending completion;
            // PENDING can at worst hang, never corrupt.
            Drain::AlreadyDraining => (STATUS_PENDING, Event::PeerFault),
        };
        let record = Record {
            module,
            binding: Some(id),
            event,
            status,
            detail: None,
        };
        match drain {
            Drain::Pending { in_flight } => nmr.trace(&Record {
                detail: Some(format_args!("in-flight={in_flight}")),
                ..record
            }),
            Drain::AlreadyDraining => nmr.trace(&Record {
                detail: Some(format_args!("detach called twice")),
                ..record
            }),
            Drain::Drained => nmr.trace(&record),
        }
        status
    }

    /// The cleanup callback's body: traces and frees the binding.
    ///
    /// # Safety
    ///
    /// `this` came from `Box::into_raw` of a binding whose both sides have
    /// completed detachment (the NMR calls cleanup only then), and nothing
    /// refers to it any more (the owner has unlinked it).
    pub unsafe fn destroy(this: NonNull<Self>) {
        // SAFETY: the caller gives us the only, boxed binding.
        let binding = unsafe { Box::from_raw(this.as_ptr()) };
        debug_assert!(binding.rundown.is_draining() && binding.rundown.in_flight() == 0);
        binding.nmr.trace(&Record {
            module: binding.module,
            binding: Some(binding.id()),
            event: Event::Cleanup,
            status: STATUS_SUCCESS,
            detail: None,
        });
    }
}

/// The detach callback of either side (`ClientDetachProvider` /
/// `ProviderDetachClient`) (<= DISPATCH): [`Binding::detach`] on the binding
/// context. Never blocks.
///
/// # Safety
///
/// Called by the NMR with a binding context that is a live `Binding<N, D, T>`
/// made by this module's attach callback.
pub unsafe extern "system" fn detach_callback<N: Nmr, D: 'static, T>(
    context: *mut c_void,
) -> NTSTATUS {
    match NonNull::new(context.cast::<Binding<N, D, T>>()) {
        // SAFETY: see the function's contract; `detach` touches nothing after the drain.
        Some(binding) => unsafe { Binding::detach(binding) },
        None => crate::ffi::STATUS_INVALID_PARAMETER,
    }
}

// SAFETY: `rundown` returns the field of `self`.
unsafe impl<N: Nmr, D: 'static, T> RundownOwner for Binding<N, D, T> {
    fn rundown(&self) -> &Rundown {
        &self.rundown
    }

    /// The processor index the NMR surface reports (an inline `gs:` read on
    /// Windows): a hint only. Correctness never depends on it: the guard
    /// releases on the slot it got, the drain reads every slot, and an index
    /// out of range folds into range (traced once).
    #[inline(always)]
    fn current_processor(&self) -> usize {
        let processor = self.nmr.current_processor() as usize;
        if processor >= self.rundown.slot_count() {
            processor_out_of_range(&self.nmr, self.module, processor, self.rundown.slot_count());
        }
        processor
    }

    unsafe fn drained(this: NonNull<Self>) {
        // SAFETY: valid on entry (only this completion leads to cleanup).
        let binding = unsafe { this.as_ref() };
        // Copy out everything: the completion call below may free the binding,
        // and the module's own memory may be freed right after it too.
        let (nmr, complete, handle) = (binding.nmr.clone(), binding.complete, binding.handle);
        nmr.trace(&Record {
            module: binding.module,
            binding: Some(binding.id()),
            event: Event::DetachComplete,
            status: STATUS_SUCCESS,
            detail: None,
        });
        // SAFETY: the detach callback answered PENDING and this is the one
        // drain report; `handle` is this side's binding handle. Nothing
        // touches the binding after this call.
        unsafe { complete(&nmr, handle) }
    }
}

/// Traces, once per image, a processor index at or above the count the NMR
/// surface reported (a kernel, or a stand-in, that broke its promise). The
/// index is folded into range by the caller; nothing else changes.
#[cold]
#[inline(never)]
fn processor_out_of_range<N: Nmr>(nmr: &N, module: &'static str, processor: usize, count: usize) {
    static TRACED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if TRACED.swap(true, Ordering::Relaxed) {
        return;
    }
    nmr.trace(&Record {
        module,
        binding: None,
        event: Event::PeerFault,
        status: STATUS_SUCCESS,
        detail: Some(format_args!(
            "processor index {processor} out of range (count {count}): folded"
        )),
    });
}

/// One call in flight into the peer: the peer's context and dispatch table are
/// reachable only through it. Dropping it ends the call, and if it was the
/// last one of a detaching binding, completes the detach inline.
pub struct PeerCall<'a, N: Nmr, D: 'static, T> {
    guard: RundownGuard<'a, Binding<N, D, T>>,
    dispatch: *const D,
    context: *mut c_void,
}

impl<N: Nmr, D: 'static, T> PeerCall<'_, N, D, T> {
    /// The peer's dispatch table.
    pub fn dispatch(&self) -> &D {
        // SAFETY: `acquire` refuses a null table; a published one passed
        // `check_dispatch` for `D` and stays valid until cleanup, which cannot
        // come while this call is counted.
        unsafe { &*self.dispatch }
    }

    /// The peer's binding context, to pass back to its dispatch functions.
    pub fn context(&self) -> *mut c_void {
        self.context
    }

    /// Our side of the binding.
    pub fn binding(&self) -> &Binding<N, D, T> {
        &self.guard
    }
}

struct Linked<B>(NonNull<B>);
// SAFETY: a linked binding is `Sync` (shared by reference across threads);
// the list only moves the pointer between threads.
unsafe impl<B: Sync> Send for Linked<B> {}

/// The bindings of one module, for the threads that call through all of them.
///
/// Linked in the attach callback after the binding is complete, unlinked in the
/// cleanup callback before it is freed. A caller must not find a binding and
/// then acquire a call on it after the cleanup freed it; once acquired, the
/// call's count keeps the binding alive (its cleanup cannot come before the
/// drain completes).
///
/// The scheme: a per-processor reader lock (a "big-reader" lock). A caller
/// finds a binding and acquires its call holding only the lock of the
/// processor it runs on: a cache line no other processor's callers write, so
/// callers on different processors never contend. Insert and remove (attach
/// and cleanup) take every processor's lock, in index order, so they exclude
/// every reader, and each other (all start with lock 0). Why this one:
/// - Safe by plain mutual exclusion, as before: the unlink in the cleanup
///   cannot overlap any caller's find-and-acquire, so a binding is never
///   acquired after it is unlinked, and the cleanup frees it inline, at once.
/// - Nothing waits for callers: a reader holds its lock only for the list
///   lookup and one rundown acquire (a few instructions, at DISPATCH_LEVEL so
///   never preempted), never during a call. The call itself, and the release
///   that may complete the detach and run the cleanup inline, come after the
///   lock is dropped. A cleanup at DISPATCH_LEVEL spins at most for those few
///   instructions per processor, as it spun for the single lock before.
/// - The alternatives defer the free instead (RCU, epochs, hazard pointers):
///   the cleanup would return with the binding still allocated, and something
///   (a grace period, a reclaimer, the module's unload) would have to free it
///   later and be waited for before the driver image goes. That is more
///   machinery, and a new way to leak, for a cost that is already local.
/// - The cost moves to attach and cleanup: O(processors) lock acquisitions,
///   on the PASSIVE attach path and at most once per binding at cleanup.
pub struct BindingSet<N: Nmr, D: 'static, T> {
    nmr: N,
    locks: PerProcessor<ReaderLock<N::Lock>>,
    /// The rundown slots of the module's bindings. Declared after the list
    /// and dropped with the set, after every binding is gone.
    slots: SlotArena,
    // Read by a holder of any one lock; written only by a holder of them all.
    list: CheckedCell<Links<Binding<N, D, T>>>,
}

/// The linked bindings, and the places held for bindings not linked yet:
/// `linked.capacity() >= linked.len() + reserved` always, so linking a
/// reserved binding never allocates.
struct Links<B> {
    linked: Vec<Linked<B>>,
    reserved: usize,
}

/// A place in a [`BindingSet`] held for one binding. A client takes it
/// before `NmrClientAttachProvider`, after which the binding cannot be
/// declined any more, so that linking it then cannot fail for want of
/// memory. Dropped unused, it gives the place back.
pub struct Reservation<'a, N: Nmr, D: Sync + 'static, T: Sync> {
    set: &'a BindingSet<N, D, T>,
}

impl<N: Nmr, D: Sync + 'static, T: Sync> Reservation<'_, N, D, T> {
    /// Links `binding` in the place held for it: never allocates, never fails.
    ///
    /// # Safety
    ///
    /// As [`BindingSet::insert`].
    pub unsafe fn link(self, binding: NonNull<Binding<N, D, T>>) {
        let set = self.set;
        core::mem::forget(self);
        set.write().with_list(|links| {
            links.reserved -= 1;
            debug_assert!(links.linked.len() < links.linked.capacity());
            links.linked.push(Linked(binding));
        });
    }
}

impl<N: Nmr, D: Sync + 'static, T: Sync> Drop for Reservation<'_, N, D, T> {
    fn drop(&mut self) {
        self.set.write().with_list(|links| links.reserved -= 1);
    }
}

/// One processor's lock, and the IRQL a writer saved when it took it (a
/// writer holds every lock at once, so it keeps the saved values here).
struct ReaderLock<R: RawSpinLock> {
    raw: R,
    // Written and read only by the writer that holds `raw`.
    writer_saved: UnsafeCell<Option<R::Saved>>,
}

// SAFETY: the list is only read under one of the locks and only written under
// all of them (mutual exclusion between every writer and every reader), and
// the bindings it points to are `Sync` (`D: Sync`, `T: Sync`); a lock's saved
// IRQL is touched only by the writer holding that lock.
unsafe impl<N: Nmr, D: Sync + 'static, T: Sync> Sync for BindingSet<N, D, T> {}
// SAFETY: as above; nothing in the set is tied to a thread.
unsafe impl<N: Nmr, D: Sync + 'static, T: Sync> Send for BindingSet<N, D, T> {}

/// [`Binding::publish_peer`] was called a second time; the first publication
/// stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyPublished;

/// The heap was exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfMemory;

/// Holds the lock of one processor: the list may be read, not written.
/// Not `Send`: released by the thread that took it.
struct ReadGuard<'a, N: Nmr, D: 'static, T> {
    set: &'a BindingSet<N, D, T>,
    lock: &'a ReaderLock<N::Lock>,
    saved: Option<<N::Lock as RawSpinLock>::Saved>,
    _not_send: PhantomData<*const ()>,
}

impl<N: Nmr, D: 'static, T> ReadGuard<'_, N, D, T> {
    fn with_list<R>(&self, f: impl FnOnce(&[Linked<Binding<N, D, T>>]) -> R) -> R {
        // SAFETY: we hold one lock, and writers hold all of them: no write
        // overlaps this shared borrow, which ends with the closure.
        self.set.list.with(|links| f(unsafe { &(*links).linked }))
    }
}

impl<N: Nmr, D: 'static, T> Drop for ReadGuard<'_, N, D, T> {
    fn drop(&mut self) {
        if let Some(saved) = self.saved.take() {
            // SAFETY: this guard holds the lock and `saved` came from its `lock`.
            unsafe { self.lock.raw.unlock(saved) };
        }
    }
}

/// Holds every processor's lock: the list may be written.
/// Not `Send`: released by the thread that took it, in reverse order.
struct WriteGuard<'a, N: Nmr, D: 'static, T> {
    set: &'a BindingSet<N, D, T>,
    _not_send: PhantomData<*const ()>,
}

impl<N: Nmr, D: 'static, T> WriteGuard<'_, N, D, T> {
    fn with_list<R>(&mut self, f: impl FnOnce(&mut Links<Binding<N, D, T>>) -> R) -> R {
        // SAFETY: we hold every lock, so no reader or other writer reaches the
        // list; `&mut self` makes this the only borrow derived from it, and it
        // ends with the closure.
        self.set.list.with_mut(|list| f(unsafe { &mut *list }))
    }
}

impl<N: Nmr, D: 'static, T> Drop for WriteGuard<'_, N, D, T> {
    fn drop(&mut self) {
        // In reverse: the first lock's saved IRQL (the caller's) is restored last.
        for lock in self.set.locks.iter().rev() {
            // SAFETY: we hold this lock, so we are the only one to touch its
            // saved IRQL.
            let saved = unsafe { (*lock.writer_saved.get()).take() };
            if let Some(saved) = saved {
                // SAFETY: we hold the lock and `saved` came from its `lock`.
                unsafe { lock.raw.unlock(saved) };
            }
        }
    }
}

impl<N: Nmr, D: Sync + 'static, T: Sync> BindingSet<N, D, T> {
    /// An empty set with one reader lock per processor `nmr` reports. `Err`
    /// when the heap is exhausted (the module cannot load).
    pub fn try_new(nmr: N) -> Result<Self, OutOfMemory> {
        let locks = PerProcessor::try_new(nmr.processor_count() as usize, || ReaderLock {
            raw: N::Lock::new(),
            writer_saved: UnsafeCell::new(None),
        })?;
        let slots = SlotArena::new(nmr.processor_count() as usize);
        Ok(BindingSet {
            nmr,
            locks,
            slots,
            list: CheckedCell::new(Links {
                linked: Vec::new(),
                reserved: 0,
            }),
        })
    }

    /// Takes the lock of the processor the caller runs on. The caller may
    /// have moved by the time it holds it: harmless, any one lock excludes
    /// the writers; it only costs a shared cache line for that moment.
    fn read(&self) -> ReadGuard<'_, N, D, T> {
        let lock = self
            .locks
            .at(self.locks.index_of(self.nmr.current_processor() as usize));
        let saved = Some(lock.raw.lock());
        ReadGuard {
            set: self,
            lock,
            saved,
            _not_send: PhantomData,
        }
    }

    /// Takes every processor's lock, in index order (so writers never
    /// deadlock one another, and readers hold one lock at a time).
    fn write(&self) -> WriteGuard<'_, N, D, T> {
        for lock in self.locks.iter() {
            let saved = lock.raw.lock();
            // SAFETY: we now hold this lock: its saved IRQL is ours to write.
            unsafe { *lock.writer_saved.get() = Some(saved) };
        }
        WriteGuard {
            set: self,
            _not_send: PhantomData,
        }
    }

    /// Links a binding. `Err` when the heap is exhausted (decline the attach).
    ///
    /// # Safety
    ///
    /// `binding` stays valid until it is removed with [`BindingSet::remove`].
    pub unsafe fn insert(&self, binding: NonNull<Binding<N, D, T>>) -> Result<(), OutOfMemory> {
        let place = self.reserve()?;
        // SAFETY: forwarded: see the function's contract.
        unsafe { place.link(binding) };
        Ok(())
    }

    /// Holds a place for one more binding. `Err` when the heap is exhausted
    /// (decline the attach).
    pub fn reserve(&self) -> Result<Reservation<'_, N, D, T>, OutOfMemory> {
        self.write().with_list(|links| {
            let wanted = links.reserved + 1;
            links.linked.try_reserve(wanted).map_err(|_| OutOfMemory)?;
            links.reserved = wanted;
            Ok(())
        })?;
        Ok(Reservation { set: self })
    }

    /// Unlinks a binding; false if it was not linked. Once this returns, no
    /// caller can find it, and every caller that found it has acquired its
    /// call (or been refused): the binding may be freed.
    pub fn remove(&self, binding: NonNull<Binding<N, D, T>>) -> bool {
        self.write().with_list(|links| {
            let list = &mut links.linked;
            match list.iter().position(|b| b.0 == binding) {
                Some(i) => {
                    list.swap_remove(i);
                    true
                }
                None => false,
            }
        })
    }

    /// How many bindings are linked.
    pub fn len(&self) -> usize {
        self.read().with_list(<[_]>::len)
    }

    /// Whether no binding is linked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The module's arena of per-processor rundown slots: each binding's
    /// rundown leases one index of it ([`Binding::for_client`]).
    pub fn slots(&self) -> &SlotArena {
        &self.slots
    }

    /// The memory the set's per-processor locks take (the list aside).
    pub fn lock_bytes(&self) -> usize {
        self.locks.heap_bytes()
    }

    /// Calls `f` once for each linked binding that can be called now, with the
    /// call counted in flight; returns how many bindings refused (detaching).
    ///
    /// Each binding is found and acquired under this processor's reader lock
    /// only; `f` runs, and the call is released, after that lock is dropped
    /// (the release may complete the detach, whose cleanup takes every lock).
    pub fn for_each_call(&self, mut f: impl FnMut(PeerCall<'_, N, D, T>)) -> usize {
        let mut refused = 0;
        let mut index = 0;
        loop {
            let found = self.read().with_list(|list| {
                list.get(index).map(|linked| {
                    // SAFETY: linked bindings are valid until removed, and
                    // removal takes every lock, ours included (the read
                    // guard lives to the end of this statement); once
                    // acquired, the count keeps the binding alive after the
                    // lock is dropped.
                    let binding = unsafe { linked.0.as_ref() };
                    binding.acquire()
                })
            });
            index += 1;
            match found {
                None => break,
                Some(Some(call)) => f(call),
                Some(None) => refused += 1,
            }
        }
        refused
    }
}
