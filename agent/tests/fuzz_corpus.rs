//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) and every crasher ever found
//! (`fuzz/regressions/<target>/`) through the same `hais_agent::fuzzing` functions the
//! `cargo fuzz` targets call, so a regression shows up in the ordinary `cargo test`, no
//! nightly toolchain or libFuzzer needed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use hais_agent::fuzzing;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("tls_handshake", fuzzing::tls_handshake),
    ("quic_initial", fuzzing::quic_initial),
    ("http1", fuzzing::http1),
    ("http2", fuzzing::http2),
    ("ssh", fuzzing::ssh),
    ("dhcp", fuzzing::dhcp),
    ("x509", fuzzing::x509),
    ("decode_chain", fuzzing::decode_chain),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("read corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Runs every file under `<fuzz>/<kind>/<target>/`; returns (files run, failures).
fn replay(kind: &str) -> (usize, Vec<String>) {
    let root = fuzz_dir().join(kind);
    let mut run = 0;
    let mut failures = Vec::new();
    for dir in files_and_dirs(&root) {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let Some(f) = target(name) else {
            failures.push(format!("{}: no fuzz target of that name", dir.display()));
            continue;
        };
        for file in files(&dir) {
            let data = std::fs::read(&file).expect("read corpus file");
            run += 1;
            if catch_unwind(AssertUnwindSafe(|| f(&data))).is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    (run, failures)
}

fn files_and_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("read fuzz directory").path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

#[test]
fn every_target_has_a_corpus() {
    for (name, _) in TARGETS {
        let n = files(&fuzz_dir().join("corpus").join(name)).len();
        assert!(n > 0, "fuzz/corpus/{name}/ is empty");
    }
}

#[test]
fn corpus_replays_clean() {
    let (run, failures) = replay("corpus");
    eprintln!("replayed {run} corpus inputs");
    assert!(run > 0, "no corpus found under {}", fuzz_dir().display());
    assert!(
        failures.is_empty(),
        "corpus inputs failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn regressions_replay_clean() {
    let (_, failures) = replay("regressions");
    assert!(
        failures.is_empty(),
        "regression inputs failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn empty_and_tiny_inputs() {
    for (name, f) in TARGETS {
        for data in [&[][..], &[0], &[0xff; 3], &[1, 0, 0, 0]] {
            let ok = catch_unwind(AssertUnwindSafe(|| f(data))).is_ok();
            assert!(ok, "{name} panicked on {data:?}");
        }
    }
}
