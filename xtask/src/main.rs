//! `cargo xtask`: the project's build tool, in Rust, the same on Linux and on
//! Windows with only rustup (the alias is in `.cargo/config.toml`).
//!
//! ```text
//! cargo xtask package [--unsigned]   build both .sys on the hand-declared kernel
//!                                    surface, stamp the INFs, write the catalogs,
//!                                    check the images, test-sign: target/sys/
//! cargo xtask package --no-cfg       the unhardened baseline: target/sys-nocfg/
//! cargo xtask check [IMAGE.sys...]   the image and INF checks (default: target/sys/*.sys)
//! cargo xtask sign [DIR]             test-sign a package folder (default: target/sys)
//! cargo xtask check-wdk-flow         the preconditions of `cargo make` (wdk-build's
//!                                    driver package flow), read from the pinned
//!                                    wdk-build's own files
//! cargo xtask ci-sys                 CI: package, check before and after signing,
//!                                    verify the catalogs with other tools
//! ```
//!
//! Every command exits non-zero on failure and says what to install or run.

mod catalog_checks;
mod image_checks;
mod package;
mod report;
mod sign;
mod tools;
mod wdk_flow;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What went wrong, and what the user can do about it.
#[derive(Debug)]
pub struct Error {
    /// What failed.
    pub what: String,
    /// What to install or run to fix it, when there is something to say.
    pub fix: Option<String>,
    /// The exit status: 2 for a usage error, 1 otherwise.
    pub status: u8,
}

impl Error {
    /// A failure with nothing more to say.
    pub fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            fix: None,
            status: 1,
        }
    }

    /// A failure with what to install or run.
    pub fn with_fix(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            fix: Some(fix.into()),
            status: 1,
        }
    }

    fn usage(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            fix: Some(format!("usage:\n{USAGE}")),
            status: 2,
        }
    }
}

/// The result of an xtask step.
pub type Result<T> = std::result::Result<T, Error>;

const USAGE: &str = "\
  cargo xtask package [--unsigned]   build, stamp, catalog, check and test-sign both drivers into target/sys/
  cargo xtask package --no-cfg       the same images without CFG and CET, unchecked, unsigned, into
                                     target/sys-nocfg/ (the CFG baseline; the checks must fail it)
  cargo xtask check [IMAGE.sys...]   check driver images and their INFs (default: target/sys/*.sys)
  cargo xtask sign [DIR]             test-sign the package in DIR (default: target/sys)
  cargo xtask check-wdk-flow         check what `cargo make` (wdk-build's flow) needs, against the pinned wdk-build
  cargo xtask ci-sys                 CI: package, check, sign, check again, verify the catalogs with osslsigncode/openssl
  cargo xtask help                   this text

Environment (package): SYS_BUILD_NUMBER (4th field of DriverVer, default the
commit count of HEAD), SOURCE_DATE_EPOCH (the DriverVer and catalog date,
default now).";

/// The workspace root: xtask's manifest directory's parent.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn no_more_args(command: &str, rest: &[String]) -> Result<()> {
    match rest.first() {
        None => Ok(()),
        Some(arg) => Err(Error::usage(format!("{command}: unknown argument '{arg}'"))),
    }
}

fn run(args: &[String]) -> Result<()> {
    let root = workspace_root();
    let Some((command, rest)) = args.split_first() else {
        return Err(Error::usage("no command given"));
    };
    match command.as_str() {
        "package" => {
            let (mut sign, mut hardened) = (true, true);
            for arg in rest {
                match arg.as_str() {
                    "--unsigned" => sign = false,
                    "--no-cfg" => hardened = false,
                    other => {
                        return Err(Error::usage(format!("package: unknown argument '{other}'")));
                    }
                }
            }
            let build = if hardened {
                package::Build::Shipped { sign }
            } else {
                package::Build::NoCfg
            };
            package::package(&root, build).map(|_| ())
        }
        "check" => {
            if let Some(flag) = rest.iter().find(|a| a.starts_with('-')) {
                return Err(Error::usage(format!("check: unknown argument '{flag}'")));
            }
            let images: Vec<PathBuf> = if rest.is_empty() {
                package::package_images(&root.join(package::OUT_DIR))?
            } else {
                rest.iter().map(PathBuf::from).collect()
            };
            image_checks::check_images(&images)
        }
        "sign" => {
            let dir = match rest {
                [] => root.join(package::OUT_DIR),
                [flag, ..] if flag.starts_with('-') => {
                    return Err(Error::usage(format!("sign: unknown argument '{flag}'")));
                }
                [dir] => PathBuf::from(dir),
                [_, extra, ..] => {
                    return Err(Error::usage(format!("sign: unknown argument '{extra}'")));
                }
            };
            sign::sign_package(&root, &dir)
        }
        "check-wdk-flow" => {
            no_more_args(command, rest)?;
            wdk_flow::check(&root)
        }
        "ci-sys" => {
            no_more_args(command, rest)?;
            catalog_checks::ci_sys(&root)
        }
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(Error::usage(format!("unknown command '{other}'"))),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {}", e.what);
            if let Some(fix) = &e.fix {
                for line in fix.lines() {
                    eprintln!("xtask:   {line}");
                }
            }
            ExitCode::from(e.status)
        }
    }
}
