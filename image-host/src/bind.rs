//! The stand-in table: every import the images may have, by DLL and name.
//! It is the import allow-list, kept equal to `cargo xtask check`'s
//! (a test compares them): an import not listed refuses the load.
//!
//! Stand-ins that must know the calling image get it from a per-image thunk
//! that loads the image's [`ImageCtx`] into the first argument register the
//! function does not use, then jumps to the stand-in.

use crate::image::ImageCtx;
use crate::netio;
use crate::ntoskrnl as nt;
use crate::pe::{LoadError, Pages, page_size};

/// `ntoskrnl.exe`, as the images name it.
pub const NTOSKRNL: &str = "ntoskrnl.exe";
/// `NETIO.SYS`, as the images name it.
pub const NETIO: &str = "NETIO.SYS";

/// An argument register a thunk fills with the image context.
#[derive(Clone, Copy, Debug)]
enum Reg {
    Rdx,
    R8,
    R9,
}

#[derive(Clone, Copy, Debug)]
enum Target {
    /// The stand-in itself.
    Direct(usize),
    /// A thunk: `reg = image context; jmp stand-in`.
    WithImage(usize, Reg),
}

/// Every stand-in: (DLL, function, target).
fn table() -> Vec<(&'static str, &'static str, Target)> {
    use Target::*;
    vec![
        (
            NTOSKRNL,
            "DbgPrintEx",
            Direct(nt::dbg_print_ex as *const () as usize),
        ),
        (
            NTOSKRNL,
            "PsCreateSystemThread",
            Direct(nt::ps_create_system_thread as *const () as usize),
        ),
        (
            NTOSKRNL,
            "PsTerminateSystemThread",
            Direct(nt::ps_terminate_system_thread as *const () as usize),
        ),
        (
            NTOSKRNL,
            "ZwWaitForSingleObject",
            Direct(nt::zw_wait_for_single_object as *const () as usize),
        ),
        (
            NTOSKRNL,
            "ZwClose",
            Direct(nt::zw_close as *const () as usize),
        ),
        (
            NTOSKRNL,
            "KeDelayExecutionThread",
            Direct(nt::ke_delay_execution_thread as *const () as usize),
        ),
        (
            NTOSKRNL,
            "ExAllocatePool2",
            WithImage(nt::ex_allocate_pool2 as *const () as usize, Reg::R9),
        ),
        (
            NTOSKRNL,
            "ExFreePoolWithTag",
            WithImage(nt::ex_free_pool_with_tag as *const () as usize, Reg::R8),
        ),
        (
            NTOSKRNL,
            "KeBugCheckEx",
            Direct(nt::ke_bug_check_ex as *const () as usize),
        ),
        (NTOSKRNL, "memcpy", Direct(nt::memcpy as *const () as usize)),
        (
            NTOSKRNL,
            "memmove",
            Direct(nt::memmove as *const () as usize),
        ),
        (NTOSKRNL, "memset", Direct(nt::memset as *const () as usize)),
        (NTOSKRNL, "memcmp", Direct(nt::memcmp as *const () as usize)),
        (
            NTOSKRNL,
            "KeAcquireSpinLockRaiseToDpc",
            Direct(nt::ke_acquire_spin_lock_raise_to_dpc as *const () as usize),
        ),
        (
            NTOSKRNL,
            "KeReleaseSpinLock",
            Direct(nt::ke_release_spin_lock as *const () as usize),
        ),
        (
            NTOSKRNL,
            "KeQueryMaximumProcessorCountEx",
            Direct(nt::ke_query_maximum_processor_count_ex as *const () as usize),
        ),
        (
            NTOSKRNL,
            "KeGetCurrentProcessorNumberEx",
            Direct(nt::ke_get_current_processor_number_ex as *const () as usize),
        ),
        (
            NETIO,
            "NmrRegisterClient",
            WithImage(netio::nmr_register_client as *const () as usize, Reg::R9),
        ),
        (
            NETIO,
            "NmrDeregisterClient",
            WithImage(netio::nmr_deregister_client as *const () as usize, Reg::Rdx),
        ),
        (
            NETIO,
            "NmrWaitForClientDeregisterComplete",
            Direct(netio::nmr_wait_for_client_deregister_complete as *const () as usize),
        ),
        (
            NETIO,
            "NmrClientAttachProvider",
            Direct(netio::nmr_client_attach_provider as *const () as usize),
        ),
        (
            NETIO,
            "NmrClientDetachProviderComplete",
            Direct(netio::nmr_client_detach_provider_complete as *const () as usize),
        ),
        (
            NETIO,
            "NmrRegisterProvider",
            WithImage(netio::nmr_register_provider as *const () as usize, Reg::R9),
        ),
        (
            NETIO,
            "NmrDeregisterProvider",
            WithImage(
                netio::nmr_deregister_provider as *const () as usize,
                Reg::Rdx,
            ),
        ),
        (
            NETIO,
            "NmrWaitForProviderDeregisterComplete",
            Direct(netio::nmr_wait_for_provider_deregister_complete as *const () as usize),
        ),
        (
            NETIO,
            "NmrProviderDetachClientComplete",
            Direct(netio::nmr_provider_detach_client_complete as *const () as usize),
        ),
    ]
}

/// Every import that has a stand-in, as `(dll, function)`: the allow-list.
pub fn stand_ins() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|(d, f, _)| (d, f)).collect()
}

/// The thunks of one image: one page, read-execute once written.
pub struct Thunks {
    page: Pages,
    used: usize,
}

const THUNK_SIZE: usize = 32;

impl Thunks {
    /// An empty thunk page.
    pub fn new() -> Result<Thunks, LoadError> {
        Ok(Thunks {
            page: Pages::new(page_size())?,
            used: 0,
        })
    }

    /// The address an import of `dll!function` is bound to, or None when
    /// there is no stand-in.
    pub fn resolve(&mut self, dll: &str, function: &str, image: *const ImageCtx) -> Option<usize> {
        let (_, _, target) = table()
            .into_iter()
            .find(|(d, f, _)| d.eq_ignore_ascii_case(dll) && *f == function)?;
        match target {
            Target::Direct(addr) => Some(addr),
            Target::WithImage(addr, reg) => Some(self.emit(addr, reg, image as *const () as usize)),
        }
    }

    fn emit(&mut self, target: usize, reg: Reg, context: usize) -> usize {
        assert!(self.used + THUNK_SIZE <= self.page.len(), "thunk page full");
        let mut code = Vec::with_capacity(THUNK_SIZE);
        // mov <reg>, imm64
        code.extend_from_slice(match reg {
            Reg::Rdx => &[0x48, 0xBA],
            Reg::R8 => &[0x49, 0xB8],
            Reg::R9 => &[0x49, 0xB9],
        });
        code.extend_from_slice(&(context as u64).to_le_bytes());
        // mov rax, imm64; jmp rax
        code.extend_from_slice(&[0x48, 0xB8]);
        code.extend_from_slice(&(target as u64).to_le_bytes());
        code.extend_from_slice(&[0xFF, 0xE0]);
        code.resize(THUNK_SIZE, 0xCC); // int3 padding
        // SAFETY: inside the page (asserted), which is RW until `seal`.
        let at = unsafe { self.page.base().add(self.used) };
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), at, THUNK_SIZE) };
        self.used += THUNK_SIZE;
        at as usize
    }

    /// Makes the page read-execute (never writable and executable at once).
    pub fn seal(&self) -> Result<(), LoadError> {
        self.page
            .protect(0, self.page.len(), libc::PROT_READ | libc::PROT_EXEC)
    }
}
