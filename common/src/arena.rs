//! The per-processor arena of rundown slots: 8 bytes per processor per
//! binding side, as Linux's `percpu_ref` pays, instead of a padded line.
//!
//! One arena per module (the [`crate::binding::BindingSet`] holds it). It is
//! a list of chunks; a chunk has one page per processor, and a page is one
//! padded line ([`crate::percpu::SLOT_BYTES`], 128 bytes on x86_64) of
//! [`SLOTS_PER_PAGE`] 8-byte slots. A binding side leases one index of one
//! chunk, valid on every processor's page: its slot for processor `p` is word
//! `index` of page `p`. So the slots of up to [`SLOTS_PER_PAGE`] bindings on
//! one processor share a line, and only that processor's callers write it
//! (a migrated release aside); no binding pays a whole line.
//!
//! - Lease ([`SlotArena::lease`], at attach, PASSIVE): claims a free index of
//!   a chunk with one compare-and-swap on the chunk's bitmap, and resets that
//!   index's slot on every page. When every chunk is full it allocates one
//!   more (fallibly: the attach is then declined) and publishes it with a
//!   compare-and-swap on the list head. Never blocks, never panics; two
//!   attaches that grow at once each publish a chunk (a few lines wasted,
//!   nothing lost).
//! - Return (the [`crate::rundown::Rundown`]'s drop, in the cleanup, any
//!   IRQL): one `fetch_and` clearing the index's bit. It comes after every
//!   release of every call the binding ever admitted (the cleanup follows the
//!   drain report, which follows them all), so no stale release can reach a
//!   slot once it is leased again; `Release` on the return and `Acquire` on
//!   the claim order the old binding's last slot write before the reset.
//! - Chunks are freed when the arena is dropped (the module's unload, after
//!   the NMR's deregistration wait: every binding is gone). A chunk that
//!   still has a leased index then is leaked instead of freed (a caller
//!   broke the order): never a use after free.

use core::ptr::{self, NonNull};

use crate::binding::{OutOfMemory, try_box};
use crate::percpu::{PerProcessor, SLOT_BYTES};

#[cfg(not(loom))]
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Slots in one processor's page of one chunk: the bindings that share one
/// line (16 on x86_64 and aarch64).
pub const SLOTS_PER_PAGE: usize = SLOT_BYTES / size_of::<usize>();

/// One processor's page of a chunk: one slot per leased index.
type Page = [AtomicUsize; SLOTS_PER_PAGE];

/// Every index of a chunk leased.
const FULL: usize = if SLOTS_PER_PAGE == usize::BITS as usize {
    usize::MAX
} else {
    (1 << SLOTS_PER_PAGE) - 1
};

/// One page per processor, and which indices are leased.
pub(crate) struct Chunk {
    pages: PerProcessor<Page>,
    /// Bit `i`: index `i` is leased.
    used: AtomicUsize,
    /// The chunk published before this one; written before this chunk is
    /// published, never after.
    next: *mut Chunk,
}

impl Chunk {
    /// Claims a free index, or `None` when every index is leased.
    fn claim(&self) -> Option<usize> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used == FULL {
                return None;
            }
            let index = (!used).trailing_zeros() as usize;
            match self.used.compare_exchange_weak(
                used,
                used | (1 << index),
                // Acquire: the previous holder's last slot writes (before
                // its `Release` return) come before our reset.
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(index),
                Err(seen) => used = seen,
            }
        }
    }
}

/// A module's per-processor rundown slots. See the module documentation.
pub struct SlotArena {
    processors: usize,
    /// The newest chunk; each points to the one published before it.
    head: AtomicPtr<Chunk>,
}

// SAFETY: chunks are reached only through atomics and shared references to
// atomics; their `next` is written before publication and only read after.
unsafe impl Sync for SlotArena {}
// SAFETY: as above; nothing in the arena is tied to a thread.
unsafe impl Send for SlotArena {}

/// One index of one chunk, leased to one binding side: its slot on every
/// processor. Returned to the arena when dropped.
#[derive(Debug)]
pub struct SlotLease {
    chunk: NonNull<Chunk>,
    /// Where this index's slot on processor 0 is: processor `p`'s is
    /// [`SlotLease::PAGE_BYTES`]` * p` bytes further.
    first: NonNull<AtomicUsize>,
    processors: u32,
    index: u8,
}

// SAFETY: the slots are atomics and the chunk outlives the lease (see the
// module documentation); a lease may be dropped on any thread.
unsafe impl Send for SlotLease {}
// SAFETY: as above: only shared references to atomics are handed out.
unsafe impl Sync for SlotLease {}

impl core::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Chunk").finish_non_exhaustive()
    }
}

impl SlotArena {
    /// An empty arena for `processors` processors (at least one): no memory
    /// until the first lease.
    pub fn new(processors: usize) -> Self {
        SlotArena {
            processors: processors.clamp(1, u32::MAX as usize),
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// The processor count the pages were sized for.
    pub fn processors(&self) -> usize {
        self.processors
    }

    /// The heap bytes one chunk takes: one line per processor, and its
    /// bookkeeping.
    pub fn chunk_bytes(&self) -> usize {
        size_of::<Chunk>() + self.processors * SlotLease::PAGE_BYTES
    }

    /// The heap bytes one binding side's slots take once chunks are full:
    /// one slot per processor, and its share of a chunk's bookkeeping.
    pub fn bytes_per_lease(&self) -> usize {
        self.chunk_bytes().div_ceil(SLOTS_PER_PAGE)
    }

    /// The chunks allocated so far.
    pub fn chunks(&self) -> usize {
        let mut count = 0;
        let mut chunk = self.head.load(Ordering::Acquire);
        while !chunk.is_null() {
            count += 1;
            // SAFETY: published chunks live until the arena is dropped, and
            // `next` is immutable after publication.
            chunk = unsafe { (*chunk).next };
        }
        count
    }

    /// Leases one index, valid on every processor's page, with its slots
    /// reset to zero. `Err` when every chunk is full and no new chunk can be
    /// allocated: the caller declines (never blocks, never panics).
    pub fn lease(&self) -> Result<SlotLease, OutOfMemory> {
        let mut chunk = self.head.load(Ordering::Acquire);
        while let Some(found) = NonNull::new(chunk) {
            // SAFETY: published chunks live until the arena is dropped.
            let c = unsafe { found.as_ref() };
            if let Some(index) = c.claim() {
                for page in c.pages.iter() {
                    // Relaxed: the binding that gets this lease is published
                    // to its callers with a release of its own.
                    page[index].store(0, Ordering::Relaxed);
                }
                return Ok(self.lease_at(found, index));
            }
            chunk = c.next;
        }
        self.grow()
    }

    /// Allocates a chunk with index 0 leased, and publishes it.
    fn grow(&self) -> Result<SlotLease, OutOfMemory> {
        let pages = PerProcessor::try_new(self.processors, || {
            core::array::from_fn(|_| AtomicUsize::new(0))
        })?;
        let chunk = try_box(Chunk {
            pages,
            used: AtomicUsize::new(1),
            next: ptr::null_mut(),
        })
        .map_err(|_| OutOfMemory)?;
        let raw = alloc::boxed::Box::into_raw(chunk);
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: not published yet: ours alone.
            unsafe { (*raw).next = head };
            // Release: whoever finds the chunk sees it whole.
            match self
                .head
                .compare_exchange_weak(head, raw, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(seen) => head = seen,
            }
        }
        // SAFETY: `raw` came from `Box::into_raw` just above.
        Ok(self.lease_at(unsafe { NonNull::new_unchecked(raw) }, 0))
    }

    fn lease_at(&self, chunk: NonNull<Chunk>, index: usize) -> SlotLease {
        // SAFETY: published or ours; alive until the arena is dropped.
        let pages = unsafe { &chunk.as_ref().pages };
        // A pointer with the provenance of the whole page array (not of one
        // element), so that it reaches every processor's page.
        let first = pages.as_ptr().cast::<AtomicUsize>().wrapping_add(index);
        SlotLease {
            chunk,
            // SAFETY: derived from a non-null allocation.
            first: unsafe { NonNull::new_unchecked(first.cast_mut()) },
            processors: self.processors as u32,
            index: index as u8,
        }
    }
}

impl Drop for SlotArena {
    fn drop(&mut self) {
        let mut chunk = self.head.load(Ordering::Acquire);
        while !chunk.is_null() {
            // SAFETY: we own the arena; published chunks came from
            // `Box::into_raw` and are freed here only.
            let next = unsafe { (*chunk).next };
            // SAFETY: as above.
            let leased = unsafe { (*chunk).used.load(Ordering::Acquire) };
            debug_assert_eq!(leased, 0, "slot arena dropped with leases held");
            if leased == 0 {
                // SAFETY: as above; no lease points into it any more.
                drop(unsafe { alloc::boxed::Box::from_raw(chunk) });
            }
            chunk = next;
        }
    }
}

impl SlotLease {
    /// The distance between one processor's page and the next's.
    pub const PAGE_BYTES: usize = size_of::<crate::percpu::CachePadded<Page>>();

    /// The slot of `processor`. Out of range (a kernel stand-in that broke
    /// its promise) folds into range: slower, never out of bounds.
    #[inline(always)]
    pub fn slot(&self, processor: usize) -> &AtomicUsize {
        slot_at(self.first, self.processors, processor)
    }

    /// The slot of each processor, in order.
    pub fn slots(&self) -> impl Iterator<Item = &AtomicUsize> {
        (0..self.processors as usize).map(|p| self.slot(p))
    }

    /// How many processors (slots) there are.
    pub fn processors(&self) -> usize {
        self.processors as usize
    }

    /// The leased index (the same on every page).
    pub fn index(&self) -> usize {
        self.index as usize
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        // SAFETY: a live lease: its chunk is alive and the index is ours.
        unsafe { give_back(self.chunk, self.index) };
    }
}

/// A lease taken apart, to be stored more compactly by its holder (the
/// rundown packs these with its own flags): it must be given back with
/// [`LeaseParts::give_back`], exactly once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseParts {
    pub(crate) first: NonNull<AtomicUsize>,
    pub(crate) chunk: NonNull<Chunk>,
    pub(crate) processors: u32,
    pub(crate) index: u8,
}

impl SlotLease {
    /// Takes the lease apart without giving the index back.
    pub(crate) fn into_parts(self) -> LeaseParts {
        let parts = LeaseParts {
            first: self.first,
            chunk: self.chunk,
            processors: self.processors,
            index: self.index,
        };
        core::mem::forget(self);
        parts
    }
}

impl LeaseParts {
    /// Gives the index back to the arena.
    ///
    /// # Safety
    ///
    /// Once per lease, and no slot of it is touched afterwards.
    pub(crate) unsafe fn give_back(self) {
        // SAFETY: forwarded.
        unsafe { give_back(self.chunk, self.index) };
    }
}

#[inline(always)]
pub(crate) fn slot_at<'a>(
    first: NonNull<AtomicUsize>,
    processors: u32,
    processor: usize,
) -> &'a AtomicUsize {
    let count = processors as usize;
    let p = if processor < count {
        processor
    } else {
        processor % count
    };
    // SAFETY: `p < processors`, the number of pages of the lease's chunk,
    // which lives as long as the lease (the caller's lifetime); `first` has
    // the provenance of the whole page array and points at word `index` of
    // page 0.
    unsafe { &*first.as_ptr().byte_add(p * SlotLease::PAGE_BYTES) }
}

/// Clears the lease's bit in its chunk.
///
/// # Safety
///
/// The chunk is alive and the index is leased by the caller, once.
unsafe fn give_back(chunk: NonNull<Chunk>, index: u8) {
    // The chunk is alive: it is freed only with the arena, and only when no
    // lease is held. Only a reference to the atomic bitmap is formed: the
    // arena may free the chunk as soon as the bit is clear.
    // SAFETY: see above; `used` is an atomic, shared by design.
    let used = unsafe { &(*chunk.as_ptr()).used };
    // Release: our binding's last slot writes come before the next holder's
    // reset (its claim acquires).
    used.fetch_and(!(1 << index), Ordering::Release);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn leases_share_a_chunk_until_it_is_full_and_indices_come_back() {
        let arena = SlotArena::new(3);
        assert_eq!(arena.chunks(), 0, "no memory before the first lease");
        let mut held: alloc::vec::Vec<_> = (0..SLOTS_PER_PAGE)
            .map(|_| arena.lease().unwrap())
            .collect();
        assert_eq!(arena.chunks(), 1);
        let mut indices: alloc::vec::Vec<_> = held.iter().map(SlotLease::index).collect();
        indices.sort_unstable();
        assert_eq!(indices, (0..SLOTS_PER_PAGE).collect::<alloc::vec::Vec<_>>());
        let returned = held.swap_remove(5);
        let index = returned.index();
        returned.slot(1).store(7, Ordering::Relaxed);
        drop(returned);
        let again = arena.lease().unwrap();
        assert_eq!(arena.chunks(), 1, "a returned index is leased again");
        assert_eq!(again.index(), index);
        assert!(
            again.slots().all(|s| s.load(Ordering::Relaxed) == 0),
            "reset"
        );
        let extra = arena.lease().unwrap();
        assert_eq!(arena.chunks(), 2, "a full chunk grows the arena");
        drop((held, extra, again));
    }

    #[test]
    fn one_binding_slots_are_a_line_apart_and_neighbours_share_a_line() {
        let arena = SlotArena::new(4);
        let (a, b) = (arena.lease().unwrap(), arena.lease().unwrap());
        let at = |s: &AtomicUsize| ptr::from_ref(s).addr();
        assert_eq!(at(a.slot(1)) - at(a.slot(0)), SlotLease::PAGE_BYTES);
        assert_eq!(at(b.slot(0)).abs_diff(at(a.slot(0))), size_of::<usize>());
        assert_eq!(at(a.slot(0)) / SLOT_BYTES, at(b.slot(0)) / SLOT_BYTES);
        assert_eq!(at(a.slot(6)), at(a.slot(2)), "out of range folds");
        assert_eq!(a.slots().count(), 4);
    }

    #[test]
    fn memory_per_lease_is_one_word_per_processor_plus_a_share() {
        let arena = SlotArena::new(640);
        assert_eq!(SlotLease::PAGE_BYTES, SLOT_BYTES);
        assert_eq!(SlotLease::PAGE_BYTES, SLOTS_PER_PAGE * size_of::<usize>());
        let per = arena.bytes_per_lease();
        assert!(per <= 640 * 8 + 16, "{per}");
    }

    #[test]
    fn an_arena_that_cannot_grow_declines() {
        // 2^31 processors: a chunk of 256 GiB, which the unit tests' heap
        // (`test_heap` in lib.rs) refuses, as an exhausted pool would.
        let arena = SlotArena::new(1 << 31);
        assert_eq!(arena.lease().err(), Some(OutOfMemory));
    }
}
