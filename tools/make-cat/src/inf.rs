//! The little of an INF file a catalog needs: the catalog's name
//! (`[Version] CatalogFile`) and the files of the package (`[SourceDisksFiles]`),
//! read the way inf2cat reads them for an x64 package.

use std::fmt;

/// The catalog name and member files an INF declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfPackage {
    /// `CatalogFile.NTamd64`, else `CatalogFile`, from `[Version]`.
    pub catalog_file: String,
    /// Every file named in `[SourceDisksFiles]` and `[SourceDisksFiles.amd64]`, in order, once each.
    pub source_files: Vec<String>,
}

/// Why an INF cannot be packaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfError {
    /// `[Version]` has no `CatalogFile` (nor `CatalogFile.NTamd64`) entry.
    NoCatalogFile,
    /// No file is named in `[SourceDisksFiles]` or `[SourceDisksFiles.amd64]`.
    NoSourceFiles,
    /// A file name the INF gives is not a plain file name (a path, or empty).
    BadFileName(String),
}

impl fmt::Display for InfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCatalogFile => {
                write!(f, "the INF's [Version] section has no CatalogFile entry")
            }
            Self::NoSourceFiles => write!(
                f,
                "the INF names no file in [SourceDisksFiles] or [SourceDisksFiles.amd64]"
            ),
            Self::BadFileName(name) => {
                write!(
                    f,
                    "'{name}' is not a plain file name (the package is one flat directory)"
                )
            }
        }
    }
}

impl std::error::Error for InfError {}

/// Drops a `;` comment that is not inside double quotes, and surrounding blanks.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => return line[..i].trim(),
            _ => {}
        }
    }
    line.trim()
}

fn plain_file_name(name: &str) -> Result<String, InfError> {
    let name = name.trim().trim_matches('"');
    if name.is_empty() || name.contains(['/', '\\', ':']) || name == "." || name == ".." {
        return Err(InfError::BadFileName(name.to_owned()));
    }
    Ok(name.to_owned())
}

impl InfPackage {
    /// Parses INF text (sections and keys are case-insensitive, as in Windows).
    pub fn parse(text: &str) -> Result<Self, InfError> {
        let mut section = String::new();
        let mut catalog_plain = None;
        let mut catalog_amd64 = None;
        let mut source_files: Vec<String> = Vec::new();
        for raw in text.lines() {
            let line = strip_comment(raw.trim_start_matches('\u{feff}'));
            if line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().to_ascii_lowercase();
                continue;
            }
            let (key, value) = match line.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => (line, ""),
            };
            match section.as_str() {
                "version" => match key.to_ascii_lowercase().as_str() {
                    "catalogfile" => catalog_plain = Some(plain_file_name(value)?),
                    "catalogfile.ntamd64" => catalog_amd64 = Some(plain_file_name(value)?),
                    _ => {}
                },
                "sourcedisksfiles" | "sourcedisksfiles.amd64" => {
                    let name = plain_file_name(key)?;
                    if !source_files.iter().any(|f| f.eq_ignore_ascii_case(&name)) {
                        source_files.push(name);
                    }
                }
                _ => {}
            }
        }
        let catalog_file = catalog_amd64
            .or(catalog_plain)
            .ok_or(InfError::NoCatalogFile)?;
        if source_files.is_empty() {
            return Err(InfError::NoSourceFiles);
        }
        Ok(Self {
            catalog_file,
            source_files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_catalog_name_and_source_files_case_insensitively() {
        let inf = "\u{feff}[Version]\nSignature = \"$WINDOWS NT$\"\ncatalogfile = a.cat ; comment\n\
                   [SourceDisksFiles]\na.sys = 1,,\n[sourcedisksfiles.amd64]\nB.DLL=1\nA.SYS=1\n\
                   [Strings]\nX = \"a;b\"\n";
        let p = InfPackage::parse(inf).unwrap();
        assert_eq!(p.catalog_file, "a.cat");
        assert_eq!(p.source_files, ["a.sys", "B.DLL"]);
    }

    #[test]
    fn the_amd64_catalog_name_wins() {
        let inf = "[Version]\nCatalogFile.NTamd64 = x64.cat\nCatalogFile = any.cat\n[SourceDisksFiles]\na.sys=1\n";
        assert_eq!(InfPackage::parse(inf).unwrap().catalog_file, "x64.cat");
    }

    #[test]
    fn missing_pieces_are_named_errors() {
        assert_eq!(
            InfPackage::parse("[Version]\n[SourceDisksFiles]\na.sys=1\n"),
            Err(InfError::NoCatalogFile)
        );
        assert_eq!(
            InfPackage::parse("[Version]\nCatalogFile=a.cat\n"),
            Err(InfError::NoSourceFiles)
        );
        assert_eq!(
            InfPackage::parse("[Version]\nCatalogFile=a.cat\n[SourceDisksFiles]\n..\\x.sys=1\n"),
            Err(InfError::BadFileName("..\\x.sys".into()))
        );
    }

    #[test]
    fn our_own_inx_files_parse() {
        for (inx, cat, sys) in [
            (
                include_str!("../../../inf/nmr_client.inx"),
                "nmr_client.cat",
                "nmr_client.sys",
            ),
            (
                include_str!("../../../inf/nmr_provider.inx"),
                "nmr_provider.cat",
                "nmr_provider.sys",
            ),
        ] {
            let p = InfPackage::parse(inx).unwrap();
            assert_eq!(p.catalog_file, cat);
            assert_eq!(p.source_files, [sys]);
        }
    }
}
