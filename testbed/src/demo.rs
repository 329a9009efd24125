//! One healthy sequence with the real modules, traced: what `docs/windbg.md`
//! walks through line by line.

use nmr_common::module::Unload;
use nmr_common::trace::Event;
use nmr_sim::{Config, Sim};

use crate::{CHECKSUM_GATE, TestNmr, client_config, load_client, load_provider, provider_config};

/// Runs the sequence and returns its trace lines (with the model's own
/// events too when `with_nmr`).
///
/// 1. The provider loads (nothing to attach to).
/// 2. The client loads and attaches inside its `NmrRegisterClient`.
/// 3. A client `checksum` call is held in flight in the provider.
/// 4. The provider unloads: the client's detach is PENDING until the call
///    returns; the completion runs both cleanups; the provider's wait returns.
/// 5. The client unloads, with no binding left.
pub fn run(with_nmr: bool) -> Vec<String> {
    let nmr = TestNmr::new(Sim::new(Config::default()));
    let mut p = provider_config(0);
    p.latency_us = CHECKSUM_GATE;
    let provider = load_provider(&nmr, p);
    let client = load_client(&nmr, client_config(0));
    nmr.close(CHECKSUM_GATE);
    std::thread::scope(|s| {
        let call = s.spawn(|| client.call_round(b"demo"));
        nmr.wait_for_waiters(CHECKSUM_GATE, 1);
        let unload = s.spawn(|| provider.unload());
        // Release the call only once the provider's deregister has returned
        // (and traced), so that the lines come in one order every time.
        while !nmr.sim().events().iter().any(|e| {
            e.module_event() == Some(Event::Deregister)
                && e.to_string().starts_with("nmr_provider:")
        }) {
            std::thread::yield_now();
        }
        nmr.open(CHECKSUM_GATE);
        call.join().expect("the call returns");
        unload.join().expect("the provider unloads");
    });
    client.unload();
    drop(client);
    drop(provider);
    nmr.sim()
        .events()
        .iter()
        .filter(|e| with_nmr || e.module_event().is_some())
        .map(ToString::to_string)
        .collect()
}
