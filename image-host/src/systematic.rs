//! Systematic fault injection on the shipped images, like Driver Verifier's
//! low-resources simulation: a full load / attach / call / unload cycle of
//! one image (its peer loaded alongside) is run once to count the fallible
//! calls the image makes, then once per call with that one call failing, and
//! (optionally) with a seeded random fraction failing. Every run must end
//! with DriverEntry returning the failure when the driver cannot load, or
//! the driver working without what failed when it can; 0 pool blocks and 0
//! threads of the image left after unload; 0 model violations; no fault
//! (a fault stops the process with a report).

use std::path::Path;
use std::time::{Duration, Instant};

use nmr_common::ffi::{STATUS_INSUFFICIENT_RESOURCES, nt_success};
use nmr_sim::{Config, Sim};

use crate::driver::Driver;
use crate::model::ModelBinding;
use crate::ntoskrnl;
use crate::plan::{FaultMode, FaultPlan, Reached, Site};
use crate::problems::{self, Kind};
use crate::stress::{CLIENT_IMAGE, PROVIDER_IMAGE};

/// What one cycle did.
#[derive(Clone, Debug)]
pub struct CycleOutcome {
    /// The fallible calls of the image under test, in order, and which failed.
    pub reached: Vec<Reached>,
    /// What DriverEntry of the image under test returned.
    pub entry_status: i32,
    /// Whether the two drivers attached.
    pub attached: bool,
    /// Whether the image under test was deliberately kept (a failed
    /// deregistration keeps the module: the NMR may still use it).
    pub kept_after_failed_deregistration: bool,
    /// What was wrong; empty when the cycle passed.
    pub failures: Vec<String>,
}

/// Runs one cycle of `image` (with its peer) under `mode`.
pub fn cycle(dir: &Path, image: &str, mode: FaultMode) -> CycleOutcome {
    let peer = if image == CLIENT_IMAGE {
        PROVIDER_IMAGE
    } else {
        CLIENT_IMAGE
    };
    let sim = Sim::new(Config::default().recording());
    let binding = ModelBinding::bind(sim.clone());
    ntoskrnl::set_delay_cap_us(200);
    let _ = problems::take();
    let mut failures = Vec::new();

    let mut peer_driver = Driver::load(&dir.join(peer)).expect("the peer image loads");
    let peer_status = peer_driver.start();
    assert!(
        nt_success(peer_status),
        "{peer}: DriverEntry returned {peer_status:#x} with no fault injected"
    );
    FaultPlan::set_for(mode, Some(image));
    let calls_before = (
        crate::dispatch::calls_into(image),
        crate::dispatch::calls_into(peer),
    );
    let mut driver = Driver::load(&dir.join(image)).expect("the image loads");
    let entry_status = driver.start();
    let during_entry = FaultPlan::reached().len();
    let started = nt_success(entry_status);
    let attached = started && sim.live_bindings() == 1;
    let mut calls_flowed = false;
    // With a failure injected the binding may be kept unused: only a clean
    // load is required to call both ways.
    let injected = FaultPlan::reached().iter().any(|r| r.failed);
    if attached && !injected {
        // Let the workers call each other (both ways), bounded.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) && !calls_flowed {
            std::thread::sleep(Duration::from_millis(1));
            calls_flowed = crate::dispatch::calls_into(image) != calls_before.0
                && crate::dispatch::calls_into(peer) != calls_before.1;
        }
    }
    if started {
        driver.stop();
    }
    let reached = FaultPlan::reached();
    FaultPlan::set(FaultMode::Off);
    // What failed, by when: during DriverEntry outside the attach (the
    // driver cannot load), inside the attach (it loads without the
    // binding), a deregistration (anywhere: the module is kept).
    let failed_at = |i: usize| reached[i].failed;
    let entry_failure = (0..during_entry).find(|&i| failed_at(i) && !reached[i].during_attach);
    let attach_failure = (0..during_entry).find(|&i| failed_at(i) && reached[i].during_attach);
    let deregistration_failed = reached.iter().any(|r| {
        r.failed
            && matches!(
                r.site,
                Site::NmrDeregisterClient | Site::NmrDeregisterProvider
            )
    });
    let later_failure = (during_entry..reached.len()).find(|&i| {
        failed_at(i)
            && !matches!(
                reached[i].site,
                Site::NmrDeregisterClient | Site::NmrDeregisterProvider
            )
    });
    let any_failed = reached.iter().any(|r| r.failed);

    // The image's own leftovers were checked by Driver::start/stop.
    let mut kept = false;
    for p in problems::take() {
        let leak = matches!(p.kind, Kind::PoolLeak | Kind::FailedEntryLeftovers);
        if deregistration_failed && p.image == image && leak {
            kept = true; // the module is kept on purpose (see below)
            continue;
        }
        if any_failed
            && p.kind == Kind::PeerFault
            && p.text.contains("STATUS_INSUFFICIENT_RESOURCES")
        {
            continue; // the driver tracing the failure it was handed
        }
        failures.push(p.to_string());
    }
    if let Some(i) = entry_failure {
        if started {
            failures.push(format!(
                "{} failed during DriverEntry, yet DriverEntry returned success",
                reached[i].site
            ));
        } else if entry_status != STATUS_INSUFFICIENT_RESOURCES {
            failures.push(format!(
                "{} failed during DriverEntry, which returned {entry_status:#010x}, \
                 not the failure (STATUS_INSUFFICIENT_RESOURCES)",
                reached[i].site
            ));
        }
    } else if let Some(i) = attach_failure {
        // The attach failed: the driver loads, without that binding (it
        // declines it or, past NmrClientAttachProvider, keeps it unused
        // until the NMR detaches it); its unload was checked above.
        if !started {
            failures.push(format!(
                "{} failed inside the attach, and DriverEntry failed ({entry_status:#010x}): \
                 a failed attach costs the binding, not the driver",
                reached[i].site
            ));
        }
    } else if !any_failed || (deregistration_failed && started) {
        if !started {
            failures.push(format!(
                "DriverEntry returned {entry_status:#010x} with no call failed"
            ));
        } else if !attached {
            failures.push("the drivers did not attach with no call failed in DriverEntry".into());
        } else if !calls_flowed {
            failures.push("attached, but NPI calls did not flow both ways within 5 s".into());
        }
    }
    if let Some(i) = later_failure {
        failures.push(format!(
            "{} failed after DriverEntry: no such call was expected there",
            reached[i].site
        ));
    }
    if deregistration_failed && !kept {
        failures.push(
            "the deregistration failed, yet the driver freed its module: the NMR may \
             still call into it"
                .into(),
        );
    }
    peer_driver.stop();
    sim.quiesce();
    for v in sim.violations() {
        failures.push(format!("model violation: {v}"));
    }
    if !kept {
        if sim.live_registrations() != 0 {
            failures.push(format!(
                "{} registration(s) left in the model",
                sim.live_registrations()
            ));
        }
        if sim.live_bindings() != 0 {
            failures.push(format!(
                "{} binding(s) left in the model",
                sim.live_bindings()
            ));
        }
    }
    for p in problems::take() {
        failures.push(p.to_string());
    }
    drop(binding);
    ntoskrnl::set_delay_cap_us(u32::MAX);
    CycleOutcome {
        reached,
        entry_status,
        attached,
        kept_after_failed_deregistration: kept,
        failures,
    }
}

/// One line of the systematic pass.
#[derive(Clone, Debug)]
pub struct SiteRun {
    /// Which call failed (index in the counting run's order).
    pub index: usize,
    /// The call.
    pub site: String,
    /// The outcome.
    pub outcome: CycleOutcome,
}

/// The systematic pass over one image: the counting run, then one run per
/// fallible call with that call failing.
pub fn systematic(dir: &Path, image: &str) -> (Vec<Reached>, Vec<SiteRun>) {
    let counting = cycle(dir, image, FaultMode::Off);
    let mut runs = Vec::new();
    for (index, r) in counting.reached.iter().enumerate() {
        let outcome = cycle(dir, image, FaultMode::FailNth(index));
        runs.push(SiteRun {
            index,
            site: r.to_string(),
            outcome,
        });
    }
    let mut reached = counting.reached;
    if !counting.failures.is_empty() {
        // The baseline itself failed: report it as a run with no failure.
        runs.insert(
            0,
            SiteRun {
                index: usize::MAX,
                site: "(no call failed)".into(),
                outcome: CycleOutcome {
                    reached: reached.clone(),
                    ..counting
                },
            },
        );
    }
    reached.iter_mut().for_each(|r| r.failed = false);
    (reached, runs)
}
