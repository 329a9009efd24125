//! `make-cat`: the driver catalog of a package, made on any host.
//!
//! ``text
//! make-cat <package.inf>...     write each INF's CatalogFile next to it (unsigned)
//! make-cat --list <file.cat>    print a catalog's members and attributes
//! ``
//!
//! The catalog's date is `SOURCE_DATE_EPOCH` when set and not empty
//! (reproducible builds), else now.

use nmr_make_cat::{catalog, make_catalog};
use std::path::Path;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: make-cat <package.inf>...  |  make-cat --list <file.cat>";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn this_update() -> Result<u64, String> {
    // Empty counts as unset, as in `cargo xtask package`.
    match std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("SOURCE_DATE_EPOCH '{v}' is not a number of seconds")),
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .map_err(|e| format!("the clock is before 1970: {e}")),
    }
}

fn write_catalogs(infs: &[String]) -> Result<(), String> {
    let time = this_update()?;
    for inf in infs {
        let (cat_path, members, der) =
            make_catalog(Path::new(inf), time).map_err(|e| e.to_string())?;
        std::fs::write(&cat_path, &der).map_err(|e| format!("{}: {e}", cat_path.display()))?;
        println!(
            "make-cat: {} ({} bytes, unsigned)",
            cat_path.display(),
            der.len()
        );
        for m in &members {
            println!("make-cat:   {:?} {} {}", m.kind, hex(&m.hash), m.file_name);
        }
    }
    Ok(())
}

fn list(path: &str) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let cat = catalog::decode(&bytes).map_err(|e| format!("{path}: {e}"))?;
    println!(
        "{path}: {} member(s), {} signer(s)",
        cat.members.len(),
        cat.signer_count
    );
    for (name, value) in &cat.attributes {
        println!("  catalog attribute {name} = {value}");
    }
    for m in &cat.members {
        let digest = m
            .indirect
            .as_ref()
            .map(|d| {
                format!(
                    "{} {}",
                    d.data.kind,
                    hex(d.message_digest.digest.as_bytes())
                )
            })
            .unwrap_or_else(|| "no indirect data".into());
        println!(
            "  {} file={} osattr={} memberinfo2=[{}] {}",
            hex(&m.tag),
            m.value("File").unwrap_or("?"),
            m.value("OSAttr").unwrap_or("?"),
            m.member_info2.map_or("?".into(), |n| n.to_string()),
            digest
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [] => Err(USAGE.to_owned()),
        [flag] if flag == "-h" || flag == "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        [flag, path] if flag == "--list" => list(path),
        infs if infs.iter().any(|a| a.starts_with('-')) => Err(USAGE.to_owned()),
        infs => write_catalogs(infs),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("make-cat: {e}");
            ExitCode::FAILURE
        }
    }
}
