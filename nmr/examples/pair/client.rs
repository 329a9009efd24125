//! A minimal client of the checksum NPI: it attaches to every provider,
//! asks each for the checksum of a buffer, and counts the notifications it
//! gets. No `unsafe`: calls go out through `Peer` guards, and come in
//! through the NPI crate's trampolines as a `Callee`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use nmr::{AsClient, Callee, ClientModule, Decline, Identity, Offer};
use nmr_checksum_npi::{ChecksumNpi, ClientDispatch, Notify, ProviderCalls};
use nmr_common::ffi::GUID;
use nmr_sim::Sim;

/// What the client keeps: the notifications it got.
#[derive(Default)]
pub struct Asker {
    notifications: AtomicU64,
}

/// Per binding: what the provider said it can do.
pub struct Seen {
    /// The version agreed with it.
    pub version: u16,
}

impl ClientModule for Asker {
    type Nmr = Sim;
    type Npi = ChecksumNpi;
    type Binding = Seen;

    fn dispatch() -> ClientDispatch {
        nmr_checksum_npi::client_table::<Self>()
    }

    /// A provider is offered. Declining is a typed value, which the library
    /// turns into STATUS_NOINTERFACE or STATUS_INSUFFICIENT_RESOURCES.
    fn attach(&self, offer: &Offer) -> Result<Seen, Decline> {
        if offer.version() == 0 {
            return Err(Decline::NoInterface("version 0 is not a version"));
        }
        Ok(Seen {
            version: offer.version(),
        })
    }
}

impl Notify for Asker {
    fn notify(callee: &Callee<'_, AsClient<Self>>, _event: u32, value: u64) {
        callee.module().notifications.fetch_add(1, Relaxed);
        println!(
            "client: notified on a version {} binding: {value} calls served",
            callee.state().version
        );
    }
}

/// The client's module id.
pub const ID: GUID = GUID::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0001);

/// Registers the client: providers already registered attach before this
/// returns.
pub fn load(sim: &Sim) -> nmr::Client<Asker> {
    nmr::Client::register(sim.clone(), Identity::new("asker", ID), Asker::default())
        .expect("the client registers")
}

/// Asks every attached provider for the checksum of `data`; returns the
/// answers.
pub fn ask_all(client: &nmr::Client<Asker>, data: &[u8]) -> Vec<u16> {
    let mut answers = Vec::new();
    client.for_each_peer(|provider| {
        if let Ok(sum) = provider.checksum(data) {
            answers.push(sum);
        }
    });
    answers
}

/// How many notifications arrived.
pub fn notifications(client: &nmr::Client<Asker>) -> u64 {
    client.notifications.load(Relaxed)
}
