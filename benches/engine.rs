//! Criterion benchmarks of the engine, each next to the raw WAL figure measured in the same run:
//!
//! - `put_vs_wal_append/{never,always}`: `Engine::put` of a 16-byte key and 100-byte value vs
//!   `Wal::append` of the same record (the engine's cost is the index and its lock), keys in
//!   ascending order (`sequential`) and in scattered order (`random`, each key once).
//! - `get`: a key whose record is in a sealed segment (memory-mapped) and one in the active
//!   segment (pread), value cache off, warm page cache.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use seglog::wal::{Entry, FsyncPolicy, Wal, WalConfig};
use seglog::{CacheConfig, Config, Engine};
use std::time::Duration;

fn cfg(fsync: FsyncPolicy) -> Config {
    Config {
        wal: WalConfig {
            fsync,
            segment_size_bytes: 8 << 20,
            ..WalConfig::default()
        },
        cache: CacheConfig { value_cache_mb: 0 },
    }
}

fn put_vs_wal_append(c: &mut Criterion) {
    for (name, fsync, secs) in [
        ("never", FsyncPolicy::Never, 3),
        ("always", FsyncPolicy::Always, 4),
    ] {
        let tmp = tempfile::tempdir_in(".").unwrap();
        let mut g = c.benchmark_group(format!("put_vs_wal_append/{name}"));
        g.sample_size(20)
            .measurement_time(Duration::from_secs(secs))
            .throughput(Throughput::Elements(1));
        let value = [7u8; 100];
        let wal = Wal::open(tmp.path().join("wal"), cfg(fsync).wal).unwrap();
        let sequential = |i: u64| format!("key-{:012}", i % 1_000_000);
        let random = |i: u64| format!("key-{:012x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16);
        for (order, key) in [
            ("sequential", &sequential as &dyn Fn(u64) -> String),
            ("random", &random),
        ] {
            let mut i = 0u64;
            g.bench_function(format!("wal_append/{order}"), |b| {
                b.iter(|| {
                    i += 1;
                    let key = key(i);
                    wal.append(Entry {
                        kind: 1,
                        key: key.as_bytes(),
                        value: &value,
                    })
                    .unwrap()
                })
            });
            let e = Engine::open(tmp.path().join(format!("engine-{order}")), cfg(fsync)).unwrap();
            let mut i = 0u64;
            g.bench_function(format!("engine_put/{order}"), |b| {
                b.iter(|| {
                    i += 1;
                    e.put(key(i).as_bytes(), &value).unwrap()
                })
            });
        }
        drop(wal);
        g.finish();
    }
}

fn get(c: &mut Criterion) {
    let tmp = tempfile::tempdir_in(".").unwrap();
    let e = Engine::open(
        tmp.path(),
        Config {
            wal: WalConfig {
                segment_size_bytes: 1 << 20,
                ..cfg(FsyncPolicy::Never).wal
            },
            ..cfg(FsyncPolicy::Never)
        },
    )
    .unwrap();
    for i in 0..50_000u32 {
        e.put(format!("key-{i:08}").as_bytes(), &[9u8; 100])
            .unwrap();
    }
    e.wal().sync().unwrap();
    let mut g = c.benchmark_group("get");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    let mut i = 0u32;
    g.bench_function("sealed_segment_mmap", |b| {
        b.iter(|| {
            i = (i + 7919) % 20_000;
            e.get(format!("key-{i:08}").as_bytes()).unwrap().unwrap()
        })
    });
    let mut i = 0u32;
    g.bench_function("active_segment_pread", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            e.get(format!("key-{:08}", 49_000 + i).as_bytes())
                .unwrap()
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, put_vs_wal_append, get);
criterion_main!(benches);
