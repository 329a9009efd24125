//! One trace line per NMR event: module, binding, event, status.
//!
//! The portable code emits [`Record`]s through [`crate::nmr::Nmr::trace`]. The
//! model records them in its event log; on Windows, `Netio` hands them to the
//! process-wide sink set with [`set_sink`], which the driver shell points at
//! `DbgPrintEx`. Every line has the same form, on Windows and on the host:
//!
//! `nmr_client: detach-pending binding=0xffffc10a2b3c4d50 status=STATUS_PENDING in-flight=1`

use core::fmt;
use core::sync::atomic::{AtomicPtr, Ordering};

use crate::ffi::{NTSTATUS, status_name};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The driver was loaded.
    DriverEntry,
    /// `NmrRegister*` returned.
    Register,
    /// The NMR offered a peer (attach callback entered).
    AttachOffered,
    /// The binding was made.
    AttachAccepted,
    /// The peer was declined, or the attach failed.
    AttachDeclined,
    /// The detach callback found nothing in flight.
    DetachSuccess,
    /// The detach callback found calls in flight.
    DetachPending,
    /// The last call in flight drained: `Nmr*DetachComplete` is called.
    DetachComplete,
    /// The cleanup callback freed the binding.
    Cleanup,
    /// `NmrDeregister*` returned.
    Deregister,
    /// `NmrWaitFor*DeregisterComplete` returned.
    WaitDone,
    /// The driver unloaded.
    Unload,
    /// A peer broke the NPI (bad dispatch table after attach, bad call).
    PeerFault,
}

impl Event {
    /// The name printed in trace lines.
    pub const fn name(self) -> &'static str {
        match self {
            Event::DriverEntry => "driver-entry",
            Event::Register => "register",
            Event::AttachOffered => "attach-offered",
            Event::AttachAccepted => "attach-accepted",
            Event::AttachDeclined => "attach-declined",
            Event::DetachSuccess => "detach-success",
            Event::DetachPending => "detach-pending",
            Event::DetachComplete => "detach-complete",
            Event::Cleanup => "cleanup",
            Event::Deregister => "deregister",
            Event::WaitDone => "wait-done",
            Event::Unload => "unload",
            Event::PeerFault => "peer-fault",
        }
    }
}

/// `DbgPrintEx` levels (`DPFLTR_*_LEVEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum Level {
    /// `DPFLTR_ERROR_LEVEL`.
    Error = 0,
    /// `DPFLTR_WARNING_LEVEL`.
    Warning = 1,
    /// `DPFLTR_TRACE_LEVEL`.
    Trace = 2,
    /// `DPFLTR_INFO_LEVEL`.
    Info = 3,
}

/// One trace line.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    /// The module name, e.g. `nmr_client`.
    pub module: &'static str,
    /// The binding context address of this side, if the event has a binding.
    pub binding: Option<usize>,
    /// What happened.
    pub event: Event,
    /// The status of the event.
    pub status: NTSTATUS,
    /// Free text after the fixed fields.
    pub detail: Option<fmt::Arguments<'a>>,
}

impl Record<'_> {
    /// The `DbgPrintEx` level of this line: failures are errors, declines and
    /// peer faults warnings, detach traffic trace, the rest info.
    pub fn level(&self) -> Level {
        match self.event {
            Event::PeerFault | Event::AttachDeclined => Level::Warning,
            _ if self.status < 0 => Level::Error,
            Event::DetachSuccess
            | Event::DetachPending
            | Event::DetachComplete
            | Event::Cleanup => Level::Trace,
            _ => Level::Info,
        }
    }
}

impl fmt::Display for Record<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} binding=", self.module, self.event.name())?;
        match self.binding {
            Some(b) => write!(f, "{b:#x}")?,
            None => f.write_str("-")?,
        }
        match status_name(self.status) {
            Some(name) => write!(f, " status={name}")?,
            None => write!(f, " status={:#010x}", self.status as u32)?,
        }
        if let Some(detail) = self.detail {
            write!(f, " {detail}")?;
        }
        Ok(())
    }
}

/// Where `Netio` sends trace lines.
pub type Sink = fn(&Record<'_>);

static SINK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// Points the process-wide sink at `sink` (the Windows shell: `DbgPrintEx`).
pub fn set_sink(sink: Sink) {
    SINK.store(sink as *mut (), Ordering::Release);
}

/// Sends `record` to the process-wide sink, if one is set.
pub fn emit(record: &Record<'_>) {
    let sink = SINK.load(Ordering::Acquire);
    if !sink.is_null() {
        // SAFETY: the only non-null value ever stored is a `Sink` fn pointer,
        // cast to a data pointer of the same size by `set_sink`.
        let sink: Sink = unsafe { core::mem::transmute::<*mut (), Sink>(sink) };
        sink(record);
    }
}

/// A fixed buffer that formats one line without allocating (for sinks that
/// run at DISPATCH_LEVEL). Output past its capacity is cut, never an error.
pub struct LineBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> LineBuf<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        LineBuf {
            buf: [0; N],
            len: 0,
        }
    }

    /// Formats `record`, then a newline and a NUL (for C's `%s`).
    pub fn format(record: &Record<'_>) -> Self {
        use fmt::Write;
        let mut line = Self::new();
        let _ = write!(line, "{record}");
        line.len = line.len.min(N.saturating_sub(2));
        if N >= 2 {
            line.buf[line.len] = b'\n';
            line.buf[line.len + 1] = 0;
        }
        line
    }

    /// The text written, without the newline and NUL.
    pub fn as_str(&self) -> &str {
        // Cut only at char boundaries (see `write_str`), so this cannot fail.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    /// The NUL-terminated line, newline included.
    pub fn as_c_ptr(&self) -> *const u8 {
        self.buf.as_ptr()
    }
}

impl<const N: usize> Default for LineBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for LineBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N.saturating_sub(2).saturating_sub(self.len);
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ffi::*;
    extern crate std;
    use std::string::ToString;

    #[test]
    fn lines_have_the_documented_form() {
        let r = Record {
            module: "nmr_client",
            binding: Some(0x1f30),
            event: Event::DetachPending,
            status: STATUS_PENDING,
            detail: Some(format_args!("in-flight={}", 2)),
        };
        assert_eq!(
            r.to_string(),
            "nmr_client: detach-pending binding=0x1f30 status=STATUS_PENDING in-flight=2"
        );
        assert_eq!(r.level(), Level::Trace);
        let r = Record {
            module: "nmr_provider",
            binding: None,
            event: Event::Deregister,
            status: 0xC000_0022_u32 as i32,
            detail: None,
        };
        assert_eq!(
            r.to_string(),
            "nmr_provider: deregister binding=- status=0xc0000022"
        );
        assert_eq!(r.level(), Level::Error);
    }

    #[test]
    fn line_buffer_cuts_without_failing_and_terminates() {
        let r = Record {
            module: "nmr_client",
            binding: None,
            event: Event::AttachDeclined,
            status: STATUS_NOINTERFACE,
            detail: Some(format_args!("{}", "é".repeat(40))),
        };
        let line = LineBuf::<32>::format(&r);
        assert_eq!(line.as_str(), "nmr_client: attach-declined bi");
        let short = LineBuf::<128>::format(&Record { detail: None, ..r });
        // SAFETY: `format` writes a NUL after the newline.
        let c = unsafe { core::ffi::CStr::from_ptr(short.as_c_ptr().cast()) };
        assert!(c.to_str().unwrap().ends_with("STATUS_NOINTERFACE\n"));
    }
}
