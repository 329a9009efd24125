//! One driver image, loaded as Windows loads it for `sc start`: a fresh
//! mapping, imports bound, `DriverEntry` called with a zeroed
//! `DRIVER_OBJECT`; `DriverUnload` called for `sc stop`; and what Driver
//! Verifier would check at unload (pool, threads) checked here.

use std::path::Path;
use std::sync::Mutex;

use nmr_common::ffi::*;

use crate::bind::Thunks;
use crate::image::ImageCtx;
use crate::pe::{LoadError, MappedImage};
use crate::problems::{self, Kind};
use crate::registry::{self, Registered};
use crate::{ntoskrnl, pool};

/// `sizeof(DRIVER_OBJECT)` on x64.
const DRIVER_OBJECT_SIZE: usize = 336;
/// `offsetof(DRIVER_OBJECT, DriverUnload)`.
const DRIVER_UNLOAD_OFFSET: usize = 104;
/// `offsetof(DRIVER_OBJECT, MajorFunction)`.
const MAJOR_FUNCTION_OFFSET: usize = 112;
/// `IO_TYPE_DRIVER`.
const IO_TYPE_DRIVER: u16 = 4;

/// A `DRIVER_OBJECT`'s bytes, pointer-aligned.
#[repr(C, align(8))]
struct DriverObject([u8; DRIVER_OBJECT_SIZE]);

/// `UNICODE_STRING`: the registry path DriverEntry receives.
#[repr(C)]
struct UnicodeString {
    length: u16,
    maximum_length: u16,
    buffer: *const u16,
}

/// Which images are mapped where, with their load serial (for the threads
/// they start).
static IDS: Mutex<Vec<(usize, usize, u64)>> = Mutex::new(Vec::new());

/// The load serial of the image mapped at `addr` (0 if none).
pub(crate) fn image_id_at(addr: usize) -> u64 {
    IDS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(b, s, _)| addr >= *b && addr - *b < *s)
        .map_or(0, |(_, _, id)| *id)
}

/// Where a driver is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Mapped, DriverEntry not called.
    Mapped,
    /// DriverEntry succeeded.
    Started,
    /// DriverEntry failed, or DriverUnload returned.
    Stopped,
}

/// One loaded image.
pub struct Driver {
    ctx: Box<ImageCtx>,
    image: Option<MappedImage>,
    thunks: Option<Thunks>,
    registered: Option<Registered>,
    guarded: Option<crate::cfg::Registered>,
    object: Box<DriverObject>,
    registry_path: Vec<u16>,
    state: State,
    /// Kept mapped after stop: something may still run in it.
    pinned: bool,
}

impl Driver {
    /// Maps the image at `path` and binds its imports. The image name is the
    /// file name (`nmr_client.sys`).
    pub fn load(path: &Path) -> Result<Driver, LoadError> {
        crate::fault::install();
        let data =
            std::fs::read(path).map_err(|e| LoadError::Io(format!("{}: {e}", path.display())))?;
        let name = path
            .file_name()
            .map_or_else(|| "image".into(), |n| n.to_string_lossy().into_owned());
        Self::load_bytes(&data, &name, &path.to_string_lossy())
    }

    /// Maps an image from its bytes.
    pub fn load_bytes(data: &[u8], name: &str, path: &str) -> Result<Driver, LoadError> {
        crate::fault::install();
        let ctx = Box::new(ImageCtx::new(name, path));
        let mut thunks = Thunks::new()?;
        let ctx_ptr: *const ImageCtx = &*ctx;
        let image = MappedImage::map(data, &mut |dll, function| {
            // A kernel export: a valid indirect call target (cfg.rs).
            thunks
                .resolve(dll, function, ctx_ptr)
                .inspect(|&a| crate::cfg::allow_export(a))
        })?;
        thunks.seal()?;
        let registered = registry::register_image(
            image.base(),
            image.size(),
            ctx.name,
            ctx.path,
            image.preferred_base(),
        )
        .ok_or_else(|| LoadError::Os("too many images mapped at once".into()))?;
        let guarded = crate::cfg::register(image.base(), image.size(), image.guard())
            .ok_or_else(|| LoadError::Os("too many images mapped at once".into()))?;
        IDS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((image.base(), image.size(), ctx.id));
        let mut object = Box::new(DriverObject([0; DRIVER_OBJECT_SIZE]));
        object.0[0..2].copy_from_slice(&IO_TYPE_DRIVER.to_le_bytes());
        object.0[2..4].copy_from_slice(&(DRIVER_OBJECT_SIZE as u16).to_le_bytes());
        let stem = name.strip_suffix(".sys").unwrap_or(name);
        let registry_path: Vec<u16> =
            format!("\\Registry\\Machine\\System\\CurrentControlSet\\Services\\{stem}")
                .encode_utf16()
                .collect();
        Ok(Driver {
            ctx,
            image: Some(image),
            thunks: Some(thunks),
            registered: Some(registered),
            guarded: Some(guarded),
            object,
            registry_path,
            state: State::Mapped,
            pinned: false,
        })
    }

    /// The image name.
    pub fn name(&self) -> &'static str {
        self.ctx.name
    }

    /// The mapped image.
    pub fn image(&self) -> &MappedImage {
        self.image.as_ref().expect("mapped while the driver lives")
    }

    /// Where it is in its life.
    pub fn state(&self) -> State {
        self.state
    }

    /// Calls `DriverEntry`. On success, checks that `DriverUnload` was set
    /// (and nothing else in the `DRIVER_OBJECT` written); on failure, that
    /// nothing was left behind (Windows unmaps the image at once). What is
    /// wrong is recorded as a [`problems::Problem`].
    pub fn start(&mut self) -> NTSTATUS {
        assert_eq!(self.state, State::Mapped, "DriverEntry is called once");
        let entry = match self.image().export("DriverEntry") {
            Ok(e) => e,
            Err(e) => {
                problems::report(Kind::BadCall, self.name(), e.to_string());
                self.state = State::Stopped;
                return STATUS_UNSUCCESSFUL;
            }
        };
        type DriverEntry =
            unsafe extern "win64" fn(*mut DriverObject, *const UnicodeString) -> NTSTATUS;
        // SAFETY: the image's exported DriverEntry, a Windows x64 function of
        // this signature (the WDK's DRIVER_INITIALIZE).
        let entry = unsafe { std::mem::transmute::<usize, DriverEntry>(entry) };
        let before = self.object.0;
        let path = UnicodeString {
            length: (self.registry_path.len() * 2) as u16,
            maximum_length: (self.registry_path.len() * 2) as u16,
            buffer: self.registry_path.as_ptr(),
        };
        // SAFETY: a valid DRIVER_OBJECT and registry path, alive across the
        // call; the image stays mapped. On a kernel stack of its own.
        let status = unsafe {
            crate::stack::call_image(
                entry as usize,
                &raw mut *self.object as usize,
                &raw const path as usize,
            )
        } as NTSTATUS;
        let changed: Vec<usize> = (0..DRIVER_OBJECT_SIZE)
            .step_by(8)
            .filter(|&o| before[o..o + 8] != self.object.0[o..o + 8])
            .collect();
        for &offset in changed.iter().filter(|&&o| o != DRIVER_UNLOAD_OFFSET) {
            let field = if (MAJOR_FUNCTION_OFFSET..MAJOR_FUNCTION_OFFSET + 28 * 8).contains(&offset)
            {
                format!("MajorFunction[{}]", (offset - MAJOR_FUNCTION_OFFSET) / 8)
            } else {
                "a field the drivers do not set".into()
            };
            problems::report(
                Kind::NoUnload,
                self.name(),
                format!(
                    "DriverEntry wrote DRIVER_OBJECT+{offset} ({field}), not DriverUnload at \
                     +{DRIVER_UNLOAD_OFFSET}: the DriverObject layout in the shell is wrong"
                ),
            );
        }
        if nt_success(status) {
            self.state = State::Started;
            if self.unload_routine().is_none() {
                problems::report(
                    Kind::NoUnload,
                    self.name(),
                    format!(
                        "DriverEntry returned {status:#x} without setting DriverUnload \
                         (DRIVER_OBJECT+{DRIVER_UNLOAD_OFFSET} is null): Windows could never stop this driver"
                    ),
                );
            }
        } else {
            self.state = State::Stopped;
            self.check_nothing_left("DriverEntry failed", Kind::FailedEntryLeftovers);
        }
        status
    }

    fn unload_routine(&self) -> Option<usize> {
        let b = &self.object.0[DRIVER_UNLOAD_OFFSET..DRIVER_UNLOAD_OFFSET + 8];
        let p = usize::from_le_bytes(b.try_into().expect("8 bytes"));
        (p != 0).then_some(p)
    }

    /// Calls `DriverUnload` and checks what Verifier checks at unload: no
    /// pool block and no thread of the image left. Returns false when there
    /// is no unload routine (the driver cannot be stopped).
    pub fn stop(&mut self) -> bool {
        assert_eq!(
            self.state,
            State::Started,
            "DriverUnload after a successful DriverEntry"
        );
        let Some(unload) = self.unload_routine() else {
            self.pinned = true; // it still runs: never unmap it
            self.state = State::Stopped;
            return false;
        };
        type DriverUnload = unsafe extern "win64" fn(*mut DriverObject);
        // SAFETY: the routine DriverEntry stored, in the still-mapped image.
        let unload = unsafe { std::mem::transmute::<usize, DriverUnload>(unload) };
        // SAFETY: the driver's own object; called once, at PASSIVE, on a
        // kernel stack of its own.
        unsafe { crate::stack::call_image(unload as usize, &raw mut *self.object as usize, 0) };
        self.state = State::Stopped;
        self.check_nothing_left("DriverUnload returned", Kind::PoolLeak);
        true
    }

    fn check_nothing_left(&mut self, when: &str, pool_kind: Kind) {
        let id = self.ctx.id;
        let blocks = pool::live_blocks_of(id);
        if !blocks.is_empty() {
            // Blocks the driver kept on purpose (a failed deregistration
            // keeps the module) are still leaks to report; they may still be
            // used, so the image is kept mapped.
            problems::report(
                pool_kind,
                self.name(),
                format!(
                    "{when} with {} pool block(s) still allocated: {} \
                     (Driver Verifier: bug check 0xC4, pool leak at unload)",
                    blocks.len(),
                    blocks.join("; ")
                ),
            );
            self.pinned = true;
        }
        let (running, open) = ntoskrnl::threads_of(id);
        if running != 0 || open != 0 {
            problems::report(
                Kind::ThreadLeak,
                self.name(),
                format!(
                    "{when} with {running} system thread(s) still running and {open} thread \
                     handle(s) open: the image would be unmapped under them"
                ),
            );
            if running != 0 {
                self.pinned = true;
            }
            ntoskrnl::forget_threads_of(id);
        }
    }

    /// The serial of this load (pool and thread accounting).
    pub fn id(&self) -> u64 {
        self.ctx.id
    }

    /// Whether it will stay mapped after drop (something may still run in it).
    pub fn pinned(&self) -> bool {
        self.pinned
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if self.state == State::Started || self.pinned {
            // Still registered or still running: unmapping would pull code
            // from under the model or a thread. Keep everything, for good.
            std::mem::forget(self.image.take());
            std::mem::forget(self.thunks.take());
            std::mem::forget(self.registered.take());
            std::mem::forget(self.guarded.take());
            let ctx = std::mem::replace(&mut self.ctx, Box::new(ImageCtx::new("gone", "gone")));
            std::mem::forget(ctx);
            return;
        }
        let base = self.image().base();
        // Its static spin locks are gone: the addresses may be others' next.
        crate::ntoskrnl::forget_locks_in(base, self.image().size());
        IDS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(b, _, _)| *b != base);
        pool::forget_image(self.ctx.id);
        crate::dispatch::forget_image(base);
        crate::netio::forget_image(base);
    }
}
