//! Finding and running the external programs a step needs, and saying what to
//! install when one is missing.

use crate::{Error, Result};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `cargo` that runs this xtask (cargo sets `CARGO` for `cargo run`).
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `name` on the PATH (with `.exe` on Windows), if it is there.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let names: Vec<String> = if cfg!(windows) && !name.ends_with(".exe") {
        vec![format!("{name}.exe"), name.to_owned()]
    } else {
        vec![name.to_owned()]
    };
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Describes a command for messages: `program arg arg ...`.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with its output shown; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| Error::new(format!("cannot run {}: {e}", describe(cmd))))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::new(format!("{} failed ({status})", describe(cmd))))
    }
}

/// Runs a command and returns its output, whatever its exit status; fails only
/// when it cannot be started.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output()
        .map_err(|e| Error::new(format!("cannot run {}: {e}", describe(cmd))))
}

/// Runs a command and returns its stdout; fails (with its stderr) unless it
/// exits 0.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::new(format!(
            "{} failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// stdout and stderr of a finished command, as one text.
pub fn text(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    s
}

/// Installs Debian packages with apt-get when the machine has it (as root or
/// with passwordless sudo); `apt-get update` only if the install fails without
/// it. Returns whether the install succeeded. Prints what it does.
pub fn apt_install(packages: &[&str]) -> bool {
    if cfg!(not(target_os = "linux")) || find("apt-get").is_none() {
        return false;
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| -> bool {
        let mut cmd = if is_root {
            Command::new("apt-get")
        } else if find("sudo").is_some() {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        } else {
            return false;
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    };
    println!("xtask: apt-get install {}", packages.join(" "));
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend_from_slice(packages);
    apt(&install) || (apt(&["update", "-qq"]) && apt(&install))
}

/// Writes a file, naming it in the error.
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::new(format!("{}: {e}", path.display())))
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::new(format!("{}: {e}", path.display())))
}

/// Reads a text file, naming it in the error.
pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::new(format!("{}: {e}", path.display())))
}

/// Copies a file, naming both in the error.
pub fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| Error::new(format!("copy {} to {}: {e}", from.display(), to.display())))
}

/// The file name of a path, for messages.
pub fn name(path: &Path) -> String {
    path.file_name()
        .unwrap_or(OsStr::new("?"))
        .to_string_lossy()
        .into_owned()
}
