//! The Windows driver: `DriverEntry` and `DriverUnload` for the provider, on
//! the real NMR (`Netio`), through the shared shell.

use core::ffi::c_void;
use core::sync::atomic::AtomicPtr;

use nmr_common::ffi::NTSTATUS;
use nmr_common::nmr::Netio;
use nmr_shell::{DriverModule, DriverObject};

use nmr_provider_module::provider::{NAME, Provider, ProviderConfig, ProviderModule};

struct ProviderDriver(Provider<Netio>);

impl DriverModule for ProviderDriver {
    const NAME: &'static str = NAME;
    fn load() -> Result<Self, NTSTATUS> {
        ProviderModule::load(Netio, ProviderConfig::default()).map(ProviderDriver)
    }
    fn work(&self) {
        self.0.notify_round();
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
    unsafe { nmr_shell::driver_entry::<ProviderDriver>(driver, &LOADED, driver_unload) }
}

/// `DriverUnload`.
///
/// # Safety
///
/// Called by the I/O manager at PASSIVE, once, after a successful DriverEntry.
unsafe extern "C" fn driver_unload(_driver: *mut DriverObject) {
    // SAFETY: forwarded from the system.
    unsafe { nmr_shell::driver_unload::<ProviderDriver>(&LOADED) }
}
