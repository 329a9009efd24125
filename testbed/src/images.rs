//! The stress and the systematic fault injection on the shipped `.sys`
//! images, through `nmr-image-host` (x86_64 Linux only): what `testbed
//! stress --images DIR` and `testbed faults --images DIR` print.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The options of `testbed stress --images DIR`.
#[derive(Clone, Debug)]
pub struct ImageArgs {
    /// Where the images are.
    pub images: PathBuf,
    /// Stop after this many cycles (else after `duration`).
    pub cycles: Option<u64>,
    /// How long to run without `cycles`.
    pub duration: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// Microseconds each worker NPI call is held in flight.
    pub latency_us: u32,
    /// The longest a driver's worker sleeps between rounds.
    pub worker_period_us: u32,
    /// Cycles per model instance.
    pub phase_cycles: u64,
    /// Print the drivers' DbgPrintEx lines.
    pub trace: bool,
}

fn no_images(dir: &Path) -> ExitCode {
    println!(
        "images: no nmr_client.sys / nmr_provider.sys in {}: build them first with \
         `cargo xtask package` (writes target/sys)",
        dir.display()
    );
    ExitCode::FAILURE
}

/// `testbed stress --images DIR`.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn stress(args: &ImageArgs, progress: &(dyn Fn(u64) + Sync)) -> ExitCode {
    use nmr_image_host::stress::{self, ImageStressConfig};
    if !stress::images_present(&args.images) {
        return no_images(&args.images);
    }
    let config = ImageStressConfig {
        images: args.images.clone(),
        cycles: args.cycles,
        duration: args.duration,
        seed: args.seed,
        latency_us: args.latency_us,
        worker_period_us: args.worker_period_us,
        phase_cycles: args.phase_cycles,
        trace: args.trace,
    };
    println!(
        "stress: the shipped images from {} ({} and {}), seed {}, {}, calls held {} us, \
         worker period {} us, {} cycles per model instance",
        config.images.display(),
        stress::CLIENT_IMAGE,
        stress::PROVIDER_IMAGE,
        config.seed,
        match config.cycles {
            Some(c) => format!("{c} cycles"),
            None => format!("{:.0} s", config.duration.as_secs_f64()),
        },
        config.latency_us,
        config.worker_period_us,
        config.phase_cycles,
    );
    let report = match stress::run(&config, progress) {
        Ok(r) => r,
        Err(e) => {
            println!("stress: FAIL: {e}");
            return ExitCode::FAILURE;
        }
    };
    for line in &report.trace {
        println!("{line}");
    }
    println!("summary:");
    print!("{}", report.table());
    for v in report.violations.iter().take(20) {
        println!("  violation: {v}");
    }
    let failures = report.failures(&config);
    if failures.is_empty() {
        println!("stress: PASS");
        ExitCode::SUCCESS
    } else {
        for f in failures.iter().take(20) {
            println!("stress: FAIL: {f}");
        }
        ExitCode::FAILURE
    }
}

/// `testbed stress --images DIR` where the images cannot run.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn stress(args: &ImageArgs, _progress: &(dyn Fn(u64) + Sync)) -> ExitCode {
    let _ = no_images;
    println!(
        "stress: FAIL: the image host runs the .sys images on x86_64 Linux only (asked for {})",
        args.images.display()
    );
    ExitCode::FAILURE
}

/// `testbed faults --images DIR`: the systematic pass over both images,
/// then `random_runs` cycles per image failing `random_percent`% of the
/// fallible calls.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn faults(dir: &Path, random_runs: u32, random_percent: u32, seed: u64) -> ExitCode {
    use nmr_image_host::stress::{CLIENT_IMAGE, PROVIDER_IMAGE, images_present};
    use nmr_image_host::systematic;
    use nmr_image_host::{FaultMode, FaultPlan};
    if !images_present(dir) {
        return no_images(dir);
    }
    let start = std::time::Instant::now();
    let mut failed = 0;
    let mut runs = 0;
    for image in [CLIENT_IMAGE, PROVIDER_IMAGE] {
        let (sites, site_runs) = systematic::systematic(dir, image);
        println!(
            "faults: {image}: {} fallible call sites reached in a load / attach / call / unload cycle",
            sites.len()
        );
        for run in &site_runs {
            runs += 1;
            let o = &run.outcome;
            let what = if run.index == usize::MAX {
                "no call failed".to_string()
            } else {
                format!("site {}: {} failing", run.index, run.site)
            };
            let result = if o.kept_after_failed_deregistration {
                "DriverUnload kept the module (the NMR may still use it), as designed".to_string()
            } else if nmr_common::ffi::nt_success(o.entry_status) {
                format!(
                    "DriverEntry succeeded, {}",
                    if o.attached {
                        "attached"
                    } else {
                        "loaded without the binding"
                    }
                )
            } else {
                format!(
                    "DriverEntry returned {}",
                    nmr_common::ffi::status_name(o.entry_status)
                        .map_or_else(|| format!("{:#010x}", o.entry_status), str::to_owned)
                )
            };
            if o.failures.is_empty() && o.kept_after_failed_deregistration {
                println!("  {what}: {result}: OK");
            } else if o.failures.is_empty() {
                println!("  {what}: {result}; nothing left behind: OK");
            } else {
                failed += 1;
                println!("  {what}: {result}: FAIL");
                for f in &o.failures {
                    println!("    {f}");
                }
            }
        }
        let mut random_failed_calls = 0;
        for i in 0..random_runs {
            runs += 1;
            let mode = FaultMode::Random {
                seed: seed.wrapping_add(u64::from(i)),
                per_million: random_percent.min(100) * 10_000,
            };
            let o = systematic::cycle(dir, image, mode);
            random_failed_calls += o.reached.iter().filter(|r| r.failed).count();
            if !o.failures.is_empty() {
                failed += 1;
                println!(
                    "  random run {i} (seed {}): FAIL",
                    seed.wrapping_add(u64::from(i))
                );
                for r in o.reached.iter().filter(|r| r.failed) {
                    println!("    failed: {r}");
                }
                for f in &o.failures {
                    println!("    {f}");
                }
            }
        }
        if random_runs != 0 {
            println!(
                "  {random_runs} random runs failing {random_percent}% of the fallible calls \
                 ({random_failed_calls} calls failed in all)"
            );
        }
    }
    FaultPlan::set(FaultMode::Off);
    println!(
        "faults: {runs} cycles in {:.1} s, {failed} failed",
        start.elapsed().as_secs_f64()
    );
    if failed == 0 {
        println!("faults: PASS");
        ExitCode::SUCCESS
    } else {
        println!("faults: FAIL");
        ExitCode::FAILURE
    }
}

/// `testbed faults` where the images cannot run.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn faults(dir: &Path, _random_runs: u32, _random_percent: u32, _seed: u64) -> ExitCode {
    println!(
        "faults: FAIL: the image host runs the .sys images on x86_64 Linux only (asked for {})",
        dir.display()
    );
    ExitCode::FAILURE
}
