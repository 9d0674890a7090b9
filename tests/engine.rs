//! The engine against a `BTreeMap` model: puts, deletes, conditional writes, batches, epochs,
//! reads, clean reopens and power loss (through the simulated file system). Under `always`
//! every acknowledged write survives power loss, so after every reopen the engine must equal
//! the model exactly.

use proptest::prelude::*;
use seglog::wal::sim::SimIo;
use seglog::wal::{FsyncPolicy, Io, WalConfig};
use seglog::{BatchOp, Config, Engine, Error, Expect};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u16),
    Delete(u8),
    PutIfAbsent(u8, u16),
    PutIfVersion(u8, u16, bool),
    DeleteIfVersion(u8, bool),
    Batch(Vec<(u8, Option<u16>)>),
    Fence,
    StaleWrite(u8),
    Get(u8),
    Reopen,
    PowerLoss,
    Checkpoint,
    CheckpointTail,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..24;
    prop_oneof![
        8 => (key.clone(), 0u16..400).prop_map(|(k, l)| Op::Put(k, l)),
        3 => key.clone().prop_map(Op::Delete),
        2 => (key.clone(), 0u16..200).prop_map(|(k, l)| Op::PutIfAbsent(k, l)),
        3 => (key.clone(), 0u16..200, any::<bool>()).prop_map(|(k, l, right)| Op::PutIfVersion(k, l, right)),
        2 => (key.clone(), any::<bool>()).prop_map(|(k, right)| Op::DeleteIfVersion(k, right)),
        2 => proptest::collection::vec((key.clone(), proptest::option::of(0u16..150)), 1..5).prop_map(Op::Batch),
        1 => Just(Op::Fence),
        1 => key.clone().prop_map(Op::StaleWrite),
        4 => key.clone().prop_map(Op::Get),
        1 => Just(Op::Reopen),
        1 => Just(Op::PowerLoss),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::CheckpointTail),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

fn val(n: u64, len: u16) -> Vec<u8> {
    let mut v = format!("{n}:").into_bytes();
    v.resize(len as usize + v.len(), b'v');
    v
}

/// Model: key -> (value, version), and the epoch.
#[derive(Default, Clone)]
struct Model {
    map: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
    epoch: u64,
}

fn assert_equal(e: &Engine, m: &Model, seed: u64) {
    assert_eq!(e.len().unwrap(), m.map.len(), "seed {seed}: number of keys");
    assert_eq!(e.epoch(), m.epoch, "seed {seed}: epoch");
    let scanned: Vec<(Vec<u8>, u64)> = e.scan(b"", usize::MAX).unwrap();
    let expected: Vec<(Vec<u8>, u64)> = m.map.iter().map(|(k, (_, v))| (k.clone(), *v)).collect();
    assert_eq!(scanned, expected, "seed {seed}: keys and versions");
    for (k, (v, ver)) in &m.map {
        assert_eq!(
            e.get(k).unwrap(),
            Some((v.clone(), *ver)),
            "seed {seed}: value of {:?}",
            String::from_utf8_lossy(k)
        );
    }
}

fn run(seed: u64, ops: Vec<Op>) {
    let sim = SimIo::new(seed);
    let config = Config {
        wal: WalConfig {
            fsync: FsyncPolicy::Always,
            segment_size_bytes: 4096,
            ..WalConfig::default()
        },
        // Half the seeds without a value cache, so every get reads the log (mapped or pread).
        cache: seglog::CacheConfig {
            value_cache_mb: seed % 2,
        },
    };
    // Each open is the next process (after a power loss, the last one's calls fail).
    let open = || {
        let io: Arc<dyn Io> = Arc::new(sim.restart());
        Engine::open_with_io(io, "/db", config.clone())
            .unwrap_or_else(|e| panic!("seed {seed}: open: {e}"))
    };
    let mut e = open();
    let mut m = Model::default();
    let mut n = 0u64;
    for op in ops {
        n += 1;
        match op {
            Op::Put(k, l) => {
                let v = val(n, l);
                let ver = e.put(&key(k), &v).unwrap();
                m.map.insert(key(k), (v, ver));
            }
            Op::Delete(k) => {
                let r = e.delete(&key(k)).unwrap();
                assert_eq!(r.is_some(), m.map.remove(&key(k)).is_some(), "seed {seed}");
            }
            Op::PutIfAbsent(k, l) => {
                let v = val(n, l);
                match (e.put_if(&key(k), &v, Expect::Absent), m.map.get(&key(k))) {
                    (Ok(ver), None) => {
                        m.map.insert(key(k), (v, ver));
                    }
                    (Err(Error::Conflict { current, .. }), Some((_, cur))) => {
                        assert_eq!(current, Some(*cur), "seed {seed}")
                    }
                    (r, cur) => panic!("seed {seed}: put_if absent -> {r:?} with current {cur:?}"),
                }
            }
            Op::PutIfVersion(k, l, right) => {
                let v = val(n, l);
                let cur = m.map.get(&key(k)).map(|x| x.1);
                let expect = if right {
                    cur.unwrap_or(u64::MAX)
                } else {
                    cur.map_or(7, |c| c + 1_000_000)
                };
                match e.put_if(&key(k), &v, Expect::Version(expect)) {
                    Ok(ver) => {
                        assert_eq!(
                            cur,
                            Some(expect),
                            "seed {seed}: a wrong version was accepted"
                        );
                        m.map.insert(key(k), (v, ver));
                    }
                    Err(Error::Conflict { current, .. }) => assert_eq!(current, cur, "seed {seed}"),
                    Err(other) => panic!("seed {seed}: {other}"),
                }
            }
            Op::DeleteIfVersion(k, right) => {
                let cur = m.map.get(&key(k)).map(|x| x.1);
                let expect = if right {
                    cur.unwrap_or(u64::MAX)
                } else {
                    cur.map_or(3, |c| c + 1)
                };
                match e.delete_if(&key(k), Expect::Version(expect)) {
                    Ok(_) => {
                        assert_eq!(cur, Some(expect), "seed {seed}");
                        m.map.remove(&key(k));
                    }
                    Err(Error::Conflict { current, .. }) => assert_eq!(current, cur, "seed {seed}"),
                    Err(other) => panic!("seed {seed}: {other}"),
                }
            }
            Op::Batch(items) => {
                let vals: Vec<Option<Vec<u8>>> =
                    items.iter().map(|(_, l)| l.map(|l| val(n, l))).collect();
                let keys: Vec<Vec<u8>> = items.iter().map(|(k, _)| key(*k)).collect();
                let ops: Vec<BatchOp<'_>> = keys
                    .iter()
                    .zip(&vals)
                    .map(|(k, v)| match v {
                        Some(v) => BatchOp::Put {
                            key: k,
                            value: v,
                            expect: None,
                        },
                        None => BatchOp::Delete {
                            key: k,
                            expect: None,
                        },
                    })
                    .collect();
                let (first, last) = e.write_batch(&ops, None).unwrap();
                assert_eq!(last - first + 1, ops.len() as u64, "seed {seed}");
                for (i, (k, v)) in keys.iter().zip(&vals).enumerate() {
                    match v {
                        Some(v) => {
                            m.map.insert(k.clone(), (v.clone(), first + i as u64));
                        }
                        None => {
                            m.map.remove(k);
                        }
                    }
                }
            }
            Op::Fence => {
                let next = m.epoch + 1;
                e.fence(next).unwrap();
                m.epoch = next;
                assert!(
                    matches!(e.fence(next), Err(Error::StaleEpoch { .. })),
                    "seed {seed}: fencing to the same epoch twice"
                );
            }
            Op::StaleWrite(k) => {
                let r = e.write_batch(
                    &[BatchOp::Put {
                        key: &key(k),
                        value: b"stale",
                        expect: None,
                    }],
                    Some(m.epoch.wrapping_sub(1)),
                );
                if m.epoch == 0 {
                    // Epoch u64::MAX is not stale: accept, like the model.
                    let (_, ver) = r.unwrap();
                    m.map.insert(key(k), (b"stale".to_vec(), ver));
                } else {
                    assert!(
                        matches!(r, Err(Error::StaleEpoch { writer, log }) if writer + 1 == log),
                        "seed {seed}: stale write accepted"
                    );
                }
            }
            Op::Get(k) => assert_eq!(
                e.get(&key(k)).unwrap(),
                m.map.get(&key(k)).cloned(),
                "seed {seed}"
            ),
            Op::Reopen => {
                e.close().unwrap();
                e = open();
                assert_equal(&e, &m, seed);
            }
            Op::Checkpoint => {
                e.checkpoint_now().unwrap();
            }
            Op::CheckpointTail => {
                e.checkpoint_tail().unwrap();
            }
            Op::PowerLoss => {
                sim.power_loss();
                drop(e);
                e = open();
                assert_equal(&e, &m, seed);
            }
        }
    }
    assert_equal(&e, &m, seed);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn engine_equals_a_btreemap_across_reopens_and_power_loss(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..80)) {
        run(seed, ops);
    }
}

#[test]
fn readers_see_consistent_values_while_writers_append_and_segments_roll() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        wal: WalConfig {
            fsync: FsyncPolicy::Batch,
            fsync_interval_ms: 1,
            segment_size_bytes: 16 << 10,
            ..WalConfig::default()
        },
        ..Config::default()
    };
    let e = Arc::new(Engine::open(tmp.path(), config.clone()).unwrap());
    std::thread::scope(|s| {
        for w in 0..4u32 {
            let e = e.clone();
            s.spawn(move || {
                for i in 0..500u32 {
                    let k = format!("w{w}-k{}", i % 50);
                    e.put(k.as_bytes(), format!("{w}:{i}").as_bytes()).unwrap();
                }
            });
        }
        {
            // Scans while memtables freeze and runs are written and merged underneath: always
            // ascending, each key once, never more keys than exist.
            let e = e.clone();
            s.spawn(move || {
                for _ in 0..200 {
                    let keys = e.scan(b"", usize::MAX).unwrap();
                    assert!(keys.len() <= 200, "{} keys", keys.len());
                    assert!(
                        keys.windows(2).all(|w| w[0].0 < w[1].0),
                        "scan out of order"
                    );
                }
            });
        }
        for _ in 0..2 {
            let e = e.clone();
            s.spawn(move || {
                for i in 0..2000u32 {
                    let k = format!("w{}-k{}", i % 4, i % 50);
                    if let Some((v, ver)) = e.get(k.as_bytes()).unwrap() {
                        let text = String::from_utf8(v).unwrap();
                        assert!(text.starts_with(&format!("{}:", i % 4)), "{k} -> {text}");
                        assert!(ver >= 1);
                    }
                }
            });
        }
    });
    assert_eq!(e.len().unwrap(), 200);
    for w in 0..4u32 {
        for k in 0..50u32 {
            let (v, _) = e.get(format!("w{w}-k{k}").as_bytes()).unwrap().unwrap();
            assert_eq!(v, format!("{w}:{}", 450 + k).into_bytes());
        }
    }
    let e = Arc::try_unwrap(e).ok().unwrap();
    e.close().unwrap();
    let e = Engine::open(tmp.path(), config).unwrap();
    assert_eq!(e.len().unwrap(), 200);
    assert!(e.wal().stats().last_lsn >= 2000);
}

/// Fsync `never`, segments of `segment_size_bytes`, no value cache (every get reads the log).
fn never_uncached(segment_size_bytes: u64) -> Config {
    Config {
        wal: WalConfig {
            fsync: FsyncPolicy::Never,
            segment_size_bytes,
            ..WalConfig::default()
        },
        cache: seglog::CacheConfig { value_cache_mb: 0 },
    }
}

#[test]
fn values_in_sealed_segments_read_through_maps_match_what_was_written() {
    let tmp = tempfile::tempdir().unwrap();
    let config = never_uncached(8 << 10);
    let e = Engine::open(tmp.path(), config.clone()).unwrap();
    for i in 0..600u32 {
        e.put(format!("k{i}").as_bytes(), &val(i as u64, (i % 300) as u16))
            .unwrap();
    }
    assert!(
        e.wal().stats().rolls > 10,
        "the records span many sealed segments"
    );
    let check = |e: &Engine| {
        for i in 0..600u32 {
            let (v, _) = e.get(format!("k{i}").as_bytes()).unwrap().unwrap();
            assert_eq!(v, val(i as u64, (i % 300) as u16), "k{i}");
        }
    };
    check(&e);
    e.close().unwrap();
    let e = Engine::open(tmp.path(), config).unwrap();
    check(&e);
    assert_eq!(e.stats().unwrap().value_cache_bytes, 0);
}

#[test]
fn memtables_sized_after_open_and_reused_at_rolls_keep_every_key() {
    // Tens of thousands of keys in 1 MiB segments: the first memtable after each open is
    // sized for its segment after its first 4096 keys, later ones come from the spare maps.
    let tmp = tempfile::tempdir().unwrap();
    let config = never_uncached(1 << 20);
    let mut model = BTreeMap::new();
    let write =
        |e: &Engine, range: std::ops::Range<u64>, model: &mut BTreeMap<Vec<u8>, Vec<u8>>| {
            for i in range {
                // Every fifth write changes a key written before.
                let k = if i % 5 == 4 { i / 2 } else { i };
                let key = format!("key-{k:08}").into_bytes();
                let value = val(i, 24);
                e.put(&key, &value).unwrap();
                model.insert(key, value);
            }
        };
    let check = |e: &Engine, model: &BTreeMap<Vec<u8>, Vec<u8>>| {
        for (k, v) in model {
            let got = e.get(k).unwrap().map(|(v, _)| v);
            assert_eq!(got.as_ref(), Some(v), "{}", String::from_utf8_lossy(k));
        }
    };
    let e = Engine::open(tmp.path(), config.clone()).unwrap();
    write(&e, 0..60_000, &mut model);
    assert!(e.wal().stats().rolls >= 3, "several rolls");
    check(&e, &model);
    e.close().unwrap();
    let e = Engine::open(tmp.path(), config.clone()).unwrap();
    check(&e, &model);
    write(&e, 60_000..80_000, &mut model);
    check(&e, &model);
    drop(e);
    let e = Engine::open(tmp.path(), config).unwrap();
    check(&e, &model);
}

/// A read sees every write that returned before it started, while writes that carry no
/// condition are applied to the index behind the writer's back (by the applier thread, or by
/// the read itself).
#[test]
fn a_read_sees_every_put_that_returned_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let e = Engine::open(tmp.path(), never_uncached(64 << 10)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(Vec<u8>, u64, bool)>();
    std::thread::scope(|s| {
        let e = &e;
        s.spawn(move || {
            for i in 0..20_000u64 {
                // `k…` keys are only ever put; `d…` keys are put and then deleted.
                let k = format!("k{}", i % 300).into_bytes();
                let lsn = e.put(&k, &i.to_le_bytes()).unwrap();
                tx.send((k, lsn, true)).unwrap();
                if i % 7 == 3 {
                    let d = format!("d{}", i % 50).into_bytes();
                    e.put(&d, b"doomed").unwrap();
                    let (_, lsn) = e
                        .write_batch(
                            &[BatchOp::Delete {
                                key: &d,
                                expect: None,
                            }],
                            None,
                        )
                        .unwrap();
                    tx.send((d, lsn, false)).unwrap();
                }
            }
        });
        s.spawn(move || {
            for (n, (k, lsn, put)) in rx.into_iter().enumerate() {
                // The writer runs ahead, so the version read may be newer; never older.
                let read = match n % 3 {
                    0 => e.get(&k).unwrap().map(|(_, v)| v),
                    1 => e.version(&k).unwrap(),
                    _ => e
                        .scan(&k, 1)
                        .unwrap()
                        .into_iter()
                        .find(|(key, _)| *key == k)
                        .map(|(_, v)| v),
                };
                match read {
                    Some(v) => assert!(v >= lsn, "{k:?}: read version {v}, but {lsn} returned"),
                    None => assert!(!put, "{k:?}: absent after its put at {lsn} returned"),
                }
            }
        });
    });
}

/// A conditional write is checked against every write before it in the log: replaying the
/// log, the key's previous write is exactly the version each successful conditional put
/// expected, even with unconditional writers changing the same keys concurrently.
#[test]
fn conditional_writes_hold_against_concurrent_unconditional_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let e = Engine::open(tmp.path(), never_uncached(64 << 10)).unwrap();
    let keys: Vec<Vec<u8>> = (0..4).map(|k| format!("key{k}").into_bytes()).collect();
    let won = std::sync::Mutex::new(Vec::<(Vec<u8>, Option<u64>, u64)>::new());
    std::thread::scope(|s| {
        for w in 0..2u64 {
            let (e, keys) = (&e, &keys);
            s.spawn(move || {
                for i in 0..4000u64 {
                    let k = &keys[((i + w) % 4) as usize];
                    if i % 10 == 9 {
                        e.delete(k).unwrap();
                    } else {
                        e.put(k, b"blind").unwrap();
                    }
                }
            });
        }
        for w in 0..2u64 {
            let (e, keys, won) = (&e, &keys, &won);
            s.spawn(move || {
                for i in 0..4000u64 {
                    let k = &keys[((i * 3 + w) % 4) as usize];
                    let seen = e.version(k).unwrap();
                    let expect = seen.map_or(Expect::Absent, Expect::Version);
                    match e.put_if(k, b"checked", expect) {
                        Ok(lsn) => won.lock().unwrap().push((k.clone(), seen, lsn)),
                        Err(Error::Conflict { .. }) => {}
                        Err(other) => panic!("{other}"),
                    }
                }
            });
        }
    });
    let won = won.into_inner().unwrap();
    assert!(
        won.len() > 100,
        "only {} conditional puts succeeded",
        won.len()
    );
    // The log's history: for each write, the LSN of the key's previous write (None when the
    // key was absent: never written, or last deleted).
    let mut current: std::collections::HashMap<Vec<u8>, Option<u64>> = Default::default();
    let mut before: std::collections::HashMap<u64, Option<u64>> = Default::default();
    // A reader reads what the log has written out: the tail still buffered first.
    e.wal().flush().unwrap();
    for r in e.wal().reader(1) {
        let r = r.unwrap();
        match seglog::record::Op::decode(&r).unwrap() {
            seglog::record::Op::Put { key, .. } => {
                let prev = current.insert(key.to_vec(), Some(r.lsn)).flatten();
                before.insert(r.lsn, prev);
            }
            seglog::record::Op::Delete { key } => {
                let prev = current.insert(key.to_vec(), None).flatten();
                before.insert(r.lsn, prev);
            }
            seglog::record::Op::Epoch(_) => {}
        }
    }
    assert_eq!(
        before.len() as u64,
        e.wal().last_lsn(),
        "the replay read the whole log"
    );
    for (k, expected, lsn) in won {
        assert_eq!(
            before[&lsn], expected,
            "{k:?}: put_if at {lsn} expected {expected:?}, but the log says the key was at {:?}",
            before[&lsn]
        );
    }
}
