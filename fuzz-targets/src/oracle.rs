//! What the modules and the model must answer, written again from the
//! contract (docs/nmr-contract.md, "ABI", R12; `nmr_common::npi`'s documented rules)
//! without calling the code under test: the targets compare the two.

use nmr_common::ffi::{MIT_GUID, NPI_MODULEID, NPI_REGISTRATION_INSTANCE};
use nmr_common::npi::{PeerMismatch, VersionRange};

/// The highest version in both ranges, if both are non-empty and overlap.
pub fn negotiate(ours: VersionRange, peer: VersionRange) -> Option<u16> {
    if ours.min > ours.max || peer.min > peer.max {
        return None;
    }
    let lo = if ours.min > peer.min {
        ours.min
    } else {
        peer.min
    };
    let hi = if ours.max < peer.max {
        ours.max
    } else {
        peer.max
    };
    (lo <= hi).then_some(hi)
}

/// What a peer published as its NPI-specific characteristics, as the fuzz
/// case built it: `None` for a null pointer.
#[derive(Clone, Copy, Debug)]
pub struct Published {
    /// The declared size (the first `u16`).
    pub declared: u16,
    /// The version range, meaningful only when `declared >= 6`.
    pub versions: VersionRange,
}

/// A module id as the fuzz case built it: `None` for a null pointer.
pub fn module_id_ok(id: Option<&NPI_MODULEID>) -> bool {
    id.is_some_and(|id| id.Type == MIT_GUID && id.Length >= 24)
}

/// The peer check of either module (`ModuleCore::check_peer`): module id,
/// then the characteristics, then the versions.
pub fn peer_check(
    module_id: Option<&NPI_MODULEID>,
    chars: Option<Published>,
    ours: VersionRange,
) -> Result<u16, PeerMismatch> {
    if !module_id_ok(module_id) {
        return Err(PeerMismatch::ModuleId);
    }
    let Some(chars) = chars else {
        return Err(PeerMismatch::Characteristics);
    };
    if chars.declared < 6 {
        return Err(PeerMismatch::Characteristics);
    }
    negotiate(ours, chars.versions).ok_or(PeerMismatch::Version {
        peer: chars.versions,
        ours,
    })
}

/// A dispatch table as the fuzz case built it: `None` for a null pointer.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    /// Declared version.
    pub version: u16,
    /// Declared size.
    pub size: u16,
    /// Whether its address is a multiple of 8.
    pub aligned: bool,
}

/// `check_dispatch` for a table type of `needed` bytes and `version`.
pub fn dispatch_check(
    table: Option<Table>,
    version: u16,
    needed: usize,
) -> Result<(), PeerMismatch> {
    let Some(t) = table else {
        return Err(PeerMismatch::Dispatch {
            version: 0,
            size: 0,
        });
    };
    if t.version == version && usize::from(t.size) >= needed && t.aligned {
        Ok(())
    } else {
        Err(PeerMismatch::Dispatch {
            version: t.version,
            size: t.size,
        })
    }
}

/// Why the model must refuse a registration instance, if it must.
pub fn instance_ok(inst: &NPI_REGISTRATION_INSTANCE) -> bool {
    inst.Version == 0 && inst.Size == 40 && !inst.NpiId.is_null() && !inst.ModuleId.is_null()
}

/// RFC 1071 §4.1's reference loop, on 16-bit words with the carry folded in
/// at every step (an end-around carry adder), rather than once at the end as
/// `internet_checksum` does.
pub fn reference_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < data.len() {
        let hi = u32::from(data[i]) << 8;
        let lo = data.get(i + 1).map_or(0, |b| u32::from(*b));
        sum += hi | lo;
        if sum > 0xffff {
            sum = (sum & 0xffff) + 1;
        }
        i += 2;
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_checksum_matches_rfc1071_example() {
        assert_eq!(
            reference_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        assert_eq!(reference_checksum(&[]), 0xffff);
        assert_eq!(reference_checksum(&[0xff, 0xff, 0x00, 0x01]), !0x0001);
    }

    #[test]
    fn negotiate_picks_the_highest_common_version() {
        let r = |min, max| VersionRange { min, max };
        assert_eq!(negotiate(r(1, 3), r(2, 5)), Some(3));
        assert_eq!(negotiate(r(1, 3), r(4, 5)), None);
        assert_eq!(negotiate(r(3, 1), r(1, 3)), None);
    }
}
