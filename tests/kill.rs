//! Crash test of the engine: a child process writing through `Engine` (puts, deletes and
//! three-operation batches, on small segments so that it rolls, flushes and merges index runs
//! all the time, and now and then checkpoints the active segment) is SIGKILLed at random moments, many rounds on one directory, under each
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
#[path = "support/steps.rs"]
mod steps;
use seglog::wal::FsyncPolicy;
use seglog::Engine;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use steps::*;

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
        // Now and then a checkpoint of the active segment (the checkpointer's, when writes
        // slow down), so that kills land in and after those too.
        if s % 997 == 500 {
            e.checkpoint_tail().expect("checkpoint the tail");
        }
        let version = run_step(&e, s);
        writeln!(out, "ack {s} {version}").expect("stdout");
        out.flush().expect("stdout");
    }
}

/// What the engine in `dir` holds, opened again after a kill.
fn recovered(dir: &Path, policy: FsyncPolicy, what: &str) -> State {
    let e = Engine::open(dir, config(policy))
        .unwrap_or_else(|err| panic!("{what}: reopen after the kill failed: {err}"));
    state_of(&e, what)
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
        let what = format!("seed {seed} round {round}");
        let state = recovered(&dir, policy, &what);
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
        check_versions(&state, &told, &what);
        // Steps past the prefix were not applied: whatever the child was told about them no
        // longer holds.
        told.retain(|&s, _| s < prefix);
        done = prefix;
    }
    // A clean close after the last recovery keeps the state.
    let what = format!("seed {seed}, after a clean close");
    let before = recovered(&dir, policy, &what);
    let e = Engine::open(&dir, config(policy)).unwrap();
    e.close().unwrap();
    assert_eq!(recovered(&dir, policy, &what), before, "{what}");
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
