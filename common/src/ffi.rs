//! The `netioddk.h` ABI, declared by hand (wdk-sys has no binding for it).
//!
//! Names follow the C header so that a reader can hold this file next to the
//! header and the documentation. Every size and offset is pinned by the
//! compile-time assertions at the bottom of this file, which run for every
//! target: they are the table of docs/nmr-contract.md ("ABI"), confirmed against the
//! WDK 10.0.16299 headers for `x86_64-pc-windows-msvc`.

#![allow(non_camel_case_types, non_snake_case)]

use core::ffi::c_void;

/// `NTSTATUS`: a signed 32-bit status; negative values are errors.
pub type NTSTATUS = i32;
/// `HANDLE`: an opaque pointer-sized handle.
pub type HANDLE = *mut c_void;

/// `STATUS_SUCCESS`.
pub const STATUS_SUCCESS: NTSTATUS = 0;
/// `STATUS_PENDING`: the operation completes later.
pub const STATUS_PENDING: NTSTATUS = 0x103;
/// `STATUS_NOINTERFACE`: the attach callbacks' way to decline a peer.
pub const STATUS_NOINTERFACE: NTSTATUS = 0xC000_02B9_u32 as i32;
/// `STATUS_INVALID_PARAMETER`.
pub const STATUS_INVALID_PARAMETER: NTSTATUS = 0xC000_000D_u32 as i32;
/// `STATUS_INSUFFICIENT_RESOURCES`.
pub const STATUS_INSUFFICIENT_RESOURCES: NTSTATUS = 0xC000_009A_u32 as i32;
/// `STATUS_UNSUCCESSFUL`: a generic failure.
pub const STATUS_UNSUCCESSFUL: NTSTATUS = 0xC000_0001_u32 as i32;
/// `STATUS_DEVICE_NOT_READY`: used by the NPI for a call refused while detaching.
pub const STATUS_DEVICE_NOT_READY: NTSTATUS = 0xC000_00A3_u32 as i32;
/// `STATUS_BUFFER_TOO_SMALL`.
pub const STATUS_BUFFER_TOO_SMALL: NTSTATUS = 0xC000_0023_u32 as i32;

/// Where Windows x64 keeps the current processor's system-wide index: the
/// `gs:`-relative offset that `KeGetCurrentProcessorIndex` reads.
///
/// Source: the WDK's `km/wdm.h`, AMD64 section (`#if defined(_M_AMD64)`):
/// `KeGetCurrentProcessorIndex` is `return __readgsdword(0x1a4);`, next to
/// `KeGetCurrentThread`'s `__readgsqword(0x188)`. `gs` points at the
/// processor's `KPCR`; 0x1a4 is `KPCR.Prcb` (0x180) + `KPRCB.Number` (0x24).
/// wdm.h inlines it into every driver, so the offset is ABI. The image host's
/// stand-in KPCR puts its index here too.
pub const KPCR_PROCESSOR_INDEX_OFFSET: u32 = 0x1a4;

/// `NT_SUCCESS(status)`: success and informational statuses are non-negative.
#[inline]
pub const fn nt_success(status: NTSTATUS) -> bool {
    status >= 0
}

/// The symbolic name of the statuses this project uses, for trace lines.
pub const fn status_name(status: NTSTATUS) -> Option<&'static str> {
    Some(match status {
        STATUS_SUCCESS => "STATUS_SUCCESS",
        STATUS_PENDING => "STATUS_PENDING",
        STATUS_NOINTERFACE => "STATUS_NOINTERFACE",
        STATUS_INVALID_PARAMETER => "STATUS_INVALID_PARAMETER",
        STATUS_INSUFFICIENT_RESOURCES => "STATUS_INSUFFICIENT_RESOURCES",
        STATUS_UNSUCCESSFUL => "STATUS_UNSUCCESSFUL",
        STATUS_DEVICE_NOT_READY => "STATUS_DEVICE_NOT_READY",
        STATUS_BUFFER_TOO_SMALL => "STATUS_BUFFER_TOO_SMALL",
        _ => return None,
    })
}

/// `GUID`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GUID {
    /// First 32 bits.
    pub Data1: u32,
    /// Next 16 bits.
    pub Data2: u16,
    /// Next 16 bits.
    pub Data3: u16,
    /// Last 64 bits, as bytes.
    pub Data4: [u8; 8],
}

impl GUID {
    /// Builds a GUID from the `u128` spelled as in its canonical text form,
    /// `0x{Data1}{Data2}{Data3}{Data4}`.
    pub const fn from_u128(v: u128) -> Self {
        let d4 = (v as u64).to_be_bytes();
        GUID {
            Data1: (v >> 96) as u32,
            Data2: (v >> 80) as u16,
            Data3: (v >> 64) as u16,
            Data4: d4,
        }
    }
}

/// `NPIID`: the identifier of a Network Programming Interface.
pub type NPIID = GUID;

/// `NPI_MODULEID_TYPE`.
pub type NPI_MODULEID_TYPE = i32;
/// `MIT_GUID`: the module id is a GUID.
pub const MIT_GUID: NPI_MODULEID_TYPE = 1;
/// `MIT_IF_LUID`: the module id is an interface LUID.
pub const MIT_IF_LUID: NPI_MODULEID_TYPE = 2;

/// `LUID`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LUID {
    /// Low 32 bits.
    pub LowPart: u32,
    /// High 32 bits.
    pub HighPart: i32,
}

/// The anonymous union of `NPI_MODULEID`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union NPI_MODULEID_u {
    /// When `Type == MIT_GUID`.
    pub Guid: GUID,
    /// When `Type == MIT_IF_LUID`.
    pub IfLuid: LUID,
}

/// `NPI_MODULEID`: identifies one module (client or provider).
///
/// The union is private: every constructor writes all of its 16 bytes, so
/// that [`NPI_MODULEID::guid`] and [`NPI_MODULEID::luid`] never read
/// uninitialised memory whatever `Type` says (a `Type` changed after
/// construction reads initialised, meaningless bytes). A module id that comes
/// from a peer is read through a raw pointer, under that pointer's contract.
///
/// ```compile_fail
/// use nmr_common::ffi::*;
/// // Writing only the LUID and calling it a GUID id does not compile.
/// let id = NPI_MODULEID {
///     Length: 24,
///     Type: MIT_GUID,
///     u: NPI_MODULEID_u { IfLuid: LUID { LowPart: 1, HighPart: 2 } },
/// };
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NPI_MODULEID {
    /// `sizeof(NPI_MODULEID)`.
    pub Length: u16,
    /// Which member of the union is valid.
    pub Type: NPI_MODULEID_TYPE,
    /// The id itself: written whole by the constructors.
    u: NPI_MODULEID_u,
}

impl NPI_MODULEID {
    /// A GUID module id, with `Length` set.
    pub const fn from_guid(guid: GUID) -> Self {
        NPI_MODULEID {
            Length: core::mem::size_of::<NPI_MODULEID>() as u16,
            Type: MIT_GUID,
            u: NPI_MODULEID_u { Guid: guid },
        }
    }

    /// An interface-LUID module id, with `Length` set. The union's other
    /// eight bytes are zeroed, not left uninitialised.
    pub const fn from_luid(luid: LUID) -> Self {
        let mut u = NPI_MODULEID_u {
            Guid: GUID::from_u128(0),
        };
        u.IfLuid = luid;
        NPI_MODULEID {
            Length: core::mem::size_of::<NPI_MODULEID>() as u16,
            Type: MIT_IF_LUID,
            u,
        }
    }

    /// The GUID, if this is a well-formed GUID module id.
    pub fn guid(&self) -> Option<GUID> {
        if self.Type == MIT_GUID && usize::from(self.Length) >= core::mem::size_of::<Self>() {
            // SAFETY: every constructor writes all 16 bytes of the union (a
            // peer's id is read under its pointer's contract, where
            // `Type == MIT_GUID` says the GUID was written), and every bit
            // pattern is a valid GUID.
            Some(unsafe { self.u.Guid })
        } else {
            None
        }
    }

    /// The interface LUID, if this is an interface-LUID module id.
    pub fn luid(&self) -> Option<LUID> {
        if self.Type == MIT_IF_LUID {
            // SAFETY: as for `guid`: the LUID's 8 bytes are always written, and
            // every bit pattern is a valid LUID.
            Some(unsafe { self.u.IfLuid })
        } else {
            None
        }
    }
}

/// `NPI_REGISTRATION_INSTANCE`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NPI_REGISTRATION_INSTANCE {
    /// Must be 0.
    pub Version: u16,
    /// `sizeof(NPI_REGISTRATION_INSTANCE)`.
    pub Size: u16,
    /// The NPI this module implements or uses.
    pub NpiId: *const NPIID,
    /// This module's id.
    pub ModuleId: *const NPI_MODULEID,
    /// Opaque to the NMR; defined by the NPI.
    pub Number: u32,
    /// Opaque to the NMR; defined by the NPI.
    pub NpiSpecificCharacteristics: *const c_void,
}

/// `NPI_CLIENT_ATTACH_PROVIDER_FN`.
pub type NPI_CLIENT_ATTACH_PROVIDER_FN = unsafe extern "system" fn(
    NmrBindingHandle: HANDLE,
    ClientContext: *mut c_void,
    ProviderRegistrationInstance: *const NPI_REGISTRATION_INSTANCE,
) -> NTSTATUS;
/// `NPI_CLIENT_DETACH_PROVIDER_FN`.
pub type NPI_CLIENT_DETACH_PROVIDER_FN =
    unsafe extern "system" fn(ClientBindingContext: *mut c_void) -> NTSTATUS;
/// `NPI_CLIENT_CLEANUP_BINDING_CONTEXT_FN`.
pub type NPI_CLIENT_CLEANUP_BINDING_CONTEXT_FN =
    unsafe extern "system" fn(ClientBindingContext: *mut c_void);
/// `NPI_PROVIDER_ATTACH_CLIENT_FN`.
pub type NPI_PROVIDER_ATTACH_CLIENT_FN = unsafe extern "system" fn(
    NmrBindingHandle: HANDLE,
    ProviderContext: *mut c_void,
    ClientRegistrationInstance: *const NPI_REGISTRATION_INSTANCE,
    ClientBindingContext: *mut c_void,
    ClientDispatch: *const c_void,
    ProviderBindingContext: *mut *mut c_void,
    ProviderDispatch: *mut *const c_void,
) -> NTSTATUS;
/// `NPI_PROVIDER_DETACH_CLIENT_FN`.
pub type NPI_PROVIDER_DETACH_CLIENT_FN =
    unsafe extern "system" fn(ProviderBindingContext: *mut c_void) -> NTSTATUS;
/// `NPI_PROVIDER_CLEANUP_BINDING_CONTEXT_FN`.
pub type NPI_PROVIDER_CLEANUP_BINDING_CONTEXT_FN =
    unsafe extern "system" fn(ProviderBindingContext: *mut c_void);

/// `NPI_CLIENT_CHARACTERISTICS`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NPI_CLIENT_CHARACTERISTICS {
    /// Must be 0.
    pub Version: u16,
    /// `sizeof(NPI_CLIENT_CHARACTERISTICS)`.
    pub Length: u16,
    /// Mandatory.
    pub ClientAttachProvider: Option<NPI_CLIENT_ATTACH_PROVIDER_FN>,
    /// Mandatory.
    pub ClientDetachProvider: Option<NPI_CLIENT_DETACH_PROVIDER_FN>,
    /// Optional.
    pub ClientCleanupBindingContext: Option<NPI_CLIENT_CLEANUP_BINDING_CONTEXT_FN>,
    /// The client's registration instance.
    pub ClientRegistrationInstance: NPI_REGISTRATION_INSTANCE,
}

/// `NPI_PROVIDER_CHARACTERISTICS`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NPI_PROVIDER_CHARACTERISTICS {
    /// Must be 0.
    pub Version: u16,
    /// `sizeof(NPI_PROVIDER_CHARACTERISTICS)`.
    pub Length: u16,
    /// Mandatory.
    pub ProviderAttachClient: Option<NPI_PROVIDER_ATTACH_CLIENT_FN>,
    /// Mandatory.
    pub ProviderDetachClient: Option<NPI_PROVIDER_DETACH_CLIENT_FN>,
    /// Optional.
    pub ProviderCleanupBindingContext: Option<NPI_PROVIDER_CLEANUP_BINDING_CONTEXT_FN>,
    /// The provider's registration instance.
    pub ProviderRegistrationInstance: NPI_REGISTRATION_INSTANCE,
}

/// The nine NMR functions exported by `netio.sys` (Windows targets only).
///
/// With the `raw-dylib` feature they are imported straight from `NETIO.SYS`
/// (no import library needed: the Linux cross-build); without it through the
/// WDK's `netio.lib`.
#[cfg(all(target_os = "windows", feature = "kernel"))]
pub mod netio {
    use super::*;

    #[cfg_attr(
        feature = "raw-dylib",
        link(name = "NETIO.SYS", kind = "raw-dylib", modifiers = "+verbatim")
    )]
    #[cfg_attr(not(feature = "raw-dylib"), link(name = "netio"))]
    unsafe extern "system" {
        /// (PASSIVE) Registers a client; attach callbacks may run before it returns.
        pub fn NmrRegisterClient(
            ClientCharacteristics: *const NPI_CLIENT_CHARACTERISTICS,
            ClientContext: *mut c_void,
            NmrClientHandle: *mut HANDLE,
        ) -> NTSTATUS;
        /// (<= DISPATCH) Starts deregistration of a client.
        pub fn NmrDeregisterClient(NmrClientHandle: HANDLE) -> NTSTATUS;
        /// (< DISPATCH) Waits until every binding of the client is cleaned up.
        pub fn NmrWaitForClientDeregisterComplete(NmrClientHandle: HANDLE) -> NTSTATUS;
        /// (PASSIVE) Inside `ClientAttachProvider` only: attaches to the provider.
        pub fn NmrClientAttachProvider(
            NmrBindingHandle: HANDLE,
            ClientBindingContext: *mut c_void,
            ClientDispatch: *const c_void,
            ProviderBindingContext: *mut *mut c_void,
            ProviderDispatch: *mut *const c_void,
        ) -> NTSTATUS;
        /// (<= DISPATCH) Completes a client detach that returned `STATUS_PENDING`.
        pub fn NmrClientDetachProviderComplete(NmrBindingHandle: HANDLE);
        /// (PASSIVE) Registers a provider; attach callbacks may run before it returns.
        pub fn NmrRegisterProvider(
            ProviderCharacteristics: *const NPI_PROVIDER_CHARACTERISTICS,
            ProviderContext: *mut c_void,
            NmrProviderHandle: *mut HANDLE,
        ) -> NTSTATUS;
        /// (<= DISPATCH) Starts deregistration of a provider.
        pub fn NmrDeregisterProvider(NmrProviderHandle: HANDLE) -> NTSTATUS;
        /// (< DISPATCH) Waits until every binding of the provider is cleaned up.
        pub fn NmrWaitForProviderDeregisterComplete(NmrProviderHandle: HANDLE) -> NTSTATUS;
        /// (<= DISPATCH) Completes a provider detach that returned `STATUS_PENDING`.
        pub fn NmrProviderDetachClientComplete(NmrBindingHandle: HANDLE);
    }
}

// Layout pins: docs/nmr-contract.md, "ABI". These are evaluated at compile time for
// every target the crate is built for, so moving a field breaks the build.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<GUID>() == 16);
    assert!(offset_of!(GUID, Data1) == 0);
    assert!(offset_of!(GUID, Data2) == 4);
    assert!(offset_of!(GUID, Data3) == 6);
    assert!(offset_of!(GUID, Data4) == 8);
    assert!(size_of::<NPI_MODULEID_TYPE>() == 4);
    assert!(size_of::<LUID>() == 8);
    assert!(size_of::<NTSTATUS>() == 4);
};

// Pointer-carrying structs: pinned for 64-bit targets (x64, the only target
// the drivers ship for, and the Linux host the model runs on).
#[cfg(target_pointer_width = "64")]
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<NPI_MODULEID>() == 24);
    assert!(offset_of!(NPI_MODULEID, Length) == 0);
    assert!(offset_of!(NPI_MODULEID, Type) == 4);
    assert!(offset_of!(NPI_MODULEID, u) == 8);

    assert!(size_of::<NPI_REGISTRATION_INSTANCE>() == 40);
    assert!(offset_of!(NPI_REGISTRATION_INSTANCE, Version) == 0);
    assert!(offset_of!(NPI_REGISTRATION_INSTANCE, Size) == 2);
    assert!(offset_of!(NPI_REGISTRATION_INSTANCE, NpiId) == 8);
    assert!(offset_of!(NPI_REGISTRATION_INSTANCE, ModuleId) == 16);
    assert!(offset_of!(NPI_REGISTRATION_INSTANCE, Number) == 24);
    assert!(offset_of!(NPI_REGISTRATION_INSTANCE, NpiSpecificCharacteristics) == 32);

    assert!(size_of::<NPI_CLIENT_CHARACTERISTICS>() == 72);
    assert!(offset_of!(NPI_CLIENT_CHARACTERISTICS, Version) == 0);
    assert!(offset_of!(NPI_CLIENT_CHARACTERISTICS, Length) == 2);
    assert!(offset_of!(NPI_CLIENT_CHARACTERISTICS, ClientAttachProvider) == 8);
    assert!(offset_of!(NPI_CLIENT_CHARACTERISTICS, ClientDetachProvider) == 16);
    assert!(offset_of!(NPI_CLIENT_CHARACTERISTICS, ClientCleanupBindingContext) == 24);
    assert!(offset_of!(NPI_CLIENT_CHARACTERISTICS, ClientRegistrationInstance) == 32);

    assert!(size_of::<NPI_PROVIDER_CHARACTERISTICS>() == 72);
    assert!(offset_of!(NPI_PROVIDER_CHARACTERISTICS, Version) == 0);
    assert!(offset_of!(NPI_PROVIDER_CHARACTERISTICS, Length) == 2);
    assert!(offset_of!(NPI_PROVIDER_CHARACTERISTICS, ProviderAttachClient) == 8);
    assert!(offset_of!(NPI_PROVIDER_CHARACTERISTICS, ProviderDetachClient) == 16);
    assert!(offset_of!(NPI_PROVIDER_CHARACTERISTICS, ProviderCleanupBindingContext) == 24);
    assert!(offset_of!(NPI_PROVIDER_CHARACTERISTICS, ProviderRegistrationInstance) == 32);

    // Option<fn> is pointer-sized with null for None: the C layout of a nullable pointer.
    assert!(size_of::<Option<NPI_CLIENT_CLEANUP_BINDING_CONTEXT_FN>>() == 8);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_from_u128_matches_text_form() {
        let g = GUID::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(g.Data1, 0x0123_4567);
        assert_eq!(g.Data2, 0x89ab);
        assert_eq!(g.Data3, 0xcdef);
        assert_eq!(g.Data4, [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77]);
    }

    #[test]
    fn module_id_guid_checks_type_and_length() {
        let g = GUID::from_u128(7);
        let mut id = NPI_MODULEID::from_guid(g);
        assert_eq!(id.Length, 24);
        assert_eq!(id.guid(), Some(g));
        id.Type = MIT_IF_LUID;
        assert_eq!(id.guid(), None);
        id.Type = MIT_GUID;
        id.Length = 8;
        assert_eq!(id.guid(), None);
    }

    /// F2: a LUID id relabelled as a GUID id reads initialised bytes (the
    /// LUID, then zeros), never uninitialised ones. Run under Miri in CI.
    #[test]
    fn module_id_relabelled_reads_only_initialised_bytes() {
        let luid = LUID {
            LowPart: 0x0403_0201,
            HighPart: 0x0807_0605,
        };
        let mut id = NPI_MODULEID::from_luid(luid);
        assert_eq!(id.luid(), Some(luid));
        assert_eq!(id.guid(), None);
        id.Type = MIT_GUID;
        let g = id.guid().expect("relabelled");
        assert_eq!(g.Data1, 0x0403_0201);
        assert_eq!(g.Data4, [0; 8], "the union's last 8 bytes are zeroed");
    }

    #[test]
    fn status_helpers() {
        assert!(nt_success(STATUS_SUCCESS));
        assert!(nt_success(STATUS_PENDING));
        assert!(!nt_success(STATUS_NOINTERFACE));
        assert_eq!(STATUS_NOINTERFACE as u32, 0xC000_02B9);
        assert_eq!(status_name(STATUS_PENDING), Some("STATUS_PENDING"));
        assert_eq!(status_name(0x1234), None);
    }
}
