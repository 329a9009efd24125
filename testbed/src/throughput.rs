//! Calls per second through the real modules: the client's worker round
//! (`checksum` through every binding, each answer verified) and the
//! provider's (`notify` to every client), with 1 and then 2 calling threads
//! through the same single binding, side by side in one run.
//!
//! The model runs with `check_calls: false`: its R9 check takes the model's
//! state lock on every NPI call, which would measure the model, not the
//! modules. Everything else is the path a driver takes: the binding set's
//! per-processor reader lock, the per-processor rundown, the indirect call,
//! the module's own counters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use nmr_client_module::client::{ClientConfig, ClientModule};
use nmr_provider_module::provider::{ProviderConfig, ProviderModule};
use nmr_sim::{Config, Sim};

/// What to measure.
#[derive(Clone, Debug)]
pub struct ThroughputConfig {
    /// How long each (path, thread count) runs.
    pub duration: Duration,
    /// Bytes of each `checksum` payload.
    pub payload: usize,
    /// Calling threads: every count from 1 to this.
    pub max_threads: u32,
}

impl Default for ThroughputConfig {
    fn default() -> Self {
        ThroughputConfig {
            duration: Duration::from_secs(2),
            payload: 64,
            max_threads: 2,
        }
    }
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct Row {
    /// `checksum` or `notify`.
    pub path: &'static str,
    /// Calling threads.
    pub threads: u32,
    /// Calls made (and, for `checksum`, verified).
    pub calls: u64,
    /// How long the threads ran.
    pub elapsed: Duration,
}

impl Row {
    /// Calls per second.
    pub fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs every path with every thread count; one binding between one client
/// and one provider, in one model.
pub fn run(config: &ThroughputConfig) -> Vec<Row> {
    let sim = Sim::new(Config {
        check_calls: false,
        ..Config::default()
    });
    let provider = Arc::new(
        ProviderModule::load(sim.clone(), ProviderConfig::default()).expect("provider loads"),
    );
    let client =
        Arc::new(ClientModule::load(sim.clone(), ClientConfig::default()).expect("client loads"));
    assert_eq!(client.binding_count(), 1, "one binding");
    let payload: Vec<u8> = (0..config.payload).map(|i| i as u8).collect();
    let payload = Arc::new(payload);
    let mut rows = Vec::new();
    for threads in 1..=config.max_threads.max(1) {
        let (client, payload) = (client.clone(), payload.clone());
        rows.push(measure("checksum", threads, config.duration, move || {
            let verified = client.call_round(&payload);
            assert_eq!(verified, 1, "every checksum verified");
            verified
        }));
    }
    for threads in 1..=config.max_threads.max(1) {
        let provider = provider.clone();
        rows.push(measure("notify", threads, config.duration, move || {
            provider.notify_round()
        }));
    }
    let client = Arc::into_inner(client).expect("no thread holds the client");
    let provider = Arc::into_inner(provider).expect("no thread holds the provider");
    drop(client);
    drop(provider);
    sim.quiesce();
    rows
}

/// Runs `round` on `threads` threads for `duration`; counts what it returns.
fn measure(
    path: &'static str,
    threads: u32,
    duration: Duration,
    round: impl Fn() -> u64 + Send + Sync + Clone + 'static,
) -> Row {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(threads as usize + 1));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, start, round) = (stop.clone(), start.clone(), round.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut calls = 0;
                while !stop.load(Ordering::Relaxed) {
                    // A batch between looks at the flag: the flag's line is
                    // shared, and reading it on every call would be measured.
                    for _ in 0..64 {
                        calls += round();
                    }
                }
                calls
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let calls = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    Row {
        path,
        threads,
        calls,
        elapsed: began.elapsed(),
    }
}

/// The table `testbed throughput` prints: calls per second and the ratio to
/// one thread, per path.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from("| path | threads | calls/s | x 1 thread |\n|---|---|---|---|\n");
    for row in rows {
        let one = rows
            .iter()
            .find(|r| r.path == row.path && r.threads == 1)
            .map_or(f64::NAN, Row::rate);
        out += &format!(
            "| {} | {} | {:.2} M | {:.2} |\n",
            row.path,
            row.threads,
            row.rate() / 1e6,
            row.rate() / one
        );
    }
    out
}
