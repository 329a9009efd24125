//! On a Windows host with the `wdk` feature, wdk-build configures the driver
//! link (the WDK's libraries, `/DRIVER`, the entry point), and the link gets
//! `/GUARD:CF` and `/CETCOMPAT`. Without the feature nothing, although
//! wdk-build is a build dependency on every Windows host (Cargo.toml says
//! why); the build without the WDK (`cargo xtask package`, on any host)
//! passes its linker flags itself.

fn main() {
    #[cfg(all(windows, feature = "wdk"))]
    {
        wdk_build::configure_wdk_binary_build()
            .expect("wdk-build could not configure the driver build");
        // Control Flow Guard tables and the CET-compatible flag, as
        // `cargo xtask package` links them (the compiler flag comes from
        // Makefile.toml's build task; issue 19).
        println!("cargo::rustc-cdylib-link-arg=/GUARD:CF");
        println!("cargo::rustc-cdylib-link-arg=/CETCOMPAT");
    }
}
