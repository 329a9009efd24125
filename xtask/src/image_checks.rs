//! The checks of a driver image and its stamped INF (`cargo xtask check`).
//!
//! The image is read with the `object` crate's PE reader. CI runs a second,
//! independent checker on the same images (tools/check-sys/check_sys.py:
//! llvm-readobj and pefile, with its own copy of the lists below), so that
//! this one does not only check itself.
//!
//! One PASS/FAIL line per check, a summary line per image; an error when any
//! check of any image failed.

use crate::report::{Report, list};
use crate::{Error, Result, tools};
use object::LittleEndian as LE;
use object::pe;
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, Import, PeFile64};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Everything the shells may import from the kernel: the hand-declared surface
/// (shell/src/km_raw.rs), the spin lock (common/src/sync.rs) and the delay of
/// the NMR seam (common/src/nmr.rs). A new kernel function is added here on
/// purpose, with the file that declares it (and to check_sys.py's copy), or
/// the check fails.
pub const NTOSKRNL_ALLOWED: &[&str] = &[
    // shell/src/km_raw.rs: trace sink, worker thread, allocator, panic
    "DbgPrintEx",
    "PsCreateSystemThread",
    "PsTerminateSystemThread",
    "ZwWaitForSingleObject",
    "ZwClose",
    "KeDelayExecutionThread", // also common/src/nmr.rs
    "ExAllocatePool2",
    "ExFreePoolWithTag",
    "KeBugCheckEx",
    // shell/src/km_raw.rs: the C memory functions LLVM emits calls to
    "memcpy",
    "memmove",
    "memset",
    "memcmp",
    // common/src/sync.rs: KernelSpinLock
    "KeAcquireSpinLockRaiseToDpc",
    "KeReleaseSpinLock",
    // common/src/nmr.rs: the per-processor rundown
    "KeQueryMaximumProcessorCountEx",
    "KeGetCurrentProcessorNumberEx",
];

/// The NMR functions each driver needs, exactly (common/src/ffi.rs, `netio`).
pub fn netio_required(driver: &str) -> Option<&'static [&'static str]> {
    match driver {
        "nmr_client" => Some(&[
            "NmrRegisterClient",
            "NmrDeregisterClient",
            "NmrWaitForClientDeregisterComplete",
            "NmrClientAttachProvider",
            "NmrClientDetachProviderComplete",
        ]),
        "nmr_provider" => Some(&[
            "NmrRegisterProvider",
            "NmrDeregisterProvider",
            "NmrWaitForProviderDeregisterComplete",
            "NmrProviderDetachClientComplete",
        ]),
        _ => None,
    }
}

/// The first Windows 10 build that exports each kernel function newer than
/// Windows 10 1507 (build 10240); every other allowed import is older. The
/// INF's install sections must not offer the package to an older build.
const NTOSKRNL_FIRST_BUILD: &[(&str, u32)] = &[("ExAllocatePool2", 19041)]; // Windows 10 2004, wdm.h

/// The functions each image hands to the kernel and the NMR, to be called
/// through a pointer from outside the image: the NPI dispatch tables and the
/// NMR characteristics (attach, detach, cleanup), DriverUnload and the worker
/// thread's start routine. Kernel CFG stops a call to any of them that is not
/// in the image's guard function table, so every one must be there. Rust
/// paths (the legacy-mangling hash ignored), found in the image's `.map`, each
/// with the role it is handed out in. (check_sys.py keeps its own copy.)
pub fn handed_out(driver: &str) -> &'static [(&'static str, &'static str)] {
    match driver {
        "nmr_client" => &[
            // nmr/src/lib.rs, the client's NPI_CLIENT_CHARACTERISTICS
            ("nmr::attach_provider", "ClientAttachProvider"),
            (
                "nmr_common::binding::detach_callback",
                "ClientDetachProvider",
            ),
            ("nmr::cleanup_binding", "ClientCleanupBindingContext"),
            // npi/src/lib.rs, client_table (ClientDispatch)
            (
                "nmr_checksum_npi::notify_trampoline",
                "client dispatch: notify",
            ),
            // shell/src/shell.rs
            ("nmr_client::driver::driver_unload", "DriverUnload"),
            (
                "nmr_shell::shell::worker",
                "PsCreateSystemThread start routine",
            ),
        ],
        "nmr_provider" => &[
            // nmr/src/lib.rs, the provider's NPI_PROVIDER_CHARACTERISTICS
            ("nmr::attach_client", "ProviderAttachClient"),
            (
                "nmr_common::binding::detach_callback",
                "ProviderDetachClient",
            ),
            ("nmr::cleanup_binding", "ProviderCleanupBindingContext"),
            // npi/src/lib.rs, provider_table (ProviderDispatch)
            (
                "nmr_checksum_npi::get_info_trampoline",
                "provider dispatch: get_info",
            ),
            (
                "nmr_checksum_npi::checksum_trampoline",
                "provider dispatch: checksum",
            ),
            // shell/src/shell.rs
            ("nmr_provider::driver::driver_unload", "DriverUnload"),
            (
                "nmr_shell::shell::worker",
                "PsCreateSystemThread start routine",
            ),
        ],
        _ => &[],
    }
}

/// winnt.h: GuardFlags bits of the load configuration.
const IMAGE_GUARD_CF_INSTRUMENTED: u32 = 0x100;
const IMAGE_GUARD_CF_FUNCTION_TABLE_PRESENT: u32 = 0x400;
/// The high nibble of GuardFlags: extra bytes per guard table entry.
const IMAGE_GUARD_CF_FUNCTION_TABLE_SIZE_SHIFT: u32 = 28;
/// The load configuration must reach GuardFlags (offset 144, 4 bytes) for the
/// kernel to read the CFG fields (shell/src/load_config.rs pins the layout).
const LOAD_CONFIG_MIN_SIZE: u32 = 148;
/// winnt.h: IMAGE_DEBUG_TYPE_EX_DLLCHARACTERISTICS, IMAGE_DLLCHARACTERISTICS_EX_CET_COMPAT.
const DEBUG_TYPE_EX_DLLCHARACTERISTICS: u32 = 20;
const EX_CET_COMPAT: u32 = 0x1;

const NTOSKRNL: &str = "ntoskrnl.exe";
const NETIO: &str = "NETIO.SYS";

/// The PE checksum of a file, as the loader and `CheckSumMappedFile` compute
/// it: the 16-bit one's-complement-style sum of the file with the checksum
/// field left out, plus the file's length.
pub fn pe_checksum(data: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in data.chunks(2).enumerate() {
        let at = i * 2;
        if at >= checksum_offset && at < checksum_offset + 4 {
            continue;
        }
        let word = u64::from(chunk[0]) | (u64::from(chunk.get(1).copied().unwrap_or(0)) << 8);
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(data.len() as u32)
}

/// The facts the checks need, read from one image.
#[derive(Debug, Default)]
struct Image {
    machine: u16,
    subsystem: u16,
    dll_characteristics: u16,
    wx_sections: Vec<String>,
    checksum_stored: u32,
    checksum_computed: u32,
    exports: Vec<(String, u32)>,
    entry: u32,
    imports: Vec<(String, String)>,
    delay_imports: bool,
    pdb_names: Vec<String>,
    image_base: u64,
    size_of_image: u64,
    /// The load configuration: (Size, check pointer VA, dispatch pointer VA,
    /// GuardFlags, GuardCFFunctionCount).
    load_config: Option<(u32, u64, u64, u32, u64)>,
    /// The guard function table, as VAs.
    guard_fids: BTreeSet<u64>,
    cet_compat: bool,
}

fn read_image(data: &[u8]) -> std::result::Result<Image, String> {
    let e = |err: object::Error| err.to_string();
    let file = PeFile64::parse(data).map_err(e)?;
    let nt = file.nt_headers();
    let opt = nt.optional_header();
    let mut image = Image {
        machine: nt.file_header().machine.get(LE),
        subsystem: opt.subsystem(),
        dll_characteristics: opt.dll_characteristics(),
        checksum_stored: opt.check_sum(),
        entry: opt.address_of_entry_point(),
        image_base: opt.image_base(),
        size_of_image: u64::from(opt.size_of_image()),
        ..Image::default()
    };
    let e_lfanew = u32::from_le_bytes(
        data.get(0x3c..0x40)
            .and_then(|b| b.try_into().ok())
            .ok_or("no e_lfanew")?,
    ) as usize;
    image.checksum_computed = pe_checksum(data, e_lfanew + 4 + 20 + 64);

    let sections = file.section_table();
    for s in sections.iter() {
        let ch = s.characteristics.get(LE);
        if ch & pe::IMAGE_SCN_MEM_WRITE != 0 && ch & pe::IMAGE_SCN_MEM_EXECUTE != 0 {
            image
                .wx_sections
                .push(String::from_utf8_lossy(s.raw_name()).into_owned());
        }
    }
    image.exports = read_exports(data, &file)?;
    if let Some(table) = file.import_table().map_err(e)? {
        let mut descriptors = table.descriptors().map_err(e)?;
        while let Some(d) = descriptors.next().map_err(e)? {
            let dll = String::from_utf8_lossy(table.name(d.name.get(LE)).map_err(e)?).into_owned();
            let lookup = match d.original_first_thunk.get(LE) {
                0 => d.first_thunk.get(LE),
                x => x,
            };
            let mut thunks = table.thunks(lookup).map_err(e)?;
            while let Some(thunk) = thunks.next::<pe::ImageNtHeaders64>().map_err(e)? {
                let function = match table.import::<pe::ImageNtHeaders64>(thunk).map_err(e)? {
                    Import::Name(_, name) => String::from_utf8_lossy(name).into_owned(),
                    Import::Ordinal(o) => format!("#{o}"),
                };
                image.imports.push((dll.clone(), function));
            }
        }
    }
    image.delay_imports = file
        .data_directory(pe::IMAGE_DIRECTORY_ENTRY_DELAY_IMPORT)
        .is_some_and(|d| d.virtual_address.get(LE) != 0 || d.size.get(LE) != 0);
    if let Some(dir) = file.data_directory(pe::IMAGE_DIRECTORY_ENTRY_DEBUG) {
        let bytes = dir.data(data, &sections).map_err(e)?;
        let entries = object::pod::slice_from_all_bytes::<pe::ImageDebugDirectory>(bytes)
            .map_err(|()| "the debug directory's size is not a multiple of its entry")?;
        for entry in entries {
            if entry.typ.get(LE) == DEBUG_TYPE_EX_DLLCHARACTERISTICS {
                let at = entry.pointer_to_raw_data.get(LE) as usize;
                if let Some(b) = data.get(at..at + 4) {
                    image.cet_compat |=
                        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & EX_CET_COMPAT != 0;
                }
            }
            if entry.typ.get(LE) != pe::IMAGE_DEBUG_TYPE_CODEVIEW {
                continue;
            }
            let at = entry.pointer_to_raw_data.get(LE) as usize;
            let len = entry.size_of_data.get(LE) as usize;
            let info = data
                .get(at..at + len)
                .ok_or("CodeView entry outside the file")?;
            // RSDS, GUID (16), age (4), NUL-terminated path.
            if info.len() > 24 && &info[..4] == b"RSDS" {
                let path = &info[24..];
                let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                image
                    .pdb_names
                    .push(String::from_utf8_lossy(&path[..end]).into_owned());
            } else {
                image.pdb_names.push("(not RSDS)".into());
            }
        }
    }
    read_load_config(data, &file, &mut image)?;
    Ok(image)
}

/// The load configuration's CFG fields and the guard function table
/// (IMAGE_LOAD_CONFIG_DIRECTORY64: Size @0, GuardCFCheckFunctionPointer @112,
/// GuardCFDispatchFunctionPointer @120, GuardCFFunctionTable @128,
/// GuardCFFunctionCount @136, GuardFlags @144).
fn read_load_config(
    data: &[u8],
    file: &PeFile64<'_>,
    image: &mut Image,
) -> std::result::Result<(), String> {
    let Some(dir) = file.data_directory(pe::IMAGE_DIRECTORY_ENTRY_LOAD_CONFIG) else {
        return Ok(());
    };
    let rva = dir.virtual_address.get(LE);
    if rva == 0 {
        return Ok(());
    }
    let sections = file.section_table();
    let bytes = sections
        .pe_data_at(data, rva)
        .ok_or_else(|| format!("load configuration at {rva:#x} outside the file"))?;
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let size = u32_at(0).ok_or("load configuration truncated")?;
    if size < LOAD_CONFIG_MIN_SIZE {
        image.load_config = Some((size, 0, 0, 0, 0));
        return Ok(());
    }
    let (check, dispatch, table, count, flags) = (
        u64_at(112).unwrap_or(0),
        u64_at(120).unwrap_or(0),
        u64_at(128).unwrap_or(0),
        u64_at(136).unwrap_or(0),
        u32_at(144).unwrap_or(0),
    );
    image.load_config = Some((size, check, dispatch, flags, count));
    if table != 0 && count > 0 && count < 1 << 20 {
        let stride = 4 + (flags >> IMAGE_GUARD_CF_FUNCTION_TABLE_SIZE_SHIFT) as usize;
        let table_rva = table
            .checked_sub(image.image_base)
            .and_then(|r| u32::try_from(r).ok())
            .ok_or("guard function table outside the image")?;
        let entries = sections
            .pe_data_at(data, table_rva)
            .and_then(|d| d.get(..stride * count as usize))
            .ok_or("guard function table outside the file")?;
        for e in entries.chunks(stride) {
            let rva = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            image.guard_fids.insert(image.image_base + u64::from(rva));
        }
    }
    Ok(())
}

/// The path of a legacy-mangled Rust symbol without its hash
/// (`_ZN10nmr_client6driver13driver_unload17h<16 hex>E` ->
/// `nmr_client::driver::driver_unload`).
fn rust_path(symbol: &str) -> Option<String> {
    let body = symbol.strip_prefix("_ZN")?.strip_suffix('E')?;
    let (body, hash) = body.split_at(body.len().checked_sub(19)?);
    let hex = hash.strip_prefix("17h")?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut parts = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let len: usize = rest[..digits].parse().ok()?;
        let part = rest.get(digits..digits + len)?;
        parts.push(part);
        rest = &rest[digits + len..];
    }
    Some(parts.join("::"))
}

/// Rust path (or plain symbol) -> the VAs of the code symbols of that name in
/// lld's `.map` (section 0001, .text).
fn map_functions(map: &str) -> std::collections::BTreeMap<String, BTreeSet<u64>> {
    let mut out = std::collections::BTreeMap::<String, BTreeSet<u64>>::new();
    for line in map.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 3 || !parts[0].starts_with("0001:") {
            continue;
        }
        let Ok(va) = u64::from_str_radix(parts[2], 16) else {
            continue;
        };
        let name = rust_path(parts[1]).unwrap_or_else(|| parts[1].to_owned());
        out.entry(name).or_default().insert(va);
    }
    out
}

/// Control Flow Guard and CET: GUARD_CF, the load configuration with the CFG
/// fields set, the guard function table covering every function the image
/// hands out (named in its `.map`), and the CET-compatible flag.
fn check_cfg_cet(r: &mut Report, image: &Image, map_path: &Path, stem: &str) {
    r.check(
        image.dll_characteristics & pe::IMAGE_DLLCHARACTERISTICS_GUARD_CF != 0,
        "GUARD_CF set",
        format!("DllCharacteristics {:#06x}", image.dll_characteristics),
    );
    let end = image.image_base + image.size_of_image;
    let inside = |va: u64| (image.image_base..end).contains(&va);
    match image.load_config {
        None => {
            r.check(
                false,
                "load configuration with CFG check and dispatch pointers",
                "none: no load configuration directory",
            );
        }
        Some((size, check, dispatch, flags, count)) => {
            r.check(
                size >= LOAD_CONFIG_MIN_SIZE && inside(check) && inside(dispatch),
                "load configuration with CFG check and dispatch pointers",
                format!("Size {size:#x} (>= {LOAD_CONFIG_MIN_SIZE:#x}), check {check:#x}, dispatch {dispatch:#x} (inside {:#x}..{end:#x})", image.image_base),
            );
            let want = IMAGE_GUARD_CF_INSTRUMENTED | IMAGE_GUARD_CF_FUNCTION_TABLE_PRESENT;
            r.check(
                flags & want == want && count > 0 && image.guard_fids.len() as u64 == count,
                "guard flags CF_INSTRUMENTED | CF_FUNCTION_TABLE_PRESENT, a guard function table",
                format!(
                    "GuardFlags {flags:#x}, GuardCFFunctionCount {count}, {} entries read",
                    image.guard_fids.len()
                ),
            );
        }
    }
    match std::fs::read_to_string(map_path) {
        Err(e) => {
            r.check(
                false,
                "guard table covers every function the image hands out",
                format!("{}: {e}", map_path.display()),
            );
        }
        Ok(map) => {
            let functions = map_functions(&map);
            let mut missing = Vec::new();
            let mut uncovered = Vec::new();
            let wanted = handed_out(stem);
            for (name, role) in wanted {
                match functions.get(*name) {
                    None => missing.push(format!("{name} ({role})")),
                    Some(vas) if !vas.is_subset(&image.guard_fids) => {
                        uncovered.push(format!("{name} ({role})"))
                    }
                    Some(_) => {}
                }
            }
            let ok = missing.is_empty() && uncovered.is_empty() && !wanted.is_empty();
            r.check(
                ok,
                "guard table covers every function the image hands out",
                if ok {
                    format!(
                        "{} of {} in the table ({} guard entries)",
                        wanted.len(),
                        wanted.len(),
                        image.guard_fids.len()
                    )
                } else {
                    format!(
                        "NOT IN THE GUARD TABLE: {}; NOT IN THE MAP: {}",
                        list(&uncovered),
                        list(&missing)
                    )
                },
            );
        }
    }
    r.check(
        image.cet_compat,
        "CET compatible (IMAGE_DLLCHARACTERISTICS_EX_CET_COMPAT)",
        if image.cet_compat {
            "yes"
        } else {
            "no extended DLL characteristics entry with CET_COMPAT"
        },
    );
}

/// The exports, read from the export directory by hand: (name, RVA). (The
/// `object` crate's export table reader refuses these images' directory,
/// which rust-lld writes at an odd RVA, with "Invalid PE export dir size";
/// the fields are read at their offsets instead, as nmr-image-host does.)
fn read_exports(
    data: &[u8],
    file: &PeFile64<'_>,
) -> std::result::Result<Vec<(String, u32)>, String> {
    let Some(dir) = file.data_directory(pe::IMAGE_DIRECTORY_ENTRY_EXPORT) else {
        return Ok(Vec::new());
    };
    if dir.virtual_address.get(LE) == 0 {
        return Ok(Vec::new());
    }
    let sections = file.section_table();
    let at = |rva: u32, len: usize| -> std::result::Result<&[u8], String> {
        sections
            .pe_data_at(data, rva)
            .and_then(|d| d.get(..len))
            .ok_or_else(|| format!("export data at {rva:#x}+{len} outside the file"))
    };
    let u32_at = |rva: u32| -> std::result::Result<u32, String> {
        at(rva, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u16_at = |rva: u32| -> std::result::Result<u16, String> {
        at(rva, 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    // IMAGE_EXPORT_DIRECTORY: Base @16, NumberOfFunctions @20, NumberOfNames
    // @24, AddressOfFunctions @28, AddressOfNames @32, AddressOfNameOrdinals @36.
    let start = dir.virtual_address.get(LE);
    let base = u32_at(start + 16)?;
    let functions = u32_at(start + 20)?;
    let names = u32_at(start + 24)?;
    let (funcs_at, names_at, ords_at) = (
        u32_at(start + 28)?,
        u32_at(start + 32)?,
        u32_at(start + 36)?,
    );
    if functions > 4096 || names > functions {
        return Err(format!(
            "{functions} exported functions, {names} names: not a driver's export table"
        ));
    }
    let mut named = vec![None; functions as usize];
    for i in 0..names {
        let ordinal = u32::from(u16_at(ords_at + 2 * i)?);
        let name_rva = u32_at(names_at + 4 * i)?;
        let tail = sections
            .pe_data_at(data, name_rva)
            .ok_or_else(|| format!("export name at {name_rva:#x} outside the file"))?;
        let end = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or("unterminated export name")?;
        if let Some(slot) = named.get_mut(ordinal as usize) {
            *slot = Some(String::from_utf8_lossy(&tail[..end]).into_owned());
        }
    }
    let mut exports = Vec::new();
    for (i, name) in named.into_iter().enumerate() {
        let rva = u32_at(funcs_at + 4 * i as u32)?;
        if rva == 0 {
            continue; // an unused ordinal
        }
        exports.push((name.unwrap_or_else(|| format!("#{}", base + i as u32)), rva));
    }
    Ok(exports)
}

fn check_image(r: &mut Report, path: &Path, stem: &str, data: &[u8]) -> BTreeSet<String> {
    let image = match read_image(data) {
        Ok(i) => i,
        Err(e) => {
            r.check(false, "a PE32+ image", e);
            return BTreeSet::new();
        }
    };
    r.check(
        image.machine == pe::IMAGE_FILE_MACHINE_AMD64,
        "machine x64",
        format!("{:#06x}", image.machine),
    );
    r.check(
        image.subsystem == pe::IMAGE_SUBSYSTEM_NATIVE,
        "subsystem NATIVE",
        image.subsystem.to_string(),
    );
    for (flag, name) in [
        (
            pe::IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY,
            "FORCE_INTEGRITY",
        ),
        (pe::IMAGE_DLLCHARACTERISTICS_NX_COMPAT, "NX_COMPAT"),
        (pe::IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE, "DYNAMIC_BASE"),
    ] {
        r.check(
            image.dll_characteristics & flag != 0,
            &format!("{name} set"),
            format!("DllCharacteristics {:#06x}", image.dll_characteristics),
        );
    }
    r.check(
        image.wx_sections.is_empty(),
        "no writable+executable section",
        list(&image.wx_sections),
    );
    r.check(
        image.checksum_stored != 0 && image.checksum_stored == image.checksum_computed,
        "PE checksum valid",
        format!(
            "stored {:#010X}, computed {:#010X}",
            image.checksum_stored, image.checksum_computed
        ),
    );
    let names: Vec<&str> = image.exports.iter().map(|(n, _)| n.as_str()).collect();
    r.check(
        names == ["DriverEntry"],
        "only export is DriverEntry",
        list(&names),
    );
    let de = image
        .exports
        .iter()
        .find(|(n, _)| n == "DriverEntry")
        .map(|(_, rva)| *rva);
    r.check(
        de == Some(image.entry),
        "entry point is DriverEntry",
        format!(
            "AddressOfEntryPoint {:#x}, DriverEntry {}",
            image.entry,
            de.map_or("(none)".into(), |d| format!("{d:#x}"))
        ),
    );
    r.check(
        !image.delay_imports,
        "no delay-load imports",
        if image.delay_imports {
            "a delay-import directory"
        } else {
            "(none)"
        },
    );
    let dlls: BTreeSet<&str> = image.imports.iter().map(|(d, _)| d.as_str()).collect();
    r.check(
        dlls.iter().all(|d| *d == NTOSKRNL || *d == NETIO),
        &format!("imports only from {NTOSKRNL} and {NETIO}"),
        list(&dlls),
    );
    let by_ordinal: Vec<String> = image
        .imports
        .iter()
        .filter(|(_, f)| f.starts_with('#'))
        .map(|(d, f)| format!("{d}!{f}"))
        .collect();
    r.check(
        by_ordinal.is_empty(),
        "no import by ordinal",
        list(&by_ordinal),
    );
    let kernel: BTreeSet<String> = image
        .imports
        .iter()
        .filter(|(d, _)| d == NTOSKRNL)
        .map(|(_, f)| f.clone())
        .collect();
    let extra: Vec<&String> = kernel
        .iter()
        .filter(|f| !NTOSKRNL_ALLOWED.contains(&f.as_str()))
        .collect();
    r.check(
        extra.is_empty(),
        &format!("every {NTOSKRNL} import is on the allow-list"),
        if extra.is_empty() {
            format!("{} imports: {}", kernel.len(), list(&kernel))
        } else {
            format!("NOT ALLOWED: {}", list(extra))
        },
    );
    let nmr: BTreeSet<&str> = image
        .imports
        .iter()
        .filter(|(d, _)| d == NETIO)
        .map(|(_, f)| f.as_str())
        .collect();
    let want: BTreeSet<&str> = netio_required(stem)
        .unwrap_or(&[])
        .iter()
        .copied()
        .collect();
    let missing: Vec<&&str> = want.difference(&nmr).collect();
    let unexpected: Vec<&&str> = nmr.difference(&want).collect();
    r.check(
        missing.is_empty() && unexpected.is_empty(),
        &format!("NMR imports are exactly {stem}'s"),
        if missing.is_empty() && unexpected.is_empty() {
            list(&nmr)
        } else {
            format!(
                "missing: {}; not needed by {stem}: {}",
                list(missing.iter().map(|s| **s)),
                list(unexpected.iter().map(|s| **s))
            )
        },
    );
    r.check(
        image.pdb_names == [format!("{stem}.pdb")],
        "CodeView debug entry names the .pdb",
        list(&image.pdb_names),
    );
    check_cfg_cet(r, &image, &path.with_extension("map"), stem);
    kernel
}

/// The stamped INF beside the image: a primitive driver with no uninstall
/// section (infverif /w), offered only to the Windows builds that export
/// every kernel function the image imports.
fn check_inf(r: &mut Report, inf: &Path, kernel: &BTreeSet<String>) {
    let name = tools::name(inf);
    let Ok(text) = std::fs::read_to_string(inf) else {
        r.check(
            false,
            "INF beside the image",
            format!("{}: no such file", inf.display()),
        );
        return;
    };
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.split(';').next().unwrap_or(""))
        .collect();
    let sections: Vec<&str> = lines
        .iter()
        .filter_map(|l| {
            let l = l.trim_start();
            l.strip_prefix('[')?.split(']').next().map(str::trim)
        })
        .collect();
    let uninstall: Vec<&str> = sections
        .iter()
        .copied()
        .filter(|s| s.to_ascii_lowercase().starts_with("defaultuninstall"))
        .collect();
    let delservice: Vec<&str> = lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| {
            l.split('=')
                .next()
                .is_some_and(|k| k.trim().eq_ignore_ascii_case("DelService"))
                && l.contains('=')
        })
        .collect();
    r.check(
        uninstall.is_empty() && delservice.is_empty(),
        &format!("{name}: no [DefaultUninstall], no DelService (primitive driver, infverif /w)"),
        list(uninstall.iter().chain(delservice.iter())),
    );
    let install: Vec<&str> = sections
        .iter()
        .copied()
        .filter(|s| s.to_ascii_lowercase().starts_with("defaultinstall"))
        .collect();
    let build_of = |s: &str| -> Option<u32> {
        let lower = s.to_ascii_lowercase();
        let rest = lower.strip_prefix("defaultinstall.ntamd64.10.0...")?;
        let rest = rest.strip_suffix(".services").unwrap_or(rest);
        (!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
            .then(|| rest.parse().ok())
            .flatten()
    };
    let undecorated: Vec<&str> = install
        .iter()
        .copied()
        .filter(|s| build_of(s).is_none())
        .collect();
    let needed: Vec<(&str, u32)> = NTOSKRNL_FIRST_BUILD
        .iter()
        .copied()
        .filter(|(f, _)| kernel.contains(*f))
        .collect();
    let need = needed.iter().map(|(_, b)| *b).max().unwrap_or(10240);
    let lowest = install
        .iter()
        .filter_map(|s| build_of(s))
        .min()
        .unwrap_or(0);
    r.check(
        !install.is_empty() && undecorated.is_empty() && lowest >= need,
        &format!("{name}: every [DefaultInstall] needs Windows 10 build >= the imports' {need}"),
        if !undecorated.is_empty() || install.is_empty() {
            format!("undecorated: {}", list(&undecorated))
        } else {
            format!(
                "lowest NTamd64.10.0...{lowest}, needed {need} ({})",
                if needed.is_empty() {
                    "no import newer than 10240".to_owned()
                } else {
                    list(needed.iter().map(|(f, _)| *f))
                }
            )
        },
    );
}

/// Checks each image and the INF beside it; an error if any check failed.
pub fn check_images(images: &[PathBuf]) -> Result<()> {
    check_images_failures(images).map_err(|(e, _)| e)
}

/// The failed checks of one image: (image, the `what` of each).
pub type ImageFailures = (String, Vec<String>);

/// [`check_images`], returning on failure also each image's failed checks.
pub fn check_images_failures(
    images: &[PathBuf],
) -> std::result::Result<(), (Error, Vec<ImageFailures>)> {
    if images.is_empty() {
        return Err((
            Error::with_fix("no image to check", "run `cargo xtask package` first"),
            Vec::new(),
        ));
    }
    let mut failed_images = Vec::new();
    let mut failures = Vec::new();
    for path in images {
        let base = tools::name(path);
        let mut r = Report::new(&base);
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        match std::fs::read(path) {
            Err(e) => {
                r.check(false, "readable", format!("{}: {e}", path.display()));
            }
            Ok(_) if netio_required(&stem).is_none() => {
                r.check(
                    false,
                    "driver",
                    "unknown image name (expected nmr_client or nmr_provider)",
                );
            }
            Ok(data) => {
                let kernel = check_image(&mut r, path, &stem, &data);
                check_inf(&mut r, &path.with_extension("inf"), &kernel);
            }
        }
        if !r.finish() {
            failures.push((base.clone(), r.failures().to_vec()));
            failed_images.push(base);
        }
    }
    if failed_images.is_empty() {
        Ok(())
    } else {
        Err((
            Error::with_fix(
                format!("image checks failed: {}", failed_images.join(", ")),
                "see the FAIL lines above",
            ),
            failures,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_adds_the_length_and_skips_its_own_field() {
        // Words 0x0201 and 0x0403 (the field at 4..8 skipped), length 10.
        let data = [1u8, 2, 3, 4, 0xff, 0xff, 0xff, 0xff, 0, 0];
        assert_eq!(pe_checksum(&data, 4), 0x0201 + 0x0403 + 10);
        // A carry out of 16 bits is folded back in.
        let data = [0xff, 0xff, 0x02, 0x00];
        assert_eq!(pe_checksum(&data, 100), 0x0001 + 1 + 4);
    }
}
