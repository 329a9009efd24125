//! Monotonic event counters, bumped from any thread at any IRQL, read as a
//! plain snapshot.

/// Declares a struct of `AtomicU64` counters, its `u64` snapshot type, and:
/// `Live::snapshot(&self) -> Snapshot`, `Snapshot::add(&mut self, &Snapshot)`.
///
/// ```
/// nmr_common::counters! {
///     /// What a module counted.
///     pub struct Stats => StatsSnapshot {
///         /// Calls made.
///         calls,
///     }
/// }
/// let stats = Stats::default();
/// stats.calls.fetch_add(2, core::sync::atomic::Ordering::Relaxed);
/// assert_eq!(stats.snapshot().calls, 2);
/// ```
#[macro_export]
macro_rules! counters {
    (
        $(#[$meta:meta])*
        pub struct $live:ident => $snapshot:ident {
            $( $(#[$field_meta:meta])* $field:ident, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $live {
            $( $(#[$field_meta])* pub $field: ::core::sync::atomic::AtomicU64, )*
        }

        #[doc = concat!("A snapshot of [`", stringify!($live), "`].")]
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct $snapshot {
            $( $(#[$field_meta])* pub $field: u64, )*
        }

        impl $live {
            /// Reads every counter (each on its own: not one atomic instant).
            pub fn snapshot(&self) -> $snapshot {
                $snapshot {
                    $( $field: self.$field.load(::core::sync::atomic::Ordering::Relaxed), )*
                }
            }
        }

        impl $snapshot {
            /// Adds `other` to `self`, counter by counter.
            pub fn add(&mut self, other: &$snapshot) {
                $( self.$field += other.$field; )*
            }
        }
    };
}
