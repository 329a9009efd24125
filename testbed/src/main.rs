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
    /// Cycles per model instance.
    #[arg(long, default_value_t = 500)]
    phase_cycles: u64,
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
    };
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
        phase_cycles: args.phase_cycles.max(1),
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
    let report = if std::io::stderr().is_terminal() {
        let bar = match config.cycles {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::new(config.duration.as_millis() as u64),
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
                .expect("a valid template"),
        );
        let start = std::time::Instant::now();
        let by_cycles = config.cycles.is_some();
        let report = stress::run(&config, &|cycles| {
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
        report
    } else {
        let last = std::sync::Mutex::new(std::time::Instant::now());
        stress::run(&config, &|cycles| {
            let mut last = last.lock().unwrap();
            if last.elapsed() >= Duration::from_secs(2) {
                *last = std::time::Instant::now();
                println!("  ... {cycles} cycles");
            }
        })
    };
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
