//! Contract violations (R12): every misuse the model detects, as a value.

use std::fmt;

use nmr_common::ffi::{NTSTATUS, status_name};

use crate::log::Side;

/// A module callback the model calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Callback {
    /// `ClientAttachProvider`.
    ClientAttachProvider,
    /// `ProviderAttachClient`.
    ProviderAttachClient,
    /// `ClientDetachProvider`.
    ClientDetachProvider,
    /// `ProviderDetachClient`.
    ProviderDetachClient,
    /// `ClientCleanupBindingContext`.
    ClientCleanupBindingContext,
    /// `ProviderCleanupBindingContext`.
    ProviderCleanupBindingContext,
}

impl Callback {
    /// The detach callback of `side`.
    pub const fn detach(side: Side) -> Callback {
        match side {
            Side::Client => Callback::ClientDetachProvider,
            Side::Provider => Callback::ProviderDetachClient,
        }
    }

    /// The cleanup callback of `side`.
    pub const fn cleanup(side: Side) -> Callback {
        match side {
            Side::Client => Callback::ClientCleanupBindingContext,
            Side::Provider => Callback::ProviderCleanupBindingContext,
        }
    }

    /// The side whose callback it is.
    pub const fn side(self) -> Side {
        match self {
            Callback::ClientAttachProvider
            | Callback::ClientDetachProvider
            | Callback::ClientCleanupBindingContext => Side::Client,
            Callback::ProviderAttachClient
            | Callback::ProviderDetachClient
            | Callback::ProviderCleanupBindingContext => Side::Provider,
        }
    }

    /// The C name.
    pub const fn name(self) -> &'static str {
        match self {
            Callback::ClientAttachProvider => "ClientAttachProvider",
            Callback::ProviderAttachClient => "ProviderAttachClient",
            Callback::ClientDetachProvider => "ClientDetachProvider",
            Callback::ProviderDetachClient => "ProviderDetachClient",
            Callback::ClientCleanupBindingContext => "ClientCleanupBindingContext",
            Callback::ProviderCleanupBindingContext => "ProviderCleanupBindingContext",
        }
    }
}

/// One broken rule of docs/nmr-contract.md. `module` names the module that broke
/// it (the model's name for it: see [`crate::Sim::name_module`]); `handle` and
/// `binding` are the handle values the module passed or was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// R12: `NmrRegister*` with bad characteristics (wrong `Version`,
    /// `Length` or `Size`, a null mandatory callback, a null `NpiId` or
    /// `ModuleId`, null characteristics or a null handle pointer).
    /// The call returns `STATUS_INVALID_PARAMETER`.
    BadCharacteristics {
        /// Which registration call.
        side: Side,
        /// The module, when its id could be read.
        module: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// R12: a handle the model never handed out. The call fails (or, for a
    /// completion, does nothing).
    UnknownHandle {
        /// The NMR function.
        call: &'static str,
        /// The handle passed.
        handle: usize,
    },
    /// R10/R11: a handle of a binding already cleaned up, or of a registration
    /// whose wait already returned.
    StaleHandle {
        /// The NMR function.
        call: &'static str,
        /// The handle passed.
        handle: usize,
    },
    /// R5: a handle of the wrong kind: a binding handle where a registration
    /// handle belongs or the reverse, or the other side's handle (a client
    /// completing with a provider-side handle, `NmrDeregisterClient` with a
    /// provider registration).
    WrongHandle {
        /// The NMR function.
        call: &'static str,
        /// The handle passed.
        handle: usize,
        /// What the function takes.
        expected: &'static str,
    },
    /// R11: `NmrDeregister*` a second time for one registration.
    DoubleDeregister {
        /// The module.
        module: String,
        /// Its registration handle.
        handle: usize,
    },
    /// R11: `NmrWaitFor*DeregisterComplete` on a registration that was not
    /// deregistered. Returns `STATUS_INVALID_PARAMETER`.
    WaitNotDeregistered {
        /// The module.
        module: String,
        /// Its registration handle.
        handle: usize,
    },
    /// R11: a second wait while one is already blocked on the registration.
    WaitTwice {
        /// The module.
        module: String,
        /// Its registration handle.
        handle: usize,
    },
    /// R11: a wait that could never return: from inside a callback of one of
    /// the registration's own bindings, or on the model's delivery thread.
    /// The call fails instead of hanging.
    WaitWouldDeadlock {
        /// The module.
        module: String,
        /// Its registration handle.
        handle: usize,
    },
    /// R8: `Nmr*DetachComplete` twice for one binding.
    CompleteTwice {
        /// The completion function.
        call: &'static str,
        /// The module.
        module: String,
        /// Its binding handle.
        binding: usize,
    },
    /// R8: `Nmr*DetachComplete` for a detach that returned (or then returned)
    /// `STATUS_SUCCESS`.
    CompleteAfterSuccess {
        /// The completion function.
        call: &'static str,
        /// The module.
        module: String,
        /// Its binding handle.
        binding: usize,
    },
    /// R8: `Nmr*DetachComplete` before the side's detach callback was called.
    CompleteBeforeDetach {
        /// The completion function.
        call: &'static str,
        /// The module.
        module: String,
        /// Its binding handle.
        binding: usize,
    },
    /// R8: a detach callback returned something other than `STATUS_SUCCESS`
    /// or `STATUS_PENDING`. The model treats it as SUCCESS.
    BadDetachStatus {
        /// Which side's callback.
        side: Side,
        /// The module.
        module: String,
        /// Its binding handle.
        binding: usize,
        /// What it returned.
        status: NTSTATUS,
    },
    /// R4: `NmrClientAttachProvider` outside `ClientAttachProvider` for that
    /// binding handle. Returns `STATUS_INVALID_PARAMETER`.
    AttachOutsideCallback {
        /// The module whose callback was running on the thread, if any.
        module: Option<String>,
        /// The handle passed.
        binding: usize,
    },
    /// R3: `NmrClientAttachProvider` twice for one binding.
    AttachTwice {
        /// The client.
        module: String,
        /// Its binding handle.
        binding: usize,
    },
    /// R4: `NmrClientAttachProvider` with a null out pointer.
    AttachNullOut {
        /// The client.
        module: String,
        /// Its binding handle.
        binding: usize,
    },
    /// R3: `ClientAttachProvider` did not return what `NmrClientAttachProvider`
    /// returned (or returned success without calling it). The model does not
    /// make the binding and calls no detach or cleanup for it: a provider that
    /// did attach leaks its binding context.
    AttachStatusMismatch {
        /// The client.
        module: String,
        /// Its binding handle.
        binding: usize,
        /// What `ClientAttachProvider` returned.
        client_status: NTSTATUS,
        /// What `NmrClientAttachProvider` returned, if it was called.
        provider_status: Option<NTSTATUS>,
    },
    /// R4: `ProviderAttachClient` returned success with a null dispatch table.
    ProviderAttachNoDispatch {
        /// The provider.
        module: String,
        /// Its binding handle.
        binding: usize,
    },
    /// R13: an NMR function that requires PASSIVE_LEVEL (or < DISPATCH) was
    /// called at DISPATCH_LEVEL. It fails with `STATUS_UNSUCCESSFUL` and does
    /// nothing.
    NmrCallAtDispatch {
        /// The NMR function.
        call: &'static str,
        /// The module whose callback was running on the thread, if any.
        module: Option<String>,
    },
    /// R8/R13: a module blocked (or asked to) at DISPATCH_LEVEL.
    BlockingAtDispatch {
        /// What would block.
        what: &'static str,
        /// The module whose callback was running on the thread, if any.
        module: Option<String>,
    },
    /// R13: a callback returned at another IRQL than it was called at (a spin
    /// lock left held, an IRQL left raised). The model restores it.
    IrqlNotRestored {
        /// The callback.
        callback: Callback,
        /// The module.
        module: String,
        /// Its binding handle.
        binding: usize,
    },
    /// R9: a call into the peer after the caller's detach began: made from
    /// inside the caller's own detach callback, or after the caller's detach
    /// had completed (returned SUCCESS, or PENDING and then completed).
    CallAfterDetach {
        /// The calling module.
        caller: String,
        /// The called module.
        callee: String,
        /// The callee's binding handle.
        binding: usize,
    },
}

impl Violation {
    /// The rule of docs/nmr-contract.md broken, e.g. `"R8"`.
    pub fn rule(&self) -> &'static str {
        use Violation::*;
        match self {
            BadCharacteristics { .. } | UnknownHandle { .. } => "R12",
            StaleHandle { .. } => "R10",
            WrongHandle { .. } => "R5",
            DoubleDeregister { .. }
            | WaitNotDeregistered { .. }
            | WaitTwice { .. }
            | WaitWouldDeadlock { .. } => "R11",
            CompleteTwice { .. }
            | CompleteAfterSuccess { .. }
            | CompleteBeforeDetach { .. }
            | BadDetachStatus { .. }
            | BlockingAtDispatch { .. } => "R8",
            AttachOutsideCallback { .. }
            | AttachNullOut { .. }
            | ProviderAttachNoDispatch { .. } => "R4",
            AttachTwice { .. } | AttachStatusMismatch { .. } => "R3",
            NmrCallAtDispatch { .. } | IrqlNotRestored { .. } => "R13",
            CallAfterDetach { .. } => "R9",
        }
    }

    /// The module named in the violation, if any.
    pub fn module(&self) -> Option<&str> {
        use Violation::*;
        match self {
            BadCharacteristics { module, .. }
            | DoubleDeregister { module, .. }
            | WaitNotDeregistered { module, .. }
            | WaitTwice { module, .. }
            | WaitWouldDeadlock { module, .. }
            | CompleteTwice { module, .. }
            | CompleteAfterSuccess { module, .. }
            | CompleteBeforeDetach { module, .. }
            | BadDetachStatus { module, .. }
            | AttachTwice { module, .. }
            | AttachNullOut { module, .. }
            | AttachStatusMismatch { module, .. }
            | ProviderAttachNoDispatch { module, .. }
            | IrqlNotRestored { module, .. } => Some(module),
            AttachOutsideCallback { module, .. }
            | NmrCallAtDispatch { module, .. }
            | BlockingAtDispatch { module, .. } => module.as_deref(),
            CallAfterDetach { caller, .. } => Some(caller),
            UnknownHandle { .. } | StaleHandle { .. } | WrongHandle { .. } => None,
        }
    }

    /// The handle named in the violation (binding or registration), if any.
    pub fn handle(&self) -> Option<usize> {
        use Violation::*;
        match self {
            UnknownHandle { handle, .. }
            | StaleHandle { handle, .. }
            | WrongHandle { handle, .. }
            | DoubleDeregister { handle, .. }
            | WaitNotDeregistered { handle, .. }
            | WaitTwice { handle, .. }
            | WaitWouldDeadlock { handle, .. } => Some(*handle),
            CompleteTwice { binding, .. }
            | CompleteAfterSuccess { binding, .. }
            | CompleteBeforeDetach { binding, .. }
            | BadDetachStatus { binding, .. }
            | AttachOutsideCallback { binding, .. }
            | AttachTwice { binding, .. }
            | AttachNullOut { binding, .. }
            | AttachStatusMismatch { binding, .. }
            | ProviderAttachNoDispatch { binding, .. }
            | IrqlNotRestored { binding, .. }
            | CallAfterDetach { binding, .. } => Some(*binding),
            BadCharacteristics { .. } | NmrCallAtDispatch { .. } | BlockingAtDispatch { .. } => {
                None
            }
        }
    }
}

struct Status(NTSTATUS);
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match status_name(self.0) {
            Some(name) => f.write_str(name),
            None => write!(f, "{:#010x}", self.0 as u32),
        }
    }
}

struct In<'a>(&'a Option<String>);
impl fmt::Display for In<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(m) => write!(f, " (in a callback of {m})"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Violation::*;
        write!(f, "{}: ", self.rule())?;
        match self {
            BadCharacteristics {
                side,
                module,
                problem,
            } => write!(
                f,
                "NmrRegister{} for module {module}: bad characteristics: {problem}",
                if *side == Side::Client {
                    "Client"
                } else {
                    "Provider"
                }
            ),
            UnknownHandle { call, handle } => {
                write!(
                    f,
                    "{call} with handle {handle:#x}, which the NMR never handed out"
                )
            }
            StaleHandle { call, handle } => write!(
                f,
                "{call} with handle {handle:#x}, whose binding was already cleaned up or whose registration was already waited for"
            ),
            WrongHandle {
                call,
                handle,
                expected,
            } => write!(f, "{call} with handle {handle:#x}, which is not {expected}"),
            DoubleDeregister { module, handle } => {
                write!(f, "{module} deregistered handle {handle:#x} twice")
            }
            WaitNotDeregistered { module, handle } => write!(
                f,
                "{module} waited for deregistration of handle {handle:#x}, which was not deregistered"
            ),
            WaitTwice { module, handle } => write!(
                f,
                "{module} waited for deregistration of handle {handle:#x} while another wait on it was blocked"
            ),
            WaitWouldDeadlock { module, handle } => write!(
                f,
                "{module} waited for deregistration of handle {handle:#x} from a thread that must deliver its detach or cleanup (inside its own callback or on the NMR's thread): it would never return"
            ),
            CompleteTwice {
                call,
                module,
                binding,
            } => write!(f, "{call} called twice for binding {binding:#x} ({module})"),
            CompleteAfterSuccess {
                call,
                module,
                binding,
            } => write!(
                f,
                "{call} called for binding {binding:#x} ({module}) whose detach callback returned STATUS_SUCCESS"
            ),
            CompleteBeforeDetach {
                call,
                module,
                binding,
            } => write!(
                f,
                "{call} called for binding {binding:#x} ({module}) before its detach callback was called"
            ),
            BadDetachStatus {
                side,
                module,
                binding,
                status,
            } => write!(
                f,
                "{} detach callback of {module} returned {} for binding {binding:#x}: only STATUS_SUCCESS or STATUS_PENDING are allowed",
                side.name(),
                Status(*status)
            ),
            AttachOutsideCallback { module, binding } => write!(
                f,
                "NmrClientAttachProvider for binding {binding:#x} outside ClientAttachProvider for that binding{}",
                In(module)
            ),
            AttachTwice { module, binding } => write!(
                f,
                "{module} called NmrClientAttachProvider twice for binding {binding:#x}"
            ),
            AttachNullOut { module, binding } => write!(
                f,
                "{module} called NmrClientAttachProvider for binding {binding:#x} with a null out pointer"
            ),
            AttachStatusMismatch {
                module,
                binding,
                client_status,
                provider_status,
            } => match provider_status {
                Some(p) => write!(
                    f,
                    "ClientAttachProvider of {module} returned {} for binding {binding:#x} but NmrClientAttachProvider had returned {}; the binding is dropped without detach or cleanup",
                    Status(*client_status),
                    Status(*p)
                ),
                None => write!(
                    f,
                    "ClientAttachProvider of {module} returned {} for binding {binding:#x} without calling NmrClientAttachProvider",
                    Status(*client_status)
                ),
            },
            ProviderAttachNoDispatch { module, binding } => write!(
                f,
                "ProviderAttachClient of {module} succeeded for binding {binding:#x} without setting its dispatch table"
            ),
            NmrCallAtDispatch { call, module } => {
                write!(f, "{call} called at DISPATCH_LEVEL{}", In(module))
            }
            BlockingAtDispatch { what, module } => {
                write!(f, "{what} would block at DISPATCH_LEVEL{}", In(module))
            }
            IrqlNotRestored {
                callback,
                module,
                binding,
            } => write!(
                f,
                "{} of {module} for binding {binding:#x} returned at another IRQL than it was called at",
                callback.name()
            ),
            CallAfterDetach {
                caller,
                callee,
                binding,
            } => write!(
                f,
                "{caller} called into {callee} (binding {binding:#x}) after its detach callback began"
            ),
        }
    }
}
