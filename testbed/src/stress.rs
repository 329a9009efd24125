//! The load/unload stress: N clients and M providers loaded and unloaded in
//! random order while worker threads call `checksum` and `notify` through
//! every binding, on a fresh model per phase, with detach orders and delivery
//! modes drawn from the seed. Everything is checked at the end of each phase:
//! no contract violation, no binding left, every call verified, every
//! PENDING detach completed, one cleanup per side per binding.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use nmr_client_module::client::{Client, ClientCounts};
use nmr_common::module::Unload;
use nmr_common::trace::Event;
use nmr_provider_module::provider::{Provider, ProviderCounts};
use nmr_sim::hostile::{CallAbi, DeclineTally, HostileReport, HostileSlots};
use nmr_sim::{Config, Delivery, DetachOrder, Policy, Sim};

use crate::{TestNmr, client_config, load_client, load_provider, payload, provider_config};

/// What to run.
#[derive(Clone, Debug)]
pub struct StressConfig {
    /// Stop after this many load/unload cycles (None: run for `duration`).
    pub cycles: Option<u64>,
    /// Stop after this long (when `cycles` is None).
    pub duration: Duration,
    /// Client modules that speak our NPI version.
    pub clients: u32,
    /// Provider modules.
    pub providers: u32,
    /// Extra clients that speak only a future NPI version: every provider
    /// must decline them.
    pub incompatible: u32,
    /// Hostile and outdated raw peers ([`nmr_sim::hostile`]): this many of
    /// each kind, loaded and unloaded among the modules; ours must decline
    /// or survive each one.
    pub hostile: u32,
    /// Worker threads calling through the bindings.
    pub threads: u32,
    /// Seed of everything random.
    pub seed: u64,
    /// The providers' `checksum` latency, microseconds.
    pub latency_us: u32,
    /// The clients' `notify` latency, microseconds.
    pub notify_latency_us: u32,
    /// Cycles per model instance (each phase gets a fresh model).
    pub phase_cycles: u64,
    /// Collect the modules' trace lines (`report.trace`).
    pub trace: bool,
    /// Abort the process if no load or unload finishes for this long.
    pub hang_timeout: Duration,
}

impl Default for StressConfig {
    fn default() -> Self {
        StressConfig {
            cycles: None,
            duration: Duration::from_secs(10),
            clients: 3,
            providers: 2,
            incompatible: 1,
            hostile: 1,
            threads: 4,
            seed: 1,
            latency_us: 50,
            notify_latency_us: 20,
            phase_cycles: 500,
            trace: false,
            hang_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything a run counted.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Load/unload cycles done.
    pub cycles: u64,
    /// Model instances used.
    pub phases: u64,
    /// Module loads.
    pub loads: u64,
    /// Module unloads.
    pub unloads: u64,
    /// Unloads of a client and a provider at the same moment.
    pub simultaneous_unloads: u64,
    /// The model's counters, summed over phases.
    pub nmr: nmr_sim::Stats,
    /// The clients' counters, summed.
    pub client: ClientCounts,
    /// The providers' counters, summed.
    pub provider: ProviderCounts,
    /// The hostile peers: what they saw, what ours said.
    pub hostile: HostileReport,
    /// Contract violations, as the model words them (the failing hostile
    /// client's own, expected, are counted in `hostile` instead).
    pub violations: Vec<String>,
    /// Bindings not cleaned up after everything unloaded.
    pub leaked_bindings: u64,
    /// Registrations the model still holds after everything unloaded.
    pub leaked_registrations: u64,
    /// The longest unload (deregister + wait).
    pub longest_unload: Duration,
    /// Wall time.
    pub elapsed: Duration,
    /// Module trace lines, when asked for.
    pub trace: Vec<String>,
}

impl Report {
    /// The reasons this run failed; empty when it passed.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        let n = &self.nmr;
        if !self.violations.is_empty() {
            f.push(format!("{} contract violations", self.violations.len()));
        }
        if self.leaked_bindings != 0 {
            f.push(format!("{} bindings leaked", self.leaked_bindings));
        }
        if self.leaked_registrations != 0 {
            f.push(format!(
                "{} registrations leaked",
                self.leaked_registrations
            ));
        }
        if self.client.mismatched != 0 || self.client.verified != self.client.calls {
            f.push(format!(
                "{} of {} checksum calls not verified",
                self.client.calls - self.client.verified,
                self.client.calls
            ));
        }
        f.extend(self.hostile.detach_failures(n));
        f.extend(self.hostile.failures(self.cycles >= 1_000));
        f
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let n = &self.nmr;
        let mut rows: Vec<(&str, String)> = vec![
            (
                "cycles (load or unload)",
                format!("{} in {} model instances", self.cycles, self.phases),
            ),
            (
                "loads / unloads",
                format!(
                    "{} / {} ({} client+provider at once)",
                    self.loads, self.unloads, self.simultaneous_unloads
                ),
            ),
            ("bindings attached", n.attaches.to_string()),
            (
                "attaches declined",
                format!(
                    "{} (client saw {}, provider declined {})",
                    n.attach_declines, self.client.declined, self.provider.declined
                ),
            ),
        ];
        rows.extend(self.hostile.rows());
        rows.extend(n.detach_rows());
        rows.extend([
            (
                "checksum calls made / verified",
                format!("{} / {}", self.client.calls, self.client.verified),
            ),
            (
                "notify calls made / received",
                format!(
                    "{} / {}",
                    self.provider.notifications, self.client.notifications
                ),
            ),
            (
                "calls refused while detaching",
                format!(
                    "{} (client {}, provider {})",
                    self.client.refused + self.provider.refused,
                    self.client.refused,
                    self.provider.refused
                ),
            ),
            ("contract violations", self.violations.len().to_string()),
            ("bindings leaked", self.leaked_bindings.to_string()),
            (
                "registrations leaked",
                self.leaked_registrations.to_string(),
            ),
            (
                "longest unload",
                format!("{:.1} ms", self.longest_unload.as_secs_f64() * 1e3),
            ),
            ("elapsed", format!("{:.1} s", self.elapsed.as_secs_f64())),
        ]);
        for processors in [host_processors(), 64] {
            rows.push((
                "heap bytes per binding side",
                binding_memory(processors as usize),
            ));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "  {k:<width$}  {v}");
        }
        out
    }
}

/// The host's processor count (what the phases with no forced count size
/// their per-processor memory for).
fn host_processors() -> u32 {
    use nmr_common::nmr::Nmr as _;
    Sim::new(Config::default()).processor_count()
}

/// One binding side's heap bytes when sized for `processors`: the binding
/// (boxed: exactly its size) and its 8-byte rundown slot per processor in
/// the module's arena, plus the arena chunk's bookkeeping per 16 sides.
fn binding_memory(processors: usize) -> String {
    use nmr_client_module::client::ProviderBinding;
    use nmr_common::arena::{SLOTS_PER_PAGE, SlotArena};
    use nmr_provider_module::provider::ClientBinding;
    let arena = SlotArena::new(processors);
    let slots = processors * size_of::<usize>();
    format!(
        "client {} + provider {} (struct) + {} (slots) each; arena chunk {} per {} sides; \
         sized for {} processors",
        size_of::<ProviderBinding<TestNmr>>(),
        size_of::<ClientBinding<TestNmr>>(),
        slots,
        arena.chunk_bytes(),
        SLOTS_PER_PAGE,
        processors,
    )
}

enum Module {
    Client(Arc<Client<TestNmr>>),
    Provider(Arc<Provider<TestNmr>>),
}

impl Module {
    fn unload(&self) {
        match self {
            Module::Client(c) => c.unload(),
            Module::Provider(p) => p.unload(),
        };
    }
}

struct Slot {
    module: RwLock<Option<Module>>,
    make: Box<dyn Fn(&TestNmr) -> Module + Send + Sync>,
}

/// Runs the stress; `progress` is called after every cycle with the cycles
/// done so far.
pub fn run(config: &StressConfig, progress: &(dyn Fn(u64) + Sync)) -> Report {
    let start = Instant::now();
    let mut report = Report::default();
    report.hostile.per_kind = config.hostile;
    let heartbeat = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let watchdog = spawn_watchdog(heartbeat.clone(), finished.clone(), config.hang_timeout);
    let mut rng = fastrand::Rng::with_seed(config.seed);
    loop {
        let done = match config.cycles {
            Some(total) => report.cycles >= total,
            None => start.elapsed() >= config.duration,
        };
        if done {
            break;
        }
        let budget = match config.cycles {
            Some(total) => (total - report.cycles).min(config.phase_cycles),
            None => config.phase_cycles,
        };
        let phase = report.phases;
        let sim_config = Config {
            detach_order: [
                DetachOrder::Random,
                DetachOrder::ClientFirst,
                DetachOrder::ProviderFirst,
            ][(phase / 3 % 3) as usize],
            // Every delivery with every order, over nine phases.
            delivery: [Delivery::Inline, Delivery::Worker, Delivery::Parallel]
                [(phase % 3) as usize],
            seed: rng.u64(..),
            detach_at_dispatch: true,
            policy: Policy::Record,
            echo: false,
            // The per-processor rundowns and binding-set locks with the
            // host's processors, one slot, three slots the worker threads
            // spread over, and a 64-processor server's worth: every 27 phases.
            processors: [None, Some(1), Some(3), Some(64)][(phase / 9 % 4) as usize],
            check_calls: true,
        };
        run_phase(
            config,
            sim_config,
            budget,
            start,
            &mut rng,
            &mut report,
            &heartbeat,
            progress,
        );
        report.phases += 1;
    }
    finished.store(true, Relaxed);
    let _ = watchdog.join();
    report.elapsed = start.elapsed();
    report
}

fn spawn_watchdog(
    heartbeat: Arc<AtomicU64>,
    finished: Arc<AtomicBool>,
    timeout: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last = (heartbeat.load(Relaxed), Instant::now());
        while !finished.load(Relaxed) {
            std::thread::park_timeout(Duration::from_millis(100));
            let beat = heartbeat.load(Relaxed);
            if beat != last.0 {
                last = (beat, Instant::now());
            } else if last.1.elapsed() > timeout {
                eprintln!(
                    "HANG: no load or unload finished in {timeout:?} (after {beat} steps); aborting"
                );
                std::process::exit(3);
            }
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn run_phase(
    config: &StressConfig,
    sim_config: Config,
    budget: u64,
    start: Instant,
    rng: &mut fastrand::Rng,
    report: &mut Report,
    heartbeat: &AtomicU64,
    progress: &(dyn Fn(u64) + Sync),
) {
    let nmr = TestNmr::new(Sim::new(sim_config));
    let mut slots: Vec<Slot> = Vec::new();
    let (latency, notify_delay) = (config.latency_us, config.notify_latency_us);
    for i in 0..config.clients + config.incompatible {
        let compatible = i < config.clients;
        slots.push(Slot {
            module: RwLock::new(None),
            make: Box::new(move |nmr| {
                let mut c = client_config(i);
                c.notify_delay_us = notify_delay;
                if !compatible {
                    c.versions = crate::FUTURE_VERSIONS;
                }
                Module::Client(Arc::new(load_client(nmr, c)))
            }),
        });
    }
    for i in 0..config.providers {
        slots.push(Slot {
            module: RwLock::new(None),
            make: Box::new(move |nmr| {
                let mut p = provider_config(i);
                p.latency_us = latency;
                Module::Provider(Arc::new(load_provider(nmr, p)))
            }),
        });
    }
    // The hostile peers: toggled by this thread only, a quarter of the cycles.
    let mut hostile = HostileSlots::new(nmr.sim(), CallAbi::System, config.hostile);
    let declines = Arc::new(DeclineTally::default());
    let tally = declines.clone();
    nmr.observe_traces(Box::new(move |record| {
        if matches!(record.event, Event::AttachDeclined | Event::PeerFault) {
            tally.observe(&record.to_string());
        }
    }));
    let clients = (config.clients + config.incompatible) as usize;
    let stop = AtomicBool::new(false);
    let mut retired: Vec<Module> = Vec::new();
    let mut retire = |m: Module, report: &mut Report| {
        retired.push(m);
        report.unloads += 1;
    };

    std::thread::scope(|s| {
        for t in 0..config.threads {
            let (slots, stop, seed) = (&slots, &stop, rng.u64(..));
            s.spawn(move || worker(slots, stop, seed ^ u64::from(t)));
        }
        let mut cycles = 0;
        while cycles < budget && (config.cycles.is_some() || start.elapsed() < config.duration) {
            let both = rng.u8(..8) == 0;
            let c = rng.usize(..clients);
            let p = clients + rng.usize(..slots.len() - clients);
            if !hostile.is_empty() && rng.u8(..4) == 0 {
                hostile.toggle(rng.usize(..hostile.len()), &mut report.hostile);
            } else if both
                && slots[c].module.read().unwrap().is_some()
                && slots[p].module.read().unwrap().is_some()
            {
                // Scenario 13: a client and a provider deregister at the same time.
                let (mc, mp) = (take(&slots[c]), take(&slots[p]));
                let (tc, tp) = std::thread::scope(|u| {
                    let a = u.spawn(|| timed(|| mc.unload()));
                    let b = u.spawn(|| timed(|| mp.unload()));
                    (a.join().unwrap(), b.join().unwrap())
                });
                report.longest_unload = report.longest_unload.max(tc).max(tp);
                report.simultaneous_unloads += 1;
                retire(mc, report);
                retire(mp, report);
            } else {
                let i = rng.usize(..slots.len());
                let loaded = slots[i].module.read().unwrap().is_some();
                if loaded {
                    let m = take(&slots[i]);
                    report.longest_unload = report.longest_unload.max(timed(|| m.unload()));
                    retire(m, report);
                } else {
                    let m = (slots[i].make)(&nmr);
                    *slots[i].module.write().unwrap() = Some(m);
                    report.loads += 1;
                }
            }
            cycles += 1;
            report.cycles += 1;
            heartbeat.fetch_add(1, Relaxed);
            progress(report.cycles);
        }
        // End of phase: unload whatever is still loaded, workers still running.
        hostile.unload_all(&mut report.hostile);
        for slot in &slots {
            if slot.module.read().unwrap().is_some() {
                let m = take(slot);
                report.longest_unload = report.longest_unload.max(timed(|| m.unload()));
                retire(m, report);
                heartbeat.fetch_add(1, Relaxed);
            }
        }
        stop.store(true, Relaxed);
    });

    // Workers have ended: every module's counters are final.
    for m in &retired {
        match m {
            Module::Client(c) => {
                let k = c.counts();
                report.client.add(&k);
                report.leaked_bindings += k.attached - k.cleaned_up + c.binding_count() as u64;
            }
            Module::Provider(p) => {
                let k = p.counts();
                report.provider.add(&k);
                report.leaked_bindings += k.attached - k.cleaned_up + p.binding_count() as u64;
            }
        }
    }
    drop(retired);
    let sim = nmr.sim();
    sim.quiesce();
    report.leaked_bindings += sim.live_bindings() as u64;
    report.leaked_registrations += sim.live_registrations() as u64;
    let violations = report.hostile.take_expected(sim.violations());
    report
        .violations
        .extend(violations.iter().map(|v| v.to_string()));
    report.hostile.add_declines(&declines.counts());
    report.nmr.add(&sim.stats());
    if config.trace {
        report.trace.extend(
            sim.events()
                .iter()
                .filter(|e| e.module_event().is_some())
                .map(|e| e.to_string()),
        );
    }
}

fn take(slot: &Slot) -> Module {
    slot.module
        .write()
        .unwrap()
        .take()
        .expect("slot was loaded")
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// A worker: calls through a random loaded module, round after round.
fn worker(slots: &[Slot], stop: &AtomicBool, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let data = payload(seed);
    while !stop.load(Relaxed) {
        let slot = &slots[rng.usize(..slots.len())];
        let module = match &*slot.module.read().unwrap() {
            Some(Module::Client(c)) => Module::Client(c.clone()),
            Some(Module::Provider(p)) => Module::Provider(p.clone()),
            None => {
                std::thread::yield_now();
                continue;
            }
        };
        // The slot lock is dropped: the controller may unload the module
        // while this call runs, which is the point.
        match &module {
            Module::Client(c) => {
                c.call_round(&data);
            }
            Module::Provider(p) => {
                p.notify_round();
            }
        }
    }
}
