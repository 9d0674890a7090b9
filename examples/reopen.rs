//! Measures reopening an engine of N keys: with index checkpoints, and with them removed (full
//! replay), plus the raw sequential read of the same segment files and the RSS the index costs.
//! `cargo run --release --example reopen -- [keys] [value_bytes] [dir] [open-only]`
//! With `open-only` it opens an existing directory once in a fresh process and reports the RSS
//! the open added (in a process that just built the log, freed memory is reused and the RSS
//! delta means nothing).

use seglog::wal::{FsyncPolicy, WalConfig};
use seglog::{CacheConfig, Config, Engine};
use std::io::Read;
use std::time::Instant;

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    s.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let keys: u64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let value_len: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100);
    let dir = std::path::PathBuf::from(
        args.get(3)
            .cloned()
            .unwrap_or_else(|| "seglog-data/reopen".into()),
    );
    let config = Config {
        wal: WalConfig {
            fsync: FsyncPolicy::Never,
            ..WalConfig::default()
        },
        cache: CacheConfig { value_cache_mb: 0 },
    };
    if args.get(4).is_some_and(|a| a == "open-only") {
        let before = rss_bytes();
        let t = Instant::now();
        let e = Engine::open(&dir, config).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let added = rss_bytes().saturating_sub(before);
        println!(
            "open of {} keys: {secs:.2} s ({:?}); RSS added {:.0} MB = {:.0} bytes per key",
            e.len(),
            e.open_report(),
            added as f64 / 1e6,
            added as f64 / e.len().max(1) as f64
        );
        return;
    }
    let _fresh = std::fs::remove_dir_all(&dir);
    let e = Engine::open(&dir, config.clone()).unwrap();
    let value = vec![7u8; value_len];
    let t = Instant::now();
    for i in 0..keys {
        e.put(
            format!("key-{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).as_bytes(),
            &value,
        )
        .unwrap();
    }
    println!(
        "built {keys} keys ({value_len} B values) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    e.checkpoint_now().unwrap();
    e.close().unwrap();
    let segs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    let bytes: u64 = segs
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    for p in &segs {
        let mut f = std::fs::File::open(p).unwrap();
        while f.read(&mut buf).unwrap() > 0 {}
    }
    let raw = t.elapsed().as_secs_f64();
    println!(
        "log: {:.0} MiB in {} segments; raw sequential read (warm) {:.2} s = {:.0} MB/s",
        bytes as f64 / 1048576.0,
        segs.len(),
        raw,
        bytes as f64 / raw / 1e6
    );
    for round in 0..3 {
        let t = Instant::now();
        let e = Engine::open(&dir, config.clone()).unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "with checkpoints, run {round}: {secs:.2} s ({:?})",
            e.open_report()
        );
        drop(e);
    }
    for round in 0..3 {
        std::fs::remove_dir_all(dir.join("index")).unwrap();
        let t = Instant::now();
        let e = Engine::open(&dir, config.clone()).unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "full replay, run {round}: {secs:.2} s = {:.0} MB/s of log ({:?})",
            bytes as f64 / secs / 1e6,
            e.open_report()
        );
        e.close().unwrap();
    }
}
