//! The shipped images, run by the image host. They are built by
//! `cargo xtask package` into target/sys; without them these tests
//! print that they were skipped and why (CI builds the images first and runs
//! the full stress and fault pass through `testbed`).

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use nmr_image_host::stress::{self, ImageStressConfig};
use nmr_image_host::systematic;

mod common;
use common::images;

#[test]
fn the_images_pass_a_short_stress_in_every_order_and_delivery() {
    let Some(dir) = images() else { return };
    let config = ImageStressConfig {
        images: dir,
        cycles: Some(15 * 24),
        phase_cycles: 24,
        latency_us: 100,
        ..ImageStressConfig::default()
    };
    let report = stress::run(&config, &|_| {}).expect("the images are there");
    print!("{}", report.table());
    assert_eq!(report.failures(&config), Vec::<String>::new());
    assert!(
        report.phases >= 15,
        "every detach order and delivery: {} phases",
        report.phases
    );
    assert!(report.nmr.bindings_made > 0);
    assert!(report.calls_into_provider > 0 && report.calls_into_client > 0);
    assert!(
        report.threads.stack_peak > 0
            && report.threads.stack_peak < nmr_image_host::KERNEL_STACK_SIZE
    );
}

#[test]
fn every_fallible_call_of_each_image_fails_once_and_the_driver_unwinds() {
    let Some(dir) = images() else { return };
    for image in [stress::CLIENT_IMAGE, stress::PROVIDER_IMAGE] {
        let (sites, runs) = systematic::systematic(&dir, image);
        assert!(
            sites.len() >= 5,
            "{image}: only {} fallible calls reached",
            sites.len()
        );
        assert_eq!(
            runs.len(),
            sites.len(),
            "{image}: one run per site (and the baseline passed)"
        );
        for run in runs {
            assert!(
                run.outcome.failures.is_empty(),
                "{image}: site {} ({}) failing: {:?}",
                run.index,
                run.site,
                run.outcome.failures
            );
            assert_eq!(run.outcome.reached.iter().filter(|r| r.failed).count(), 1);
        }
    }
}
