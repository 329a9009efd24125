//! Target `checksum`: the payload of the NPI's one piece of work.
//!
//! Checked: `internet_checksum` equals an independent, straightforward
//! RFC 1071 loop ([`crate::oracle::reference_checksum`]); appending the
//! checksum to an even-length payload makes it check to zero; and the real
//! provider's `checksum`, called through its dispatch table by a client
//! attached on the model, answers the same, for the whole payload and for
//! the slice the input picks (any start, so any alignment of the data).

use nmr_common::ffi::*;
use nmr_common::module::Unload;
use nmr_common::npi::*;
use nmr_provider_module::provider::{ProviderConfig, ProviderModule};
use nmr_sim::{Config, Side, Sim};
use std::sync::atomic::Ordering::SeqCst;

use crate::fake::{Answer, Fake, NpiChoice, PeerSpec};
use crate::input::Input;
use crate::oracle::reference_checksum;

/// Runs one case.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let through_provider = input.choose(4) == 0;
    let start = usize::from(input.u8());
    let payload = input.rest();

    let sum = internet_checksum(payload);
    assert_eq!(
        sum,
        reference_checksum(payload),
        "checksum of {payload:02x?}"
    );
    if payload.len().is_multiple_of(2) {
        let mut with_sum = payload.to_vec();
        with_sum.extend_from_slice(&sum.to_be_bytes());
        assert_eq!(
            internet_checksum(&with_sum),
            0,
            "a payload with its checksum checks to 0"
        );
    }
    if through_provider {
        provider_answers(payload, &payload[start.min(payload.len())..]);
    }
}

/// A well-behaved client (the fake, with nothing broken) attaches to the real
/// provider on the model and calls its `checksum` on both buffers.
fn provider_answers(payload: &[u8], slice: &[u8]) {
    let sim = Sim::new(Config::default().recording());
    let provider = ProviderModule::load(sim.clone(), ProviderConfig::default()).expect("loads");
    let spec = PeerSpec {
        version: 0,
        size: 40,
        npi: NpiChoice::Ours,
        module_id: Some(crate::fake::ModuleIdSpec::guid(crate::fake::FAKE_GUID)),
        number: 0,
        chars: Some((
            crate::oracle::Published {
                declared: size_of::<NpiCharacteristics>() as u16,
                versions: VersionRange::CURRENT,
            },
            0,
        )),
        table: Some((NPI_VERSION, 0, 0)),
        attach_status: STATUS_SUCCESS,
        null_context: false,
        declines: false,
        null_out: false,
        answer: Answer::Right,
        info_size: size_of::<ProviderInfo>() as u16,
    };
    let client = Fake::new(&sim, Side::Client, spec);
    client.install();
    assert_eq!(client.register(), STATUS_SUCCESS);
    let table = client.provider_table().expect("the fake client attached");
    let context = client.peer_context.load(SeqCst);
    for data in [payload, slice] {
        let mut answer = 0u16;
        // SAFETY: attached: the provider's table and context are valid until
        // its detach; `data` and `answer` are live for the call.
        let status = unsafe { (table.checksum)(context, data.as_ptr(), data.len(), &mut answer) };
        assert_eq!(status, STATUS_SUCCESS);
        assert_eq!(
            answer,
            reference_checksum(data),
            "the provider's checksum of {data:02x?}"
        );
    }
    client.unload();
    assert_eq!(provider.unload(), STATUS_SUCCESS);
    assert_eq!(provider.counts().served, 2, "both calls served");
    drop(provider);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    assert_eq!(sim.live_bindings(), 0);
}
