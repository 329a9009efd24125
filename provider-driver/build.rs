//! On a Windows host with the `wdk` feature, wdk-build configures the driver
//! link (the WDK's libraries, `/DRIVER`, the entry point). Elsewhere nothing:
//! the Linux cross-build passes its linker flags itself (scripts/build-sys.sh).

fn main() {
    #[cfg(all(windows, feature = "wdk"))]
    wdk_build::configure_wdk_binary_build()
        .expect("wdk-build could not configure the driver build");
}
