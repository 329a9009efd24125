//! Bad input at the NMR surface: a raw peer (the fuzzers' fake module, which
//! publishes whatever it is told) with a wrong version or a short dispatch
//! table is declined by the `nmr` library before either real module sees it,
//! with the reason named in the trace; a registration of another NPI id is
//! refused by the library's own check (the NMR never offers one, so that
//! check is driven directly).

use nmr_client_module::client::{ClientConfig, ClientModule};
use nmr_common::ffi::*;
use nmr_common::module::{ModuleCore, Unload};
use nmr_common::npi::*;
use nmr_common::trace::Event;
use nmr_fuzz_targets::fake::{
    Answer, FAKE_GUID, Fake, ModuleIdSpec, NpiChoice, OTHER_NPI, PeerSpec,
};
use nmr_fuzz_targets::oracle::Published;
use nmr_provider_module::provider::{ProviderConfig, ProviderModule};
use nmr_sim::{Config, Side, Sim};

fn spec(versions: VersionRange, table: Option<(u16, u16, usize)>) -> PeerSpec {
    PeerSpec {
        version: 0,
        size: 40,
        npi: NpiChoice::Ours,
        module_id: Some(ModuleIdSpec::guid(FAKE_GUID)),
        number: 0,
        chars: Some((
            Published {
                declared: size_of::<NpiCharacteristics>() as u16,
                versions,
            },
            0,
        )),
        table,
        attach_status: STATUS_SUCCESS,
        null_context: false,
        declines: false,
        null_out: false,
        answer: Answer::Right,
        info_size: size_of::<ProviderInfo>() as u16,
    }
}

/// The trace lines of `module` for `event`.
fn lines(sim: &Sim, module: &str, event: Event) -> Vec<String> {
    sim.events()
        .into_iter()
        .filter(|e| e.module_event() == Some(event))
        .map(|e| e.to_string())
        .filter(|l| l.contains(module))
        .collect()
}

#[test]
fn a_provider_of_another_version_is_declined_by_name() {
    let sim = Sim::new(Config::default().recording());
    let client = ClientModule::load(sim.clone(), ClientConfig::default()).expect("loads");
    let fake = Fake::new(
        &sim,
        Side::Provider,
        spec(VersionRange { min: 7, max: 9 }, Some((7, 0, 0))),
    );
    fake.install();
    assert_eq!(fake.register(), STATUS_SUCCESS);
    assert_eq!(client.binding_count(), 0);
    assert_eq!(client.counts().declined, 1);
    let declined = lines(&sim, "nmr_client", Event::AttachDeclined);
    assert!(
        declined
            .iter()
            .any(|l| l.contains("peer versions 7..=9 do not overlap ours 1..=1")),
        "{declined:?}"
    );
    fake.unload();
    assert_eq!(client.unload(), STATUS_SUCCESS);
}

#[test]
fn a_client_with_a_short_table_is_declined_by_name() {
    let sim = Sim::new(Config::default().recording());
    let provider = ProviderModule::load(sim.clone(), ProviderConfig::default()).expect("loads");
    // The header says 8 bytes: the header and half a pointer, no `notify`.
    let fake = Fake::new(
        &sim,
        Side::Client,
        spec(VersionRange::CURRENT, Some((NPI_VERSION, 8, 0))),
    );
    fake.install();
    fake.register();
    assert_eq!(provider.binding_count(), 0);
    assert_eq!(provider.counts().declined, 1);
    assert_eq!(provider.counts().served, 0, "the module never saw it");
    let declined = lines(&sim, "nmr_provider", Event::AttachDeclined);
    assert!(
        declined
            .iter()
            .any(|l| l.contains("peer dispatch table version 1 size 8 does not fit")),
        "{declined:?}"
    );
    fake.unload();
    assert_eq!(provider.unload(), STATUS_SUCCESS);
}

#[test]
fn a_provider_with_a_short_table_is_never_called() {
    let sim = Sim::new(Config::default().recording());
    let client = ClientModule::load(sim.clone(), ClientConfig::default()).expect("loads");
    let fake = Fake::new(
        &sim,
        Side::Provider,
        spec(VersionRange::CURRENT, Some((NPI_VERSION, 12, 0))),
    );
    fake.install();
    fake.register();
    // Too late to decline (the NMR attached): the binding stays unpublished.
    assert_eq!(client.call_round(b"data"), 0);
    assert_eq!(
        client.counts().calls,
        0,
        "never called through a short table"
    );
    let faults = lines(&sim, "nmr_client", Event::PeerFault);
    assert!(
        faults
            .iter()
            .any(|l| l
                .contains("peer dispatch table version 1 size 12 does not fit; binding unused")),
        "{faults:?}"
    );
    fake.unload();
    assert_eq!(client.unload(), STATUS_SUCCESS);
}

#[test]
fn a_registration_of_another_npi_is_refused_by_the_check() {
    let sim = Sim::new(Config::default());
    let core = ModuleCore::new(sim, "check", GUID::from_u128(5), VersionRange::CURRENT);
    let module_id = NPI_MODULEID::from_guid(FAKE_GUID);
    let chars = NpiCharacteristics::new(VersionRange::CURRENT);
    let instance = NPI_REGISTRATION_INSTANCE {
        Version: 0,
        Size: size_of::<NPI_REGISTRATION_INSTANCE>() as u16,
        NpiId: &OTHER_NPI,
        ModuleId: &module_id,
        Number: 0,
        NpiSpecificCharacteristics: (&raw const chars).cast(),
    };
    // SAFETY: a whole instance whose pointers are live for the call.
    let checked = unsafe { core.check_peer(&instance) };
    assert_eq!(checked, Err(PeerMismatch::NpiId));
    assert_eq!(
        PeerMismatch::NpiId.to_string(),
        "peer registered for another NPI"
    );
    let ours = NPI_REGISTRATION_INSTANCE {
        NpiId: &NPI_ID,
        ..instance
    };
    // SAFETY: as above.
    assert_eq!(unsafe { core.check_peer(&ours) }, Ok(NPI_VERSION));
}
