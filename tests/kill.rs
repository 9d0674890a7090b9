//! Crash test of the engine: a child process writing through `Engine` (puts, deletes and
//! three-operation batches, on small segments so that it rolls, flushes and merges index runs
//! all the time) is SIGKILLed at random moments, many rounds on one directory, under each
//! fsync policy. After each kill the directory is opened again and must hold exactly the state
//! after some prefix of the steps the children ran (no step lost inside that prefix, no batch
//! in part, no deleted key back, no value from a step after it), every version must be the one
//! the child was told, and under `always` the prefix must include every step the child
//! acknowledged. The next child goes on from that prefix.
//!
//! The child is this test binary again, run with `SEGLOG_KILL_CHILD` set (see
//! [`child_process`]). `SEGLOG_SEED` replays a run; `SEGLOG_SOAK=1` runs ten times the rounds.

#[path = "support/random.rs"]
mod random;
use random::{rounds, seed, Rng};
use seglog::wal::{FsyncPolicy, WalConfig};
use seglog::{BatchOp, Config, Engine};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// Keys the steps spread over.
const KEYS: u64 = 1500;

fn key(op: u64) -> Vec<u8> {
    format!("k{:05}", op.wrapping_mul(7919) % KEYS).into_bytes()
}

/// The value operation `op` writes: its number first, then a length that varies.
fn value(op: u64) -> Vec<u8> {
    let mut v = format!("v{op}-").into_bytes();
    v.resize(v.len() + (op % 300) as usize, b'x');
    v
}

/// The operation number a value was written by.
fn op_of(value: &[u8]) -> u64 {
    let s = std::str::from_utf8(value).expect("a value the test wrote");
    s[1..s.find('-').expect("a value the test wrote")]
        .parse()
        .expect("a value the test wrote")
}

/// One operation: a put when `Some(value)`, else a delete.
type Change = (Vec<u8>, Option<Vec<u8>>);

/// Step `s`: every seventeenth a batch of three operations, every ninth a delete, else a put.
/// Operation numbers are `3 * s + i`, so that every operation writes a distinct value.
fn step(s: u64) -> Vec<Change> {
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

fn config(policy: FsyncPolicy) -> Config {
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

fn policy_named(name: &str) -> FsyncPolicy {
    match name {
        "always" => FsyncPolicy::Always,
        "batch" => FsyncPolicy::Batch,
        _ => FsyncPolicy::Never,
    }
}

/// The child: with `SEGLOG_KILL_CHILD=DIR,POLICY,FIRST_STEP`, opens the engine in DIR and runs
/// steps from FIRST_STEP on, printing `ack STEP LAST_VERSION` after each returns, until it is
/// killed. Without it, does nothing (this is also an ordinary test of the binary).
#[test]
fn child_process() {
    let Ok(spec) = std::env::var("SEGLOG_KILL_CHILD") else {
        return;
    };
    let mut parts = spec.split(',');
    let (Some(dir), Some(policy), Some(first)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("SEGLOG_KILL_CHILD={spec}: want DIR,POLICY,FIRST_STEP");
    };
    let first: u64 = first.parse().expect("FIRST_STEP");
    let e = Engine::open(dir, config(policy_named(policy))).expect("open");
    let mut out = std::io::stdout().lock();
    // The harness's "test child_process ... " has no line end yet.
    writeln!(out).expect("stdout");
    for s in first.. {
        let changes = step(s);
        let version = if let [(k, v)] = changes.as_slice() {
            match v {
                Some(v) => e.put(k, v).expect("put"),
                None => e.delete(k).expect("delete").unwrap_or(0),
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
            e.write_batch(&ops, None).expect("batch").1
        };
        writeln!(out, "ack {s} {version}").expect("stdout");
        out.flush().expect("stdout");
    }
}

/// What the engine in `dir` holds: key to (value, version), from a full scan and a get of each.
fn recovered(dir: &Path, policy: FsyncPolicy, seed: u64) -> HashMap<Vec<u8>, (Vec<u8>, u64)> {
    let e = Engine::open(dir, config(policy))
        .unwrap_or_else(|err| panic!("seed {seed}: reopen after the kill failed: {err}"));
    let scanned = e.scan(b"", usize::MAX).expect("scan");
    let mut state = HashMap::new();
    for (k, version) in scanned {
        let (v, got) = e.get(&k).expect("get").expect("a scanned key has a value");
        assert_eq!(
            got, version,
            "seed {seed}: get and scan disagree on a version"
        );
        state.insert(k, (v, version));
    }
    for k in 0..KEYS {
        let k = format!("k{k:05}").into_bytes();
        let got = e.get(&k).expect("get");
        assert_eq!(
            got,
            state.get(&k).cloned(),
            "seed {seed}: a get disagrees with the scan"
        );
    }
    drop(e);
    state
}

/// The longest prefix of steps `0..` whose state equals `state`, searched up to `max_steps`:
/// `None` when none does. Tracks how many keys differ as each step applies, so each step costs
/// its own operations only.
fn matching_prefix(state: &HashMap<Vec<u8>, (Vec<u8>, u64)>, max_steps: u64) -> Option<u64> {
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

/// Rounds of: a child runs from the recovered prefix on, is killed after a random number of
/// acknowledged steps (sometimes at once, maybe while it opens), and the directory is checked.
fn kill_rounds(policy_name: &str, rounds: u64, most_acks: u64) {
    let seed = seed(&format!("kill_{policy_name}"));
    let mut rng = Rng(seed);
    let policy = policy_named(policy_name);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // Steps recovered so far: the next child starts there.
    let mut done = 0u64;
    // Versions the children were told, by step.
    let mut told: HashMap<u64, u64> = HashMap::new();
    for round in 0..rounds {
        let kill_after = if rng.below(8) == 0 {
            0
        } else {
            1 + rng.below(most_acks)
        };
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                "SEGLOG_KILL_CHILD",
                format!("{},{policy_name},{done}", dir.display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child");
        if kill_after == 0 {
            child.kill().unwrap();
        }
        let mut acked = done;
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let Some(rest) = line.trim().strip_prefix("ack ") else {
                continue; // the test harness's own lines
            };
            let (s, v) = rest.split_once(' ').expect("ack STEP VERSION");
            let (s, v): (u64, u64) = (s.parse().unwrap(), v.parse().unwrap());
            assert_eq!(s, acked, "seed {seed} round {round}: steps out of order");
            told.insert(s, v);
            acked = s + 1;
            if acked - done == kill_after {
                child.kill().unwrap();
            }
        }
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "seed {seed} round {round}: the child ended on its own: {status}"
        );
        if !dir.exists() {
            assert_eq!(
                acked, done,
                "seed {seed} round {round}: acks without a directory"
            );
            continue;
        }
        let state = recovered(&dir, policy, seed);
        // A child prints at most one step past what it wrote: search a little beyond.
        let prefix = matching_prefix(&state, acked + 64).unwrap_or_else(|| {
            panic!("seed {seed} round {round}: the recovered state is no prefix of the steps")
        });
        assert!(
            prefix >= done,
            "seed {seed} round {round}: recovered {prefix} steps, fewer than the {done} recovered before"
        );
        if policy == FsyncPolicy::Always {
            assert!(
                prefix >= acked,
                "seed {seed} round {round}: {acked} steps acknowledged under always, {prefix} recovered"
            );
        }
        // Every version is the one its writer was told, and versions follow the steps.
        let mut by_op: Vec<(u64, u64)> = state
            .values()
            .map(|(v, version)| (op_of(v), *version))
            .collect();
        by_op.sort_unstable();
        for w in by_op.windows(2) {
            assert!(
                w[0].1 < w[1].1,
                "seed {seed} round {round}: versions out of step order"
            );
        }
        for (op, version) in &by_op {
            let s = op / 3;
            // The child is told a batch's last version; its first operation is two before.
            let before_told = if step(s).len() == 3 { 2 - op % 3 } else { 0 };
            if let Some(&want) = told.get(&s) {
                assert_eq!(
                    version + before_told,
                    want,
                    "seed {seed} round {round}: operation {op} of step {s}, told {want}"
                );
            }
        }
        // Steps past the prefix were not applied: whatever the child was told about them no
        // longer holds.
        told.retain(|&s, _| s < prefix);
        done = prefix;
    }
    // A clean close after the last recovery keeps the state.
    let before = recovered(&dir, policy, seed);
    let e = Engine::open(&dir, config(policy)).unwrap();
    e.close().unwrap();
    assert_eq!(recovered(&dir, policy, seed), before, "seed {seed}");
}

#[test]
fn sigkill_keeps_every_acknowledged_step_under_always() {
    kill_rounds("always", rounds(16), 1000);
}

#[test]
fn sigkill_recovers_a_prefix_of_the_steps_under_batch() {
    kill_rounds("batch", rounds(16), 20_000);
}

#[test]
fn sigkill_recovers_a_prefix_of_the_steps_under_never() {
    kill_rounds("never", rounds(16), 20_000);
}
