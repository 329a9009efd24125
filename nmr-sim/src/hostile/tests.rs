//! The hostile peers among themselves, and the report's books.

use super::*;
use crate::{Config, Policy};

fn sim() -> Sim {
    Sim::new(Config {
        policy: Policy::Record,
        ..Config::default()
    })
}

#[test]
fn the_foreign_pair_binds_each_other_and_hostile_peers_decline_each_other() {
    let sim = sim();
    let mut report = HostileReport {
        per_kind: 1,
        ..HostileReport::default()
    };
    let peers: Vec<_> = Hostile::ALL
        .iter()
        .map(|&k| HostilePeer::load(&sim, k, CallAbi::System, 0))
        .collect();
    // The failing client was offered the old and the short-table
    // provider, and declined both itself: no binding, no violation.
    assert_eq!(peers[4].tally().declined_hostile, 2);
    assert_eq!(peers[4].tally().failed_after_attach, 0);
    assert_eq!(
        peers[0].tally().offers,
        0,
        "declined before NmrClientAttachProvider"
    );
    assert_eq!(
        (peers[2].tally().attached, peers[3].tally().attached),
        (1, 1)
    );
    assert_eq!(sim.live_bindings(), 1);
    for mut p in peers {
        p.unload();
        report.add_peer(&p);
    }
    assert!(report.take_expected(sim.violations()).is_empty());
    assert_eq!(sim.live_registrations(), 0);
    assert_eq!(report.failures(false), Vec::<String>::new());
    // Coverage asks for what only our modules bring about.
    assert_eq!(
        report.failures(true).len(),
        3,
        "{:?}",
        report.failures(true)
    );
}

#[test]
fn decline_lines_are_counted_by_reason() {
    let t = DeclineTally::default();
    for line in [
        "nmr_client: attach-declined binding=- status=STATUS_NOINTERFACE nmr-handle=0x10010 \
         peer versions 0..=0 do not overlap ours 1..=1",
        "nmr_provider: attach-declined binding=- status=STATUS_NOINTERFACE nmr-handle=0x10 \
         peer versions 2..=3 do not overlap ours 1..=1",
        "nmr_provider: attach-declined binding=- status=STATUS_NOINTERFACE nmr-handle=0x10 \
         peer dispatch table version 1 size 4 does not fit",
        "nmr_client: peer-fault binding=0x7f00 status=STATUS_NOINTERFACE peer dispatch \
         table version 1 size 16 does not fit; binding unused",
        "nmr_client: attach-declined binding=- status=STATUS_NOINTERFACE nmr-handle=0x10 \
         the provider declined",
        "nmr_client: attach-accepted binding=0x7f00 status=STATUS_SUCCESS",
    ] {
        t.observe(line);
    }
    assert_eq!(
        t.counts(),
        Declines {
            version: 2,
            older: 1,
            dispatch: 1,
            unused: 1,
            other: 1,
            ..Declines::default()
        }
    );
}

#[test]
fn a_wrongly_accepted_or_called_peer_fails_the_report() {
    let mut report = HostileReport {
        per_kind: 1,
        ..HostileReport::default()
    };
    report.peers[Hostile::OldProvider.index()].accepted_wrongly = 1;
    report.peers[Hostile::ShortTableProvider.index()].calls = 2;
    report.peers[Hostile::FailingClient.index()].failed_after_attach = 1;
    let f = report.failures(false);
    assert!(
        f[0].contains("accepted the older-version provider 1 times"),
        "{f:?}"
    );
    assert!(
        f[1].contains("called 2 times through a dispatch table"),
        "{f:?}"
    );
    assert!(f.iter().any(|l| l.contains("0 R3 violations")), "{f:?}");
}
