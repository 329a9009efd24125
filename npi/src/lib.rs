//! The checksum/notify NPI, defined with the [`nmr`] crate: what a user of
//! the crate writes to define an NPI.
//!
//! - [`ChecksumNpi`]: its id and its two table types ([`ClientDispatch`],
//!   [`ProviderDispatch`]; the `repr(C)` layouts live in
//!   `nmr_common::npi`, next to the layout checks the fuzzers use).
//! - The calling side: safe methods on a [`nmr::Peer`] guard
//!   ([`ProviderCalls::checksum`], [`ProviderCalls::get_info`],
//!   [`ClientCalls::notify`]).
//! - The called side: a trait per side ([`Notify`], [`Serve`]) with one safe
//!   method per dispatch function, and generic `extern "system"` trampolines
//!   ([`client_table`], [`provider_table`]) that check the raw arguments and
//!   resolve the binding context before calling it.
//!
//! Each function of the NPI is written once here; modules implement the
//! traits and contain no `unsafe`.
//!
//! The examples on the items below run on the model NMR (`nmr-sim`) with
//! the pair of the `nmr` crate's `examples/pair`: `provider::load`
//! registers `Summer`, which serves checksums, and `client::load` registers
//! `Asker`, which counts the notifications it gets.
//!
//! # Example
//!
//! A provider and a client on the model NMR, one call each way:
//!
//! ```
//! use nmr::{AsClient, AsProvider, Callee, Decline, Identity, Offer};
//! use nmr_checksum_npi::*;
//! use nmr_common::ffi::{GUID, NTSTATUS};
//! use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
//!
//! #[derive(Default)]
//! struct Prov;
//! impl nmr::ProviderModule for Prov {
//!     type Nmr = nmr_sim::Sim;
//!     type Npi = ChecksumNpi;
//!     type Binding = ();
//!     fn dispatch() -> ProviderDispatch { provider_table::<Self>() }
//!     fn attach(&self, _: &Offer) -> Result<(), Decline> { Ok(()) }
//! }
//! impl Serve for Prov {
//!     fn features(_: &Callee<'_, AsProvider<Self>>) -> u32 { FEATURE_CHECKSUM }
//!     fn checksum(_: &Callee<'_, AsProvider<Self>>, data: &[u8]) -> Result<u16, NTSTATUS> {
//!         Ok(internet_checksum(data))
//!     }
//! }
//!
//! #[derive(Default)]
//! struct Cli(AtomicU64);
//! impl nmr::ClientModule for Cli {
//!     type Nmr = nmr_sim::Sim;
//!     type Npi = ChecksumNpi;
//!     type Binding = ();
//!     fn dispatch() -> ClientDispatch { client_table::<Self>() }
//!     fn attach(&self, _: &Offer) -> Result<(), Decline> { Ok(()) }
//! }
//! impl Notify for Cli {
//!     fn notify(callee: &Callee<'_, AsClient<Self>>, _: u32, _: u64) {
//!         callee.module().0.fetch_add(1, Relaxed);
//!     }
//! }
//!
//! let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
//! let p = nmr::Provider::register(sim.clone(), Identity::new("p", GUID::from_u128(1)), Prov)
//!     .unwrap();
//! let c = nmr::Client::register(sim, Identity::new("c", GUID::from_u128(2)), Cli::default())
//!     .unwrap();
//! let mut sums = Vec::new();
//! c.for_each_peer(|provider| sums.push(provider.checksum(b"abc")));
//! assert_eq!(sums, [Ok(internet_checksum(b"abc"))]);
//! p.for_each_peer(|client| client.notify(EVENT_CALL_COUNT, 1));
//! assert_eq!(c.0.load(Relaxed), 1);
//! let info = {
//!     let mut info = None;
//!     c.for_each_peer(|provider| info = Some(provider.get_info()));
//!     info.unwrap().unwrap()
//! };
//! assert_eq!(info.features, FEATURE_CHECKSUM);
//! ```

#![no_std]
#![deny(missing_docs)]

use core::ffi::c_void;

use nmr::{AsClient, AsProvider, Callee, ClientModule, Npi, Peer, ProviderModule};
use nmr_common::ffi::{
    NPIID, NTSTATUS, STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_PARAMETER, STATUS_SUCCESS,
};

pub use nmr_common::npi::{
    ClientDispatch, DispatchHeader, EVENT_CALL_COUNT, FEATURE_CHECKSUM, NPI_ID, NPI_VERSION,
    ProviderDispatch, ProviderInfo, VersionRange, internet_checksum,
};

/// The checksum/notify NPI.
///
/// ```
/// use nmr::Npi;
/// use nmr_checksum_npi::{ChecksumNpi, NPI_ID};
/// assert_eq!(*ChecksumNpi::ID, NPI_ID);
/// ```
pub struct ChecksumNpi;

impl Npi for ChecksumNpi {
    const ID: &'static NPIID = &NPI_ID;
    type ClientTable = ClientDispatch;
    type ProviderTable = ProviderDispatch;
}

/// A client of this NPI: what providers call.
///
/// ```
/// # #[path = "../../nmr/examples/pair/provider.rs"] mod provider;
/// # #[path = "../../nmr/examples/pair/client.rs"] mod client;
/// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
/// let provider = provider::load(&sim);
/// let client = client::load(&sim);
/// use nmr_checksum_npi::{ClientCalls, EVENT_CALL_COUNT};
/// // `Asker` implements `Notify`: a provider's `notify` lands in it.
/// provider.for_each_peer(|client| client.notify(EVENT_CALL_COUNT, 7));
/// assert_eq!(client::notifications(&client), 1);
/// ```
pub trait Notify: ClientModule<Npi = ChecksumNpi> {
    /// `notify(event, value)` from a provider (any IRQL <= DISPATCH: never
    /// block here).
    ///
    /// ```
    /// # #[path = "../../nmr/examples/pair/provider.rs"] mod provider;
    /// # #[path = "../../nmr/examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// use nmr_checksum_npi::{ClientCalls, EVENT_CALL_COUNT};
    /// provider.for_each_peer(|client| client.notify(EVENT_CALL_COUNT, 1));
    /// provider.for_each_peer(|client| client.notify(EVENT_CALL_COUNT, 2));
    /// assert_eq!(client::notifications(&client), 2);
    /// ```
    fn notify(callee: &Callee<'_, AsClient<Self>>, event: u32, value: u64);
}

/// A provider of this NPI: what clients call.
///
/// ```
/// # #[path = "../../nmr/examples/pair/provider.rs"] mod provider;
/// # #[path = "../../nmr/examples/pair/client.rs"] mod client;
/// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
/// let provider = provider::load(&sim);
/// let client = client::load(&sim);
/// use nmr_checksum_npi::{ProviderCalls, internet_checksum};
/// // `Summer` implements `Serve`: a client's `checksum` lands in it.
/// client.for_each_peer(|summer| assert_eq!(summer.checksum(b"ab"), Ok(internet_checksum(b"ab"))));
/// assert_eq!(provider::served(&provider), 1);
/// ```
pub trait Serve: ProviderModule<Npi = ChecksumNpi> {
    /// The feature bits `get_info` reports ([`FEATURE_CHECKSUM`], ...).
    /// Any IRQL <= DISPATCH.
    ///
    /// ```
    /// # #[path = "../../nmr/examples/pair/provider.rs"] mod provider;
    /// # #[path = "../../nmr/examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// use nmr_checksum_npi::{FEATURE_CHECKSUM, ProviderCalls};
    /// // What a client's `get_info` reports.
    /// client.for_each_peer(|summer| {
    ///     assert_eq!(summer.get_info().map(|info| info.features), Ok(FEATURE_CHECKSUM));
    /// });
    /// ```
    fn features(callee: &Callee<'_, AsProvider<Self>>) -> u32;
    /// The RFC 1071 checksum of `data` (or an error status). <= DISPATCH,
    /// unless the provider documents otherwise.
    ///
    /// ```
    /// # #[path = "../../nmr/examples/pair/provider.rs"] mod provider;
    /// # #[path = "../../nmr/examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// use nmr_checksum_npi::{ProviderCalls, internet_checksum};
    /// let data = [0x45u8, 0x00, 0x00, 0x1c];
    /// client.for_each_peer(|summer| assert_eq!(summer.checksum(&data), Ok(internet_checksum(&data))));
    /// ```
    fn checksum(callee: &Callee<'_, AsProvider<Self>>, data: &[u8]) -> Result<u16, NTSTATUS>;
}

/// The client's dispatch table for module `M`: its [`Notify::notify`]
/// behind the trampoline.
///
/// ```
/// # #[path = "../../nmr/examples/pair/provider.rs"] mod provider;
/// # #[path = "../../nmr/examples/pair/client.rs"] mod client;
/// use nmr::ClientModule;
/// use nmr_checksum_npi::{ClientDispatch, NPI_VERSION};
/// // `Asker::dispatch()` is `client_table::<Self>()`.
/// let table: ClientDispatch = nmr_checksum_npi::client_table::<client::Asker>();
/// assert_eq!(table.header.version, NPI_VERSION);
/// assert_eq!(table.notify as usize, client::Asker::dispatch().notify as usize);
/// ```
pub fn client_table<M: Notify>() -> ClientDispatch {
    ClientDispatch {
        header: DispatchHeader {
            version: NPI_VERSION,
            size: size_of::<ClientDispatch>() as u16,
        },
        notify: notify_trampoline::<M>,
    }
}

/// The provider's dispatch table for module `M`.
///
/// ```
/// # #[path = "../../nmr/examples/pair/provider.rs"] mod provider;
/// # #[path = "../../nmr/examples/pair/client.rs"] mod client;
/// use nmr_checksum_npi::{NPI_VERSION, ProviderDispatch};
/// let table: ProviderDispatch = nmr_checksum_npi::provider_table::<provider::Summer>();
/// assert_eq!(table.header.version, NPI_VERSION);
/// assert_eq!(usize::from(table.header.size), size_of::<ProviderDispatch>());
/// ```
pub fn provider_table<M: Serve>() -> ProviderDispatch {
    ProviderDispatch {
        header: DispatchHeader {
            version: NPI_VERSION,
            size: size_of::<ProviderDispatch>() as u16,
        },
        get_info: get_info_trampoline::<M>,
        checksum: checksum_trampoline::<M>,
    }
}

/// `notify` as providers call it.
///
/// # Safety
///
/// Called by a provider with the client binding context the NMR gave it,
/// before the binding's cleanup.
unsafe extern "system" fn notify_trampoline<M: Notify>(
    context: *mut c_void,
    event: u32,
    value: u64,
) {
    // SAFETY: see the function's contract.
    if let Some(callee) = unsafe { Callee::<AsClient<M>>::from_context(context) } {
        M::notify(&callee, event, value);
    }
}

/// `get_info` as clients call it.
///
/// # Safety
///
/// Called by a client with the provider binding context it was given, before
/// the binding's cleanup, and `info` null or writable for the `size` its
/// first field declares.
unsafe extern "system" fn get_info_trampoline<M: Serve>(
    context: *mut c_void,
    info: *mut ProviderInfo,
) -> NTSTATUS {
    // SAFETY: see the function's contract.
    let Some(callee) = (unsafe { Callee::<AsProvider<M>>::from_context(context) }) else {
        return STATUS_INVALID_PARAMETER;
    };
    if info.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: non-null; every `ProviderInfo` starts with its `u16` size.
    let size = unsafe { info.cast::<u16>().read_unaligned() };
    if usize::from(size) < size_of::<ProviderInfo>() {
        return STATUS_BUFFER_TOO_SMALL;
    }
    let answer = ProviderInfo {
        size: size_of::<ProviderInfo>() as u16,
        version: callee.version(),
        features: M::features(&callee),
    };
    // SAFETY: the caller declared at least `size_of::<ProviderInfo>()` bytes.
    unsafe { info.write_unaligned(answer) };
    STATUS_SUCCESS
}

/// `checksum` as clients call it.
///
/// # Safety
///
/// Called by a client with the provider binding context it was given, before
/// the binding's cleanup, `data` readable for `len` bytes, `out` writable.
unsafe extern "system" fn checksum_trampoline<M: Serve>(
    context: *mut c_void,
    data: *const u8,
    len: usize,
    out: *mut u16,
) -> NTSTATUS {
    // SAFETY: see the function's contract.
    let Some(callee) = (unsafe { Callee::<AsProvider<M>>::from_context(context) }) else {
        return STATUS_INVALID_PARAMETER;
    };
    if out.is_null() || (data.is_null() && len != 0) {
        return STATUS_INVALID_PARAMETER;
    }
    let bytes: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: non-null and readable for `len` bytes per the NPI contract.
        unsafe { core::slice::from_raw_parts(data, len) }
    };
    match M::checksum(&callee, bytes) {
        Ok(sum) => {
            // SAFETY: non-null and writable per the NPI contract.
            unsafe { out.write_unaligned(sum) };
            STATUS_SUCCESS
        }
        Err(status) => status,
    }
}

/// Calls into a provider, through a counted [`Peer`] of a client.
///
/// ```
/// # #[path = "../../nmr/examples/pair/provider.rs"] mod provider;
/// # #[path = "../../nmr/examples/pair/client.rs"] mod client;
/// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
/// let provider = provider::load(&sim);
/// let client = client::load(&sim);
/// use nmr_checksum_npi::{ProviderCalls, internet_checksum};
/// let mut answers = Vec::new();
/// client.for_each_peer(|summer| answers.push((summer.checksum(b"abc"), summer.get_info().is_ok())));
/// assert_eq!(answers, [(Ok(internet_checksum(b"abc")), true)]);
/// ```
pub trait ProviderCalls {
    /// `checksum(data)`: the provider's answer, or its error status.
    ///
    /// ```
    /// # #[path = "../../nmr/examples/pair/provider.rs"] mod provider;
    /// # #[path = "../../nmr/examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// use nmr_checksum_npi::{ProviderCalls, internet_checksum};
    /// client.for_each_peer(|summer| {
    ///     assert_eq!(summer.checksum(b""), Ok(internet_checksum(b"")));
    ///     assert_eq!(summer.checksum(b"NMR"), Ok(internet_checksum(b"NMR")));
    /// });
    /// ```
    fn checksum(&self, data: &[u8]) -> Result<u16, NTSTATUS>;
    /// `get_info()`.
    ///
    /// ```
    /// # #[path = "../../nmr/examples/pair/provider.rs"] mod provider;
    /// # #[path = "../../nmr/examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// use nmr_checksum_npi::{FEATURE_CHECKSUM, NPI_VERSION, ProviderCalls};
    /// client.for_each_peer(|summer| {
    ///     let info = summer.get_info().expect("the provider answers");
    ///     assert_eq!((info.version, info.features), (NPI_VERSION, FEATURE_CHECKSUM));
    /// });
    /// ```
    fn get_info(&self) -> Result<ProviderInfo, NTSTATUS>;
}

impl<M: ClientModule<Npi = ChecksumNpi>> ProviderCalls for Peer<'_, AsClient<M>> {
    #[inline]
    fn checksum(&self, data: &[u8]) -> Result<u16, NTSTATUS> {
        let mut answer = 0u16;
        // SAFETY: the table passed the library's version and size checks and
        // stays valid while this call is counted; the context is the one the
        // provider gave with it; `data` and `answer` are live for the call.
        let status = unsafe {
            (self.table().checksum)(self.context(), data.as_ptr(), data.len(), &mut answer)
        };
        if status == STATUS_SUCCESS {
            Ok(answer)
        } else {
            Err(status)
        }
    }

    fn get_info(&self) -> Result<ProviderInfo, NTSTATUS> {
        let mut info = ProviderInfo {
            size: size_of::<ProviderInfo>() as u16,
            ..ProviderInfo::default()
        };
        // SAFETY: as for `checksum`; `info` is writable for the size it declares.
        let status = unsafe { (self.table().get_info)(self.context(), &mut info) };
        if status == STATUS_SUCCESS {
            Ok(info)
        } else {
            Err(status)
        }
    }
}

/// Calls into a client, through a counted [`Peer`] of a provider.
///
/// ```
/// # #[path = "../../nmr/examples/pair/provider.rs"] mod provider;
/// # #[path = "../../nmr/examples/pair/client.rs"] mod client;
/// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
/// let provider = provider::load(&sim);
/// let client = client::load(&sim);
/// use nmr_checksum_npi::{ClientCalls, EVENT_CALL_COUNT};
/// let told = provider::notify_all(&provider); // `notify` through each `Peer`
/// assert_eq!((told, client::notifications(&client)), (1, 1));
/// provider.for_each_peer(|asker| asker.notify(EVENT_CALL_COUNT, 0));
/// assert_eq!(client::notifications(&client), 2);
/// ```
pub trait ClientCalls {
    /// `notify(event, value)`.
    ///
    /// ```
    /// # #[path = "../../nmr/examples/pair/provider.rs"] mod provider;
    /// # #[path = "../../nmr/examples/pair/client.rs"] mod client;
    /// let sim = nmr_sim::Sim::new(nmr_sim::Config::default());
    /// let provider = provider::load(&sim);
    /// let client = client::load(&sim);
    /// use nmr_checksum_npi::{ClientCalls, EVENT_CALL_COUNT};
    /// provider.for_each_peer(|asker| asker.notify(EVENT_CALL_COUNT, 42));
    /// assert_eq!(client::notifications(&client), 1);
    /// ```
    fn notify(&self, event: u32, value: u64);
}

impl<M: ProviderModule<Npi = ChecksumNpi>> ClientCalls for Peer<'_, AsProvider<M>> {
    #[inline]
    fn notify(&self, event: u32, value: u64) {
        // SAFETY: the table passed the library's checks and stays valid while
        // this call is counted; the context is the one the client gave with it.
        unsafe { (self.table().notify)(self.context(), event, value) }
    }
}
