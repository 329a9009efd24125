//! The load/unload stress on the shipped images: both drivers loaded and
//! unloaded in random orders (each load a fresh mapping, as `sc start`
//! reloads the image from disk), their worker threads calling each other
//! meanwhile, a fresh model per phase going through every detach order and
//! delivery, and the call latency knob holding calls in flight so that
//! detaches return PENDING. Everything is checked at the end of each phase.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nmr_common::ffi::nt_success;
use nmr_sim::hostile::{CallAbi, DeclineTally, HostileReport, HostileSlots};
use nmr_sim::{Config, Sim, Stats};

use crate::driver::Driver;
use crate::model::ModelBinding;
use crate::ntoskrnl::{self, ThreadStats};
use crate::pool::{self, PoolStats};
use crate::problems;

/// The two images.
pub const CLIENT_IMAGE: &str = "nmr_client.sys";
/// The provider image.
pub const PROVIDER_IMAGE: &str = "nmr_provider.sys";

/// What to run.
#[derive(Clone, Debug)]
pub struct ImageStressConfig {
    /// The directory holding `nmr_client.sys` and `nmr_provider.sys`.
    pub images: PathBuf,
    /// Stop after this many load/unload cycles (None: run for `duration`).
    pub cycles: Option<u64>,
    /// Stop after this long (when `cycles` is None).
    pub duration: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// Microseconds each worker NPI call is held in flight (see
    /// [`ntoskrnl::set_call_latency_us`]).
    pub latency_us: u32,
    /// The longest a driver's worker sleeps between rounds, microseconds.
    pub worker_period_us: u32,
    /// Cycles per model instance.
    pub phase_cycles: u64,
    /// Collect the drivers' DbgPrintEx lines.
    pub trace: bool,
    /// Hostile and outdated raw peers ([`nmr_sim::hostile`]), this many of
    /// each kind, loaded and unloaded among the images.
    pub hostile: u32,
}

impl Default for ImageStressConfig {
    fn default() -> Self {
        ImageStressConfig {
            images: PathBuf::from("target/sys"),
            cycles: None,
            duration: Duration::from_secs(10),
            seed: 1,
            latency_us: 200,
            worker_period_us: 200,
            phase_cycles: 40,
            trace: false,
            hostile: 1,
        }
    }
}

/// Everything a run counted.
#[derive(Clone, Debug, Default)]
pub struct ImageReport {
    /// Load/unload cycles.
    pub cycles: u64,
    /// Model instances.
    pub phases: u64,
    /// DriverEntry calls / DriverUnload calls.
    pub loads: u64,
    /// DriverUnload calls.
    pub unloads: u64,
    /// Unloads of both drivers at the same moment, on two threads.
    pub simultaneous_unloads: u64,
    /// The model's counters, summed over phases.
    pub nmr: Stats,
    /// NPI calls into the provider (checksum, get_info) / into the client (notify).
    pub calls_into_provider: u64,
    /// NPI calls into the client.
    pub calls_into_client: u64,
    /// The hostile peers: what they saw, what the images said.
    pub hostile: HostileReport,
    /// Contract violations, as the model words them (the failing hostile
    /// client's own, expected, are counted in `hostile` instead).
    pub violations: Vec<String>,
    /// What the stand-ins saw (leaks, bad frees, overruns, no DriverUnload...).
    pub problems: Vec<String>,
    /// DriverEntry failures (none expected without fault injection).
    pub failed_loads: Vec<String>,
    /// Bindings / registrations the model still held after a phase.
    pub leaked_bindings: u64,
    /// Registrations left.
    pub leaked_registrations: u64,
    /// Pool figures.
    pub pool: PoolStats,
    /// Pool blocks of this run's loads still live at the end.
    pub pool_live_blocks: usize,
    /// Thread figures.
    pub threads: ThreadStats,
    /// Stack figures of the entries into image code (nested NMR path, host entries).
    pub entries: crate::stack::EntryStats,
    /// The most host stack the model used between an NMR call and a callback.
    pub model_path_bytes: usize,
    /// DbgPrintEx lines Windows shows without a Debug Print Filter.
    pub trace_lines_shown_by_default: u64,
    /// Spin lock acquires checked, and those nested under another lock.
    pub lock_acquires: (u64, u64),
    /// DbgPrintEx lines.
    pub trace_lines: u64,
    /// The longest DriverUnload.
    pub longest_unload: Duration,
    /// Wall time.
    pub elapsed: Duration,
    /// Trace lines, when asked for.
    pub trace: Vec<String>,
    /// The load serial of every driver this run loaded.
    pub loaded_ids: Vec<u64>,
    /// One binding's pool bytes, measured at the start (see
    /// [`BindingMemory`]); `None` when the measurement's loads failed.
    pub binding_memory: Option<BindingMemory>,
}

/// What one binding costs in pool, measured on the images: the provider is
/// loaded alone, then the client (one binding, one side each), then the
/// client is unloaded (the provider's side is cleaned up and freed).
#[derive(Debug, Clone, Copy, Default)]
pub struct BindingMemory {
    /// The processor count the images sized their per-processor memory for
    /// (`KeQueryMaximumProcessorCountEx` stand-in).
    pub processors: u32,
    /// Pool bytes the provider's binding side holds while attached and frees
    /// at its cleanup: the binding itself (its 8-byte rundown slot per
    /// processor lives in the module's arena, below).
    pub side_bytes: u64,
    /// Pool bytes the provider's first attach allocated that stay with the
    /// module after the cleanup: its slot arena's first chunk (one 128-byte
    /// line per processor for 16 binding sides) and its binding list.
    pub kept_by_module: u64,
}

impl ImageReport {
    /// The reasons the run failed; empty when it passed.
    pub fn failures(&self, config: &ImageStressConfig) -> Vec<String> {
        let n = &self.nmr;
        let mut f = Vec::new();
        if !self.violations.is_empty() {
            f.push(format!("{} contract violations", self.violations.len()));
        }
        for p in &self.problems {
            f.push(p.clone());
        }
        for l in &self.failed_loads {
            f.push(l.clone());
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
        if self.pool_live_blocks != 0 {
            f.push(format!(
                "{} pool blocks live at the end",
                self.pool_live_blocks
            ));
        }
        if self.threads.running != 0 {
            f.push(format!(
                "{} driver threads still running at the end",
                self.threads.running
            ));
        }
        let declined = n.attach_declines - self.hostile.declines_involving_hostile();
        if declined != 0 {
            f.push(format!(
                "{declined} of {} attach offers between the client and the provider were declined \
                 (they speak the same NPI version: every attach must succeed)",
                n.attach_offers
            ));
        }
        if self.loads > 2 && n.bindings_made == 0 {
            f.push("the client and the provider never attached".into());
        }
        if self.loads > 2 && (self.calls_into_provider == 0 || self.calls_into_client == 0) {
            f.push(format!(
                "NPI calls did not flow both ways ({} into the provider, {} into the client)",
                self.calls_into_provider, self.calls_into_client
            ));
        }
        // Coverage, not correctness: whether a detach lands while a held
        // call is in flight is up to the scheduler. Over 1,000 cycles it
        // happens many times (3,000 cycles see dozens to hundreds of PENDING
        // detaches per side); a shorter run may by chance see none, so it is
        // not asked to.
        if config.latency_us != 0
            && self.cycles >= 1_000
            && n.client_detach_pending + n.provider_detach_pending == 0
        {
            f.push("no detach returned PENDING although calls were held in flight".into());
        }
        // Coverage, like PENDING above: the completion of a held call runs
        // the cleanup callbacks nested on the worker's kernel stack.
        if config.latency_us != 0 && self.cycles >= 1_000 && self.entries.nested_entries == 0 {
            f.push(
                "no callback ran nested under an NMR call on a worker's kernel stack \
                 (worker -> NPI call -> release -> Nmr*DetachComplete -> cleanup)"
                    .into(),
            );
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
                    "{} / {} ({} client+provider at once), each load a fresh mapping",
                    self.loads, self.unloads, self.simultaneous_unloads
                ),
            ),
            ("bindings attached", n.bindings_made.to_string()),
            ("attaches declined", n.attach_declines.to_string()),
        ];
        rows.extend(self.hostile.rows());
        rows.extend(n.detach_rows());
        rows.extend([
            (
                "NPI calls into provider / client",
                format!("{} / {}", self.calls_into_provider, self.calls_into_client),
            ),
            ("contract violations", self.violations.len().to_string()),
            (
                "host problems (leaks, bad frees...)",
                self.problems.len().to_string(),
            ),
            (
                "bindings / registrations leaked",
                format!("{} / {}", self.leaked_bindings, self.leaked_registrations),
            ),
            (
                "pool allocations / frees",
                format!(
                    "{} / {} ({} live at the end)",
                    self.pool.allocations, self.pool.frees, self.pool_live_blocks
                ),
            ),
            (
                "pool peak",
                format!(
                    "{} blocks, {} bytes",
                    self.pool.peak_blocks, self.pool.peak_bytes
                ),
            ),
            (
                "system threads created / peak",
                format!(
                    "{} / {} at once ({} running at the end)",
                    self.threads.created, self.threads.peak_running, self.threads.running
                ),
            ),
            (
                "deepest kernel stack use",
                format!(
                    "{} of {} bytes ({:.0}%)",
                    self.threads.stack_peak,
                    crate::stack::KERNEL_STACK_SIZE,
                    100.0 * self.threads.stack_peak as f64 / crate::stack::KERNEL_STACK_SIZE as f64
                ),
            ),
            (
                "deepest stack, worker->NMR->cleanup",
                format!(
                    "{} of {} bytes ({:.0}%; {} nested entries; NETIO frames charged {} bytes \
                     each, the model itself used {})",
                    self.entries.nested_peak,
                    crate::stack::KERNEL_STACK_SIZE,
                    100.0 * self.entries.nested_peak as f64
                        / crate::stack::KERNEL_STACK_SIZE as f64,
                    self.entries.nested_entries,
                    crate::stack::NETIO_FRAME_BUDGET,
                    self.model_path_bytes
                ),
            ),
            (
                "deepest stack, DriverEntry/Unload",
                format!(
                    "{} of {} bytes ({} entries from the host, each on its own 24 KiB stack)",
                    self.entries.host_entry_peak,
                    crate::stack::KERNEL_STACK_SIZE,
                    self.entries.host_entries
                ),
            ),
            (
                "spin lock acquires checked / nested",
                format!(
                    "{} / {} (IRQL, owner, NewIrql and lock order checked at each)",
                    self.lock_acquires.0, self.lock_acquires.1
                ),
            ),
            ("DbgPrintEx lines", self.trace_lines.to_string()),
            (
                "DbgPrintEx lines shown by default",
                format!(
                    "{} (the rest need a Debug Print Filter for component 80)",
                    self.trace_lines_shown_by_default
                ),
            ),
            (
                "faults",
                "0 (a fault stops the run with exit status 4)".into(),
            ),
            (
                "longest DriverUnload",
                format!("{:.1} ms", self.longest_unload.as_secs_f64() * 1e3),
            ),
            ("elapsed", format!("{:.1} s", self.elapsed.as_secs_f64())),
        ]);
        if let Some(m) = self.binding_memory {
            rows.push((
                "pool bytes per binding side",
                format!(
                    "{} freed at cleanup + {} kept by the module from its first attach \
                     (slot arena chunk for 16 sides, list), sized for {} processors",
                    m.side_bytes, m.kept_by_module, m.processors
                ),
            ));
        }
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("  {k:<36} {v}\n"));
        }
        out
    }
}

/// Whether `dir` holds both images.
pub fn images_present(dir: &Path) -> bool {
    dir.join(CLIENT_IMAGE).is_file() && dir.join(PROVIDER_IMAGE).is_file()
}

/// xorshift64*: the stress needs no better.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 33) % n
    }
}

struct Slots {
    client: Option<Driver>,
    provider: Option<Driver>,
}

fn load(dir: &Path, image: &str, report: &mut ImageReport) -> Option<Driver> {
    let mut d = match Driver::load(&dir.join(image)) {
        Ok(d) => d,
        Err(e) => {
            report.failed_loads.push(format!("{image}: {e}"));
            return None;
        }
    };
    report.loads += 1;
    report.loaded_ids.push(d.id());
    let status = d.start();
    if !nt_success(status) {
        report
            .failed_loads
            .push(format!("{image}: DriverEntry returned {status:#010x}"));
        return None;
    }
    Some(d)
}

/// Measures [`BindingMemory`] with one provider and one client load. The
/// loads count in `report`'s leak checks, not in its cycles.
fn measure_binding_memory(dir: &Path, report: &mut ImageReport) -> Option<BindingMemory> {
    let mut scratch = ImageReport::default();
    let provider = load(dir, PROVIDER_IMAGE, &mut scratch);
    let client = provider
        .as_ref()
        .and_then(|_| load(dir, CLIENT_IMAGE, &mut scratch));
    report.loaded_ids.extend(scratch.loaded_ids.iter().copied());
    report.failed_loads.append(&mut scratch.failed_loads);
    let (provider, client) = match (provider, client) {
        (Some(p), Some(c)) => (p, c),
        (p, c) => {
            p.into_iter().chain(c).for_each(|d| unload(d, &mut scratch));
            return None;
        }
    };
    let id = provider.id();
    let before_unload = pool::live_bytes_of(id);
    unload(client, &mut scratch);
    let after_cleanup = pool::live_bytes_of(id);
    // The provider's own bytes before any binding: unload and load again
    // would be a new image; instead its first-attach growth is what stays
    // above the module's load-time bytes, recorded by a second, unbound
    // provider load.
    unload(provider, &mut scratch);
    let alone = load(dir, PROVIDER_IMAGE, &mut scratch)?;
    report.loaded_ids.extend(scratch.loaded_ids.last().copied());
    let module_bytes = pool::live_bytes_of(alone.id());
    unload(alone, &mut scratch);
    Some(BindingMemory {
        processors: crate::ntoskrnl::ke_query_maximum_processor_count_ex(0),
        side_bytes: before_unload.saturating_sub(after_cleanup),
        kept_by_module: after_cleanup.saturating_sub(module_bytes),
    })
}

fn unload(mut d: Driver, report: &mut ImageReport) {
    let t = Instant::now();
    if d.stop() {
        report.unloads += 1;
    }
    report.longest_unload = report.longest_unload.max(t.elapsed());
}

/// Runs the stress; `progress` is called with the cycle count after each cycle.
pub fn run(config: &ImageStressConfig, progress: &dyn Fn(u64)) -> Result<ImageReport, String> {
    if !images_present(&config.images) {
        return Err(format!(
            "no driver images in {}: build them with `cargo xtask package`",
            config.images.display()
        ));
    }
    let start = Instant::now();
    // First: the stand-ins' knobs, plan and problems are process-global, and
    // the binding is what serialises their users.
    let binding = ModelBinding::bind(Sim::new(Config::default().recording()));
    let mut report = ImageReport::default();
    report.hostile.per_kind = config.hostile;
    // The hostile peers stand for other drivers: the functions their tables
    // hand out would be entries of those drivers' guard tables, valid CFG
    // targets (exactly those addresses; anything else is still stopped).
    for target in nmr_sim::hostile::call_targets(CallAbi::Win64) {
        crate::cfg::allow_export(target);
    }
    let trace = Arc::new(Mutex::new(Vec::new()));
    // The images' declines and unused bindings, by reason, for the hostile
    // peers' books (every line: the sink sees them all).
    let declines = Arc::new(DeclineTally::default());
    {
        let (t, d, keep) = (trace.clone(), declines.clone(), config.trace);
        ntoskrnl::set_trace_sink(Some(Box::new(move |l| {
            d.observe(l);
            if keep {
                t.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(l.to_owned())
            }
        })));
    }
    ntoskrnl::set_call_latency_us(config.latency_us);
    ntoskrnl::set_delay_cap_us(config.worker_period_us);
    crate::plan::FaultPlan::set(crate::plan::FaultMode::Off);
    let _ = problems::take();
    let (pool0, threads0, lines0) = (
        pool::stats(),
        ntoskrnl::thread_stats(),
        ntoskrnl::trace_lines(),
    );
    report.binding_memory = measure_binding_memory(&config.images, &mut report);
    let shown0 = ntoskrnl::trace_lines_shown_by_default();
    let entries0 = crate::stack::entry_stats();
    let locks0 = ntoskrnl::lock_stats();
    let calls0 = (
        crate::dispatch::calls_into(PROVIDER_IMAGE),
        crate::dispatch::calls_into(CLIENT_IMAGE),
    );

    let configs = Config::all_orders();
    let mut rng = Rng(config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let done = |cycles: u64| match config.cycles {
        Some(n) => cycles >= n,
        None => start.elapsed() >= config.duration,
    };
    let heartbeat = Arc::new(AtomicU64::new(0));
    let watchdog = {
        let hb = heartbeat.clone();
        std::thread::spawn(move || {
            let mut last = (0, Instant::now());
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let now = hb.load(Ordering::Relaxed);
                if now == u64::MAX {
                    return;
                }
                if now != last.0 {
                    last = (now, Instant::now());
                } else if last.1.elapsed() > Duration::from_secs(30) {
                    eprintln!("HANG: no load or unload finished for 30 s (after {now} cycles)");
                    std::process::exit(3);
                }
            }
        })
    };
    while !done(report.cycles) {
        let sim_config = Config {
            seed: config.seed.wrapping_add(report.phases),
            ..configs[(report.phases as usize) % configs.len()].clone()
        }
        .recording();
        let sim = Sim::new(sim_config);
        binding.rebind(sim.clone());
        report.phases += 1;
        let mut slots = Slots {
            client: None,
            provider: None,
        };
        let mut hostile = HostileSlots::new(&sim, CallAbi::Win64, config.hostile);
        let mut phase_cycles = 0;
        while phase_cycles < config.phase_cycles && !done(report.cycles) {
            let both_loaded = slots.client.is_some() && slots.provider.is_some();
            if !hostile.is_empty() && rng.below(4) == 0 {
                // A hostile peer, a quarter of the cycles.
                let pick = rng.below(hostile.len() as u64) as usize;
                hostile.toggle(pick, &mut report.hostile);
                report.cycles += 1;
                phase_cycles += 1;
            } else if both_loaded && rng.below(8) == 0 {
                // Both at once, on two threads.
                let (c, p) = (
                    slots.client.take().expect("loaded"),
                    slots.provider.take().expect("loaded"),
                );
                let (mut rc, mut rp) = (ImageReport::default(), ImageReport::default());
                std::thread::scope(|s| {
                    s.spawn(|| unload(c, &mut rc));
                    s.spawn(|| unload(p, &mut rp));
                });
                report.unloads += rc.unloads + rp.unloads;
                report.longest_unload = report
                    .longest_unload
                    .max(rc.longest_unload)
                    .max(rp.longest_unload);
                report.simultaneous_unloads += 1;
                report.cycles += 2;
                phase_cycles += 2;
            } else {
                let (slot, image) = if rng.below(2) == 0 {
                    (&mut slots.client, CLIENT_IMAGE)
                } else {
                    (&mut slots.provider, PROVIDER_IMAGE)
                };
                match slot.take() {
                    Some(d) => unload(d, &mut report),
                    None => *slot = load(&config.images, image, &mut report),
                }
                report.cycles += 1;
                phase_cycles += 1;
            }
            heartbeat.store(report.cycles, Ordering::Relaxed);
            progress(report.cycles);
            // Let the workers call each other for a moment.
            std::thread::sleep(Duration::from_micros(
                u64::from(config.worker_period_us) * 2,
            ));
        }
        for d in [slots.client.take(), slots.provider.take()]
            .into_iter()
            .flatten()
        {
            unload(d, &mut report);
            report.cycles += 1;
        }
        hostile.unload_all(&mut report.hostile);
        sim.quiesce();
        report.nmr.add(&sim.stats());
        let violations = report.hostile.take_expected(sim.violations());
        report
            .violations
            .extend(violations.iter().map(|v| v.to_string()));
        report.leaked_bindings += sim.live_bindings() as u64;
        report.leaked_registrations += sim.live_registrations() as u64;
        // The client's `peer-fault ... binding unused` lines for the
        // short-table provider are its contract (counted in `hostile`).
        let unused = |p: &problems::Problem| {
            p.kind == problems::Kind::PeerFault && p.text.contains("binding unused")
        };
        report.problems.extend(
            problems::take()
                .iter()
                .filter(|p| config.hostile == 0 || !unused(p))
                .map(|p| p.to_string()),
        );
        if !report.violations.is_empty()
            || !report.problems.is_empty()
            || !report.failed_loads.is_empty()
        {
            break; // the first failing phase says enough
        }
    }
    heartbeat.store(u64::MAX, Ordering::Relaxed);
    let _ = watchdog.join();
    report.hostile.add_declines(&declines.counts());
    drop(binding);
    ntoskrnl::set_trace_sink(None);
    ntoskrnl::set_call_latency_us(0);
    ntoskrnl::set_delay_cap_us(u32::MAX);
    let (pool1, threads1) = (pool::stats(), ntoskrnl::thread_stats());
    report.pool = PoolStats {
        allocations: pool1.allocations - pool0.allocations,
        frees: pool1.frees - pool0.frees,
        failed: pool1.failed - pool0.failed,
        ..pool1
    };
    // Only this run's loads count (another user of the pool may have kept a
    // module on purpose, after a deliberately failed deregistration).
    report.pool_live_blocks = report
        .loaded_ids
        .iter()
        .map(|&id| pool::live_blocks_of(id).len())
        .sum();
    report.threads = ThreadStats {
        created: threads1.created - threads0.created,
        // Only this run's loads (another user may run images meanwhile).
        running: report
            .loaded_ids
            .iter()
            .map(|&id| ntoskrnl::running_threads_of(id))
            .sum(),
        ..threads1
    };
    report.trace_lines = ntoskrnl::trace_lines() - lines0;
    report.trace_lines_shown_by_default = ntoskrnl::trace_lines_shown_by_default() - shown0;
    let locks1 = ntoskrnl::lock_stats();
    report.lock_acquires = (locks1.0 - locks0.0, locks1.1 - locks0.1);
    let entries1 = crate::stack::entry_stats();
    report.entries = crate::stack::EntryStats {
        nested_entries: entries1.nested_entries - entries0.nested_entries,
        host_entries: entries1.host_entries - entries0.host_entries,
        ..entries1 // the peaks: the deepest since the process started
    };
    report.model_path_bytes = crate::stack::model_path_peak();
    report.calls_into_provider = crate::dispatch::calls_into(PROVIDER_IMAGE) - calls0.0;
    report.calls_into_client = crate::dispatch::calls_into(CLIENT_IMAGE) - calls0.1;
    report.trace = std::mem::take(&mut *trace.lock().unwrap_or_else(|e| e.into_inner()));
    report.elapsed = start.elapsed();
    Ok(report)
}
