//! What the stand-ins know of the image that called them: its load serial
//! and names. Passed to the stand-ins that need it (the pool, the NMR
//! registrations) by a per-image thunk that loads it into a free argument
//! register, since a tail call can leave a host return address on the stack.

use std::sync::atomic::{AtomicU64, Ordering};

/// One loaded image (one mapping: a reload is a new one).
#[derive(Debug)]
pub struct ImageCtx {
    /// Unique per load.
    pub id: u64,
    /// `nmr_client.sys`.
    pub name: &'static str,
    /// The file it was loaded from.
    pub path: &'static str,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl ImageCtx {
    /// A new context for one load of `name` from `path`.
    pub fn new(name: &str, path: &str) -> ImageCtx {
        ImageCtx {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: crate::registry::intern_str(name),
            path: crate::registry::intern_str(path),
        }
    }

    /// The context a thunk passed, or a placeholder when null.
    ///
    /// # Safety
    ///
    /// `p` is null or an `ImageCtx` that outlives the call (the driver owns
    /// it for as long as its image is mapped).
    pub unsafe fn from_ptr<'a>(p: *const ImageCtx) -> Option<&'a ImageCtx> {
        // SAFETY: the caller's contract.
        unsafe { p.as_ref() }
    }
}

/// The image name for an address inside a mapped image, or `?`.
pub fn name_at(addr: usize) -> &'static str {
    crate::registry::image_at(addr).map_or("?", |f| f.name)
}
