//! What the fault handler may read: the address ranges of mapped images and
//! of kernel stack guard pages, in fixed tables of atomics (a signal handler
//! can neither lock nor allocate).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Ranges registered at once, per table. Images that cannot be unloaded
/// stay registered for good, so this is generous; the scan is linear.
const SLOTS: usize = 1024;
/// Distinct names and paths.
const NAMES_MAX: usize = 64;

/// One range with a name: `base == 0` means free.
struct Slot {
    base: AtomicUsize,
    len: AtomicUsize,
    /// Index into `NAMES` + 1 (0: none).
    name: AtomicUsize,
    /// Index into `NAMES` + 1 (0: none): the image's path on disk.
    path: AtomicUsize,
    /// The image's preferred base (0 for guard pages).
    preferred: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    base: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    name: AtomicUsize::new(0),
    path: AtomicUsize::new(0),
    preferred: AtomicUsize::new(0),
};

static IMAGES: [Slot; SLOTS] = [EMPTY; SLOTS];
static GUARDS: [Slot; SLOTS] = [EMPTY; SLOTS];
static DISPATCH: [Slot; SLOTS] = [EMPTY; SLOTS];

/// Interned strings: names and paths are few (two images), so interning
/// bounds what is leaked to make them `'static` for the signal handler.
static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
/// The same strings, readable without a lock: pointer and length per index.
static NAME_PTRS: [AtomicUsize; NAMES_MAX] = [const { AtomicUsize::new(0) }; NAMES_MAX];
static NAME_LENS: [AtomicUsize; NAMES_MAX] = [const { AtomicUsize::new(0) }; NAMES_MAX];

fn intern(s: &str) -> usize {
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = names.iter().position(|n| *n == s) {
        return i + 1;
    }
    assert!(
        names.len() < SLOTS,
        "more than {SLOTS} distinct image names"
    );
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    let i = names.len();
    NAME_LENS[i].store(leaked.len(), Ordering::Relaxed);
    NAME_PTRS[i].store(leaked.as_ptr() as usize, Ordering::Release);
    names.push(leaked);
    i + 1
}

/// `s` as a `'static` string, interned (the same text gives the same string).
pub fn intern_str(s: &str) -> &'static str {
    name(intern(s))
}

fn name(index: usize) -> &'static str {
    if index == 0 {
        return "?";
    }
    let ptr = NAME_PTRS[index - 1].load(Ordering::Acquire);
    let len = NAME_LENS[index - 1].load(Ordering::Relaxed);
    // SAFETY: published by `intern` (Release after the length) from a leaked
    // `&'static str`, never freed or changed.
    unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(ptr as *const u8, len)) }
}

/// A registered range; unregistered on drop.
pub struct Registered {
    table: &'static [Slot; SLOTS],
    index: usize,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table[self.index].base.store(0, Ordering::Release);
    }
}

fn register(
    table: &'static [Slot; SLOTS],
    base: usize,
    len: usize,
    name: &str,
    path: &str,
    preferred: u64,
) -> Option<Registered> {
    let (name, path) = (intern(name), intern(path));
    for (index, slot) in table.iter().enumerate() {
        // Claim with a placeholder base of 1, fill in, then publish the base.
        if slot
            .base
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            slot.len.store(len, Ordering::Relaxed);
            slot.name.store(name, Ordering::Relaxed);
            slot.path.store(path, Ordering::Relaxed);
            slot.preferred.store(preferred as usize, Ordering::Relaxed);
            slot.base.store(base, Ordering::Release);
            return Some(Registered { table, index });
        }
    }
    None
}

/// A range found by address.
#[derive(Clone, Copy, Debug)]
pub struct Found {
    /// Start of the range.
    pub base: usize,
    /// The image (or thread owner) name.
    pub name: &'static str,
    /// The image's path.
    pub path: &'static str,
    /// The image's preferred base (what llvm-symbolizer wants addresses
    /// relative to).
    pub preferred: usize,
}

fn find(table: &'static [Slot; SLOTS], addr: usize) -> Option<Found> {
    table.iter().find_map(|slot| {
        let base = slot.base.load(Ordering::Acquire);
        let len = slot.len.load(Ordering::Relaxed);
        (base > 1 && addr >= base && addr - base < len).then(|| Found {
            base,
            name: name(slot.name.load(Ordering::Relaxed)),
            path: name(slot.path.load(Ordering::Relaxed)),
            preferred: slot.preferred.load(Ordering::Relaxed),
        })
    })
}

/// Registers a mapped image; None when the table is full.
pub fn register_image(
    base: usize,
    len: usize,
    name: &str,
    path: &str,
    preferred: u64,
) -> Option<Registered> {
    register(&IMAGES, base, len, name, path, preferred)
}

/// Registers the guard page of a kernel stack, owned by the image `name`;
/// None when the table is full.
pub fn register_guard(base: usize, len: usize, name: &str, path: &str) -> Option<Registered> {
    register(&GUARDS, base, len, name, path, 0)
}

/// Registers the page of a dispatch table copy and its thunks, owned by
/// the image `name`; None when the table is full.
pub fn register_dispatch(base: usize, len: usize, name: &str, path: &str) -> Option<Registered> {
    register(&DISPATCH, base, len, name, path, 0)
}

/// The dispatch table copy whose thunk is at `addr` (async-signal-safe).
pub fn dispatch_at(addr: usize) -> Option<Found> {
    find(&DISPATCH, addr)
}

/// The image mapped at `addr` (async-signal-safe).
pub fn image_at(addr: usize) -> Option<Found> {
    find(&IMAGES, addr)
}

/// The kernel stack guard page at `addr` (async-signal-safe).
pub fn guard_at(addr: usize) -> Option<Found> {
    find(&GUARDS, addr)
}
