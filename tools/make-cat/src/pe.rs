//! The Authenticode hash of a PE image: what a catalog lists a `.sys` by.
//!
//! "Windows Authenticode Portable Executable Signature Format", section
//! "Calculating the PE Image Hash": the whole file is hashed except three
//! things a signature changes, so the hash is the same before and after the
//! image is signed:
//!
//! - the 4-byte `CheckSum` field of the optional header,
//! - the 8-byte certificate-table entry (data directory 4, `IMAGE_DIRECTORY_ENTRY_SECURITY`),
//! - the certificate table itself (the `WIN_CERTIFICATE`s at the end of the file).
//!
//! The document hashes the sections sorted by file offset and then the data
//! after them. For a file whose sections and trailing data are contiguous, as a
//! linker writes them, that is the same byte stream as "everything from the end
//! of the certificate-table entry to the start of the certificate table", which
//! is what this module hashes (as does osslsigncode, and as the unit tests check
//! against an independent, section-by-section computation).
//!
//! One more rule, from signing: a signer pads the image with zeros to a multiple
//! of 8 bytes before appending the certificate table, and the padding is then
//! hashed. So an unsigned image whose length is not a multiple of 8 is hashed
//! with that zero padding (as osslsigncode does), which keeps its hash equal to
//! the hash of the same image after signing.

use sha2::{Digest, Sha256};
use std::fmt;

/// Why a file cannot be hashed as a PE image. Each names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeError {
    /// The file is shorter than the structure read at `offset`.
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it starts in the file.
        offset: usize,
    },
    /// No `MZ` at the start.
    NoDosSignature,
    /// No `PE\0\0` at `e_lfanew`.
    NoPeSignature {
        /// The value of `e_lfanew`.
        e_lfanew: usize,
    },
    /// The optional header's magic is neither PE32 (0x10b) nor PE32+ (0x20b).
    UnknownOptionalHeaderMagic(u16),
    /// `NumberOfRvaAndSizes` is too small to hold the certificate-table entry.
    NoSecurityDirectory {
        /// `NumberOfRvaAndSizes`.
        number_of_rva_and_sizes: u32,
    },
    /// The certificate table does not lie within the file, after the headers.
    BadCertificateTable {
        /// Its file offset (data directory 4, `VirtualAddress`).
        offset: u32,
        /// Its size.
        size: u32,
        /// The file's length.
        file_len: usize,
    },
    /// Bytes follow the certificate table; a signature must be the last thing in the file.
    DataAfterCertificateTable {
        /// Where the certificate table ends.
        table_end: usize,
        /// The file's length.
        file_len: usize,
    },
}

impl fmt::Display for PeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { what, offset } => {
                write!(
                    f,
                    "truncated PE file: {what} at offset {offset:#x} runs past the end"
                )
            }
            Self::NoDosSignature => write!(f, "not a PE image: no 'MZ' DOS signature"),
            Self::NoPeSignature { e_lfanew } => {
                write!(
                    f,
                    "not a PE image: no 'PE\\0\\0' signature at e_lfanew {e_lfanew:#x}"
                )
            }
            Self::UnknownOptionalHeaderMagic(m) => {
                write!(
                    f,
                    "unknown optional header magic {m:#x} (expected 0x10b or 0x20b)"
                )
            }
            Self::NoSecurityDirectory {
                number_of_rva_and_sizes,
            } => write!(
                f,
                "NumberOfRvaAndSizes is {number_of_rva_and_sizes}: no certificate-table entry (needs 5 or more)"
            ),
            Self::BadCertificateTable {
                offset,
                size,
                file_len,
            } => write!(
                f,
                "certificate table at {offset:#x}, {size} bytes, is not inside the file ({file_len} bytes) after the headers"
            ),
            Self::DataAfterCertificateTable {
                table_end,
                file_len,
            } => write!(
                f,
                "{} bytes follow the certificate table (ends at {table_end:#x}); Authenticode requires it last",
                file_len - table_end
            ),
        }
    }
}

impl std::error::Error for PeError {}

/// The offsets the hash skips, read from the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeLayout {
    /// File offset of the optional header's `CheckSum` (4 bytes).
    pub checksum_offset: usize,
    /// File offset of data directory 4, the certificate-table entry (8 bytes).
    pub security_entry_offset: usize,
    /// The certificate table's file offset and size; `None` when the image is unsigned.
    pub certificate_table: Option<(usize, usize)>,
}

fn read_u16(data: &[u8], offset: usize, what: &'static str) -> Result<u16, PeError> {
    data.get(offset..offset + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(PeError::Truncated { what, offset })
}

fn read_u32(data: &[u8], offset: usize, what: &'static str) -> Result<u32, PeError> {
    data.get(offset..offset + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(PeError::Truncated { what, offset })
}

const IMAGE_DIRECTORY_ENTRY_SECURITY: u32 = 4;
const PE32_MAGIC: u16 = 0x10b;
const PE32_PLUS_MAGIC: u16 = 0x20b;

impl PeLayout {
    /// Reads the layout from the DOS, COFF and optional headers.
    pub fn parse(data: &[u8]) -> Result<Self, PeError> {
        if data.get(..2) != Some(b"MZ") {
            return Err(PeError::NoDosSignature);
        }
        let e_lfanew = read_u32(data, 0x3c, "e_lfanew")? as usize;
        match data.get(e_lfanew..e_lfanew + 4) {
            Some(b"PE\0\0") => {}
            Some(_) => return Err(PeError::NoPeSignature { e_lfanew }),
            None => {
                return Err(PeError::Truncated {
                    what: "PE signature",
                    offset: e_lfanew,
                });
            }
        }
        let coff = e_lfanew + 4;
        let optional = coff + 20;
        let magic = read_u16(data, optional, "optional header magic")?;
        // Offsets within the optional header (PE format, "Optional Header Windows-Specific Fields").
        let (rva_count_offset, directories_offset) = match magic {
            PE32_MAGIC => (optional + 92, optional + 96),
            PE32_PLUS_MAGIC => (optional + 108, optional + 112),
            other => return Err(PeError::UnknownOptionalHeaderMagic(other)),
        };
        let checksum_offset = optional + 64;
        let size_of_headers = read_u32(data, optional + 60, "SizeOfHeaders")? as usize;
        let number_of_rva_and_sizes = read_u32(data, rva_count_offset, "NumberOfRvaAndSizes")?;
        if number_of_rva_and_sizes <= IMAGE_DIRECTORY_ENTRY_SECURITY {
            return Err(PeError::NoSecurityDirectory {
                number_of_rva_and_sizes,
            });
        }
        let security_entry_offset =
            directories_offset + 8 * IMAGE_DIRECTORY_ENTRY_SECURITY as usize;
        // For this one directory, VirtualAddress is a file offset, not an RVA.
        let table_offset = read_u32(data, security_entry_offset, "certificate table entry")?;
        let table_size = read_u32(data, security_entry_offset + 4, "certificate table entry")?;
        let certificate_table = if table_offset == 0 && table_size == 0 {
            None
        } else {
            let start = table_offset as usize;
            let end = start.checked_add(table_size as usize);
            match end {
                Some(end)
                    if start >= size_of_headers.max(security_entry_offset + 8)
                        && end <= data.len() =>
                {
                    if end != data.len() {
                        return Err(PeError::DataAfterCertificateTable {
                            table_end: end,
                            file_len: data.len(),
                        });
                    }
                    Some((start, table_size as usize))
                }
                _ => {
                    return Err(PeError::BadCertificateTable {
                        offset: table_offset,
                        size: table_size,
                        file_len: data.len(),
                    });
                }
            }
        };
        Ok(Self {
            checksum_offset,
            security_entry_offset,
            certificate_table,
        })
    }
}

/// The SHA-256 Authenticode hash of a PE image (see the module documentation).
pub fn authenticode_sha256(data: &[u8]) -> Result<[u8; 32], PeError> {
    let layout = PeLayout::parse(data)?;
    let mut hasher = Sha256::new();
    hasher.update(&data[..layout.checksum_offset]);
    hasher.update(&data[layout.checksum_offset + 4..layout.security_entry_offset]);
    let end = match layout.certificate_table {
        Some((start, _)) => start,
        None => data.len(),
    };
    hasher.update(&data[layout.security_entry_offset + 8..end]);
    if layout.certificate_table.is_none() && !data.len().is_multiple_of(8) {
        // The zeros a signer appends before the certificate table.
        hasher.update(&[0u8; 8][..8 - data.len() % 8]);
    }
    Ok(hasher.finalize().into())
}

/// The SHA-256 of the whole file: how a catalog lists a file that is not a PE image.
pub fn flat_sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}
