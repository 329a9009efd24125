#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![allow(missing_docs)]
use nmr_image_host::*;
use std::path::PathBuf;
#[test]
fn smoke() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/sys");
    let sim = nmr_sim::Sim::new(nmr_sim::Config::default().recording());
    let _b = ModelBinding::bind(sim.clone());
    ntoskrnl::set_trace_sink(Some(Box::new(|l| println!("trace: {l}"))));
    let mut p = Driver::load(&dir.join("nmr_provider.sys")).unwrap();
    println!(
        "mapped at {:#x} relocs {}",
        p.image().base(),
        p.image().relocations()
    );
    let mut c = Driver::load(&dir.join("nmr_client.sys")).unwrap();
    println!("p start {:#x}", p.start());
    println!("c start {:#x}", c.start());
    std::thread::sleep(std::time::Duration::from_millis(100));
    println!("stats {:?}", sim.stats());
    println!(
        "calls into provider {} client {}",
        dispatch::calls_into("nmr_provider.sys"),
        dispatch::calls_into("nmr_client.sys")
    );
    assert!(c.stop());
    assert!(p.stop());
    println!("stats {:?}", sim.stats());
    println!("violations {:?}", sim.violations());
    println!("problems {:?}", problems::take());
    println!(
        "threads {:?} pool {:?}",
        ntoskrnl::thread_stats(),
        pool::stats()
    );
}
