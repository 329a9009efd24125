//! The public face of the model: creating a [`Sim`] (and its delivery
//! thread) and everything tests read from it (log, violations, counters,
//! live bindings and registrations, blocked waiters).
//!
//! The model's parts, each in its own file, depend on each other one way:
//! `state` (records and transitions) <- `core` (the handle and its mutex) <-
//! `context` (the calling thread) <- `report` (violations) <- `callout`
//! (calling a module) <- `detach` <- `delivery` <- `attach` <- `register`
//! <- `wait` <- `nmr_impl` (the `Nmr` trait) <- this file. One mutex guards
//! the whole model state; it is never held while a module callback runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use nmr_common::ffi::*;

use crate::config::{Config, Delivery};
use crate::core::{Inner, Queue, Sim, lock};
use crate::delivery::worker;
use crate::log::{LogEntry, NmrEvent};
use crate::state::{BindingInfo, HANDLE_BASE, Phase, Rng, State, Stats};
use crate::violation::Violation;
use crate::wait::WAIT_DEADLINE;

impl Sim {
    /// A new model with `config`. With [`Delivery::Worker`] or
    /// [`Delivery::Parallel`] it starts its
    /// delivery thread.
    pub fn new(config: Config) -> Sim {
        // Ask the host for its processor count now, not inside a module's
        // callback: std allocates to read it (cgroup quotas), and a test that
        // fails a module's next allocation must not see that one.
        crate::processor::processor_count(config.processors);
        let queue = (config.delivery != Delivery::Inline).then(|| Arc::new(Queue::default()));
        let state = State {
            next_handle: HANDLE_BASE,
            regs: BTreeMap::new(),
            bindings: HashMap::new(),
            side_handles: HashMap::new(),
            log: Vec::new(),
            violations: Vec::new(),
            stats: Stats::default(),
            names: HashMap::new(),
            rng: Rng(config.seed),
            echo: config.echo,
            blocked_waiters: 0,
            pending_panic: None,
        };
        let inner = Arc::new(Inner {
            config,
            state: Mutex::new(state),
            cond: Condvar::new(),
            queue: queue.clone(),
        });
        if let Some(queue) = queue {
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("nmr-sim-worker".into())
                .spawn(move || worker(queue, weak))
                .expect("spawn the nmr-sim worker thread");
        }
        Sim { inner }
    }

    /// The configuration this model runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Every violation recorded so far, in order.
    pub fn violations(&self) -> Vec<Violation> {
        self.state().violations.clone()
    }

    /// The event log so far, in order.
    pub fn events(&self) -> Vec<LogEntry> {
        self.state().log.clone()
    }

    /// Returns the event log so far and empties it (for long runs).
    pub fn take_events(&self) -> Vec<LogEntry> {
        std::mem::take(&mut self.state().log)
    }

    /// The model's own events so far, with their binding (or registration)
    /// handle: a compact view of [`Sim::events`] for assertions.
    pub fn nmr_events(&self) -> Vec<(NmrEvent, Option<usize>)> {
        self.state()
            .log
            .iter()
            .filter_map(|e| match e {
                LogEntry::Nmr { event, binding, .. } => Some((*event, *binding)),
                LogEntry::Module { .. } => None,
            })
            .collect()
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.state().stats.clone()
    }

    /// Bindings attached and not yet cleaned up.
    pub fn live_bindings(&self) -> usize {
        self.state()
            .bindings
            .values()
            .filter(|b| b.phase != Phase::Attaching)
            .count()
    }

    /// Registrations whose wait has not returned yet.
    pub fn live_registrations(&self) -> usize {
        self.state().regs.len()
    }

    /// Every binding not yet gone (attaching ones included), by client handle.
    pub fn bindings(&self) -> Vec<BindingInfo> {
        let st = self.state();
        let mut all: Vec<_> = st
            .bindings
            .values()
            .map(|b| BindingInfo {
                client_handle: b.client.handle,
                provider_handle: b.provider.handle,
                client: b.client.name.to_string(),
                provider: b.provider.name.to_string(),
                phase: b.phase.name(),
            })
            .collect();
        all.sort_by_key(|b| b.client_handle);
        all
    }

    /// Threads blocked in `NmrWaitFor*DeregisterComplete` now.
    pub fn blocked_waiters(&self) -> usize {
        self.state().blocked_waiters
    }

    /// Blocks until at least `n` threads are blocked in a deregistration
    /// wait: lets a test know, without sleeping, that a wait is really held.
    /// Panics after [`WAIT_DEADLINE`].
    pub fn await_blocked_waiters(&self, n: usize) {
        let (st, _) = self
            .inner
            .cond
            .wait_timeout_while(self.state(), WAIT_DEADLINE, |st| st.blocked_waiters < n)
            .unwrap_or_else(PoisonError::into_inner);
        let blocked = st.blocked_waiters;
        drop(st);
        assert!(
            blocked >= n,
            "{blocked} of {n} deregistration waits blocked after {WAIT_DEADLINE:?}"
        );
    }

    /// Gives the module whose `ModuleId` is the GUID `module_id` a name for
    /// the log and the violations (otherwise its GUID is used). Applies to
    /// registrations made afterwards.
    pub fn name_module(&self, module_id: GUID, name: &'static str) {
        self.state().names.insert(module_id, name);
    }

    /// With [`Delivery::Worker`]: blocks until the delivery queue is empty and
    /// the worker idle. Otherwise returns at once. Raises a deferred
    /// [`crate::Policy::Panic`] violation. Panics if the worker is still
    /// busy after [`WAIT_DEADLINE`] (a module callback that never returns).
    pub fn quiesce(&self) {
        if let Some(q) = &self.inner.queue {
            let (qs, idle) = q
                .cond
                .wait_timeout_while(lock(&q.state), WAIT_DEADLINE, |qs| {
                    !qs.jobs.is_empty() || qs.busy
                })
                .unwrap_or_else(PoisonError::into_inner);
            let jobs = qs.jobs.len();
            drop(qs);
            assert!(
                !idle.timed_out(),
                "quiesce: the delivery worker is still busy ({jobs} jobs queued) after {WAIT_DEADLINE:?}"
            );
        }
        self.check();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;

    use super::*;
    use crate::state::{HANDLE_STEP, Resolved};

    #[test]
    fn the_worker_thread_ends_with_the_model() {
        let sims: Vec<Sim> = (0..32)
            .map(|_| {
                Sim::new(Config {
                    delivery: Delivery::Worker,
                    ..Config::default()
                })
            })
            .collect();
        let queues: Vec<Weak<Queue>> = sims
            .iter()
            .map(|s| Arc::downgrade(s.inner.queue.as_ref().unwrap()))
            .collect();
        drop(sims);
        // Each worker drops its queue when it returns: wait for all of them.
        let start = std::time::Instant::now();
        while queues.iter().any(|q| q.strong_count() > 0) {
            assert!(start.elapsed() < std::time::Duration::from_secs(10));
            std::thread::yield_now();
        }
    }

    #[test]
    fn handles_are_distinct_and_stale_ones_are_recognised() {
        let sim = Sim::new(Config::default());
        let mut st = sim.state();
        let a = st.alloc_handle();
        let b = st.alloc_handle();
        assert_ne!(a, b);
        assert_ne!(a, 0);
        assert!(matches!(st.resolve(a), Resolved::Stale));
        assert!(matches!(st.resolve(a + 1), Resolved::Unknown));
        assert!(matches!(st.resolve(b + HANDLE_STEP), Resolved::Unknown));
        assert!(matches!(st.resolve(0), Resolved::Unknown));
    }

    #[test]
    fn rng_is_seeded() {
        let mut a = Rng(7);
        let mut b = Rng(7);
        let xs: Vec<u64> = (0..8).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next()).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng(8).next(), Rng(7).next());
    }
}
