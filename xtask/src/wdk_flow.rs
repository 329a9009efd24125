//! `cargo xtask check-wdk-flow`: what `cargo make` on a Windows host needs
//! from this workspace, checked on any host against the files of the pinned
//! wdk-build itself (its `src/cargo_make.rs`, `src/lib.rs` and
//! `rust-driver-makefile.toml`, read from the source cargo downloaded for
//! the version in Cargo.lock). Nothing of wdk-build is compiled or run.
//!
//! What it reads there, and why it matters:
//! - `load_wdk_build_makefile` (cargo_make.rs) runs a default-feature
//!   `cargo metadata` and stops with `NoWdkBuildCrateDetected` (none) or
//!   `MultipleWdkBuildCratesDetected`: the graph must hold exactly one
//!   wdk-build, and the one the load script asks for;
//! - it symlinks `RUST_DRIVER_MAKEFILE_NAME` into `<workspace>/target/`: the
//!   `extend` of Makefile.toml must name that file there;
//! - `package_driver_flow_condition_script` runs the flow only for a package
//!   with `package.metadata.wdk` and a cdylib target; `metadata::Wdk`
//!   must find exactly one driver-model configuration;
//! - the makefile's tasks take `<crate fs name>.dll` and `.pdb` from the
//!   output directory (the cdylib's name), stamp `<fs name>.inf` with
//!   `-c <fs name>.cat`, and package into `<fs name>_package`;
//! - `configure_binary_build` (lib.rs) rejects a build without `crt-static`;
//! - every task, environment variable and `extend` our Makefile.toml names
//!   must exist in that version's makefile (or be cargo-make's own).

use crate::report::{Report, list};
use crate::tools::{self, read_text};
use crate::{Error, Result};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The host triple whose `cargo metadata` a Windows user's `cargo make` sees.
const WINDOWS_HOST: &str = "x86_64-pc-windows-msvc";

/// Environment variables our Makefile.toml uses that cargo-make itself sets
/// (its built-in `build` task and workspace support), not wdk-build.
const CARGO_MAKE_OWN_VARS: [&str; 6] = [
    "CARGO_MAKE_CARGO_VERBOSE_FLAGS",
    "CARGO_MAKE_CARGO_BUILD_TEST_FLAGS",
    "CARGO_MAKE_CRATE_NAME",
    "CARGO_MAKE_CRATE_FS_NAME",
    "CARGO_MAKE_WORKSPACE_WORKING_DIRECTORY",
    "CARGO_MAKE_EXTEND_WORKSPACE_MAKEFILE",
];

/// cargo-make's own tasks that wdk-build's makefile depends on without
/// defining them (cargo-make's default makefile defines them).
const CARGO_MAKE_OWN_TASKS: [&str; 1] = ["build"];

/// A workspace package, as `cargo metadata` describes it.
#[derive(Debug, Clone)]
pub struct Package {
    name: String,
    manifest_dir: PathBuf,
    wdk_metadata: Value,
    lib_name: Option<String>,
    lib_kinds: Vec<String>,
    features: BTreeSet<String>,
}

/// Everything the checks read, gathered first so that the checks themselves
/// are pure (and testable with one input changed).
#[derive(Debug, Clone)]
pub struct Flow {
    /// Versions of every `wdk-build` package in the default-feature graph
    /// (what the load script's `cargo metadata` sees).
    wdk_build_versions: Vec<String>,
    /// The same, for the Windows host's graph (`--filter-platform`).
    wdk_build_versions_windows: Vec<String>,
    /// The wdk-build source directory (of the one version, if one).
    wdk_build_dir: Option<PathBuf>,
    /// `[workspace.metadata.wdk]`.
    workspace_wdk: Value,
    /// Workspace members.
    members: Vec<Package>,
    /// Our Makefile.toml.
    makefile: toml::Table,
    /// wdk-build's rust-driver-makefile.toml (parsed) and its text.
    wdk_makefile: toml::Table,
    wdk_makefile_text: String,
    /// wdk-build's src/cargo_make.rs and src/lib.rs.
    cargo_make_rs: String,
    lib_rs: String,
    /// `.cargo/config.toml`.
    cargo_config: toml::Table,
    /// The workspace root.
    root: PathBuf,
}

fn metadata(root: &Path, filter: Option<&str>) -> Result<Value> {
    let mut cmd = tools::cargo();
    cmd.current_dir(root)
        .args(["metadata", "--format-version", "1"]);
    if let Some(triple) = filter {
        cmd.args(["--filter-platform", triple]);
    }
    let text = tools::stdout(&mut cmd)?;
    serde_json::from_str(&text).map_err(|e| Error::new(format!("cargo metadata: {e}")))
}

fn wdk_build_packages(meta: &Value) -> Vec<&Value> {
    meta["packages"]
        .as_array()
        .map(|ps| ps.iter().filter(|p| p["name"] == "wdk-build").collect())
        .unwrap_or_default()
}

fn parse_toml(path: &Path) -> Result<toml::Table> {
    let text = read_text(path)?;
    text.parse::<toml::Table>()
        .map_err(|e| Error::new(format!("{}: {e}", path.display())))
}

impl Flow {
    /// Reads the workspace, its `cargo metadata` and the pinned wdk-build's files.
    pub fn gather(root: &Path) -> Result<Self> {
        let meta = metadata(root, None)?;
        let meta_windows = metadata(root, Some(WINDOWS_HOST))?;
        let versions = |m: &Value| {
            wdk_build_packages(m)
                .iter()
                .map(|p| p["version"].as_str().unwrap_or("?").to_owned())
                .collect::<Vec<_>>()
        };
        let wdk_build = wdk_build_packages(&meta);
        let wdk_build_dir = match wdk_build.as_slice() {
            [one] => one["manifest_path"]
                .as_str()
                .and_then(|p| Path::new(p).parent())
                .map(Path::to_path_buf),
            _ => None,
        };
        // Without wdk-build in the graph, its files come from the version the
        // workspace asks for, so that the other checks still run.
        let source_dir = match &wdk_build_dir {
            Some(dir) => Some(dir.clone()),
            None => registry_source(root)?,
        };
        let (wdk_makefile_text, cargo_make_rs, lib_rs) = match &source_dir {
            Some(dir) => (
                read_text(&dir.join("rust-driver-makefile.toml"))?,
                read_text(&dir.join("src/cargo_make.rs"))?,
                read_text(&dir.join("src/lib.rs"))?,
            ),
            None => {
                return Err(Error::with_fix(
                    "cannot find the source of wdk-build (neither in the graph nor in cargo's registry)",
                    "run `cargo fetch`, then this check again",
                ));
            }
        };
        let wdk_makefile = wdk_makefile_text
            .parse::<toml::Table>()
            .map_err(|e| Error::new(format!("wdk-build's rust-driver-makefile.toml: {e}")))?;
        let members_ids: BTreeSet<&str> = meta["workspace_members"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let members = meta["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["id"].as_str().is_some_and(|id| members_ids.contains(id)))
            .map(|p| {
                let lib = p["targets"].as_array().into_iter().flatten().find(|t| {
                    t["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "cdylib" || k == "lib"))
                });
                Package {
                    name: p["name"].as_str().unwrap_or("?").to_owned(),
                    manifest_dir: p["manifest_path"]
                        .as_str()
                        .and_then(|m| Path::new(m).parent())
                        .map(Path::to_path_buf)
                        .unwrap_or_default(),
                    wdk_metadata: p["metadata"]["wdk"].clone(),
                    lib_name: lib.and_then(|t| t["name"].as_str()).map(str::to_owned),
                    lib_kinds: lib
                        .and_then(|t| t["kind"].as_array())
                        .map(|k| {
                            k.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default(),
                    features: p["features"]
                        .as_object()
                        .map(|f| f.keys().cloned().collect())
                        .unwrap_or_default(),
                }
            })
            .collect();
        Ok(Self {
            wdk_build_versions: versions(&meta),
            wdk_build_versions_windows: versions(&meta_windows),
            wdk_build_dir,
            workspace_wdk: meta["metadata"]["wdk"].clone(),
            members,
            makefile: parse_toml(&root.join("Makefile.toml"))?,
            wdk_makefile,
            wdk_makefile_text,
            cargo_make_rs,
            lib_rs,
            cargo_config: parse_toml(&root.join(".cargo/config.toml"))?,
            root: root.to_path_buf(),
        })
    }
}

/// The registry source of the wdk-build version the workspace asks for
/// (`[workspace.dependencies]`), when wdk-build is not in the graph.
fn registry_source(root: &Path) -> Result<Option<PathBuf>> {
    let manifest = parse_toml(&root.join("Cargo.toml"))?;
    let Some(req) = manifest
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(|d| d.get("wdk-build"))
        .and_then(|d| {
            d.as_str()
                .or_else(|| d.get("version").and_then(|v| v.as_str()))
        })
    else {
        return Ok(None);
    };
    let version = req.trim_start_matches(['=', '^', '~']);
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os(if cfg!(windows) { "USERPROFILE" } else { "HOME" })
                .map(|h| PathBuf::from(h).join(".cargo"))
        });
    let Some(src) = home.map(|h| h.join("registry/src")) else {
        return Ok(None);
    };
    let Ok(registries) = std::fs::read_dir(&src) else {
        return Ok(None);
    };
    Ok(registries
        .filter_map(|r| r.ok())
        .map(|r| r.path().join(format!("wdk-build-{version}")))
        .find(|p| p.join("rust-driver-makefile.toml").is_file()))
}

/// The load script's embedded manifest: the wdk-build requirement, and the
/// `wdk_build::cargo_make::` function it calls.
fn load_script(makefile: &toml::Table) -> (Option<String>, Option<String>) {
    let Some(script) = makefile
        .get("config")
        .and_then(|c| c.get("windows_load_script"))
        .and_then(|s| s.as_str())
    else {
        return (None, None);
    };
    let mut manifest = String::new();
    let mut inside = false;
    for line in script.lines() {
        let Some(doc) = line.trim_start().strip_prefix("//!") else {
            continue;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        if doc.trim_start().starts_with("```") {
            inside = !inside && doc.trim() == "```cargo";
            continue;
        }
        if inside {
            manifest.push_str(doc);
            manifest.push('\n');
        }
    }
    let req = manifest.parse::<toml::Table>().ok().and_then(|m| {
        let dep = m.get("dependencies")?.get("wdk-build")?;
        dep.as_str()
            .or_else(|| dep.get("version")?.as_str())
            .map(str::to_owned)
    });
    let call = script.split("wdk_build::cargo_make::").nth(1).map(|rest| {
        rest.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect::<String>()
    });
    (req, call)
}

/// Whether `text` holds `word` with no identifier character around it.
fn contains_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    text.match_indices(word).any(|(at, _)| {
        !text[..at].chars().next_back().is_some_and(ident)
            && !text[at + word.len()..].chars().next().is_some_and(ident)
    })
}

/// `pub fn NAME` in a Rust source.
fn has_pub_fn(source: &str, name: &str) -> bool {
    source.contains(&format!("pub fn {name}(")) || source.contains(&format!("pub fn {name}<"))
}

/// The string value of `const NAME: &str = "...";` in a Rust source.
fn const_str(source: &str, name: &str) -> Option<String> {
    let start = source.find(&format!("const {name}: &str = \""))?;
    let rest = &source[start..];
    let value = rest.split('"').nth(1)?;
    Some(value.to_owned())
}

/// Every `${NAME}` and `get_env NAME` in a text.
fn env_vars(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect()
    };
    let mut vars = BTreeSet::new();
    for part in text.split("${").skip(1) {
        let v = ident(part);
        if !v.is_empty() {
            vars.insert(v);
        }
    }
    for part in text.split("get_env ").skip(1) {
        let v = ident(part);
        if !v.is_empty() {
            vars.insert(v);
        }
    }
    for part in text.split("@@").skip(1) {
        // @@split(VAR, ...) and @@remove-empty(VAR)
        if let Some(args) = part.split_once('(').map(|(_, a)| a) {
            let v = ident(args);
            if !v.is_empty() {
                vars.insert(v);
            }
        }
    }
    vars
}

fn tasks(table: &toml::Table) -> BTreeMap<String, toml::Table> {
    table
        .get("tasks")
        .and_then(|t| t.as_table())
        .map(|t| {
            t.iter()
                .filter_map(|(k, v)| v.as_table().map(|v| (k.clone(), v.clone())))
                .collect()
        })
        .unwrap_or_default()
}

/// Tasks the makefile names as a dependency or `run_task` of another.
fn referenced_tasks(tasks: &BTreeMap<String, toml::Table>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for task in tasks.values() {
        if let Some(deps) = task.get("dependencies").and_then(|d| d.as_array()) {
            names.extend(deps.iter().filter_map(|d| d.as_str()).map(str::to_owned));
        }
        for key in ["run_task", "alias", "extend"] {
            if let Some(name) = task.get(key).and_then(|v| v.as_str()) {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

fn version_tuple(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// The package's crate file-system name, as cargo-make computes
/// `CARGO_MAKE_CRATE_FS_NAME`.
fn fs_name(package: &str) -> String {
    package.replace('-', "_")
}

/// The workspace's `[workspace.dependencies]` wdk-build requirement.
fn workspace_requirement(root: &Path) -> Option<String> {
    let manifest = parse_toml(&root.join("Cargo.toml")).ok()?;
    let dep = manifest
        .get("workspace")?
        .get("dependencies")?
        .get("wdk-build")?;
    dep.as_str()
        .or_else(|| dep.get("version")?.as_str())
        .map(str::to_owned)
}

/// Runs every check of `flow` into `r`.
pub fn run_checks(flow: &Flow, r: &mut Report) {
    let cm = &flow.cargo_make_rs;

    // --- the load script and the graph ------------------------------------
    let (req, call) = load_script(&flow.makefile);
    let call = call.unwrap_or_default();
    r.check(
        has_pub_fn(cm, &call),
        "the load script calls a function of wdk-build's cargo_make.rs",
        format!("wdk_build::cargo_make::{call}()"),
    );
    let zero_one_many =
        cm.contains("NoWdkBuildCrateDetected") && cm.contains("MultipleWdkBuildCratesDetected");
    r.check(
        zero_one_many,
        "cargo_make.rs requires exactly one wdk-build in `cargo metadata` (NoWdkBuildCrateDetected / MultipleWdkBuildCratesDetected)",
        if zero_one_many {
            "both errors present: the rule below applies"
        } else {
            "this wdk-build no longer names them: re-read load_wdk_build_makefile"
        },
    );
    for (what, versions) in [
        (
            "default-feature `cargo metadata` (what the load script runs)",
            &flow.wdk_build_versions,
        ),
        (
            "`cargo metadata --filter-platform x86_64-pc-windows-msvc` (a Windows host)",
            &flow.wdk_build_versions_windows,
        ),
    ] {
        let detail = match versions.len() {
            0 => "no wdk-build package: load_rust_driver_makefile() returns NoWdkBuildCrateDetected and cargo make stops before any task".to_owned(),
            1 => format!("wdk-build {}", versions[0]),
            _ => format!(
                "{} wdk-build packages ({}): MultipleWdkBuildCratesDetected",
                versions.len(),
                versions.join(", ")
            ),
        };
        r.check(
            versions.len() == 1,
            &format!("{what} lists exactly one wdk-build"),
            detail,
        );
    }
    let locked = flow.wdk_build_versions.first().cloned();
    let pinned = req.as_deref().map(|v| v.trim_start_matches('='));
    r.check(
        locked.is_some() && pinned == locked.as_deref(),
        "the load script's wdk-build is the version in Cargo.lock (its makefile is the one symlinked)",
        format!(
            "load script asks for {}, Cargo.lock has {}",
            req.as_deref().unwrap_or("(no wdk-build in the load script)"),
            locked.as_deref().unwrap_or("(none in the graph)")
        ),
    );
    let ws_req = workspace_requirement(&flow.root);
    r.check(
        ws_req.as_deref().map(|v| v.trim_start_matches('=')) == pinned && pinned.is_some(),
        "[workspace.dependencies] wdk-build is the load script's",
        format!(
            "workspace {}, load script {}",
            ws_req.as_deref().unwrap_or("(none)"),
            req.as_deref().unwrap_or("(none)")
        ),
    );
    if let Some(dir) = &flow.wdk_build_dir {
        r.check(
            true,
            "the makefile and sources read are the locked version's",
            dir.display().to_string(),
        );
    }

    // --- extend: the symlinked makefile ------------------------------------
    let makefile_name = const_str(cm, "RUST_DRIVER_MAKEFILE_NAME");
    let symlinks_into_target = cm.contains(".join(\"target\")");
    let extends: Vec<String> = flow
        .makefile
        .get("extend")
        .and_then(|e| e.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|e| e.get("path").and_then(|p| p.as_str()))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let wanted = makefile_name
        .as_ref()
        .map(|n| format!("target/{n}"))
        .unwrap_or_default();
    r.check(
        symlinks_into_target && extends.contains(&wanted),
        "`extend` names the file load_rust_driver_makefile() symlinks (<workspace>/target/RUST_DRIVER_MAKEFILE_NAME)",
        format!("extend {}; wdk-build writes {wanted}", list(&extends)),
    );

    // --- the driver packages ----------------------------------------------
    let drivers: Vec<&Package> = flow
        .members
        .iter()
        .filter(|p| !p.wdk_metadata.is_null())
        .collect();
    r.check(
        !drivers.is_empty(),
        "workspace members with [package.metadata.wdk] (package_driver_flow_condition_script runs the flow only for them)",
        list(drivers.iter().map(|p| p.name.as_str())),
    );
    // metadata::Wdk: every configuration (workspace and packages) must be one.
    let mut configs: BTreeSet<String> = drivers
        .iter()
        .filter(|p| p.wdk_metadata.as_object().is_some_and(|o| !o.is_empty()))
        .map(|p| p.wdk_metadata.to_string())
        .collect();
    if !flow.workspace_wdk.is_null() {
        configs.insert(flow.workspace_wdk.to_string());
    }
    r.check(
        configs.len() == 1,
        "exactly one driver-model configuration across the workspace (metadata::Wdk::try_from)",
        list(&configs),
    );
    let driver_types = ["WDM", "KMDF", "UMDF"];
    let stampinf = flow
        .wdk_makefile
        .get("tasks")
        .and_then(|t| t.get("stampinf"));
    let stampinf_args: Vec<String> = stampinf
        .and_then(|t| t.get("args"))
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let build_mapping: BTreeMap<String, String> = tasks(&flow.makefile)
        .get("build")
        .and_then(|b| b.get("env"))
        .and_then(|e| e.get("NMR_DRIVER_FEATURES"))
        .and_then(|n| n.get("mapping"))
        .and_then(|m| m.as_table())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    for p in &drivers {
        let fs = fs_name(&p.name);
        let model = p.wdk_metadata["driver-model"].as_object();
        let ty = model
            .and_then(|m| m.get("driver-type"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let only_type = model.is_some_and(|m| ty != "WDM" || m.len() == 1)
            && p.wdk_metadata.as_object().is_some_and(|o| o.len() == 1);
        r.check(
            driver_types.contains(&ty) && only_type && flow.lib_rs.contains("enum DeserializableDriverConfig"),
            &format!("{}: [package.metadata.wdk.driver-model] deserializes (driver-type, deny_unknown_fields)", p.name),
            format!("{}", p.wdk_metadata),
        );
        r.check(
            p.lib_kinds.iter().any(|k| k == "cdylib") && cm.contains("TargetKind::CDyLib"),
            &format!(
                "{}: a cdylib target (package_driver_flow_condition_script)",
                p.name
            ),
            format!("lib kinds: {}", list(&p.lib_kinds)),
        );
        let dll = flow.wdk_makefile_text.contains("\"{}.dll\"")
            && flow.wdk_makefile_text.contains("\"{}.pdb\"");
        r.check(
            dll && p.lib_name.as_deref() == Some(fs.as_str()),
            &format!(
                "{}: the build writes {fs}.dll and {fs}.pdb, which generate-driver-binary-file and copy-pdb-to-package copy",
                p.name
            ),
            format!("lib target name {}", p.lib_name.as_deref().unwrap_or("(none)")),
        );
        // The .inx: wdk-build's copy-inx-to-output reads <crate dir>/<fs>.inx;
        // ours (Makefile.toml) reads inf/<fs>.inx.
        let ours = flow.root.join("inf").join(format!("{fs}.inx"));
        let theirs = p.manifest_dir.join(format!("{fs}.inx"));
        let wdk_reads_crate_dir = flow
            .wdk_makefile_text
            .contains("format!(\"{}.inx\", wdk_build::cargo_make::get_current_package_name())");
        let overridden = tasks(&flow.makefile)
            .get("copy-inx-to-output")
            .is_some_and(|t| {
                t.get("clear").and_then(|c| c.as_bool()) == Some(true)
                    && t.get("script")
                        .and_then(|s| s.as_str())
                        .is_some_and(|s| s.contains("/inf/${name}.inx"))
            });
        r.check(
            ours.is_file() && (theirs.is_file() || (overridden && wdk_reads_crate_dir)),
            &format!("{}: the INX copy-inx-to-output reads exists", p.name),
            if theirs.is_file() {
                format!("{}", theirs.display())
            } else {
                format!(
                    "inf/{fs}.inx (exists: {}), through our copy-inx-to-output (clear = true: {overridden}); wdk-build's own reads <crate dir>/{fs}.inx: {wdk_reads_crate_dir}",
                    ours.is_file()
                )
            },
        );
        let inx = std::fs::read_to_string(&ours).unwrap_or_default();
        let catalog_arg = stampinf_args
            .windows(2)
            .find(|w| w[0] == "-c")
            .map(|w| w[1].replace("${CARGO_MAKE_CRATE_FS_NAME}", &fs));
        let inx_catalog = inf_value(&inx, "CatalogFile");
        r.check(
            catalog_arg.is_some() && catalog_arg == inx_catalog,
            &format!("{}: stampinf's -c and the INX's CatalogFile agree", p.name),
            format!(
                "stampinf -c {}, INX CatalogFile = {}",
                catalog_arg.as_deref().unwrap_or("?"),
                inx_catalog.as_deref().unwrap_or("(none)")
            ),
        );
        let ext = match ty {
            "UMDF" => "dll",
            _ => "sys",
        };
        let extension_in_makefile = flow
            .wdk_makefile_text
            .contains(&format!("\"{ty}\" = \"{ext}\""));
        r.check(
            extension_in_makefile && inx.lines().any(|l| l.trim_start().starts_with(&format!("{fs}.{ext}"))),
            &format!("{}: the INX's [SourceDisksFiles] names {fs}.{ext} (WDK_BUILD_DRIVER_EXTENSION for {ty})", p.name),
            format!("WDK_BUILD_DRIVER_EXTENSION mapping {ty} -> {ext}: {extension_in_makefile}"),
        );
        let build_rs = std::fs::read_to_string(p.manifest_dir.join("build.rs")).unwrap_or_default();
        r.check(
            build_rs.contains("wdk_build::configure_wdk_binary_build()")
                && has_pub_fn(&flow.lib_rs, "configure_wdk_binary_build")
                && build_rs.contains("feature = \"wdk\""),
            &format!(
                "{}: build.rs calls wdk_build::configure_wdk_binary_build() under feature `wdk`",
                p.name
            ),
            "lib.rs has pub fn configure_wdk_binary_build",
        );
        r.check(
            p.features.contains("wdk")
                && build_mapping.get(&p.name).map(String::as_str) == Some("--features=wdk"),
            &format!(
                "{}: Makefile.toml's build task turns on its `wdk` feature",
                p.name
            ),
            format!(
                "mapping {} -> {}",
                p.name,
                build_mapping
                    .get(&p.name)
                    .map(String::as_str)
                    .unwrap_or("(none)")
            ),
        );
    }
    let unknown: Vec<&String> = build_mapping
        .keys()
        .filter(|k| !drivers.iter().any(|p| &&p.name == k))
        .collect();
    r.check(
        unknown.is_empty(),
        "the build task's feature mapping names only driver packages",
        if unknown.is_empty() {
            list(build_mapping.keys())
        } else {
            format!("not drivers: {}", list(unknown))
        },
    );
    let package_dir = cm.contains("format!(\"{}_package\", get_current_package_name())");
    let cert = flow.wdk_makefile_text.contains("WDRLocalTestCert.cer");
    let docs = std::fs::read_to_string(flow.root.join("docs/windows.md")).unwrap_or_default();
    let install =
        std::fs::read_to_string(flow.root.join("scripts/install.ps1")).unwrap_or_default();
    let names_ok = drivers
        .iter()
        .all(|p| docs.contains(&format!("{}_package", fs_name(&p.name))))
        && docs.contains("WDRLocalTestCert.cer")
        && install.contains("_package")
        && install.contains("WDRLocalTestCert.cer");
    r.check(
        package_dir && cert && names_ok,
        "the package folder <fs name>_package and WDRLocalTestCert.cer (cargo_make.rs, the makefile) are what docs/windows.md and scripts/install.ps1 use",
        format!("wdk-build: _package {package_dir}, WDRLocalTestCert.cer {cert}; docs and install.ps1: {names_ok}"),
    );

    // --- crt-static ----------------------------------------------------------
    let wants_crt = flow.lib_rs.contains("\"crt-static\"");
    let has_crt = flow
        .cargo_config
        .get("target")
        .and_then(|t| t.as_table())
        .is_some_and(|t| {
            t.iter().any(|(k, v)| {
                k.contains("windows")
                    && v.get("rustflags")
                        .and_then(|f| f.as_array())
                        .is_some_and(|f| {
                            f.iter()
                                .any(|x| x.as_str() == Some("target-feature=+crt-static"))
                        })
            })
        });
    r.check(
        !wants_crt || has_crt,
        "configure_binary_build requires crt-static: .cargo/config.toml sets +crt-static for Windows targets",
        format!("wdk-build requires it: {wants_crt}; set: {has_crt}"),
    );

    // --- tasks, env vars, config ------------------------------------------
    let wdk_tasks = tasks(&flow.wdk_makefile);
    let wdk_referenced = referenced_tasks(&wdk_tasks);
    for (name, task) in tasks(&flow.makefile) {
        let ours = task.get("category").and_then(|c| c.as_str()) == Some("Host");
        if ours {
            let clash = wdk_tasks.contains_key(&name);
            r.check(
                !clash,
                &format!("task {name} (ours, category Host) does not replace one of wdk-build's"),
                if clash {
                    "wdk-build defines it too"
                } else {
                    "not in wdk-build's makefile"
                },
            );
            continue;
        }
        let defined = wdk_tasks.contains_key(&name);
        let cargo_make_own =
            CARGO_MAKE_OWN_TASKS.contains(&name.as_str()) && wdk_referenced.contains(&name);
        r.check(
            defined || cargo_make_own,
            &format!("task {name} (an override) exists in wdk-build's makefile"),
            if defined {
                "defined there".to_owned()
            } else if cargo_make_own {
                "cargo-make's own task, a dependency of wdk-build's tasks".to_owned()
            } else {
                "NOT in wdk-build's makefile: the override changes nothing".to_owned()
            },
        );
        for key in [
            "alias",
            "linux_alias",
            "mac_alias",
            "windows_alias",
            "run_task",
        ] {
            if let Some(target) = task.get(key).and_then(|v| v.as_str()) {
                let exists =
                    wdk_tasks.contains_key(target) || tasks(&flow.makefile).contains_key(target);
                r.check(
                    exists,
                    &format!("task {name}: {key} {target} exists"),
                    if exists { "yes" } else { "no such task" },
                );
            }
        }
    }
    let our_text = toml::to_string(&flow.makefile).unwrap_or_default();
    let ours_defined: BTreeSet<String> = flow
        .makefile
        .get("env")
        .and_then(|e| e.as_table())
        .map(|e| e.keys().cloned().collect())
        .unwrap_or_default();
    let task_env: BTreeSet<String> = tasks(&flow.makefile)
        .values()
        .filter_map(|t| t.get("env").and_then(|e| e.as_table()))
        .flat_map(|e| e.keys().cloned())
        .collect();
    // Variables a duckscript assigns itself (`name = get_env ...`) are its own.
    let script_locals: BTreeSet<String> = tasks(&flow.makefile)
        .values()
        .filter_map(|t| t.get("script").and_then(|s| s.as_str()))
        .flat_map(|s| s.lines())
        .filter_map(|l| {
            let (lhs, _) = l.split_once(" = ")?;
            let lhs = lhs.trim();
            (!lhs.is_empty() && lhs.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .then(|| lhs.to_owned())
        })
        .collect();
    for var in env_vars(&our_text)
        .into_iter()
        .chain(ours_defined.iter().cloned())
    {
        if (task_env.contains(&var) && !var.starts_with("WDK_BUILD"))
            || script_locals.contains(&var)
        {
            continue; // our own: set by one of our tasks, or a script's variable
        }
        let in_wdk =
            contains_word(&flow.wdk_makefile_text, &var) || cm.contains(&format!("\"{var}\""));
        let cargo_make_own = CARGO_MAKE_OWN_VARS.contains(&var.as_str());
        r.check(
            in_wdk || cargo_make_own,
            &format!("env var {var} is set by wdk-build or cargo-make"),
            if in_wdk {
                "named in wdk-build's makefile or cargo_make.rs"
            } else if cargo_make_own {
                "cargo-make's own"
            } else {
                "set by nothing: the task would see an empty value"
            },
        );
    }
    let min = |t: &toml::Table| {
        t.get("config")
            .and_then(|c| c.get("min_version"))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let (ours_min, theirs_min) = (min(&flow.makefile), min(&flow.wdk_makefile));
    r.check(
        ours_min.is_some()
            && theirs_min.is_some()
            && version_tuple(ours_min.as_deref().unwrap_or("0"))
                >= version_tuple(theirs_min.as_deref().unwrap_or("0")),
        "[config] min_version is at least wdk-build's",
        format!(
            "ours {}, wdk-build's {}",
            ours_min.as_deref().unwrap_or("(none)"),
            theirs_min.as_deref().unwrap_or("(none)")
        ),
    );
}

/// The value of `key = value` in an INF (comments dropped).
fn inf_value(inf: &str, key: &str) -> Option<String> {
    inf.lines().find_map(|line| {
        let line = line.split(';').next().unwrap_or("");
        let (k, v) = line.split_once('=')?;
        (k.trim().eq_ignore_ascii_case(key)).then(|| v.trim().to_owned())
    })
}

/// `cargo xtask check-wdk-flow`.
pub fn check(root: &Path) -> Result<()> {
    let flow = Flow::gather(root)?;
    let mut r = Report::new("wdk-flow");
    run_checks(&flow, &mut r);
    if r.finish() {
        Ok(())
    } else {
        Err(Error::with_fix(
            format!(
                "{} precondition(s) of `cargo make` (wdk-build's driver package flow) fail",
                r.failed()
            ),
            "see the FAIL lines above; docs/windows.md explains the flow",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        Flow::gather(&crate::workspace_root()).expect("the workspace and wdk-build's source")
    }

    fn failures(flow: &Flow) -> usize {
        let mut r = Report::new("test");
        run_checks(flow, &mut r);
        r.failed()
    }

    #[test]
    fn the_workspace_meets_the_flow() {
        assert_eq!(failures(&flow()), 0);
    }

    #[test]
    fn a_wdk_build_bump_the_load_script_does_not_follow_fails() {
        let mut f = flow();
        f.wdk_build_versions = vec!["0.6.1".into()];
        f.wdk_build_versions_windows = vec!["0.6.1".into()];
        assert!(failures(&f) >= 1);
    }

    #[test]
    fn no_wdk_build_in_the_graph_fails() {
        let mut f = flow();
        f.wdk_build_versions.clear();
        f.wdk_build_versions_windows.clear();
        assert!(failures(&f) >= 3);
    }

    #[test]
    fn two_wdk_builds_fail() {
        let mut f = flow();
        f.wdk_build_versions.push("0.5.1".into());
        assert!(failures(&f) >= 1);
    }

    #[test]
    fn an_override_of_a_task_wdk_build_does_not_have_fails() {
        let mut f = flow();
        let tasks = f
            .makefile
            .get_mut("tasks")
            .and_then(|t| t.as_table_mut())
            .expect("tasks");
        tasks.insert(
            "copy-inx-to-outputs".into(),
            toml::Value::Table(toml::Table::new()),
        );
        assert_eq!(failures(&f), 1);
    }

    #[test]
    fn an_env_var_nothing_sets_fails() {
        let mut f = flow();
        let tasks = f
            .makefile
            .get_mut("tasks")
            .and_then(|t| t.as_table_mut())
            .expect("tasks");
        let inx = tasks
            .get_mut("copy-inx-to-output")
            .and_then(|t| t.as_table_mut())
            .expect("copy-inx-to-output");
        inx.insert(
            "script".into(),
            toml::Value::String("out_dir = get_env WDK_BUILD_OUTPUT_DIR\n/inf/${name}.inx".into()),
        );
        assert_eq!(failures(&f), 1);
    }

    #[test]
    fn a_second_driver_model_fails() {
        let mut f = flow();
        f.workspace_wdk = serde_json::json!({"driver-model": {"driver-type": "KMDF"}});
        assert!(failures(&f) >= 1);
    }

    #[test]
    fn the_load_script_manifest_is_read() {
        let f = flow();
        let (req, call) = load_script(&f.makefile);
        assert_eq!(req.as_deref(), Some("0.6.0"));
        assert_eq!(call.as_deref(), Some("load_rust_driver_makefile"));
    }
}
