//! The hostile side of a stress run: our modules' declines by reason, what
//! the peers saw, and the checks that fail the run.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use nmr_common::ffi::nt_success;

use super::{Hostile, HostilePeer, Tally};
use crate::violation::Violation;

nmr_common::counters! {
    /// Counts our modules' decline and unused-binding trace lines, by reason
    /// (atomics: the lines come from any thread, at any IRQL).
    pub struct DeclineTally =>
    /// Why one of our modules declined a peer, as its trace line says.
    Declines {
        /// The version ranges do not overlap (`peer versions ...`).
        version,
        /// Of which the older provider's `0..=0`.
        older,
        /// A dispatch table that does not fit.
        dispatch,
        /// A malformed module id.
        module_id,
        /// No usable NPI characteristics.
        characteristics,
        /// Anything else (the provider declined, no memory...).
        other,
        /// Bindings a client attached and left unused (`peer-fault ...
        /// binding unused`): the short table.
        unused,
    }
}

impl DeclineTally {
    /// Counts `line` if it is a decline or an unused binding.
    pub fn observe(&self, line: &str) {
        let declined = line.contains(" attach-declined ");
        let unused = line.contains(" peer-fault ") && line.contains("binding unused");
        if !declined && !unused {
            return;
        }
        let count = |counter: &AtomicU64| counter.fetch_add(1, Relaxed);
        if unused {
            count(&self.unused);
        } else if line.contains("peer versions") {
            count(&self.version);
            if line.contains("peer versions 0..=0 ") {
                count(&self.older);
            }
        } else if line.contains("dispatch table") {
            count(&self.dispatch);
        } else if line.contains("module id") {
            count(&self.module_id);
        } else if line.contains("NPI characteristics") {
            count(&self.characteristics);
        } else {
            count(&self.other);
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> Declines {
        self.snapshot()
    }
}

/// The hostile side of a stress run: what the peers saw, what our modules
/// said, and the violations the failing client earned.
#[derive(Clone, Debug, Default)]
pub struct HostileReport {
    /// Instances of each kind per model instance (0: none mixed in).
    pub per_kind: u32,
    /// What the peers saw, by kind (the order of [`Hostile::ALL`]).
    pub peers: [Tally; 5],
    /// Our modules' declines and unused bindings, from their trace lines.
    pub declines: Declines,
    /// The failing client's R3 violations (expected: one per failure).
    pub r3_violations: u64,
}

impl HostileReport {
    /// Adds what a peer saw at its unload.
    pub fn add_peer(&mut self, peer: &HostilePeer) {
        self.peers[peer.kind().index()].add(&peer.tally());
    }

    /// Adds a phase's decline counts.
    pub fn add_declines(&mut self, d: &Declines) {
        self.declines.add(d);
    }

    /// Counts and removes the violations the failing clients earned (their
    /// R3 misuse); returns the rest, which are real.
    pub fn take_expected(&mut self, violations: Vec<Violation>) -> Vec<Violation> {
        let failing = Hostile::FailingClient.name();
        let (expected, real): (Vec<_>, Vec<_>) = violations.into_iter().partition(|v| {
            matches!(v, Violation::AttachStatusMismatch { module, provider_status: Some(s), .. }
                if module.starts_with(failing) && nt_success(*s))
        });
        self.r3_violations += expected.len() as u64;
        real
    }

    fn kind(&self, kind: Hostile) -> &Tally {
        &self.peers[kind.index()]
    }

    /// Offers the model counts as declines that involve a hostile peer:
    /// whatever it declined or failed, and what ours declined of it.
    pub fn declines_involving_hostile(&self) -> u64 {
        let failing = self.kind(Hostile::FailingClient);
        self.declines.older
            + self.kind(Hostile::OldProvider).accepted_wrongly
            + self.kind(Hostile::ShortTableProvider).declined_hostile
            + failing.failed_after_attach
            + failing.declined_hostile
            + failing.declined_by_ours
    }

    /// Bindings whose provider side the NMR detached and cleaned up after
    /// the failing client failed (R3): the client side gets neither.
    pub fn r3_recoveries(&self) -> u64 {
        self.kind(Hostile::FailingClient).failed_after_attach
    }

    /// The summary rows.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        if self.per_kind == 0 {
            return vec![("hostile peers", "none (--hostile 0)".into())];
        }
        let loads: u64 = self.peers.iter().map(|t| t.loads).sum();
        let (old, short, failing) = (
            self.kind(Hostile::OldProvider),
            self.kind(Hostile::ShortTableProvider),
            self.kind(Hostile::FailingClient),
        );
        let (fp, fc) = (
            self.kind(Hostile::ForeignProvider),
            self.kind(Hostile::ForeignClient),
        );
        let d = &self.declines;
        vec![
            (
                "hostile peers loaded",
                format!("{loads} ({} of each of 5 kinds at a time)", self.per_kind),
            ),
            (
                "declined by ours, by reason",
                format!(
                    "version {} (older provider {}, offers reaching it {}), dispatch {}, \
                     module id {}, characteristics {}, other {}",
                    d.version,
                    d.older,
                    old.accepted_wrongly,
                    d.dispatch,
                    d.module_id,
                    d.characteristics,
                    d.other
                ),
            ),
            (
                "survived: short dispatch table",
                format!(
                    "{} bound, {} left unused, {} calls, {} cleaned up",
                    short.attached, d.unused, short.calls, short.cleanups
                ),
            ),
            (
                "survived: client fails after attach",
                format!(
                    "{} (provider side detached and cleaned up; {} R3 violations, \
                     {} notifies into it)",
                    failing.failed_after_attach, self.r3_violations, failing.notifications
                ),
            ),
            (
                "foreign NPI id",
                format!(
                    "{} offers to or from ours; the foreign pair bound {} times",
                    fp.wrong_npi + fc.wrong_npi,
                    fc.attached
                ),
            ),
        ]
    }

    /// Where the model's detach books of a finished run do not balance
    /// ([`crate::Stats::detach_imbalances`]), and whether its accepted
    /// attaches beyond its bindings are exactly the failing clients'
    /// failures after attaching (R3 leaves a provider side only).
    pub fn detach_failures(&self, stats: &crate::Stats) -> Vec<String> {
        let mut f = stats.detach_imbalances();
        let r3 = self.r3_recoveries();
        if stats.attaches.checked_sub(stats.bindings_made) != Some(r3) {
            f.push(format!(
                "the model counted {} accepted attaches and {} bindings, but the failing \
                 clients failed {r3} times after attaching",
                stats.attaches, stats.bindings_made
            ));
        }
        f
    }

    /// Where ours (or the NMR) broke the contract with a hostile peer;
    /// `coverage`: also fail if a kind was never exercised (long runs).
    pub fn failures(&self, coverage: bool) -> Vec<String> {
        let mut f = Vec::new();
        if self.per_kind == 0 {
            return f;
        }
        let (old, short, failing) = (
            self.kind(Hostile::OldProvider),
            self.kind(Hostile::ShortTableProvider),
            self.kind(Hostile::FailingClient),
        );
        if old.accepted_wrongly != 0 {
            f.push(format!(
                "our client accepted the older-version provider {} times (versions 0..=0 and \
                 1..=1 do not overlap: it must decline)",
                old.accepted_wrongly
            ));
        }
        if short.calls != 0 {
            f.push(format!(
                "our client called {} times through a dispatch table shorter than its version needs",
                short.calls
            ));
        }
        if short.attached != self.declines.unused {
            f.push(format!(
                "the short-table provider bound {} times, but our clients left {} bindings unused",
                short.attached, self.declines.unused
            ));
        }
        for (kind, t) in Hostile::ALL.iter().zip(&self.peers) {
            if t.wrong_npi != 0 {
                f.push(format!(
                    "the NMR offered {} a peer of another NPI id {} times (R1)",
                    kind.name(),
                    t.wrong_npi
                ));
            }
            if *kind != Hostile::FailingClient && t.cleanups != t.attached {
                f.push(format!(
                    "{} bound {} times but was cleaned up {} times",
                    kind.name(),
                    t.attached,
                    t.cleanups
                ));
            }
        }
        if failing.detaches + failing.cleanups != 0 {
            f.push(format!(
                "the failing client got {} detach and {} cleanup calls (R3: neither)",
                failing.detaches, failing.cleanups
            ));
        }
        if self.r3_violations != failing.failed_after_attach {
            f.push(format!(
                "the failing client failed {} times after attaching, but {} R3 violations \
                 were recorded",
                failing.failed_after_attach, self.r3_violations
            ));
        }
        if coverage {
            let fc = self.kind(Hostile::ForeignClient);
            for (what, seen) in [
                (
                    "our clients declining the older provider",
                    self.declines.older,
                ),
                ("a binding to the short-table provider", short.attached),
                (
                    "the client failing after attach",
                    failing.failed_after_attach,
                ),
                ("the foreign pair binding", fc.attached),
            ] {
                if seen == 0 {
                    f.push(format!("hostile peers: never saw {what}"));
                }
            }
        }
        f
    }
}
