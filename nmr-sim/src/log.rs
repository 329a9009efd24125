//! The event log: every NMR event and every module trace line, in order.

use std::fmt;

use nmr_common::ffi::{NTSTATUS, status_name};
use nmr_common::trace::Event;

/// The two sides of a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The NPI client.
    Client,
    /// The NPI provider.
    Provider,
}

impl Side {
    /// The other side.
    pub const fn other(self) -> Side {
        match self {
            Side::Client => Side::Provider,
            Side::Provider => Side::Client,
        }
    }

    /// `client` or `provider`.
    pub const fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Provider => "provider",
        }
    }
}

/// An event of the model itself. In the log, `binding` is the handle of the
/// side the event is about; for events about both sides
/// ([`NmrEvent::Attached`], [`NmrEvent::AttachDeclined`],
/// [`NmrEvent::CleanedUp`]) it is the client's handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NmrEvent {
    /// `NmrRegister*` is about to return (after its attach callbacks).
    Register(Side),
    /// `ClientAttachProvider` is being called.
    AttachOffered,
    /// `NmrClientAttachProvider` is calling `ProviderAttachClient`.
    ProviderAttachOffered,
    /// `ProviderAttachClient` returned (its status).
    ProviderAttachReturned,
    /// `ClientAttachProvider` returned success with the provider attached:
    /// the binding is made.
    Attached,
    /// The binding was not made (status: what `ClientAttachProvider` returned).
    AttachDeclined,
    /// The offer was withdrawn before the attach callback ran: one of the two
    /// modules began deregistering first.
    AttachSkipped,
    /// `NmrDeregister*` began: status is what it returns.
    Deregister(Side),
    /// The side's detach callback is being called.
    DetachCalled(Side),
    /// The side's detach callback returned (its status).
    DetachReturned(Side),
    /// `Nmr*DetachComplete` was accepted for the side.
    Complete(Side),
    /// The side's cleanup callback is being called.
    Cleanup(Side),
    /// Both cleanups returned: the binding is gone.
    CleanedUp,
    /// `NmrWaitFor*DeregisterComplete` is returning (its status).
    WaitDone(Side),
    /// A contract violation was recorded (see [`crate::Sim::violations`]).
    Violation,
}

impl NmrEvent {
    /// The name printed in log lines.
    pub const fn name(self) -> &'static str {
        use NmrEvent::*;
        use Side::*;
        match self {
            Register(Client) => "register-client",
            Register(Provider) => "register-provider",
            AttachOffered => "attach-offered",
            ProviderAttachOffered => "provider-attach-offered",
            ProviderAttachReturned => "provider-attach-returned",
            Attached => "attached",
            AttachDeclined => "attach-declined",
            AttachSkipped => "attach-skipped",
            Deregister(Client) => "deregister-client",
            Deregister(Provider) => "deregister-provider",
            DetachCalled(Client) => "client-detach-called",
            DetachCalled(Provider) => "provider-detach-called",
            DetachReturned(Client) => "client-detach-returned",
            DetachReturned(Provider) => "provider-detach-returned",
            Complete(Client) => "client-detach-complete",
            Complete(Provider) => "provider-detach-complete",
            Cleanup(Client) => "client-cleanup",
            Cleanup(Provider) => "provider-cleanup",
            CleanedUp => "cleaned-up",
            WaitDone(Client) => "wait-client-done",
            WaitDone(Provider) => "wait-provider-done",
            Violation => "violation",
        }
    }
}

impl fmt::Display for NmrEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One line of the event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEntry {
    /// Something the model did or saw.
    Nmr {
        /// What happened.
        event: NmrEvent,
        /// The module it concerns.
        module: String,
        /// The binding handle it concerns (see [`NmrEvent`]), or the
        /// registration handle for register, deregister and wait events.
        binding: Option<usize>,
        /// The status of the event (0 when it has none).
        status: NTSTATUS,
    },
    /// A trace line a module emitted through `Nmr::trace`.
    Module {
        /// The line as the module's `Record` displays it.
        line: String,
        /// Its event.
        event: Event,
        /// Its module name.
        module: &'static str,
        /// Its binding (the module's binding context address).
        binding: Option<usize>,
        /// Its status.
        status: NTSTATUS,
    },
}

impl LogEntry {
    /// The model event, if this is one.
    pub fn nmr_event(&self) -> Option<NmrEvent> {
        match self {
            LogEntry::Nmr { event, .. } => Some(*event),
            LogEntry::Module { .. } => None,
        }
    }

    /// The module trace event, if this is one.
    pub fn module_event(&self) -> Option<Event> {
        match self {
            LogEntry::Module { event, .. } => Some(*event),
            LogEntry::Nmr { .. } => None,
        }
    }

    /// The binding field.
    pub fn binding(&self) -> Option<usize> {
        match self {
            LogEntry::Nmr { binding, .. } | LogEntry::Module { binding, .. } => *binding,
        }
    }

    /// The status field.
    pub fn status(&self) -> NTSTATUS {
        match self {
            LogEntry::Nmr { status, .. } | LogEntry::Module { status, .. } => *status,
        }
    }
}

impl fmt::Display for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogEntry::Module { line, .. } => f.write_str(line),
            LogEntry::Nmr {
                event,
                module,
                binding,
                status,
            } => {
                write!(f, "nmr: {module}: {event} binding=")?;
                match binding {
                    Some(b) => write!(f, "{b:#x}")?,
                    None => f.write_str("-")?,
                }
                match status_name(*status) {
                    Some(name) => write!(f, " status={name}"),
                    None => write!(f, " status={:#010x}", *status as u32),
                }
            }
        }
    }
}
