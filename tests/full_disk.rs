//! A full disk under the engine: writes through `Engine` (puts, deletes, batches, on small
//! segments, so that segments are prepared and sealed and index runs written all the time) on
//! a 1 MiB tmpfs until a write fails. The failure must be an error that says the disk is full
//! (never a panic, never a hang), later writes must fail too while it stays full, reads must go
//! on answering, and the state must hold every write acknowledged before. With space again the
//! same engine writes again, and a reopen holds exactly the writes acknowledged, in order.
//! Needs root for the tmpfs; skipped, loudly, where it cannot mount.

#[path = "support/steps.rs"]
mod steps;
#[path = "support/tmpfs.rs"]
mod tmpfs;
use seglog::wal::FsyncPolicy;
use seglog::Engine;
use std::collections::HashMap;
use steps::*;
use tmpfs::Tmpfs;

/// The steps that returned, and the error that stopped them.
fn write_until_full(e: &Engine, from: u64, told: &mut HashMap<u64, u64>) -> (u64, String) {
    for s in from.. {
        match try_step(e, s) {
            Ok(version) => {
                told.insert(s, version);
            }
            Err(err) => return (s, err.to_string()),
        }
    }
    unreachable!("the loop ends only at an error")
}

#[test]
fn a_full_disk_is_an_error_and_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let Some(disk) = Tmpfs::mount(&mnt, "1M") else {
        return;
    };
    let dir = mnt.join("data");
    let mut told = HashMap::new();
    let e = Engine::open(&dir, config(FsyncPolicy::Always)).unwrap();
    let (done, err) = write_until_full(&e, 0, &mut told);
    assert!(done > 100, "{done} steps before the disk filled");
    eprintln!("full after {done} steps: {err}");
    assert!(err.contains("No space left"), "{err}");
    // Still full: still an error, and reads still answer, with every acknowledged step.
    let again = try_step(&e, done).unwrap_err().to_string();
    assert!(again.contains("No space left"), "{again}");
    let state = state_of(&e, "full");
    assert_eq!(matching_prefix(&state, done + 1), Some(done), "{err}");
    check_versions(&state, &told, "full");

    // Space again: the same engine writes on.
    disk.resize("16M");
    for s in done..done + 200 {
        told.insert(s, try_step(&e, s).expect("a write once there is space"));
    }
    drop(e);
    let e = Engine::open(&dir, config(FsyncPolicy::Always)).unwrap();
    let state = state_of(&e, "reopened");
    assert_eq!(matching_prefix(&state, done + 264), Some(done + 200));
    check_versions(&state, &told, "reopened");
    e.close().unwrap();
}
