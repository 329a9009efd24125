//! The model's IRQL, as tests and modules see it: one simulated level per
//! thread ([`Irql`], [`current`], [`raise_to_dispatch`], [`lower`]) and the
//! check that a thread may block ([`assert_can_block`]), which reports to the
//! model the thread is running in.

pub use crate::level::{Irql, current, lower, raise_to_dispatch};
pub use crate::report::assert_can_block;
