//! A heap block of exactly the size a peer declares, so that a read past the
//! declared size leaves the allocation: AddressSanitizer (the fuzzers' default
//! sanitizer) reports it at once, and Miri does too.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

/// `len` bytes starting `offset` bytes into an 8-aligned block of
/// `offset + len` bytes: the last byte of the block is the last byte declared.
pub struct ExactBuf {
    base: NonNull<u8>,
    layout: Layout,
    offset: usize,
    len: usize,
}

impl ExactBuf {
    /// A zeroed block of `len` bytes at `offset` (0..8) past an 8-aligned address.
    pub fn new(len: usize, offset: usize) -> Self {
        assert!(offset < 8);
        // Never zero-sized: a 0-byte table still has an address to hand out.
        let layout = Layout::from_size_align((offset + len).max(1), 8).expect("a small layout");
        // SAFETY: the layout has a non-zero size.
        let base = NonNull::new(unsafe { alloc_zeroed(layout) })
            .unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        ExactBuf {
            base,
            layout,
            offset,
            len,
        }
    }

    /// The first declared byte.
    pub fn as_ptr(&self) -> *const u8 {
        // SAFETY: `offset <= offset + len`, the block's size (or one past
        // its end when nothing is declared): in bounds.
        unsafe { self.base.as_ptr().add(self.offset) }
    }

    /// The declared length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte is declared.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes `bytes` at `at`, or as much of them as fits in the declared
    /// length (a short publication simply ends early).
    pub fn write(&mut self, at: usize, bytes: &[u8]) {
        let fits = self.len.saturating_sub(at).min(bytes.len());
        if fits == 0 {
            return;
        }
        // SAFETY: `at + fits <= len`, inside the block; `bytes` is another allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.base.as_ptr().add(self.offset + at),
                fits,
            );
        }
    }
}

impl ExactBuf {
    /// Writes a value (a function pointer of a table) at `at` if it fits in
    /// the declared length, keeping its provenance (Miri calls through it).
    pub fn write_value<T: Copy>(&mut self, at: usize, value: T) {
        if at + size_of::<T>() <= self.len {
            // SAFETY: `at + size_of::<T>() <= len`: inside the block; unaligned
            // writes need no alignment.
            unsafe {
                self.base
                    .as_ptr()
                    .add(self.offset + at)
                    .cast::<T>()
                    .write_unaligned(value);
            }
        }
    }
}

impl Drop for ExactBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.base.as_ptr(), self.layout) }
    }
}
