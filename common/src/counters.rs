//! Monotonic event counters, bumped from any thread at any IRQL, read as a
//! plain snapshot; and [`PerProcessorCounters`], one set per processor, so
//! that the calls of many processors through one module never write the same
//! cache line (the NPI call path's counters).

use crate::binding::OutOfMemory;
use crate::percpu::PerProcessor;

/// A set of counters declared with [`counters!`](crate::counters!), as
/// [`PerProcessorCounters`] sums them.
pub trait Counters: Default {
    /// The plain numbers.
    type Snapshot: Default;
    /// Reads every counter (each on its own: not one atomic instant).
    fn read(&self) -> Self::Snapshot;
    /// Adds `part` to `total`, counter by counter.
    fn sum_into(total: &mut Self::Snapshot, part: &Self::Snapshot);
}

/// One set of counters per processor, each on its own cache line: a bump
/// writes only the bumping processor's line, a read sums them all. A thread
/// that migrates between choosing its set and bumping it only costs a shared
/// line, never a lost count (the counters are atomics).
pub struct PerProcessorCounters<C> {
    sets: PerProcessor<C>,
}

impl<C: Counters> PerProcessorCounters<C> {
    /// `processors` sets (at least one), allocated fallibly: the kernel heap
    /// can run out, and a module that cannot get them fails to load.
    pub fn try_new(processors: u32) -> Result<Self, OutOfMemory> {
        let count = usize::try_from(processors).unwrap_or(usize::MAX);
        PerProcessor::try_new(count, C::default).map(|sets| PerProcessorCounters { sets })
    }

    /// The set of `processor` (the caller's current processor).
    #[inline(always)]
    pub fn on(&self, processor: u32) -> &C {
        self.sets.at(self.sets.index_of(processor as usize))
    }

    /// The sum of every processor's set.
    pub fn snapshot(&self) -> C::Snapshot {
        let mut total = C::Snapshot::default();
        for set in self.sets.iter() {
            C::sum_into(&mut total, &set.read());
        }
        total
    }
}

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
        pub struct $live:ident => $(#[$snapshot_meta:meta])* $snapshot:ident {
            $( $(#[$field_meta:meta])* $field:ident, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $live {
            $( $(#[$field_meta])* pub $field: ::core::sync::atomic::AtomicU64, )*
        }

        #[doc = concat!("A snapshot of [`", stringify!($live), "`].")]
        $(#[$snapshot_meta])*
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

        impl $crate::counters::Counters for $live {
            type Snapshot = $snapshot;
            fn read(&self) -> $snapshot {
                self.snapshot()
            }
            fn sum_into(total: &mut $snapshot, part: &$snapshot) {
                total.add(part);
            }
        }
    };
}
