//! The image's load configuration (`_load_config_used`), which kernel-mode
//! Control Flow Guard needs, and the PE constants that say an image has CFG
//! and is CET-compatible.
//!
//! With `-C control-flow-guard`, LLVM turns every indirect call into
//! `call [__guard_dispatch_icall_fptr]` with the target in RAX, and lists the
//! functions whose address is taken in each object's `.gfids$y` section. The
//! linker (`/guard:cf`) merges those lists into the image's guard function
//! table and defines the `__guard_*` symbols that describe it, but it does not
//! write the load configuration: the image must define `_load_config_used`
//! (an `IMAGE_LOAD_CONFIG_DIRECTORY64`) that points at them, and the two
//! function-pointer slots. A C driver gets all three from the WDK's
//! `libcntpr.lib` (`loadcfg.obj`, `guard_support.obj`, `guard_dispatch.obj`);
//! wdk-build links `BufferOverflowFastFailK.lib`, `ntoskrnl.lib`, `hal.lib`
//! and `wmilib.lib` for a WDM driver, not `libcntpr.lib`, and the Linux build
//! links no WDK library at all. So the shell defines them, once, for both
//! kernel surfaces (`cfg_support.rs`); an object's definition also wins over
//! any library member, so adding `libcntpr.lib` later changes nothing.
//!
//! This module is portable (every target, test builds included): it is the
//! layout the image host reads too, and the layout checks below run for every
//! build. Source of every offset: `winnt.h` of the Windows SDK/WDK
//! (`IMAGE_LOAD_CONFIG_DIRECTORY64`, the `RS5_IMAGE_LOAD_CONFIG_DIRECTORY64`
//! layout that the MSVC CRT's `loadcfg.c` declares, 0x138 bytes, ending at
//! `CastGuardOsDeterminedFailureMode`), and Microsoft's PE format
//! specification, "Load Configuration Layout". Later `winnt.h` versions
//! append `GuardMemcpyFunctionPointer` (0x138) and `UmaFunctionPointers`
//! (0x140); the loader reads no field past `Size`, so they are left out, as
//! the CRT leaves them out.

#![allow(non_snake_case)]

/// `IMAGE_LOAD_CONFIG_CODE_INTEGRITY` (winnt.h): 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageLoadConfigCodeIntegrity {
    /// `Flags`: catalog flags.
    pub Flags: u16,
    /// `Catalog`: 0xFFFF means not available.
    pub Catalog: u16,
    /// `CatalogOffset`.
    pub CatalogOffset: u32,
    /// `Reserved`.
    pub Reserved: u32,
}

/// `IMAGE_LOAD_CONFIG_DIRECTORY64` (winnt.h), up to
/// `CastGuardOsDeterminedFailureMode`. VAs are absolute addresses (the
/// loader relocates them), counts are plain numbers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageLoadConfigDirectory64 {
    /// `Size`: of the structure as the image declares it.
    pub Size: u32,
    /// `TimeDateStamp`.
    pub TimeDateStamp: u32,
    /// `MajorVersion`.
    pub MajorVersion: u16,
    /// `MinorVersion`.
    pub MinorVersion: u16,
    /// `GlobalFlagsClear`.
    pub GlobalFlagsClear: u32,
    /// `GlobalFlagsSet`.
    pub GlobalFlagsSet: u32,
    /// `CriticalSectionDefaultTimeout`.
    pub CriticalSectionDefaultTimeout: u32,
    /// `DeCommitFreeBlockThreshold`.
    pub DeCommitFreeBlockThreshold: u64,
    /// `DeCommitTotalFreeThreshold`.
    pub DeCommitTotalFreeThreshold: u64,
    /// `LockPrefixTable` (VA).
    pub LockPrefixTable: u64,
    /// `MaximumAllocationSize`.
    pub MaximumAllocationSize: u64,
    /// `VirtualMemoryThreshold`.
    pub VirtualMemoryThreshold: u64,
    /// `ProcessAffinityMask`.
    pub ProcessAffinityMask: u64,
    /// `ProcessHeapFlags`.
    pub ProcessHeapFlags: u32,
    /// `CSDVersion`.
    pub CSDVersion: u16,
    /// `DependentLoadFlags`.
    pub DependentLoadFlags: u16,
    /// `EditList` (VA).
    pub EditList: u64,
    /// `SecurityCookie` (VA): none, the drivers have no `/GS` cookie.
    pub SecurityCookie: u64,
    /// `SEHandlerTable` (VA): x86 only.
    pub SEHandlerTable: u64,
    /// `SEHandlerCount`: x86 only.
    pub SEHandlerCount: u64,
    /// `GuardCFCheckFunctionPointer` (VA of `__guard_check_icall_fptr`).
    pub GuardCFCheckFunctionPointer: u64,
    /// `GuardCFDispatchFunctionPointer` (VA of `__guard_dispatch_icall_fptr`).
    pub GuardCFDispatchFunctionPointer: u64,
    /// `GuardCFFunctionTable` (VA of `__guard_fids_table`).
    pub GuardCFFunctionTable: u64,
    /// `GuardCFFunctionCount` (`__guard_fids_count`).
    pub GuardCFFunctionCount: u64,
    /// `GuardFlags` (`__guard_flags`): `IMAGE_GUARD_*`.
    pub GuardFlags: u32,
    /// `CodeIntegrity`.
    pub CodeIntegrity: ImageLoadConfigCodeIntegrity,
    /// `GuardAddressTakenIatEntryTable` (VA of `__guard_iat_table`).
    pub GuardAddressTakenIatEntryTable: u64,
    /// `GuardAddressTakenIatEntryCount` (`__guard_iat_count`).
    pub GuardAddressTakenIatEntryCount: u64,
    /// `GuardLongJumpTargetTable` (VA of `__guard_longjmp_table`).
    pub GuardLongJumpTargetTable: u64,
    /// `GuardLongJumpTargetCount` (`__guard_longjmp_count`).
    pub GuardLongJumpTargetCount: u64,
    /// `DynamicValueRelocTable` (VA).
    pub DynamicValueRelocTable: u64,
    /// `CHPEMetadataPointer` (VA).
    pub CHPEMetadataPointer: u64,
    /// `GuardRFFailureRoutine` (VA).
    pub GuardRFFailureRoutine: u64,
    /// `GuardRFFailureRoutineFunctionPointer` (VA).
    pub GuardRFFailureRoutineFunctionPointer: u64,
    /// `DynamicValueRelocTableOffset`.
    pub DynamicValueRelocTableOffset: u32,
    /// `DynamicValueRelocTableSection`.
    pub DynamicValueRelocTableSection: u16,
    /// `Reserved2`.
    pub Reserved2: u16,
    /// `GuardRFVerifyStackPointerFunctionPointer` (VA).
    pub GuardRFVerifyStackPointerFunctionPointer: u64,
    /// `HotPatchTableOffset`.
    pub HotPatchTableOffset: u32,
    /// `Reserved3`.
    pub Reserved3: u32,
    /// `EnclaveConfigurationPointer` (VA).
    pub EnclaveConfigurationPointer: u64,
    /// `VolatileMetadataPointer` (VA).
    pub VolatileMetadataPointer: u64,
    /// `GuardEHContinuationTable` (VA of `__guard_eh_cont_table`).
    pub GuardEHContinuationTable: u64,
    /// `GuardEHContinuationCount` (`__guard_eh_cont_count`).
    pub GuardEHContinuationCount: u64,
    /// `GuardXFGCheckFunctionPointer` (VA).
    pub GuardXFGCheckFunctionPointer: u64,
    /// `GuardXFGDispatchFunctionPointer` (VA).
    pub GuardXFGDispatchFunctionPointer: u64,
    /// `GuardXFGTableDispatchFunctionPointer` (VA).
    pub GuardXFGTableDispatchFunctionPointer: u64,
    /// `CastGuardOsDeterminedFailureMode` (VA).
    pub CastGuardOsDeterminedFailureMode: u64,
}

/// `IMAGE_DIRECTORY_ENTRY_LOAD_CONFIG`: the data directory that points at
/// `_load_config_used`.
pub const IMAGE_DIRECTORY_ENTRY_LOAD_CONFIG: usize = 10;
/// `IMAGE_DLLCHARACTERISTICS_GUARD_CF`: the image supports Control Flow Guard.
pub const IMAGE_DLLCHARACTERISTICS_GUARD_CF: u16 = 0x4000;
/// `IMAGE_DEBUG_TYPE_EX_DLLCHARACTERISTICS`: the debug directory entry that
/// holds the extended DLL characteristics (`/CETCOMPAT` writes it).
pub const IMAGE_DEBUG_TYPE_EX_DLLCHARACTERISTICS: u32 = 20;
/// `IMAGE_DLLCHARACTERISTICS_EX_CET_COMPAT`: compatible with CET shadow stacks.
pub const IMAGE_DLLCHARACTERISTICS_EX_CET_COMPAT: u16 = 0x0001;

/// `IMAGE_GUARD_CF_INSTRUMENTED`: the code does CFG checks.
pub const IMAGE_GUARD_CF_INSTRUMENTED: u32 = 0x0000_0100;
/// `IMAGE_GUARD_CF_FUNCTION_TABLE_PRESENT`: the guard function table exists.
pub const IMAGE_GUARD_CF_FUNCTION_TABLE_PRESENT: u32 = 0x0000_0400;
/// `IMAGE_GUARD_CF_LONGJUMP_TABLE_PRESENT`.
pub const IMAGE_GUARD_CF_LONGJUMP_TABLE_PRESENT: u32 = 0x0001_0000;
/// `IMAGE_GUARD_CF_FUNCTION_TABLE_SIZE_MASK`: the bytes of metadata after
/// each 4-byte RVA of the guard function table.
pub const IMAGE_GUARD_CF_FUNCTION_TABLE_SIZE_MASK: u32 = 0xF000_0000;
/// `IMAGE_GUARD_CF_FUNCTION_TABLE_SIZE_SHIFT`.
pub const IMAGE_GUARD_CF_FUNCTION_TABLE_SIZE_SHIFT: u32 = 28;

/// The bytes of one guard function table entry for these `GuardFlags`: the
/// RVA (4) and the metadata bytes the flags declare.
pub const fn guard_table_stride(guard_flags: u32) -> usize {
    4 + ((guard_flags & IMAGE_GUARD_CF_FUNCTION_TABLE_SIZE_MASK)
        >> IMAGE_GUARD_CF_FUNCTION_TABLE_SIZE_SHIFT) as usize
}

/// The `Size` the images declare: the whole structure above.
pub const LOAD_CONFIG_SIZE: usize = core::mem::size_of::<ImageLoadConfigDirectory64>();

// Layout pins (winnt.h, x64; the PE format specification's offsets).
const _: () = {
    use core::mem::{offset_of, size_of};
    type L = ImageLoadConfigDirectory64;
    assert!(size_of::<ImageLoadConfigCodeIntegrity>() == 12);
    assert!(offset_of!(L, Size) == 0);
    assert!(offset_of!(L, DeCommitFreeBlockThreshold) == 24);
    assert!(offset_of!(L, ProcessHeapFlags) == 72);
    assert!(offset_of!(L, EditList) == 80);
    assert!(offset_of!(L, SecurityCookie) == 88);
    assert!(offset_of!(L, SEHandlerTable) == 96);
    assert!(offset_of!(L, GuardCFCheckFunctionPointer) == 112);
    assert!(offset_of!(L, GuardCFDispatchFunctionPointer) == 120);
    assert!(offset_of!(L, GuardCFFunctionTable) == 128);
    assert!(offset_of!(L, GuardCFFunctionCount) == 136);
    assert!(offset_of!(L, GuardFlags) == 144);
    assert!(offset_of!(L, CodeIntegrity) == 148);
    assert!(offset_of!(L, GuardAddressTakenIatEntryTable) == 160);
    assert!(offset_of!(L, GuardAddressTakenIatEntryCount) == 168);
    assert!(offset_of!(L, GuardLongJumpTargetTable) == 176);
    assert!(offset_of!(L, GuardLongJumpTargetCount) == 184);
    assert!(offset_of!(L, DynamicValueRelocTable) == 192);
    assert!(offset_of!(L, GuardRFFailureRoutine) == 208);
    assert!(offset_of!(L, DynamicValueRelocTableOffset) == 224);
    assert!(offset_of!(L, GuardRFVerifyStackPointerFunctionPointer) == 232);
    assert!(offset_of!(L, HotPatchTableOffset) == 240);
    assert!(offset_of!(L, EnclaveConfigurationPointer) == 248);
    assert!(offset_of!(L, VolatileMetadataPointer) == 256);
    assert!(offset_of!(L, GuardEHContinuationTable) == 264);
    assert!(offset_of!(L, GuardEHContinuationCount) == 272);
    assert!(offset_of!(L, GuardXFGCheckFunctionPointer) == 280);
    assert!(offset_of!(L, CastGuardOsDeterminedFailureMode) == 304);
    assert!(size_of::<L>() == 0x138);
    assert!(guard_table_stride(0x1000_0500) == 5);
    assert!(guard_table_stride(0x0000_0500) == 4);
};
