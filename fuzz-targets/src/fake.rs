//! A peer module built from the fuzz input: what it publishes (registration
//! instance, module id, NPI-specific characteristics, dispatch table) and
//! what it answers are the input's; how it follows the NMR protocol is
//! correct (R3: a client returns what `NmrClientAttachProvider` returned; a
//! detach answers SUCCESS, nothing being in flight when the model runs
//! inline). Bad data, good manners: the target is how our modules take bad
//! data, not the model's recovery from a misbehaving module (issue 12, point 3).
//!
//! Everything runs on the fuzzing thread ([`nmr_sim::Delivery::Inline`]), so
//! the callbacks find the fake through a thread-local.

use std::cell::Cell;
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering::SeqCst};

use nmr_common::ffi::*;
use nmr_common::nmr::Nmr;
use nmr_common::npi::*;
use nmr_sim::{Side, Sim};

use crate::exact::ExactBuf;
use crate::input::Input;
use crate::oracle::{Published, Table};

/// The fake's module id when the input keeps it well formed.
pub const FAKE_GUID: GUID = GUID::from_u128(0xfa4e_0000_0000_4000_8000_0000_0000_0001);
/// An NPI nobody else registers.
pub const OTHER_NPI: GUID = GUID::from_u128(0x0e0e_0000_0000_4000_8000_0000_0000_0002);

/// Which NPI id the fake registers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpiChoice {
    /// A null `NpiId` (the model refuses the registration).
    Null,
    /// This project's NPI: the real modules are offered the fake.
    Ours,
    /// Another NPI: nobody is offered the fake.
    Other,
}

/// How the fake's dispatch functions answer `checksum`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The right checksum, `STATUS_SUCCESS`.
    Right,
    /// This wrong value (the right one xor a non-zero mask), `STATUS_SUCCESS`.
    Wrong(u16),
    /// This failure status and no answer.
    Fail(NTSTATUS),
}

/// A module id as the input builds it: `Length`, `Type`, and 16 bytes of
/// union (a GUID, or a LUID in the first 8).
#[derive(Clone, Copy, Debug)]
pub struct ModuleIdSpec {
    /// `Length`.
    pub length: u16,
    /// `Type`.
    pub kind: i32,
    /// The union's bytes, as a GUID's text form.
    pub id: u128,
}

impl ModuleIdSpec {
    /// A well-formed GUID module id.
    pub fn guid(guid: GUID) -> Self {
        ModuleIdSpec {
            length: 24,
            kind: MIT_GUID,
            id: u128::from(guid.Data1) << 96
                | u128::from(guid.Data2) << 80
                | u128::from(guid.Data3) << 64
                | u128::from(u64::from_be_bytes(guid.Data4)),
        }
    }

    /// The C struct.
    pub fn to_ffi(self) -> NPI_MODULEID {
        let mut id = NPI_MODULEID::from_guid(GUID::from_u128(self.id));
        id.Length = self.length;
        id.Type = self.kind;
        id
    }
}

/// Everything the fake publishes and answers.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    /// The registration instance's `Version` (valid: 0).
    pub version: u16,
    /// Its `Size` (valid: 40).
    pub size: u16,
    /// Its `NpiId`.
    pub npi: NpiChoice,
    /// Its `ModuleId` (`None`: null).
    pub module_id: Option<ModuleIdSpec>,
    /// Its `Number` (opaque to the NMR and unused by our NPI).
    pub number: u32,
    /// Its `NpiSpecificCharacteristics` (`None`: null), and the bytes after
    /// the fields, up to the declared size.
    pub chars: Option<(Published, u8)>,
    /// The dispatch table's header, and its first byte's offset from 8-byte
    /// alignment (`None`: a null table).
    pub table: Option<(u16, u16, usize)>,
    /// Provider: what `ProviderAttachClient` returns.
    pub attach_status: NTSTATUS,
    /// Provider: hand out a null binding context.
    pub null_context: bool,
    /// Client: decline every provider without calling `NmrClientAttachProvider`.
    pub declines: bool,
    /// Client: call `NmrClientAttachProvider` with null out pointers (misuse
    /// the model refuses, and the fake returns the refusal as R3 says).
    pub null_out: bool,
    /// Provider: how `checksum` answers.
    pub answer: Answer,
    /// Client: the `size` its `ProviderInfo` buffer declares for `get_info`.
    pub info_size: u16,
}

fn status_from(input: &mut Input<'_>) -> NTSTATUS {
    match input.choose(6) {
        0 | 1 => STATUS_SUCCESS,
        2 => STATUS_NOINTERFACE,
        3 => STATUS_INSUFFICIENT_RESOURCES,
        // Informational statuses are successes too (NT_SUCCESS).
        4 => STATUS_PENDING,
        _ => input.u32() as NTSTATUS,
    }
}

/// A small version most of the time (so ranges overlap often), any `u16`
/// now and then.
pub fn version_from(input: &mut Input<'_>) -> u16 {
    let b = input.u8();
    if b & 0x80 != 0 {
        input.u16()
    } else {
        u16::from(b % 4)
    }
}

impl PeerSpec {
    /// Reads a spec; each field is valid unless the input says otherwise.
    pub fn read(input: &mut Input<'_>) -> PeerSpec {
        let version = if input.choose(8) == 0 { input.u16() } else { 0 };
        let size = if input.choose(8) == 0 {
            input.u16()
        } else {
            40
        };
        let npi = match input.choose(16) {
            0 => NpiChoice::Null,
            1 => NpiChoice::Other,
            _ => NpiChoice::Ours,
        };
        let module_id = match input.choose(8) {
            0 => None,
            // Any module id.
            1 => Some(ModuleIdSpec {
                length: input.u16(),
                kind: input.u32() as i32,
                id: u128::from(input.u64()),
            }),
            // An interface LUID: well formed, but not the GUID our NPI wants.
            2 => Some(ModuleIdSpec {
                length: 24,
                kind: MIT_IF_LUID,
                id: u128::from(input.u64()),
            }),
            _ => Some(ModuleIdSpec::guid(FAKE_GUID)),
        };
        let number = input.u32();
        let chars = if input.choose(8) == 0 {
            None
        } else {
            let declared = if input.choose(4) == 0 {
                input.u16()
            } else {
                size_of::<NpiCharacteristics>() as u16
            };
            let versions = VersionRange {
                min: version_from(input),
                max: version_from(input),
            };
            Some((Published { declared, versions }, input.u8()))
        };
        let table = match input.choose(8) {
            0 => None,
            1 => Some((input.u16(), input.u16(), usize::from(input.choose(8)))),
            // The right size and this version, aligned: the version decides.
            _ => Some((version_from(input), 0, 0)),
        };
        PeerSpec {
            version,
            size,
            npi,
            module_id,
            number,
            chars,
            table,
            attach_status: status_from(input),
            null_context: input.choose(8) == 0,
            declines: input.choose(8) == 0,
            null_out: input.choose(16) == 0,
            answer: match input.choose(4) {
                0 => Answer::Wrong(input.u16().max(1)),
                1 => Answer::Fail(STATUS_DEVICE_NOT_READY),
                _ => Answer::Right,
            },
            info_size: if input.flag() {
                input.u16()
            } else {
                size_of::<ProviderInfo>() as u16
            },
        }
    }

    /// The table as the oracle sees it, for a table type of `full` bytes
    /// (a size of 0 in the spec stands for `full`).
    pub fn oracle_table(&self, full: usize) -> Option<Table> {
        self.table.map(|(version, size, offset)| Table {
            version,
            size: if size == 0 { full as u16 } else { size },
            aligned: offset == 0,
        })
    }
}

/// What the fake saw, for the target's checks.
#[derive(Default)]
pub struct Seen {
    /// Attach callbacks entered (offers).
    pub offered: AtomicU32,
    /// Bindings the fake made (its attach succeeded).
    pub attached: AtomicU32,
    /// Detach callbacks.
    pub detached: AtomicU32,
    /// Cleanup callbacks.
    pub cleaned: AtomicU32,
    /// Calls into the fake's dispatch table.
    pub calls: AtomicU32,
    /// Calls that arrived after the fake's cleanup.
    pub calls_after_cleanup: AtomicU32,
    /// Callbacks that passed a binding context the fake never gave.
    pub wrong_context: AtomicU32,
}

/// The fake module: one registration, at most one binding.
pub struct Fake {
    /// The model.
    pub sim: Sim,
    /// Client or provider.
    pub side: Side,
    /// What it publishes and answers.
    pub spec: PeerSpec,
    npi: GUID,
    module_id: Option<Box<NPI_MODULEID>>,
    chars: Option<ExactBuf>,
    table: Option<ExactBuf>,
    client_chars: NPI_CLIENT_CHARACTERISTICS,
    provider_chars: NPI_PROVIDER_CHARACTERISTICS,
    handle: AtomicUsize,
    /// This side's binding handle, once attached.
    binding_handle: AtomicUsize,
    /// The real peer's binding context and dispatch table (client side).
    pub peer_context: AtomicPtr<c_void>,
    /// As above.
    pub peer_dispatch: AtomicPtr<c_void>,
    /// What it saw.
    pub seen: Seen,
}

thread_local! {
    static CURRENT: Cell<*const Fake> = const { Cell::new(ptr::null()) };
}

/// The fake of this thread's case.
fn current<'a>() -> &'a Fake {
    let p = CURRENT.with(Cell::get);
    assert!(!p.is_null(), "a fake callback outside its case");
    // SAFETY: set by `Fake::install` to a boxed fake that stays alive (and
    // installed) until its registration's wait returned, after which the
    // model calls none of its callbacks.
    unsafe { &*p }
}

impl Fake {
    /// Builds the fake; it registers with [`Fake::register`].
    pub fn new(sim: &Sim, side: Side, spec: PeerSpec) -> Box<Fake> {
        let npi = match spec.npi {
            NpiChoice::Other => OTHER_NPI,
            _ => NPI_ID,
        };
        let chars = spec.chars.map(|(p, fill)| {
            let mut buf = ExactBuf::new(usize::from(p.declared).max(2), 0);
            let mut bytes = vec![fill; buf.len()];
            bytes[..2].copy_from_slice(&p.declared.to_le_bytes());
            if bytes.len() >= 6 {
                bytes[2..4].copy_from_slice(&p.versions.min.to_le_bytes());
                bytes[4..6].copy_from_slice(&p.versions.max.to_le_bytes());
            }
            buf.write(0, &bytes);
            buf
        });
        let full = match side {
            Side::Client => size_of::<ClientDispatch>(),
            Side::Provider => size_of::<ProviderDispatch>(),
        };
        let table = spec.oracle_table(full).map(|t| {
            let offset = spec.table.map_or(0, |(_, _, o)| o);
            let mut buf = ExactBuf::new(usize::from(t.size).max(4), offset);
            buf.write(0, &t.version.to_le_bytes());
            buf.write(2, &t.size.to_le_bytes());
            // The functions, where the declared size has room for them: a
            // peer's table holds its own functions, whatever its header says.
            match side {
                Side::Client => buf.write_value::<NotifyFn>(8, fake_notify),
                Side::Provider => {
                    buf.write_value::<GetInfoFn>(8, fake_get_info);
                    buf.write_value::<ChecksumFn>(16, fake_checksum);
                }
            }
            buf
        });
        let mut fake = Box::new(Fake {
            sim: sim.clone(),
            side,
            npi,
            module_id: spec.module_id.map(|m| Box::new(m.to_ffi())),
            chars,
            table,
            client_chars: NPI_CLIENT_CHARACTERISTICS {
                Version: 0,
                Length: size_of::<NPI_CLIENT_CHARACTERISTICS>() as u16,
                ClientAttachProvider: Some(fake_client_attach),
                ClientDetachProvider: Some(fake_detach),
                ClientCleanupBindingContext: Some(fake_cleanup),
                ClientRegistrationInstance: empty_instance(),
            },
            provider_chars: NPI_PROVIDER_CHARACTERISTICS {
                Version: 0,
                Length: size_of::<NPI_PROVIDER_CHARACTERISTICS>() as u16,
                ProviderAttachClient: Some(fake_provider_attach),
                ProviderDetachClient: Some(fake_detach),
                ProviderCleanupBindingContext: Some(fake_cleanup),
                ProviderRegistrationInstance: empty_instance(),
            },
            spec,
            handle: AtomicUsize::new(0),
            binding_handle: AtomicUsize::new(0),
            peer_context: AtomicPtr::new(ptr::null_mut()),
            peer_dispatch: AtomicPtr::new(ptr::null_mut()),
            seen: Seen::default(),
        });
        let instance = NPI_REGISTRATION_INSTANCE {
            Version: fake.spec.version,
            Size: fake.spec.size,
            NpiId: match fake.spec.npi {
                NpiChoice::Null => ptr::null(),
                _ => &raw const fake.npi,
            },
            ModuleId: fake.module_id.as_deref().map_or(ptr::null(), ptr::from_ref),
            Number: fake.spec.number,
            NpiSpecificCharacteristics: fake
                .chars
                .as_ref()
                .map_or(ptr::null(), |c| c.as_ptr().cast()),
        };
        fake.client_chars.ClientRegistrationInstance = instance;
        fake.provider_chars.ProviderRegistrationInstance = instance;
        fake
    }

    /// The published characteristics, as the oracle sees them.
    pub fn published(&self) -> Option<Published> {
        self.spec.chars.map(|(p, _)| p)
    }

    /// The registration instance's module id, as the oracle sees it.
    pub fn module_id(&self) -> Option<&NPI_MODULEID> {
        self.module_id.as_deref()
    }

    /// The registration instance.
    pub fn instance(&self) -> &NPI_REGISTRATION_INSTANCE {
        match self.side {
            Side::Client => &self.client_chars.ClientRegistrationInstance,
            Side::Provider => &self.provider_chars.ProviderRegistrationInstance,
        }
    }

    /// Makes this fake the one the callbacks on this thread find.
    pub fn install(&self) {
        CURRENT.with(|c| c.set(self));
    }

    /// `NmrRegister*`; returns its status.
    pub fn register(&self) -> NTSTATUS {
        let context = ptr::from_ref(self).cast_mut().cast::<c_void>();
        let mut handle: HANDLE = ptr::null_mut();
        // SAFETY: the characteristics and the fake (the context) are boxed
        // and live until after the deregistration wait; `handle` is a local.
        let status = unsafe {
            match self.side {
                Side::Client => self
                    .sim
                    .register_client(&self.client_chars, context, &mut handle),
                Side::Provider => {
                    self.sim
                        .register_provider(&self.provider_chars, context, &mut handle)
                }
            }
        };
        self.handle.store(handle as usize, SeqCst);
        status
    }

    /// Deregisters and waits (when registered).
    pub fn unload(&self) {
        let handle = self.handle.swap(0, SeqCst) as HANDLE;
        if handle.is_null() {
            return;
        }
        // SAFETY: the handle came from a successful registration, used once.
        let status = unsafe {
            match self.side {
                Side::Client => self.sim.deregister_client(handle),
                Side::Provider => self.sim.deregister_provider(handle),
            }
        };
        assert_eq!(status, STATUS_PENDING, "the model's NmrDeregister*");
        // SAFETY: deregistered just above.
        let waited = unsafe {
            match self.side {
                Side::Client => self.sim.wait_for_client_deregister_complete(handle),
                Side::Provider => self.sim.wait_for_provider_deregister_complete(handle),
            }
        };
        assert_eq!(
            waited, STATUS_SUCCESS,
            "the model's NmrWaitFor*DeregisterComplete"
        );
    }

    /// The binding context the fake hands out (provider) or gives
    /// `NmrClientAttachProvider` (client).
    fn context(&self) -> *mut c_void {
        if self.spec.null_context {
            ptr::null_mut()
        } else {
            ptr::from_ref(self).cast_mut().cast()
        }
    }

    fn check_context(&self, context: *mut c_void) {
        if context != self.context() {
            self.seen.wrong_context.fetch_add(1, SeqCst);
        }
    }

    /// Counts a call into the fake's table and tells the model (R9 checks).
    fn incoming(&self, context: *mut c_void) {
        self.check_context(context);
        self.seen.calls.fetch_add(1, SeqCst);
        if self.seen.cleaned.load(SeqCst) > 0 {
            self.seen.calls_after_cleanup.fetch_add(1, SeqCst);
        }
        self.sim
            .incoming_call(self.binding_handle.load(SeqCst) as HANDLE);
    }

    /// The provider's table, as the fake client received it (null if none).
    pub fn provider_table(&self) -> Option<&ProviderDispatch> {
        let p = self.peer_dispatch.load(SeqCst);
        // SAFETY: null or the real provider's own table, which lives in the
        // provider module; the fake only calls it while attached.
        unsafe { p.cast_const().cast::<ProviderDispatch>().as_ref() }
    }
}

fn empty_instance() -> NPI_REGISTRATION_INSTANCE {
    NPI_REGISTRATION_INSTANCE {
        Version: 0,
        Size: 0,
        NpiId: ptr::null(),
        ModuleId: ptr::null(),
        Number: 0,
        NpiSpecificCharacteristics: ptr::null(),
    }
}

unsafe extern "system" fn fake_client_attach(
    handle: HANDLE,
    _context: *mut c_void,
    _provider: *const NPI_REGISTRATION_INSTANCE,
) -> NTSTATUS {
    let fake = current();
    fake.seen.offered.fetch_add(1, SeqCst);
    if fake.spec.declines {
        return STATUS_NOINTERFACE;
    }
    let table = fake
        .table
        .as_ref()
        .map_or(ptr::null(), |t| t.as_ptr().cast());
    let (mut peer_context, mut peer_dispatch) = (ptr::null_mut(), ptr::null());
    let (out_context, out_dispatch) = if fake.spec.null_out {
        (ptr::null_mut(), ptr::null_mut())
    } else {
        (&raw mut peer_context, &raw mut peer_dispatch)
    };
    // SAFETY: inside ClientAttachProvider for `handle`; the context and table
    // live in the boxed fake until after its wait; the out slots are locals
    // (or null, which the model must refuse).
    let status = unsafe {
        fake.sim
            .client_attach_provider(handle, fake.context(), table, out_context, out_dispatch)
    };
    if nt_success(status) {
        fake.binding_handle.store(handle as usize, SeqCst);
        fake.peer_context.store(peer_context, SeqCst);
        fake.peer_dispatch.store(peer_dispatch.cast_mut(), SeqCst);
        fake.seen.attached.fetch_add(1, SeqCst);
    }
    // R3: the status NmrClientAttachProvider returned.
    status
}

#[allow(clippy::too_many_arguments)]
unsafe extern "system" fn fake_provider_attach(
    handle: HANDLE,
    _context: *mut c_void,
    _client: *const NPI_REGISTRATION_INSTANCE,
    _client_context: *mut c_void,
    _client_dispatch: *const c_void,
    out_context: *mut *mut c_void,
    out_dispatch: *mut *const c_void,
) -> NTSTATUS {
    let fake = current();
    fake.seen.offered.fetch_add(1, SeqCst);
    let status = fake.spec.attach_status;
    if nt_success(status) {
        let table = fake
            .table
            .as_ref()
            .map_or(ptr::null(), |t| t.as_ptr().cast());
        // SAFETY: the model hands writable out slots.
        unsafe {
            out_context.write(fake.context());
            out_dispatch.write(table);
        }
        fake.binding_handle.store(handle as usize, SeqCst);
        fake.seen.attached.fetch_add(1, SeqCst);
    }
    status
}

unsafe extern "system" fn fake_detach(context: *mut c_void) -> NTSTATUS {
    let fake = current();
    fake.check_context(context);
    fake.seen.detached.fetch_add(1, SeqCst);
    STATUS_SUCCESS
}

unsafe extern "system" fn fake_cleanup(context: *mut c_void) {
    let fake = current();
    fake.check_context(context);
    fake.seen.cleaned.fetch_add(1, SeqCst);
}

unsafe extern "system" fn fake_notify(context: *mut c_void, _event: u32, _value: u64) {
    current().incoming(context);
}

unsafe extern "system" fn fake_get_info(
    context: *mut c_void,
    _info: *mut ProviderInfo,
) -> NTSTATUS {
    current().incoming(context);
    STATUS_NOINTERFACE
}

unsafe extern "system" fn fake_checksum(
    context: *mut c_void,
    data: *const u8,
    len: usize,
    out: *mut u16,
) -> NTSTATUS {
    let fake = current();
    fake.incoming(context);
    let bytes = if len == 0 {
        &[][..]
    } else {
        // SAFETY: the caller's buffer, readable for `len` bytes (the NPI's rule).
        unsafe { std::slice::from_raw_parts(data, len) }
    };
    let right = crate::oracle::reference_checksum(bytes);
    let (status, answer) = match fake.spec.answer {
        Answer::Right => (STATUS_SUCCESS, right),
        Answer::Wrong(mask) => (STATUS_SUCCESS, right ^ mask),
        Answer::Fail(status) => (status, 0),
    };
    // SAFETY: the caller's answer slot, writable (the NPI's rule).
    unsafe { out.write_unaligned(answer) };
    status
}
