//! Replays every committed corpus file (`fuzz/corpus/<target>/`) and every
//! saved crash reproducer (`fuzz/regressions/<target>/`) through the same
//! bodies the fuzz targets run, on stable Rust, as part of
//! `cargo test --workspace`. A target without a corpus fails: the replay
//! must never pass by finding nothing.

use std::path::{Path, PathBuf};

use nmr_fuzz_targets::TARGETS;

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let corpus = files(&fuzz.join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "no corpus for {target} in {}",
        fuzz.join("corpus").display()
    );
    let regressions = files(&fuzz.join("regressions").join(target));
    for file in corpus.iter().chain(&regressions) {
        let data = std::fs::read(file).expect("a corpus file");
        // Name the file that broke an invariant, then fail with its panic.
        if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
            eprintln!("{target}: FAILED on {}", file.display());
            std::panic::resume_unwind(panic);
        }
    }
    println!(
        "{target}: replayed {} corpus files and {} regressions",
        corpus.len(),
        regressions.len()
    );
}

#[test]
fn peer_attach_corpus() {
    replay("peer_attach", TARGETS[0].1);
}

#[test]
fn dispatch_header_corpus() {
    replay("dispatch_header", TARGETS[1].1);
}

#[test]
fn register_corpus() {
    replay("register", TARGETS[2].1);
}

#[test]
fn checksum_corpus() {
    replay("checksum", TARGETS[3].1);
}

#[test]
fn every_target_is_replayed() {
    let names: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
    assert_eq!(
        names,
        ["peer_attach", "dispatch_header", "register", "checksum"],
        "a new target needs its replay test above"
    );
}
