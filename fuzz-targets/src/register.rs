//! Target `register`: the characteristics the model's `NmrRegister*` accept,
//! and the handles its other entry points take.
//!
//! The input is a short program: register a client or a provider with
//! characteristics built from the input (`Version`, `Length`, null
//! callbacks, the registration instance's `Version`, `Size`, null `NpiId` or
//! `ModuleId`, a null characteristics or handle pointer, a call at
//! DISPATCH_LEVEL), deregister, wait, or complete, each with a handle of one
//! of those registrations, of the wrong side, or any value. The registered
//! modules are small stubs that follow the protocol (attach, accept or
//! decline, detach with SUCCESS).
//!
//! Checked: every call answers what the contract says (R11-R13): SUCCESS,
//! PENDING, or a failure status together with exactly one named violation of
//! the kind predicted; the model never panics or hangs; at the end, after
//! every registration was deregistered and waited for, no registration or
//! binding is left and every stub binding was cleaned up once.

// The model keeps pointers into each registration until its wait returns,
// so each lives in a box of its own: a `Vec<Reg>` would move them as it grows.
#![allow(clippy::vec_box)]

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use nmr_common::ffi::*;
use nmr_common::nmr::Nmr;
use nmr_sim::irql;
use nmr_sim::{Config, Delivery, DetachOrder, Side, Sim};

use crate::input::Input;
use crate::peer_attach::violation_name;

const NPI_A: GUID = GUID::from_u128(0xaaaa_0000_0000_4000_8000_0000_0000_000a);
const NPI_B: GUID = GUID::from_u128(0xbbbb_0000_0000_4000_8000_0000_0000_000b);
/// Both sides' dispatch table: the stubs never call through it.
static STUB_DISPATCH: [usize; 2] = [0, 0];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// `NmrRegister*` failed: no handle.
    Refused,
    Registered,
    Deregistered,
    /// The wait returned: the handle is stale.
    Gone,
}

/// One registration and what it saw.
struct Reg {
    sim: Sim,
    side: Side,
    accept: bool,
    npi: GUID,
    module_id: NPI_MODULEID,
    client: NPI_CLIENT_CHARACTERISTICS,
    provider: NPI_PROVIDER_CHARACTERISTICS,
    handle: HANDLE,
    state: State,
    has_cleanup: bool,
    attached: AtomicU32,
    cleaned: AtomicU32,
}

/// Runs one case.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let sim = Sim::new(
        Config {
            detach_order: if input.flag() {
                DetachOrder::ClientFirst
            } else {
                DetachOrder::ProviderFirst
            },
            delivery: Delivery::Inline,
            ..Config::default()
        }
        .recording(),
    );
    let mut regs: Vec<Box<Reg>> = Vec::new();
    let mut expected = 0usize;
    for _ in 0..12 {
        let before = sim.violations().len();
        let allowed: &[&str] = match input.choose(4) {
            0 => register(&sim, &mut regs, &mut input),
            1 => deregister(&sim, &mut regs, &mut input),
            2 => wait(&sim, &mut regs, &mut input),
            _ => complete(&sim, &regs, &mut input),
        };
        let violations = sim.violations();
        let new: Vec<&str> = violations[before..].iter().map(violation_name).collect();
        if allowed.is_empty() {
            assert!(
                new.is_empty(),
                "no violation expected: {:?}",
                &violations[before..]
            );
        } else {
            assert!(
                new.len() == 1 && allowed.contains(&new[0]),
                "expected one of {allowed:?}: {:?}",
                &violations[before..]
            );
            expected += 1;
        }
    }
    // Unload what is left, as a driver would.
    for reg in &mut regs {
        if reg.state == State::Registered {
            // SAFETY: a handle of a live registration of this side.
            let status = unsafe { deregister_side(&sim, reg.side, reg.handle) };
            assert_eq!(status, STATUS_PENDING);
            reg.state = State::Deregistered;
        }
        if reg.state == State::Deregistered {
            // SAFETY: as above, deregistered.
            let status = unsafe { wait_side(&sim, reg.side, reg.handle) };
            assert_eq!(status, STATUS_SUCCESS);
            reg.state = State::Gone;
        }
    }
    assert_eq!(sim.violations().len(), expected, "{:?}", sim.violations());
    assert_eq!(sim.live_registrations(), 0, "registrations left");
    assert_eq!(sim.live_bindings(), 0, "bindings left");
    let stats = sim.stats();
    assert_eq!(
        stats.bindings_made, stats.bindings_cleaned_up,
        "bindings made = cleaned up"
    );
    for reg in &regs {
        let cleaned = if reg.has_cleanup {
            reg.attached.load(SeqCst)
        } else {
            0
        };
        assert_eq!(
            reg.cleaned.load(SeqCst),
            cleaned,
            "every binding of a stub cleaned up once"
        );
    }
    drop(sim);
}

/// A value for a 16-bit field: right most of the time.
fn field(input: &mut Input<'_>, right: u16) -> u16 {
    if input.choose(8) == 0 {
        input.u16()
    } else {
        right
    }
}

fn register(sim: &Sim, regs: &mut Vec<Box<Reg>>, input: &mut Input<'_>) -> &'static [&'static str] {
    let side = if input.flag() {
        Side::Client
    } else {
        Side::Provider
    };
    let npi = if input.flag() { NPI_A } else { NPI_B };
    let mut module_id = NPI_MODULEID::from_guid(GUID::from_u128(0x5e9 + regs.len() as u128));
    if input.choose(8) == 0 {
        module_id.Length = input.u16();
        module_id.Type = input.u32() as i32;
    }
    let version = field(input, 0);
    let length = field(input, 72);
    let null_attach = input.choose(8) == 0;
    let null_detach = input.choose(8) == 0;
    let null_cleanup = input.choose(4) == 0;
    let inst_version = field(input, 0);
    let inst_size = field(input, 40);
    let null_npi = input.choose(8) == 0;
    let null_module_id = input.choose(8) == 0;
    // Opaque to the NMR: any value, never read (a bad address would fault).
    let number = input.u32();
    let npi_specific = ptr::without_provenance::<c_void>(usize::from(input.u16()) << 4);
    let null_chars = input.choose(16) == 0;
    let null_handle = input.choose(16) == 0;
    let at_dispatch = input.choose(16) == 0;
    let accept = input.choose(4) != 0;

    let mut reg = Box::new(Reg {
        sim: sim.clone(),
        side,
        accept,
        npi,
        module_id,
        client: NPI_CLIENT_CHARACTERISTICS {
            Version: version,
            Length: length,
            ClientAttachProvider: (!null_attach).then_some(stub_client_attach as _),
            ClientDetachProvider: (!null_detach).then_some(stub_detach as _),
            ClientCleanupBindingContext: (!null_cleanup).then_some(stub_cleanup as _),
            ClientRegistrationInstance: NPI_REGISTRATION_INSTANCE {
                Version: inst_version,
                Size: inst_size,
                NpiId: ptr::null(),
                ModuleId: ptr::null(),
                Number: number,
                NpiSpecificCharacteristics: npi_specific,
            },
        },
        provider: NPI_PROVIDER_CHARACTERISTICS {
            Version: version,
            Length: length,
            ProviderAttachClient: (!null_attach).then_some(stub_provider_attach as _),
            ProviderDetachClient: (!null_detach).then_some(stub_detach as _),
            ProviderCleanupBindingContext: (!null_cleanup).then_some(stub_cleanup as _),
            ProviderRegistrationInstance: NPI_REGISTRATION_INSTANCE {
                Version: inst_version,
                Size: inst_size,
                NpiId: ptr::null(),
                ModuleId: ptr::null(),
                Number: number,
                NpiSpecificCharacteristics: npi_specific,
            },
        },
        handle: ptr::null_mut(),
        state: State::Refused,
        has_cleanup: !null_cleanup,
        attached: AtomicU32::new(0),
        cleaned: AtomicU32::new(0),
    });
    let npi_ptr: *const GUID = if null_npi {
        ptr::null()
    } else {
        &raw const reg.npi
    };
    let id_ptr: *const NPI_MODULEID = if null_module_id {
        ptr::null()
    } else {
        &raw const reg.module_id
    };
    for inst in [
        &mut reg.client.ClientRegistrationInstance,
        &mut reg.provider.ProviderRegistrationInstance,
    ] {
        inst.NpiId = npi_ptr;
        inst.ModuleId = id_ptr;
    }

    let context = ptr::from_ref::<Reg>(&reg).cast_mut().cast::<c_void>();
    let mut handle: HANDLE = ptr::null_mut();
    let handle_out: *mut HANDLE = if null_handle {
        ptr::null_mut()
    } else {
        &mut handle
    };
    let old = at_dispatch.then(irql::raise_to_dispatch);
    // SAFETY: the characteristics and the context are boxed and kept until
    // the end of the case, after every wait; null pointers are the input's
    // misuse, for the model to refuse.
    let status = unsafe {
        match side {
            Side::Client => sim.register_client(
                if null_chars {
                    ptr::null()
                } else {
                    &raw const reg.client
                },
                context,
                handle_out,
            ),
            Side::Provider => sim.register_provider(
                if null_chars {
                    ptr::null()
                } else {
                    &raw const reg.provider
                },
                context,
                handle_out,
            ),
        }
    };
    if let Some(old) = old {
        irql::lower(old);
    }

    let valid = version == 0
        && length == 72
        && !null_attach
        && !null_detach
        && inst_version == 0
        && inst_size == 40
        && !null_npi
        && !null_module_id
        && !null_handle;
    let (want, allowed): (NTSTATUS, &'static [&'static str]) = if null_chars {
        (STATUS_INVALID_PARAMETER, &["BadCharacteristics"])
    } else if at_dispatch {
        (STATUS_UNSUCCESSFUL, &["NmrCallAtDispatch"])
    } else if !valid {
        (STATUS_INVALID_PARAMETER, &["BadCharacteristics"])
    } else {
        (STATUS_SUCCESS, &[])
    };
    assert_eq!(status, want, "NmrRegister* answers (allowed {allowed:?})");
    if status == STATUS_SUCCESS {
        assert!(!handle.is_null(), "a registration handle");
        reg.handle = handle;
        reg.state = State::Registered;
    } else {
        assert!(handle.is_null(), "no handle for a refused registration");
    }
    regs.push(reg);
    allowed
}

/// A handle to pass: one of a registration (of the side the input says),
/// or any value. Returns the handle, the side of the call, and the
/// registration it belongs to, if any.
fn pick(regs: &[Box<Reg>], input: &mut Input<'_>) -> (HANDLE, Side, Option<usize>) {
    let side = if input.flag() {
        Side::Client
    } else {
        Side::Provider
    };
    if !regs.is_empty() && input.choose(4) != 0 {
        let i = usize::from(input.u8()) % regs.len();
        (regs[i].handle, side, Some(i))
    } else {
        // A made-up value may be a registration's handle after all (they
        // are predictable): then it is that registration's.
        let handle = ptr::without_provenance_mut(input.u32() as usize);
        (handle, side, regs.iter().position(|r| r.handle == handle))
    }
}

/// The violations a handle the call cannot use may raise: which one depends
/// on a value the input made up.
const BAD_HANDLE: &[&str] = &["UnknownHandle", "StaleHandle", "WrongHandle"];

fn deregister(sim: &Sim, regs: &mut [Box<Reg>], input: &mut Input<'_>) -> &'static [&'static str] {
    let (handle, side, reg) = pick(regs, input);
    // SAFETY: any value: the model resolves handles before using them.
    let status = unsafe { deregister_side(sim, side, handle) };
    let allowed: &[&str] = match reg.map(|i| (i, regs[i].state, regs[i].side == side)) {
        Some((i, State::Registered, true)) => {
            assert_eq!(
                status, STATUS_PENDING,
                "NmrDeregister* of a live registration"
            );
            regs[i].state = State::Deregistered;
            return &[];
        }
        Some((_, State::Deregistered, true)) => &["DoubleDeregister"],
        Some((_, State::Registered | State::Deregistered, false)) => &["WrongHandle"],
        Some((_, State::Gone, _)) => &["StaleHandle"],
        Some((_, State::Refused, _)) => &["UnknownHandle"],
        None => BAD_HANDLE,
    };
    assert_eq!(
        status, STATUS_INVALID_PARAMETER,
        "NmrDeregister* refuses a bad handle"
    );
    allowed
}

fn wait(sim: &Sim, regs: &mut [Box<Reg>], input: &mut Input<'_>) -> &'static [&'static str] {
    let (handle, side, reg) = pick(regs, input);
    // SAFETY: any value: the model resolves handles before using them.
    let status = unsafe { wait_side(sim, side, handle) };
    let allowed: &[&str] = match reg.map(|i| (i, regs[i].state, regs[i].side == side)) {
        Some((i, State::Deregistered, true)) => {
            // Every detach answered SUCCESS inline: nothing to wait for.
            assert_eq!(status, STATUS_SUCCESS, "the wait of a deregistered module");
            regs[i].state = State::Gone;
            return &[];
        }
        Some((_, State::Registered, true)) => &["WaitNotDeregistered"],
        Some((_, State::Registered | State::Deregistered, false)) => &["WrongHandle"],
        Some((_, State::Gone, _)) => &["StaleHandle"],
        Some((_, State::Refused, _)) => &["UnknownHandle"],
        None => BAD_HANDLE,
    };
    assert_eq!(
        status, STATUS_INVALID_PARAMETER,
        "the wait refuses a bad handle"
    );
    allowed
}

fn complete(sim: &Sim, regs: &[Box<Reg>], input: &mut Input<'_>) -> &'static [&'static str] {
    let (handle, side, reg) = pick(regs, input);
    // SAFETY: any value: the model resolves handles before using them.
    unsafe {
        match side {
            Side::Client => sim.client_detach_provider_complete(handle),
            Side::Provider => sim.provider_detach_client_complete(handle),
        }
    }
    match reg.map(|i| regs[i].state) {
        // A registration handle is never a binding handle.
        Some(State::Registered | State::Deregistered) => &["WrongHandle"],
        Some(State::Gone) => &["StaleHandle"],
        Some(State::Refused) => &["UnknownHandle"],
        // Any value may also hit a live binding, whose detach has not begun.
        None => &[
            "UnknownHandle",
            "StaleHandle",
            "WrongHandle",
            "CompleteBeforeDetach",
        ],
    }
}

/// # Safety
/// As `NmrDeregister*`, any handle value.
unsafe fn deregister_side(sim: &Sim, side: Side, handle: HANDLE) -> NTSTATUS {
    // SAFETY: the caller's.
    unsafe {
        match side {
            Side::Client => sim.deregister_client(handle),
            Side::Provider => sim.deregister_provider(handle),
        }
    }
}

/// # Safety
/// As `NmrWaitFor*DeregisterComplete`, any handle value.
unsafe fn wait_side(sim: &Sim, side: Side, handle: HANDLE) -> NTSTATUS {
    // SAFETY: the caller's.
    unsafe {
        match side {
            Side::Client => sim.wait_for_client_deregister_complete(handle),
            Side::Provider => sim.wait_for_provider_deregister_complete(handle),
        }
    }
}

/// # Safety
/// The context is a live `Reg` (the model passes back what was registered).
unsafe fn reg<'a>(context: *mut c_void) -> &'a Reg {
    // SAFETY: the caller's.
    unsafe { &*context.cast::<Reg>() }
}

unsafe extern "system" fn stub_client_attach(
    handle: HANDLE,
    context: *mut c_void,
    _provider: *const NPI_REGISTRATION_INSTANCE,
) -> NTSTATUS {
    // SAFETY: our registration context.
    let r = unsafe { reg(context) };
    if !r.accept {
        return STATUS_NOINTERFACE;
    }
    let (mut peer_context, mut peer_dispatch) = (ptr::null_mut(), ptr::null());
    // SAFETY: inside ClientAttachProvider for `handle`; the context and the
    // static table outlive the binding; the out slots are locals.
    let status = unsafe {
        r.sim.client_attach_provider(
            handle,
            context,
            (&raw const STUB_DISPATCH).cast(),
            &mut peer_context,
            &mut peer_dispatch,
        )
    };
    if nt_success(status) {
        r.attached.fetch_add(1, SeqCst);
    }
    status
}

#[allow(clippy::too_many_arguments)]
unsafe extern "system" fn stub_provider_attach(
    _handle: HANDLE,
    context: *mut c_void,
    _client: *const NPI_REGISTRATION_INSTANCE,
    _client_context: *mut c_void,
    _client_dispatch: *const c_void,
    out_context: *mut *mut c_void,
    out_dispatch: *mut *const c_void,
) -> NTSTATUS {
    // SAFETY: our registration context.
    let r = unsafe { reg(context) };
    if !r.accept {
        return STATUS_NOINTERFACE;
    }
    // SAFETY: the model hands writable out slots.
    unsafe {
        out_context.write(context);
        out_dispatch.write((&raw const STUB_DISPATCH).cast());
    }
    r.attached.fetch_add(1, SeqCst);
    STATUS_SUCCESS
}

unsafe extern "system" fn stub_detach(_context: *mut c_void) -> NTSTATUS {
    STATUS_SUCCESS
}

unsafe extern "system" fn stub_cleanup(context: *mut c_void) {
    // SAFETY: the binding context is the registration's own context.
    unsafe { reg(context) }.cleaned.fetch_add(1, SeqCst);
}
