//! Replays every checked-in seed (`fuzz/corpus/<target>/`) and every past crash
//! (`fuzz/regressions/<target>/`) through the fuzz targets' bodies, on stable, as an ordinary
//! test. A target without seeds, a folder without a target, or a target without its
//! `fuzz/fuzz_targets/<target>.rs` fails the test.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use egresswatch_fuzz_targets::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.expect("readable entry").path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Names of the subfolders (or of the `*.rs` files) of `dir`.
fn names(dir: &Path, rust_files: bool) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable entry").path())
        .filter(|p| {
            if rust_files {
                p.extension().is_some_and(|e| e == "rs")
            } else {
                p.is_dir()
            }
        })
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn every_target_has_a_cargo_fuzz_binary_and_seeds_and_nothing_else_does() {
    let targets: BTreeSet<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(names(&fuzz_dir().join("fuzz_targets"), true), targets);
    assert_eq!(names(&fuzz_dir().join("corpus"), false), targets);
    if fuzz_dir().join("regressions").exists() {
        let unknown: Vec<String> = names(&fuzz_dir().join("regressions"), false)
            .difference(&targets)
            .cloned()
            .collect();
        assert!(unknown.is_empty(), "regressions for no target: {unknown:?}");
    }
}

#[test]
fn the_corpus_and_every_past_crash_replay_without_a_failure() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let seeds = files(&fuzz_dir().join("corpus").join(name));
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seed");
        let crashes = files(&fuzz_dir().join("regressions").join(name));
        for file in seeds.iter().chain(&crashes) {
            let data = std::fs::read(file).expect("readable seed");
            replayed += 1;
            if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {replayed} inputs failed: {failures:#?}",
        failures.len()
    );
}
