//! The pool behind `ExAllocatePool2` / `ExFreePoolWithTag`, like Driver
//! Verifier's special pool: each block on its own pages, ending just before
//! a no-access page (a read or write past the end faults at once), the few
//! bytes of slack after it filled with guard bytes (checked at free), freed
//! blocks poisoned, made no-access and quarantined (a use after free faults),
//! and every block accounted to the image that allocated it, by tag and size.
//! The bytes before the block on its first page are guard bytes too (an
//! underrun is seen at free, 0xC1/0x23), and `POOL_FLAG_UNINITIALIZED`
//! blocks hold garbage, not zeros.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::pe::{Pages, page_size};
use crate::problems::{self, Kind};
use crate::rules::Rule;

/// What guard bytes hold.
const GUARD: u8 = 0xFD;
/// What a freed block holds.
const POISON: u8 = 0xDF;
/// What a block allocated with `POOL_FLAG_UNINITIALIZED` holds.
const GARBAGE: u8 = 0xC5;

/// What a new block holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// Zeros (`ExAllocatePool2` without `POOL_FLAG_UNINITIALIZED`).
    Zero,
    /// Garbage (with it): code that reads before writing sees non-zero bytes.
    Garbage,
}
/// Freed blocks kept no-access before their pages are unmapped.
const QUARANTINE: usize = 256;
/// `ExAllocatePool2`'s alignment on x64.
const ALIGN: usize = 16;

struct Block {
    pages: Pages,
    offset: usize,
    size: usize,
    tag: u32,
    image: u64,
    image_name: &'static str,
    serial: u64,
    paged: bool,
}

#[derive(Default)]
struct PoolState {
    live: HashMap<usize, Block>,
    quarantine: VecDeque<(usize, Block)>,
    serial: u64,
    stats: PoolStats,
}

/// Pool figures for the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// `ExAllocatePool2` calls that returned a block.
    pub allocations: u64,
    /// `ExFreePoolWithTag` calls that freed a block.
    pub frees: u64,
    /// Calls the fault plan failed.
    pub failed: u64,
    /// Most blocks live at once.
    pub peak_blocks: u64,
    /// Most bytes live at once.
    pub peak_bytes: u64,
    /// Bytes live now.
    pub live_bytes: u64,
}

static POOL: Mutex<Option<PoolState>> = Mutex::new(None);

fn with_pool<R>(f: impl FnOnce(&mut PoolState) -> R) -> R {
    let mut g = POOL.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(PoolState::default))
}

/// The tag as text, as `!poolused` shows it.
pub fn tag_text(tag: u32) -> String {
    tag.to_le_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}

/// Allocates `size` bytes for image `image` (zeroed, as `ExAllocatePool2`
/// returns them without `POOL_FLAG_UNINITIALIZED`). Null when out of memory.
pub fn allocate(size: usize, tag: u32, image: u64, image_name: &'static str) -> *mut u8 {
    allocate_with(size, tag, image, image_name, false, Fill::Zero)
}

/// Allocates as [`allocate`], from paged pool if `paged`, filled as `fill`.
pub fn allocate_with(
    size: usize,
    tag: u32,
    image: u64,
    image_name: &'static str,
    paged: bool,
    fill: Fill,
) -> *mut u8 {
    let page = page_size();
    let rounded = size.max(1).next_multiple_of(ALIGN);
    let data_pages = rounded.next_multiple_of(page);
    let Ok(pages) = Pages::new(data_pages + page) else {
        return std::ptr::null_mut();
    };
    if pages.protect(data_pages, page, libc::PROT_NONE).is_err() {
        return std::ptr::null_mut();
    }
    let offset = data_pages - rounded;
    // SAFETY: `offset + rounded == data_pages`: the block and its slack lie
    // in the RW pages just mapped.
    let ptr = unsafe {
        let p = pages.base().add(offset);
        p.add(size).write_bytes(GUARD, rounded - size);
        // The bytes before the block on its first page: an underrun lands there.
        let first_page = offset / page * page;
        pages
            .base()
            .add(first_page)
            .write_bytes(GUARD, offset - first_page);
        if fill == Fill::Garbage {
            p.write_bytes(GARBAGE, size);
        }
        p
    };
    with_pool(|pool| {
        pool.serial += 1;
        let block = Block {
            pages,
            offset,
            size,
            tag,
            image,
            image_name,
            serial: pool.serial,
            paged,
        };
        pool.live.insert(ptr as usize, block);
        pool.stats.allocations += 1;
        pool.stats.live_bytes += size as u64;
        pool.stats.peak_bytes = pool.stats.peak_bytes.max(pool.stats.live_bytes);
        pool.stats.peak_blocks = pool.stats.peak_blocks.max(pool.live.len() as u64);
    });
    ptr
}

/// Counts a failure the fault plan injected.
pub fn count_failed() {
    with_pool(|pool| pool.stats.failed += 1);
}

/// Frees a block: checks the tag and the guard bytes, poisons it and puts it
/// in quarantine, no access (a later read or write of it faults).
pub fn free(ptr: *mut u8, tag: u32, caller: &'static str) {
    with_pool(|pool| {
        let Some(block) = pool.live.remove(&(ptr as usize)) else {
            let twice = pool.quarantine.iter().any(|(p, _)| *p == ptr as usize);
            problems::report(
                Kind::BadFree,
                caller,
                if twice {
                    format!("ExFreePoolWithTag({ptr:p}): the block was already freed (double free)")
                } else {
                    format!("ExFreePoolWithTag({ptr:p}): not a block ExAllocatePool2 returned")
                },
            );
            return;
        };
        if block.tag != tag {
            Rule::PoolWrongTag.report(
                caller,
                &format!(
                    "ExFreePoolWithTag({ptr:p}, '{}'): the block was allocated with tag '{}'",
                    tag_text(tag),
                    tag_text(block.tag)
                ),
            );
        }
        let rounded = block.size.max(1).next_multiple_of(ALIGN);
        // The block's address from its own pages, not from the caller.
        // SAFETY: `offset` lies inside the block's pages.
        let ptr = unsafe { block.pages.base().add(block.offset) };
        // SAFETY: the block's bytes and slack lie in its RW pages.
        let slack =
            unsafe { std::slice::from_raw_parts(ptr.add(block.size), rounded - block.size) };
        if let Some(i) = slack.iter().position(|&b| b != GUARD) {
            problems::report(
                Kind::PoolOverrun,
                block.image_name,
                Rule::PoolOverrun.text(&format!(
                    "pool overrun: a {}-byte block of tag '{}' was written {} byte(s) past its end",
                    block.size,
                    tag_text(block.tag),
                    i + 1
                )),
            );
        }
        let page = page_size();
        let first_page = block.offset / page * page;
        // SAFETY: the guard bytes before the block, on its first page (RW).
        let before = unsafe {
            std::slice::from_raw_parts(
                block.pages.base().add(first_page),
                block.offset - first_page,
            )
        };
        if let Some(i) = before.iter().position(|&b| b != GUARD) {
            problems::report(
                Kind::PoolOverrun,
                block.image_name,
                Rule::PoolUnderrun.text(&format!(
                    "pool underrun: a {}-byte block of tag '{}' was written {} byte(s) before its start",
                    block.size,
                    tag_text(block.tag),
                    before.len() - i
                )),
            );
        }
        crate::ntoskrnl::forget_locks_in(ptr as usize, rounded);
        // SAFETY: as above; then the pages become no-access.
        unsafe { ptr.write_bytes(POISON, rounded) };
        let _ = block
            .pages
            .protect(0, block.offset + rounded, libc::PROT_NONE);
        pool.stats.frees += 1;
        pool.stats.live_bytes -= block.size as u64;
        pool.quarantine.push_back((ptr as usize, block));
        if pool.quarantine.len() > QUARANTINE {
            pool.quarantine.pop_front();
        }
    });
}

/// The blocks image `image` still holds, as readable lines; empty if none.
pub fn live_blocks_of(image: u64) -> Vec<String> {
    with_pool(|pool| {
        let mut blocks: Vec<&Block> = pool.live.values().filter(|b| b.image == image).collect();
        blocks.sort_by_key(|b| b.serial);
        blocks
            .iter()
            .map(|b| format!("tag '{}', {} bytes", tag_text(b.tag), b.size))
            .collect()
    })
}

/// The bytes of the blocks image `image` holds now.
pub fn live_bytes_of(image: u64) -> u64 {
    with_pool(|pool| {
        pool.live
            .values()
            .filter(|b| b.image == image)
            .map(|b| b.size as u64)
            .sum()
    })
}

/// Releases (for good) the blocks image `image` leaked, after they were
/// reported: the image is gone, nothing can free them any more.
pub fn forget_image(image: u64) {
    with_pool(|pool| {
        let leaked: Vec<usize> = pool
            .live
            .iter()
            .filter(|(_, b)| b.image == image)
            .map(|(p, _)| *p)
            .collect();
        for p in leaked {
            if let Some(b) = pool.live.remove(&p) {
                pool.stats.live_bytes -= b.size as u64;
            }
        }
    });
}

/// The live block containing `addr`, as `(start, size)`.
pub fn readable_range(addr: usize) -> Option<(usize, usize)> {
    with_pool(|pool| {
        pool.live
            .iter()
            .find(|(p, b)| addr >= **p && addr < **p + b.size)
            .map(|(p, b)| (*p, b.size))
    })
}

/// Whether `addr` is a live block from paged pool.
pub fn is_paged(addr: usize) -> bool {
    with_pool(|pool| pool.live.get(&addr).is_some_and(|b| b.paged))
}

/// The image that allocated the live block containing `addr`.
pub fn owner_of(addr: usize) -> Option<&'static str> {
    with_pool(|pool| {
        pool.live
            .iter()
            .find(|(p, b)| addr >= **p && addr < **p + b.size.max(1))
            .map(|(_, b)| b.image_name)
    })
}

/// The pool figures so far.
pub fn stats() -> PoolStats {
    with_pool(|pool| pool.stats)
}

/// Blocks live now, over all images.
pub fn live_blocks() -> usize {
    with_pool(|pool| pool.live.len())
}
