//! `nmr-sim`: a user-mode model of the Windows Network Module Registrar.
//!
//! [`Sim`] implements [`nmr_common::nmr::Nmr`] and follows every rule of
//! docs/nmr-contract.md (R1-R13): it matches clients and providers by NPI id and
//! attaches them synchronously inside the register call, detaches every
//! binding of a deregistering module exactly once per side, runs the cleanups
//! once, after both sides are done, inside the last completion and never under
//! a lock, and makes `NmrWaitFor*DeregisterComplete` block until then. It
//! calls the modules through the very `extern "system"` function pointers of
//! their characteristics.
//!
//! Tests steer it with [`Config`] (detach order, delivery thread, seed, IRQL
//! of detach callbacks, violation policy) and assert on its [`LogEntry`] log,
//! its [`Stats`] and its [`Violation`]s, instead of sleeping.
//!
//! The IRQL is modelled per thread ([`irql`]); [`SimLock`] raises it like a
//! kernel spin lock, and the model's PASSIVE-only entry points and
//! [`irql::assert_can_block`] catch anything that would block at
//! DISPATCH_LEVEL.

mod abi;
mod attach;
mod callout;
mod config;
mod context;
mod core;
mod delivery;
mod detach;
pub mod hostile;
pub mod irql;
mod level;
mod lock;
mod log;
mod nmr_impl;
mod processor;
mod register;
mod report;
pub mod running;
mod sim;
mod state;
mod violation;
mod wait;

pub use config::{Config, Delivery, DetachOrder, Policy};
pub use core::Sim;
pub use irql::Irql;
pub use lock::SimLock;
pub use log::{LogEntry, NmrEvent, Side};
pub use running::Running;
pub use state::{BindingInfo, Stats};
pub use violation::{Callback, Violation};
pub use wait::WAIT_DEADLINE;
