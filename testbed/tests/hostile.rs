//! The hostile and outdated peers in the model stress: the real modules
//! decline the older provider, leave the short table unused, never meet the
//! foreign pair, and survive the client that fails after attach; the
//! summary counts each.

use nmr_sim::hostile::Hostile;
use testbed::stress::{self, StressConfig};

fn run(hostile: u32) -> stress::Report {
    let config = StressConfig {
        cycles: Some(2_000),
        hostile,
        threads: 2,
        phase_cycles: 250,
        seed: 19,
        ..StressConfig::default()
    };
    stress::run(&config, &|_| {})
}

#[test]
fn the_modules_decline_or_survive_every_hostile_peer() {
    let report = run(1);
    assert_eq!(report.failures(), Vec::<String>::new());
    let h = &report.hostile;
    let kind = |k: Hostile| h.peers[Hostile::ALL.iter().position(|&x| x == k).unwrap()];
    assert!(h.declines.older > 0, "{:?}", h.declines);
    assert_eq!(kind(Hostile::OldProvider).accepted_wrongly, 0);
    let short = kind(Hostile::ShortTableProvider);
    assert!(short.attached > 0);
    assert_eq!((short.calls, short.cleanups), (0, short.attached));
    assert_eq!(h.declines.unused, short.attached);
    let failing = kind(Hostile::FailingClient);
    assert!(failing.failed_after_attach > 0);
    assert_eq!(h.r3_violations, failing.failed_after_attach);
    assert_eq!(failing.detaches + failing.cleanups, 0);
    assert!(kind(Hostile::ForeignClient).attached > 0);
    assert_eq!(h.peers.iter().map(|t| t.wrong_npi).sum::<u64>(), 0);
    let table = report.table();
    for row in [
        "declined by ours, by reason",
        "survived: short dispatch table",
        "survived: client fails after attach",
        "foreign NPI id",
    ] {
        assert!(table.contains(row), "{row} missing from:\n{table}");
    }
}

#[test]
fn without_hostile_peers_the_summary_says_so() {
    let report = run(0);
    assert_eq!(report.failures(), Vec::<String>::new());
    assert!(report.table().contains("none (--hostile 0)"));
    assert_eq!(report.hostile.r3_violations, 0);
}
