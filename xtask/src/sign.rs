//! TEST SIGNING ONLY: each image of a package (embedded Authenticode,
//! SHA-256), then its catalog, with a throwaway self-signed code-signing
//! certificate made here, exported beside them as `nmr_test.cer` (DER).
//!
//! Which members carry a signature, and why:
//! - the `.cat`: `pnputil /add-driver` installs a package only if its
//!   catalog's signature is trusted and lists every file by hash; Windows
//!   then records the catalog, and code integrity accepts the demand-start
//!   `.sys` through it;
//! - the `.sys`, embedded: what wdk-build's flow does too (sign-driver-binary),
//!   and what the `install.ps1 -LinuxImage` fallback needs, which loads the
//!   bare image with `sc.exe create`, with no catalog installed. (A
//!   boot-start driver would need it in any case: the catalog store is not
//!   read that early.) The catalog lists the image by its Authenticode hash,
//!   which leaves the signature out, so the order does not matter;
//! - the `.inf` cannot carry one: the catalog covers it. The `.pdb`, `.map`
//!   and `.cer` are not package members.
//!
//! The tools, by host:
//! - osslsigncode and openssl, where they are (Linux: `apt-get install
//!   osslsigncode openssl`; they exist for Windows too);
//! - on Windows without them: PowerShell's `New-SelfSignedCertificate` for the
//!   certificate, then `signtool` when the WDK (or the SDK) puts it on the
//!   PATH, else PowerShell's `Set-AuthenticodeSignature`, which signs PE
//!   files and catalogs alike. The certificate is removed from
//!   `Cert:\CurrentUser\My` again afterwards; only `nmr_test.cer` remains.
//!
//! The certificate chains to nothing: Windows accepts the package only in
//! test-signing mode, after nmr_test.cer is imported into the machine's
//! Trusted Root and TrustedPublisher stores (`install.ps1
//! -TrustTestCertificate`). Never use it outside a test VM.

use crate::tools::{self, find, output, text};
use crate::{Error, Result, image_checks, package};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the throwaway key and certificate live: outside the package.
pub const SIGNING_DIR: &str = "target/sys-signing";
const SUBJECT: &str = "/CN=nmr Rust driver TEST SIGNING ONLY (throwaway)/O=nmr test/";
const CN: &str = "nmr Rust driver TEST SIGNING ONLY (throwaway)";
/// The exported certificate's name in the package.
pub const CER: &str = "nmr_test.cer";

/// The tools that will sign on this host.
pub enum Signer {
    /// osslsigncode and openssl.
    Osslsigncode,
    /// PowerShell's certificate cmdlets, and signtool when it is on the PATH.
    PowerShell {
        /// signtool.exe, when found.
        signtool: Option<PathBuf>,
    },
}

/// The signer this host has, or what to install.
pub fn signer() -> Result<Signer> {
    if find("osslsigncode").is_some() && find("openssl").is_some() {
        return Ok(Signer::Osslsigncode);
    }
    if cfg!(windows) && find("powershell").is_some() {
        return Ok(Signer::PowerShell {
            signtool: find("signtool"),
        });
    }
    Err(Error::with_fix(
        "no test-signing tool: osslsigncode and openssl are not both on the PATH",
        "Debian/Ubuntu: sudo apt-get install osslsigncode openssl; \
         or build unsigned: cargo xtask package --unsigned",
    ))
}

/// The key and certificate (PEM), made on first use.
fn openssl_key(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = root.join(SIGNING_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::new(format!("{}: {e}", dir.display())))?;
    let key = dir.join("nmr-test-signing.key");
    let pem = dir.join("nmr-test-signing.pem");
    if !key.is_file() || !pem.is_file() {
        println!("xtask: making a throwaway test-signing certificate in {SIGNING_DIR}");
        let out = output(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:3072", "-sha256", "-days", "30", "-nodes",
                ])
                .args(["-subj", SUBJECT])
                .args(["-addext", "keyUsage=critical,digitalSignature"])
                .args(["-addext", "extendedKeyUsage=codeSigning"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&pem),
        )?;
        if !out.status.success() {
            return Err(Error::new(format!("openssl req failed: {}", text(&out))));
        }
    }
    Ok((key, pem))
}

fn osslsigncode_sign(file: &Path, pem: &Path, key: &Path, name: Option<&str>) -> Result<()> {
    let tmp = file.with_extension("signing");
    let _ = std::fs::remove_file(&tmp);
    let mut cmd = Command::new("osslsigncode");
    cmd.args(["sign", "-h", "sha256", "-certs"])
        .arg(pem)
        .arg("-key")
        .arg(key);
    if let Some(n) = name {
        cmd.args(["-n", n]);
    }
    cmd.arg("-in").arg(file).arg("-out").arg(&tmp);
    let out = output(&mut cmd)?;
    if !out.status.success() {
        return Err(Error::new(format!(
            "osslsigncode sign {} failed: {}",
            file.display(),
            text(&out)
        )));
    }
    std::fs::rename(&tmp, file).map_err(|e| Error::new(format!("{}: {e}", file.display())))
}

/// The lines of osslsigncode's verify output worth showing.
fn show(out: &str, prefixes: &[&str]) {
    for line in out.lines() {
        if prefixes.iter().any(|p| line.starts_with(p)) {
            println!("    {line}");
        }
    }
}

fn sign_with_osslsigncode(root: &Path, dir: &Path) -> Result<()> {
    let (key, pem) = openssl_key(root)?;
    let subject = tools::stdout(
        Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-fingerprint", "-sha1", "-in"])
            .arg(&pem),
    )?;
    println!("xtask: certificate {}", subject.replace('\n', " ").trim());
    for image in package::package_images(dir)? {
        let stem = image
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        osslsigncode_sign(&image, &pem, &key, Some(&format!("{stem} (test signing)")))?;
        let out = output(
            Command::new("osslsigncode")
                .args(["verify", "-CAfile"])
                .arg(&pem)
                .arg("-in")
                .arg(&image),
        )?;
        let all = text(&out);
        if !out.status.success() {
            println!("{all}");
            return Err(Error::new(format!(
                "{}: osslsigncode verify against the test certificate failed",
                image.display()
            )));
        }
        println!(
            "PASS {}: signed (sha256), osslsigncode verify with the test certificate as CA:",
            tools::name(&image)
        );
        show(
            &all,
            &[
                "Message digest algorithm",
                "Current message digest",
                "Calculated message digest",
                "Signature verification",
                "Number of verified signatures",
                "Succeeded",
                "Failed",
            ],
        );
        // Against the system's roots it cannot verify: printed for the record.
        let sys = output(
            Command::new("osslsigncode")
                .arg("verify")
                .arg("-in")
                .arg(&image),
        )?;
        let sys_text = text(&sys);
        if sys.status.success() {
            println!(
                "    against the system's trusted roots: verified (unexpected for a throwaway cert)"
            );
        } else {
            let line = sys_text
                .lines()
                .find(|l| l.contains("Signature verification") || l.contains("error"))
                .unwrap_or("failed");
            println!("    against the system's trusted roots: {line} (expected: test signing)");
        }
    }
    for image in package::package_images(dir)? {
        let cat = image.with_extension("cat");
        if !cat.is_file() {
            return Err(Error::with_fix(
                format!("{}: no catalog {}", image.display(), cat.display()),
                "run `cargo xtask package`, which writes it",
            ));
        }
        osslsigncode_sign(&cat, &pem, &key, None)?;
        let out = output(
            Command::new("osslsigncode")
                .args(["verify", "-CAfile"])
                .arg(&pem)
                .arg("-in")
                .arg(&image)
                .arg("-catalog")
                .arg(&cat),
        )?;
        let all = text(&out);
        if !out.status.success() {
            println!("{all}");
            return Err(Error::new(format!(
                "{}: osslsigncode verify -catalog with the test certificate as CA failed",
                cat.display()
            )));
        }
        println!(
            "PASS {}: signed (sha256); {} verifies against it:",
            tools::name(&cat),
            tools::name(&image)
        );
        show(
            &all,
            &[
                "Current message digest",
                "Calculated message digest",
                "File is signed in catalog",
                "Signature verification",
            ],
        );
    }
    let cer = dir.join(CER);
    tools::run(
        Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&pem)
            .arg("-out")
            .arg(&cer),
    )?;
    println!("xtask: exported the test certificate as {CER} (DER)");
    Ok(())
}

/// PowerShell single-quoted string.
fn ps_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn sign_with_powershell(dir: &Path, signtool: Option<&Path>) -> Result<()> {
    let images = package::package_images(dir)?;
    let mut files: Vec<PathBuf> = images.clone();
    files.extend(images.iter().map(|i| i.with_extension("cat")));
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(Error::with_fix(
            format!("{}: no such file", missing.display()),
            "run `cargo xtask package`, which writes it",
        ));
    }
    let list = files
        .iter()
        .map(|f| ps_quote(&f.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(", ");
    let signing = match signtool {
        Some(st) => format!(
            "foreach ($f in $files) {{ & {} sign /fd SHA256 /s My /sha1 $cert.Thumbprint $f; \
             if ($LASTEXITCODE -ne 0) {{ throw \"signtool sign $f failed ($LASTEXITCODE)\" }} }}",
            ps_quote(&st.to_string_lossy())
        ),
        None => "foreach ($f in $files) { $s = Set-AuthenticodeSignature -FilePath $f -Certificate $cert -HashAlgorithm SHA256; \
                 if ($null -eq $s.SignerCertificate) { throw \"Set-AuthenticodeSignature $f failed: $($s.StatusMessage)\" } }"
            .to_owned(),
    };
    let script = format!(
        "$ErrorActionPreference = 'Stop'\n\
         $files = @({list})\n\
         $cert = New-SelfSignedCertificate -Type CodeSigningCert -Subject {subject} \
           -CertStoreLocation Cert:\\CurrentUser\\My -KeyAlgorithm RSA -KeyLength 3072 \
           -HashAlgorithm SHA256 -NotAfter (Get-Date).AddDays(30)\n\
         try {{\n\
           Write-Output \"xtask: certificate $($cert.Subject) $($cert.Thumbprint)\"\n\
           {signing}\n\
           foreach ($f in $files) {{\n\
             $s = Get-AuthenticodeSignature -FilePath $f\n\
             if ($null -eq $s.SignerCertificate -or $s.SignerCertificate.Thumbprint -ne $cert.Thumbprint) {{ throw \"$f carries no signature by the test certificate\" }}\n\
             Write-Output \"PASS $(Split-Path -Leaf $f): signed by the test certificate ($($s.Status): the root is not trusted until install.ps1 -TrustTestCertificate)\"\n\
           }}\n\
           Export-Certificate -Cert $cert -FilePath {cer} -Type CERT | Out-Null\n\
         }} finally {{ Remove-Item -LiteralPath (Join-Path Cert:\\CurrentUser\\My $cert.Thumbprint) }}\n",
        subject = ps_quote(&format!("CN={CN}, O=nmr test")),
        cer = ps_quote(&dir.join(CER).to_string_lossy()),
    );
    tools::run(
        Command::new("powershell")
            .args([
                "-NoProfile",
                "-NonInteractive",
                "-ExecutionPolicy",
                "Bypass",
                "-Command",
            ])
            .arg(script),
    )?;
    println!("xtask: exported the test certificate as {CER} (DER)");
    Ok(())
}

/// Signs the package in `dir` in place (used on a scratch folder).
pub fn sign_in_place(root: &Path, dir: &Path) -> Result<()> {
    match signer()? {
        Signer::Osslsigncode => sign_with_osslsigncode(root, dir),
        Signer::PowerShell { signtool } => sign_with_powershell(dir, signtool.as_deref()),
    }
}

/// `cargo xtask sign [DIR]`: signs a copy of the package and replaces it
/// only when the copy is signed and checked.
pub fn sign_package(root: &Path, dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(Error::with_fix(
            format!("{}: no such package folder", dir.display()),
            "run `cargo xtask package --unsigned` first, or name the folder",
        ));
    }
    package::package_images(dir)?;
    signer()?;
    let tmp = package::scratch_dir(dir)?;
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::new(format!("{}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::new(format!("{}: {e}", dir.display())))?;
        if entry.path().is_file() {
            tools::copy(&entry.path(), &tmp.join(entry.file_name()))?;
        }
    }
    sign_in_place(root, &tmp)?;
    image_checks::check_images(&package::package_images(&tmp)?)?;
    package::publish(&tmp, dir)
}
