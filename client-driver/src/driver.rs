//! The Windows driver: `DriverEntry` and `DriverUnload` for the client, on
//! the real NMR (`Netio`), through the shared shell.

use nmr_common::ffi::NTSTATUS;
use nmr_common::nmr::Netio;
use nmr_shell::DriverModule;

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
        nmr_common::module::Unload::unload(&self.0)
    }
}

nmr_shell::driver_entry_points!(ClientDriver);
