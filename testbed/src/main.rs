//! `testbed`: runs the real client and provider modules on the NMR model.
//!
//! `testbed stress` is the project's main job: load/unload stress with NPI
//! calls flowing both ways; it prints a summary table and exits non-zero if
//! anything broke the contract, leaked, hung or answered wrong.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use testbed::alloc_count;
use testbed::stress::{self, StressConfig};

#[global_allocator]
static ALLOCATOR: alloc_count::Counting = alloc_count::Counting;

#[derive(Parser)]
#[command(
    version,
    about = "Runs the NMR client and provider modules on the NMR model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load/unload stress with checksum and notify calls in flight.
    Stress(StressArgs),
    /// One healthy sequence, traced: provider and client load and attach, the
    /// provider unloads while a checksum call is in flight, then the client
    /// unloads. Prints the lines DbgPrintEx would show.
    Demo {
        /// Also print the model's own events (`nmr: ...` lines).
        #[arg(long)]
        nmr: bool,
    },
    /// Calls per second through the real modules (checksum and notify, one
    /// binding) with 1 and 2 calling threads, side by side. Build with
    /// --release.
    Throughput {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Bytes per checksum payload.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Calling threads, from 1 up to this.
        #[arg(long, default_value_t = 2)]
        threads: u32,
    },
    /// Systematic fault injection on the shipped images (x86_64 Linux): a
    /// load/attach/call/unload cycle per fallible call, that call failing.
    Faults(FaultsArgs),
}

#[derive(clap::Args)]
struct FaultsArgs {
    /// The directory holding nmr_client.sys and nmr_provider.sys.
    #[arg(long, default_value = "target/sys")]
    images: std::path::PathBuf,
    /// Also this many cycles per image with a seeded random fraction of the
    /// fallible calls failing (Driver Verifier's low-resources simulation).
    #[arg(long, default_value_t = 20)]
    random_runs: u32,
    /// The fraction failed in the random runs, in percent.
    #[arg(long, default_value_t = 30)]
    random_percent: u32,
    /// Seed of the random runs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(clap::Args)]
struct StressArgs {
    /// Stop after this many load/unload cycles (default: run for --duration).
    #[arg(long)]
    cycles: Option<u64>,
    /// Seconds to run when --cycles is not given.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Client modules.
    #[arg(long, default_value_t = 3)]
    clients: u32,
    /// Provider modules.
    #[arg(long, default_value_t = 2)]
    providers: u32,
    /// Extra clients speaking a future NPI version, which providers must decline.
    #[arg(long, default_value_t = 1)]
    incompatible: u32,
    /// Worker threads making calls.
    #[arg(long, default_value_t = 4)]
    threads: u32,
    /// Seed of every random choice (orders, delivery modes, payloads).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Microseconds each checksum call takes in the provider.
    #[arg(long, default_value_t = 50)]
    latency_us: u32,
    /// Microseconds each notify call takes in the client.
    #[arg(long, default_value_t = 20)]
    notify_latency_us: u32,
    /// Cycles per model instance (default: 500; 40 with --images).
    #[arg(long)]
    phase_cycles: Option<u64>,
    /// Run the shipped images from this directory (nmr_client.sys,
    /// nmr_provider.sys: `cargo xtask package` writes target/sys)
    /// instead of the modules compiled for the host. x86_64 Linux only.
    #[arg(long)]
    images: Option<std::path::PathBuf>,
    /// With --images: the longest a driver's worker thread sleeps between
    /// rounds, in microseconds (the drivers ask for 10 ms).
    #[arg(long, default_value_t = 200)]
    worker_period_us: u32,
    /// Print the modules' trace lines, as DbgPrintEx shows them in WinDbg.
    #[arg(long)]
    trace: bool,
}

fn main() -> ExitCode {
    let args = match Cli::parse().command {
        Command::Stress(args) => args,
        Command::Demo { nmr } => {
            for line in testbed::demo::run(nmr) {
                println!("{line}");
            }
            return ExitCode::SUCCESS;
        }
        Command::Throughput {
            seconds,
            payload,
            threads,
        } => {
            let config = testbed::throughput::ThroughputConfig {
                duration: Duration::from_secs_f64(seconds.max(0.01)),
                payload,
                max_threads: threads,
            };
            let rows = testbed::throughput::run(&config);
            println!("throughput: one binding, {payload}-byte checksum payloads, {seconds} s each");
            print!("{}", testbed::throughput::table(&rows));
            return ExitCode::SUCCESS;
        }
        Command::Faults(args) => {
            return testbed::images::faults(
                &args.images,
                args.random_runs,
                args.random_percent,
                args.seed,
            );
        }
    };
    if let Some(dir) = &args.images {
        let config = testbed::images::ImageArgs {
            images: dir.clone(),
            cycles: args.cycles,
            duration: Duration::from_secs_f64(args.duration.max(0.0)),
            seed: args.seed,
            latency_us: args.latency_us,
            worker_period_us: args.worker_period_us,
            phase_cycles: args.phase_cycles.unwrap_or(40).max(1),
            trace: args.trace,
        };
        return with_progress(config.cycles, config.duration, |progress| {
            testbed::images::stress(&config, progress)
        });
    }
    let config = StressConfig {
        cycles: args.cycles,
        duration: Duration::from_secs_f64(args.duration.max(0.0)),
        clients: args.clients.max(1),
        providers: args.providers.max(1),
        incompatible: args.incompatible,
        threads: args.threads,
        seed: args.seed,
        latency_us: args.latency_us,
        notify_latency_us: args.notify_latency_us,
        phase_cycles: args.phase_cycles.unwrap_or(500).max(1),
        trace: args.trace,
        ..StressConfig::default()
    };
    println!(
        "stress: {} clients (+{} incompatible), {} providers, {} worker threads, seed {}, {}",
        config.clients,
        config.incompatible,
        config.providers,
        config.threads,
        config.seed,
        match config.cycles {
            Some(c) => format!("{c} cycles"),
            None => format!("{:.0} s", config.duration.as_secs_f64()),
        }
    );
    let report = with_progress(config.cycles, config.duration, |progress| {
        stress::run(&config, progress)
    });
    for line in &report.trace {
        println!("{line}");
    }
    println!("summary:");
    print!("{}", report.table());
    for v in report.violations.iter().take(20) {
        println!("  violation: {v}");
    }
    let failures = report.failures();
    if failures.is_empty() {
        println!("stress: PASS");
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            println!("stress: FAIL: {f}");
        }
        ExitCode::FAILURE
    }
}

/// Runs `job` with the progress display: a bar on a terminal, else a line
/// every two seconds. `job` reports the cycle count through its argument.
fn with_progress<R>(
    cycles: Option<u64>,
    duration: Duration,
    job: impl FnOnce(&(dyn Fn(u64) + Sync)) -> R,
) -> R {
    if std::io::stderr().is_terminal() {
        let bar = match cycles {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::new(duration.as_millis() as u64),
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
                .expect("a valid template"),
        );
        let start = std::time::Instant::now();
        let by_cycles = cycles.is_some();
        let result = job(&|cycles| {
            if cycles % 16 == 0 {
                bar.set_position(if by_cycles {
                    cycles
                } else {
                    start.elapsed().as_millis() as u64
                });
                bar.set_message(format!("{cycles} cycles"));
            }
        });
        bar.finish_and_clear();
        result
    } else {
        let last = std::sync::Mutex::new(std::time::Instant::now());
        job(&|cycles| {
            let mut last = last.lock().unwrap();
            if last.elapsed() >= Duration::from_secs(2) {
                *last = std::time::Instant::now();
                println!("  ... {cycles} cycles");
            }
        })
    }
}
