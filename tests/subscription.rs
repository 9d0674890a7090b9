//! Subscriptions: history then live, only durable records, every LSN in order, and a slow
//! subscriber that blocks nobody.

use seglog::wal::{FsyncPolicy, WalConfig};
use seglog::{ChangeOp, Config, Engine};
use std::sync::Arc;
use std::time::Duration;

/// A bound on waits that should end at once; reaching it fails the test, it never paces it.
const PATIENCE: Duration = Duration::from_secs(30);

fn config(fsync: FsyncPolicy, interval_ms: u64) -> Config {
    Config {
        wal: WalConfig {
            fsync,
            fsync_interval_ms: interval_ms,
            segment_size_bytes: 16 << 10,
            ..WalConfig::default()
        },
        ..Config::default()
    }
}

#[test]
fn history_then_live_changes_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let e = Arc::new(Engine::open(tmp.path(), config(FsyncPolicy::Always, 10)).unwrap());
    for i in 0..100u32 {
        e.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    e.delete(b"k3").unwrap();
    e.fence(7).unwrap();
    let writer = {
        let e = e.clone();
        std::thread::spawn(move || {
            for i in 100..150u32 {
                e.put(format!("k{i}").as_bytes(), b"live").unwrap();
            }
        })
    };
    let mut sub = e.subscribe(1);
    let mut seen = Vec::new();
    while seen.len() < 152 {
        let c = sub
            .next_timeout(PATIENCE)
            .unwrap()
            .expect("a change within the patience bound");
        seen.push(c);
    }
    writer.join().unwrap();
    assert_eq!(
        seen.iter().map(|c| c.lsn).collect::<Vec<_>>(),
        (1..=152).collect::<Vec<_>>()
    );
    assert_eq!(
        seen[100].op,
        ChangeOp::Delete {
            key: b"k3".to_vec()
        }
    );
    assert_eq!(seen[101].op, ChangeOp::Epoch(7));
    assert_eq!(
        seen[151].op,
        ChangeOp::Put {
            key: b"k149".to_vec(),
            value: b"live".to_vec()
        }
    );
    assert_eq!(sub.position(), 153);
}

#[test]
fn a_subscriber_sees_a_record_only_once_it_is_durable() {
    let tmp = tempfile::tempdir().unwrap();
    // A minute between fsyncs: nothing becomes durable unless we sync.
    let e = Engine::open(tmp.path(), config(FsyncPolicy::Batch, 60_000)).unwrap();
    let mut sub = e.subscribe(1);
    let lsn = e.put(b"k", b"v").unwrap();
    assert!(e.wal().durable_lsn() < lsn);
    assert_eq!(
        sub.try_next().unwrap(),
        None,
        "visible before it was durable"
    );
    e.wal().sync().unwrap();
    assert_eq!(sub.try_next().unwrap().map(|c| c.lsn), Some(lsn));
}

#[test]
fn a_slow_subscriber_blocks_no_writer_and_holds_retention_back() {
    let tmp = tempfile::tempdir().unwrap();
    let e = Engine::open(tmp.path(), config(FsyncPolicy::Always, 10)).unwrap();
    let slow = e.subscribe(1);
    let mut fast = e.subscribe(1);
    for i in 0..3000u32 {
        e.put(format!("k{}", i % 100).as_bytes(), &[7u8; 64])
            .unwrap();
    }
    for _ in 0..3000 {
        fast.try_next()
            .unwrap()
            .expect("durable changes are visible");
    }
    assert_eq!(
        e.min_subscribed_lsn(),
        Some(1),
        "the slow subscriber still needs LSN 1"
    );
    assert_eq!(slow.position(), 1);
    drop(slow);
    assert_eq!(e.min_subscribed_lsn(), Some(3001));
    drop(fast);
    assert_eq!(e.min_subscribed_lsn(), None);
}

#[test]
fn concurrent_writers_and_subscribers_see_every_lsn_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let e = Arc::new(Engine::open(tmp.path(), config(FsyncPolicy::Always, 10)).unwrap());
    let total = 4 * 400u64;
    std::thread::scope(|s| {
        for w in 0..4u32 {
            let e = e.clone();
            s.spawn(move || {
                for i in 0..400u32 {
                    e.put(
                        format!("w{w}-{}", i % 20).as_bytes(),
                        format!("{i}").as_bytes(),
                    )
                    .unwrap();
                }
            });
        }
        for _ in 0..2 {
            let e = e.clone();
            s.spawn(move || {
                let mut sub = e.subscribe(1);
                for want in 1..=total {
                    let c = sub
                        .next_timeout(PATIENCE)
                        .unwrap()
                        .expect("a change within the patience bound");
                    assert_eq!(c.lsn, want);
                }
            });
        }
    });
}
