//! Index checkpoints (run files): reopening uses them instead of replaying, and a missing,
//! truncated, damaged, misnamed or foreign one falls back to replaying the segments it covers,
//! never to a wrong index. Failing to write them costs nothing but replay.

mod common;

use common::{config, copy_dir};
use seglog::wal::format::{DURABLE_LEN, HDR_DURABLE};
use seglog::wal::sim::{Faults, SimIo};
use seglog::wal::{FsyncPolicy, Io};
use seglog::{Config, Engine};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Every key's (value, version), or None when absent.
type State = Vec<(Vec<u8>, Option<(Vec<u8>, u64)>)>;

const KEYS: u32 = 300;

fn write_history(e: &Engine, range: std::ops::Range<u32>) {
    write_history_with(e, range, "v");
}

/// Puts (values `{prefix}{i}`), deletes and a fence at 1000.
fn write_history_with(e: &Engine, range: std::ops::Range<u32>, prefix: &str) {
    for i in range {
        let k = format!("k{}", i % KEYS);
        if i % 7 == 0 {
            e.delete(k.as_bytes()).unwrap();
        } else {
            e.put(k.as_bytes(), format!("{prefix}{i}").as_bytes())
                .unwrap();
        }
        if i == 1000 {
            e.fence(4).unwrap();
        }
    }
}

fn fill(dir: &Path) -> State {
    let e = Engine::open(dir, config()).unwrap();
    write_history(&e, 0..2000);
    e.checkpoint_now().unwrap();
    let state = snapshot(&e);
    e.close().unwrap();
    state
}

fn snapshot(e: &Engine) -> State {
    (0..KEYS)
        .map(|i| format!("k{i}").into_bytes())
        .map(|k| (k.clone(), e.get(&k).unwrap()))
        .collect()
}

fn runs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("index"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "run"))
        .collect();
    v.sort();
    v
}

fn sealed_segments(dir: &Path) -> usize {
    let n = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    n - 1
}

#[test]
fn reopen_reads_runs_instead_of_replaying_sealed_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let before = fill(tmp.path());
    let files = runs(tmp.path());
    let sealed = sealed_segments(tmp.path());
    assert!(sealed >= 8, "{sealed} sealed segments");
    // Merged: far fewer run files than segments.
    assert!(
        files.len() <= 2 + (sealed as f64).log2().ceil() as usize,
        "{} run files for {sealed} segments",
        files.len()
    );
    let e = Engine::open(tmp.path(), config()).unwrap();
    let r = e.open_report().clone();
    assert_eq!(r.run_files, files.len(), "{r:?}");
    assert_eq!(
        (r.segments_from_checkpoints, r.segments_replayed),
        (sealed, 0)
    );
    // Closing wrote the active segment's part of the index too: nothing is replayed.
    assert_eq!(r.records_replayed, 0, "{r:?}");
    assert_eq!(snapshot(&e), before);
    assert_eq!(e.epoch(), 4);
    let live = before.iter().filter(|(_, v)| v.is_some()).count();
    assert_eq!(e.len().unwrap(), live);
    assert_eq!(e.scan(b"", usize::MAX).unwrap().len(), live);
}

#[test]
fn without_any_run_every_segment_is_replayed_to_the_same_index() {
    // Many more segments than replay workers and the read-ahead's window: workers take them
    // one after another, and the read-ahead waits for them.
    let tmp = tempfile::tempdir().unwrap();
    let before = fill(tmp.path());
    let sealed = sealed_segments(tmp.path());
    assert!(sealed >= 8, "{sealed} sealed segments");
    std::fs::remove_dir_all(tmp.path().join("index")).unwrap();
    let e = Engine::open(tmp.path(), config()).unwrap();
    let r = e.open_report().clone();
    assert_eq!((r.run_files, r.segments_replayed), (0, sealed), "{r:?}");
    // Every record of the log, the active segment's included.
    assert_eq!(r.records_replayed, e.wal().last_lsn(), "{r:?}");
    assert_eq!(snapshot(&e), before);
    assert_eq!(e.epoch(), 4);
}

/// A log may hold logs: values made of valid record frames. A replay that reads a segment in
/// two parts starts the second part at the first frame past the middle that checks out on its
/// own, which may be one inside a value; only the first part, stopping exactly there, confirms
/// it. Here every value is six frames claiming to be the next record, so most segments' second
/// parts start at a false one: the index after a full replay must still be the one written,
/// without their key and without losing the records after them.
#[test]
fn values_made_of_frames_do_not_mislead_a_replay_read_in_two_parts() {
    use seglog::wal::format::encode_frame;
    use seglog::wal::Entry;
    let tmp = tempfile::tempdir().unwrap();
    let e = Engine::open(tmp.path(), config()).unwrap();
    let bogus = Entry {
        kind: seglog::record::KIND_PUT,
        key: b"bogus-key-000000",
        value: &[0xAB; 8],
    };
    let mut written = Vec::new();
    for i in 0..200u32 {
        // 16 bytes: a value starts 48 bytes into its frame, where a frame could start too.
        let key = format!("key-{i:012}");
        let lsn = e.wal().last_lsn() + 1;
        let mut value = Vec::new();
        for _ in 0..6 {
            encode_frame(&mut value, &bogus, lsn + 1, 0, 0x5EED, 0);
        }
        assert_eq!(e.put(key.as_bytes(), &value).unwrap(), lsn);
        written.push((key, value, lsn));
    }
    let sealed = sealed_segments(tmp.path());
    assert!((4..12).contains(&sealed), "{sealed} sealed segments");
    let check = |crashed: bool| {
        std::fs::remove_dir_all(tmp.path().join("index")).unwrap();
        let e = Engine::open(tmp.path(), config()).unwrap();
        let r = e.open_report().clone();
        assert_eq!(
            r.records_replayed,
            e.wal().last_lsn(),
            "crashed {crashed}: {r:?}"
        );
        for (key, value, lsn) in &written {
            let got = e.get(key.as_bytes()).unwrap();
            assert_eq!(got, Some((value.clone(), *lsn)), "crashed {crashed}: {key}");
        }
        assert_eq!(e.get(bogus.key).unwrap(), None, "crashed {crashed}");
        assert_eq!(e.len().unwrap(), written.len(), "crashed {crashed}");
        e
    };
    // After a crash (dropped without a clean close) and after a clean close.
    drop(e);
    check(true).close().unwrap();
    check(false).close().unwrap();
}

/// One way to damage the run files of a closed directory; returns the file it damaged.
type Damage = fn(&[PathBuf]) -> PathBuf;

/// The largest run file (past its first 4 KiB block, which opening checks with the header,
/// it holds entries before its short checksum table).
fn largest(r: &[PathBuf]) -> PathBuf {
    let len = |p: &PathBuf| std::fs::metadata(p).unwrap().len();
    r.iter().max_by_key(|p| len(p)).unwrap().clone()
}

#[test]
fn missing_truncated_damaged_or_foreign_runs_fall_back_to_replay() {
    let damages: [(&str, Damage); 8] = [
        ("deleted", |r| {
            std::fs::remove_file(&r[0]).unwrap();
            r[0].clone()
        }),
        ("truncated", |r| {
            let b = std::fs::read(&r[0]).unwrap();
            std::fs::write(&r[0], &b[..b.len() / 2]).unwrap();
            r[0].clone()
        }),
        ("bit flipped", |r| {
            let p = largest(r);
            let mut b = std::fs::read(&p).unwrap();
            // In the second checked block: found by the first read of it, not at open.
            assert!(b.len() > 4096 + 256, "{} bytes", b.len());
            b[4096 + 64] ^= 0x01;
            std::fs::write(&p, &b).unwrap();
            p
        }),
        ("emptied", |r| {
            std::fs::write(&r[0], b"").unwrap();
            r[0].clone()
        }),
        ("renamed to claim the first segment only", |r| {
            let dir = r[0].parent().unwrap().parent().unwrap();
            let mut segs: Vec<u64> = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| {
                    let n = e.unwrap().file_name().into_string().unwrap();
                    n.strip_suffix(".seg").and_then(|s| s.parse().ok())
                })
                .collect();
            segs.sort();
            let claimed = r[0].with_file_name(format!("{:020}-{:020}.run", segs[0], segs[1] - 1));
            // A run that covers more than that (replacing the first segment's own run, if
            // there is one).
            let p = r.iter().find(|p| **p != claimed).unwrap();
            std::fs::rename(p, &claimed).unwrap();
            claimed
        }),
        ("every run replaced by garbage", |r| {
            for p in r {
                std::fs::write(p, vec![0xA5u8; 4096]).unwrap();
            }
            r[0].clone()
        }),
        // Without the hash seed the runs were written under, their order means nothing: a
        // new seed is chosen and every run is ignored.
        ("the hash seed deleted", |r| {
            let seed = r[0].with_file_name("seed");
            std::fs::remove_file(&seed).unwrap();
            seed
        }),
        ("the hash seed damaged", |r| {
            let seed = r[0].with_file_name("seed");
            let mut b = std::fs::read(&seed).unwrap();
            b[3] ^= 0x10;
            std::fs::write(&seed, &b).unwrap();
            seed
        }),
    ];
    for (what, damage) in damages {
        let tmp = tempfile::tempdir().unwrap();
        let before = fill(tmp.path());
        let files = runs(tmp.path());
        assert!(files.len() >= 2, "{what}: {files:?}");
        let damaged_path = damage(&files);
        let damaged = std::fs::read(&damaged_path).ok();
        let e = Engine::open(tmp.path(), config()).unwrap();
        let r = e.open_report().clone();
        assert_eq!(snapshot(&e), before, "{what}");
        assert_eq!(e.epoch(), 4, "{what}");
        // Damage inside a block is found when the block is first read, not at open.
        let repaired = e.stats().unwrap().index.runs_repaired;
        if what == "bit flipped" {
            assert_eq!((r.segments_replayed, repaired), (0, 1), "{what}: {r:?}");
            // Unlinked (the checkpointer may since have written a sound run of that range,
            // under the same name).
            assert!(
                std::fs::read(&damaged_path).ok() != damaged,
                "{what}: the damaged run is still there"
            );
        } else {
            assert!(r.segments_replayed >= 1, "{what}: {r:?}");
            assert_eq!(repaired, 0, "{what}");
        }
        if what.starts_with("the hash seed") {
            assert_eq!(
                r.run_files, 0,
                "{what}: a run used under another seed: {r:?}"
            );
            assert_eq!(r.segments_replayed, sealed_segments(tmp.path()), "{what}");
        }
        // The replayed segments get runs again, so the next open replays nothing sealed.
        e.checkpoint_now().unwrap();
        e.close().unwrap();
        let e = Engine::open(tmp.path(), config()).unwrap();
        assert_eq!(e.open_report().segments_replayed, 0, "{what}");
        assert_eq!(snapshot(&e), before, "{what}");
        assert_eq!(e.epoch(), 4, "{what}");
    }
}

/// An operation that reads the index, checking what it read against the state before and the
/// number of live keys.
type FirstRead = fn(&Engine, &State, usize);

/// A flipped byte anywhere in any run file: opening does not read the whole file, so the damage
/// is found by the first read of its block, by a get, a scan, a count, a conditional write or
/// the checkpointer's merge. Whichever finds it, the answer comes from the log instead, never
/// from the damaged block, and the file is unlinked.
#[test]
fn damage_found_after_open_is_repaired_by_whichever_read_finds_it() {
    let tmp = tempfile::tempdir().unwrap();
    let before = fill(tmp.path());
    let live = before.iter().filter(|(_, v)| v.is_some()).count();
    // Every case starts from a copy of this directory.
    let copy_to = |dst: &Path| {
        for dir in [PathBuf::new(), PathBuf::from("index")] {
            std::fs::create_dir_all(dst.join(&dir)).unwrap();
            for f in std::fs::read_dir(tmp.path().join(&dir)).unwrap() {
                let f = f.unwrap();
                if f.file_type().unwrap().is_file() {
                    std::fs::copy(f.path(), dst.join(&dir).join(f.file_name())).unwrap();
                }
            }
        }
    };
    let run_names: Vec<PathBuf> = runs(tmp.path())
        .iter()
        .map(|p| PathBuf::from("index").join(p.file_name().unwrap()))
        .collect();
    let first_read: [(&str, FirstRead); 5] = [
        ("get", |e, before, _| assert_eq!(&snapshot(e), before)),
        ("scan", |e, before, live| {
            let scanned = e.scan(b"", usize::MAX).unwrap();
            assert_eq!(scanned.len(), live);
            for (k, v) in scanned {
                let want = before.iter().find(|(bk, _)| *bk == k).unwrap();
                assert_eq!(want.1.as_ref().map(|(_, ver)| *ver), Some(v));
            }
        }),
        ("count", |e, _, live| assert_eq!(e.len().unwrap(), live)),
        ("conditional write", |e, before, _| {
            for (k, v) in before {
                let expect = match v {
                    Some((_, ver)) => seglog::Expect::Version(*ver),
                    None => seglog::Expect::Absent,
                };
                e.put_if(k, b"new", expect).unwrap();
            }
        }),
        ("merge", |e, _, _| {
            for i in 0..3000u32 {
                e.put(format!("other{i}").as_bytes(), b"x").unwrap();
            }
            e.checkpoint_now().unwrap();
        }),
    ];
    // Per first read: cases where the damage was found after open.
    let mut found_after_open = [0usize; 5];
    for (n, name) in run_names.iter().enumerate() {
        let len = std::fs::metadata(tmp.path().join(name)).unwrap().len() as usize;
        // Positions spread over the file, the header and the checksums included.
        for step in 0..12 {
            let at = (len - 1) * step / 11;
            for (i, &(how, read)) in first_read.iter().enumerate() {
                let case = tempfile::tempdir().unwrap();
                copy_to(case.path());
                let path = case.path().join(name);
                let mut b = std::fs::read(&path).unwrap();
                b[at] ^= 0x10;
                std::fs::write(&path, &b).unwrap();
                let e = Engine::open(case.path(), config()).unwrap();
                let replayed_at_open = e.open_report().records_replayed;
                read(&e, &before, live);
                let what = format!("run {n} byte {at} of {}, first read by {how}", b.len());
                // What every key must read as now: `before`, or "new" at some version after
                // the conditional writes (which succeeded, so they saw the right versions).
                let expected = |e: &Engine| {
                    let now = snapshot(e);
                    if how == "conditional write" {
                        now.iter()
                            .all(|(_, v)| v.as_ref().is_some_and(|(v, _)| v == b"new"))
                    } else {
                        now == before
                    }
                };
                assert!(expected(&e), "{what}: wrong state");
                let repaired = e.stats().unwrap().index.runs_repaired;
                assert!(
                    replayed_at_open > 0 || repaired > 0,
                    "{what}: the damage went unnoticed"
                );
                found_after_open[i] += usize::from(repaired > 0);
                if repaired > 0 {
                    // Unlinked; the checkpointer may have written a sound run of the same range
                    // under the same name since.
                    assert!(
                        std::fs::read(&path).ok() != Some(b.clone()),
                        "{what}: the damaged run is still there"
                    );
                }
                e.close().unwrap();
                let e = Engine::open(case.path(), config()).unwrap();
                assert!(expected(&e), "{what}: wrong state after reopening");
                e.close().unwrap();
            }
        }
    }
    eprintln!("found after open, by first read: {found_after_open:?}");
    assert!(
        found_after_open.iter().all(|&n| n > 0),
        "{found_after_open:?}"
    );
}

#[test]
fn a_run_of_another_log_is_not_used() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let before = fill(a.path());
    // Same keys and record sizes, other values: same LSN ranges, other chain values.
    let e = Engine::open(b.path(), config()).unwrap();
    write_history_with(&e, 0..2000, "w");
    e.checkpoint_now().unwrap();
    e.close().unwrap();
    for p in runs(a.path()) {
        std::fs::remove_file(p).unwrap();
    }
    for p in runs(b.path()) {
        std::fs::copy(&p, a.path().join("index").join(p.file_name().unwrap())).unwrap();
    }
    let e = Engine::open(a.path(), config()).unwrap();
    assert_eq!(e.open_report().run_files, 0, "{:?}", e.open_report());
    assert_eq!(snapshot(&e), before);
}

#[test]
fn leftovers_of_an_interrupted_merge_are_ignored_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let e = Engine::open(tmp.path(), config()).unwrap();
    write_history(&e, 0..1000);
    e.checkpoint_now().unwrap();
    // Runs that later merges replace: put back afterwards, they are what a crash between a
    // merged run's rename and the unlinking of its inputs leaves behind.
    let early: Vec<(PathBuf, Vec<u8>)> = runs(tmp.path())
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect();
    // History until merges have replaced one of them (four run files merge at a time; with
    // 300 keys, runs stop growing, so when is not simple to say). A merge keeps the files it
    // replaced until its own run is durable: `sync_index` makes it so and removes them.
    let mut end = 1000;
    while early.iter().all(|(p, _)| p.exists()) {
        assert!(end < 20_000, "merges replaced none of the early runs");
        write_history(&e, end..end + 500);
        e.checkpoint_now().unwrap();
        e.sync_index().unwrap();
        end += 500;
    }
    let before = snapshot(&e);
    e.close().unwrap();
    let merged = runs(tmp.path());
    let mut restored = Vec::new();
    for (p, b) in &early {
        if !p.exists() {
            std::fs::write(p, b).unwrap();
            restored.push(p.clone());
        }
    }
    // And a run file being written when the process died.
    let tmp_file = tmp
        .path()
        .join("index/00000000000000000001-00000000000000000002.run.tmp");
    std::fs::write(&tmp_file, b"half").unwrap();

    let e = Engine::open(tmp.path(), config()).unwrap();
    let r = e.open_report().clone();
    assert_eq!(
        (r.segments_replayed, r.run_files),
        (0, merged.len()),
        "{r:?}"
    );
    assert_eq!(snapshot(&e), before);
    // The checkpointer removes what no layer uses when it starts; closing waits for it. (It
    // may also merge what was there.)
    e.close().unwrap();
    for p in &restored {
        assert!(!p.exists(), "{} is still there", p.display());
    }
    assert!(!tmp_file.exists());
    let e = Engine::open(tmp.path(), config()).unwrap();
    assert_eq!(snapshot(&e), before);
}

#[test]
fn a_failed_run_write_loses_nothing_and_is_retried() {
    let sim = SimIo::new(7);
    let io: Arc<dyn Io> = Arc::new(sim.clone());
    let mut cfg = config();
    cfg.wal.fsync = FsyncPolicy::Always;
    let e = Engine::open_with_io(io.clone(), "/db", cfg.clone()).unwrap();
    // The next write of a run file fails (the log's own writes do not).
    sim.set_faults(Faults {
        fail_write_in: Some(1),
        only_files_ending: Some(".run.tmp".into()),
        ..Faults::default()
    });
    write_history(&e, 0..2000);
    // The background checkpointer may not have written a run yet. A checkpoint now waits for
    // it (they share a lock) and, if it did not hit the fault, hits it itself.
    let first = e.checkpoint_now();
    assert_eq!(
        sim.faults().fail_write_in,
        None,
        "no run write was attempted: {first:?}"
    );
    // The next attempt writes them all.
    e.checkpoint_now().unwrap();
    let shape = e.stats().unwrap().index;
    assert_eq!(
        shape.layers,
        shape.run_files + 1,
        "every sealed segment is in a run file again: the failed write was retried"
    );
    let before = snapshot(&e);
    sim.power_loss();
    let io: Arc<dyn Io> = Arc::new(sim.restart());
    drop(e);
    // The runs written after each roll were not fdatasynced: the power loss may have dropped
    // or torn them, and the open replays what they covered instead.
    let e = Engine::open_with_io(io.clone(), "/db", cfg.clone()).unwrap();
    assert_eq!(snapshot(&e), before);
    assert_eq!(e.epoch(), 4);
    // A clean close makes every run file durable, those found at open included: after another
    // power loss, nothing is replayed.
    e.close().unwrap();
    sim.power_loss();
    let io: Arc<dyn Io> = Arc::new(sim.restart());
    let e = Engine::open_with_io(io, "/db", cfg).unwrap();
    assert_eq!(e.open_report().segments_replayed, 0);
    assert_eq!(e.open_report().records_replayed, 0);
    assert_eq!(snapshot(&e), before);
    assert_eq!(e.epoch(), 4);
}

/// Runs written after a roll are not fdatasynced; a power loss that drops or tears them (each
/// seed keeps a different prefix of the unsynced writes) costs a replay, never a wrong index.
/// After a clean close, nothing is replayed.
#[test]
fn runs_lost_to_a_power_loss_are_replayed() {
    let mut replayed_any = false;
    for seed in 0..8 {
        let sim = SimIo::new(seed);
        let io: Arc<dyn Io> = Arc::new(sim.clone());
        let cfg = config();
        let e = Engine::open_with_io(io.clone(), "/db", cfg.clone()).unwrap();
        write_history(&e, 0..2000);
        e.checkpoint_now().unwrap();
        e.wal().sync().unwrap();
        let before = snapshot(&e);
        sim.power_loss();
        let io: Arc<dyn Io> = Arc::new(sim.restart());
        drop(e);
        let e = Engine::open_with_io(io, "/db", cfg).unwrap();
        assert_eq!(snapshot(&e), before, "seed {seed}");
        assert_eq!(e.epoch(), 4, "seed {seed}");
        replayed_any |= e.open_report().segments_replayed > 0;
        drop(e);

        // Closed cleanly, every run is durable first: a power loss then costs no replay.
        let sim = SimIo::new(seed);
        let io: Arc<dyn Io> = Arc::new(sim.clone());
        let e = Engine::open_with_io(io.clone(), "/db", config()).unwrap();
        write_history(&e, 0..2000);
        let before = snapshot(&e);
        e.close().unwrap();
        sim.power_loss();
        let io: Arc<dyn Io> = Arc::new(sim.restart());
        let e = Engine::open_with_io(io, "/db", config()).unwrap();
        assert_eq!(e.open_report().segments_replayed, 0, "seed {seed}");
        assert_eq!(e.open_report().records_replayed, 0, "seed {seed}");
        assert_eq!(snapshot(&e), before, "seed {seed}");
    }
    assert!(
        replayed_any,
        "no seed lost a run: the test covers less than it says"
    );
}

/// A merge's run is not synced when written: the run files it replaced stay until it is. So a
/// power loss right after a merge whose inputs were durable replays at most what was written
/// since they were (the merged run may be lost, its inputs are not).
#[test]
fn a_merge_keeps_the_runs_it_replaced_until_it_is_durable() {
    let mut lost_a_merge = false;
    for seed in 0..6 {
        let sim = SimIo::new(seed);
        let io: Arc<dyn Io> = Arc::new(sim.clone());
        let e = Engine::open_with_io(io.clone(), "/db", config()).unwrap();
        write_history(&e, 0..2000);
        e.checkpoint_now().unwrap();
        // Every run durable, then a little history (fewer new runs than a merge takes, so a
        // merge now takes durable runs), until a merge happens.
        let index = Path::new("/db/index");
        let mut end = 2000;
        let (durable_to, durable_files) = loop {
            assert!(end < 30_000, "seed {seed}: no merge");
            e.sync_index().unwrap();
            let shape = e.stats().unwrap().index;
            assert_eq!((shape.unsynced_run_files, shape.retired_run_files), (0, 0));
            let durable_runs = shape.run_files;
            let durable_files = io.list_dir(index).unwrap();
            // The runs cover the sealed segments (the active one is in memory).
            let sealed = e.wal().sealed_segments().unwrap();
            let durable_to = sealed.last().map_or(0, |s| s.last_lsn);
            write_history(&e, end..end + 300);
            end += 300;
            e.checkpoint_now().unwrap();
            // A merge took durable runs when fewer of them are left.
            let shape = e.stats().unwrap().index;
            if shape.run_files - shape.unsynced_run_files < durable_runs {
                assert!(shape.retired_run_files > 0, "seed {seed}: {shape:?}");
                break (durable_to, durable_files);
            }
        };
        let last = e.wal().sync().unwrap();
        let before = snapshot(&e);
        // The merged runs: new since the runs were durable, and starting where they did (a
        // run of the segments sealed since starts after `durable_to`).
        let files_before = io.list_dir(index).unwrap();
        let merged: Vec<(PathBuf, Option<Vec<u8>>)> = files_before
            .iter()
            .filter(|n| n.ends_with(".run") && !durable_files.contains(n))
            .filter(|n| n[..20].parse::<u64>().unwrap() <= durable_to)
            .map(|n| (index.join(n), sim.file_bytes(&index.join(n))))
            .collect();
        assert!(!merged.is_empty(), "seed {seed}: {files_before:?}");
        sim.power_loss();
        let io: Arc<dyn Io> = Arc::new(sim.restart());
        lost_a_merge |= merged.iter().any(|(p, b)| sim.file_bytes(p) != *b);
        drop(e);
        let e = Engine::open_with_io(io.clone(), "/db", config()).unwrap();
        assert_eq!(snapshot(&e), before, "seed {seed}");
        let r = e.open_report().clone();
        assert!(
            r.records_replayed <= last - durable_to,
            "seed {seed}: replayed {} records, only {} were written after what durable runs covered: {r:?}",
            r.records_replayed,
            last - durable_to
        );
        // Once the merged runs are durable, what they replaced is removed, and so is what the
        // open found and does not use (a torn merged run): the index directory holds the runs
        // in use and the seed, nothing else. The open's own background work (writing the runs
        // of what it replayed, cleaning the directory) is done first (`checkpoint_now`), so
        // that none of it happens between the sync and the look at the directory. (How many
        // runs are in use depends on what the power loss kept: each segment replayed gets
        // its own until they merge.)
        e.checkpoint_now().unwrap();
        e.sync_index().unwrap();
        let shape = e.stats().unwrap().index;
        assert_eq!((shape.unsynced_run_files, shape.retired_run_files), (0, 0));
        let files_after = io.list_dir(index).unwrap();
        assert_eq!(
            files_after.len(),
            shape.run_files + 1,
            "seed {seed}: files beside the runs in use and the seed: {files_after:?}"
        );
    }
    assert!(
        lost_a_merge,
        "no seed lost a merged run: the test covers less than it says"
    );
}

#[test]
fn a_run_written_at_close_is_not_used_once_recovery_cut_its_last_record() {
    let a = tempfile::tempdir().unwrap();
    fill(a.path());
    // Tear the last record of the active segment and remove the clean-close marker, as a
    // crash after close would leave it; recovery then cuts that record.
    let mut segs: Vec<PathBuf> = std::fs::read_dir(a.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    let last = segs.last().unwrap();
    let mut b = std::fs::read(last).unwrap();
    let end = b.iter().rposition(|&x| x != 0).unwrap();
    for x in &mut b[end - 8..=end] {
        *x = 0;
    }
    // The close's fdatasync recorded the end as the segment's durable point, which recovery
    // would start from (and the torn record would be damage the reader reports): a point from
    // before that record, as a crash before the close leaves, is none at all here.
    b[HDR_DURABLE..HDR_DURABLE + DURABLE_LEN].fill(0);
    std::fs::write(last, &b).unwrap();
    let _ = std::fs::remove_file(a.path().join("CLOSED"));
    // The oracle: the same directory without any run, replayed in full.
    let oracle = tempfile::tempdir().unwrap();
    copy_dir(a.path(), oracle.path());
    std::fs::remove_dir_all(oracle.path().join("index")).unwrap();

    let e = Engine::open(a.path(), config()).unwrap();
    let r = e.open_report().clone();
    assert!(
        r.records_replayed > 0,
        "the run ending at the cut record was used: {r:?}"
    );
    let o = Engine::open(oracle.path(), config()).unwrap();
    assert_eq!(snapshot(&e), snapshot(&o));
    assert_eq!(e.epoch(), o.epoch());
}

/// `checkpoint_tail` writes the active segment's changes so far as a run: an open after a
/// crash reads it and replays only the records after it, from that run's last record on (a
/// record before it, damaged, is not even read), and its state is the same. Without that run,
/// the open replays the whole active segment (and meets the damage).
#[test]
fn a_tail_checkpoint_is_used_after_a_crash_and_the_replay_starts_after_it() {
    let sim = SimIo::new(7);
    let io: Arc<dyn Io> = Arc::new(sim.clone());
    let cfg = Config {
        wal: seglog::wal::WalConfig {
            segment_size_bytes: 1 << 20,
            ..config().wal
        },
        ..config()
    };
    let e = Engine::open_with_io(io.clone(), "/db", cfg.clone()).unwrap();
    write_history(&e, 0..3000);
    assert!(
        e.checkpoint_tail().unwrap(),
        "a run of the active segment written"
    );
    write_history_with(&e, 3000..3100, "w");
    e.wal().sync().unwrap();
    let before = snapshot(&e);
    let active = e.wal().active_segment().unwrap();
    drop(e);
    sim.process_crash();
    let io: Arc<dyn Io> = Arc::new(sim.restart());

    let e = Engine::open_with_io(io.clone(), "/db", cfg.clone()).unwrap();
    assert_eq!(snapshot(&e), before);
    assert_eq!(
        e.open_report().records_replayed,
        100,
        "only what followed the tail run"
    );
    drop(e);
    sim.process_crash();
    let io: Arc<dyn Io> = Arc::new(sim.restart());

    // A record the tail run covers, damaged: not read by the open, which starts after it.
    let seg = Path::new("/db").join(seglog::wal::format::segment_file_name(active));
    let mut b = sim.file_bytes(&seg).unwrap();
    let second = seglog::wal::format::HEADER_LEN + 200;
    b[second] ^= 0x20;
    sim.put_file_bytes(&seg, b);
    let e = Engine::open_with_io(io.clone(), "/db", cfg.clone()).unwrap();
    assert_eq!(e.open_report().records_replayed, 100);
    drop(e);
    sim.process_crash();
    let io: Arc<dyn Io> = Arc::new(sim.restart());
    // Without the index, the open replays the whole active segment and finds the damage.
    for name in io.list_dir(Path::new("/db/index")).unwrap() {
        io.remove_file(&Path::new("/db/index").join(name)).unwrap();
    }
    assert!(Engine::open_with_io(io, "/db", cfg).is_err());
}
