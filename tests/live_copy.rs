//! Copies of a live engine directory: `rsync -a` while a writer runs steps (puts, deletes,
//! batches) on small segments, so that the copy races appends, rolls, seals, index runs being
//! written and merged, and segments being prepared. docs/operations.md says such a copy is a
//! crash image, but for two races it describes: the copy caught a write half done with later
//! pages complete (a corruption error), or missed a segment created while it listed the
//! directory (a missing segment). Each copy must open, or refuse with one of those two errors
//! and then open with `recovery = "tail-tolerant"`, and hold exactly the state after a prefix
//! of the steps, with the versions the writer was told; under `always`, a prefix holding every
//! step acknowledged before the copy began.

#[path = "support/random.rs"]
mod random;
#[path = "support/steps.rs"]
mod steps;
use random::{rounds, seed, Rng};
use seglog::wal::{FsyncPolicy, RecoveryMode};
use seglog::{Engine, Error};
use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use steps::*;

/// Steps done, and a condition variable the writer signals after each.
#[derive(Default)]
struct Progress {
    done: Mutex<u64>,
    moved: Condvar,
}

impl Progress {
    fn wait_for(&self, steps: u64) {
        let mut done = self.done.lock().unwrap();
        while *done < steps {
            done = self.moved.wait(done).unwrap();
        }
    }
}

fn live_copies(policy_name: &str, copies: u64) {
    if !Command::new("rsync")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("SKIPPED: no rsync here (.ci/run installs it)");
        return;
    }
    let seed = seed(&format!("live_copy_{policy_name}"));
    let mut rng = Rng(seed);
    let policy = policy_named(policy_name);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let engine = Arc::new(Engine::open(&dir, config(policy)).unwrap());
    let progress = Arc::new(Progress::default());
    let told = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (engine, progress, told, stop) =
            (engine.clone(), progress.clone(), told.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut s = 0u64;
            while !stop.load(Ordering::Acquire) {
                if s % 997 == 500 {
                    engine.checkpoint_tail().unwrap();
                }
                let version = run_step(&engine, s);
                told.lock().unwrap().insert(s, version);
                s += 1;
                *progress.done.lock().unwrap() = s;
                progress.moved.notify_all();
            }
        })
    };
    // (copy, steps acknowledged before it began)
    let mut taken = Vec::new();
    let mut before = 0;
    for i in 0..copies {
        progress.wait_for(before + 1 + rng.below(3000));
        before = *progress.done.lock().unwrap();
        let copy = tmp.path().join(format!("copy{i}"));
        // rsync exits 24 when files vanished while it ran (a merged run's inputs, the
        // prepared segment renamed into place): expected of a live directory. It exits 23 when
        // a file changed size under it (a segment cut to size as it sealed): the copy is
        // incomplete and says so, and operations.md says to copy again, as this does (afresh:
        // rsync's quick check would skip a damaged file whose size and time match).
        let mut attempts = 0;
        loop {
            attempts += 1;
            if copy.exists() {
                std::fs::remove_dir_all(&copy).unwrap();
            }
            let out = Command::new("rsync")
                .arg("-a")
                .arg(format!("{}/", dir.display()))
                .arg(&copy)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            match out.status.code() {
                Some(0) | Some(24) => break,
                Some(23) if attempts < 10 => eprintln!("rsync exit 23, copying again: {err}"),
                _ => panic!("rsync: {:?}: {err}", out.status.code()),
            }
        }
        taken.push((copy, before));
    }
    stop.store(true, Ordering::Release);
    writer.join().unwrap();
    let written = *progress.done.lock().unwrap();
    Arc::try_unwrap(engine)
        .ok()
        .expect("the writer is done")
        .close()
        .unwrap();
    let told = told.lock().unwrap().clone();

    let mut refused = 0;
    for (copy, before) in &taken {
        let what = format!("seed {seed} {}", copy.display());
        let e = match Engine::open(copy, config(policy)) {
            Ok(e) => e,
            Err(Error::Wal(
                err @ (seglog::wal::Error::Corruption { .. }
                | seglog::wal::Error::MissingSegment { .. }),
            )) => {
                refused += 1;
                eprintln!("{what}: strict open refused ({err}); opening tail-tolerant");
                let mut c = config(policy);
                c.wal.recovery = RecoveryMode::TailTolerant;
                Engine::open(copy, c)
                    .unwrap_or_else(|e| panic!("{what}: tail-tolerant open failed: {e}"))
            }
            Err(err) => panic!("{what}: open failed: {err}"),
        };
        let state = state_of(&e, &what);
        drop(e);
        let prefix = matching_prefix(&state, written + 64)
            .unwrap_or_else(|| panic!("{what}: the copy's state is no prefix of the steps"));
        // Pages holding acknowledged records were complete before the copy began, and a
        // segment the listing missed was created after it began: a tail-tolerant cut keeps them.
        if policy == FsyncPolicy::Always {
            assert!(
                prefix >= *before,
                "{what}: {before} steps acknowledged under always before the copy, {prefix} in it"
            );
        }
        check_versions(&state, &told, &what);
    }
    eprintln!(
        "{} copies of a live directory, {refused} refused by strict recovery and opened tail-tolerant",
        taken.len()
    );
}

#[test]
fn live_copies_open_as_a_prefix_under_always() {
    live_copies("always", rounds(6));
}

#[test]
fn live_copies_open_as_a_prefix_under_batch() {
    live_copies("batch", rounds(6));
}

#[test]
fn live_copies_open_as_a_prefix_under_never() {
    live_copies("never", rounds(6));
}
