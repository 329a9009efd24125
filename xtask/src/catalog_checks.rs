//! `cargo xtask ci-sys`: CI's driver-package step.
//!
//! 1. `package --unsigned`: both packages, with the image checks (object's PE
//!    reader) on the unsigned images;
//! 2. the independent cross-check of those images: tools/check-sys/check_sys.py
//!    (llvm-readobj and pefile, its own allow-lists);
//! 3. `sign`: test signing of images and catalogs, the image checks again;
//!    the cross-check again on the signed images;
//! 4. the catalogs, checked with osslsigncode, openssl and nothing of ours
//!    (not with the code that wrote them): every member verifies against its
//!    catalog; each catalog lists exactly its .inf and .sys; its signature
//!    verifies against the exported nmr_test.cer and no other certificate; a
//!    copy of a signed .sys with one byte changed fails the catalog check, and
//!    an .inf with a byte added is not listed;
//! 5. both checkers reject a copy of an image with FORCE_INTEGRITY cleared.
//!
//! Installs what it needs on a Debian machine when missing (llvm for
//! llvm-readobj, python3-pip for pefile, openssl and osslsigncode), and says
//! SKIPPED loudly for what still cannot be had. Last line:
//! `ci-sys: N passed, N failed, N skipped`.

use crate::package::{DRIVERS, OUT_DIR};
use crate::tools::{self, find, output, text};
use crate::{Error, Result, image_checks, package, sign};
use std::path::{Path, PathBuf};
use std::process::Command;

/// pefile, for check_sys.py, pinned.
const PEFILE: &str = "pefile==2024.8.26";
/// Scratch: copies and certificates, never the package itself.
const WORK: &str = "target/sys-ci";

struct Steps {
    passed: usize,
    failed: usize,
    skipped: usize,
}

impl Steps {
    fn step(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> bool {
        println!("ci-sys: ---- {name}");
        match f() {
            Ok(()) => {
                self.passed += 1;
                println!("ci-sys: PASS {name}");
                true
            }
            Err(e) => {
                self.failed += 1;
                println!("ci-sys: error: {}", e.what);
                if let Some(fix) = e.fix {
                    println!("ci-sys:   {fix}");
                }
                println!("ci-sys: FAIL {name}");
                false
            }
        }
    }

    fn skip(&mut self, n: usize, why: &str) {
        self.skipped += n;
        println!("ci-sys: ************************************************************");
        println!("ci-sys: SKIPPED {why}");
        println!("ci-sys: ************************************************************");
    }
}

/// llvm-readobj: $LLVM_READOBJ, the PATH, Debian's versioned ones, rustup's llvm-tools.
fn find_readobj() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LLVM_READOBJ") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = find("llvm-readobj") {
        return Some(p);
    }
    for version in (10..=30).rev() {
        if let Some(p) = find(&format!("llvm-readobj-{version}")) {
            return Some(p);
        }
    }
    let sysroot = tools::stdout(Command::new("rustc").args(["--print", "sysroot"])).ok()?;
    let lib = Path::new(sysroot.trim()).join("lib/rustlib");
    std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/llvm-readobj"))
        .find(|p| p.is_file())
}

/// llvm-objdump (check_sys.py's CFG instrumentation check): $LLVM_OBJDUMP, or
/// the one beside the llvm-readobj found (same package, same version suffix).
fn objdump_beside(readobj: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("LLVM_OBJDUMP") {
        return PathBuf::from(p);
    }
    let name = tools::name(readobj).replace("readobj", "objdump");
    readobj.with_file_name(name)
}

/// Makes `pefile` importable (pip --target into target/sys-tools/python, no
/// venv, nothing system-wide); returns the PYTHONPATH to use.
fn pefile_path(root: &Path) -> Option<PathBuf> {
    let pylib = root.join("target/sys-tools/python");
    let importable = |path: &Path| {
        Command::new("python3")
            .env("PYTHONPATH", path)
            .args(["-c", "import pefile"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if importable(&pylib) {
        return Some(pylib);
    }
    println!("ci-sys: installing {PEFILE} into target/sys-tools/python");
    let ok = Command::new("python3")
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-warn-script-location", "--target"])
        .arg(&pylib)
        .arg(PEFILE)
        .status()
        .is_ok_and(|s| s.success());
    (ok && importable(&pylib)).then_some(pylib)
}

/// The cross-check: check_sys.py (llvm-readobj + pefile) on the images.
fn cross_check(root: &Path, readobj: &Path, pylib: &Path, images: &[PathBuf]) -> Result<()> {
    let status = Command::new("python3")
        .env("LLVM_READOBJ", readobj)
        .env("LLVM_OBJDUMP", objdump_beside(readobj))
        .env("PYTHONPATH", pylib)
        .arg(root.join("tools/check-sys/check_sys.py"))
        .args(images)
        .status()
        .map_err(|e| Error::new(format!("cannot run python3: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::new(format!("check_sys.py failed ({status})")))
    }
}

fn pem_of_exported(root: &Path) -> Result<PathBuf> {
    let work = root.join(WORK);
    std::fs::create_dir_all(&work).map_err(|e| Error::new(format!("{}: {e}", work.display())))?;
    let pem = work.join("nmr_test.pem");
    tools::run(
        Command::new("openssl")
            .args(["x509", "-inform", "DER", "-in"])
            .arg(root.join(OUT_DIR).join(sign::CER))
            .arg("-out")
            .arg(&pem),
    )?;
    Ok(pem)
}

fn osslsigncode_verify(pem: &Path, file: &Path, catalog: Option<&Path>) -> Result<(bool, String)> {
    let mut cmd = Command::new("osslsigncode");
    cmd.args(["verify", "-CAfile"])
        .arg(pem)
        .arg("-in")
        .arg(file);
    if let Some(cat) = catalog {
        cmd.arg("-catalog").arg(cat);
    }
    let out = output(&mut cmd)?;
    Ok((out.status.success(), text(&out)))
}

fn line_starting<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

fn members_verify(root: &Path) -> Result<()> {
    let pem = pem_of_exported(root)?;
    let mut ok = true;
    for d in DRIVERS {
        let dir = root.join(OUT_DIR);
        let (good, out) = osslsigncode_verify(
            &pem,
            &dir.join(format!("{d}.sys")),
            Some(&dir.join(format!("{d}.cat"))),
        )?;
        if good && line_starting(&out, "File is signed in catalog").is_some() {
            println!(
                "PASS {d}.sys is in {d}.cat: {}",
                line_starting(&out, "Calculated message digest").unwrap_or("?")
            );
        } else {
            println!("{out}\nFAIL {d}.sys: osslsigncode verify -catalog {d}.cat");
            ok = false;
        }
    }
    // osslsigncode hashes only PE files against a catalog; the .inf (a flat
    // SHA-256) is checked by lists_exactly.
    ok.then_some(())
        .ok_or_else(|| Error::new("a member does not verify"))
}

/// `openssl asn1parse -i` of a DER file.
fn asn1parse(file: &Path) -> Result<String> {
    tools::stdout(
        Command::new("openssl")
            .args(["asn1parse", "-inform", "DER", "-i", "-in"])
            .arg(file),
    )
}

/// The member tags of a catalog: each trusted subject of the CTL is a
/// SEQUENCE (depth 7) of an OCTET STRING, the tag (depth 8), and a SET of
/// attributes (depth 8). (Other 32-byte OCTET STRINGs at depth 8, such as the
/// signer's messageDigest, are not followed by a SET.)
fn catalog_tags(dump: &str) -> Vec<String> {
    let mut tags = Vec::new();
    let mut pending: Option<String> = None;
    for line in dump.lines() {
        let at_depth_8 = line.contains(":d=8 ");
        if let Some(tag) = pending.take()
            && at_depth_8
            && line.contains(" SET")
        {
            tags.push(tag);
        }
        if at_depth_8
            && line.contains("OCTET STRING")
            && let Some((_, hex)) = line.split_once("[HEX DUMP]:")
        {
            pending = Some(hex.trim().to_owned());
        }
    }
    tags.sort();
    tags
}

/// The hex of a NUL-terminated UTF-16LE string, as asn1parse prints it.
fn utf16le_hex(s: &str) -> String {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .map(|b| format!("{b:02X}"))
        .collect()
}

fn openssl_sha256(file: &Path) -> Result<String> {
    let out = tools::stdout(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-r"])
            .arg(file),
    )?;
    Ok(out.split_whitespace().next().unwrap_or("").to_uppercase())
}

fn lists_exactly(root: &Path) -> Result<()> {
    let pem = pem_of_exported(root)?;
    let dir = root.join(OUT_DIR);
    let mut ok = true;
    for d in DRIVERS {
        let cat = dir.join(format!("{d}.cat"));
        let dump = asn1parse(&cat)?;
        // The image's Authenticode hash as osslsigncode computes it.
        let (_, out) = osslsigncode_verify(&pem, &dir.join(format!("{d}.sys")), None)?;
        let sys_hash = line_starting(&out, "Calculated message digest")
            .and_then(|l| l.split(':').nth(1))
            .map(|h| h.split_whitespace().next().unwrap_or("").to_owned())
            .unwrap_or_default();
        let inf_hash = openssl_sha256(&dir.join(format!("{d}.inf")))?;
        let mut expected = vec![sys_hash.clone(), inf_hash.clone()];
        expected.sort();
        let actual = catalog_tags(&dump);
        if sys_hash.len() == 64 && actual == expected {
            println!("PASS {d}.cat lists exactly: {d}.sys {sys_hash}, {d}.inf {inf_hash}");
        } else {
            println!(
                "FAIL {d}.cat members: {actual:?}; expected ({d}.sys by osslsigncode, {d}.inf by openssl dgst): {expected:?}"
            );
            ok = false;
        }
        for name in [format!("{d}.sys"), format!("{d}.inf")] {
            if dump.contains(&utf16le_hex(&name)) {
                println!("PASS {d}.cat: member File = {name}");
            } else {
                println!("FAIL {d}.cat: no File attribute {name}");
                ok = false;
            }
        }
        if dump.matches(&utf16le_hex("2:10.0")).count() == 2 {
            println!("PASS {d}.cat: both members carry OSAttr 2:10.0");
        } else {
            println!("FAIL {d}.cat: OSAttr 2:10.0 not on both members");
            ok = false;
        }
        let has_oid = |oid: &str| {
            dump.lines()
                .any(|l| l.trim_end().ends_with(&format!(":{oid}")))
        };
        if has_oid("1.3.6.1.4.1.311.12.1.1") && has_oid("1.3.6.1.4.1.311.12.1.3") {
            println!(
                "PASS {d}.cat: a CTL of usage szOID_CATALOG_LIST, members szOID_CATALOG_LIST_MEMBER2 (SHA-256)"
            );
        } else {
            println!("FAIL {d}.cat: not a szOID_CATALOG_LIST CTL with MEMBER2 entries");
            ok = false;
        }
    }
    ok.then_some(())
        .ok_or_else(|| Error::new("a catalog does not list exactly its files"))
}

fn fingerprint(pem: &Path) -> Result<String> {
    tools::stdout(
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(pem),
    )
    .map(|s| s.trim().to_owned())
}

fn signature(root: &Path) -> Result<()> {
    let pem = pem_of_exported(root)?;
    let work = root.join(WORK);
    let exported = fingerprint(&pem)?;
    // A second throwaway certificate that signed nothing: verifying against it must fail.
    let other = work.join("other.pem");
    if !other.is_file() {
        let out = output(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=nmr ci: signed nothing", "-keyout"])
                .arg(work.join("other.key"))
                .arg("-out")
                .arg(&other),
        )?;
        if !out.status.success() {
            return Err(Error::new(format!("openssl req: {}", text(&out))));
        }
    }
    let mut ok = true;
    for d in DRIVERS {
        let cat = root.join(OUT_DIR).join(format!("{d}.cat"));
        let (good, out) = osslsigncode_verify(&pem, &cat, None)?;
        if good && line_starting(&out, "Signature verification: ok").is_some() {
            println!("PASS {d}.cat: signature verifies with nmr_test.cer as the only CA");
        } else {
            println!("{out}\nFAIL {d}.cat: osslsigncode verify -CAfile nmr_test.cer");
            ok = false;
        }
        let certs = work.join(format!("{d}.signer.pem"));
        tools::run(
            Command::new("openssl")
                .args(["pkcs7", "-inform", "DER", "-print_certs", "-in"])
                .arg(&cat)
                .arg("-out")
                .arg(&certs),
        )?;
        let signer = fingerprint(&certs)?;
        if signer == exported {
            println!("PASS {d}.cat: its certificate is nmr_test.cer ({exported})");
        } else {
            println!("FAIL {d}.cat: carries {signer}, nmr_test.cer is {exported}");
            ok = false;
        }
        let (good, out) = osslsigncode_verify(&other, &cat, None)?;
        if good {
            println!("FAIL {d}.cat: also verifies against an unrelated certificate");
            ok = false;
        } else {
            let why = out
                .lines()
                .find(|l| l.contains("Verify error") || l.contains("verification: failed"))
                .unwrap_or("failed");
            println!(
                "PASS {d}.cat: rejected with an unrelated CA ({})",
                why.trim()
            );
        }
    }
    ok.then_some(())
        .ok_or_else(|| Error::new("a catalog signature check failed"))
}

fn rejects_tampering(root: &Path) -> Result<()> {
    let pem = pem_of_exported(root)?;
    let work = root.join(WORK);
    let dir = root.join(OUT_DIR);
    let mut ok = true;
    for d in DRIVERS {
        let copy = work.join(format!("{d}.tampered.sys"));
        let mut bytes = tools::read(&dir.join(format!("{d}.sys")))?;
        // One byte in the middle of the image: inside a section, far from the
        // checksum and the signature at the end.
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        tools::write(&copy, &bytes)?;
        let (good, out) = osslsigncode_verify(&pem, &copy, Some(&dir.join(format!("{d}.cat"))))?;
        if good {
            println!(
                "{out}\nFAIL {d}.sys with byte {at:#x} flipped still verifies against {d}.cat"
            );
            ok = false;
        } else {
            println!(
                "PASS {d}.sys with byte {at:#x} flipped fails the catalog check; osslsigncode printed:"
            );
            for line in out.lines().filter(|l| !l.trim().is_empty()) {
                println!("    {line}");
            }
        }
        let inf_copy = work.join(format!("{d}.tampered.inf"));
        let mut inf = tools::read(&dir.join(format!("{d}.inf")))?;
        inf.push(b' ');
        tools::write(&inf_copy, &inf)?;
        let hash = openssl_sha256(&inf_copy)?;
        if catalog_tags(&asn1parse(&dir.join(format!("{d}.cat")))?).contains(&hash) {
            println!("FAIL {d}.inf with a byte added is still listed");
            ok = false;
        } else {
            println!("PASS {d}.inf with a byte added: its hash {hash} is not in {d}.cat");
        }
    }
    ok.then_some(())
        .ok_or_else(|| Error::new("a tampered file still verifies"))
}

/// A copy of each image with FORCE_INTEGRITY cleared (and its INF beside it):
/// both checkers must reject it.
fn checkers_reject(root: &Path, cross: Option<(&Path, &Path)>) -> Result<()> {
    let work = root.join(WORK).join("no-integrity");
    std::fs::create_dir_all(&work).map_err(|e| Error::new(format!("{}: {e}", work.display())))?;
    let mut copies = Vec::new();
    for d in DRIVERS {
        let dir = root.join(OUT_DIR);
        let mut bytes = tools::read(&dir.join(format!("{d}.sys")))?;
        let e_lfanew =
            u32::from_le_bytes(bytes[0x3c..0x40].try_into().unwrap_or_default()) as usize;
        // DllCharacteristics: optional header offset 70.
        let at = e_lfanew + 4 + 20 + 70;
        let value = u16::from_le_bytes([bytes[at], bytes[at + 1]]) & !0x0080;
        bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
        // A valid checksum again, so that the flag is the one fault.
        let checksum_at = e_lfanew + 4 + 20 + 64;
        let checksum = image_checks::pe_checksum(&bytes, checksum_at);
        bytes[checksum_at..checksum_at + 4].copy_from_slice(&checksum.to_le_bytes());
        let copy = work.join(format!("{d}.sys"));
        tools::write(&copy, &bytes)?;
        for ext in ["inf", "map"] {
            tools::copy(
                &dir.join(format!("{d}.{ext}")),
                &work.join(format!("{d}.{ext}")),
            )?;
        }
        copies.push(copy);
    }
    let mut ok = true;
    // The flag is the one fault: each image fails that check and no other.
    match image_checks::check_images_failures(&copies) {
        Err((_, failures))
            if failures.len() == DRIVERS.len()
                && failures
                    .iter()
                    .all(|(_, checks)| checks == &["FORCE_INTEGRITY set"]) =>
        {
            println!(
                "PASS xtask check rejects the images with FORCE_INTEGRITY cleared, on that check alone"
            );
        }
        other => {
            println!("FAIL xtask check on images with FORCE_INTEGRITY cleared: {other:?}");
            ok = false;
        }
    }
    if let Some((readobj, pylib)) = cross {
        if cross_check(root, readobj, pylib, &copies).is_err() {
            println!("PASS check_sys.py rejects the images with FORCE_INTEGRITY cleared");
        } else {
            println!("FAIL check_sys.py accepts images with FORCE_INTEGRITY cleared");
            ok = false;
        }
    }
    ok.then_some(())
        .ok_or_else(|| Error::new("a checker accepts a broken image"))
}

/// The checks the images built without CFG and CET must fail, in both
/// checkers (the last one, the disassembly of every indirect call, only
/// check_sys.py has).
const NOCFG_MUST_FAIL: [&str; 4] = [
    "GUARD_CF set",
    "guard flags CF_INSTRUMENTED",
    "guard table covers every function",
    "CET compatible",
];
const NOCFG_MUST_FAIL_CROSS_ONLY: &str = "every indirect call goes through the CFG dispatch";

/// Both checkers fail the no-CFG baseline (`package --no-cfg`), each on every
/// hardening check, on both images.
fn nocfg_fails(root: &Path, cross: Option<(&Path, &Path)>) -> Result<()> {
    package::package(root, package::Build::NoCfg)?;
    let images = package::package_images(&root.join(package::NOCFG_DIR))?;
    let mut ok = true;
    match image_checks::check_images_failures(&images) {
        Ok(()) => {
            println!("FAIL xtask check passed the images built without CFG and CET");
            ok = false;
        }
        Err((_, failures)) => {
            for want in NOCFG_MUST_FAIL {
                let n = failures
                    .iter()
                    .filter(|(_, checks)| checks.iter().any(|c| c.starts_with(want)))
                    .count();
                if n == DRIVERS.len() {
                    println!("PASS xtask check fails '{want}' on both images built without it");
                } else {
                    println!(
                        "FAIL xtask check failed '{want}' on {n} of {} images built without it",
                        DRIVERS.len()
                    );
                    ok = false;
                }
            }
        }
    }
    if let Some((readobj, pylib)) = cross {
        let out = output(
            Command::new("python3")
                .env("LLVM_READOBJ", readobj)
                .env("LLVM_OBJDUMP", objdump_beside(readobj))
                .env("PYTHONPATH", pylib)
                .arg(root.join("tools/check-sys/check_sys.py"))
                .args(&images),
        )?;
        let printed = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            println!("FAIL check_sys.py passed the images built without CFG and CET");
            ok = false;
        }
        for want in NOCFG_MUST_FAIL.iter().chain([&NOCFG_MUST_FAIL_CROSS_ONLY]) {
            let n = printed
                .lines()
                .filter(|l| l.starts_with("FAIL nmr_") && l.contains(&format!(".sys: {want}")))
                .count();
            if n == DRIVERS.len() {
                println!("PASS check_sys.py fails '{want}' on both images built without it");
            } else {
                println!(
                    "{printed}\nFAIL check_sys.py failed '{want}' on {n} of {} images",
                    DRIVERS.len()
                );
                ok = false;
            }
        }
    }
    ok.then_some(())
        .ok_or_else(|| Error::new("a checker passed a check on an image built without CFG and CET"))
}

/// `cargo xtask ci-sys`.
pub fn ci_sys(root: &Path) -> Result<()> {
    // Tools, installed when missing (Debian), else SKIPPED below.
    if find_readobj().is_none() && !tools::apt_install(&["llvm"]) {
        let _ = Command::new("rustup")
            .args(["component", "add", "llvm-tools"])
            .status();
    }
    if find("python3").is_none() {
        tools::apt_install(&["python3"]);
    }
    let pip = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !pip {
        tools::apt_install(&["python3-pip"]);
    }
    if find("osslsigncode").is_none() || find("openssl").is_none() {
        tools::apt_install(&["openssl", "osslsigncode"]);
    }
    let work = root.join(WORK);
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .map_err(|e| Error::new(format!("{}: {e}", work.display())))?;
    }

    let mut s = Steps {
        passed: 0,
        failed: 0,
        skipped: 0,
    };
    if !s.step(
        "package --unsigned (build, stamp, catalog, image checks)",
        || package::package(root, package::Build::Shipped { sign: false }).map(|_| ()),
    ) {
        println!(
            "ci-sys: {} passed, {} failed, {} skipped",
            s.passed, s.failed, s.skipped
        );
        return Err(Error::new("the package could not be built"));
    }
    let images = package::package_images(&root.join(OUT_DIR))?;
    let readobj = find_readobj();
    let pylib = if find("python3").is_some() {
        pefile_path(root)
    } else {
        None
    };
    let cross = match (&readobj, &pylib) {
        (Some(r), Some(p)) => Some((r.clone(), p.clone())),
        _ => None,
    };
    let cross_why = "the cross-check (check_sys.py): llvm-readobj, python3 or pefile could not be had \
                     (apt-get install llvm python3-pip; pip install pefile)";
    match &cross {
        Some((r, p)) => {
            s.step(
                "cross-check (unsigned): check_sys.py, llvm-readobj + pefile",
                || cross_check(root, r, p, &images),
            );
        }
        None => s.skip(1, cross_why),
    }
    s.step(
        "both checkers reject an image with FORCE_INTEGRITY cleared",
        || {
            checkers_reject(
                root,
                cross.as_ref().map(|(r, p)| (r.as_path(), p.as_path())),
            )
        },
    );

    s.step(
        "both checkers fail the images built without CFG and CET (package --no-cfg)",
        || {
            nocfg_fails(
                root,
                cross.as_ref().map(|(r, p)| (r.as_path(), p.as_path())),
            )
        },
    );

    if find("osslsigncode").is_some() && find("openssl").is_some() {
        if s.step(
            "sign (test signing), image checks on the signed images",
            || sign::sign_package(root, &root.join(OUT_DIR)),
        ) {
            match &cross {
                Some((r, p)) => {
                    s.step("cross-check (test-signed): check_sys.py", || {
                        cross_check(root, r, p, &images)
                    });
                }
                None => s.skip(1, cross_why),
            }
            s.step(
                "catalog: every member verifies (osslsigncode verify -catalog)",
                || members_verify(root),
            );
            s.step(
                "catalog: lists exactly its .inf and .sys (openssl asn1parse, openssl dgst)",
                || lists_exactly(root),
            );
            s.step(
                "catalog: signature verifies against nmr_test.cer, and only against it",
                || signature(root),
            );
            s.step(
                "catalog: a signed .sys with one byte changed fails the catalog check",
                || rejects_tampering(root),
            );
        }
    } else {
        s.skip(
            6,
            "test signing, its cross-check and the 4 catalog checks: osslsigncode/openssl not available \
             (apt-get install osslsigncode openssl)",
        );
    }
    println!(
        "ci-sys: {} passed, {} failed, {} skipped",
        s.passed, s.failed, s.skipped
    );
    if s.failed == 0 {
        Ok(())
    } else {
        Err(Error::new(format!("{} ci-sys step(s) failed", s.failed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16le_hex_is_what_asn1parse_prints() {
        assert_eq!(utf16le_hex("a:"), "61003A000000");
    }

    #[test]
    fn catalog_tags_are_octet_strings_followed_by_a_set_at_depth_8() {
        let dump = "\
  10:d=8  hl=2 l=  32 prim: OCTET STRING      [HEX DUMP]:AA
  44:d=8  hl=2 l= 100 cons: SET
  50:d=8  hl=2 l=  32 prim: OCTET STRING      [HEX DUMP]:BB
  84:d=9  hl=2 l=  10 cons: SET
  90:d=8  hl=2 l=  32 prim: OCTET STRING      [HEX DUMP]:CC
  99:d=8  hl=2 l=  10 cons: SET
";
        assert_eq!(catalog_tags(dump), vec!["AA".to_owned(), "CC".to_owned()]);
    }
}
