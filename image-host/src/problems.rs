//! What the stand-ins saw go wrong. They cannot return an error to the image
//! (nor panic: they are `extern "win64"`), so they record a [`Problem`]; the
//! runner takes them after each step and fails with their text.

use std::fmt;
use std::sync::Mutex;

/// What kind of problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Pool blocks still allocated after DriverUnload.
    PoolLeak,
    /// Guard bytes after a block changed: a write past its end.
    PoolOverrun,
    /// `ExFreePoolWithTag` of something not allocated, freed twice, or with another tag.
    BadFree,
    /// A thread still running, or a handle left open, after DriverUnload.
    ThreadLeak,
    /// `DriverEntry` succeeded without setting `DriverUnload`.
    NoUnload,
    /// `DriverEntry` failed but left something behind.
    FailedEntryLeftovers,
    /// A kernel call the model cannot honour (no model bound, bad handle...).
    BadCall,
    /// A trace line reporting a peer's wrong answer (`peer-fault`).
    PeerFault,
    /// A rule of [`crate::rules`] broken: what Windows or Driver Verifier
    /// would stop on.
    Verifier,
}

/// One problem, naming the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What went wrong.
    pub kind: Kind,
    /// The image it concerns (`nmr_client.sys`), or `?`.
    pub image: String,
    /// A sentence a reader can act on.
    pub text: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}: {}", self.image, self.kind, self.text)
    }
}

static PROBLEMS: Mutex<Vec<Problem>> = Mutex::new(Vec::new());

/// Records a problem.
pub fn report(kind: Kind, image: &str, text: impl Into<String>) {
    let p = Problem {
        kind,
        image: image.to_owned(),
        text: text.into(),
    };
    PROBLEMS.lock().unwrap_or_else(|e| e.into_inner()).push(p);
}

/// Takes every problem recorded so far.
pub fn take() -> Vec<Problem> {
    std::mem::take(&mut *PROBLEMS.lock().unwrap_or_else(|e| e.into_inner()))
}
