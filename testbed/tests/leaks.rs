//! Leak check by counting heap blocks: after a thousand load/unload cycles
//! with calls running, every block the modules and the model allocated is
//! freed again. Its own test binary, so no other test allocates meanwhile.

use testbed::alloc_count::{self, Counting};
use testbed::stress::{self, StressConfig};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_thousand_cycles_leak_no_heap_block() {
    let config = |cycles, seed| StressConfig {
        cycles: Some(cycles),
        phase_cycles: 250,
        threads: 2,
        latency_us: 10,
        notify_latency_us: 5,
        seed,
        ..StressConfig::default()
    };
    // Warm up: the first run creates what lives for the whole process (the
    // modules' instance names, std's thread bookkeeping).
    let warm = stress::run(&config(50, 1), &|_| {});
    assert!(warm.failures().is_empty());
    drop(warm);
    let before = alloc_count::live_blocks();
    let report = stress::run(&config(1000, 2), &|_| {});
    let failures = report.failures();
    let attaches = report.nmr.attaches;
    drop(report);
    let after = alloc_count::live_blocks();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(attaches > 100);
    assert_eq!(after, before, "heap blocks leaked over {attaches} bindings");
}
