//! The writes of the engine's crash and live-copy tests, and how their results are checked:
//! a deterministic sequence of steps (puts, deletes, three-operation batches), the state an
//! engine directory holds, and the longest prefix of the steps that state is.
#![allow(dead_code)]

use seglog::wal::{FsyncPolicy, WalConfig};
use seglog::{BatchOp, Config, Engine};
use std::collections::HashMap;

/// What an engine holds: key to (value, version).
pub type State = HashMap<Vec<u8>, (Vec<u8>, u64)>;

/// Keys the steps spread over.
pub const KEYS: u64 = 1500;

pub fn key(op: u64) -> Vec<u8> {
    format!("k{:05}", op.wrapping_mul(7919) % KEYS).into_bytes()
}

/// The value operation `op` writes: its number first, then a length that varies.
pub fn value(op: u64) -> Vec<u8> {
    let mut v = format!("v{op}-").into_bytes();
    v.resize(v.len() + (op % 300) as usize, b'x');
    v
}

/// The operation number a value was written by.
pub fn op_of(value: &[u8]) -> u64 {
    let s = std::str::from_utf8(value).expect("a value the test wrote");
    s[1..s.find('-').expect("a value the test wrote")]
        .parse()
        .expect("a value the test wrote")
}

/// One operation: a put when `Some(value)`, else a delete.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// Step `s`: every seventeenth a batch of three operations, every ninth a delete, else a put.
/// Operation numbers are `3 * s + i`, so that every operation writes a distinct value.
pub fn step(s: u64) -> Vec<Change> {
    let op = |i: u64| 3 * s + i;
    if s % 17 == 5 {
        vec![
            (key(op(0)), Some(value(op(0)))),
            (key(op(1)), None),
            (key(op(2)), Some(value(op(2)))),
        ]
    } else if s % 9 == 4 {
        vec![(key(op(0)), None)]
    } else {
        vec![(key(op(0)), Some(value(op(0))))]
    }
}

pub fn config(policy: FsyncPolicy) -> Config {
    Config {
        wal: WalConfig {
            fsync: policy,
            fsync_interval_ms: 2,
            segment_size_bytes: 64 << 10,
            ..WalConfig::default()
        },
        ..Config::default()
    }
}

pub fn policy_named(name: &str) -> FsyncPolicy {
    match name {
        "always" => FsyncPolicy::Always,
        "batch" => FsyncPolicy::Batch,
        _ => FsyncPolicy::Never,
    }
}

/// Runs step `s` on `e`; returns the version it was told (a batch's last; 0 for a delete of
/// a key that was not there, which writes nothing).
pub fn run_step(e: &Engine, s: u64) -> u64 {
    try_step(e, s).unwrap_or_else(|err| panic!("step {s}: {err}"))
}

/// [`run_step`], returning the engine's error.
pub fn try_step(e: &Engine, s: u64) -> seglog::Result<u64> {
    let changes = step(s);
    if let [(k, v)] = changes.as_slice() {
        match v {
            Some(v) => e.put(k, v),
            None => e.delete(k).map(|v| v.unwrap_or(0)),
        }
    } else {
        let ops: Vec<BatchOp<'_>> = changes
            .iter()
            .map(|(key, v)| match v {
                Some(value) => BatchOp::Put {
                    key,
                    value,
                    expect: None,
                },
                None => BatchOp::Delete { key, expect: None },
            })
            .collect();
        e.write_batch(&ops, None).map(|(_, last)| last)
    }
}

/// What `e` holds, from a full scan and a get of each key (`what` names the case in failures).
pub fn state_of(e: &Engine, what: &str) -> State {
    let scanned = e.scan(b"", usize::MAX).expect("scan");
    let mut state = HashMap::new();
    for (k, version) in scanned {
        let (v, got) = e.get(&k).expect("get").expect("a scanned key has a value");
        assert_eq!(got, version, "{what}: get and scan disagree on a version");
        state.insert(k, (v, version));
    }
    for k in 0..KEYS {
        let k = format!("k{k:05}").into_bytes();
        let got = e.get(&k).expect("get");
        assert_eq!(
            got,
            state.get(&k).cloned(),
            "{what}: a get disagrees with the scan"
        );
    }
    state
}

/// The longest prefix of steps `0..` whose state equals `state`, searched up to `max_steps`:
/// `None` when none does. Tracks how many keys differ as each step applies, so each step costs
/// its own operations only.
pub fn matching_prefix(state: &State, max_steps: u64) -> Option<u64> {
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let differs = |model: &HashMap<Vec<u8>, Vec<u8>>, k: &Vec<u8>| {
        model.get(k).map(Vec::as_slice) != state.get(k).map(|(v, _)| v.as_slice())
    };
    let mut differing = state.len();
    let mut found = (differing == 0).then_some(0);
    for s in 0..max_steps {
        for (k, v) in step(s) {
            let before = differs(&model, &k);
            match v {
                Some(v) => model.insert(k.clone(), v),
                None => model.remove(&k),
            };
            let after = differs(&model, &k);
            differing = differing + usize::from(after) - usize::from(before);
        }
        if differing == 0 {
            found = Some(s + 1);
        }
    }
    found
}

/// Checks that every version in `state` is the one its writer was told (`told`, by step) and
/// that versions follow the steps.
pub fn check_versions(state: &State, told: &HashMap<u64, u64>, what: &str) {
    let mut by_op: Vec<(u64, u64)> = state
        .values()
        .map(|(v, version)| (op_of(v), *version))
        .collect();
    by_op.sort_unstable();
    for w in by_op.windows(2) {
        assert!(w[0].1 < w[1].1, "{what}: versions out of step order");
    }
    for (op, version) in &by_op {
        let s = op / 3;
        // A writer is told a batch's last version; its first operation is two before.
        let before_told = if step(s).len() == 3 { 2 - op % 3 } else { 0 };
        if let Some(&want) = told.get(&s) {
            assert_eq!(
                version + before_told,
                want,
                "{what}: operation {op} of step {s}, told {want}"
            );
        }
    }
}
