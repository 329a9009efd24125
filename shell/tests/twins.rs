//! The two kernel surfaces, `src/km_wdk.rs` (windows-drivers-rs) and
//! `src/km_raw.rs` (declared by hand), are twins: `src/shell.rs` compiles
//! against either, so each must offer the same items with the same
//! signatures. Only one of them is ever compiled on a given host (the wdk one
//! needs the WDK), so the compiler cannot catch a drift; this test reads both
//! files and compares what they expose.
//!
//! Compared: every item visible outside the file (`pub`, `pub(crate)`,
//! `pub(super)`): functions by their whole signature (safety, ABI, parameter
//! names and types, return type) and `#[must_use]`, constants and statics by type and value,
//! `use` re-exports by their text. Types (`pub type`, `pub struct`) by name
//! only: a type is where the surfaces legitimately differ (a wdk-sys binding
//! on one side, a hand declaration pinned by layout assertions on the other).
//! Private items (the kernel declarations, the panic handler, the CRT
//! symbols) are each surface's own business.

use std::collections::BTreeMap;
use std::path::Path;

use quote::ToTokens;
use syn::{Item, Visibility};

/// What a surface exposes: item key ("fn dbg_print") to what must match.
type Exposed = BTreeMap<String, String>;

fn exposed(source: &str) -> Result<Exposed, String> {
    let file = syn::parse_file(source).map_err(|e| format!("parse error: {e}"))?;
    let mut items = Exposed::new();
    let mut add = |key: String, value: String| -> Result<(), String> {
        match items.insert(key.clone(), value) {
            None => Ok(()),
            Some(_) => Err(format!("{key} is defined twice")),
        }
    };
    for item in &file.items {
        let visible = |vis: &Visibility| !matches!(vis, Visibility::Inherited);
        match item {
            Item::Fn(f) if visible(&f.vis) => {
                let mut sig = f.sig.clone();
                for input in &mut sig.inputs {
                    match input {
                        syn::FnArg::Typed(arg) => arg.attrs.clear(),
                        syn::FnArg::Receiver(arg) => arg.attrs.clear(),
                    }
                }
                // `#[must_use]` is part of the contract: wdk-sys marks every
                // function returning NTSTATUS, and the twins pass it on.
                let must_use = f.attrs.iter().any(|a| a.path().is_ident("must_use"));
                add(
                    format!("fn {}", f.sig.ident),
                    format!(
                        "{}{}",
                        if must_use { "#[must_use] " } else { "" },
                        sig.to_token_stream()
                    ),
                )?;
            }
            Item::Type(t) if visible(&t.vis) => add(format!("type {}", t.ident), "type".into())?,
            Item::Struct(s) if visible(&s.vis) => add(format!("type {}", s.ident), "type".into())?,
            Item::Const(c) if visible(&c.vis) => add(
                format!("const {}", c.ident),
                format!(
                    "{}: {} = {}",
                    c.ident,
                    c.ty.to_token_stream(),
                    c.expr.to_token_stream()
                ),
            )?,
            Item::Static(s) if visible(&s.vis) => add(
                format!("static {}", s.ident),
                format!(
                    "{}{}: {}",
                    if matches!(s.mutability, syn::StaticMutability::Mut(_)) {
                        "mut "
                    } else {
                        ""
                    },
                    s.ident,
                    s.ty.to_token_stream()
                ),
            )?,
            Item::Use(u) if visible(&u.vis) => {
                let text = u.tree.to_token_stream().to_string();
                add(format!("use {text}"), text)?;
            }
            // Anything else visible (a module, a trait, an enum, a macro...)
            // must be identical text on both sides.
            other => {
                let visibility = match other {
                    Item::Enum(i) => Some(&i.vis),
                    Item::Mod(i) => Some(&i.vis),
                    Item::Trait(i) => Some(&i.vis),
                    Item::Union(i) => Some(&i.vis),
                    Item::TraitAlias(i) => Some(&i.vis),
                    Item::ExternCrate(i) => Some(&i.vis),
                    _ => None,
                };
                if visibility.is_some_and(visible) {
                    let text = other.to_token_stream().to_string();
                    add(format!("item {text}"), text)?;
                }
            }
        }
    }
    Ok(items)
}

/// Every difference between two surfaces, one line each; empty if twins.
fn differences(wdk: &Exposed, raw: &Exposed) -> Vec<String> {
    let mut out = Vec::new();
    for (key, value) in wdk {
        match raw.get(key) {
            None => out.push(format!("only in km_wdk.rs: {key}: {value}")),
            Some(other) if other != value => out.push(format!(
                "differs: {key}\n    km_wdk.rs: {value}\n    km_raw.rs: {other}"
            )),
            Some(_) => {}
        }
    }
    for (key, value) in raw {
        if !wdk.contains_key(key) {
            out.push(format!("only in km_raw.rs: {key}: {value}"));
        }
    }
    out
}

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn km_wdk_and_km_raw_expose_the_same_items_with_the_same_signatures() {
    let wdk = exposed(&read("km_wdk.rs")).expect("km_wdk.rs");
    let raw = exposed(&read("km_raw.rs")).expect("km_raw.rs");
    let diffs = differences(&wdk, &raw);
    assert!(
        diffs.is_empty(),
        "the kernel surfaces are no longer twins (shell/src/km_wdk.rs vs km_raw.rs); \
         add the item to both, or move it to shell.rs if it is not surface-specific:\n{}",
        diffs.join("\n")
    );
    // What shell.rs uses, so that a parse that found nothing cannot pass.
    for key in [
        "type DriverObject",
        "fn dbg_print",
        "fn create_system_thread",
        "fn wait_for_object",
        "fn close_handle",
        "fn delay_execution",
        "fn terminate_system_thread",
        "fn set_unload",
        "fn allocate_pool",
        "fn free_pool",
    ] {
        assert!(wdk.contains_key(key), "{key} missing from both surfaces");
    }
    assert_eq!(wdk.len(), 10, "exposed items: {:?}", wdk.keys());
}

#[test]
fn the_comparison_catches_an_item_on_one_side_and_a_changed_signature() {
    let base = "pub unsafe fn close_handle(handle: HANDLE) -> NTSTATUS { todo!() }
                pub type DriverObject = wdk_sys::DRIVER_OBJECT;
                fn private_helper() {}";
    let twin = "pub unsafe fn close_handle(handle: HANDLE) -> NTSTATUS { ZwClose(handle) }
                #[repr(C)] pub struct DriverObject { _opaque: [u8; 336] }
                const PRIVATE: u32 = 1;";
    let a = exposed(base).unwrap();
    let b = exposed(twin).unwrap();
    assert_eq!(
        differences(&a, &b),
        Vec::<String>::new(),
        "bodies, types and private items"
    );

    let gained = exposed(&format!("{twin} pub fn extra() {{}}")).unwrap();
    assert_eq!(
        differences(&a, &gained),
        ["only in km_raw.rs: fn extra: fn extra ()"]
    );

    let changed = exposed(&base.replace("-> NTSTATUS", "")).unwrap();
    let diffs = differences(&changed, &b);
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert!(
        diffs[0].starts_with("differs: fn close_handle"),
        "{diffs:?}"
    );

    let unmarked = exposed(&twin.replace("pub unsafe fn", "#[must_use] pub unsafe fn")).unwrap();
    let diffs = differences(&a, &unmarked);
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert!(
        diffs[0].contains("#[must_use] unsafe fn close_handle"),
        "{diffs:?}"
    );

    let restricted = exposed(&format!("{base} pub(super) const X: u32 = 2;")).unwrap();
    assert_eq!(
        differences(&restricted, &b),
        ["only in km_wdk.rs: const X: X: u32 = 2"]
    );
    assert!(exposed("pub fn twice() {} pub fn twice() {}").is_err());
}
