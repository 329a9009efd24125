//! The drivers' global allocator: one kernel pool behaviour for both images.
//!
//! Both kernel surfaces (`km_wdk.rs`, `km_raw.rs`) allocate through
//! [`PoolAllocator`]: non-paged pool from `ExAllocatePool2`, our tag
//! ([`crate::POOL_TAG`], `NmrR`) on every block, every block returned with
//! `ExFreePoolWithTag` and the same tag, and every alignment honoured.
//!
//! Why not `wdk_alloc::WdkAllocator` (wdk-alloc 0.4.2) on the `wdk` surface:
//! it tags every block `rust`, frees with untagged `ExFreePool`, and ignores
//! the layout's alignment (its own `FIXME`). The pool aligns blocks to 16 bytes
//! on x64 (`MEMORY_ALLOCATION_ALIGNMENT`), so a type aligned to 64 or 128
//! bytes (a cache-line-padded per-processor slot) would get a misaligned block
//! from it: undefined behaviour, on one image only. One allocator of our own
//! gives both images the same tag in poolmon and Driver Verifier, and the
//! same alignment guarantee.
//!
//! The arithmetic lives here, away from the kernel, so that host tests run it
//! against a model pool ([`RawPool`]) for every alignment up to a page.

use core::alloc::{GlobalAlloc, Layout};

/// The pool underneath [`PoolAllocator`]: `ExAllocatePool2` and
/// `ExFreePoolWithTag` in the drivers, a model in the tests.
///
/// # Safety
///
/// `allocate` returns null or a block of at least `size` bytes aligned to
/// [`RawPool::ALIGNMENT`], valid until it is passed to `free`.
pub unsafe trait RawPool {
    /// The alignment of every block `allocate` returns: a power of two, at
    /// least the size of a pointer.
    const ALIGNMENT: usize;

    /// Allocates `size` bytes tagged `tag`, or returns null.
    ///
    /// # Safety
    ///
    /// `size` is not zero.
    unsafe fn allocate(&self, size: usize, tag: u32) -> *mut u8;

    /// Returns a block.
    ///
    /// # Safety
    ///
    /// `block` came from `allocate` with the same `tag` and is freed once.
    unsafe fn free(&self, block: *mut u8, tag: u32);
}

/// A [`GlobalAlloc`] over a [`RawPool`] that tags every block and honours
/// every alignment.
///
/// A layout aligned to at most [`RawPool::ALIGNMENT`] is one pool block. A
/// larger alignment `a` takes `size + a` bytes: the first `a`-aligned address
/// at least one pointer into the block is at most `a` bytes in (the block is
/// `ALIGNMENT`-aligned and `a` a larger power of two), so the aligned block
/// fits, and the word just below it keeps the pool's pointer for `dealloc`.
pub struct PoolAllocator<P> {
    pool: P,
    tag: u32,
}

impl<P: RawPool> PoolAllocator<P> {
    /// Checked when an allocator is built: the header word below an
    /// over-aligned block is itself aligned and fits in front of it.
    const VALID_POOL: () = assert!(
        P::ALIGNMENT.is_power_of_two() && P::ALIGNMENT >= size_of::<*mut u8>(),
        "RawPool::ALIGNMENT must be a power of two of at least a pointer's size"
    );

    /// An allocator that tags every block of `pool` with `tag`.
    pub const fn new(pool: P, tag: u32) -> Self {
        let () = Self::VALID_POOL;
        Self { pool, tag }
    }
}

/// Where an over-aligned block starts in a pool block at address `raw`:
/// the first multiple of `align` at least one pointer past `raw`.
fn aligned_offset(raw: usize, align: usize) -> usize {
    (raw + size_of::<*mut u8>()).next_multiple_of(align) - raw
}

// SAFETY: every block comes from the pool (see `RawPool`'s contract) and is
// returned to it with the pool's own pointer and the same tag; a block is
// aligned as its layout asks (the arithmetic is explained on the type and
// tested against every alignment up to a page); null is returned when the
// pool has nothing, as GlobalAlloc requires.
unsafe impl<P: RawPool> GlobalAlloc for PoolAllocator<P> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= P::ALIGNMENT {
            // SAFETY: GlobalAlloc callers never ask for zero bytes.
            return unsafe { self.pool.allocate(layout.size(), self.tag) };
        }
        let Some(total) = layout.size().checked_add(layout.align()) else {
            return core::ptr::null_mut();
        };
        // SAFETY: `total` is not zero.
        let raw = unsafe { self.pool.allocate(total, self.tag) };
        if raw.is_null() {
            return raw;
        }
        let offset = aligned_offset(raw.addr(), layout.align());
        // SAFETY: `raw` is ALIGNMENT-aligned and `align` a larger power of
        // two, so `size_of::<*mut u8>() <= offset <= align`: the aligned block
        // `aligned .. aligned + size` and the word below it lie inside the
        // `size + align` bytes of the pool block, and that word is aligned
        // (`aligned` is, and ALIGNMENT is at least a pointer's size).
        unsafe {
            let aligned = raw.add(offset);
            aligned.cast::<*mut u8>().sub(1).write(raw);
            aligned
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let raw = if layout.align() <= P::ALIGNMENT {
            ptr
        } else {
            // SAFETY: `alloc` wrote the pool's pointer in the word below the
            // block it returned for this layout.
            unsafe { ptr.cast::<*mut u8>().sub(1).read() }
        };
        // SAFETY: `raw` is the pool's own block, allocated with our tag.
        unsafe { self.pool.free(raw, self.tag) };
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use core::cell::{Cell, RefCell};
    use std::alloc::{alloc, dealloc};
    use std::collections::HashMap;
    use std::vec::Vec;

    use super::*;

    const TAG: u32 = u32::from_le_bytes(*b"NmrR");
    /// The largest alignment a model block can be shifted within.
    const PAGE: usize = 4096;

    /// A pool like the kernel's on x64: blocks aligned to 16 bytes and no
    /// more. Each block is placed at the next 16-byte step inside a page, so
    /// that the allocator sees every position a 16-aligned block can have
    /// relative to a larger alignment. Every block it hands out is recorded;
    /// `free` fails the test unless the pointer and tag are those of a live
    /// block.
    struct ModelPool {
        live: RefCell<HashMap<usize, Block>>,
        next_shift: Cell<usize>,
        allocated: Cell<usize>,
        freed: Cell<usize>,
        /// Requests above this fail, as the kernel pool fails.
        limit: usize,
    }

    struct Block {
        base: *mut u8,
        layout: Layout,
        size: usize,
        tag: u32,
    }

    impl ModelPool {
        fn new() -> Self {
            Self {
                live: RefCell::new(HashMap::new()),
                next_shift: Cell::new(0),
                allocated: Cell::new(0),
                freed: Cell::new(0),
                limit: 1 << 20,
            }
        }

        /// The live block containing `start .. start + len`, if any.
        fn block_holding(&self, start: usize, len: usize) -> Option<(usize, usize)> {
            self.live.borrow().iter().find_map(|(&addr, block)| {
                (addr <= start && start + len <= addr + block.size).then_some((addr, block.size))
            })
        }
    }

    // SAFETY: blocks are 16-aligned (a 16-byte step inside a page-aligned
    // allocation) and at least `size` bytes, valid until `free`.
    unsafe impl RawPool for ModelPool {
        const ALIGNMENT: usize = 16;

        unsafe fn allocate(&self, size: usize, tag: u32) -> *mut u8 {
            assert_ne!(size, 0, "the pool is never asked for zero bytes");
            if size > self.limit {
                return core::ptr::null_mut();
            }
            let shift = self.next_shift.get();
            self.next_shift.set((shift + Self::ALIGNMENT) % PAGE);
            let layout = Layout::from_size_align(size + shift, PAGE).unwrap();
            // SAFETY: a non-zero size.
            let base = unsafe { alloc(layout) };
            assert!(!base.is_null(), "the host is out of memory");
            // SAFETY: `shift < PAGE <= layout.size() - size`.
            let block = unsafe { base.add(shift) };
            let previous = self.live.borrow_mut().insert(
                block.addr(),
                Block {
                    base,
                    layout,
                    size,
                    tag,
                },
            );
            assert!(previous.is_none());
            self.allocated.set(self.allocated.get() + 1);
            block
        }

        unsafe fn free(&self, block: *mut u8, tag: u32) {
            let Some(entry) = self.live.borrow_mut().remove(&block.addr()) else {
                panic!("free({block:p}): not a pointer the pool returned, or freed twice");
            };
            assert_eq!(entry.tag, tag, "freed with another tag than allocated");
            self.freed.set(self.freed.get() + 1);
            // SAFETY: allocated above with this layout.
            unsafe { dealloc(entry.base, entry.layout) };
        }
    }

    /// Allocates `layout`, checks where the block lies, fills it, and
    /// returns it with the pool block that holds it.
    fn alloc_checked(allocator: &PoolAllocator<ModelPool>, layout: Layout) -> *mut u8 {
        // SAFETY: a non-zero size.
        let ptr = unsafe { allocator.alloc(layout) };
        assert!(!ptr.is_null(), "{layout:?}: null");
        assert_eq!(
            ptr.addr() % layout.align(),
            0,
            "{layout:?}: misaligned {ptr:p}"
        );
        let (block, block_size) = allocator
            .pool
            .block_holding(ptr.addr(), layout.size())
            .unwrap_or_else(|| panic!("{layout:?}: {ptr:p} is not inside one pool block"));
        if layout.align() <= ModelPool::ALIGNMENT {
            assert_eq!(ptr.addr(), block, "{layout:?}: a plain pool block");
            assert_eq!(block_size, layout.size());
        } else {
            assert!(
                ptr.addr() - block >= size_of::<*mut u8>(),
                "no room for the header"
            );
            assert_eq!(block_size, layout.size() + layout.align());
        }
        // The caller owns every byte: nothing below may be disturbed by it.
        // SAFETY: `ptr .. ptr + size` is inside a live block (checked above).
        unsafe { ptr.write_bytes(0xA5, layout.size()) };
        ptr
    }

    #[test]
    fn every_alignment_up_to_a_page_is_honoured_and_freed_with_the_pools_pointer() {
        let allocator = PoolAllocator::new(ModelPool::new(), TAG);
        let sizes = [1, 7, 8, 15, 16, 17, 24, 63, 64, 100, 1000, 4095, 4096, 5000];
        let mut count = 0;
        for align in (0..=12).map(|shift| 1usize << shift) {
            // Every position of a 16-aligned pool block relative to `align`
            // (the model moves 16 bytes per block, through a whole page).
            for round in 0..PAGE / ModelPool::ALIGNMENT {
                let size = sizes[round % sizes.len()];
                let layout = Layout::from_size_align(size, align).unwrap();
                let ptr = alloc_checked(&allocator, layout);
                // SAFETY: allocated above with this layout.
                unsafe { allocator.dealloc(ptr, layout) };
                count += 1;
            }
        }
        let pool = &allocator.pool;
        assert_eq!(count, 13 * 256);
        assert_eq!(pool.allocated.get(), count);
        assert_eq!(pool.freed.get(), count, "every block went back to the pool");
        assert!(pool.live.borrow().is_empty());
    }

    #[test]
    fn blocks_live_at_once_do_not_overlap_and_keep_their_contents() {
        let allocator = PoolAllocator::new(ModelPool::new(), TAG);
        let mut held = Vec::new();
        for (i, align) in [1, 8, 16, 32, 64, 128, 256, 4096].into_iter().enumerate() {
            for size in [1, 33, 200] {
                let layout = Layout::from_size_align(size, align).unwrap();
                let ptr = alloc_checked(&allocator, layout);
                // SAFETY: a live block of `size` bytes.
                unsafe { ptr.write_bytes(i as u8, size) };
                held.push((ptr, layout, i as u8));
            }
        }
        for &(ptr, layout, fill) in &held {
            // SAFETY: still live, written above.
            let bytes = unsafe { core::slice::from_raw_parts(ptr, layout.size()) };
            assert!(
                bytes.iter().all(|&b| b == fill),
                "{layout:?} was overwritten"
            );
        }
        for (ptr, layout, _) in held {
            // SAFETY: allocated above with this layout, freed once.
            unsafe { allocator.dealloc(ptr, layout) };
        }
        assert!(allocator.pool.live.borrow().is_empty());
        assert_eq!(allocator.pool.allocated.get(), allocator.pool.freed.get());
    }

    #[test]
    fn realloc_keeps_the_contents_and_the_alignment() {
        let allocator = PoolAllocator::new(ModelPool::new(), TAG);
        let layout = Layout::from_size_align(48, 128).unwrap();
        let ptr = alloc_checked(&allocator, layout);
        // SAFETY: 48 live bytes.
        unsafe { core::ptr::copy_nonoverlapping([7u8; 48].as_ptr(), ptr, 48) };
        // SAFETY: `ptr` is live with `layout`; the new size is not zero.
        let grown = unsafe { allocator.realloc(ptr, layout, 1000) };
        assert_eq!(grown.addr() % 128, 0);
        // SAFETY: `grown` is live and at least 48 bytes; realloc copied them.
        let kept = unsafe { core::slice::from_raw_parts(grown, 48) };
        assert_eq!(kept, &[7u8; 48]);
        // SAFETY: `grown` is live with the grown layout.
        unsafe { allocator.dealloc(grown, Layout::from_size_align(1000, 128).unwrap()) };
        assert!(allocator.pool.live.borrow().is_empty());
        assert_eq!(allocator.pool.freed.get(), 2);
    }

    #[test]
    fn an_empty_pool_gives_null_for_plain_and_over_aligned_layouts() {
        let allocator = PoolAllocator::new(ModelPool::new(), TAG);
        let too_big = allocator.pool.limit + 1;
        for align in [8, 16, 64, 4096] {
            let layout = Layout::from_size_align(too_big, align).unwrap();
            // SAFETY: a non-zero size.
            assert!(unsafe { allocator.alloc(layout) }.is_null(), "{layout:?}");
        }
        assert_eq!(allocator.pool.allocated.get(), 0);
    }

    #[test]
    fn the_offset_is_at_least_a_pointer_and_at_most_the_alignment() {
        for align in [32usize, 64, 128, 4096] {
            for raw in (0..2 * align).step_by(16).map(|r| 0x1_0000 + r) {
                let offset = aligned_offset(raw, align);
                assert_eq!((raw + offset) % align, 0);
                assert!(
                    (8..=align).contains(&offset),
                    "raw {raw:#x} align {align}: {offset}"
                );
            }
        }
    }
}
