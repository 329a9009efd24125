//! The Windows driver: `DriverEntry` and `DriverUnload` for the provider, on
//! the real NMR (`Netio`), through the shared shell.

use nmr_common::ffi::NTSTATUS;
use nmr_common::nmr::Netio;
use nmr_shell::DriverModule;

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
        nmr_common::module::Unload::unload(&self.0)
    }
}

nmr_shell::driver_entry_points!(ProviderDriver);
