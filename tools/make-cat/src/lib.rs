//! `nmr-make-cat`: writes the catalog (`.cat`) of a driver package on any host,
//! as inf2cat does on Windows, so that a package built on Linux can be signed
//! and installed with `pnputil /add-driver`.
//!
//! Given the package's INF, it lists the INF and every file the INF names in
//! `[SourceDisksFiles]` (each expected next to the INF): PE images by their
//! Authenticode SHA-256, other files by the SHA-256 of their bytes. It writes the
//! catalog unsigned; `cargo xtask sign` signs it.

pub mod catalog;
pub mod inf;
pub mod pe;

use catalog::{Member, MemberKind};
use std::fmt;
use std::path::{Path, PathBuf};

/// Why a package's catalog could not be made.
#[derive(Debug)]
pub enum MakeCatError {
    /// A file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// The INF is not usable.
    Inf {
        /// The INF.
        path: PathBuf,
        /// What is wrong.
        error: inf::InfError,
    },
    /// A member the INF names as an image is not a valid PE file.
    Pe {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        error: pe::PeError,
    },
    /// Encoding the catalog failed.
    Catalog(catalog::CatalogError),
}

impl fmt::Display for MakeCatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Inf { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Pe { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Catalog(e) => write!(f, "catalog: {e}"),
        }
    }
}

impl std::error::Error for MakeCatError {}

/// Extensions of files hashed as PE images (the PE SIP); all others are flat.
const PE_EXTENSIONS: [&str; 3] = ["sys", "dll", "exe"];

fn read(path: &Path) -> Result<Vec<u8>, MakeCatError> {
    std::fs::read(path).map_err(|error| MakeCatError::Io {
        path: path.to_owned(),
        error,
    })
}

/// Hashes one package file the way its catalog entry needs.
pub fn member_for(path: &Path) -> Result<Member, MakeCatError> {
    let data = read(path)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let is_pe = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PE_EXTENSIONS.iter().any(|p| p.eq_ignore_ascii_case(e)));
    let (kind, hash) = if is_pe {
        let hash = pe::authenticode_sha256(&data).map_err(|error| MakeCatError::Pe {
            path: path.to_owned(),
            error,
        })?;
        (MemberKind::PeImage, hash)
    } else {
        (MemberKind::Flat, pe::flat_sha256(&data))
    };
    Ok(Member {
        file_name,
        kind,
        hash,
    })
}

/// The catalog of the package whose INF is `inf_path`: where it goes (the INF's
/// `CatalogFile`, next to the INF), its members, and its DER bytes.
pub fn make_catalog(
    inf_path: &Path,
    this_update: u64,
) -> Result<(PathBuf, Vec<Member>, Vec<u8>), MakeCatError> {
    let text = read(inf_path)?;
    let text = String::from_utf8_lossy(&text);
    let package = inf::InfPackage::parse(&text).map_err(|error| MakeCatError::Inf {
        path: inf_path.to_owned(),
        error,
    })?;
    let dir = inf_path.parent().unwrap_or(Path::new("."));
    let mut members = vec![member_for(inf_path)?];
    for name in &package.source_files {
        members.push(member_for(&dir.join(name))?);
    }
    let der = catalog::build(&members, this_update).map_err(MakeCatError::Catalog)?;
    Ok((dir.join(&package.catalog_file), members, der))
}
