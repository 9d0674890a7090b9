//! Index checkpoints: reopening uses them, and a missing, truncated or damaged one falls back to
//! replaying its segment, never to a wrong index.

use seglog::wal::{FsyncPolicy, WalConfig};
use seglog::{Config, Engine};
use std::path::{Path, PathBuf};

/// Every key's (value, version), or None when absent.
type State = Vec<(Vec<u8>, Option<(Vec<u8>, u64)>)>;

fn config() -> Config {
    Config {
        wal: WalConfig {
            fsync: FsyncPolicy::Never,
            segment_size_bytes: 8 << 10,
            ..WalConfig::default()
        },
        cache: seglog::CacheConfig { value_cache_mb: 0 },
    }
}

fn fill(dir: &Path) -> State {
    let e = Engine::open(dir, config()).unwrap();
    for i in 0..2000u32 {
        let k = format!("k{}", i % 300);
        if i % 7 == 0 {
            e.delete(k.as_bytes()).unwrap();
        } else {
            e.put(k.as_bytes(), format!("v{i}").as_bytes()).unwrap();
        }
        if i == 1000 {
            e.fence(4).unwrap();
        }
    }
    e.checkpoint_now().unwrap();
    let state = snapshot(&e);
    e.close().unwrap();
    state
}

fn snapshot(e: &Engine) -> State {
    (0..300)
        .map(|i| format!("k{i}").into_bytes())
        .map(|k| (k.clone(), e.get(&k).unwrap()))
        .collect()
}

fn checkpoints(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("index"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .collect();
    v.sort();
    v
}

#[test]
fn reopen_reads_checkpoints_instead_of_replaying_sealed_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let before = fill(tmp.path());
    let n = checkpoints(tmp.path()).len();
    assert!(n >= 8, "{n} checkpoints");
    let e = Engine::open(tmp.path(), config()).unwrap();
    let r = e.open_report().clone();
    assert_eq!((r.segments_from_checkpoints, r.segments_replayed), (n, 0));
    assert!(
        r.records_replayed < 2000 / 10,
        "only the active segment is replayed: {r:?}"
    );
    assert_eq!(snapshot(&e), before);
    assert_eq!(e.epoch(), 4);
}

#[test]
fn missing_truncated_or_damaged_checkpoints_fall_back_to_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let before = fill(tmp.path());
    let cps = checkpoints(tmp.path());
    std::fs::remove_file(&cps[1]).unwrap();
    let b = std::fs::read(&cps[3]).unwrap();
    std::fs::write(&cps[3], &b[..b.len() / 2]).unwrap();
    let mut b = std::fs::read(&cps[5]).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    std::fs::write(&cps[5], &b).unwrap();
    // A checkpoint of another segment under this one's name must not be used either.
    std::fs::copy(&cps[8], &cps[7]).unwrap();

    let e = Engine::open(tmp.path(), config()).unwrap();
    let r = e.open_report().clone();
    assert_eq!(r.segments_replayed, 4, "{r:?}");
    assert_eq!(r.segments_from_checkpoints, cps.len() - 4);
    assert_eq!(snapshot(&e), before);
    assert_eq!(e.epoch(), 4);
    // Rewritten (the broken ones replaced), so the next open uses them all.
    std::fs::remove_file(&cps[3]).unwrap();
    std::fs::remove_file(&cps[5]).unwrap();
    std::fs::remove_file(&cps[7]).unwrap();
    e.checkpoint_now().unwrap();
    e.close().unwrap();
    let e = Engine::open(tmp.path(), config()).unwrap();
    assert_eq!(e.open_report().segments_replayed, 0);
    assert_eq!(snapshot(&e), before);
}
