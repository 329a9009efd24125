//! Delivery: how the detach callbacks of a deregistration reach the modules:
//! inline in the deregistering thread, on the model's worker thread, or on two
//! threads at once for a binding's two sides ([`crate::Delivery`]).

use std::sync::{Arc, PoisonError, Weak};

use crate::config::Delivery;
use crate::context::WORKER;
use crate::core::{Inner, Queue, Sim, lock};
use crate::log::Side;
use crate::running::Mark;

impl Sim {
    /// Delivers the detach callbacks of bindings already moved to `Detaching`.
    pub(crate) fn deliver(&self, jobs: Vec<(usize, Side)>) {
        if jobs.is_empty() {
            return;
        }
        match &self.inner.queue {
            None => {
                for (id, first) in jobs {
                    self.run_detach(id, first);
                }
            }
            Some(q) => {
                lock(&q.state).jobs.extend(jobs);
                q.cond.notify_all();
            }
        }
    }

    pub(crate) fn run_detach(&self, id: usize, first: Side) {
        if self.inner.config.delivery == Delivery::Parallel {
            // The other side on a thread of its own while this one runs
            // `first`: the two callbacks overlap. That thread delivers too.
            std::thread::scope(|s| {
                s.spawn(|| {
                    let _running = Mark::model();
                    WORKER.with(|w| w.set(true));
                    self.detach_side(id, first.other());
                });
                self.detach_side(id, first);
            });
        } else {
            self.detach_side(id, first);
            self.detach_side(id, first.other());
        }
    }
}

pub(crate) fn worker(queue: Arc<Queue>, sim: Weak<Inner>) {
    let _running = Mark::model();
    WORKER.with(|w| w.set(true));
    loop {
        let (id, first) = {
            let mut q = lock(&queue.state);
            loop {
                if q.shutdown {
                    return;
                }
                if let Some(job) = q.jobs.pop_front() {
                    q.busy = true;
                    break job;
                }
                q = queue.cond.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let Some(inner) = sim.upgrade() else { return };
        Sim { inner }.run_detach(id, first);
        let mut q = lock(&queue.state);
        q.busy = false;
        queue.cond.notify_all();
    }
}
