//! The provider image's `checksum` call path, timed directly: loads
//! `nmr_provider.sys` from each directory given, attaches a host-side client
//! to it through the model (a Windows x64 client: the image calls back with
//! that convention), and calls the image's `checksum` through its dispatch
//! table in a tight loop. Reports nanoseconds per call (median of batches),
//! the directories side by side in one run, `--rounds` times each.
//!
//! ```sh
//! cargo run --release -p testbed --example image_checksum -- DIR_A DIR_B [--rounds N] [--calls N]
//! ```
//!
//! x86_64 Linux only (the image host).

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod bench {
    use std::ffi::c_void;
    use std::path::{Path, PathBuf};
    use std::ptr;
    use std::sync::atomic::{AtomicPtr, Ordering};
    use std::time::Instant;

    use nmr_common::ffi::*;
    use nmr_common::nmr::Nmr;
    use nmr_common::npi::{
        ClientDispatch, DispatchHeader, NPI_ID, NPI_VERSION, NpiCharacteristics, VersionRange,
    };
    use nmr_image_host::stress::PROVIDER_IMAGE;
    use nmr_image_host::{Driver, ModelBinding, ntoskrnl};
    use nmr_sim::{Config, Sim};

    type ChecksumWin64 =
        unsafe extern "win64" fn(*mut c_void, *const u8, usize, *mut u16) -> NTSTATUS;

    static PEER_CONTEXT: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
    /// The client table of the current measurement.
    static OUR_TABLE: AtomicPtr<ClientDispatchWin64> = AtomicPtr::new(ptr::null_mut());
    static PEER_TABLE: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
    static CLIENT_ID: NPI_MODULEID = NPI_MODULEID::from_guid(GUID::from_u128(0xbe4c));
    static CHARS: NpiCharacteristics = NpiCharacteristics::new(VersionRange::CURRENT);

    /// Our `notify`, as the provider image's worker calls it. Kernel CFG
    /// (which the image host enforces) lets an image call only image
    /// functions in a guard table and kernel exports, so `notify` is the
    /// provider's own bound import of `KeQueryMaximumProcessorCountEx`:
    /// called as `notify(context, event, value)` it reads a group number
    /// from the first argument and returns, touching nothing.
    fn harmless_kernel_export(provider: &Driver) -> usize {
        const NAME: &str = "KeQueryMaximumProcessorCountEx";
        let image = provider.image();
        let (rva, size) = image.iat();
        let slots = (image.base() + rva as usize) as *const usize;
        // The IAT holds the imports in order, each DLL's ended by a null slot.
        let mut names = image.imports().iter();
        for i in 0..size as usize / size_of::<usize>() {
            // SAFETY: inside the mapped image's IAT, which is readable.
            let target = unsafe { slots.add(i).read() };
            if target == 0 {
                continue;
            }
            if names.next().is_some_and(|(_, f)| f == NAME) {
                // SAFETY: the bound import of that name: a Windows x64
                // function of one `u16` argument returning `u32`.
                let f: extern "win64" fn(u16) -> u32 = unsafe { std::mem::transmute(target) };
                let count = f(0);
                assert!((1..=4096).contains(&count), "{NAME} answered {count}");
                return target;
            }
        }
        panic!("the provider image does not import {NAME}");
    }

    /// `ClientDispatch` with a Windows x64 `notify`: the image calls it so.
    #[repr(C)]
    struct ClientDispatchWin64 {
        header: DispatchHeader,
        notify: extern "win64" fn(*mut c_void, u32, u64),
    }

    extern "win64" fn attach(
        handle: HANDLE,
        context: *mut c_void,
        _provider: *const NPI_REGISTRATION_INSTANCE,
    ) -> NTSTATUS {
        // SAFETY: the context registered below is the bench's `Sim`, alive
        // until after the deregistration wait.
        let sim = unsafe { &*context.cast::<Sim>() };
        let (mut peer_context, mut peer_table) = (ptr::null_mut(), ptr::null());
        let table = OUR_TABLE.load(Ordering::Acquire);
        // SAFETY: inside ClientAttachProvider for `handle`; our binding
        // context and table (the measurement's boxed table) outlive the
        // binding (freed after the deregistration wait).
        let status = unsafe {
            sim.client_attach_provider(
                handle,
                table.cast(),
                table.cast_const().cast(),
                &mut peer_context,
                &mut peer_table,
            )
        };
        PEER_CONTEXT.store(peer_context, Ordering::Release);
        PEER_TABLE.store(peer_table.cast_mut(), Ordering::Release);
        status
    }

    extern "win64" fn detach(_: *mut c_void) -> NTSTATUS {
        // The bench's calls have all returned before it deregisters.
        STATUS_SUCCESS
    }

    extern "win64" fn cleanup(_: *mut c_void) {}

    fn characteristics() -> NPI_CLIENT_CHARACTERISTICS {
        // SAFETY: the three are Windows x64 functions of the declared
        // signatures, registered below with `register_client_win64`, which
        // calls them with that convention; only the pointer type differs.
        unsafe {
            NPI_CLIENT_CHARACTERISTICS {
                Version: 0,
                Length: size_of::<NPI_CLIENT_CHARACTERISTICS>() as u16,
                ClientAttachProvider: Some(std::mem::transmute::<
                    extern "win64" fn(
                        HANDLE,
                        *mut c_void,
                        *const NPI_REGISTRATION_INSTANCE,
                    ) -> NTSTATUS,
                    NPI_CLIENT_ATTACH_PROVIDER_FN,
                >(attach)),
                ClientDetachProvider: Some(std::mem::transmute::<
                    extern "win64" fn(*mut c_void) -> NTSTATUS,
                    NPI_CLIENT_DETACH_PROVIDER_FN,
                >(detach)),
                ClientCleanupBindingContext: Some(std::mem::transmute::<
                    extern "win64" fn(*mut c_void),
                    NPI_CLIENT_CLEANUP_BINDING_CONTEXT_FN,
                >(cleanup)),
                ClientRegistrationInstance: NPI_REGISTRATION_INSTANCE {
                    Version: 0,
                    Size: size_of::<NPI_REGISTRATION_INSTANCE>() as u16,
                    NpiId: &NPI_ID,
                    ModuleId: &CLIENT_ID,
                    Number: 0,
                    NpiSpecificCharacteristics: (&raw const CHARS).cast(),
                },
            }
        }
    }

    /// Nanoseconds per `checksum` call into the provider image in `dir`:
    /// the median of `batches` batches of `calls`.
    fn measure(binding: &ModelBinding, dir: &Path, calls: u32, batches: u32) -> f64 {
        let sim = Box::new(Sim::new(Config {
            check_calls: false,
            ..Config::default()
        }));
        binding.rebind((*sim).clone());
        let mut provider = Driver::load(&dir.join(PROVIDER_IMAGE)).expect("provider image");
        assert_eq!(provider.start(), STATUS_SUCCESS, "provider DriverEntry");
        // SAFETY: a Windows x64 function (the bound import), called by the
        // image with the three arguments of `notify`, which it ignores but
        // the first.
        let notify = unsafe {
            std::mem::transmute::<usize, extern "win64" fn(*mut c_void, u32, u64)>(
                harmless_kernel_export(&provider),
            )
        };
        let our_table = Box::new(ClientDispatchWin64 {
            header: DispatchHeader {
                version: NPI_VERSION,
                size: size_of::<ClientDispatch>() as u16,
            },
            notify,
        });
        OUR_TABLE.store(ptr::from_ref(&*our_table).cast_mut(), Ordering::Release);
        let chars = characteristics();
        let mut handle: HANDLE = ptr::null_mut();
        // SAFETY: `chars` and the context (the boxed `Sim`) outlive the
        // deregistration wait below; the callbacks are Windows x64 functions.
        let status = unsafe {
            sim.register_client_win64(&chars, ptr::from_ref(&*sim).cast_mut().cast(), &mut handle)
        };
        assert_eq!(status, STATUS_SUCCESS, "the bench client registers");
        let table = PEER_TABLE.load(Ordering::Acquire);
        assert!(!table.is_null(), "the provider image attached");
        let context = PEER_CONTEXT.load(Ordering::Acquire);
        // SAFETY: the provider's table starts with its header, then get_info,
        // then checksum (the NPI's layout, checked by the image's peer).
        let checksum: ChecksumWin64 =
            unsafe { *table.cast::<u8>().add(16).cast::<ChecksumWin64>() };
        let data = [0x5au8; 64];
        let mut samples = Vec::new();
        for _ in 0..batches {
            let t = Instant::now();
            for _ in 0..calls {
                let mut out = 0u16;
                // SAFETY: attached: the provider's table and context are valid
                // until its detach; `data` and `out` are live for the call.
                let status = unsafe {
                    checksum(
                        context,
                        std::hint::black_box(data.as_ptr()),
                        data.len(),
                        &mut out,
                    )
                };
                debug_assert_eq!(status, STATUS_SUCCESS);
                std::hint::black_box(out);
            }
            samples.push(t.elapsed().as_nanos() as f64 / f64::from(calls));
        }
        // SAFETY: registered above, deregistered once, then waited for.
        unsafe {
            sim.deregister_client(handle);
            assert_eq!(
                sim.wait_for_client_deregister_complete(handle),
                STATUS_SUCCESS
            );
        }
        assert!(provider.stop(), "the provider unloads");
        drop(our_table);
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    }

    pub fn main() {
        let mut dirs = Vec::new();
        let (mut rounds, mut calls) = (5u32, 200_000u32);
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--rounds" => {
                    rounds = args
                        .next()
                        .and_then(|s| s.parse().ok())
                        .expect("--rounds N")
                }
                "--calls" => calls = args.next().and_then(|s| s.parse().ok()).expect("--calls N"),
                dir => dirs.push(PathBuf::from(dir)),
            }
        }
        assert!(
            !dirs.is_empty(),
            "usage: image_checksum DIR... [--rounds N] [--calls N]"
        );
        let binding = ModelBinding::bind(Sim::new(Config::default()));
        ntoskrnl::set_call_latency_us(0);
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); dirs.len()];
        for round in 0..rounds {
            for (i, dir) in dirs.iter().enumerate() {
                let ns = measure(&binding, dir, calls, 9);
                println!(
                    "round {round} {}: {ns:.1} ns per checksum call",
                    dir.display()
                );
                results[i].push(ns);
            }
        }
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let first = median(&results[0]);
        println!(
            "\n| provider image | ns per checksum call (median of {rounds} rounds) | × first |"
        );
        println!("|---|---|---|");
        for (dir, r) in dirs.iter().zip(&results) {
            let m = median(r);
            println!("| {} | {m:.1} | {:.3} |", dir.display(), m / first);
        }
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn main() {
    bench::main();
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn main() {
    eprintln!("image_checksum: the image host runs on x86_64 Linux only");
}
