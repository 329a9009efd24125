//! `cargo xtask package`: both driver packages built on any host without the
//! WDK, into `target/sys/`:
//!
//! ```text
//! nmr_client.sys   nmr_client.pdb   nmr_client.map   nmr_client.inf   nmr_client.cat
//! nmr_provider.sys nmr_provider.pdb nmr_provider.map nmr_provider.inf nmr_provider.cat
//! nmr_test.cer     (after signing)
//! ```
//!
//! The same driver shells as `cargo make` builds with wdk-build, on the
//! hand-declared kernel surface (feature `raw-kernel`: raw-dylib imports from
//! ntoskrnl.exe and NETIO.SYS), compiled for x86_64-pc-windows-msvc and linked
//! by the toolchain's own rust-lld in lld-link mode with the linker flags
//! wdk-build passes for a WDM driver (all of them in [`LINK_ARGS`]). The INF
//! is stamped as stampinf does, the catalog written as inf2cat does (by
//! tools/make-cat, as a library), the images checked, then both test-signed.
//!
//! Everything is written into `target/sys.partial/` and renamed to
//! `target/sys/` only when complete: a failed run leaves the previous package
//! as it was and no half-written one.

use crate::tools::{self, copy, read_text, write};
use crate::{Error, Result, image_checks, sign};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the package goes (relative to the workspace root). The image stress
/// and the fault pass (`testbed stress --images target/sys`) read it there.
pub const OUT_DIR: &str = "target/sys";
/// Its own cargo target directory: the host build's cache is left alone.
const BUILD_DIR: &str = "target/sys-build";
/// The target triple of the images.
pub const TARGET: &str = "x86_64-pc-windows-msvc";
/// Image names; their packages are the same with `-` (nmr-client, nmr-provider).
pub const DRIVERS: [&str; 2] = ["nmr_client", "nmr_provider"];

/// The linker flags, in one place. First those wdk-build 0.6.0 emits for
/// `DriverConfig::Wdm` (crates/wdk-build/src/lib.rs,
/// `Config::configure_binary_build`), in its order: the WDM ones, then those
/// common to all driver models. Then ours: `/RELEASE` writes the PE checksum
/// (the WDK's SetChecksum=true does the same), `/DEBUG` the .pdb.
pub const LINK_ARGS: &[&str] = &[
    // wdk-build, WDM
    "/DRIVER",
    "/NODEFAULTLIB",
    "/SUBSYSTEM:NATIVE",
    "/KERNEL",
    "/ENTRY:DriverEntry",
    "/IGNORE:4257",
    "/IGNORE:4216",
    // wdk-build, every driver model
    "/NXCOMPAT",
    "/DYNAMICBASE",
    "/MAP",
    "/MAPINFO:EXPORTS",
    "/OPT:REF,ICF",
    "/INTEGRITYCHECK",
    "/MANIFEST:NO",
    // ours
    "/RELEASE",
    "/DEBUG",
];

/// Hardening (Control Flow Guard and CET), the flags in one place (the
/// `cargo make` build gets the same: the compiler flag from Makefile.toml's
/// build task, the link flags from the drivers' build.rs):
/// - every crate of the image, `core` included, compiled with
///   `-C control-flow-guard=checks`: each indirect call goes through
///   `__guard_dispatch_icall_fptr`, the address-taken functions are listed.
///   Given as the target's rustflags (`--config`), so that it reaches every
///   crate, not only the driver's (`cargo rustc`'s own arguments do); the
///   precompiled `core` comes in as bitcode and is compiled again under the
///   release profile's LTO, with the flag;
/// - `/guard:cf`: the linker writes the guard function table and the
///   `__guard_*` symbols the shell's `_load_config_used` points at
///   (shell/src/cfg_support.rs), and sets GUARD_CF;
/// - `/cetcompat`: the IMAGE_DLLCHARACTERISTICS_EX_CET_COMPAT debug entry.
///
/// The image checks fail an image without any of them.
pub const HARDENING_RUSTFLAGS: &[&str] = &["-C", "control-flow-guard=checks"];
/// The link half of the hardening (see [`HARDENING_RUSTFLAGS`]).
pub const HARDENING_LINK_ARGS: &[&str] = &["/guard:cf", "/cetcompat"];

/// What `package` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// The shipped package, hardened, into `target/sys/`; signed unless `unsigned`.
    Shipped {
        /// Test-sign the package.
        sign: bool,
    },
    /// Without the hardening flags (no CFG, not CET-compatible), into
    /// `target/sys-nocfg/`, never signed: the baseline of the CFG benchmark
    /// and the images the checks must fail.
    NoCfg,
}

/// Where the no-CFG baseline goes.
pub const NOCFG_DIR: &str = "target/sys-nocfg";

/// rustc flags besides the link arguments: rust-lld as an MSVC linker, so
/// that no Visual Studio is needed.
pub const RUSTC_FLAGS: &[&str] = &["-C", "linker=rust-lld", "-C", "linker-flavor=lld-link"];

/// The package's `.sys` files in `dir`, in [`DRIVERS`] order; an error naming
/// what to run when one is missing.
pub fn package_images(dir: &Path) -> Result<Vec<PathBuf>> {
    DRIVERS
        .iter()
        .map(|d| dir.join(format!("{d}.sys")))
        .map(|p| {
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::with_fix(
                    format!("{}: no such image", p.display()),
                    "run `cargo xtask package` first",
                ))
            }
        })
        .collect()
}

fn ensure_target() -> Result<()> {
    let targets =
        tools::stdout(std::process::Command::new("rustc").args(["--print", "target-list"]))
            .map_err(|e| Error::with_fix(e.what, "install Rust with rustup: https://rustup.rs"))?;
    if !targets.lines().any(|l| l == TARGET) {
        return Err(Error::with_fix(
            format!("this rustc does not know {TARGET}"),
            "install a current stable Rust with rustup: https://rustup.rs",
        ));
    }
    let installed =
        tools::output(std::process::Command::new("rustup").args(["target", "list", "--installed"]));
    match installed {
        Ok(out)
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == TARGET) =>
        {
            Ok(())
        }
        Ok(_) => {
            println!("xtask: installing the {TARGET} standard library (rustup target add)");
            tools::run(std::process::Command::new("rustup").args(["target", "add", TARGET]))
                .map_err(|e| Error::with_fix(e.what, format!("run `rustup target add {TARGET}`")))
        }
        Err(e) => Err(Error::with_fix(
            e.what,
            format!("install rustup (https://rustup.rs), then `rustup target add {TARGET}`"),
        )),
    }
}

/// Builds one driver image with its .pdb and .map into `out`.
fn build_driver(root: &Path, driver: &str, out: &Path, hardened: bool) -> Result<()> {
    let package = driver.replace('_', "-");
    let (build_dir, out_name) = if hardened {
        (BUILD_DIR.to_owned(), OUT_DIR)
    } else {
        (format!("{BUILD_DIR}-nocfg"), NOCFG_DIR)
    };
    println!("xtask: {package} -> {out_name}/{driver}.sys");
    let mut cmd = tools::cargo();
    cmd.current_dir(root);
    if hardened {
        let flags: Vec<String> = HARDENING_RUSTFLAGS
            .iter()
            .map(|f| format!("{f:?}"))
            .collect();
        cmd.arg("--config").arg(format!(
            "target.{TARGET}.rustflags = [{}]",
            flags.join(", ")
        ));
    }
    cmd
        // Debug info for every crate (LTO merges them): the .pdb gets all lines.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "full")
        .args([
            "rustc",
            "--quiet",
            "-p",
            &package,
            "--lib",
            "--crate-type",
            "cdylib",
        ])
        .args(["--release", "--target", TARGET, "--target-dir", &build_dir])
        .args(["--no-default-features", "--features", "raw-kernel", "--"])
        .args(RUSTC_FLAGS);
    let hardening: &[&str] = if hardened { HARDENING_LINK_ARGS } else { &[] };
    for arg in LINK_ARGS.iter().chain(hardening) {
        cmd.arg("-C").arg(format!("link-arg={arg}"));
    }
    tools::run(&mut cmd)?;
    let dir = root.join(build_dir).join(TARGET).join("release");
    copy(
        &dir.join(format!("{driver}.dll")),
        &out.join(format!("{driver}.sys")),
    )?;
    copy(
        &dir.join(format!("{driver}.pdb")),
        &out.join(format!("{driver}.pdb")),
    )?;
    copy(
        &dir.join("deps").join(format!("{driver}.map")),
        &out.join(format!("{driver}.map")),
    )
}

/// `SOURCE_DATE_EPOCH` when set and not empty, else now.
pub fn source_date() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        Some(v) => v.trim().parse().map_err(|_| {
            Error::with_fix(
                format!("SOURCE_DATE_EPOCH '{v}' is not a number of seconds"),
                "unset it, or set it to seconds since 1970 (e.g. `git log -1 --format=%ct`)",
            )
        }),
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .map_err(|e| Error::new(format!("the clock is before 1970: {e}"))),
    }
}

/// `MM/DD/YYYY` (UTC) of a Unix time: the civil date of its day number
/// (Howard Hinnant's days-to-civil algorithm).
pub fn inf_date(unix: u64) -> String {
    let z = (unix / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{month:02}/{day:02}/{year}")
}

/// The workspace version `A.B.C` (of nmr-client, as `cargo pkgid` says).
fn workspace_version(root: &Path) -> Result<String> {
    let mut cmd = tools::cargo();
    cmd.current_dir(root)
        .args(["pkgid", "--quiet", "-p", "nmr-client"]);
    let id = tools::stdout(&mut cmd)?;
    let id = id.trim();
    let version = id.rsplit(['#', '@']).next().unwrap_or("");
    let ok = version.split('.').count() == 3
        && version
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(version.to_owned())
    } else {
        Err(Error::new(format!(
            "cannot read the workspace version from '{id}'"
        )))
    }
}

/// `SYS_BUILD_NUMBER`, else the commit count of HEAD, else 0; 0..=65535.
fn build_number(root: &Path) -> Result<u32> {
    let text = match std::env::var("SYS_BUILD_NUMBER") {
        Ok(v) => v,
        Err(_) => std::process::Command::new("git")
            .current_dir(root)
            .args(["rev-list", "--count", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "0".to_owned()),
    };
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| *n <= 65_535)
        .ok_or_else(|| {
            Error::with_fix(
                format!("build number '{text}' is not in 0..65535"),
                "set SYS_BUILD_NUMBER to a number from 0 to 65535",
            )
        })
}

/// What stampinf does to the INX: the whole `DriverVer = ...` line (its
/// placeholder comment included) becomes `DriverVer   = <driver_ver>`, and
/// `$ARCH$` becomes `amd64`. `None` when the INX has no DriverVer line.
pub fn stamp_inf(inx: &str, driver_ver: &str) -> Option<String> {
    let mut found = false;
    let mut out = String::with_capacity(inx.len() + 32);
    for line in inx.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let trimmed = body.trim_start();
        let is_driver_ver = trimmed
            .strip_prefix("DriverVer")
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if is_driver_ver {
            found = true;
            let indent = &body[..body.len() - trimmed.len()];
            out.push_str(&format!("{indent}DriverVer   = {driver_ver}{end}"));
        } else {
            out.push_str(&body.replace("$ARCH$", "amd64"));
            out.push_str(end);
        }
    }
    found.then_some(out)
}

fn stamp_infs(root: &Path, out: &Path, date: u64) -> Result<Vec<PathBuf>> {
    let driver_ver = format!(
        "{},{}.{}",
        inf_date(date),
        workspace_version(root)?,
        build_number(root)?
    );
    let mut infs = Vec::new();
    for driver in DRIVERS {
        let inx_path = root.join("inf").join(format!("{driver}.inx"));
        if !inx_path.is_file() {
            return Err(Error::new(format!("missing {}", inx_path.display())));
        }
        let inx = read_text(&inx_path)?;
        let inf = stamp_inf(&inx, &driver_ver).ok_or_else(|| {
            Error::new(format!(
                "{} has no DriverVer line to stamp",
                inx_path.display()
            ))
        })?;
        let inf_path = out.join(format!("{driver}.inf"));
        write(&inf_path, inf)?;
        println!("xtask: {OUT_DIR}/{driver}.inf  DriverVer = {driver_ver}");
        infs.push(inf_path);
    }
    Ok(infs)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// What inf2cat /os:10_X64 does: each INF's CatalogFile, listing the INF and
/// the files of its `[SourceDisksFiles]`.
fn write_catalogs(out: &Path, infs: &[PathBuf], date: u64) -> Result<()> {
    for inf in infs {
        let (cat_path, members, der) =
            nmr_make_cat::make_catalog(inf, date).map_err(|e| Error::new(e.to_string()))?;
        if cat_path.parent() != Some(out) {
            return Err(Error::new(format!(
                "{}: CatalogFile {} is not beside the INF",
                inf.display(),
                cat_path.display()
            )));
        }
        write(&cat_path, &der)?;
        println!(
            "xtask: {OUT_DIR}/{} ({} bytes, unsigned)",
            tools::name(&cat_path),
            der.len()
        );
        for m in &members {
            println!("xtask:   {:?} {} {}", m.kind, hex(&m.hash), m.file_name);
        }
    }
    for driver in DRIVERS {
        if !out.join(format!("{driver}.cat")).is_file() {
            return Err(Error::new(format!(
                "no {driver}.cat was written (does the INF say CatalogFile = {driver}.cat?)"
            )));
        }
    }
    Ok(())
}

/// Makes an empty scratch folder `<final>.partial` beside `final_dir`.
pub fn scratch_dir(final_dir: &Path) -> Result<PathBuf> {
    let mut name = final_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    let tmp = final_dir.with_file_name(name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::new(format!("{}: {e}", tmp.display())))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::new(format!("{}: {e}", tmp.display())))?;
    Ok(tmp)
}

/// Replaces `final_dir` with the complete `tmp`: the old one is moved aside
/// first and removed only after the rename.
pub fn publish(tmp: &Path, final_dir: &Path) -> Result<()> {
    let mut old_name = final_dir.file_name().unwrap_or_default().to_os_string();
    old_name.push(".old");
    let old = final_dir.with_file_name(old_name);
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::new(format!("{}: {e}", old.display())))?;
    }
    if final_dir.exists() {
        std::fs::rename(final_dir, &old)
            .map_err(|e| Error::new(format!("move {} aside: {e}", final_dir.display())))?;
    }
    std::fs::rename(tmp, final_dir).map_err(|e| {
        Error::new(format!(
            "rename {} to {}: {e}",
            tmp.display(),
            final_dir.display()
        ))
    })?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::new(format!("{}: {e}", old.display())))?;
    }
    Ok(())
}

/// `cargo xtask package`: returns the package folder.
pub fn package(root: &Path, build: Build) -> Result<PathBuf> {
    ensure_target()?;
    let (sign, hardened, out_name) = match build {
        Build::Shipped { sign } => (sign, true, OUT_DIR),
        Build::NoCfg => (false, false, NOCFG_DIR),
    };
    if sign {
        // Fail before the build, not after it, when no signing tool is there.
        sign::signer()?;
    }
    let final_dir = root.join(out_name);
    let tmp = scratch_dir(&final_dir)?;
    for driver in DRIVERS {
        build_driver(root, driver, &tmp, hardened)?;
    }
    let date = source_date()?;
    let infs = stamp_infs(root, &tmp, date)?;
    write_catalogs(&tmp, &infs, date)?;
    for driver in DRIVERS {
        let sys = tmp.join(format!("{driver}.sys"));
        let len = std::fs::metadata(&sys).map(|m| m.len()).unwrap_or(0);
        println!(
            "xtask: {:<28} {len:>7} bytes",
            format!("{OUT_DIR}/{driver}.sys")
        );
    }
    if hardened {
        println!("xtask: checking the unsigned images");
        image_checks::check_images(&package_images(&tmp)?)?;
    } else {
        println!(
            "xtask: {NOCFG_DIR}: the baseline without CFG and CET, not checked (the checks must fail it), never signed"
        );
    }
    if sign {
        // The key and certificate of the previous build go with it.
        let signing = root.join(sign::SIGNING_DIR);
        if signing.exists() {
            std::fs::remove_dir_all(&signing)
                .map_err(|e| Error::new(format!("{}: {e}", signing.display())))?;
        }
        sign::sign_in_place(root, &tmp)?;
        println!("xtask: checking the signed images");
        image_checks::check_images(&package_images(&tmp)?)?;
    }
    publish(&tmp, &final_dir)?;
    println!(
        "xtask: package complete: {out_name}/ ({})",
        if sign { "test-signed" } else { "unsigned" }
    );
    Ok(final_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inf_dates_are_utc_civil_dates() {
        assert_eq!(inf_date(0), "01/01/1970");
        assert_eq!(inf_date(951_782_400), "02/29/2000"); // a leap day
        assert_eq!(inf_date(1_764_700_000), "12/02/2025");
        assert_eq!(inf_date(4_107_542_399), "02/28/2100"); // 2100 is no leap year
        assert_eq!(inf_date(4_107_542_400), "03/01/2100");
    }

    #[test]
    fn stamping_replaces_the_whole_driver_ver_line_and_arch() {
        let inx = "[Version]\n  DriverVer   =   ; stamped\n[X.NT$ARCH$]\nno newline";
        assert_eq!(
            stamp_inf(inx, "01/02/2026,0.1.0.7").as_deref(),
            Some("[Version]\n  DriverVer   = 01/02/2026,0.1.0.7\n[X.NTamd64]\nno newline")
        );
        assert_eq!(stamp_inf("[Version]\nDriverVersion = 1\n", "x"), None);
    }
}
