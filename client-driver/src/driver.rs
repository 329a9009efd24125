//! The Windows driver: `DriverEntry` and `DriverUnload` for the client, on
//! the real NMR (`Netio`), through the shared shell.

use core::ffi::c_void;
use core::sync::atomic::AtomicPtr;

use nmr_common::ffi::NTSTATUS;
use nmr_common::nmr::Netio;
use nmr_shell::{DriverModule, DriverObject};

use nmr_client_module::client::{Client, ClientConfig, ClientModule, NAME};

/// The worker's payload: checksummed through every provider each round.
const PAYLOAD: &[u8] =
    b"The NMR client asks every provider for the RFC 1071 checksum of this line.";

struct ClientDriver(Client<Netio>);

impl DriverModule for ClientDriver {
    const NAME: &'static str = NAME;
    fn load() -> Result<Self, NTSTATUS> {
        ClientModule::load(Netio, ClientConfig::default()).map(ClientDriver)
    }
    fn work(&self) {
        self.0.call_round(PAYLOAD);
    }
    fn unload(&self) -> NTSTATUS {
        nmr_common::module::Unload::unload(&*self.0)
    }
}

static LOADED: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

/// `DriverEntry`.
///
/// # Safety
///
/// Called by the I/O manager at PASSIVE with this image's driver object.
#[unsafe(export_name = "DriverEntry")]
pub unsafe extern "system" fn driver_entry(
    driver: *mut DriverObject,
    _registry_path: *const c_void,
) -> NTSTATUS {
    // SAFETY: forwarded from the system.
    unsafe { nmr_shell::driver_entry::<ClientDriver>(driver, &LOADED, driver_unload) }
}

/// `DriverUnload`.
///
/// # Safety
///
/// Called by the I/O manager at PASSIVE, once, after a successful DriverEntry.
unsafe extern "C" fn driver_unload(_driver: *mut DriverObject) {
    // SAFETY: forwarded from the system.
    unsafe { nmr_shell::driver_unload::<ClientDriver>(&LOADED) }
}
