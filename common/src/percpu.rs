//! One value per processor, each on its own cache line.
//!
//! The building block of the per-processor rundown and of the binding set's
//! per-processor reader locks: a thread touches the value of the processor it
//! runs on, so threads on different processors never write the same cache
//! line. Sized once, from the processor count the [`crate::nmr::Nmr`] surface
//! reports (`KeQueryMaximumProcessorCountEx(ALL_PROCESSOR_GROUPS)` on Windows,
//! which includes processors that may be hot-added later), and allocated
//! fallibly through the global allocator with the padded alignment (the
//! kernel heap can run out: the caller then declines).

use alloc::boxed::Box;
use core::alloc::Layout;
use core::ops::Deref;
use core::ptr;

use crate::binding::OutOfMemory;

/// `T` alone on its cache line(s): the alignment is also the size, so two
/// neighbours in an array never share a line.
///
/// 128 bytes on x86_64 and aarch64: their 64-byte lines are prefetched in
/// adjacent pairs (Intel's spatial prefetcher; Apple and Neoverse cores use
/// 128-byte lines outright), so two writers 64 bytes apart still contend.
/// 64 bytes elsewhere.
#[cfg_attr(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    repr(C, align(128))
)]
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    repr(C, align(64))
)]
#[derive(Debug, Default)]
pub struct CachePadded<T>(pub T);

impl<T> Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The bytes one padded value takes: the unit of the per-processor memory cost.
pub const SLOT_BYTES: usize = core::mem::size_of::<CachePadded<usize>>();

/// One `T` per processor, each cache-line padded.
#[derive(Debug)]
pub struct PerProcessor<T> {
    slots: Box<[CachePadded<T>]>,
}

impl<T> PerProcessor<T> {
    /// `count` values (at least one) made by `init`, or [`OutOfMemory`].
    /// Never aborts on an exhausted heap, unlike `Box::new`.
    pub fn try_new(count: usize, mut init: impl FnMut() -> T) -> Result<Self, OutOfMemory> {
        let count = count.max(1);
        let layout = Layout::array::<CachePadded<T>>(count).map_err(|_| OutOfMemory)?;
        // `CachePadded` is at least 64 bytes, and `count >= 1`: never zero-sized.
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc::alloc(layout) }.cast::<CachePadded<T>>();
        if raw.is_null() {
            return Err(OutOfMemory);
        }
        for i in 0..count {
            // SAFETY: `raw` holds `count` uninitialised values; `i < count`.
            unsafe { raw.add(i).write(CachePadded(init())) };
        }
        // SAFETY: `raw` is a fresh allocation of `[CachePadded<T>; count]`
        // with exactly the layout a boxed slice of that length frees with,
        // and every element was written above.
        let slots = unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(raw, count)) };
        Ok(PerProcessor { slots })
    }

    /// How many values (processors) there are: at least one.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Never: there is always at least one value.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The index of `processor`'s value. A processor the count did not cover
    /// (a trait implementation that broke its promise) shares a value with
    /// another: slower, never out of bounds.
    #[inline(always)]
    pub fn index_of(&self, processor: usize) -> usize {
        let len = self.slots.len();
        if processor < len {
            processor
        } else {
            processor % len
        }
    }

    /// The value at `index`, which came from [`PerProcessor::index_of`].
    #[inline(always)]
    pub fn at(&self, index: usize) -> &T {
        &self.slots[index].0
    }

    /// The first padded value, with the provenance of the whole array (to
    /// reach every processor's value from one pointer).
    pub(crate) fn as_ptr(&self) -> *const CachePadded<T> {
        self.slots.as_ptr()
    }

    /// Every value, in processor order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.slots.iter().map(|slot| &slot.0)
    }

    /// The heap bytes these values take.
    pub fn heap_bytes(&self) -> usize {
        core::mem::size_of_val::<[CachePadded<T>]>(&self.slots)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn values_are_padded_apart_and_indices_stay_in_bounds() {
        let p = PerProcessor::try_new(3, || 0u8).unwrap();
        assert_eq!(p.len(), 3);
        let a = ptr::from_ref(p.at(0)).addr();
        let b = ptr::from_ref(p.at(1)).addr();
        assert_eq!(b - a, SLOT_BYTES);
        assert!(SLOT_BYTES >= 64 && a.is_multiple_of(SLOT_BYTES));
        assert_eq!(p.index_of(2), 2);
        assert_eq!(p.index_of(7), 1, "an uncovered processor maps into range");
        assert_eq!(p.heap_bytes(), 3 * SLOT_BYTES);
    }

    #[test]
    fn zero_processors_still_get_one_value() {
        let p = PerProcessor::try_new(0, || 5u32).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(*p.at(p.index_of(9)), 5);
    }

    #[test]
    fn an_impossible_size_is_out_of_memory_not_an_abort() {
        assert_eq!(
            PerProcessor::try_new(usize::MAX / 2, || 0u8).err(),
            Some(OutOfMemory)
        );
    }
}
