//! On a Windows host with the `wdk` feature, wdk-build configures the driver
//! link (the WDK's libraries, `/DRIVER`, the entry point), and the link gets
//! `/GUARD:CF` and `/CETCOMPAT`. Elsewhere nothing:
//! the Linux cross-build passes its linker flags itself (scripts/build-sys.sh).

fn main() {
    #[cfg(all(windows, feature = "wdk"))]
    {
        wdk_build::configure_wdk_binary_build()
            .expect("wdk-build could not configure the driver build");
        // Control Flow Guard tables and the CET-compatible flag, as
        // scripts/build-sys.sh links them (the compiler flag comes from
        // Makefile.toml's build task; issue 19).
        println!("cargo::rustc-cdylib-link-arg=/GUARD:CF");
        println!("cargo::rustc-cdylib-link-arg=/CETCOMPAT");
    }
}
