//! Kernel Control Flow Guard on the shipped images, enforced by the image
//! host: every indirect call of the images is checked, a dispatch-table entry
//! pointing into the middle of a function is stopped, and an image that says
//! it has CFG without a usable load configuration is refused. The images are
//! built by `cargo xtask package` into target/sys; without them these
//! tests print that they were skipped and why.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::path::PathBuf;
use std::process::Command;

use nmr_image_host::stress::{self, ImageStressConfig};
use nmr_image_host::{Driver, FAULT_EXIT_CODE, LoadError, cfg};

mod common;
use common::images;

fn short_stress(dir: PathBuf) -> ImageStressConfig {
    ImageStressConfig {
        images: dir,
        cycles: Some(48),
        phase_cycles: 24,
        latency_us: 100,
        ..ImageStressConfig::default()
    }
}

#[test]
fn every_indirect_call_of_the_images_goes_through_the_hosts_check_and_passes() {
    let Some(dir) = images() else { return };
    for image in [stress::CLIENT_IMAGE, stress::PROVIDER_IMAGE] {
        let d = Driver::load(&dir.join(image)).expect("the image loads");
        let table = d.image().guard().table();
        assert!(
            table.is_some_and(|t| t.len() >= 10),
            "{image}: no guard function table: {table:?}"
        );
    }
    let before = cfg::count_checks(true);
    let config = short_stress(dir);
    let report = stress::run(&config, &|_| {}).expect("the images are there");
    let checked = cfg::count_checks(false) - before;
    assert_eq!(report.failures(&config), Vec::<String>::new());
    let npi_calls = report.calls_into_provider + report.calls_into_client;
    assert!(npi_calls > 0);
    // Every NPI call is an indirect call of an image: each one was checked
    // (and the images' own indirect calls, formatting, besides).
    assert!(
        checked >= npi_calls,
        "{checked} indirect calls checked, {npi_calls} NPI calls made"
    );
    println!("{checked} indirect calls checked, {npi_calls} of them NPI calls");
}

/// Runs this test in a child process with `NMR_IH_CFG_CHILD` set; returns
/// its exit code and stderr.
fn child(test: &str) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env("NMR_IH_CFG_CHILD", "1")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_dispatch_table_entry_into_the_middle_of_a_function_is_stopped() {
    let Some(dir) = images() else { return };
    if std::env::var_os("NMR_IH_CFG_CHILD").is_some() {
        // The provider's dispatch table reaches the client with each
        // function pointer 4 bytes into its function.
        cfg::misdirect_dispatch_tables(stress::PROVIDER_IMAGE, 4);
        let _ = stress::run(&short_stress(dir), &|_| {});
        panic!("the client called through the table and was not stopped");
    }
    let (code, stderr) = child("a_dispatch_table_entry_into_the_middle_of_a_function_is_stopped");
    println!("the child printed:\n{stderr}");
    assert_eq!(code, Some(FAULT_EXIT_CODE), "{stderr}");
    for expected in [
        "CFG: indirect call to an invalid target, stopped (Windows: bug check 0x139 \
         KERNEL_SECURITY_CHECK_FAILURE, parameter 1 = 10 FAST_FAIL_GUARD_ICALL_CHECK_FAILURE)",
        "an entry of the NPI dispatch table the caller was given",
        "target nmr_provider.sys+",
        "not in the guard function table of nmr_provider.sys",
        "4 bytes before: the middle of a function",
        "caller (return address) nmr_client.sys+",
        "llvm-symbolizer --obj=",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn the_same_table_entries_pass_when_they_point_at_the_functions() {
    // The control of the test above: the same child run without the
    // misdirection completes, so what stopped it was the 4 bytes.
    let Some(dir) = images() else { return };
    let config = short_stress(dir);
    let report = stress::run(&config, &|_| {}).expect("the images are there");
    assert_eq!(report.failures(&config), Vec::<String>::new());
    assert!(report.calls_into_provider > 0);
}

/// The file offset of the optional header's data directory `index`.
fn data_directory(file: &[u8], index: usize) -> usize {
    let pe = u32::from_le_bytes(file[0x3c..0x40].try_into().unwrap()) as usize;
    // "PE\0\0", the 20-byte file header, then 112 bytes of PE32+ optional
    // header before the data directories (8 bytes each).
    pe + 4 + 20 + 112 + 8 * index
}

#[test]
fn an_image_that_says_it_has_cfg_without_a_load_configuration_is_refused() {
    let Some(dir) = images() else { return };
    let mut file = std::fs::read(dir.join(stress::CLIENT_IMAGE)).unwrap();
    let at = data_directory(&file, 10); // IMAGE_DIRECTORY_ENTRY_LOAD_CONFIG
    assert_ne!(file[at..at + 8], [0; 8], "the shipped image has one");
    file[at..at + 8].fill(0);
    let err = Driver::load_bytes(&file, "no_load_config.sys", "no_load_config.sys")
        .err()
        .expect("refused");
    assert_eq!(
        err,
        LoadError::Malformed(
            "Control Flow Guard: GUARD_CF is set but the image has no load configuration".into()
        )
    );
}
