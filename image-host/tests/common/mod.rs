//! What the image tests share: where the shipped images are.

use std::path::PathBuf;

use nmr_image_host::stress;

/// The directory of the shipped images (`NMR_IMAGES_DIR`, or target/sys), or
/// None after saying loudly that the test is skipped and why.
pub fn images() -> Option<PathBuf> {
    let dir = std::env::var_os("NMR_IMAGES_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/sys"),
        PathBuf::from,
    );
    if stress::images_present(&dir) {
        Some(dir)
    } else {
        println!(
            "*** SKIPPED: {} has no nmr_client.sys / nmr_provider.sys: run `cargo xtask package` first ***",
            dir.display()
        );
        None
    }
}
