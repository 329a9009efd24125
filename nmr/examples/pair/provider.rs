//! A minimal provider of the checksum NPI: no `unsafe`, no raw pointer, no
//! binding bookkeeping. The `nmr` library registers it, checks every client,
//! keeps the bindings, and runs the detach, its completion and the cleanup.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use nmr::{AsProvider, Callee, Decline, Identity, Offer, ProviderModule};
use nmr_checksum_npi::{
    ChecksumNpi, ClientCalls, EVENT_CALL_COUNT, FEATURE_CHECKSUM, ProviderDispatch, Serve,
    internet_checksum,
};
use nmr_common::ffi::{GUID, NTSTATUS};
use nmr_sim::Sim;

/// What the provider keeps: one counter. Per binding it keeps nothing.
#[derive(Default)]
pub struct Summer {
    served: AtomicU64,
}

impl ProviderModule for Summer {
    type Nmr = Sim;
    type Npi = ChecksumNpi;
    type Binding = ();

    /// The table clients call: the NPI crate's trampolines around `Serve`.
    fn dispatch() -> ProviderDispatch {
        nmr_checksum_npi::provider_table::<Self>()
    }

    /// Called only for a client whose NPI id, module id, versions and
    /// dispatch table already passed the library's checks.
    fn attach(&self, offer: &Offer) -> Result<(), Decline> {
        println!("provider: a client attaches (version {})", offer.version());
        Ok(())
    }
}

impl Serve for Summer {
    fn features(_callee: &Callee<'_, AsProvider<Self>>) -> u32 {
        FEATURE_CHECKSUM
    }

    fn checksum(callee: &Callee<'_, AsProvider<Self>>, data: &[u8]) -> Result<u16, NTSTATUS> {
        callee.module().served.fetch_add(1, Relaxed);
        Ok(internet_checksum(data))
    }
}

/// The provider's module id.
pub const ID: GUID = GUID::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0002);

/// Registers the provider: dropping the value deregisters it and waits.
pub fn load(sim: &Sim) -> nmr::Provider<Summer> {
    nmr::Provider::register(sim.clone(), Identity::new("summer", ID), Summer::default())
        .expect("the provider registers")
}

/// Tells every attached client how many calls were served; returns how
/// many clients heard it. Each call goes through a counted `Peer` guard.
pub fn notify_all(provider: &nmr::Provider<Summer>) -> u64 {
    let served = provider.served.load(Relaxed);
    let mut told = 0;
    provider.for_each_peer(|client| {
        client.notify(EVENT_CALL_COUNT, served);
        told += 1;
    });
    told
}

/// How many checksums were served.
pub fn served(provider: &nmr::Provider<Summer>) -> u64 {
    provider.served.load(Relaxed)
}
