//! The call path of the shipped images: loads `nmr_provider.sys` and
//! `nmr_client.sys` from each directory given, lets the drivers' own worker
//! threads call each other (the client's `checksum` round, the provider's
//! `notify` round) with no delay between rounds, and reports NPI calls per
//! second into each image. Runs the directories in turn, `--rounds` times,
//! so that a before/after pair is measured side by side in one run.
//!
//! ```sh
//! cargo run --release -p testbed --example image_calls -- DIR_A DIR_B [--seconds S] [--rounds N]
//! ```
//!
//! x86_64 Linux only (the image host). The model runs with `check_calls`
//! off: its R9 check would measure the model's lock, not the images.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn main() {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use nmr_image_host::stress::{CLIENT_IMAGE, PROVIDER_IMAGE};
    use nmr_image_host::{Driver, ModelBinding, dispatch, ntoskrnl};
    use nmr_sim::{Config, Sim};

    let mut dirs = Vec::new();
    let (mut seconds, mut rounds) = (3.0f64, 3u32);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds S")
            }
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--rounds N")
            }
            dir => dirs.push(PathBuf::from(dir)),
        }
    }
    assert!(
        !dirs.is_empty(),
        "usage: image_calls DIR... [--seconds S] [--rounds N]"
    );
    let binding = ModelBinding::bind(Sim::new(Config {
        check_calls: false,
        ..Config::default()
    }));
    ntoskrnl::set_call_latency_us(0);
    ntoskrnl::set_delay_cap_us(0);
    let mut rates: Vec<Vec<(f64, f64)>> = vec![Vec::new(); dirs.len()];
    for round in 0..rounds {
        for (i, dir) in dirs.iter().enumerate() {
            binding.rebind(Sim::new(Config {
                check_calls: false,
                ..Config::default()
            }));
            let mut provider = Driver::load(&dir.join(PROVIDER_IMAGE)).expect("provider image");
            assert_eq!(provider.start(), 0, "provider DriverEntry");
            let mut client = Driver::load(&dir.join(CLIENT_IMAGE)).expect("client image");
            assert_eq!(client.start(), 0, "client DriverEntry");
            let before = (
                dispatch::calls_into(PROVIDER_IMAGE),
                dispatch::calls_into(CLIENT_IMAGE),
            );
            let t = Instant::now();
            std::thread::sleep(Duration::from_secs_f64(seconds));
            let after = (
                dispatch::calls_into(PROVIDER_IMAGE),
                dispatch::calls_into(CLIENT_IMAGE),
            );
            let elapsed = t.elapsed().as_secs_f64();
            assert!(client.stop() && provider.stop(), "both unload");
            let rate = (
                (after.0 - before.0) as f64 / elapsed,
                (after.1 - before.1) as f64 / elapsed,
            );
            println!(
                "round {round} {}: {:.0} calls/s into the provider, {:.0} into the client",
                dir.display(),
                rate.0,
                rate.1
            );
            rates[i].push(rate);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("\n| images | checksum calls/s (median) | notify calls/s (median) | × first |");
    println!("|---|---|---|---|");
    let first = median(rates[0].iter().map(|r| r.0).collect());
    for (dir, r) in dirs.iter().zip(&rates) {
        let c = median(r.iter().map(|r| r.0).collect());
        let n = median(r.iter().map(|r| r.1).collect());
        println!("| {} | {c:.0} | {n:.0} | {:.3} |", dir.display(), c / first);
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn main() {
    eprintln!("image_calls: the image host runs on x86_64 Linux only");
}
