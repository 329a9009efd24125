//! The model's scheduling knobs and violation policy.

/// Which side's detach callback the model calls first for each binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetachOrder {
    /// `ClientDetachProvider`, then `ProviderDetachClient`.
    ClientFirst,
    /// `ProviderDetachClient`, then `ClientDetachProvider`.
    ProviderFirst,
    /// A coin flip per binding, from a generator seeded with [`Config::seed`];
    /// the bindings of one deregistration are also detached in a shuffled order.
    Random,
}

/// Which thread calls the detach callbacks that a deregistration starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The deregistering thread, before `NmrDeregister*` returns.
    Inline,
    /// A model worker thread (one per [`crate::Sim`]); `NmrDeregister*`
    /// returns at once. [`crate::Sim::quiesce`] waits for it to be idle.
    Worker,
    /// As [`Delivery::Worker`], and the two detach callbacks of each binding
    /// run at the same moment on two threads (R7: they may run on different
    /// threads, in any order). The detach order then has no effect on which
    /// callback runs first.
    Parallel,
}

/// What the model does when a module breaks the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Record the violation and panic with its text. A misusing NMR call made
    /// outside any module callback panics before it returns. A panic cannot
    /// unwind through an `extern "system"` callback, so a violation seen
    /// inside one (or on the model's worker thread, or in
    /// `Nmr::incoming_call`, which runs inside dispatch functions) is raised
    /// at the next safe point: when the outermost NMR call on that thread
    /// returns, or at the next NMR call, [`crate::Sim::quiesce`] or
    /// [`crate::Sim::check`] on a thread outside callbacks.
    Panic,
    /// Only record it; read them with [`crate::Sim::violations`].
    Record,
}

/// How one [`crate::Sim`] behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// Order of the two detach callbacks of a binding.
    pub detach_order: DetachOrder,
    /// Thread that delivers detach callbacks.
    pub delivery: Delivery,
    /// Seed of [`DetachOrder::Random`].
    pub seed: u64,
    /// Call detach callbacks at DISPATCH_LEVEL (they may be, on Windows).
    /// When false they run at the delivering thread's level.
    pub detach_at_dispatch: bool,
    /// What a violation does.
    pub policy: Policy,
    /// Print every log line to stderr as it happens.
    pub echo: bool,
    /// The processor count `Nmr::processor_count` reports (the slot count of
    /// every per-processor rundown), with `Nmr::current_processor` then a
    /// per-thread index modulo it. `None`: the host's count and processor.
    pub processors: Option<u32>,
    /// Check every NPI call for R9 (`Nmr::incoming_call`: a call after the
    /// caller's detach). The check takes the model's state lock on every
    /// call; a throughput run turns it off to measure the modules, not the
    /// model.
    pub check_calls: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            detach_order: DetachOrder::ClientFirst,
            delivery: Delivery::Inline,
            seed: 0,
            detach_at_dispatch: true,
            policy: Policy::Panic,
            echo: false,
            processors: None,
            check_calls: true,
        }
    }
}

impl Config {
    /// Every detach order (client first, provider first, and random with three
    /// seeds) with every delivery: fifteen configurations for tests to loop over.
    pub fn all_orders() -> Vec<Config> {
        let orders = [
            (DetachOrder::ClientFirst, 0),
            (DetachOrder::ProviderFirst, 0),
            (DetachOrder::Random, 1),
            (DetachOrder::Random, 2),
            (DetachOrder::Random, 3),
        ];
        let mut all = Vec::new();
        for delivery in [Delivery::Inline, Delivery::Worker, Delivery::Parallel] {
            for (detach_order, seed) in orders {
                all.push(Config {
                    detach_order,
                    delivery,
                    seed,
                    ..Config::default()
                });
            }
        }
        all
    }

    /// This configuration with [`Policy::Record`].
    pub fn recording(self) -> Config {
        Config {
            policy: Policy::Record,
            ..self
        }
    }
}
