//! The model the loaded images are bound to. The stand-ins are plain
//! `extern "win64"` functions with no context, so the NETIO ones find the
//! [`Sim`] here. One model at a time: [`ModelBinding::bind`] waits until the
//! previous binding is dropped. Holding the binding is also what serialises
//! the users of the stand-ins' other process-global state (the fault plan,
//! the problems, the knobs): take it first.

use std::sync::{Mutex, MutexGuard, RwLock};

use nmr_sim::Sim;

static CURRENT: RwLock<Option<Sim>> = RwLock::new(None);
static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// While alive, the NETIO stand-ins call this model.
pub struct ModelBinding {
    _exclusive: MutexGuard<'static, ()>,
}

impl ModelBinding {
    /// Binds `sim`, waiting for any other binding (another test) to end.
    pub fn bind(sim: Sim) -> ModelBinding {
        let exclusive = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
        *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(sim);
        ModelBinding {
            _exclusive: exclusive,
        }
    }

    /// Replaces the bound model (a new phase of the stress).
    pub fn rebind(&self, sim: Sim) {
        *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(sim);
    }
}

impl Drop for ModelBinding {
    fn drop(&mut self) {
        *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// The bound model, if any (a clone: the lock is not held across the call).
pub(crate) fn current() -> Option<Sim> {
    CURRENT.read().unwrap_or_else(|e| e.into_inner()).clone()
}
