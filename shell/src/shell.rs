//! The shell proper: identical on both kernel surfaces. `km` is one of the
//! two twins, `km_wdk.rs` or `km_raw.rs`: a thin wrapper per kernel function.
//! Everything that is not specific to a surface (access masks, pool flags and
//! tag, the allocator, what to do with each status) is here.

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use alloc::boxed::Box;
use nmr_common::ffi::{HANDLE, NTSTATUS, STATUS_SUCCESS, nt_success};
use nmr_common::trace::{Event, LineBuf, Record};

use crate::pool::{PoolAllocator, RawPool};

#[cfg(feature = "wdk")]
#[path = "km_wdk.rs"]
mod km;
#[cfg(all(feature = "raw-kernel", not(feature = "wdk")))]
#[path = "km_raw.rs"]
mod km;

extern crate alloc;

pub use km::DriverObject;

/// `DRIVER_UNLOAD`.
pub type DriverUnload = unsafe extern "C" fn(*mut DriverObject);
/// `KSTART_ROUTINE`.
pub type StartRoutine = unsafe extern "C" fn(*mut c_void);

/// `THREAD_ALL_ACCESS`: `STANDARD_RIGHTS_REQUIRED | SYNCHRONIZE | 0xFFFF`.
const THREAD_ALL_ACCESS: u32 = 0x001F_FFFF;
/// `POOL_FLAG_NON_PAGED`: usable at DISPATCH_LEVEL, where cleanups run.
/// (`km_wdk.rs` checks it against wdk-sys's.)
const POOL_FLAG_NON_PAGED: u64 = 0x0000_0000_0000_0040;

/// The kernel pool, through the surface's `ExAllocatePool2` and
/// `ExFreePoolWithTag`.
struct KernelPool;

// SAFETY: ExAllocatePool2 returns null or a block of at least the size asked,
// aligned to MEMORY_ALLOCATION_ALIGNMENT (16 on x64), valid until it is freed.
unsafe impl RawPool for KernelPool {
    const ALIGNMENT: usize = 16;

    unsafe fn allocate(&self, size: usize, tag: u32) -> *mut u8 {
        // SAFETY: non-paged pool may be allocated at DISPATCH_LEVEL or below,
        // the IRQLs the drivers run at; `size` is not zero (the caller's).
        unsafe { km::allocate_pool(POOL_FLAG_NON_PAGED, size, tag) }
    }

    unsafe fn free(&self, block: *mut u8, tag: u32) {
        // SAFETY: a block of `allocate` with `tag`, freed once (the caller's).
        unsafe { km::free_pool(block, tag) };
    }
}

/// Every allocation of the driver: non-paged pool tagged `NmrR`, any
/// alignment, on either surface.
#[global_allocator]
static ALLOCATOR: PoolAllocator<KernelPool> = PoolAllocator::new(KernelPool, crate::POOL_TAG);

/// How often the worker thread runs a round, in milliseconds.
pub const WORKER_PERIOD_MS: u32 = 10;

/// What a driver plugs into the shell: its module, loaded on the real NMR.
pub trait DriverModule: Sync + Send + Sized + 'static {
    /// The driver's name, as in its trace lines.
    const NAME: &'static str;
    /// Loads and registers the module (PASSIVE).
    fn load() -> Result<Self, NTSTATUS>;
    /// One round of the worker thread's work (PASSIVE).
    fn work(&self);
    /// Deregisters and waits for the NMR (PASSIVE); after it returns, the NMR
    /// calls nothing in the module any more.
    fn unload(&self) -> NTSTATUS;
}

/// The state of one loaded driver: the module and its worker thread.
pub struct Loaded<M: DriverModule> {
    module: M,
    stop: AtomicBool,
    thread: HANDLE,
}

/// The trace sink: one `DbgPrintEx` line per record, formatted on the stack
/// (no allocation: records come at DISPATCH_LEVEL too).
fn dbg_print_sink(record: &Record<'_>) {
    let line = LineBuf::<256>::format(record);
    // SAFETY: the buffer is NUL-terminated and lives across the call.
    unsafe {
        km::dbg_print(
            crate::DPFLTR_IHVNETWORK_ID,
            record.level() as u32,
            line.as_c_ptr(),
        )
    };
}

fn trace(module: &'static str, event: Event, status: NTSTATUS) {
    nmr_common::trace::emit(&Record {
        module,
        binding: None,
        event,
        status,
        detail: None,
    });
}

unsafe extern "C" fn worker<M: DriverModule>(context: *mut c_void) {
    // SAFETY: the context is the `Loaded<M>`, which `driver_unload` frees only
    // after this thread has terminated (it waits on the thread handle).
    let loaded = unsafe { &*context.cast::<Loaded<M>>() };
    while !loaded.stop.load(Ordering::Acquire) {
        loaded.module.work();
        delay_ms(WORKER_PERIOD_MS);
    }
    // SAFETY: a system thread the driver created, holding nothing, ends itself.
    let status = unsafe { km::terminate_system_thread(STATUS_SUCCESS) };
    unreachable!("PsTerminateSystemThread returned {status:#x}: not a system thread");
}

/// Sleeps `ms` milliseconds (PASSIVE).
fn delay_ms(ms: u32) {
    let relative_100ns = -(i64::from(ms) * 10_000);
    // SAFETY: the worker thread runs at PASSIVE.
    let status = unsafe { km::delay_execution(relative_100ns) };
    // A non-alertable kernel-mode wait can end only when the interval has
    // passed: STATUS_ALERTED and STATUS_USER_APC need an alertable wait, and
    // a relative interval cannot be invalid. Nothing to handle.
    debug_assert!(
        status == STATUS_SUCCESS,
        "KeDelayExecutionThread: {status:#x}"
    );
}

/// The body of `DriverEntry`: points the trace at `DbgPrintEx`, loads the
/// module (registering it with the NMR), starts the worker thread, and sets
/// `DriverUnload`. Any failure undoes what was done and returns its status.
///
/// # Safety
///
/// Called from `DriverEntry` at PASSIVE with the system's driver object;
/// `slot` is the driver's one static that `driver_unload` reads.
pub unsafe fn driver_entry<M: DriverModule>(
    driver: *mut DriverObject,
    slot: &AtomicPtr<c_void>,
    unload: DriverUnload,
) -> NTSTATUS {
    nmr_common::trace::set_sink(dbg_print_sink);
    trace(M::NAME, Event::DriverEntry, STATUS_SUCCESS);
    let module = match M::load() {
        Ok(module) => module,
        Err(status) => return status,
    };
    let Ok(loaded) = nmr_common::binding::try_box(Loaded {
        module,
        stop: AtomicBool::new(false),
        thread: core::ptr::null_mut(),
    }) else {
        // `module` came back inside the error and is dropped here: unloaded.
        return nmr_common::ffi::STATUS_INSUFFICIENT_RESOURCES;
    };
    let loaded = Box::into_raw(loaded);
    let mut thread: HANDLE = core::ptr::null_mut();
    // SAFETY: PASSIVE in DriverEntry (the system process); `worker::<M>`
    // matches KSTART_ROUTINE and `loaded` outlives the thread (driver_unload
    // waits for it).
    let status = unsafe {
        km::create_system_thread(&mut thread, THREAD_ALL_ACCESS, worker::<M>, loaded.cast())
    };
    if !nt_success(status) {
        // SAFETY: no thread was started: `loaded` is ours alone.
        let loaded = unsafe { Box::from_raw(loaded) };
        loaded.module.unload();
        drop(loaded);
        return status;
    }
    // SAFETY: the worker only reads `stop` and `module`; `thread` is written
    // before anything else reads it (driver_unload).
    unsafe { (*loaded).thread = thread };
    slot.store(loaded.cast(), Ordering::Release);
    // SAFETY: `driver` is the system's driver object for this image.
    unsafe { km::set_unload(driver, unload) };
    STATUS_SUCCESS
}

/// The body of `DriverUnload`: deregisters and waits for the NMR (calls in
/// flight drain meanwhile; the worker keeps running and is refused), stops
/// the worker and waits for its thread to end, then frees everything.
/// Nothing of the driver runs after it returns.
///
/// # Safety
///
/// Called from `DriverUnload` at PASSIVE, once, after `driver_entry` succeeded.
pub unsafe fn driver_unload<M: DriverModule>(slot: &AtomicPtr<c_void>) {
    let loaded = slot
        .swap(core::ptr::null_mut(), Ordering::AcqRel)
        .cast::<Loaded<M>>();
    if loaded.is_null() {
        return;
    }
    // SAFETY: set by `driver_entry`, freed only below.
    let status = unsafe { &*loaded }.module.unload();
    // SAFETY: as above; the worker reads `stop` with Acquire.
    unsafe { &*loaded }.stop.store(true, Ordering::Release);
    // SAFETY: PASSIVE; the thread handle from `create_system_thread`, open.
    let thread = unsafe { (*loaded).thread };
    // SAFETY: as above.
    let waited = unsafe { km::wait_for_object(thread) };
    // SAFETY: as above, closed exactly once (closing does not stop the thread).
    let closed = unsafe { km::close_handle(thread) };
    if !nt_success(closed) {
        // The handle leaks; the thread is not affected.
        trace(M::NAME, Event::Unload, closed);
    }
    if !nt_success(waited) {
        trace(M::NAME, Event::Unload, waited);
        return; // The thread may still run: leak rather than free under it.
    }
    // SAFETY: the worker has ended and the NMR is done: `loaded` is ours alone.
    drop(unsafe { Box::from_raw(loaded) });
    let _ = status;
}

/// Defines the driver image's `DriverEntry` and `DriverUnload` for a
/// [`DriverModule`], through [`driver_entry`] and [`driver_unload`], with the
/// one static that links them.
#[macro_export]
macro_rules! driver_entry_points {
    ($module:ty) => {
        static LOADED: ::core::sync::atomic::AtomicPtr<::core::ffi::c_void> =
            ::core::sync::atomic::AtomicPtr::new(::core::ptr::null_mut());

        /// `DriverEntry`.
        ///
        /// # Safety
        ///
        /// Called by the I/O manager at PASSIVE with this image's driver object.
        #[unsafe(export_name = "DriverEntry")]
        pub unsafe extern "system" fn driver_entry(
            driver: *mut $crate::DriverObject,
            _registry_path: *const ::core::ffi::c_void,
        ) -> ::nmr_common::ffi::NTSTATUS {
            // SAFETY: forwarded from the system.
            unsafe { $crate::driver_entry::<$module>(driver, &LOADED, driver_unload) }
        }

        /// `DriverUnload`.
        ///
        /// # Safety
        ///
        /// Called by the I/O manager at PASSIVE, once, after a successful DriverEntry.
        unsafe extern "C" fn driver_unload(_driver: *mut $crate::DriverObject) {
            // SAFETY: forwarded from the system.
            unsafe { $crate::driver_unload::<$module>(&LOADED) }
        }
    };
}
