//! Subscription delivery latency: one writer puts records, one subscriber receives them; the
//! latency of a change is the time from its append (the record's timestamp) to its delivery.
//! `cargo run --release --example subscribe_latency -- [records] [dir]`

use seglog::wal::{FsyncPolicy, WalConfig};
use seglog::{Config, Engine};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5000);
    let base = std::path::PathBuf::from(
        args.get(2)
            .cloned()
            .unwrap_or_else(|| "seglog-data/subscribe".into()),
    );
    for (name, fsync) in [
        ("always", FsyncPolicy::Always),
        ("batch (10 ms)", FsyncPolicy::Batch),
    ] {
        let dir = base.join(name.split(' ').next().unwrap_or("x"));
        let _fresh = std::fs::remove_dir_all(&dir);
        let e = Engine::open(
            &dir,
            Config {
                wal: WalConfig {
                    fsync,
                    fsync_interval_ms: 10,
                    ..WalConfig::default()
                },
                ..Config::default()
            },
        )
        .unwrap();
        let mut lat = Vec::with_capacity(records as usize);
        std::thread::scope(|s| {
            let writer = &e;
            s.spawn(move || {
                for i in 0..records {
                    writer
                        .put(format!("k{}", i % 1000).as_bytes(), &[1u8; 100])
                        .unwrap();
                    // A steady 2000 changes/s: a daemon's event rate, not a flood.
                    std::thread::sleep(Duration::from_micros(500));
                }
            });
            let mut sub = e.subscribe(1);
            while (lat.len() as u64) < records {
                if let Some(c) = sub.next_timeout(Duration::from_secs(30)).unwrap() {
                    lat.push(now_us().saturating_sub(c.timestamp_us));
                } else {
                    panic!("no change within 30 s");
                }
            }
        });
        lat.sort_unstable();
        let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        println!(
            "{name}: {records} changes, delivery latency p50 {} us, p99 {} us, p999 {} us",
            p(0.5),
            p(0.99),
            p(0.999)
        );
        e.close().unwrap();
    }
}
