//! Target `dispatch_header`: `check_dispatch` and `negotiate_peer` on
//! arbitrary bytes, in a block exactly as long as the peer declares (so a
//! read past the declared size leaves the allocation: AddressSanitizer
//! under the fuzzer, Miri on the replay), at any alignment.
//!
//! Checked: the answer is the one [`crate::oracle`] gives: the table itself
//! (same address) or a named mismatch carrying the declared version and size;
//! the negotiated version, or `Characteristics` / `Version` with both ranges.

use std::ffi::c_void;

use nmr_common::ffi::{GUID, MIT_GUID, NPI_MODULEID, NTSTATUS, STATUS_SUCCESS};
use nmr_common::npi::*;

use crate::exact::ExactBuf;
use crate::fake::version_from;
use crate::input::Input;
use crate::oracle::{self, Published, Table};

/// Runs one case.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    match input.choose(4) {
        0 => dispatch::<ProviderDispatch>(&mut input),
        1 => dispatch::<ClientDispatch>(&mut input),
        2 => characteristics(&mut input),
        _ => module_id(&mut input),
    }
}

/// A declared size: the exact size of `full` now and then, else any.
fn declared(input: &mut Input<'_>, full: usize) -> u16 {
    match input.choose(4) {
        0 => full as u16,
        1 => input.u8().into(),
        _ => input.u16(),
    }
}

unsafe extern "system" fn get_info(_: *mut c_void, _: *mut ProviderInfo) -> NTSTATUS {
    STATUS_SUCCESS
}
unsafe extern "system" fn checksum(
    _: *mut c_void,
    _: *const u8,
    _: usize,
    _: *mut u16,
) -> NTSTATUS {
    STATUS_SUCCESS
}
unsafe extern "system" fn notify(_: *mut c_void, _: u32, _: u64) {}

fn dispatch<T: nmr_common::npi::DispatchTable>(input: &mut Input<'_>) {
    let full = size_of::<T>();
    let wanted = version_from(input);
    let null = input.choose(16) == 0;
    let offset = if input.flag() {
        usize::from(input.choose(8))
    } else {
        0
    };
    let version = if input.flag() {
        wanted
    } else {
        version_from(input)
    };
    let size = declared(input, full);
    let fill = input.rest();

    let mut buf = ExactBuf::new(usize::from(size).max(size_of::<DispatchHeader>()), offset);
    buf.write(4, fill);
    buf.write(0, &version.to_le_bytes());
    buf.write(2, &size.to_le_bytes());
    // A peer's table holds its functions where they belong, whatever else it
    // declares: only the header is the input's to break.
    if full == size_of::<ProviderDispatch>() {
        buf.write_value::<GetInfoFn>(8, get_info);
        buf.write_value::<ChecksumFn>(16, checksum);
    } else {
        buf.write_value::<NotifyFn>(8, notify);
    }
    let ptr: *const c_void = if null {
        std::ptr::null()
    } else {
        buf.as_ptr().cast()
    };

    // SAFETY: null, or a header followed by exactly `size` bytes in all
    // (never fewer than the header), alive for the call.
    let got = unsafe { check_dispatch::<T>(ptr, wanted) };
    let table = (!null).then_some(Table {
        version,
        size,
        // The block starts 8-aligned, and both tables align to 8.
        aligned: offset == 0,
    });
    match (got, oracle::dispatch_check(table, wanted, full)) {
        (Ok(t), Ok(())) => assert_eq!(std::ptr::from_ref(t).cast(), ptr, "the table itself"),
        (Err(got), Err(want)) => assert_eq!(got, want, "the mismatch names the header"),
        (got, want) => panic!(
            "check_dispatch({version}, {size}, offset {offset}, wanted {wanted}): {:?}, expected {want:?}",
            got.map(|_| ())
        ),
    }
}

fn characteristics(input: &mut Input<'_>) {
    let ours = VersionRange {
        min: version_from(input),
        max: version_from(input),
    };
    let null = input.choose(16) == 0;
    let size = declared(input, size_of::<NpiCharacteristics>());
    let min = version_from(input);
    let max = version_from(input);
    let fill = input.rest();

    let mut buf = ExactBuf::new(usize::from(size).max(2), 0);
    buf.write(6, fill);
    buf.write(0, &size.to_le_bytes());
    buf.write(2, &min.to_le_bytes());
    buf.write(4, &max.to_le_bytes());
    let ptr: *const c_void = if null {
        std::ptr::null()
    } else {
        buf.as_ptr().cast()
    };

    // SAFETY: null, or a `u16` size followed by exactly `size` bytes in all
    // (never fewer than the size field).
    let got = unsafe { negotiate_peer(ptr, ours) };
    let published = (!null).then_some(Published {
        declared: size,
        versions: VersionRange { min, max },
    });
    let id = NPI_MODULEID::from_guid(GUID::from_u128(1));
    let want = oracle::peer_check(Some(&id), published, ours);
    assert_eq!(
        got, want,
        "negotiate_peer(size {size}, {min}..={max}, ours {ours})"
    );
    assert_eq!(
        ours.negotiate(VersionRange { min, max }),
        oracle::negotiate(ours, VersionRange { min, max }),
        "VersionRange::negotiate"
    );
}

fn module_id(input: &mut Input<'_>) {
    let mut id = NPI_MODULEID::from_guid(GUID::from_u128(
        u128::from(input.u64()) << 64 | u128::from(input.u64()),
    ));
    id.Length = declared(input, size_of::<NPI_MODULEID>());
    id.Type = if input.flag() {
        MIT_GUID
    } else {
        input.u32() as i32
    };
    let ok = oracle::module_id_ok(Some(&id));
    assert_eq!(
        id.guid().is_some(),
        ok,
        "NPI_MODULEID::guid of Length {} Type {}",
        id.Length,
        id.Type
    );
}
