//! A safe API for Network Module Registrar (NMR) modules.
//!
//! An NPI client or provider written with this crate contains no `unsafe`:
//!
//! - A registration is an owned value ([`Registration`], [`Client`],
//!   [`Provider`]): building it registers the module, dropping it (or
//!   [`Registration::unload`]) deregisters and waits for the NMR.
//! - Attach is a trait method ([`ClientModule::attach`],
//!   [`ProviderModule::attach`]): it sees a peer whose registration instance
//!   (NPI id, module id, version range) the library has already checked, and
//!   returns the binding's state or a typed [`Decline`].
//! - Detach, `STATUS_PENDING`, the `Nmr*DetachComplete` call, the rundown of
//!   calls in flight and the cleanup all happen here: a module cannot forget
//!   the completion or free a binding early, because it never holds one. Its
//!   per-binding state is dropped at cleanup.
//! - The peer's dispatch table is checked (version, size) before anything can
//!   call it, and is reached only through a [`Peer`] guard, which counts the
//!   call in flight; the NPI's own crate wraps the calls safely.
//! - Calls from the peer arrive in the NPI crate's trampolines, which turn the
//!   binding context back into a [`Callee`]: the module and the binding's state.
//!
//! The unsafe parts (the NMR's `extern "system"` callbacks, the binding
//! contexts' ownership) live in this crate and in `nmr-common`, each with its
//! `SAFETY` comment.
//!
//! The examples on the items below run on the model NMR (`nmr-sim`). Most
//! load the pair of `examples/pair`: `provider::load` registers `Summer`, a
//! checksum provider, and `client::load` registers `Asker`, a client that
//! keeps the agreed version per binding (about 80 lines each). Those of
//! [`Callee`] load `doc/recorder.rs`, a client whose `notify` handler
//! records what its `Callee` showed it.
//!
//! # Example
//!
//! A client that attaches to every provider of the checksum NPI, on the model
//! NMR (`nmr-sim`); the provider side is in `examples/provider.rs`.
//!
//! ```
//! use nmr::{ClientModule, Callee, Decline, Identity, Offer};
//! use nmr_checksum_npi::{ChecksumNpi, ClientDispatch, Notify, ProviderCalls};
//! use nmr_common::ffi::GUID;
//! use nmr_sim::Sim;
//!
//! struct Hello;
//! impl ClientModule for Hello {
//!     type Nmr = Sim;
//!     type Npi = ChecksumNpi;
//!     type Binding = ();
//!     fn dispatch() -> ClientDispatch {
//!         nmr_checksum_npi::client_table::<Self>()
//!     }
//!     fn attach(&self, _offer: &Offer) -> Result<(), Decline> {
//!         Ok(())
//!     }
//! }
//! impl Notify for Hello {
//!     fn notify(_callee: &Callee<'_, nmr::AsClient<Self>>, _event: u32, _value: u64) {}
//! }
//!
//! let sim = Sim::new(nmr_sim::Config::default());
//! let id = Identity::new("hello", GUID::from_u128(1));
//! let client = nmr::Client::register(sim.clone(), id, Hello).expect("registers");
//! // No provider yet: nothing to call.
//! assert_eq!(client.for_each_peer(|peer| drop(peer.checksum(b"hi"))), 0);
//! assert_eq!(client.unload(), nmr_common::ffi::STATUS_SUCCESS);
//! ```

#![no_std]
#![deny(missing_docs)]

extern crate alloc;

use alloc::boxed::Box;
use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering::Relaxed;

use nmr_common::binding::{Binding, BindingSet, PeerCall, detach_callback};
use nmr_common::counters::PerProcessorCounters;
use nmr_common::ffi::{
    GUID, HANDLE, NPI_CLIENT_CHARACTERISTICS, NPI_PROVIDER_CHARACTERISTICS,
    NPI_REGISTRATION_INSTANCE, NPIID, NTSTATUS, STATUS_INSUFFICIENT_RESOURCES, STATUS_NOINTERFACE,
    STATUS_SUCCESS, nt_success,
};
use nmr_common::module::{ModuleBox, ModuleCore, Unload};
use nmr_common::npi::{DispatchTable, VersionRange, check_dispatch};
use nmr_common::trace::Event;

pub use nmr_common::nmr::Nmr;

/// An NPI: its id and the types of its two dispatch tables. Defined once, by
/// the NPI's own crate.
///
/// The checksum NPI of `nmr-checksum-npi` is defined this way. A new NPI
/// has an id of its own and two `repr(C)` tables of its own, each starting
/// with a [`nmr_common::npi::DispatchHeader`]; here, for brevity, an NPI that
/// reuses the checksum tables under another id:
///
/// ```
/// use nmr::Npi;
/// use nmr_checksum_npi::{ChecksumNpi, ClientDispatch, NPI_ID, ProviderDispatch};
/// use nmr_common::ffi::NPIID;
///
/// struct SameTablesOtherId;
/// static OTHER_ID: NPIID = NPIID::from_u128(0x0123_4567_89ab_4def_8000_0000_0000_0042);
/// impl Npi for SameTablesOtherId {
///     const ID: &'static NPIID = &OTHER_ID;
///     type ClientTable = ClientDispatch;
///     type ProviderTable = ProviderDispatch;
/// }
/// assert_eq!(*ChecksumNpi::ID, NPI_ID);
/// assert_ne!(*SameTablesOtherId::ID, *ChecksumNpi::ID);
/// ```
pub trait Npi: 'static {
    /// The NPI id both sides register with.
    const ID: &'static NPIID;
    /// The table a client offers (called by providers).
    type ClientTable: DispatchTable;
    /// The table a provider offers (called by clients).
    type ProviderTable: DispatchTable;
}

/// Who a module is: its name in trace lines, its module id and the NPI
/// versions it speaks.
///
/// ```
/// use nmr::Identity;
/// use nmr_common::ffi::GUID;
/// use nmr_common::npi::{NPI_VERSION, VersionRange};
///
/// // The usual case: the current version only.
/// let asker = Identity::new("asker", GUID::from_u128(0x5eed_0001));
/// assert_eq!(asker.versions, VersionRange { min: NPI_VERSION, max: NPI_VERSION });
/// // A module that also speaks the version before says so.
/// let tolerant = Identity {
///     versions: VersionRange { min: NPI_VERSION - 1, max: NPI_VERSION },
///     ..Identity::new("tolerant", GUID::from_u128(0x5eed_0002))
/// };
/// assert_eq!(tolerant.name, "tolerant");
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    /// Name in trace lines.
    pub name: &'static str,
    /// The module id (unique per module).
    pub module_id: GUID,
    /// The NPI versions it speaks.
    pub versions: VersionRange,
}

impl Identity {
    /// A module speaking the current version only ([`VersionRange::CURRENT`]).
    ///
    /// ```
    /// use nmr_common::ffi::GUID;
    /// use nmr_common::npi::VersionRange;
    /// let id = nmr::Identity::new("asker", GUID::from_u128(7));
    /// assert_eq!(id.versions, VersionRange::CURRENT);
    /// assert_eq!(id.module_id, GUID::from_u128(7));
    /// ```
    pub const fn new(name: &'static str, module_id: GUID) -> Self {
        Identity {
            name,
            module_id,
            versions: VersionRange::CURRENT,
        }
    }
}

/// What an attach callback is offered: a peer whose registration the library
/// has checked (NPI id, module id, an overlapping version range).
///
/// The pair's client keeps the offered version as its binding state
/// (`Seen`), which its calls read back through [`Peer::state`]:
///
/// ```
/// # #[path = "../examples/pair/provider.rs"] mod provider;
/// # #[path = "../examples/pair/client.rs"] mod client;
/// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
/// let provider = provider::load(&sim);
/// let client = client::load(&sim);
/// client.for_each_peer(|peer| {
///     assert_eq!(peer.state().version, nmr_checksum_npi::NPI_VERSION);
/// });
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Offer {
    version: u16,
}

impl Offer {
    /// The NPI version both sides will speak on this binding.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// // `Asker::attach` kept `offer.version()` as the binding's state.
    /// client.for_each_peer(|peer| assert_eq!(peer.state().version, peer.version()));
    /// ```
    pub fn version(&self) -> u16 {
        self.version
    }
}

/// Why a module declines a peer: becomes the attach callback's status.
///
/// ```
/// use nmr::Decline;
/// use nmr_common::ffi::{STATUS_INSUFFICIENT_RESOURCES, STATUS_NOINTERFACE};
/// assert_eq!(Decline::NoInterface("not ours").status(), STATUS_NOINTERFACE);
/// assert_eq!(Decline::NoMemory("pool").status(), STATUS_INSUFFICIENT_RESOURCES);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decline {
    /// Not interested in this peer: `STATUS_NOINTERFACE`.
    NoInterface(&'static str),
    /// Out of resources: `STATUS_INSUFFICIENT_RESOURCES`.
    NoMemory(&'static str),
}

impl Decline {
    /// The status the attach callback returns.
    ///
    /// ```
    /// use nmr::Decline;
    /// use nmr_common::ffi::STATUS_NOINTERFACE;
    /// let why = Decline::NoInterface("this client wants version 2");
    /// assert_eq!(why.status(), STATUS_NOINTERFACE);
    /// ```
    pub fn status(&self) -> NTSTATUS {
        match self {
            Decline::NoInterface(_) => STATUS_NOINTERFACE,
            Decline::NoMemory(_) => STATUS_INSUFFICIENT_RESOURCES,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Decline::NoInterface(why) | Decline::NoMemory(why) => why,
        }
    }
}

/// An NPI client module: attaches to providers of its NPI.
///
/// `examples/pair/client.rs` is one. A client that declines every provider:
///
/// ```
/// # #[path = "../examples/pair/provider.rs"] mod provider;
/// use nmr::{ClientModule, Decline, Offer};
/// use nmr_checksum_npi::{ChecksumNpi, ClientDispatch, Notify};
///
/// struct Picky;
/// impl ClientModule for Picky {
///     type Nmr = nmr_sim::Sim;
///     type Npi = ChecksumNpi;
///     type Binding = ();
///     fn dispatch() -> ClientDispatch {
///         nmr_checksum_npi::client_table::<Self>()
///     }
///     fn attach(&self, offer: &Offer) -> Result<(), Decline> {
///         Err(Decline::NoInterface(if offer.version() < 9 { "too old" } else { "not today" }))
///     }
/// }
/// impl Notify for Picky {
///     fn notify(_: &nmr::Callee<'_, nmr::AsClient<Self>>, _: u32, _: u64) {}
/// }
///
/// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
/// let provider = provider::load(&sim);
/// let id = nmr::Identity::new("picky", nmr_common::ffi::GUID::from_u128(0x5eed_0009));
/// let picky = nmr::Client::register(sim.clone(), id, Picky).expect("registers");
/// // Offered the provider, declined it: no binding on either side.
/// assert_eq!((picky.life().offered, picky.life().declined), (1, 1));
/// assert_eq!((picky.binding_count(), provider.binding_count()), (0, 0));
/// ```
pub trait ClientModule: Send + Sync + Sized + 'static {
    /// The NMR it runs on (the kernel's, or the model).
    type Nmr: Nmr;
    /// The NPI it is a client of.
    type Npi: Npi;
    /// What it keeps per binding; dropped at the binding's cleanup, which
    /// the NMR may run at DISPATCH_LEVEL: its `Drop` must not block.
    type Binding: Send + Sync + 'static;
    /// Its dispatch table, as providers see it: built by the NPI crate from
    /// the module's handlers (for example `nmr_checksum_npi::client_table`).
    ///
    /// ```
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// use nmr::ClientModule;
    /// use nmr_checksum_npi::{ClientDispatch, NPI_VERSION};
    /// let table = client::Asker::dispatch();
    /// assert_eq!(table.header.version, NPI_VERSION);
    /// assert_eq!(usize::from(table.header.size), size_of::<ClientDispatch>());
    /// ```
    fn dispatch() -> <Self::Npi as Npi>::ClientTable;
    /// A provider is offered (PASSIVE_LEVEL): its state for the binding, or
    /// why not.
    ///
    /// A [`Decline`] is traced with its reason, counted in
    /// [`LifeCounts::declined`] and returned to the NMR as its status.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// use nmr::{ClientModule, Decline, Offer};
    /// use nmr_checksum_npi::{ChecksumNpi, ClientDispatch, Notify};
    ///
    /// struct Picky;
    /// impl ClientModule for Picky {
    ///     type Nmr = nmr_sim::Sim;
    ///     type Npi = ChecksumNpi;
    ///     type Binding = ();
    ///     fn dispatch() -> ClientDispatch {
    ///         nmr_checksum_npi::client_table::<Self>()
    ///     }
    ///     fn attach(&self, offer: &Offer) -> Result<(), Decline> {
    ///         Err(Decline::NoInterface(if offer.version() < 9 { "too old" } else { "not today" }))
    ///     }
    /// }
    /// impl Notify for Picky {
    ///     fn notify(_: &nmr::Callee<'_, nmr::AsClient<Self>>, _: u32, _: u64) {}
    /// }
    ///
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let id = nmr::Identity::new("picky", nmr_common::ffi::GUID::from_u128(0x5eed_0009));
    /// let picky = nmr::Client::register(sim.clone(), id, Picky).expect("registers");
    /// // Offered the provider, declined it: no binding on either side.
    /// assert_eq!((picky.life().offered, picky.life().declined), (1, 1));
    /// assert_eq!((picky.binding_count(), provider.binding_count()), (0, 0));
    /// ```
    fn attach(&self, offer: &Offer) -> Result<Self::Binding, Decline>;
}

/// An NPI provider module: serves clients of its NPI.
///
/// `examples/pair/provider.rs` is one. A provider that turns every client
/// away:
///
/// ```
/// # #[path = "../examples/pair/client.rs"] mod client;
/// use nmr::{AsProvider, Callee, Decline, Offer, ProviderModule};
/// use nmr_checksum_npi::{ChecksumNpi, ProviderDispatch, Serve};
/// use nmr_common::ffi::{NTSTATUS, STATUS_INVALID_PARAMETER};
///
/// struct Full;
/// impl ProviderModule for Full {
///     type Nmr = nmr_sim::Sim;
///     type Npi = ChecksumNpi;
///     type Binding = ();
///     fn dispatch() -> ProviderDispatch {
///         nmr_checksum_npi::provider_table::<Self>()
///     }
///     fn attach(&self, _: &Offer) -> Result<(), Decline> {
///         Err(Decline::NoMemory("no room for another client"))
///     }
/// }
/// impl Serve for Full {
///     fn features(_: &Callee<'_, AsProvider<Self>>) -> u32 {
///         0
///     }
///     fn checksum(_: &Callee<'_, AsProvider<Self>>, _: &[u8]) -> Result<u16, NTSTATUS> {
///         Err(STATUS_INVALID_PARAMETER)
///     }
/// }
///
/// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
/// let id = nmr::Identity::new("full", nmr_common::ffi::GUID::from_u128(0x5eed_000a));
/// let full = nmr::Provider::register(sim.clone(), id, Full).expect("registers");
/// let client = client::load(&sim);
/// assert_eq!((full.life().offered, full.life().declined), (1, 1));
/// assert_eq!(client.binding_count(), 0);
/// ```
pub trait ProviderModule: Send + Sync + Sized + 'static {
    /// The NMR it runs on.
    type Nmr: Nmr;
    /// The NPI it provides.
    type Npi: Npi;
    /// What it keeps per binding; dropped at the binding's cleanup, which
    /// the NMR may run at DISPATCH_LEVEL: its `Drop` must not block.
    type Binding: Send + Sync + 'static;
    /// Its dispatch table, as clients see it: built by the NPI crate.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// use nmr::ProviderModule;
    /// use nmr_checksum_npi::{NPI_VERSION, ProviderDispatch};
    /// let table = provider::Summer::dispatch();
    /// assert_eq!(table.header.version, NPI_VERSION);
    /// assert_eq!(usize::from(table.header.size), size_of::<ProviderDispatch>());
    /// ```
    fn dispatch() -> <Self::Npi as Npi>::ProviderTable;
    /// A client is offered (PASSIVE_LEVEL): its state for the binding, or
    /// why not. The client's dispatch table has already been checked.
    ///
    /// A [`Decline`] is traced with its reason, counted in
    /// [`LifeCounts::declined`] and returned to the NMR as its status.
    ///
    /// ```
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// use nmr::{AsProvider, Callee, Decline, Offer, ProviderModule};
    /// use nmr_checksum_npi::{ChecksumNpi, ProviderDispatch, Serve};
    /// use nmr_common::ffi::{NTSTATUS, STATUS_INVALID_PARAMETER};
    ///
    /// struct Full;
    /// impl ProviderModule for Full {
    ///     type Nmr = nmr_sim::Sim;
    ///     type Npi = ChecksumNpi;
    ///     type Binding = ();
    ///     fn dispatch() -> ProviderDispatch {
    ///         nmr_checksum_npi::provider_table::<Self>()
    ///     }
    ///     fn attach(&self, _: &Offer) -> Result<(), Decline> {
    ///         Err(Decline::NoMemory("no room for another client"))
    ///     }
    /// }
    /// impl Serve for Full {
    ///     fn features(_: &Callee<'_, AsProvider<Self>>) -> u32 {
    ///         0
    ///     }
    ///     fn checksum(_: &Callee<'_, AsProvider<Self>>, _: &[u8]) -> Result<u16, NTSTATUS> {
    ///         Err(STATUS_INVALID_PARAMETER)
    ///     }
    /// }
    ///
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let id = nmr::Identity::new("full", nmr_common::ffi::GUID::from_u128(0x5eed_000a));
    /// let full = nmr::Provider::register(sim.clone(), id, Full).expect("registers");
    /// let client = client::load(&sim);
    /// assert_eq!((full.life().offered, full.life().declined), (1, 1));
    /// assert_eq!(client.binding_count(), 0);
    /// ```
    fn attach(&self, offer: &Offer) -> Result<Self::Binding, Decline>;
}

mod sealed {
    pub trait Sealed {}
}

/// One side of an NPI, as the library drives it: [`AsClient`] or
/// [`AsProvider`] of a module. Sealed: implemented here only.
///
/// Code that serves either side of a registration is generic over it:
///
/// ```
/// # #[path = "../examples/pair/provider.rs"] mod provider;
/// # #[path = "../examples/pair/client.rs"] mod client;
/// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
/// let provider = provider::load(&sim);
/// let client = client::load(&sim);
/// fn bound<R: nmr::Role>(registration: &nmr::Registration<R>) -> String {
///     format!("{}: {} binding(s)", registration.name(), registration.binding_count())
/// }
/// assert_eq!(bound(&provider), "summer: 1 binding(s)");
/// assert_eq!(bound(&client), "asker: 1 binding(s)");
/// ```
pub trait Role: sealed::Sealed + Send + Sync + Sized + 'static {
    /// The module's own type.
    type Module: Send + Sync + 'static;
    /// The NMR it runs on.
    type Nmr: Nmr;
    /// Its per-binding state.
    type State: Send + Sync + 'static;
    /// The table it offers.
    type Own: DispatchTable;
    /// The table its peer offers.
    type Peer: DispatchTable;
    #[doc(hidden)]
    type Characteristics: 'static;
    #[doc(hidden)]
    const NPI_ID: &'static NPIID;
    #[doc(hidden)]
    fn own_table() -> Self::Own;
    #[doc(hidden)]
    fn attach(module: &Self::Module, offer: &Offer) -> Result<Self::State, Decline>;
    #[doc(hidden)]
    fn characteristics(instance: NPI_REGISTRATION_INSTANCE) -> Self::Characteristics;
    #[doc(hidden)]
    fn instance(characteristics: &mut Self::Characteristics) -> &mut NPI_REGISTRATION_INSTANCE;
    #[doc(hidden)]
    fn unload(core: &ModuleCore<Self::Nmr>) -> NTSTATUS;
    #[doc(hidden)]
    /// # Safety
    /// As [`ModuleCore::register_client`].
    unsafe fn register(
        core: &ModuleCore<Self::Nmr>,
        characteristics: *const Self::Characteristics,
        context: *mut c_void,
    ) -> NTSTATUS;
}

/// A [`ClientModule`] in the client's role.
///
/// It names a client's registration, peers and callees:
///
/// ```
/// # #[path = "../examples/pair/provider.rs"] mod provider;
/// # #[path = "../examples/pair/client.rs"] mod client;
/// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
/// let client: nmr::Registration<nmr::AsClient<client::Asker>> = client::load(&sim);
/// assert_eq!(client.binding_count(), 0); // no provider yet
/// ```
pub struct AsClient<M>(PhantomData<fn() -> M>);
/// A [`ProviderModule`] in the provider's role.
///
/// It names a provider's registration, peers and callees:
///
/// ```
/// # #[path = "../examples/pair/provider.rs"] mod provider;
/// # #[path = "../examples/pair/client.rs"] mod client;
/// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
/// let provider: nmr::Registration<nmr::AsProvider<provider::Summer>> = provider::load(&sim);
/// let _client = client::load(&sim);
/// provider.for_each_peer(|peer: nmr::Peer<'_, nmr::AsProvider<provider::Summer>>| {
///     assert_eq!(peer.version(), nmr_checksum_npi::NPI_VERSION);
/// });
/// ```
pub struct AsProvider<M>(PhantomData<fn() -> M>);

impl<M> sealed::Sealed for AsClient<M> {}
impl<M> sealed::Sealed for AsProvider<M> {}

impl<M: ClientModule> Role for AsClient<M> {
    type Module = M;
    type Nmr = M::Nmr;
    type State = M::Binding;
    type Own = <M::Npi as Npi>::ClientTable;
    type Peer = <M::Npi as Npi>::ProviderTable;
    type Characteristics = NPI_CLIENT_CHARACTERISTICS;
    const NPI_ID: &'static NPIID = <M::Npi as Npi>::ID;
    fn own_table() -> Self::Own {
        M::dispatch()
    }
    fn attach(module: &M, offer: &Offer) -> Result<M::Binding, Decline> {
        module.attach(offer)
    }
    fn characteristics(instance: NPI_REGISTRATION_INSTANCE) -> NPI_CLIENT_CHARACTERISTICS {
        NPI_CLIENT_CHARACTERISTICS {
            Version: 0,
            Length: size_of::<NPI_CLIENT_CHARACTERISTICS>() as u16,
            ClientAttachProvider: Some(attach_provider::<M>),
            ClientDetachProvider: Some(detach_callback::<M::Nmr, Self::Peer, Slot<Self>>),
            ClientCleanupBindingContext: Some(cleanup_binding::<Self>),
            ClientRegistrationInstance: instance,
        }
    }
    fn instance(c: &mut NPI_CLIENT_CHARACTERISTICS) -> &mut NPI_REGISTRATION_INSTANCE {
        &mut c.ClientRegistrationInstance
    }
    fn unload(core: &ModuleCore<M::Nmr>) -> NTSTATUS {
        core.unload_client()
    }
    unsafe fn register(
        core: &ModuleCore<M::Nmr>,
        characteristics: *const NPI_CLIENT_CHARACTERISTICS,
        context: *mut c_void,
    ) -> NTSTATUS {
        // SAFETY: forwarded: see the trait's contract.
        unsafe { core.register_client(characteristics, context) }
    }
}

impl<M: ProviderModule> Role for AsProvider<M> {
    type Module = M;
    type Nmr = M::Nmr;
    type State = M::Binding;
    type Own = <M::Npi as Npi>::ProviderTable;
    type Peer = <M::Npi as Npi>::ClientTable;
    type Characteristics = NPI_PROVIDER_CHARACTERISTICS;
    const NPI_ID: &'static NPIID = <M::Npi as Npi>::ID;
    fn own_table() -> Self::Own {
        M::dispatch()
    }
    fn attach(module: &M, offer: &Offer) -> Result<M::Binding, Decline> {
        module.attach(offer)
    }
    fn characteristics(instance: NPI_REGISTRATION_INSTANCE) -> NPI_PROVIDER_CHARACTERISTICS {
        NPI_PROVIDER_CHARACTERISTICS {
            Version: 0,
            Length: size_of::<NPI_PROVIDER_CHARACTERISTICS>() as u16,
            ProviderAttachClient: Some(attach_client::<M>),
            ProviderDetachClient: Some(detach_callback::<M::Nmr, Self::Peer, Slot<Self>>),
            ProviderCleanupBindingContext: Some(cleanup_binding::<Self>),
            ProviderRegistrationInstance: instance,
        }
    }
    fn instance(c: &mut NPI_PROVIDER_CHARACTERISTICS) -> &mut NPI_REGISTRATION_INSTANCE {
        &mut c.ProviderRegistrationInstance
    }
    fn unload(core: &ModuleCore<M::Nmr>) -> NTSTATUS {
        core.unload_provider()
    }
    unsafe fn register(
        core: &ModuleCore<M::Nmr>,
        characteristics: *const NPI_PROVIDER_CHARACTERISTICS,
        context: *mut c_void,
    ) -> NTSTATUS {
        // SAFETY: forwarded: see the trait's contract.
        unsafe { core.register_provider(characteristics, context) }
    }
}

nmr_common::counters! {
    /// What the library counted for one registration (monotonic), per
    /// processor: [`Registration::life`] adds them up into a [`LifeCounts`].
    pub struct LifeStats =>
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// let before = client.life();
    /// assert_eq!((before.offered, before.attached, before.cleaned_up), (1, 1, 0));
    /// drop(provider); // deregisters: the binding is detached and cleaned up
    /// let mut after = client.life();
    /// assert_eq!((after.attached, after.cleaned_up), (1, 1));
    /// after.add(&before);
    /// assert_eq!(after.offered, 2);
    /// ```
    LifeCounts {
        /// Peers offered by the NMR.
        offered,
        /// Bindings made.
        attached,
        /// Peers declined: by the library's checks, by the module, for want
        /// of memory, or by the peer.
        declined,
        /// Bindings cleaned up (freed).
        cleaned_up,
        /// Bindings skipped by [`Registration::for_each_peer`] because they
        /// were detaching.
        refused,
    }
}

/// What a binding context holds besides the library's own state.
#[doc(hidden)]
pub struct Slot<R: Role> {
    inner: NonNull<Inner<R>>,
    version: u16,
    state: R::State,
}

// SAFETY: `inner` points to the registration's `Inner`, which is `Sync` and
// outlives every binding (freed only after the deregistration wait, which
// waits for every cleanup); `state` is `Send + Sync`.
unsafe impl<R: Role> Sync for Slot<R> {}
// SAFETY: as above.
unsafe impl<R: Role> Send for Slot<R> {}

/// The binding context the library hands the NMR for one binding of `R`
/// (exported for size measurements only).
///
/// ```
/// # #[path = "../examples/pair/client.rs"] mod client;
/// use nmr::{AsClient, BindingContext};
/// // The library's part of a binding, plus the client's own state (`Seen`).
/// let bytes = size_of::<BindingContext<AsClient<client::Asker>>>();
/// assert!(bytes > size_of::<client::Seen>());
/// ```
pub type BindingContext<R> = BindingOf<R>;

type BindingOf<R> = Binding<<R as Role>::Nmr, <R as Role>::Peer, Slot<R>>;

/// The registered module and everything the NMR points into, at a fixed
/// address (inside a [`ModuleBox`]) until the deregistration wait returns.
struct Inner<R: Role> {
    core: ModuleCore<R::Nmr>,
    module: R::Module,
    own: R::Own,
    // Written once in `register` before the module is shared, then read only
    // (by the NMR).
    characteristics: UnsafeCell<R::Characteristics>,
    bindings: BindingSet<R::Nmr, R::Peer, Slot<R>>,
    life: PerProcessorCounters<LifeStats>,
}

// SAFETY: `characteristics` is written only before the registration is
// shared, then only read; everything else is `Sync`.
unsafe impl<R: Role> Sync for Inner<R> {}
// SAFETY: nothing in it is tied to a thread.
unsafe impl<R: Role> Send for Inner<R> {}

impl<R: Role> Unload for Inner<R> {
    fn unload(&self) -> NTSTATUS {
        R::unload(&self.core)
    }
}

impl<R: Role> Inner<R> {
    #[inline(always)]
    fn life(&self) -> &LifeStats {
        self.life.on(self.core.nmr().current_processor())
    }

    /// Counts and traces a decline, and returns its status.
    fn decline(&self, handle: HANDLE, status: NTSTATUS, why: &dyn core::fmt::Display) -> NTSTATUS {
        self.core
            .decline(&self.life().declined, handle, status, why)
    }

    /// The attach callback's start: counts and traces the offer, checks the
    /// peer's registration (NPI id, module id, versions). `Ok` is the agreed
    /// version, `Err` the status to return (the decline traced with its
    /// reason).
    ///
    /// # Safety
    ///
    /// `peer` is the peer's registration instance, valid for the callback.
    unsafe fn check_offer(
        &self,
        handle: HANDLE,
        peer: *const NPI_REGISTRATION_INSTANCE,
    ) -> Result<u16, NTSTATUS> {
        self.life().offered.fetch_add(1, Relaxed);
        self.core.trace(
            Event::AttachOffered,
            None,
            STATUS_SUCCESS,
            Some(format_args!("nmr-handle={handle:p}")),
        );
        // SAFETY: forwarded: see the function's contract.
        unsafe { self.core.check_peer(peer) }
            .map_err(|why| self.decline(handle, STATUS_NOINTERFACE, &why))
    }

    /// Asks the module, once every check passed.
    fn ask(&self, handle: HANDLE, version: u16) -> Result<R::State, NTSTATUS> {
        R::attach(&self.module, &Offer { version })
            .map_err(|decline| self.decline(handle, decline.status(), &decline.reason()))
    }

    fn accepted(&self, id: usize, handle: HANDLE, version: u16, status: NTSTATUS) {
        self.life().attached.fetch_add(1, Relaxed);
        self.core.trace(
            Event::AttachAccepted,
            Some(id),
            status,
            Some(format_args!("nmr-handle={handle:p} version={version}")),
        );
    }
}

/// A registered module: `R` is [`AsClient`] or [`AsProvider`] of it. Built
/// by registering; dropping it deregisters and waits for the NMR (PASSIVE
/// only), then frees the module. If the deregistration fails, the module is
/// leaked rather than freed under the NMR's feet (the failure is traced).
///
/// A provider that serves checksums, registered on the model NMR, with a
/// client of the same NPI attaching to it:
///
/// ```
/// use nmr::{AsProvider, Callee, Decline, Identity, Offer, ProviderModule};
/// use nmr_checksum_npi::{ChecksumNpi, ProviderDispatch, Serve, internet_checksum};
/// use nmr_common::ffi::{GUID, NTSTATUS, STATUS_SUCCESS};
/// use nmr_sim::Sim;
///
/// struct Summer;
/// impl ProviderModule for Summer {
///     type Nmr = Sim;
///     type Npi = ChecksumNpi;
///     type Binding = ();
///     fn dispatch() -> ProviderDispatch {
///         nmr_checksum_npi::provider_table::<Self>()
///     }
///     fn attach(&self, _: &Offer) -> Result<(), Decline> {
///         Ok(())
///     }
/// }
/// impl Serve for Summer {
///     fn features(_: &Callee<'_, AsProvider<Self>>) -> u32 {
///         nmr_checksum_npi::FEATURE_CHECKSUM
///     }
///     fn checksum(_: &Callee<'_, AsProvider<Self>>, data: &[u8]) -> Result<u16, NTSTATUS> {
///         Ok(internet_checksum(data))
///     }
/// }
///
/// let sim = Sim::new(nmr_sim::Config::default());
/// let provider = nmr::Provider::register(sim, Identity::new("summer", GUID::from_u128(2)), Summer)
///     .expect("registers");
/// assert_eq!(provider.binding_count(), 0);
/// assert_eq!(provider.life().offered, 0);
/// drop(provider); // deregisters and waits
/// ```
pub struct Registration<R: Role> {
    inner: ModuleBox<Inner<R>>,
}

/// A registered [`ClientModule`].
///
/// ```
/// # #[path = "../examples/pair/provider.rs"] mod provider;
/// # #[path = "../examples/pair/client.rs"] mod client;
/// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
/// let provider = provider::load(&sim);
/// let client = client::load(&sim);
/// let client: &nmr::Client<client::Asker> = &client;
/// assert_eq!(client.binding_count(), 1);
/// ```
pub type Client<M> = Registration<AsClient<M>>;
/// A registered [`ProviderModule`].
///
/// ```
/// # #[path = "../examples/pair/provider.rs"] mod provider;
/// # #[path = "../examples/pair/client.rs"] mod client;
/// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
/// let provider = provider::load(&sim);
/// let client = client::load(&sim);
/// let provider: &nmr::Provider<provider::Summer> = &provider;
/// assert_eq!(provider.binding_count(), 1);
/// ```
pub type Provider<M> = Registration<AsProvider<M>>;

impl<R: Role> Registration<R> {
    /// Registers `module` (PASSIVE): peers already registered are offered
    /// to it before this returns. `Err` is the NMR's status, or
    /// `STATUS_INSUFFICIENT_RESOURCES`.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// use nmr::Identity;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let _provider = provider::load(&sim);
    /// let id = Identity::new("asker", client::ID);
    /// match nmr::Client::register(sim.clone(), id, client::Asker::default()) {
    ///     // The provider registered first: it was offered before `register` returned.
    ///     Ok(client) => assert_eq!(client.binding_count(), 1),
    ///     Err(status) => panic!("the NMR refused the client: {status:#x}"),
    /// }
    /// ```
    pub fn register(nmr: R::Nmr, identity: Identity, module: R::Module) -> Result<Self, NTSTATUS> {
        let bindings =
            BindingSet::try_new(nmr.clone()).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        let life = PerProcessorCounters::try_new(nmr.processor_count())
            .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        let inner = Inner::<R> {
            core: ModuleCore::with_npi(
                nmr,
                identity.name,
                R::NPI_ID,
                identity.module_id,
                identity.versions,
            ),
            module,
            own: R::own_table(),
            characteristics: UnsafeCell::new(R::characteristics(
                ModuleCore::<R::Nmr>::unplaced_instance(),
            )),
            bindings,
            life,
        };
        let inner = ModuleBox::new(inner).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        let this = inner.as_ptr();
        // SAFETY: the module is at its final address and not shared yet (the
        // NMR learns of it only below); the pointers written point into it
        // and stay valid until it is freed, after the deregistration wait.
        unsafe {
            *R::instance(&mut *(*this).characteristics.get()) =
                ModuleCore::registration_instance(&raw const (*this).core);
        }
        // SAFETY: the characteristics and the context live in the module,
        // which the `ModuleBox` frees only after the deregistration wait.
        let status = unsafe { R::register(&inner.core, inner.characteristics.get(), this.cast()) };
        if nt_success(status) {
            Ok(Registration { inner })
        } else {
            Err(status)
        }
    }

    /// The module.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// // A `Registration` also derefs to its module.
    /// assert!(std::ptr::eq(provider.module(), &*provider));
    /// assert_eq!(client::ask_all(&client, b"abc").len(), 1);
    /// assert_eq!(provider::served(&provider), 1);
    /// ```
    pub fn module(&self) -> &R::Module {
        &self.inner.module
    }

    /// The NMR it runs on.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// use nmr::Nmr;
    /// assert_eq!(client.nmr().processor_count(), sim.processor_count());
    /// assert!(client.nmr().violations().is_empty());
    /// ```
    pub fn nmr(&self) -> &R::Nmr {
        self.inner.core.nmr()
    }

    /// The module's name.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// assert_eq!((provider.name(), client.name()), ("summer", "asker"));
    /// ```
    pub fn name(&self) -> &'static str {
        self.inner.core.name()
    }

    /// Calls `f` with each attached peer that can be called now, the call
    /// counted in flight until the [`Peer`] is dropped; returns how many
    /// peers refused (detaching). Never blocks (any IRQL <= DISPATCH).
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// use nmr_checksum_npi::{ProviderCalls, internet_checksum};
    /// let mut answers = Vec::new();
    /// let refused = client.for_each_peer(|provider| answers.push(provider.checksum(b"abc")));
    /// assert_eq!(refused, 0);
    /// assert_eq!(answers, [Ok(internet_checksum(b"abc"))]);
    /// ```
    pub fn for_each_peer(&self, mut f: impl FnMut(Peer<'_, R>)) -> usize {
        let refused = self.inner.bindings.for_each_call(|call| f(Peer { call }));
        if refused != 0 {
            self.inner.life().refused.fetch_add(refused as u64, Relaxed);
        }
        refused
    }

    /// Bindings attached and not yet cleaned up.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// assert_eq!((provider.binding_count(), client.binding_count()), (1, 1));
    /// client.unload();
    /// assert_eq!((provider.binding_count(), client.binding_count()), (0, 0));
    /// ```
    pub fn binding_count(&self) -> usize {
        self.inner.bindings.len()
    }

    /// The library's counters for this registration.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// let life = provider.life();
    /// assert_eq!((life.offered, life.attached, life.declined), (1, 1, 0));
    /// ```
    pub fn life(&self) -> LifeCounts {
        self.inner.life.snapshot()
    }

    /// Deregisters and waits (PASSIVE), once: later calls answer the same
    /// status. The module stays readable until the registration is dropped.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// use nmr_common::ffi::STATUS_SUCCESS;
    /// assert_eq!(client.unload(), STATUS_SUCCESS);
    /// assert_eq!(client.unload(), STATUS_SUCCESS); // once: the same answer again
    /// assert_eq!(provider.binding_count(), 0);
    /// assert!(sim.violations().is_empty());
    /// ```
    pub fn unload(&self) -> NTSTATUS {
        self.inner.unload()
    }
}

impl<R: Role> core::ops::Deref for Registration<R> {
    type Target = R::Module;
    fn deref(&self) -> &R::Module {
        self.module()
    }
}

/// One call in flight into an attached peer: its dispatch table (checked)
/// and its binding context, reachable only while the call is counted. The
/// NPI crate wraps the table's functions as safe methods on it.
///
/// ```
/// # #[path = "../examples/pair/provider.rs"] mod provider;
/// # #[path = "../examples/pair/client.rs"] mod client;
/// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
/// let provider = provider::load(&sim);
/// let client = client::load(&sim);
/// use nmr_checksum_npi::{ClientCalls, ProviderCalls, internet_checksum};
/// // A client's peers are providers, a provider's peers are clients: the NPI
/// // crate gives each kind of `Peer` the calls of the other side's table.
/// client.for_each_peer(|provider| assert_eq!(provider.checksum(b"x"), Ok(internet_checksum(b"x"))));
/// provider.for_each_peer(|client| client.notify(nmr_checksum_npi::EVENT_CALL_COUNT, 1));
/// assert_eq!(client::notifications(&client), 1);
/// ```
pub struct Peer<'a, R: Role> {
    call: PeerCall<'a, R::Nmr, R::Peer, Slot<R>>,
}

impl<R: Role> Peer<'_, R> {
    /// The peer's dispatch table: it passed the version and size checks, and
    /// stays valid at least while this call is counted.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// // What the NPI crate's call wrappers use; a module has no need to.
    /// client.for_each_peer(|provider| {
    ///     assert_eq!(provider.table().header.version, nmr_checksum_npi::NPI_VERSION);
    /// });
    /// ```
    pub fn table(&self) -> &R::Peer {
        self.call.dispatch()
    }

    /// The peer's binding context, to pass to the functions of
    /// [`Peer::table`] (it belongs with that table: published together, once).
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// // The context goes with `table()`: what the NPI crate's wrappers pass.
    /// client.for_each_peer(|provider| assert!(!provider.context().is_null()));
    /// ```
    pub fn context(&self) -> *mut c_void {
        self.call.context()
    }

    /// Our state for this binding.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// // `Asker` keeps a `Seen` per binding.
    /// client.for_each_peer(|provider| assert_eq!(provider.state().version, provider.version()));
    /// ```
    pub fn state(&self) -> &R::State {
        &self.call.binding().data.state
    }

    /// The NPI version agreed on this binding.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// client.for_each_peer(|provider| assert_eq!(provider.version(), nmr_checksum_npi::NPI_VERSION));
    /// ```
    pub fn version(&self) -> u16 {
        self.call.binding().data.version
    }

    /// The binding's trace id.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// // Each side's binding has its own id: trace lines of one side carry it.
    /// let mut ids = Vec::new();
    /// client.for_each_peer(|provider| ids.push(provider.id()));
    /// provider.for_each_peer(|client| ids.push(client.id()));
    /// assert_eq!(ids.len(), 2);
    /// assert_ne!(ids[0], ids[1]);
    /// ```
    pub fn id(&self) -> usize {
        self.call.binding().id()
    }
}

/// A call from the peer into this module: the module and the binding's
/// state, valid for the call. Made by the NPI crate's trampolines.
///
/// ```
/// # #[path = "../examples/pair/provider.rs"] mod provider;
/// # #[path = "../doc/recorder.rs"] mod recorder;
/// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
/// let provider = provider::load(&sim);
/// let recorder = recorder::load(&sim);
/// use nmr_checksum_npi::ClientCalls;
/// // The provider notifies; the recorder's `notify(callee, event, value)` adds
/// // the value up through `callee.module()`.
/// provider.for_each_peer(|client| client.notify(nmr_checksum_npi::EVENT_CALL_COUNT, 5));
/// assert_eq!(recorder.total.load(std::sync::atomic::Ordering::Relaxed), 5);
/// ```
pub struct Callee<'a, R: Role> {
    module: &'a R::Module,
    nmr: &'a R::Nmr,
    binding: &'a BindingOf<R>,
}

impl<'a, R: Role> Callee<'a, R> {
    /// Resolves the binding context a peer passed to one of our dispatch
    /// functions. `None` for a null context.
    ///
    /// # Safety
    ///
    /// `context` is null or the binding context this library gave that peer
    /// for a registration of `R`, and the call happens before the binding's
    /// cleanup (the NMR contract lets a peer call until both sides completed
    /// detaching; cleanup comes after). The references live for `'a`, which
    /// must not outlast the call.
    ///
    /// ```
    /// # #[path = "../doc/recorder.rs"] mod recorder;
    /// use nmr::{AsClient, Callee};
    /// // A peer that passes a null context reaches no module: the trampolines
    /// // then do nothing, or return STATUS_INVALID_PARAMETER.
    /// // SAFETY: a null context is always allowed.
    /// let callee = unsafe { Callee::<AsClient<recorder::Recorder>>::from_context(std::ptr::null_mut()) };
    /// assert!(callee.is_none());
    /// ```
    pub unsafe fn from_context(context: *mut c_void) -> Option<Self> {
        let binding = NonNull::new(context.cast::<BindingOf<R>>())?;
        // SAFETY: see the function's contract.
        let binding = unsafe { binding.as_ref() };
        // SAFETY: the registration outlives its bindings.
        let inner = unsafe { binding.data.inner.as_ref() };
        inner.core.nmr().incoming_call(binding.handle());
        Some(Callee {
            module: &inner.module,
            nmr: inner.core.nmr(),
            binding,
        })
    }

    /// The module called.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../doc/recorder.rs"] mod recorder;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let recorder = recorder::load(&sim);
    /// use nmr_checksum_npi::ClientCalls;
    /// use std::sync::atomic::Ordering::Relaxed;
    /// provider.for_each_peer(|client| client.notify(0, 2));
    /// provider.for_each_peer(|client| client.notify(0, 3));
    /// assert_eq!(recorder.total.load(Relaxed), 5);
    /// ```
    pub fn module(&self) -> &'a R::Module {
        self.module
    }

    /// Our state for this binding.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../doc/recorder.rs"] mod recorder;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let recorder = recorder::load(&sim);
    /// use nmr_checksum_npi::ClientCalls;
    /// use std::sync::atomic::Ordering::Relaxed;
    /// // The recorder counts notifications per binding in its binding state, which
    /// // its own calls out see as `Peer::state`.
    /// provider.for_each_peer(|client| client.notify(0, 0));
    /// recorder.for_each_peer(|provider| assert_eq!(provider.state().load(Relaxed), 1));
    /// ```
    pub fn state(&self) -> &'a R::State {
        &self.binding.data.state
    }

    /// The NPI version agreed on this binding.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../doc/recorder.rs"] mod recorder;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let recorder = recorder::load(&sim);
    /// use nmr_checksum_npi::{ClientCalls, NPI_VERSION};
    /// use std::sync::atomic::Ordering::Relaxed;
    /// provider.for_each_peer(|client| client.notify(0, 0));
    /// assert_eq!(recorder.version.load(Relaxed), u64::from(NPI_VERSION));
    /// ```
    pub fn version(&self) -> u16 {
        self.binding.data.version
    }

    /// The NMR the module runs on.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../doc/recorder.rs"] mod recorder;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let recorder = recorder::load(&sim);
    /// use nmr::Nmr;
    /// use nmr_checksum_npi::ClientCalls;
    /// use std::sync::atomic::Ordering::Relaxed;
    /// provider.for_each_peer(|client| client.notify(0, 0));
    /// assert_eq!(recorder.processors.load(Relaxed), u64::from(sim.processor_count()));
    /// ```
    pub fn nmr(&self) -> &'a R::Nmr {
        self.nmr
    }

    /// The binding's trace id.
    ///
    /// ```
    /// # #[path = "../examples/pair/provider.rs"] mod provider;
    /// # #[path = "../doc/recorder.rs"] mod recorder;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let recorder = recorder::load(&sim);
    /// use nmr_checksum_npi::ClientCalls;
    /// use std::sync::atomic::Ordering::Relaxed;
    /// // The id the recorder's handler saw is the one its own calls out carry.
    /// provider.for_each_peer(|client| client.notify(0, 0));
    /// recorder.for_each_peer(|provider| {
    ///     assert_eq!(recorder.id.load(Relaxed), provider.id() as u64);
    /// });
    /// ```
    pub fn id(&self) -> usize {
        self.binding.id()
    }
}

/// `ClientAttachProvider` (PASSIVE).
///
/// # Safety
///
/// Called by the NMR: `context` is a registered `Inner<AsClient<M>>`,
/// `provider` the provider's live registration instance.
unsafe extern "system" fn attach_provider<M: ClientModule>(
    handle: HANDLE,
    context: *mut c_void,
    provider: *const NPI_REGISTRATION_INSTANCE,
) -> NTSTATUS {
    // SAFETY: the NMR passes back the context we registered: the module, which
    // outlives its registration.
    let inner = unsafe { &*context.cast::<Inner<AsClient<M>>>() };
    // SAFETY: the NMR hands us the provider's instance, valid for the callback.
    let version = match unsafe { inner.check_offer(handle, provider) } {
        Ok(version) => version,
        Err(status) => return status,
    };
    // The provider's table comes only with NmrClientAttachProvider below: it
    // is checked then, before anything can call it.
    let state = match inner.ask(handle, version) {
        Ok(state) => state,
        Err(status) => return status,
    };
    let slot = Slot {
        inner: NonNull::from(inner),
        version,
        state,
    };
    // SAFETY: `handle` is this ClientAttachProvider's binding handle, and the
    // binding becomes its client binding context (or is dropped undetached).
    let binding = unsafe {
        BindingOf::<AsClient<M>>::for_client(
            inner.core.nmr().clone(),
            inner.bindings.slots(),
            inner.core.name(),
            handle,
            slot,
        )
    };
    let Ok(binding) = binding else {
        return inner.decline(
            handle,
            STATUS_INSUFFICIENT_RESOURCES,
            &"no memory for the binding, or no rundown slot index to be had",
        );
    };
    // The binding's place in our list, held now: once NmrClientAttachProvider
    // succeeds the binding cannot be declined, so linking it must not fail.
    let Ok(place) = inner.bindings.reserve() else {
        drop(binding);
        return inner.decline(
            handle,
            STATUS_INSUFFICIENT_RESOURCES,
            &"no memory to list the binding",
        );
    };
    let binding = Box::into_raw(binding);
    let (mut peer_context, mut peer_dispatch) = (ptr::null_mut(), ptr::null());
    // SAFETY: inside ClientAttachProvider for `handle`; our context and table
    // live until cleanup (the table lives in the registration); the out
    // pointers are our locals.
    let status = unsafe {
        inner.core.nmr().client_attach_provider(
            handle,
            binding.cast(),
            (&raw const inner.own).cast(),
            &mut peer_context,
            &mut peer_dispatch,
        )
    };
    if !nt_success(status) {
        // R3: a failed attach has no detach and no cleanup: we free it (and
        // give its place in the list back).
        // SAFETY: from `Box::into_raw`, and the provider declined, so nobody
        // else has it.
        drop(unsafe { Box::from_raw(binding) });
        return inner.decline(handle, status, &"the provider declined");
    }
    // SAFETY: attached, and no detach (so no cleanup) can come before this
    // callback returns. Shared only: the provider may already be calling.
    let binding_ref = unsafe { &*binding };
    let id = binding_ref.id();
    // SAFETY: the provider wrote its table's address; the check reads the
    // header first and never past the size it declares; the table stays
    // valid until cleanup.
    match unsafe { check_dispatch::<<AsClient<M> as Role>::Peer>(peer_dispatch, version) } {
        Ok(table) => {
            // SAFETY: the table and context the provider gave for this
            // binding, valid until cleanup; a fresh binding, published once.
            let _first = unsafe { binding_ref.publish_peer(peer_context, table) };
        }
        // Too late to decline: the binding exists. It is never published, so
        // never called, and is detached and cleaned up like any other.
        Err(why) => inner.core.trace(
            Event::PeerFault,
            Some(id),
            STATUS_NOINTERFACE,
            Some(format_args!("{why}; binding unused")),
        ),
    }
    // SAFETY: `binding` (from `Box::into_raw`, so non-null) stays valid until
    // cleanup, which unlinks it first.
    unsafe { place.link(NonNull::new_unchecked(binding)) };
    inner.accepted(id, handle, version, status);
    status
}

/// `ProviderAttachClient` (PASSIVE).
///
/// # Safety
///
/// Called by the NMR inside `NmrClientAttachProvider`: `context` is a
/// registered `Inner<AsProvider<M>>`, `client` the client's live registration
/// instance, the client's context and table valid until cleanup, the out
/// pointers writable.
unsafe extern "system" fn attach_client<M: ProviderModule>(
    handle: HANDLE,
    context: *mut c_void,
    client: *const NPI_REGISTRATION_INSTANCE,
    client_context: *mut c_void,
    client_dispatch: *const c_void,
    provider_context: *mut *mut c_void,
    provider_dispatch: *mut *const c_void,
) -> NTSTATUS {
    type R<M> = AsProvider<M>;
    // SAFETY: the NMR passes back the context we registered: the module, which
    // outlives its registration.
    let inner = unsafe { &*context.cast::<Inner<R<M>>>() };
    // SAFETY: the NMR hands us the client's instance, valid for the callback.
    let version = match unsafe { inner.check_offer(handle, client) } {
        Ok(version) => version,
        Err(status) => return status,
    };
    // The client's table is checked before the module sees the offer.
    // SAFETY: the client's table (or null), valid until cleanup; the check
    // reads its header first and never past its declared size.
    let table = match unsafe { check_dispatch::<<R<M> as Role>::Peer>(client_dispatch, version) } {
        Ok(table) => table,
        Err(why) => return inner.decline(handle, STATUS_NOINTERFACE, &why),
    };
    let state = match inner.ask(handle, version) {
        Ok(state) => state,
        Err(status) => return status,
    };
    let slot = Slot {
        inner: NonNull::from(inner),
        version,
        state,
    };
    // SAFETY: `handle` is this ProviderAttachClient's binding handle, and the
    // binding becomes its provider binding context (or is dropped).
    let binding = unsafe {
        BindingOf::<R<M>>::for_provider(
            inner.core.nmr().clone(),
            inner.bindings.slots(),
            inner.core.name(),
            handle,
            slot,
        )
    };
    let Ok(binding) = binding else {
        return inner.decline(
            handle,
            STATUS_INSUFFICIENT_RESOURCES,
            &"no memory for the binding, or no rundown slot index to be had",
        );
    };
    // SAFETY: the table and context the client gave for this binding, valid
    // until cleanup; a fresh binding, published once.
    let _first = unsafe { binding.publish_peer(client_context, table) };
    let binding = NonNull::from(Box::leak(binding));
    // SAFETY: the binding stays valid until cleanup, which unlinks it first.
    if unsafe { inner.bindings.insert(binding) }.is_err() {
        // SAFETY: not linked, not handed out: ours to free.
        drop(unsafe { Box::from_raw(binding.as_ptr()) });
        return inner.decline(
            handle,
            STATUS_INSUFFICIENT_RESOURCES,
            &"no memory to list the binding",
        );
    }
    // SAFETY: the NMR gave us writable out pointers; our table lives in the
    // registration, which outlives the binding.
    unsafe {
        provider_context.write(binding.as_ptr().cast());
        provider_dispatch.write((&raw const inner.own).cast());
    }
    // SAFETY: linked and live; the id is only its address.
    let id = unsafe { binding.as_ref() }.id();
    inner.accepted(id, handle, version, STATUS_SUCCESS);
    STATUS_SUCCESS
}

/// The cleanup callback of either side (<= DISPATCH): unlinks and frees the
/// binding, dropping the module's state for it.
///
/// # Safety
///
/// Called by the NMR once, after both sides completed detaching, with a
/// binding context made by this registration's attach callback.
unsafe extern "system" fn cleanup_binding<R: Role>(context: *mut c_void) {
    let Some(binding) = NonNull::new(context.cast::<BindingOf<R>>()) else {
        return;
    };
    // SAFETY: live until `destroy` below; the registration outlives its bindings.
    let inner = unsafe { binding.as_ref().data.inner.as_ref() };
    inner.bindings.remove(binding);
    inner.life().cleaned_up.fetch_add(1, Relaxed);
    // SAFETY: both sides completed, and it is unlinked: nothing refers to it.
    unsafe { BindingOf::<R>::destroy(binding) };
}
