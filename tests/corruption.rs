//! Random damage to a cleanly closed directory: bits flipped, a file cut short or a 4 KiB
//! block zeroed, in any of its files (segments, the `CLOSED` marker, index runs, the index
//! seed). Whatever it hits, the engine either refuses to open or answers every read with what
//! was written or an error: no wrong value, no deleted key back, no key gone without an error.

mod common;

use common::{config, copy_dir};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use seglog::Engine;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const KEYS: u32 = 200;

/// Every live key's (value, version) after the history.
type Truth = BTreeMap<Vec<u8>, (Vec<u8>, u64)>;

fn key(i: u32) -> Vec<u8> {
    format!("k{}", i % KEYS).into_bytes()
}

/// Puts and deletes over [`KEYS`] keys, index checkpoints written, closed cleanly. The
/// values are checked against a model of the history; the versions are the engine's.
fn build(dir: &Path) -> Truth {
    let e = Engine::open(dir, config()).unwrap();
    let mut model = BTreeMap::new();
    for i in 0..1500u32 {
        if i % 9 == 0 {
            e.delete(&key(i * 7)).unwrap();
            model.remove(&key(i * 7));
        } else {
            let v = format!("value {i:>30}").into_bytes();
            e.put(&key(i), &v).unwrap();
            model.insert(key(i), v);
        }
    }
    e.checkpoint_now().unwrap();
    let truth: Truth = (0..KEYS)
        .filter_map(|i| Some((key(i), e.get(&key(i)).unwrap()?)))
        .collect();
    e.close().unwrap();
    let values: BTreeMap<Vec<u8>, Vec<u8>> = truth
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    assert_eq!(values, model);
    truth
}

/// Every file of the directory, the index's included, by path relative to it.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in [Path::new(""), Path::new("index")] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() && e.file_name() != "LOCK" {
                out.push(sub.join(e.file_name()));
            }
        }
    }
    out.sort();
    out
}

#[derive(Debug, Clone)]
enum Damage {
    /// One bit of the byte at `at` (modulo the length).
    Flip { at: u64, bit: u8 },
    /// The file cut to `keep` bytes (modulo the length).
    Truncate { keep: u64 },
    /// The 4 KiB block holding `at` (modulo the length) zeroed.
    Zero { at: u64 },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => (any::<u64>(), 0u8..8).prop_map(|(at, bit)| Damage::Flip { at, bit }),
        1 => any::<u64>().prop_map(|keep| Damage::Truncate { keep }),
        1 => any::<u64>().prop_map(|at| Damage::Zero { at }),
    ]
}

fn apply(path: &Path, d: &Damage) {
    let mut bytes = std::fs::read(path).unwrap();
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len() as u64;
    match *d {
        Damage::Flip { at, bit } => bytes[(at % len) as usize] ^= 1 << bit,
        Damage::Truncate { keep } => bytes.truncate((keep % len) as usize),
        Damage::Zero { at } => {
            let start = ((at % len) & !4095) as usize;
            let end = (start + 4096).min(bytes.len());
            bytes[start..end].fill(0);
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// Every read of `e` is the truth or an error.
fn check(e: &Engine, truth: &Truth) -> Result<(), TestCaseError> {
    for i in 0..KEYS {
        let k = key(i);
        match (e.get(&k), truth.get(&k)) {
            (Err(_), _) => {}
            (Ok(got), want) => prop_assert_eq!(got.as_ref(), want, "key {:?}", k),
        }
    }
    if let Ok(listed) = e.scan(b"", usize::MAX) {
        let want: Vec<(Vec<u8>, u64)> = truth.iter().map(|(k, (_, v))| (k.clone(), *v)).collect();
        prop_assert_eq!(listed, want);
    }
    Ok(())
}

#[test]
fn damage_anywhere_is_an_error_never_a_wrong_or_missing_value() {
    let base = tempfile::tempdir().unwrap();
    let truth = build(base.path());
    let names = files(base.path());
    assert!(
        names.iter().any(|p| p.starts_with("index")) && names.len() > 10,
        "the directory has segments and runs to damage: {names:?}"
    );
    let hits = prop::collection::vec((any::<prop::sample::Index>(), damage()), 1..4);
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 96,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let (refused, opened) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    runner
        .run(&hits, |hits| {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(base.path(), dir.path());
            for (which, d) in &hits {
                apply(&dir.path().join(which.get(&names)), d);
            }
            match Engine::open(dir.path(), config()) {
                Err(_) => refused.set(refused.get() + 1),
                Ok(e) => {
                    opened.set(opened.get() + 1);
                    check(&e, &truth)?;
                    // Closing may fail on what it finds; it must not panic.
                    let _ = e.close();
                }
            }
            Ok(())
        })
        .unwrap();
    // Both outcomes occur, so the check above ran on damaged directories that opened.
    let (refused, opened) = (refused.get(), opened.get());
    assert!(
        refused > 0 && opened > 0,
        "refused {refused}, opened {opened}"
    );
}
