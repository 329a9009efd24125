//! A minimal NPI pair on the model NMR: `cargo run -p nmr --example pair`.
//!
//! The provider (`provider.rs`) and the client (`client.rs`) are written on
//! the safe API only; this file loads them, makes one call each way, and
//! unloads them, checking what the model saw.

mod client;
mod provider;

use nmr_common::ffi::STATUS_SUCCESS;
use nmr_sim::{Config, Sim};

fn main() {
    let sim = Sim::new(Config::default());
    let provider = provider::load(&sim);
    let client = client::load(&sim);
    assert_eq!(client.binding_count(), 1, "the pair attached");

    let answers = client::ask_all(&client, b"hello, NMR");
    println!("client: checksum answers {answers:04x?}");
    assert_eq!(
        answers,
        [nmr_checksum_npi::internet_checksum(b"hello, NMR")]
    );
    assert_eq!(provider::served(&provider), 1);

    assert_eq!(provider::notify_all(&provider), 1);
    assert_eq!(client::notifications(&client), 1);

    // Unloading deregisters and waits; the library detaches the binding,
    // completes it and cleans it up on both sides.
    assert_eq!(client.unload(), STATUS_SUCCESS);
    assert_eq!(provider.binding_count(), 0);
    drop(client);
    drop(provider);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    println!("pair: clean (no NMR contract violation)");
}
