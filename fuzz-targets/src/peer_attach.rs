//! Target `peer_attach`: what a peer hands our attach callbacks.
//!
//! A [`Fake`] peer, client or provider, built from the input (registration
//! instance fields, module id, NPI-specific characteristics and their
//! declared size and versions, dispatch table header, null pointers, the
//! status its attach returns, its answers), registers on the model next to
//! the REAL module of the other side (and, as the input says, the real
//! module of its own side too); then calls flow both ways, and everything
//! unloads in the input's order.
//!
//! Checked, against [`crate::oracle`]'s independent rules:
//! - the model refuses an ill-formed registration instance with a named
//!   violation, and the fake is then offered to nobody;
//! - the real module accepts the fake exactly when the rules say so, and a
//!   declined fake is traced with `STATUS_NOINTERFACE` (our own checks) or
//!   the provider's own status (R3), and the reason's text;
//! - a provider table that fails its check after the attach is traced as a
//!   peer fault and never called; a checksum answered wrong is counted and
//!   traced;
//! - nothing leaks: no binding or registration left in the model; each real
//!   module's counters balance (offered = attached + declined, attached =
//!   cleaned up); the fake's binding is detached and cleaned once, and
//!   never called after;
//! - the only violations are the fake's own, exactly those the input asked for.

use nmr_client_module::client::{ClientConfig, ClientCounts, ClientModule};
use nmr_common::ffi::*;
use nmr_common::module::Unload;
use nmr_common::npi::*;
use nmr_common::trace::Event;
use nmr_provider_module::provider::{ProviderConfig, ProviderCounts, ProviderModule};
use nmr_sim::{Config, Delivery, DetachOrder, LogEntry, Side, Sim, Violation};
use std::sync::atomic::Ordering::SeqCst;

use crate::fake::{Fake, NpiChoice, PeerSpec, version_from};
use crate::input::Input;
use crate::oracle;

/// Runs one case.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let detach_order = match input.choose(3) {
        0 => DetachOrder::ClientFirst,
        1 => DetachOrder::ProviderFirst,
        _ => DetachOrder::Random,
    };
    let sim = Sim::new(
        Config {
            detach_order,
            delivery: Delivery::Inline,
            seed: u64::from(input.u8()),
            ..Config::default()
        }
        .recording(),
    );
    let fake_side = if input.flag() {
        Side::Client
    } else {
        Side::Provider
    };
    let real_versions = if input.choose(4) == 0 {
        VersionRange {
            min: version_from(&mut input),
            max: version_from(&mut input),
        }
    } else {
        VersionRange::CURRENT
    };
    let same_side_too = input.flag();
    let fake_first = input.flag();
    let unload_order = input.choose(6);
    let spec = PeerSpec::read(&mut input);
    let payload = input.rest().to_vec();

    let fake = Fake::new(&sim, fake_side, spec);
    fake.install();
    let case = Case {
        sim: &sim,
        fake: &fake,
        real_versions,
        same_side_too,
    };

    let client_config = ClientConfig {
        versions: real_versions,
        ..ClientConfig::default()
    };
    let provider_config = ProviderConfig {
        versions: real_versions,
        ..ProviderConfig::default()
    };
    let load_client =
        || ClientModule::load(sim.clone(), client_config).expect("the real client loads");
    let load_provider =
        || ProviderModule::load(sim.clone(), provider_config).expect("the real provider loads");

    let mut register_status = None;
    let mut register_fake = || register_status = Some(fake.register());
    if fake_first {
        register_fake();
    }
    let client = (fake_side == Side::Provider || same_side_too).then(load_client);
    let provider = (fake_side == Side::Client || same_side_too).then(load_provider);
    if !fake_first {
        register_fake();
    }
    let register_status = register_status.expect("registered above");

    // Calls both ways.
    let verified = client.as_ref().map(|c| c.call_round(&payload));
    let notified = provider.as_ref().map(|p| p.notify_round());
    let fake_calls = case.fake_calls_provider(&payload);

    // Unload in the input's order: (fake, client, provider) permuted.
    const ORDERS: [[u8; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let mut client_counts = None;
    let mut provider_counts = None;
    for who in ORDERS[usize::from(unload_order)] {
        match who {
            0 => fake.unload(),
            1 => {
                if let Some(c) = &client {
                    assert_eq!(c.unload(), STATUS_SUCCESS, "the real client unloads");
                    assert_eq!(c.binding_count(), 0, "the client's bindings after unload");
                    client_counts = Some(c.counts());
                }
            }
            _ => {
                if let Some(p) = &provider {
                    assert_eq!(p.unload(), STATUS_SUCCESS, "the real provider unloads");
                    assert_eq!(p.binding_count(), 0, "the provider's bindings after unload");
                    provider_counts = Some(p.counts());
                }
            }
        }
    }
    drop(client);
    drop(provider);

    case.check(
        register_status,
        client_counts,
        provider_counts,
        verified,
        notified,
        fake_calls,
    );
}

struct Case<'a> {
    sim: &'a Sim,
    fake: &'a Fake,
    real_versions: VersionRange,
    same_side_too: bool,
}

/// What the fake client's own calls into the real provider answered.
#[derive(Default, Debug)]
struct FakeCalls {
    made: bool,
}

/// The outcome the rules predict for the fake.
#[derive(Debug, Default)]
struct Expect {
    registers: bool,
    /// The real opposite module is offered the fake (it reaches our attach callback).
    offered_to_real: bool,
    /// Our module's decline, and why: `(status, reason)`.
    declined: Option<(NTSTATUS, String)>,
    /// The binding is made.
    attached: bool,
    /// Client side: the provider's table passed the check after attach;
    /// otherwise the peer fault's text.
    table_fault: Option<String>,
    violations: Vec<&'static str>,
}

impl Case<'_> {
    fn expect(&self) -> Expect {
        let fake = self.fake;
        let spec = &fake.spec;
        let mut e = Expect {
            registers: oracle::instance_ok(fake.instance()),
            ..Expect::default()
        };
        if !e.registers {
            e.violations.push("BadCharacteristics");
            return e;
        }
        if spec.npi != NpiChoice::Ours {
            return e;
        }
        let check = oracle::peer_check(fake.module_id(), fake.published(), self.real_versions);
        match fake.side {
            Side::Provider => {
                // The real client is offered the fake, checks it, and only
                // then calls NmrClientAttachProvider.
                e.offered_to_real = true;
                let version = match check {
                    Ok(v) => v,
                    Err(why) => {
                        e.declined = Some((STATUS_NOINTERFACE, why.to_string()));
                        return e;
                    }
                };
                if !nt_success(spec.attach_status) {
                    e.declined = Some((spec.attach_status, "the provider declined".into()));
                    return e;
                }
                e.attached = true;
                let table = spec.oracle_table(size_of::<ProviderDispatch>());
                if table.is_none() {
                    e.violations.push("ProviderAttachNoDispatch");
                }
                if let Err(why) =
                    oracle::dispatch_check(table, version, size_of::<ProviderDispatch>())
                {
                    e.table_fault = Some(format!("{why}; binding unused"));
                }
            }
            Side::Client => {
                // The fake client is offered the real provider; the provider
                // sees the fake only if it calls NmrClientAttachProvider.
                if spec.declines {
                    return e;
                }
                if spec.null_out {
                    e.violations.push("AttachNullOut");
                    return e;
                }
                e.offered_to_real = true;
                let checked = check.and_then(|v| {
                    oracle::dispatch_check(
                        spec.oracle_table(size_of::<ClientDispatch>()),
                        v,
                        size_of::<ClientDispatch>(),
                    )
                });
                match checked {
                    Ok(()) => e.attached = true,
                    Err(why) => e.declined = Some((STATUS_NOINTERFACE, why.to_string())),
                }
            }
        }
        e
    }

    /// The fake client calls the real provider's table as a client would:
    /// `checksum` of the payload, `get_info` with the declared buffer size,
    /// and the calls the provider must refuse with a named status.
    fn fake_calls_provider(&self, payload: &[u8]) -> FakeCalls {
        let fake = self.fake;
        if fake.side != Side::Client {
            return FakeCalls::default();
        }
        let Some(table) = fake.provider_table() else {
            return FakeCalls::default();
        };
        let context = fake.peer_context.load(SeqCst);
        let mut answer = 0u16;
        // SAFETY: attached, so the provider's table and context are valid
        // until its detach, which has not begun; the buffers are live.
        let status =
            unsafe { (table.checksum)(context, payload.as_ptr(), payload.len(), &mut answer) };
        assert_eq!(status, STATUS_SUCCESS, "the provider's checksum");
        assert_eq!(
            answer,
            oracle::reference_checksum(payload),
            "the provider's checksum of {payload:02x?}"
        );
        check_provider_table(table, context, payload, fake.spec.info_size);
        FakeCalls { made: true }
    }

    fn check(
        &self,
        register_status: NTSTATUS,
        client: Option<ClientCounts>,
        provider: Option<ProviderCounts>,
        verified: Option<u64>,
        notified: Option<u64>,
        fake_calls: FakeCalls,
    ) {
        let e = self.expect();
        let fake = self.fake;
        let seen = &fake.seen;
        let sim = self.sim;
        let ctx = format!("spec {:?}, expected {e:?}", fake.spec);

        // The model: nothing left, and only the fake's own violations.
        assert_eq!(
            sim.live_bindings(),
            0,
            "bindings left: {:?}",
            sim.bindings()
        );
        assert_eq!(sim.live_registrations(), 0, "registrations left");
        let names: Vec<&str> = sim.violations().iter().map(violation_name).collect();
        assert_eq!(
            names,
            e.violations,
            "violations {:?}; {ctx}",
            sim.violations()
        );
        assert_eq!(
            register_status,
            if e.registers {
                STATUS_SUCCESS
            } else {
                STATUS_INVALID_PARAMETER
            },
            "the fake's registration; {ctx}"
        );

        // The fake: one binding at most, detached and cleaned once, never
        // called after its cleanup, always with the context it gave.
        let attached = seen.attached.load(SeqCst);
        assert_eq!(attached, u32::from(e.attached), "the fake's binding; {ctx}");
        assert_eq!(seen.detached.load(SeqCst), attached, "the fake's detach");
        assert_eq!(seen.cleaned.load(SeqCst), attached, "the fake's cleanup");
        assert_eq!(
            seen.calls_after_cleanup.load(SeqCst),
            0,
            "calls after cleanup"
        );
        assert_eq!(
            seen.wrong_context.load(SeqCst),
            0,
            "a context the fake never gave"
        );

        // The real modules: counters balance, and what they did with the fake
        // and (when both load) with each other. The NMR offers the client
        // every provider; the provider sees the client only if the client's
        // own check passed; each checks the other's table against the
        // version they agreed, and the real tables say NPI_VERSION.
        let agreed = oracle::negotiate(self.real_versions, self.real_versions);
        let both = self.same_side_too;
        let pair = u64::from(both && agreed == Some(NPI_VERSION));
        let client_pair_declined = u64::from(both) - pair;
        let provider_pair_offered = u64::from(both && agreed.is_some());
        let provider_pair_declined = provider_pair_offered - pair;
        let (offered, attached, declined) = (
            u64::from(e.offered_to_real),
            u64::from(e.attached),
            u64::from(e.declined.is_some()),
        );
        let fake_is_provider = fake.side == Side::Provider;
        let fake_published = fake_is_provider && e.attached && e.table_fault.is_none();
        if let Some(c) = client {
            assert_eq!(
                c.offered,
                c.attached + c.declined,
                "client: offered = attached + declined"
            );
            assert_eq!(c.attached, c.cleaned_up, "client: attached = cleaned up");
            let (o, a, d) = if fake_is_provider {
                (offered, attached, declined)
            } else {
                (0, 0, 0)
            };
            assert_eq!(
                (c.offered, c.attached, c.declined),
                (o + u64::from(both), a + pair, d + client_pair_declined),
                "client: offered, attached, declined; {ctx}"
            );
            // call_round: one call to the real provider (if attached), one
            // to the fake if its table passed the check.
            let fake_right = fake.spec.answer == crate::fake::Answer::Right;
            assert_eq!(
                c.calls,
                pair + u64::from(fake_published),
                "client calls; {ctx}"
            );
            assert_eq!(
                verified,
                Some(pair + u64::from(fake_published && fake_right)),
                "client verified; {ctx}"
            );
            assert_eq!(
                c.verified + c.mismatched,
                c.calls,
                "client: every call judged"
            );
            assert_eq!(
                c.mismatched,
                u64::from(fake_published && !fake_right),
                "client mismatched"
            );
        }
        if fake_is_provider {
            assert_eq!(
                seen.calls.load(SeqCst),
                u32::from(fake_published),
                "calls into the fake provider; {ctx}"
            );
        }
        if let Some(p) = provider {
            assert_eq!(
                p.offered,
                p.attached + p.declined,
                "provider: offered = attached + declined"
            );
            assert_eq!(p.attached, p.cleaned_up, "provider: attached = cleaned up");
            let (o, a, d) = if fake_is_provider {
                (0, 0, 0)
            } else {
                (offered, attached, declined)
            };
            assert_eq!(
                (p.offered, p.attached, p.declined),
                (
                    o + provider_pair_offered,
                    a + pair,
                    d + provider_pair_declined
                ),
                "provider: offered, attached, declined; {ctx}"
            );
            let fake_notified = u64::from(!fake_is_provider && e.attached);
            assert_eq!(
                notified,
                Some(pair + fake_notified),
                "provider notified; {ctx}"
            );
            if !fake_is_provider {
                assert_eq!(
                    u64::from(seen.calls.load(SeqCst)),
                    fake_notified,
                    "notify calls into the fake client"
                );
                assert_eq!(
                    fake_calls.made, e.attached,
                    "the fake client called the provider"
                );
            }
        }

        // The trace: each decline of the fake, with its status and reason;
        // each bad provider table, as a peer fault.
        let real = match fake.side {
            Side::Provider => nmr_client_module::client::NAME,
            Side::Client => nmr_provider_module::provider::NAME,
        };
        let lines = module_lines(sim, real);
        let declines: Vec<&(Event, NTSTATUS, String)> = lines
            .iter()
            .filter(|l| l.0 == Event::AttachDeclined)
            .collect();
        match &e.declined {
            Some((status, why)) => {
                assert!(
                    declines
                        .iter()
                        .any(|l| l.1 == *status && l.2.contains(why.as_str())),
                    "{real} traces its decline ({status:#x}, {why}): {lines:?}"
                );
            }
            None => {
                let pair_declines = if fake_is_provider {
                    client_pair_declined
                } else {
                    provider_pair_declined
                };
                assert_eq!(
                    declines.len() as u64,
                    pair_declines,
                    "{real} declined nothing else: {lines:?}"
                );
            }
        }
        for l in &declines {
            assert!(
                l.1 == STATUS_NOINTERFACE || !nt_success(l.1),
                "a decline carries a failure status: {l:?}"
            );
        }
        let faults: Vec<_> = lines.iter().filter(|l| l.0 == Event::PeerFault).collect();
        if let Some(why) = &e.table_fault {
            assert!(
                faults
                    .iter()
                    .any(|l| l.1 == STATUS_NOINTERFACE && l.2.contains(why.as_str())),
                "{real} traces the bad table ({why}): {lines:?}"
            );
        }
    }
}

/// The provider's table, called with bad arguments: each refused with a
/// named status, nothing written where it must not be.
fn check_provider_table(
    table: &ProviderDispatch,
    context: *mut core::ffi::c_void,
    payload: &[u8],
    info_size: u16,
) {
    // get_info with a buffer of exactly the declared size (at least its
    // `size` field): the provider reads the size and writes no more.
    let mut info = crate::exact::ExactBuf::new(usize::from(info_size).max(2), 0);
    info.write(0, &info_size.to_le_bytes());
    // SAFETY: the buffer is writable for the size it declares.
    let status = unsafe { (table.get_info)(context, info.as_ptr().cast_mut().cast()) };
    if usize::from(info_size) < size_of::<ProviderInfo>() {
        assert_eq!(
            status, STATUS_BUFFER_TOO_SMALL,
            "get_info with {info_size} bytes"
        );
    } else {
        assert_eq!(status, STATUS_SUCCESS, "get_info");
        // SAFETY: at least `size_of::<ProviderInfo>()` bytes, just written.
        let got = unsafe { info.as_ptr().cast::<ProviderInfo>().read_unaligned() };
        assert_eq!(got.size as usize, size_of::<ProviderInfo>());
        assert_eq!(got.features & FEATURE_CHECKSUM, FEATURE_CHECKSUM);
    }
    // SAFETY: a null `info` is one of the refused arguments.
    let status = unsafe { (table.get_info)(context, core::ptr::null_mut()) };
    assert_eq!(status, STATUS_INVALID_PARAMETER, "get_info(null)");
    let mut answer = 0u16;
    // SAFETY: a null context, a null out slot and null data with a length
    // are each refused before anything is read or written.
    unsafe {
        assert_eq!(
            (table.checksum)(
                core::ptr::null_mut(),
                payload.as_ptr(),
                payload.len(),
                &mut answer
            ),
            STATUS_INVALID_PARAMETER,
            "checksum with a null binding context"
        );
        assert_eq!(
            (table.checksum)(
                context,
                payload.as_ptr(),
                payload.len(),
                core::ptr::null_mut()
            ),
            STATUS_INVALID_PARAMETER,
            "checksum with a null answer slot"
        );
        assert_eq!(
            (table.checksum)(
                context,
                core::ptr::null(),
                payload.len().max(1),
                &mut answer
            ),
            STATUS_INVALID_PARAMETER,
            "checksum of null data"
        );
    }
}

/// Every trace line of `module`: event, status, text.
fn module_lines(sim: &Sim, module: &str) -> Vec<(Event, NTSTATUS, String)> {
    sim.events()
        .into_iter()
        .filter_map(|e| match e {
            LogEntry::Module {
                event,
                module: m,
                status,
                line,
                ..
            } if m == module => Some((event, status, line)),
            _ => None,
        })
        .collect()
}

/// The variant's name, to compare with the expected list.
pub fn violation_name(v: &Violation) -> &'static str {
    use Violation::*;
    match v {
        BadCharacteristics { .. } => "BadCharacteristics",
        UnknownHandle { .. } => "UnknownHandle",
        StaleHandle { .. } => "StaleHandle",
        WrongHandle { .. } => "WrongHandle",
        DoubleDeregister { .. } => "DoubleDeregister",
        WaitNotDeregistered { .. } => "WaitNotDeregistered",
        WaitTwice { .. } => "WaitTwice",
        WaitWouldDeadlock { .. } => "WaitWouldDeadlock",
        CompleteTwice { .. } => "CompleteTwice",
        CompleteAfterSuccess { .. } => "CompleteAfterSuccess",
        CompleteBeforeDetach { .. } => "CompleteBeforeDetach",
        BadDetachStatus { .. } => "BadDetachStatus",
        AttachOutsideCallback { .. } => "AttachOutsideCallback",
        AttachTwice { .. } => "AttachTwice",
        AttachNullOut { .. } => "AttachNullOut",
        AttachStatusMismatch { .. } => "AttachStatusMismatch",
        ProviderAttachNoDispatch { .. } => "ProviderAttachNoDispatch",
        NmrCallAtDispatch { .. } => "NmrCallAtDispatch",
        BlockingAtDispatch { .. } => "BlockingAtDispatch",
        IrqlNotRestored { .. } => "IrqlNotRestored",
        CallAfterDetach { .. } => "CallAfterDetach",
    }
}
