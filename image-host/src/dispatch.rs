//! Counting the NPI calls between the images. The real NMR never sees them;
//! the host does, by handing each side a copy of the peer's dispatch table
//! whose function pointers go through a counting thunk (`lock inc`, then
//! the function pointer read from the owner's own table at each call and
//! compared with the one seen at attach, then a jump to the function:
//! arguments, convention and return untouched). Reading the
//! owner's table at each call keeps Windows' semantics: when the owner frees
//! its table (pool, no-access in quarantine) while the peer can still call,
//! the call faults, and the fault names the table
//! ([`Rule::DispatchTableFreed`](crate::rules::Rule)); when the owner
//! changes a pointer while bound, the thunk stops on `ud2`
//! ([`Rule::DispatchTableChanged`](crate::rules::Rule)). One copy per
//! distinct table address and content.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::pe::{Pages, page_size};
use crate::registry::{self, Registered};

/// The largest table copied (ours are 16 and 24 bytes).
const MAX_TABLE: usize = 256;
const THUNK_SIZE: usize = 64;
/// Where a thunk holds the address it jumps to (the imm64 of its `mov rax,
/// destination`, what the CFG checks see through): after `mov rax, &calls`
/// (10 bytes), `lock inc` (4), `mov rax, &slot` (10), `mov rax, [rax]` (3),
/// `mov r11, imm64` (10), `cmp rax, r11` (3), `jne` (2) and `mov rax,` (2).
const THUNK_DESTINATION_AT: usize = 44;

struct Wrapped {
    image_base: usize,
    original: usize,
    content: Vec<u8>,
    pages: Pages,
    _named: Option<Registered>,
    /// The thunks, seen through by the CFG checks (cfg.rs).
    _forwarders: crate::cfg::Registered,
}

static TABLES: Mutex<Vec<Wrapped>> = Mutex::new(Vec::new());
static COUNTERS: Mutex<Option<HashMap<&'static str, &'static AtomicU64>>> = Mutex::new(None);

fn counter(image: &'static str) -> &'static AtomicU64 {
    let mut g = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    // Bounded: one per image name (interned names are few).
    g.get_or_insert_with(HashMap::new)
        .entry(image)
        .or_insert_with(|| Box::leak(Box::new(AtomicU64::new(0))))
}

/// NPI calls made into `image` through a counted table so far.
pub fn calls_into(image: &str) -> u64 {
    let g = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    g.as_ref()
        .and_then(|m| m.get(image))
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

/// The counted copy of the dispatch table at `table`, if it is one: a
/// `{u16 version; u16 size; fn...}` lying wholly in a live pool block or in
/// a mapped image, whose function pointers point into a mapped image.
/// Otherwise `table` itself. Copies are shared by content (the table of a
/// module is the same bytes at every load of the same mapping).
pub(crate) fn wrap(table: *const std::ffi::c_void) -> *const std::ffi::c_void {
    let addr = table as usize;
    let Some((start, len)) = crate::pool::readable_range(addr)
        .or_else(|| registry::image_at(addr).map(|i| (i.base, usize::MAX / 4)))
    else {
        return table;
    };
    let room = (start + len).saturating_sub(addr);
    if room < 8 {
        return table;
    }
    // SAFETY: `addr..addr + 4` lies in a live pool block or a mapped image.
    let size = unsafe { ((addr + 2) as *const u16).read_unaligned() } as usize;
    if !(8..=MAX_TABLE).contains(&size) || size > room {
        return table;
    }
    // SAFETY: `addr..addr + size` lies in the block or image (checked).
    let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, size) }.to_vec();
    let first_fn = usize::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let Some(image) = registry::image_at(first_fn) else {
        return table;
    };
    let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(w) = tables
        .iter()
        .find(|w| w.original == addr && w.content == bytes)
    {
        return w.pages.base().cast_const().cast();
    }
    let Ok(pages) = Pages::new(page_size()) else {
        return table;
    };
    let calls = counter(image.name);
    let base = pages.base();
    // SAFETY: the copy and the thunks fit in the new RW page
    // (MAX_TABLE + 31 entries * THUNK_SIZE < 4096).
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base, size) };
    let mut thunk_at = MAX_TABLE;
    for offset in (8..size).step_by(8) {
        // SAFETY: inside the copy just made.
        let target = unsafe { base.add(offset).cast::<usize>().read_unaligned() };
        if registry::image_at(target).is_none_or(|i| i.base != image.base) {
            continue; // not a function of this image: left as is
        }
        // What the call goes to: the function itself (a CFG test may
        // misdirect it, cfg.rs).
        let destination = crate::cfg::table_entry(image.name, target);
        let mut code = Vec::with_capacity(THUNK_SIZE);
        code.extend_from_slice(&[0x48, 0xB8]); // mov rax, &calls
        code.extend_from_slice(&(calls as *const AtomicU64 as u64).to_le_bytes());
        code.extend_from_slice(&[0xF0, 0x48, 0xFF, 0x00]); // lock inc qword [rax]
        code.extend_from_slice(&[0x48, 0xB8]); // mov rax, &owner's slot
        code.extend_from_slice(&((addr + offset) as u64).to_le_bytes());
        code.extend_from_slice(&[0x48, 0x8B, 0x00]); // mov rax, [rax]: faults if freed
        code.extend_from_slice(&[0x49, 0xBB]); // mov r11, the slot at attach
        code.extend_from_slice(&(target as u64).to_le_bytes());
        code.extend_from_slice(&[0x4C, 0x39, 0xD8]); // cmp rax, r11
        code.extend_from_slice(&[0x75, 0x0C]); // jne changed
        code.extend_from_slice(&[0x48, 0xB8]); // mov rax, destination
        debug_assert_eq!(code.len(), THUNK_DESTINATION_AT);
        code.extend_from_slice(&(destination as u64).to_le_bytes());
        code.extend_from_slice(&[0xFF, 0xE0]); // jmp rax
        code.extend_from_slice(&[0x0F, 0x0B]); // changed: ud2
        code.resize(THUNK_SIZE, 0xCC);
        // SAFETY: inside the RW page; the slot in the copy is 8 bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), base.add(thunk_at), THUNK_SIZE);
            base.add(offset)
                .cast::<usize>()
                .write_unaligned(base as usize + thunk_at);
        }
        thunk_at += THUNK_SIZE;
    }
    if pages
        .protect(0, pages.len(), libc::PROT_READ | libc::PROT_EXEC)
        .is_err()
    {
        return table;
    }
    let wrapped = pages.base().cast_const().cast();
    let named = registry::register_dispatch(
        pages.base() as usize,
        pages.len(),
        crate::pool::owner_of(addr).unwrap_or(image.name),
        image.path,
    );
    let forwarders = crate::cfg::register_forwarders(
        base as usize,
        pages.len(),
        MAX_TABLE,
        THUNK_SIZE,
        THUNK_DESTINATION_AT,
    );
    tables.push(Wrapped {
        image_base: image.base,
        original: addr,
        content: bytes,
        pages,
        _named: named,
        _forwarders: forwarders,
    });
    wrapped
}

/// Drops the copies of the tables of the image mapped at `base` (unmapped
/// now: a new mapping may reuse the addresses).
pub(crate) fn forget_image(base: usize) {
    let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    tables.retain(|w| w.image_base != base);
}
