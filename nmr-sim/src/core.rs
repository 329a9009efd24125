//! The model's shared core: [`Sim`], the handle every part works through,
//! and what it points to ([`Inner`]: the configuration, the state mutex, the
//! condition variable waiters sleep on, and the delivery queue).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::config::Config;
use crate::log::Side;
use crate::state::State;

/// The worker's queue of detach deliveries.
#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) state: Mutex<QueueState>,
    pub(crate) cond: Condvar,
}

#[derive(Default)]
pub(crate) struct QueueState {
    pub(crate) jobs: VecDeque<(usize, Side)>,
    pub(crate) busy: bool,
    pub(crate) shutdown: bool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Module code never runs under the model's locks, so a poisoned lock can
    // only come from a panic of the model's own bookkeeping; keep going.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) state: Mutex<State>,
    /// Signalled whenever a binding or a registration goes away, and when a
    /// waiter blocks.
    pub(crate) cond: Condvar,
    pub(crate) queue: Option<Arc<Queue>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let pending = lock(&self.state).pending_panic.take();
        if let Some(msg) = pending {
            // Never raised (no NMR call, quiesce or check came after it).
            eprintln!(
                "nmr-sim: contract violation never raised before the model was dropped: {msg}"
            );
        }
        if let Some(q) = &self.queue {
            lock(&q.state).shutdown = true;
            q.cond.notify_all();
        }
    }
}

/// A handle to one model instance: cheap to clone, `Send + Sync + 'static`.
/// The model's worker thread (with [`crate::Delivery::Worker`]) ends when the
/// last handle is dropped.
#[derive(Clone)]
pub struct Sim {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Sim {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }
}
