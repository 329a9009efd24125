//! This project's own NPI: what the client and the provider say to each other.
//!
//! - The provider's dispatch table ([`ProviderDispatch`]): `get_info` and
//!   `checksum` (the RFC 1071 Internet checksum of a buffer).
//! - The client's dispatch table ([`ClientDispatch`]): `notify`.
//! - Each side publishes [`NpiCharacteristics`] (its supported version range)
//!   as `NpiSpecificCharacteristics` of its registration instance; the peer
//!   checks it before attaching, and checks each dispatch table's header
//!   (version and size) before reading anything else from it.
//!
//! Every table starts with `{ version: u16, size: u16 }` so that a peer built
//! against another version can tell what it got and never reads past `size`.

use core::ffi::c_void;

use crate::ffi::{GUID, NPIID, NTSTATUS};

/// The NPI id both drivers register with.
pub const NPI_ID: NPIID = GUID::from_u128(0x5f1c_7a3e_6d2b_4c11_9a0e_8b7d_31c4_e2a9);

/// The NPI version this build speaks.
pub const NPI_VERSION: u16 = 1;

/// An inclusive range of NPI versions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionRange {
    /// Lowest supported version.
    pub min: u16,
    /// Highest supported version.
    pub max: u16,
}

impl VersionRange {
    /// The range this build supports.
    pub const CURRENT: VersionRange = VersionRange {
        min: NPI_VERSION,
        max: NPI_VERSION,
    };

    /// The highest version both ranges contain, if any.
    ///
    /// ```
    /// use nmr_common::npi::VersionRange;
    /// let ours = VersionRange { min: 1, max: 3 };
    /// assert_eq!(ours.negotiate(VersionRange { min: 2, max: 5 }), Some(3));
    /// assert_eq!(ours.negotiate(VersionRange { min: 4, max: 5 }), None);
    /// ```
    pub fn negotiate(self, peer: VersionRange) -> Option<u16> {
        let lo = self.min.max(peer.min);
        let hi = self.max.min(peer.max);
        (lo <= hi && self.min <= self.max && peer.min <= peer.max).then_some(hi)
    }
}

impl core::fmt::Display for VersionRange {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

/// Published as `NpiSpecificCharacteristics` by both sides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NpiCharacteristics {
    /// `size_of::<NpiCharacteristics>()` of the publisher's build.
    pub size: u16,
    /// Versions the publisher speaks.
    pub versions: VersionRange,
}

impl NpiCharacteristics {
    /// The characteristics of a module supporting `versions`.
    pub const fn new(versions: VersionRange) -> Self {
        NpiCharacteristics {
            size: core::mem::size_of::<Self>() as u16,
            versions,
        }
    }
}

/// The header every dispatch table starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatchHeader {
    /// The NPI version of the table.
    pub version: u16,
    /// `size_of` the whole table, as built by its owner.
    pub size: u16,
}

/// `get_info`'s answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProviderInfo {
    /// Set by the caller to `size_of::<ProviderInfo>()`; the provider writes
    /// no more than that.
    pub size: u16,
    /// The NPI version the provider speaks on this binding.
    pub version: u16,
    /// Feature bits ([`FEATURE_CHECKSUM`], ...).
    pub features: u32,
}

/// `get_info` feature bit: `checksum` is available.
pub const FEATURE_CHECKSUM: u32 = 1;

/// `get_info(provider_binding, info) -> NTSTATUS`, any IRQL <= DISPATCH.
pub type GetInfoFn =
    unsafe extern "system" fn(provider_binding: *mut c_void, info: *mut ProviderInfo) -> NTSTATUS;

/// `checksum(provider_binding, data, len, out) -> NTSTATUS` [PASSIVE when the
/// provider's latency knob is set, otherwise any IRQL <= DISPATCH]: writes the
/// RFC 1071 Internet checksum of `data[..len]` to `*out`.
pub type ChecksumFn = unsafe extern "system" fn(
    provider_binding: *mut c_void,
    data: *const u8,
    len: usize,
    out: *mut u16,
) -> NTSTATUS;

/// The provider's dispatch table, called by clients.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProviderDispatch {
    /// Version and size.
    pub header: DispatchHeader,
    /// What the provider offers.
    pub get_info: GetInfoFn,
    /// The work.
    pub checksum: ChecksumFn,
}

/// `notify(client_binding, event, value)`, any IRQL <= DISPATCH, never blocks.
pub type NotifyFn = unsafe extern "system" fn(client_binding: *mut c_void, event: u32, value: u64);

/// `notify` event: `value` is the count of checksum calls the provider served
/// on the notifying processor. Each processor keeps its own count, so that a
/// notification never reads a cache line another processor is writing.
pub const EVENT_CALL_COUNT: u32 = 1;

/// The client's dispatch table, called by providers.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ClientDispatch {
    /// Version and size.
    pub header: DispatchHeader,
    /// Provider-to-client events.
    pub notify: NotifyFn,
}

/// Why a peer was declined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMismatch {
    /// No NPI-specific characteristics, or fewer bytes than this build reads.
    Characteristics,
    /// The version ranges do not overlap.
    Version {
        /// The peer's range.
        peer: VersionRange,
        /// Ours.
        ours: VersionRange,
    },
    /// No dispatch table, a wrong version, or a table smaller than this build calls.
    Dispatch {
        /// The version the table declares (0 if absent).
        version: u16,
        /// The size the table declares (0 if absent).
        size: u16,
    },
    /// The module id is not a well-formed GUID module id.
    ModuleId,
    /// The peer's registration names another NPI (or none).
    NpiId,
}

impl core::fmt::Display for PeerMismatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PeerMismatch::Characteristics => f.write_str("peer has no usable NPI characteristics"),
            PeerMismatch::Version { peer, ours } => {
                write!(f, "peer versions {peer} do not overlap ours {ours}")
            }
            PeerMismatch::Dispatch { version, size } => {
                write!(
                    f,
                    "peer dispatch table version {version} size {size} does not fit"
                )
            }
            PeerMismatch::ModuleId => f.write_str("peer module id is not a GUID module id"),
            PeerMismatch::NpiId => f.write_str("peer registered for another NPI"),
        }
    }
}

/// Reads a peer's NPI-specific characteristics and negotiates a version.
///
/// # Safety
///
/// `chars` is null or points to at least the `size` field of an
/// `NpiCharacteristics` (a `u16`) followed by `size` bytes in total, valid
/// for reads: what the NMR hands over from the peer's registration.
pub unsafe fn negotiate_peer(
    chars: *const c_void,
    ours: VersionRange,
) -> Result<u16, PeerMismatch> {
    if chars.is_null() {
        return Err(PeerMismatch::Characteristics);
    }
    // SAFETY: non-null, and a valid publication starts with its `u16` size.
    let size = unsafe { chars.cast::<u16>().read_unaligned() };
    if usize::from(size) < core::mem::size_of::<NpiCharacteristics>() {
        return Err(PeerMismatch::Characteristics);
    }
    // SAFETY: the peer declared at least as many bytes as we read.
    let peer = unsafe { chars.cast::<NpiCharacteristics>().read_unaligned() };
    ours.negotiate(peer.versions).ok_or(PeerMismatch::Version {
        peer: peer.versions,
        ours,
    })
}

/// A dispatch table of an NPI: what [`check_dispatch`] may return as `&Self`
/// once the header fits.
///
/// # Safety
///
/// `Self` is `#[repr(C)]` and starts with a [`DispatchHeader`]; every bit
/// pattern a peer of the NPI may put in a table whose header declares an
/// agreed version and at least `size_of::<Self>()` bytes is a valid `Self`
/// (its function pointers non-null and of the declared signatures, as the
/// NPI's definition requires of every peer), and a peer never writes its
/// table while a binding uses it.
pub unsafe trait DispatchTable: Sized + Send + Sync + 'static {}

// SAFETY: `repr(C)`, starts with the header; its fields are function pointers
// that the NPI requires every provider to fill, and tables are immutable.
unsafe impl DispatchTable for ProviderDispatch {}
// SAFETY: as above, for clients.
unsafe impl DispatchTable for ClientDispatch {}

/// Checks a peer's dispatch table header for `version` and a size of at
/// least `size_of::<T>()`, and returns the table.
///
/// # Safety
///
/// `table` is null or points to a readable `DispatchHeader`, followed by
/// `header.size` readable bytes in total, which, if the header fits, are a
/// table of the NPI's layout for `T` (see [`DispatchTable`]), neither freed
/// nor written during `'a` (for a peer's table: until the binding's cleanup,
/// never `'static`).
pub unsafe fn check_dispatch<'a, T: DispatchTable>(
    table: *const c_void,
    version: u16,
) -> Result<&'a T, PeerMismatch> {
    if table.is_null() {
        return Err(PeerMismatch::Dispatch {
            version: 0,
            size: 0,
        });
    }
    // SAFETY: non-null, and every table of this NPI starts with the header.
    let header = unsafe { table.cast::<DispatchHeader>().read_unaligned() };
    let aligned = table.cast::<T>().is_aligned();
    if header.version != version || usize::from(header.size) < core::mem::size_of::<T>() || !aligned
    {
        return Err(PeerMismatch::Dispatch {
            version: header.version,
            size: header.size,
        });
    }
    // SAFETY: the peer declared at least `size_of::<T>()` bytes of this
    // version's layout, the pointer is aligned, and it lives for `'a`.
    Ok(unsafe { &*table.cast::<T>() })
}

/// The RFC 1071 Internet checksum: the ones' complement of the ones'
/// complement sum of the data as big-endian 16-bit words (an odd last byte is
/// padded with zero).
///
/// ```
/// use nmr_common::npi::internet_checksum;
/// // RFC 1071, section 3: these words sum to 0xddf2; the checksum is its
/// // ones' complement.
/// assert_eq!(internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
/// // An odd last byte counts as the high byte of a word.
/// assert_eq!(internet_checksum(&[0x12]), !0x1200);
/// ```
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<DispatchHeader>() == 4);
    assert!(offset_of!(ProviderDispatch, get_info) == 8);
    assert!(offset_of!(ProviderDispatch, checksum) == 16);
    assert!(size_of::<ProviderDispatch>() == 24);
    assert!(offset_of!(ClientDispatch, notify) == 8);
    assert!(size_of::<ClientDispatch>() == 16);
    assert!(size_of::<NpiCharacteristics>() == 6);
    assert!(size_of::<ProviderInfo>() == 8);
};

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_examples() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to 0xddf2 (ones' complement).
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        assert_eq!(internet_checksum(&[]), 0xffff);
        // Odd length: the last byte is the high half of a zero-padded word.
        assert_eq!(internet_checksum(&[0x12]), !0x1200);
        // A correct checksum appended makes the whole sum check to zero.
        let mut data = [
            0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x00, 0x00, 0x40, 0x11, 0, 0,
        ];
        let c = internet_checksum(&data);
        data[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(internet_checksum(&data), 0);
    }

    #[test]
    fn version_negotiation() {
        let ours = VersionRange { min: 1, max: 3 };
        assert_eq!(ours.negotiate(VersionRange { min: 2, max: 5 }), Some(3));
        assert_eq!(ours.negotiate(VersionRange { min: 4, max: 5 }), None);
        assert_eq!(
            ours.negotiate(VersionRange { min: 3, max: 1 }),
            None,
            "empty peer range"
        );
    }

    #[test]
    fn negotiate_peer_never_reads_past_declared_size() {
        let ours = VersionRange::CURRENT;
        // SAFETY: null is allowed.
        let none = unsafe { negotiate_peer(core::ptr::null(), ours) };
        assert_eq!(none, Err(PeerMismatch::Characteristics));
        // Only the size field exists and says 2 bytes: must not read further.
        let short: u16 = 2;
        // SAFETY: `short` is a readable u16 declaring a 2-byte publication.
        let r = unsafe { negotiate_peer((&raw const short).cast(), ours) };
        assert_eq!(r, Err(PeerMismatch::Characteristics));
        let good = NpiCharacteristics::new(VersionRange { min: 1, max: 2 });
        // SAFETY: a whole publication.
        let agreed = unsafe { negotiate_peer((&raw const good).cast(), ours) };
        assert_eq!(agreed, Ok(1));
        let newer = NpiCharacteristics::new(VersionRange { min: 3, max: 4 });
        // SAFETY: a whole publication.
        let r = unsafe { negotiate_peer((&raw const newer).cast(), ours) };
        assert_eq!(
            r,
            Err(PeerMismatch::Version {
                peer: newer.versions,
                ours
            })
        );
    }

    unsafe extern "system" fn notify(_: *mut c_void, _: u32, _: u64) {}

    #[test]
    fn dispatch_check_reads_the_header_first() {
        let table = ClientDispatch {
            header: DispatchHeader {
                version: 1,
                size: size_of::<ClientDispatch>() as u16,
            },
            notify,
        };
        // SAFETY: a whole table.
        let fits = unsafe { check_dispatch::<ClientDispatch>((&raw const table).cast(), 1) };
        assert!(fits.is_ok());
        // SAFETY: a whole table.
        let wrong_version =
            unsafe { check_dispatch::<ClientDispatch>((&raw const table).cast(), 2) };
        assert_eq!(
            wrong_version.err(),
            Some(PeerMismatch::Dispatch {
                version: 1,
                size: 16
            })
        );
        let header_only = DispatchHeader {
            version: 1,
            size: 4,
        };
        // SAFETY: only the header is readable, and it says so.
        let short = unsafe { check_dispatch::<ClientDispatch>((&raw const header_only).cast(), 1) };
        assert_eq!(
            short.err(),
            Some(PeerMismatch::Dispatch {
                version: 1,
                size: 4
            })
        );
        // SAFETY: null is allowed.
        assert!(unsafe { check_dispatch::<ClientDispatch>(core::ptr::null(), 1) }.is_err());
    }
}
