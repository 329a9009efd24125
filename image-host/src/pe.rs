//! Mapping a PE32+ x64 native image the way the Windows loader does, at an
//! address of our choosing (never the preferred base): headers and sections
//! copied, DIR64 base relocations applied, imports bound through a caller's
//! resolver, each section given its own protection, the IAT read-only.

use std::fmt;
use std::ptr::NonNull;

use object::LittleEndian as LE;
use object::pe;
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, Import, PeFile64};

/// Why an image was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// The file could not be read.
    Io(String),
    /// Not a PE32+ image, or a malformed one.
    Malformed(String),
    /// A PE32+ image this loader does not run (machine, relocation type...).
    Unsupported(String),
    /// An import with no stand-in: the load is refused, as Windows refuses an
    /// image that imports a function no loaded module exports.
    MissingImport {
        /// The DLL named by the import descriptor.
        dll: String,
        /// The function.
        function: String,
    },
    /// An import by ordinal (drivers import by name).
    ImportByOrdinal {
        /// The DLL named by the import descriptor.
        dll: String,
        /// The ordinal.
        ordinal: u16,
    },
    /// The export the caller asked for is missing.
    MissingExport(String),
    /// `mmap` / `mprotect` failed.
    Os(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io(e) => write!(f, "cannot read the image: {e}"),
            LoadError::Malformed(e) => write!(f, "not a valid PE32+ image: {e}"),
            LoadError::Unsupported(e) => write!(f, "unsupported image: {e}"),
            LoadError::MissingImport { dll, function } => write!(
                f,
                "import {dll}!{function} has no stand-in: the load is refused \
                 (Windows refuses an image importing a function nothing exports)"
            ),
            LoadError::ImportByOrdinal { dll, ordinal } => {
                write!(f, "import {dll}!#{ordinal} is by ordinal: refused")
            }
            LoadError::MissingExport(name) => write!(f, "the image does not export {name}"),
            LoadError::Os(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LoadError {}

fn malformed(e: impl fmt::Display) -> LoadError {
    LoadError::Malformed(e.to_string())
}

/// What one import is bound to: the address written into its IAT slot.
pub type Resolver<'a> = dyn FnMut(&str, &str) -> Option<usize> + 'a;

/// Anonymous pages from `mmap`, unmapped on drop.
pub struct Pages {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: plain memory; who may touch it when is the owners' business.
unsafe impl Send for Pages {}
// SAFETY: as above; `Pages` itself exposes only its address.
unsafe impl Sync for Pages {}

impl Pages {
    /// `len` bytes (rounded up to pages), read-write, zeroed.
    pub fn new(len: usize) -> Result<Pages, LoadError> {
        let len = len.next_multiple_of(page_size());
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(LoadError::Os(format!(
                "mmap of {len} bytes failed: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Pages {
            base: NonNull::new(p.cast()).expect("mmap returned null"),
            len,
        })
    }

    /// The first byte.
    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// The length in bytes (a multiple of the page size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: `new` rounds up).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the protection of `[offset, offset + len)`, both page-aligned.
    pub fn protect(&self, offset: usize, len: usize, prot: i32) -> Result<(), LoadError> {
        assert!(offset.is_multiple_of(page_size()) && offset + len <= self.len);
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the range lies inside this mapping (asserted above).
        let r = unsafe { libc::mprotect(self.base().add(offset).cast(), len, prot) };
        if r != 0 {
            return Err(LoadError::Os(format!(
                "mprotect failed: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base().cast(), self.len) };
    }
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096)
}

/// One section as mapped.
#[derive(Clone, Debug)]
pub struct SectionInfo {
    /// `.text`, `.rdata`...
    pub name: String,
    /// Its RVA.
    pub rva: u32,
    /// Its mapped size (page-rounded).
    pub size: u32,
    /// The protection given (`PROT_*`).
    pub prot: i32,
}

/// A mapped image. Unmapped on drop: nothing may run in it by then.
pub struct MappedImage {
    pages: Pages,
    preferred_base: u64,
    relocations: usize,
    imports: Vec<(String, String)>,
    exports: Vec<(String, u32)>,
    sections: Vec<SectionInfo>,
    iat: (u32, u32),
    guard: crate::cfg::Guard,
}

impl MappedImage {
    /// Maps `data` (the file's bytes), binding each import through `resolve`.
    pub fn map(data: &[u8], resolve: &mut Resolver<'_>) -> Result<MappedImage, LoadError> {
        let file = PeFile64::parse(data).map_err(malformed)?;
        let nt = file.nt_headers();
        let machine = nt.file_header().machine.get(LE);
        if machine != pe::IMAGE_FILE_MACHINE_AMD64 {
            return Err(LoadError::Unsupported(format!(
                "machine {machine:#x}, not x64"
            )));
        }
        let opt = nt.optional_header();
        let size_of_image = opt.size_of_image() as usize;
        let preferred_base = opt.image_base();
        let pages = Pages::new(size_of_image)?;
        let base = pages.base();
        if base as u64 == preferred_base {
            return Err(LoadError::Os(
                "mmap returned the preferred base; relocation would go untested".into(),
            ));
        }
        // Every range is checked to lie inside the mapping before it is written.
        let write = |rva: usize, bytes: &[u8]| -> Result<(), LoadError> {
            rva.checked_add(bytes.len())
                .filter(|&e| e <= pages.len())
                .ok_or_else(|| {
                    malformed(format!("range {rva:#x}+{} outside the image", bytes.len()))
                })?;
            // SAFETY: checked above to lie inside the mapping, which is RW now.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(rva), bytes.len()) };
            Ok(())
        };
        let headers = opt.size_of_headers() as usize;
        write(
            0,
            data.get(..headers)
                .ok_or_else(|| malformed("headers truncated"))?,
        )?;

        let sections = file.section_table();
        let mut infos = Vec::new();
        for s in sections.iter() {
            let rva = s.virtual_address.get(LE) as usize;
            let vsize = s.virtual_size.get(LE) as usize;
            let raw = s.pe_data(data).map_err(malformed)?;
            // Raw data is padded to the file alignment: copy no more than the
            // section's virtual size (the rest of the section stays zero).
            let n = if vsize == 0 {
                raw.len()
            } else {
                raw.len().min(vsize)
            };
            write(rva, &raw[..n])?;
            let ch = s.characteristics.get(LE);
            let mut prot = 0;
            if ch & pe::IMAGE_SCN_MEM_READ != 0 {
                prot |= libc::PROT_READ;
            }
            if ch & pe::IMAGE_SCN_MEM_WRITE != 0 {
                prot |= libc::PROT_WRITE;
            }
            if ch & pe::IMAGE_SCN_MEM_EXECUTE != 0 {
                prot |= libc::PROT_EXEC;
            }
            if prot & libc::PROT_WRITE != 0 && prot & libc::PROT_EXEC != 0 {
                return Err(LoadError::Unsupported(format!(
                    "section {} is writable and executable",
                    String::from_utf8_lossy(s.raw_name())
                )));
            }
            infos.push(SectionInfo {
                name: String::from_utf8_lossy(s.raw_name()).into_owned(),
                rva: rva as u32,
                size: vsize.max(n).next_multiple_of(page_size()) as u32,
                prot,
            });
        }

        // Base relocations: only DIR64 (and the ABSOLUTE padding) exist in x64.
        let delta = (base as u64).wrapping_sub(preferred_base);
        let dirs = file.data_directories();
        let mut relocations = 0;
        if let Some(mut blocks) = dirs.relocation_blocks(data, &sections).map_err(malformed)? {
            while let Some(block) = blocks.next().map_err(malformed)? {
                for r in block {
                    match r.typ {
                        pe::IMAGE_REL_BASED_ABSOLUTE => {}
                        pe::IMAGE_REL_BASED_DIR64 => {
                            let at = r.virtual_address as usize;
                            if at + 8 > pages.len() {
                                return Err(malformed(format!(
                                    "relocation at {at:#x} outside the image"
                                )));
                            }
                            // SAFETY: inside the RW mapping (checked); unaligned access.
                            unsafe {
                                let p = base.add(at).cast::<u64>();
                                p.write_unaligned(p.read_unaligned().wrapping_add(delta));
                            }
                            relocations += 1;
                        }
                        t => {
                            return Err(LoadError::Unsupported(format!(
                                "base relocation type {t} at {:#x}",
                                r.virtual_address
                            )));
                        }
                    }
                }
            }
        }

        // Imports: every one by name, every one bound, or the load is refused.
        let mut imports = Vec::new();
        if let Some(table) = file.import_table().map_err(malformed)? {
            let mut descriptors = table.descriptors().map_err(malformed)?;
            while let Some(d) = descriptors.next().map_err(malformed)? {
                let dll = String::from_utf8_lossy(table.name(d.name.get(LE)).map_err(malformed)?)
                    .into_owned();
                let lookup = match d.original_first_thunk.get(LE) {
                    0 => d.first_thunk.get(LE),
                    x => x,
                };
                let mut thunks = table.thunks(lookup).map_err(malformed)?;
                let mut slot = d.first_thunk.get(LE) as usize;
                while let Some(thunk) = thunks.next::<pe::ImageNtHeaders64>().map_err(malformed)? {
                    let function = match table
                        .import::<pe::ImageNtHeaders64>(thunk)
                        .map_err(malformed)?
                    {
                        Import::Name(_, name) => String::from_utf8_lossy(name).into_owned(),
                        Import::Ordinal(ordinal) => {
                            return Err(LoadError::ImportByOrdinal { dll, ordinal });
                        }
                    };
                    let Some(address) = resolve(&dll, &function) else {
                        return Err(LoadError::MissingImport { dll, function });
                    };
                    write(slot, &(address as u64).to_le_bytes())?;
                    slot += 8;
                    imports.push((dll.clone(), function));
                }
            }
        }

        // Control Flow Guard: the host's routines into the image's slots,
        // while the mapping is still writable (cfg.rs).
        let guard = {
            // SAFETY: the whole mapping, read-write until the protections
            // below; nothing else refers to it now.
            let image = unsafe { std::slice::from_raw_parts_mut(base, pages.len()) };
            let load_config = dirs
                .get(pe::IMAGE_DIRECTORY_ENTRY_LOAD_CONFIG)
                .map(|d| (d.virtual_address.get(LE), d.size.get(LE)));
            crate::cfg::install(
                image,
                preferred_base,
                opt.dll_characteristics(),
                load_config,
                &infos,
            )?
        };

        let exports = read_exports(&pages, &file)?;
        let iat = dirs
            .get(pe::IMAGE_DIRECTORY_ENTRY_IAT)
            .map_or((0, 0), |d| (d.virtual_address.get(LE), d.size.get(LE)));

        // Protections: headers read-only, each section as declared.
        pages.protect(0, headers.next_multiple_of(page_size()), libc::PROT_READ)?;
        for s in &infos {
            pages.protect(s.rva as usize, s.size as usize, s.prot)?;
        }
        // The IAT must end up read-only: lld puts it in `.rdata`.
        if iat.1 != 0 {
            let holder = infos
                .iter()
                .find(|s| iat.0 >= s.rva && iat.0 + iat.1 <= s.rva + s.size);
            if holder.is_none_or(|s| s.prot & libc::PROT_WRITE != 0) {
                return Err(LoadError::Unsupported(
                    "the IAT is not inside a read-only section".into(),
                ));
            }
        }
        Ok(MappedImage {
            pages,
            preferred_base,
            relocations,
            imports,
            exports,
            sections: infos,
            iat,
            guard,
        })
    }

    /// The mapped base.
    pub fn base(&self) -> usize {
        self.pages.base() as usize
    }

    /// The mapped size.
    pub fn size(&self) -> usize {
        self.pages.len()
    }

    /// `ImageBase` from the optional header (never where the image is mapped).
    pub fn preferred_base(&self) -> u64 {
        self.preferred_base
    }

    /// How many DIR64 relocations were applied.
    pub fn relocations(&self) -> usize {
        self.relocations
    }

    /// Every import, as `(dll, function)`.
    pub fn imports(&self) -> &[(String, String)] {
        &self.imports
    }

    /// The sections as mapped.
    pub fn sections(&self) -> &[SectionInfo] {
        &self.sections
    }

    /// What Control Flow Guard says of the image (its guard function table).
    pub fn guard(&self) -> crate::cfg::Guard {
        self.guard
    }

    /// The IAT's `(rva, size)`.
    pub fn iat(&self) -> (u32, u32) {
        self.iat
    }

    /// The address of the export `name`.
    pub fn export(&self, name: &str) -> Result<usize, LoadError> {
        self.exports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, rva)| self.base() + *rva as usize)
            .ok_or_else(|| LoadError::MissingExport(name.into()))
    }

    /// Every export, as `(name, rva)`.
    pub fn exports(&self) -> &[(String, u32)] {
        &self.exports
    }

    /// Whether `addr` lies inside an executable section.
    pub fn is_code(&self, addr: usize) -> bool {
        addr.checked_sub(self.base()).is_some_and(|rva| {
            self.sections.iter().any(|s| {
                s.prot & libc::PROT_EXEC != 0
                    && rva >= s.rva as usize
                    && rva < (s.rva + s.size) as usize
            })
        })
    }
}

/// The export directory, read by hand from the mapped image: lld places it at
/// an address that is not 4-aligned, which `object` rejects. Only named
/// exports with an RVA inside the image (no forwarders) are returned.
fn read_exports(pages: &Pages, file: &PeFile64<'_>) -> Result<Vec<(String, u32)>, LoadError> {
    let Some(dir) = file.data_directory(pe::IMAGE_DIRECTORY_ENTRY_EXPORT) else {
        return Ok(Vec::new());
    };
    let (start, size) = (
        dir.virtual_address.get(LE) as usize,
        dir.size.get(LE) as usize,
    );
    // SAFETY: the whole mapping is readable and initialised now (still RW);
    // every read below is bounds-checked against it.
    let image = unsafe { std::slice::from_raw_parts(pages.base(), pages.len()) };
    let u32_at = |rva: usize| -> Result<u32, LoadError> {
        image
            .get(rva..rva + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| malformed(format!("export data at {rva:#x} outside the image")))
    };
    let u16_at = |rva: usize| -> Result<u16, LoadError> {
        image
            .get(rva..rva + 2)
            .map(|b| u16::from_le_bytes(b.try_into().expect("2 bytes")))
            .ok_or_else(|| malformed(format!("export data at {rva:#x} outside the image")))
    };
    let cstr = |rva: usize| -> Result<String, LoadError> {
        let tail = image
            .get(rva..)
            .ok_or_else(|| malformed("export name outside the image"))?;
        let end = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed("unterminated export name"))?;
        Ok(String::from_utf8_lossy(&tail[..end]).into_owned())
    };
    // IMAGE_EXPORT_DIRECTORY: NumberOfFunctions @20, NumberOfNames @24,
    // AddressOfFunctions @28, AddressOfNames @32, AddressOfNameOrdinals @36.
    let functions = u32_at(start + 20)? as usize;
    let names = u32_at(start + 24)? as usize;
    let (funcs_at, names_at, ords_at) = (
        u32_at(start + 28)? as usize,
        u32_at(start + 32)? as usize,
        u32_at(start + 36)? as usize,
    );
    let mut out = Vec::new();
    for i in 0..names {
        let name = cstr(u32_at(names_at + 4 * i)? as usize)?;
        let ordinal = u16_at(ords_at + 2 * i)? as usize;
        if ordinal >= functions {
            return Err(malformed(format!(
                "export {name}: ordinal {ordinal} out of range"
            )));
        }
        let rva = u32_at(funcs_at + 4 * ordinal)?;
        if (rva as usize) >= start && (rva as usize) < start + size {
            continue; // a forwarder string, not code
        }
        out.push((name, rva));
    }
    Ok(out)
}
