//! Hostile and outdated peers: raw NPI modules written straight against the
//! NMR surface (the model's NMR functions and the `netioddk.h` types), as a
//! driver built by someone else, or from another version of this project's
//! NPI header, would be. Both stresses (the modules on the model, and the
//! shipped images) load and unload them among the real modules, and each
//! must be declined, or survived, as NMR-CONTRACT.md says:
//!
//! | peer | what it does | what ours must do |
//! |---|---|---|
//! | [`Hostile::OldProvider`] | a provider of NPI version 0 only | every client declines it before `NmrClientAttachProvider`: its `ProviderAttachClient` never runs |
//! | [`Hostile::ShortTableProvider`] | version 1, but its dispatch table declares 16 bytes (header and `get_info`, no `checksum`) | a client, attached already when it sees the table (R3: too late to decline), leaves the binding unused: not one call through it; detach and cleanup as usual |
//! | [`Hostile::ForeignProvider`], [`Hostile::ForeignClient`] | another NPI id | never offered to ours (R1); they bind each other |
//! | [`Hostile::FailingClient`] | calls `NmrClientAttachProvider`, then returns a failure (R3 revised) | the provider survives: the NMR detaches and cleans up its side; the violation is the client's |
//!
//! The peers write their characteristics and tables as the wire layout
//! (pinned below against nmr-common's), not through this project's Rust
//! types: they stand for modules built from another header. Hostile peers
//! decline each other (the foreign pair excepted), so that every offer
//! involving one of them also involves one of ours.
//!
//! The NMR calls their callbacks as `extern "system"` (they register like
//! host modules); the dispatch tables they hand out are called by our
//! modules in the convention those were built for ([`CallAbi`]): the host's
//! for the modules on the model, Windows x64 for the shipped images.

use std::ffi::c_void;
use std::ptr;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;

use nmr_common::ffi::*;
use nmr_common::nmr::Nmr;
use nmr_common::npi::NPI_ID;

use crate::Sim;

/// The kinds of hostile peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostile {
    /// A provider that speaks only NPI version 0.
    OldProvider,
    /// A version 1 provider whose dispatch table is too short for version 1.
    ShortTableProvider,
    /// A provider of another NPI id.
    ForeignProvider,
    /// A client of another NPI id.
    ForeignClient,
    /// A client that fails after `NmrClientAttachProvider` succeeded.
    FailingClient,
}

impl Hostile {
    /// Every kind, in the order of [`HostileReport::peers`].
    pub const ALL: [Hostile; 5] = [
        Hostile::OldProvider,
        Hostile::ShortTableProvider,
        Hostile::ForeignProvider,
        Hostile::ForeignClient,
        Hostile::FailingClient,
    ];

    /// The name it registers with (its instances add `#index`).
    pub const fn name(self) -> &'static str {
        match self {
            Hostile::OldProvider => "hostile-old-provider",
            Hostile::ShortTableProvider => "hostile-short-table-provider",
            Hostile::ForeignProvider => "hostile-foreign-provider",
            Hostile::ForeignClient => "hostile-foreign-client",
            Hostile::FailingClient => "hostile-failing-client",
        }
    }

    const fn is_client(self) -> bool {
        matches!(self, Hostile::ForeignClient | Hostile::FailingClient)
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// The NPI id of the foreign pair.
pub const FOREIGN_NPI_ID: GUID = GUID::from_u128(0x0f0e_19e0_0000_4000_8000_0000_0000_0001);

/// The high bits of every hostile module id (the low bits: kind, index).
const HOSTILE_MODULE_ID: u128 = 0x4057_11e0_0000_4000_8000_0000_0000_0000;

/// The convention in which our modules call the tables a peer hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallAbi {
    /// `extern "system"` on this host: modules compiled for it.
    System,
    /// Windows x64: the shipped `.sys` images, run on an x86_64 host.
    #[cfg(target_arch = "x86_64")]
    Win64,
}

/// `NpiCharacteristics` on the wire: `{ size, min, max }`.
#[repr(C)]
struct WireCharacteristics {
    size: u16,
    min: u16,
    max: u16,
}

/// A dispatch table on the wire: `{ version, size }` and function pointers.
/// `size` may declare fewer bytes than the memory holds (the short table).
#[repr(C)]
struct WireTable {
    version: u16,
    size: u16,
    functions: [usize; 2],
}

// The wire layout is the NPI's (nmr-common pins its own the same way).
const _: () = {
    use nmr_common::npi::{ClientDispatch, NpiCharacteristics, ProviderDispatch};
    assert!(size_of::<WireCharacteristics>() == size_of::<NpiCharacteristics>());
    assert!(size_of::<WireTable>() == size_of::<ProviderDispatch>());
    assert!(size_of::<ClientDispatch>() == 16);
};

nmr_common::counters! {
    /// What one peer counts as it runs (atomics: its callbacks run on any
    /// thread, detach and cleanup at DISPATCH_LEVEL).
    pub struct Counters =>
    /// What one peer saw; plain counts, summed over a run.
    Tally {
        /// Loads (registrations).
        loads,
        /// Attach callbacks called.
        offers,
        /// Offers of a peer of another NPI id (the NMR broke R1).
        wrong_npi,
        /// The old provider: attach offers from our clients, which must have
        /// declined it first.
        accepted_wrongly,
        /// Bindings it attached (the failing client: before failing).
        attached,
        /// The failing client: failures returned after the provider attached.
        failed_after_attach,
        /// Offers it declined because the peer was another hostile peer.
        declined_hostile,
        /// The failing client: `NmrClientAttachProvider` failed (declined by ours).
        declined_by_ours,
        /// Calls through the providers' tables (none may come).
        calls,
        /// `notify` calls into the failing client.
        notifications,
        /// Detach callbacks.
        detaches,
        /// Cleanup callbacks.
        cleanups,
    }
}

/// One binding of a peer: its context, alive until the peer is dropped
/// (after its deregistration wait), so that a call our module makes into
/// the failing client after it failed lands on live memory.
struct BindingCtx {
    peer: *const Peer,
    handle: HANDLE,
}

/// The registration context.
struct Peer {
    sim: Sim,
    kind: Hostile,
    abi: CallAbi,
    npi_id: GUID,
    module_id: NPI_MODULEID,
    characteristics: WireCharacteristics,
    table: WireTable,
    client: NPI_CLIENT_CHARACTERISTICS,
    provider: NPI_PROVIDER_CHARACTERISTICS,
    // Boxed: the NMR holds each context's address while the list grows.
    #[allow(clippy::vec_box)]
    bindings: Mutex<Vec<Box<BindingCtx>>>,
    counts: Counters,
}

/// A loaded hostile peer. Dropping it unloads it.
pub struct HostilePeer {
    peer: Box<Peer>,
    handle: HANDLE,
    unloaded: bool,
}

// SAFETY: the raw pointers inside point into the peer's own box (its
// characteristics) or at statics; everything shared is atomic or locked.
unsafe impl Send for HostilePeer {}
// SAFETY: as above.
unsafe impl Sync for HostilePeer {}

/// Interned `&'static` names, as the model's `name_module` needs.
fn instance_name(kind: Hostile, index: u32) -> &'static str {
    static NAMES: Mutex<Vec<(Hostile, u32, &'static str)>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, _, n)) = names.iter().find(|(k, i, _)| *k == kind && *i == index) {
        return n;
    }
    let n: &'static str = Box::leak(format!("{}#{index}", kind.name()).into_boxed_str());
    names.push((kind, index, n));
    n
}

fn is_hostile(instance: &NPI_REGISTRATION_INSTANCE) -> bool {
    // SAFETY: a non-null module id points to the peer's NPI_MODULEID (the
    // NMR checked the registration).
    let guid = unsafe { instance.ModuleId.as_ref() }.and_then(NPI_MODULEID::guid);
    guid.is_some_and(|g| {
        let hostile = GUID::from_u128(HOSTILE_MODULE_ID);
        (g.Data1, g.Data2, g.Data3) == (hostile.Data1, hostile.Data2, hostile.Data3)
    })
}

impl HostilePeer {
    /// Registers a peer of `kind` with `sim`; its tables are called in `abi`.
    pub fn load(sim: &Sim, kind: Hostile, abi: CallAbi, index: u32) -> HostilePeer {
        let name = instance_name(kind, index);
        let module_id =
            GUID::from_u128(HOSTILE_MODULE_ID | ((kind.index() as u128) << 32) | u128::from(index));
        sim.name_module(module_id, name);
        let (version, table_size, npi_id) = match kind {
            Hostile::OldProvider => (0, 24, NPI_ID),
            Hostile::ShortTableProvider => (1, 16, NPI_ID),
            Hostile::ForeignProvider => (1, 24, FOREIGN_NPI_ID),
            Hostile::ForeignClient => (1, 16, FOREIGN_NPI_ID),
            Hostile::FailingClient => (1, 16, NPI_ID),
        };
        let functions = table_functions(kind, abi);
        let instance = NPI_REGISTRATION_INSTANCE {
            Version: 0,
            Size: size_of::<NPI_REGISTRATION_INSTANCE>() as u16,
            NpiId: ptr::null(),
            ModuleId: ptr::null(),
            Number: u32::from(version),
            NpiSpecificCharacteristics: ptr::null(),
        };
        let mut peer = Box::new(Peer {
            sim: sim.clone(),
            kind,
            abi,
            npi_id,
            module_id: NPI_MODULEID::from_guid(module_id),
            characteristics: WireCharacteristics {
                size: size_of::<WireCharacteristics>() as u16,
                min: version,
                max: version,
            },
            table: WireTable {
                version,
                size: table_size,
                functions,
            },
            client: NPI_CLIENT_CHARACTERISTICS {
                Version: 0,
                Length: size_of::<NPI_CLIENT_CHARACTERISTICS>() as u16,
                ClientAttachProvider: Some(client_attach),
                ClientDetachProvider: Some(detach),
                ClientCleanupBindingContext: Some(cleanup),
                ClientRegistrationInstance: instance,
            },
            provider: NPI_PROVIDER_CHARACTERISTICS {
                Version: 0,
                Length: size_of::<NPI_PROVIDER_CHARACTERISTICS>() as u16,
                ProviderAttachClient: Some(provider_attach),
                ProviderDetachClient: Some(detach),
                ProviderCleanupBindingContext: Some(cleanup),
                ProviderRegistrationInstance: instance,
            },
            bindings: Mutex::new(Vec::new()),
            counts: Counters::default(),
        });
        let (npi, module, chars) = (
            &raw const peer.npi_id,
            &raw const peer.module_id,
            (&raw const peer.characteristics).cast::<c_void>(),
        );
        for instance in [
            &mut peer.client.ClientRegistrationInstance,
            &mut peer.provider.ProviderRegistrationInstance,
        ] {
            instance.NpiId = npi;
            instance.ModuleId = module;
            instance.NpiSpecificCharacteristics = chars;
        }
        let context = (&raw const *peer).cast_mut().cast::<c_void>();
        let mut handle = ptr::null_mut();
        // SAFETY: the characteristics, the context and everything they point
        // to live in the box, kept until after the deregistration wait.
        let status = unsafe {
            if kind.is_client() {
                sim.register_client(&peer.client, context, &mut handle)
            } else {
                sim.register_provider(&peer.provider, context, &mut handle)
            }
        };
        assert_eq!(status, STATUS_SUCCESS, "{name} registers");
        HostilePeer {
            peer,
            handle,
            unloaded: false,
        }
    }

    /// The peer's kind.
    pub fn kind(&self) -> Hostile {
        self.peer.kind
    }

    /// Deregisters and waits (R11); idempotent.
    pub fn unload(&mut self) {
        if std::mem::replace(&mut self.unloaded, true) {
            return;
        }
        let sim = &self.peer.sim;
        // SAFETY: our registration, deregistered once, waited for once.
        unsafe {
            let status = if self.peer.kind.is_client() {
                sim.deregister_client(self.handle)
            } else {
                sim.deregister_provider(self.handle)
            };
            if status == STATUS_PENDING {
                if self.peer.kind.is_client() {
                    sim.wait_for_client_deregister_complete(self.handle);
                } else {
                    sim.wait_for_provider_deregister_complete(self.handle);
                }
            }
        }
    }

    /// What it saw so far (one load).
    pub fn tally(&self) -> Tally {
        Tally {
            loads: 1,
            ..self.peer.counts.snapshot()
        }
    }
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        self.unload();
    }
}

/// A stress's hostile peers: `per_kind` of each kind, each loaded or not.
pub struct HostileSlots {
    sim: Sim,
    abi: CallAbi,
    slots: Vec<(Hostile, u32, Option<HostilePeer>)>,
}

impl HostileSlots {
    /// None loaded yet, for a model instance.
    pub fn new(sim: &Sim, abi: CallAbi, per_kind: u32) -> HostileSlots {
        HostileSlots {
            sim: sim.clone(),
            abi,
            slots: (0..per_kind)
                .flat_map(|i| Hostile::ALL.map(|k| (k, i, None)))
                .collect(),
        }
    }

    /// How many peers there are (loaded or not).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Loads peer `pick` (below [`HostileSlots::len`]) if it is not loaded,
    /// else unloads it and adds what it saw to `report`.
    pub fn toggle(&mut self, pick: usize, report: &mut HostileReport) {
        let (kind, index, slot) = &mut self.slots[pick];
        match slot.take() {
            Some(mut peer) => {
                peer.unload();
                report.add_peer(&peer);
            }
            None => *slot = Some(HostilePeer::load(&self.sim, *kind, self.abi, *index)),
        }
    }

    /// Unloads every loaded peer, adding what each saw to `report`.
    pub fn unload_all(&mut self, report: &mut HostileReport) {
        for mut peer in self.slots.iter_mut().filter_map(|(_, _, slot)| slot.take()) {
            peer.unload();
            report.add_peer(&peer);
        }
    }
}

impl Peer {
    /// A new binding context, kept until the peer is dropped.
    fn binding(&self, handle: HANDLE) -> *mut c_void {
        let ctx = Box::new(BindingCtx { peer: self, handle });
        let raw = (&raw const *ctx).cast_mut().cast();
        self.bindings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ctx);
        raw
    }

    fn table(&self) -> *const c_void {
        (&raw const self.table).cast()
    }
}

/// The peer and handle of a binding context.
///
/// # Safety
///
/// `context` is a binding context a peer made, and the peer is alive.
unsafe fn binding<'a>(context: *mut c_void) -> (&'a Peer, HANDLE) {
    // SAFETY: see the function's contract.
    let ctx = unsafe { &*context.cast::<BindingCtx>() };
    // SAFETY: the peer outlives its binding contexts.
    (unsafe { &*ctx.peer }, ctx.handle)
}

/// `ClientAttachProvider` of the foreign and failing clients.
unsafe extern "system" fn client_attach(
    handle: HANDLE,
    context: *mut c_void,
    provider: *const NPI_REGISTRATION_INSTANCE,
) -> NTSTATUS {
    // SAFETY: the NMR passes back our registration context.
    let peer = unsafe { &*context.cast::<Peer>() };
    // SAFETY: the provider's registration instance, valid for this call.
    let provider = unsafe { &*provider };
    let c = &peer.counts;
    c.offers.fetch_add(1, Relaxed);
    // SAFETY: the NMR checked that NpiId is non-null.
    if unsafe { *provider.NpiId } != peer.npi_id {
        c.wrong_npi.fetch_add(1, Relaxed);
        return STATUS_NOINTERFACE;
    }
    if peer.kind == Hostile::FailingClient && is_hostile(provider) {
        c.declined_hostile.fetch_add(1, Relaxed);
        return STATUS_NOINTERFACE;
    }
    let ours = peer.binding(handle);
    let (mut peer_context, mut peer_dispatch) = (ptr::null_mut(), ptr::null());
    // SAFETY: inside ClientAttachProvider for `handle`; our binding context
    // and table live until the peer is dropped; the out slots are locals.
    let status = unsafe {
        peer.sim.client_attach_provider(
            handle,
            ours,
            peer.table(),
            &mut peer_context,
            &mut peer_dispatch,
        )
    };
    if !nt_success(status) {
        c.declined_by_ours.fetch_add(1, Relaxed);
        return status;
    }
    c.attached.fetch_add(1, Relaxed);
    if peer.kind == Hostile::FailingClient {
        // The misuse (R3 revised): a failure after the provider attached.
        c.failed_after_attach.fetch_add(1, Relaxed);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    status
}

/// `ProviderAttachClient` of the three providers.
unsafe extern "system" fn provider_attach(
    _handle: HANDLE,
    context: *mut c_void,
    client: *const NPI_REGISTRATION_INSTANCE,
    _client_context: *mut c_void,
    _client_dispatch: *const c_void,
    provider_context: *mut *mut c_void,
    provider_dispatch: *mut *const c_void,
) -> NTSTATUS {
    // SAFETY: the NMR passes back our registration context.
    let peer = unsafe { &*context.cast::<Peer>() };
    // SAFETY: the client's registration instance, valid for this call.
    let client = unsafe { &*client };
    let c = &peer.counts;
    c.offers.fetch_add(1, Relaxed);
    // SAFETY: the NMR checked that NpiId is non-null.
    if unsafe { *client.NpiId } != peer.npi_id {
        c.wrong_npi.fetch_add(1, Relaxed);
        return STATUS_NOINTERFACE;
    }
    match peer.kind {
        Hostile::OldProvider => {
            // A version 1 client reached us: it should have declined first.
            if !is_hostile(client) {
                c.accepted_wrongly.fetch_add(1, Relaxed);
            }
            return STATUS_NOINTERFACE;
        }
        Hostile::ShortTableProvider if is_hostile(client) => {
            c.declined_hostile.fetch_add(1, Relaxed);
            return STATUS_NOINTERFACE;
        }
        _ => {}
    }
    // SAFETY: the NMR gives writable out slots; the context and the table
    // live until the peer is dropped, after its wait.
    unsafe {
        provider_context.write(peer.binding(ptr::null_mut()));
        provider_dispatch.write(peer.table());
    }
    c.attached.fetch_add(1, Relaxed);
    STATUS_SUCCESS
}

/// Either side's detach: nothing of ours is ever in flight.
unsafe extern "system" fn detach(context: *mut c_void) -> NTSTATUS {
    // SAFETY: one of our binding contexts; the peer is alive until its wait.
    let (peer, _) = unsafe { binding(context) };
    peer.counts.detaches.fetch_add(1, Relaxed);
    STATUS_SUCCESS
}

/// Either side's cleanup: the context itself is freed with the peer.
unsafe extern "system" fn cleanup(context: *mut c_void) {
    // SAFETY: as for `detach`.
    let (peer, _) = unsafe { binding(context) };
    peer.counts.cleanups.fetch_add(1, Relaxed);
}

/// A call through a provider's table (none may come) or into the failing
/// client's `notify` (may come until the provider's side is detached).
///
/// # Safety
///
/// `context` is one of our binding contexts.
unsafe fn called(context: *mut c_void) -> NTSTATUS {
    // SAFETY: see the function's contract.
    let (peer, handle) = unsafe { binding(context) };
    let c = &peer.counts;
    if peer.kind.is_client() {
        c.notifications.fetch_add(1, Relaxed);
        // The model's R9 check (a call after the caller's detach, or after
        // cleanup). Not for the images: their calls run on a driver thread's
        // small kernel stack, and the model's bookkeeping is not the
        // driver's to pay for.
        if peer.abi == CallAbi::System {
            peer.sim.incoming_call(handle);
        }
    } else {
        c.calls.fetch_add(1, Relaxed);
    }
    STATUS_NOINTERFACE
}

/// The NPI's dispatch functions, in one calling convention.
macro_rules! npi_functions {
    ($module:ident, $abi:literal) => {
        mod $module {
            use std::ffi::c_void;

            use nmr_common::ffi::NTSTATUS;

            pub(super) unsafe extern $abi fn get_info(
                context: *mut c_void,
                _info: *mut c_void,
            ) -> NTSTATUS {
                // SAFETY: our modules pass the binding context we gave them.
                unsafe { super::called(context) }
            }

            pub(super) unsafe extern $abi fn checksum(
                context: *mut c_void,
                _data: *const u8,
                _len: usize,
                _out: *mut u16,
            ) -> NTSTATUS {
                // SAFETY: as for `get_info`.
                unsafe { super::called(context) }
            }

            pub(super) unsafe extern $abi fn notify(context: *mut c_void, _event: u32, _value: u64) {
                // SAFETY: as for `get_info`.
                unsafe { super::called(context) };
            }
        }
    };
}

npi_functions!(system_abi, "system");
#[cfg(target_arch = "x86_64")]
npi_functions!(win64_abi, "win64");

/// A table's two entries: a provider's `get_info` and `checksum` (the short
/// table declares only the first), a client's `notify`.
fn table_functions(kind: Hostile, abi: CallAbi) -> [usize; 2] {
    let (get_info, checksum, notify) = match abi {
        CallAbi::System => (
            system_abi::get_info as *const () as usize,
            system_abi::checksum as *const () as usize,
            system_abi::notify as *const () as usize,
        ),
        #[cfg(target_arch = "x86_64")]
        CallAbi::Win64 => (
            win64_abi::get_info as *const () as usize,
            win64_abi::checksum as *const () as usize,
            win64_abi::notify as *const () as usize,
        ),
    };
    if kind.is_client() {
        [notify, 0]
    } else {
        [get_info, checksum]
    }
}

/// Every function a hostile peer's tables hand out in `abi`: the only code
/// outside the images that the images call through an NPI table (a host
/// that checks the targets of the images' indirect calls must know them).
pub fn call_targets(abi: CallAbi) -> [usize; 3] {
    let [get_info, checksum] = table_functions(Hostile::OldProvider, abi);
    let [notify, _] = table_functions(Hostile::FailingClient, abi);
    [get_info, checksum, notify]
}

mod report;
pub use report::{DeclineTally, Declines, HostileReport};

#[cfg(test)]
mod tests;
