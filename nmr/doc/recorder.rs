//! A client of the checksum NPI that records what its `notify` handler sees
//! through the `Callee`: the fixture of the `Callee` doc examples in
//! `src/lib.rs`, which include it with `#[path]`. Atomics only: `notify`
//! may run at DISPATCH_LEVEL, where nothing may block.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use nmr::{AsClient, Callee, ClientModule, Decline, Identity, Nmr, Offer};
use nmr_checksum_npi::{ChecksumNpi, ClientDispatch, Notify};
use nmr_common::ffi::GUID;
use nmr_sim::Sim;

/// The module: what the last `notify` saw, and the sum of the values.
#[derive(Default)]
pub struct Recorder {
    /// The sum of every notified value (`callee.module()`).
    pub total: AtomicU64,
    /// The binding's NPI version in the last call (`callee.version()`).
    pub version: AtomicU64,
    /// The binding's trace id in the last call (`callee.id()`).
    pub id: AtomicU64,
    /// The processor count of the NMR in the last call (`callee.nmr()`).
    pub processors: AtomicU64,
}

impl ClientModule for Recorder {
    type Nmr = Sim;
    type Npi = ChecksumNpi;
    /// Per binding: how many notifications came through it.
    type Binding = AtomicU64;

    fn dispatch() -> ClientDispatch {
        nmr_checksum_npi::client_table::<Self>()
    }

    fn attach(&self, _offer: &Offer) -> Result<AtomicU64, Decline> {
        Ok(AtomicU64::new(0))
    }
}

impl Notify for Recorder {
    fn notify(callee: &Callee<'_, AsClient<Self>>, _event: u32, value: u64) {
        let me = callee.module();
        me.total.fetch_add(value, Relaxed);
        me.version.store(u64::from(callee.version()), Relaxed);
        me.id.store(callee.id() as u64, Relaxed);
        me.processors
            .store(u64::from(callee.nmr().processor_count()), Relaxed);
        callee.state().fetch_add(1, Relaxed);
    }
}

/// Registers a recorder.
pub fn load(sim: &Sim) -> nmr::Client<Recorder> {
    let id = Identity::new("recorder", GUID::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0003));
    nmr::Client::register(sim.clone(), id, Recorder::default()).expect("the recorder registers")
}
