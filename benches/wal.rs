//! Criterion benchmarks of the WAL, each group pairing a seglog figure with the physical
//! baseline measured in the same run on the same file system, so results read as ratios:
//!
//! - `append_always_1k`: one durable 1 KiB append vs one `pwrite` + `fdatasync` into a written file.
//! - `append_never_100b`: one buffered 100-byte append vs copying 100 bytes into a 1 MiB buffer
//!   written with `pwrite` when full.
//! - `group_commit_64x1k`: 64 threads × 16 durable appends vs 16 sequential pwrite+fdatasync (the
//!   1-writer bound): the ratio is the group-commit gain.
//! - `replay_64mib`: reading a 64 MiB log through the reader vs raw 1 MiB reads of its files
//!   (warm page cache).
//!
//! - `backend_always_1k` / `backend_never_1k`: the same append on the std and the io_uring backend
//!   (each buffered and O_DIRECT).
//! - `matrix/...` (opt-in, `SEGLOG_BENCH_MATRIX=1`, several minutes): std and io_uring on the full
//!   matrix, fsync always/batch/never x 1/4/16/64 writers x 128 B/1 KiB/4 KiB x buffered/O_DIRECT,
//!   each cell timing 64 appends per writer. `walctl bench --matrix` measures the same matrix.
//!
//! `walctl bench` measures the same things with latency percentiles and cold caches.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use seglog::wal::{Entry, FsyncPolicy, IoChoice, LogView, StdIo, Wal, WalConfig};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(fsync: FsyncPolicy) -> WalConfig {
    WalConfig {
        fsync,
        ..WalConfig::default()
    }
}

fn written_file(path: &Path, bytes: u64) -> File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < bytes {
        f.write_all_at(&zeros, off).unwrap();
        off += zeros.len() as u64;
    }
    f.sync_all().unwrap();
    f
}

fn append_always_1k(c: &mut Criterion) {
    let tmp = tempfile::tempdir_in(".").unwrap();
    let mut g = c.benchmark_group("append_always_1k");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));
    let value = vec![7u8; 1024];
    let wal = Wal::open(tmp.path().join("wal"), config(FsyncPolicy::Always)).unwrap();
    g.bench_function("seglog", |b| {
        b.iter(|| wal.append(Entry::new(b"", &value)).unwrap())
    });
    let f = written_file(&tmp.path().join("base"), 64 << 20);
    let mut off = 0u64;
    g.bench_function("baseline_pwrite_fdatasync", |b| {
        b.iter(|| {
            f.write_all_at(&value, off).unwrap();
            f.sync_data().unwrap();
            off = (off + 1056) % (60 << 20);
        })
    });
    g.finish();
}

fn append_never_100b(c: &mut Criterion) {
    let tmp = tempfile::tempdir_in(".").unwrap();
    let mut g = c.benchmark_group("append_never_100b");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    let value = vec![7u8; 100];
    let wal = Wal::open(tmp.path().join("wal"), config(FsyncPolicy::Never)).unwrap();
    g.bench_function("seglog", |b| {
        b.iter(|| wal.append(Entry::new(b"", &value)).unwrap())
    });
    let f = written_file(&tmp.path().join("base"), 64 << 20);
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut off = 0u64;
    g.bench_function("baseline_buffered_pwrite", |b| {
        b.iter(|| {
            buf.extend_from_slice(&value);
            if buf.len() >= 1 << 20 {
                f.write_all_at(&buf, off).unwrap();
                off = (off + buf.len() as u64) % (62 << 20);
                buf.clear();
            }
        })
    });
    g.finish();
}

fn group_commit_64x1k(c: &mut Criterion) {
    let tmp = tempfile::tempdir_in(".").unwrap();
    let mut g = c.benchmark_group("group_commit_64x1k");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(64 * 16));
    let value = vec![7u8; 1024];
    let wal = Wal::open(tmp.path().join("wal"), config(FsyncPolicy::Always)).unwrap();
    g.bench_function("seglog_64_writers", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                std::thread::scope(|s| {
                    for _ in 0..64 {
                        s.spawn(|| {
                            for _ in 0..16 {
                                wal.append(Entry::new(b"", &value)).unwrap();
                            }
                        });
                    }
                });
            }
            t.elapsed()
        })
    });
    let f = written_file(&tmp.path().join("base"), 64 << 20);
    g.bench_function("baseline_1_writer_pwrite_fdatasync", |b| {
        b.iter(|| {
            for i in 0..64 * 16u64 {
                f.write_all_at(&value, i * 1024).unwrap();
                f.sync_data().unwrap();
            }
        })
    });
    g.finish();
}

fn replay_64mib(c: &mut Criterion) {
    let tmp = tempfile::tempdir_in(".").unwrap();
    let dir = tmp.path().join("wal");
    let wal = Wal::open(
        &dir,
        WalConfig {
            segment_size_bytes: 16 << 20,
            ..config(FsyncPolicy::Never)
        },
    )
    .unwrap();
    let value = vec![7u8; 1024];
    while wal.stats().bytes_appended < 64 << 20 {
        wal.append(Entry::new(b"", &value)).unwrap();
    }
    wal.close().unwrap();
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    let bytes: u64 = files
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let mut g = c.benchmark_group("replay_64mib");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(bytes));
    g.bench_function("seglog_reader", |b| {
        b.iter_batched(
            || LogView::open(Arc::new(StdIo::default()), &dir).unwrap(),
            |view| {
                view.reader(1)
                    .map(|r| r.unwrap().value.len())
                    .sum::<usize>()
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("baseline_raw_read", |b| {
        let mut buf = vec![0u8; 1 << 20];
        b.iter(|| {
            let mut n = 0usize;
            for p in &files {
                let mut f = File::open(p).unwrap();
                loop {
                    let r = f.read(&mut buf).unwrap();
                    if r == 0 {
                        break;
                    }
                    n += r;
                }
            }
            n
        })
    });
    g.finish();
}

fn backends(c: &mut Criterion) {
    for (group, fsync, secs) in [
        ("backend_always_1k", FsyncPolicy::Always, 3),
        ("backend_never_1k", FsyncPolicy::Never, 2),
    ] {
        let tmp = tempfile::tempdir_in(".").unwrap();
        let mut g = c.benchmark_group(group);
        g.sample_size(15)
            .measurement_time(Duration::from_secs(secs))
            .throughput(Throughput::Elements(1));
        let value = vec![7u8; 1024];
        for (name, io, direct) in [
            ("std", IoChoice::Std, false),
            ("io_uring", IoChoice::IoUring, false),
            ("std_direct", IoChoice::Std, true),
            ("io_uring_direct", IoChoice::IoUring, true),
        ] {
            let cfg = WalConfig {
                io,
                direct_io: direct,
                ..config(fsync)
            };
            let wal = match Wal::open(tmp.path().join(name), cfg) {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("{group}/{name} skipped: {e}");
                    continue;
                }
            };
            g.bench_function(name, |b| {
                b.iter(|| wal.append(Entry::new(b"", &value)).unwrap())
            });
        }
        g.finish();
    }
}

fn backend_matrix(c: &mut Criterion) {
    if std::env::var("SEGLOG_BENCH_MATRIX").map_or(true, |v| v != "1") {
        return;
    }
    let tmp = tempfile::tempdir_in(".").unwrap();
    let mut g = c.benchmark_group("matrix");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Batch, FsyncPolicy::Never] {
        for direct in [false, true] {
            for writers in [1usize, 4, 16, 64] {
                for size in [128usize, 1024, 4096] {
                    g.throughput(Throughput::Elements(64 * writers as u64));
                    for (name, io) in [("std", IoChoice::Std), ("io_uring", IoChoice::IoUring)] {
                        let dir = tmp
                            .path()
                            .join(format!("{fsync:?}-{direct}-{writers}-{size}-{name}"));
                        let wal = match Wal::open(
                            &dir,
                            WalConfig {
                                io,
                                direct_io: direct,
                                segment_size_bytes: 8 << 20,
                                ..config(fsync)
                            },
                        ) {
                            Ok(w) => w,
                            Err(e) => {
                                eprintln!("matrix cell skipped: {e}");
                                continue;
                            }
                        };
                        let value = vec![7u8; size];
                        let id = format!(
                            "{fsync:?}/{}/{writers}w/{size}B/{name}",
                            if direct { "direct" } else { "buffered" }
                        );
                        g.bench_function(id, |b| {
                            b.iter_custom(|iters| {
                                let t = Instant::now();
                                for _ in 0..iters {
                                    std::thread::scope(|s| {
                                        for _ in 0..writers {
                                            s.spawn(|| {
                                                for _ in 0..64 {
                                                    wal.append(Entry::new(b"", &value)).unwrap();
                                                }
                                            });
                                        }
                                    });
                                }
                                t.elapsed()
                            })
                        });
                        drop(wal);
                        std::fs::remove_dir_all(&dir).unwrap();
                    }
                }
            }
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    append_always_1k,
    append_never_100b,
    group_commit_64x1k,
    replay_64mib,
    backends,
    backend_matrix
);
criterion_main!(benches);
