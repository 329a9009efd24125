//! Fault injection: every fallible stand-in asks the one [`FaultPlan`]
//! whether this call fails. The plan counts the fallible call sites reached
//! (in order), can fail the Nth, or a seeded random fraction of them (Driver
//! Verifier's low-resources simulation).

use std::fmt;
use std::sync::Mutex;

/// A fallible import.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Site {
    /// `ExAllocatePool2` returns null.
    ExAllocatePool2,
    /// `PsCreateSystemThread` returns `STATUS_INSUFFICIENT_RESOURCES`.
    PsCreateSystemThread,
    /// `NmrRegisterClient` returns `STATUS_INSUFFICIENT_RESOURCES`.
    NmrRegisterClient,
    /// `NmrRegisterProvider` returns `STATUS_INSUFFICIENT_RESOURCES`.
    NmrRegisterProvider,
    /// `NmrClientAttachProvider` returns `STATUS_INSUFFICIENT_RESOURCES`.
    NmrClientAttachProvider,
    /// `NmrDeregisterClient` returns `STATUS_INVALID_PARAMETER`.
    NmrDeregisterClient,
    /// `NmrDeregisterProvider` returns `STATUS_INVALID_PARAMETER`.
    NmrDeregisterProvider,
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One fallible call reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reached {
    /// Which import.
    pub site: Site,
    /// The image that called it.
    pub image: String,
    /// Whether the plan failed it.
    pub failed: bool,
    /// Whether it was made inside an attach callback run by the image's own
    /// `NmrRegister*` call (a failure there may only cost the binding).
    pub during_attach: bool,
}

thread_local! {
    static IN_REGISTER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` marked as the image's own `NmrRegister*` call: the fallible
/// calls made meanwhile on this thread come from its attach callbacks.
pub(crate) fn in_register<R>(f: impl FnOnce() -> R) -> R {
    let was = IN_REGISTER.with(|c| c.replace(true));
    let r = f();
    IN_REGISTER.with(|c| c.set(was));
    r
}

impl fmt::Display for Reached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {}", self.site, self.image)?;
        if self.during_attach {
            f.write_str(" (inside the attach)")?;
        }
        Ok(())
    }
}

/// What the plan does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FaultMode {
    /// Nothing fails; calls are still counted.
    #[default]
    Off,
    /// The call with this index (0-based, counting every fallible call since
    /// the plan was set) fails; no other does.
    FailNth(usize),
    /// Each call fails with probability `per_million / 1e6`, drawn from a
    /// generator seeded with `seed`.
    Random {
        /// The seed.
        seed: u64,
        /// Failure probability, in millionths.
        per_million: u32,
    },
}

struct State {
    mode: FaultMode,
    /// Only this image's calls are counted and failed (None: every image's).
    only: Option<String>,
    rng: u64,
    reached: Vec<Reached>,
}

static PLAN: Mutex<State> = Mutex::new(State {
    mode: FaultMode::Off,
    only: None,
    rng: 0,
    reached: Vec::new(),
});

fn plan() -> std::sync::MutexGuard<'static, State> {
    PLAN.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process-wide fault plan (the stand-ins are process-global).
pub struct FaultPlan;

impl FaultPlan {
    /// Sets the mode and clears the count; every image's calls count.
    pub fn set(mode: FaultMode) {
        Self::set_for(mode, None);
    }

    /// Sets the mode and clears the count; only calls made by the image
    /// named `only` (when given) are counted and may fail.
    pub fn set_for(mode: FaultMode, only: Option<&str>) {
        let mut p = plan();
        p.mode = mode;
        p.only = only.map(str::to_owned);
        p.rng = match mode {
            FaultMode::Random { seed, .. } => seed ^ 0x9E37_79B9_7F4A_7C15,
            _ => 0,
        };
        p.reached.clear();
    }

    /// Every fallible call reached since the last [`FaultPlan::set`].
    pub fn reached() -> Vec<Reached> {
        plan().reached.clone()
    }

    /// Asks whether this call fails (and counts it). Called by the stand-ins.
    pub(crate) fn should_fail(site: Site, image: &str) -> bool {
        let mut p = plan();
        if p.only.as_deref().is_some_and(|only| only != image) {
            return false;
        }
        let index = p.reached.len();
        let failed = match p.mode {
            FaultMode::Off => false,
            FaultMode::FailNth(n) => n == index,
            FaultMode::Random { per_million, .. } => {
                // xorshift64*: deterministic for a seed and a call order.
                let mut x = p.rng;
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                p.rng = x;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % 1_000_000 < u64::from(per_million)
            }
        };
        let during_attach = IN_REGISTER.with(std::cell::Cell::get);
        p.reached.push(Reached {
            site,
            image: image.to_owned(),
            failed,
            during_attach,
        });
        failed
    }
}
