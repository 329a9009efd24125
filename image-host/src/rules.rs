//! The rules the stand-ins enforce, in one table: what Windows (or Driver
//! Verifier) requires of a caller, the bug check it raises when a driver
//! breaks the rule, and where the rule is written down. A stand-in never
//! words a rule itself: it calls [`Rule::report`] with the details of the
//! call, and the report reads `IRQL: ZwClose at DISPATCH_LEVEL (Verifier
//! 0xC4/0x2001F)`. A new stand-in takes its rules from here (add a row).
//!
//! Sources: the WDK documentation on learn.microsoft.com, in the
//! `windows-driver-docs` and `windows-driver-docs-ddi` repositories:
//! `debugger/bug-check-0xc4--driver-verifier-detected-violation.md` (0xC4
//! parameters), `bug-check-0xc1--special-pool-detected-memory-corruption.md`,
//! `bug-check-0xc2--bad-pool-caller.md`, the DDI compliance rule pages
//! (`devtest/wdm-irqlzwpassive.md`, `wdm-irqlpspassive.md`,
//! `wdm-irqlkereleasespinlock.md`, `wdm-irqlkeapclte1.md`), and the function
//! pages (`nf-wdm-exallocatepool2`, `kernel/pool_flags`,
//! `nf-wdm-kedelayexecutionthread`, `nf-wdm-dbgprintex`).

use crate::problems::{self, Kind};

/// What the broken rule costs on Windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Driver Verifier bug-checks with this code and Parameter 1.
    Verifier(u32, u32),
    /// Windows itself bug-checks with this code and parameter (Parameter 1,
    /// or Parameter 4 for 0xC1).
    BugCheck(u32, u32),
    /// No bug check: Windows does something the driver did not mean (said
    /// in the text).
    Silent(&'static str),
}

/// Every rule, named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `ZwClose` only at PASSIVE_LEVEL (the DDI compliance rule).
    IrqlZwPassive,
    /// Any other `Zw*` routine only at PASSIVE_LEVEL (Verifier's own check).
    ZwNotPassive,
    /// `PsCreateSystemThread` / `PsTerminateSystemThread` only at PASSIVE_LEVEL.
    IrqlPsPassive,
    /// `KeDelayExecutionThread` only at IRQL <= APC_LEVEL.
    IrqlKeApcLte1,
    /// `KeReleaseSpinLock` at DISPATCH_LEVEL, with NewIrql = the acquire's OldIrql.
    IrqlKeReleaseSpinLock,
    /// A spin lock released by a thread that did not acquire it.
    ReleaseWrongThread,
    /// A spin lock released that no one holds.
    ReleaseUnacquired,
    /// Nested spin locks released out of order.
    ReleaseOrder,
    /// A spin lock acquired twice by the same thread.
    SelfDeadlock,
    /// Two spin locks taken in both orders (a lock hierarchy violation).
    LockHierarchy,
    /// A thread ends (returns or terminates) holding a spin lock.
    ThreadExitOwnsLock,
    /// A thread ends at raised IRQL.
    ThreadExitRaisedIrql,
    /// A routine the system called returned at another IRQL than it was called at.
    ReturnAtOtherIrql,
    /// A routine the system called returned holding a spin lock it took.
    ReturnHoldingLock,
    /// A wait or delay while holding a spin lock.
    BlockingWithLockHeld,
    /// `ExAllocatePool2` of zero bytes.
    PoolZeroBytes,
    /// `ExAllocatePool2` of paged pool above APC_LEVEL.
    PoolPagedAtDispatch,
    /// `ExFreePoolWithTag` of paged pool above APC_LEVEL.
    PoolFreePagedAtDispatch,
    /// `ExAllocatePool2` with flags it does not accept.
    PoolBadFlags,
    /// `ExAllocatePool2` with tag 0.
    PoolTagZero,
    /// A tag with no letter or digit.
    PoolTagNoAlnum,
    /// A tag byte outside 0x20..=0x7E.
    PoolTagNotPrintable,
    /// `POOL_FLAG_RAISE_ON_FAILURE` and the allocation failed.
    PoolRaiseOnFailure,
    /// Bytes before a block (same page) overwritten: an underrun.
    PoolUnderrun,
    /// Bytes after a block (same page) overwritten: an overrun.
    PoolOverrun,
    /// `ExFreePoolWithTag` with another tag than the allocation's.
    PoolWrongTag,
    /// A NULL `Interval` for `KeDelayExecutionThread`.
    DelayNullInterval,
    /// A positive interval or timeout: an absolute system time.
    AbsoluteTimeout,
    /// A `DbgPrintEx` message longer than 512 bytes.
    DbgPrintTooLong,
    /// A call through a dispatch table its owner freed.
    DispatchTableFreed,
    /// A call through a dispatch table its owner changed while bound.
    DispatchTableChanged,
}

impl Rule {
    /// Every rule (a test checks each has exactly one row).
    pub const ALL: [Rule; 31] = [
        Rule::IrqlZwPassive,
        Rule::ZwNotPassive,
        Rule::IrqlPsPassive,
        Rule::IrqlKeApcLte1,
        Rule::IrqlKeReleaseSpinLock,
        Rule::ReleaseWrongThread,
        Rule::ReleaseUnacquired,
        Rule::ReleaseOrder,
        Rule::SelfDeadlock,
        Rule::LockHierarchy,
        Rule::ThreadExitOwnsLock,
        Rule::ThreadExitRaisedIrql,
        Rule::ReturnAtOtherIrql,
        Rule::ReturnHoldingLock,
        Rule::BlockingWithLockHeld,
        Rule::PoolZeroBytes,
        Rule::PoolPagedAtDispatch,
        Rule::PoolFreePagedAtDispatch,
        Rule::PoolBadFlags,
        Rule::PoolTagZero,
        Rule::PoolTagNoAlnum,
        Rule::PoolTagNotPrintable,
        Rule::PoolRaiseOnFailure,
        Rule::PoolUnderrun,
        Rule::PoolOverrun,
        Rule::PoolWrongTag,
        Rule::DelayNullInterval,
        Rule::AbsoluteTimeout,
        Rule::DbgPrintTooLong,
        Rule::DispatchTableFreed,
        Rule::DispatchTableChanged,
    ];
}

/// One row of the table.
#[derive(Debug)]
pub struct Row {
    /// The rule.
    pub rule: Rule,
    /// The report's first word: `IRQL`, `spin lock`, `pool`...
    pub area: &'static str,
    /// What Windows does.
    pub outcome: Outcome,
    /// Where the rule is written.
    pub source: &'static str,
}

const C4: u32 = 0xC4;

/// The table. One row per [`Rule`] (a test checks).
pub static RULES: &[Row] = &[
    Row {
        rule: Rule::IrqlZwPassive,
        area: "IRQL",
        outcome: Outcome::Verifier(C4, 0x2001F),
        source: "devtest/wdm-irqlzwpassive: ZwClose (and the Zw registry routines) only at \
                 PASSIVE_LEVEL",
    },
    Row {
        rule: Rule::ZwNotPassive,
        area: "IRQL",
        outcome: Outcome::Verifier(C4, 0xE6),
        source: "bug check 0xC4 parameter 0xE6: a kernel Zw API not called at PASSIVE_LEVEL; \
                 nf-wdm-zwwaitforsingleobject: IRQL PASSIVE_LEVEL",
    },
    Row {
        rule: Rule::IrqlPsPassive,
        area: "IRQL",
        outcome: Outcome::Verifier(C4, 0x2001C),
        source: "devtest/wdm-irqlpspassive: PsCreateSystemThread, PsTerminateSystemThread only at PASSIVE_LEVEL",
    },
    Row {
        rule: Rule::IrqlKeApcLte1,
        area: "IRQL",
        outcome: Outcome::Verifier(C4, 0x2000F),
        source: "devtest/wdm-irqlkeapclte1: KeDelayExecutionThread only at IRQL <= APC_LEVEL",
    },
    Row {
        rule: Rule::IrqlKeReleaseSpinLock,
        area: "spin lock",
        outcome: Outcome::Verifier(C4, 0x20015),
        source: "devtest/wdm-irqlkereleasespinlock: called at DISPATCH_LEVEL, NewIrql equal to the \
                 OldIrql KeAcquireSpinLock returned; nf-wdm-kereleasespinlock",
    },
    Row {
        rule: Rule::ReleaseWrongThread,
        area: "spin lock",
        outcome: Outcome::Verifier(C4, 0x1004),
        source: "bug check 0xC4 parameter 0x1004: the wrong thread releases a resource",
    },
    Row {
        rule: Rule::ReleaseUnacquired,
        area: "spin lock",
        outcome: Outcome::Verifier(C4, 0x1007),
        source: "bug check 0xC4 parameter 0x1007: a resource released before it was acquired",
    },
    Row {
        rule: Rule::ReleaseOrder,
        area: "spin lock",
        outcome: Outcome::Verifier(C4, 0x1003),
        source: "bug check 0xC4 parameter 0x1003: a resource released in an incorrect order",
    },
    Row {
        rule: Rule::SelfDeadlock,
        area: "spin lock",
        outcome: Outcome::Verifier(C4, 0x1000),
        source: "bug check 0xC4 parameter 0x1000: self-deadlock, a resource acquired recursively",
    },
    Row {
        rule: Rule::LockHierarchy,
        area: "spin lock",
        outcome: Outcome::Verifier(C4, 0x1001),
        source: "bug check 0xC4 parameter 0x1001: lock hierarchy violation (Deadlock Detection; \
                 devtest/deadlock-detection)",
    },
    Row {
        rule: Rule::ThreadExitOwnsLock,
        area: "spin lock",
        outcome: Outcome::Verifier(C4, 0x100A),
        source: "bug check 0xC4 parameter 0x100A: the terminated thread owns the lock",
    },
    Row {
        rule: Rule::ThreadExitRaisedIrql,
        area: "IRQL",
        outcome: Outcome::Verifier(C4, 0x2001C),
        source: "devtest/wdm-irqlpspassive: PsTerminateSystemThread (and returning from the \
                 KSTART_ROUTINE, which terminates the thread) only at PASSIVE_LEVEL",
    },
    Row {
        rule: Rule::ReturnAtOtherIrql,
        area: "IRQL",
        outcome: Outcome::Silent(
            "no bug check at the return; the caller runs on at the wrong IRQL \
             (wdm.h: DRIVER_INITIALIZE, DRIVER_UNLOAD and the NPI callbacks are \
             _IRQL_requires_same_)",
        ),
        source: "wdm.h annotations _IRQL_requires_same_ on DRIVER_INITIALIZE and DRIVER_UNLOAD; \
                 netioddk.h on the NPI_*_FN callbacks",
    },
    Row {
        rule: Rule::ReturnHoldingLock,
        area: "spin lock",
        outcome: Outcome::Verifier(C4, 0x100A),
        source: "a lock left held by a routine that returned is never released: bug check 0xC4 \
                 parameter 0x100A when its thread ends, a hang at the next acquire otherwise",
    },
    Row {
        rule: Rule::BlockingWithLockHeld,
        area: "spin lock",
        outcome: Outcome::Verifier(C4, 0x20015),
        source: "a thread holding a spin lock runs at DISPATCH_LEVEL (kernel/spin-locks) and may \
                 not wait; it got to PASSIVE_LEVEL only through a KeReleaseSpinLock with a wrong \
                 NewIrql (IrqlKeReleaseSpinLock)",
    },
    Row {
        rule: Rule::PoolZeroBytes,
        area: "pool",
        outcome: Outcome::Verifier(C4, 0x00),
        source: "bug check 0xC4 parameter 0x00: a zero-byte pool allocation; nf-wdm-exallocatepool2: \
                 NumberOfBytes is non-zero",
    },
    Row {
        rule: Rule::PoolPagedAtDispatch,
        area: "pool",
        outcome: Outcome::Verifier(C4, 0x01),
        source: "bug check 0xC4 parameter 0x01: paged memory allocated with IRQL > APC_LEVEL",
    },
    Row {
        rule: Rule::PoolFreePagedAtDispatch,
        area: "pool",
        outcome: Outcome::Verifier(C4, 0x11),
        source: "bug check 0xC4 parameter 0x11: paged pool freed with IRQL > APC_LEVEL",
    },
    Row {
        rule: Rule::PoolBadFlags,
        area: "pool",
        outcome: Outcome::Silent("ExAllocatePool2 returns NULL"),
        source: "nf-wdm-exallocatepool2: invalid POOL_FLAGS make it return NULL; kernel/pool_flags: \
                 one pool type (NON_PAGED, NON_PAGED_EXECUTE or PAGED), reserved bits never set",
    },
    Row {
        rule: Rule::PoolTagZero,
        area: "pool",
        outcome: Outcome::BugCheck(0xC2, 0x9B),
        source: "bug check 0xC2 parameter 0x9B: a pool allocation with a tag of 0; \
                 nf-wdm-exallocatepool2: Tag 0 makes it return NULL",
    },
    Row {
        rule: Rule::PoolTagNoAlnum,
        area: "pool",
        outcome: Outcome::BugCheck(0xC2, 0x9D),
        source: "bug check 0xC2 parameter 0x9D: a tag that contains no letter or digit",
    },
    Row {
        rule: Rule::PoolTagNotPrintable,
        area: "pool",
        outcome: Outcome::Silent("the tag is not what the debugger shows"),
        source: "nf-wdm-exallocatepool2: each ASCII character of Tag must be in 0x20..=0x7E",
    },
    Row {
        rule: Rule::PoolRaiseOnFailure,
        area: "pool",
        outcome: Outcome::BugCheck(0x1E, 0xC000_009A),
        source: "nf-wdm-exallocatepool2: with POOL_FLAG_RAISE_ON_FAILURE a failure raises an \
                 exception; a driver without a handler stops Windows with bug check 0x1E \
                 KMODE_EXCEPTION_NOT_HANDLED (STATUS_INSUFFICIENT_RESOURCES)",
    },
    Row {
        rule: Rule::PoolUnderrun,
        area: "pool",
        outcome: Outcome::BugCheck(0xC1, 0x23),
        source: "bug check 0xC1 parameter 4 = 0x23: a driver freed an address, but nearby bytes \
                 within the same page have been corrupted (devtest/special-pool)",
    },
    Row {
        rule: Rule::PoolOverrun,
        area: "pool",
        outcome: Outcome::BugCheck(0xC1, 0x24),
        source: "bug check 0xC1 parameter 4 = 0x24: bytes after the end of the allocation were \
                 overwritten",
    },
    Row {
        rule: Rule::PoolWrongTag,
        area: "pool",
        outcome: Outcome::BugCheck(0xC2, 0x0A),
        source: "bug check 0xC2 parameter 0x0A: pool freed with the wrong tag",
    },
    Row {
        rule: Rule::DelayNullInterval,
        area: "wait",
        outcome: Outcome::BugCheck(0x50, 0),
        source: "nf-wdm-kedelayexecutionthread: Interval is required; Windows reads it, a NULL \
                 pointer stops it with bug check 0x50 PAGE_FAULT_IN_NONPAGED_AREA",
    },
    Row {
        rule: Rule::AbsoluteTimeout,
        area: "wait",
        outcome: Outcome::Silent(
            "a positive value is an absolute system time (100 ns since 1601): \
             one in the past returns at once, one in the future waits until then",
        ),
        source: "nf-wdm-kedelayexecutionthread and nf-wdm-kewaitforsingleobject: a negative value \
                 is relative, a positive one absolute",
    },
    Row {
        rule: Rule::DbgPrintTooLong,
        area: "DbgPrintEx",
        outcome: Outcome::Silent("DbgPrintEx transmits at most 512 bytes: the rest is lost"),
        source: "nf-wdm-dbgprintex and devtest/reading-and-filtering-debugging-messages: at most \
                 512 bytes per call",
    },
    Row {
        rule: Rule::DispatchTableFreed,
        area: "dispatch table",
        outcome: Outcome::BugCheck(0x50, 0),
        source: "the peer reads the function pointer from the owner's memory at each call: freed \
                 pool faults (bug check 0x50 PAGE_FAULT_IN_NONPAGED_AREA; 0xCC \
                 PAGE_FAULT_IN_FREED_SPECIAL_POOL under Verifier)",
    },
    Row {
        rule: Rule::DispatchTableChanged,
        area: "dispatch table",
        outcome: Outcome::Silent("the peer calls whatever the owner's table now holds"),
        source: "netioddk.h NmrClientAttachProvider/ProviderAttachClient: the dispatch table \
                 stays valid and unchanged until the detach completes (NMR-CONTRACT.md)",
    },
];

impl Rule {
    /// The rule's row.
    pub fn row(self) -> &'static Row {
        RULES
            .iter()
            .find(|r| r.rule == self)
            .expect("every rule has a row (tested)")
    }

    /// The report's text: `AREA: what (Verifier 0xC4/0x2001F)`.
    pub fn text(self, what: &str) -> String {
        let row = self.row();
        let outcome = match row.outcome {
            Outcome::Verifier(code, p) => format!("Verifier 0x{code:X}/0x{p:X}"),
            Outcome::BugCheck(code, p) => format!("Windows: bug check 0x{code:X}/0x{p:X}"),
            Outcome::Silent(what) => format!("Windows: {what}"),
        };
        format!("{}: {what} ({outcome})", row.area)
    }

    /// Records the broken rule against `image`.
    pub fn report(self, image: &str, what: &str) {
        problems::report(Kind::Verifier, image, self.text(what));
    }
}

/// [`Rule::DispatchTableFreed`]'s outcome, as a constant the fault handler
/// can print without allocating (a test checks it against the table).
pub const DISPATCH_FREED_OUTCOME: &str = "Windows: bug check 0x50/0x0";
/// [`Rule::DispatchTableChanged`]'s outcome, likewise.
pub const DISPATCH_CHANGED_OUTCOME: &str =
    "Windows: the peer calls whatever the owner's table now holds";

/// The name of an IRQL, as the WDK spells it.
pub fn irql_name(level: u8) -> &'static str {
    match level {
        0 => "PASSIVE_LEVEL",
        1 => "APC_LEVEL",
        2 => "DISPATCH_LEVEL",
        _ => "an IRQL above DISPATCH_LEVEL",
    }
}
