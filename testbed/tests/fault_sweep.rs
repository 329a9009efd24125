//! Systematic fault injection on the model (`testbed::fault`): every
//! allocation the real client and provider modules make in a load / attach /
//! call / unload cycle is counted, then failed once each; every run must end
//! cleanly (a refused load, a declined attach or a working binding), with no
//! block of the modules left, nothing left in the model, and no violation.
//! Its own test binary: the allocator is global.

use nmr_sim::{Delivery, Side};
use testbed::fault::{Faulty, LoadOrder, Outcome, sweep};

#[global_allocator]
static ALLOCATOR: Faulty = Faulty;

fn sweep_passes(delivery: Delivery, order: LoadOrder) {
    let report = sweep(delivery, order);
    println!(
        "{delivery:?} {order:?}: {} sites (client {}, provider {})",
        report.sites.len(),
        report.sites_of(Side::Client),
        report.sites_of(Side::Provider)
    );
    for run in &report.runs {
        let site = &run.site;
        println!(
            "  site {} {} at {}: {:?}",
            site.index,
            site.side.name(),
            site.at,
            run.result
        );
    }
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{delivery:?} {order:?}:\n{}",
        failures.join("\n")
    );
    // Each module allocates at least itself and its binding, and each kind of
    // clean ending is reached: a refused load, a declined attach.
    assert!(report.sites_of(Side::Client) >= 2 && report.sites_of(Side::Provider) >= 2);
    let ended = |o: Outcome| report.runs.iter().any(|r| r.result == Ok(o));
    assert!(ended(Outcome::LoadFailed(Side::Client)));
    assert!(ended(Outcome::LoadFailed(Side::Provider)));
    assert!(ended(Outcome::Declined));
}

#[test]
fn every_module_allocation_fails_once_and_the_modules_unwind_cleanly() {
    for delivery in [Delivery::Inline, Delivery::Worker, Delivery::Parallel] {
        for order in [LoadOrder::ClientFirst, LoadOrder::ProviderFirst] {
            sweep_passes(delivery, order);
        }
    }
}
