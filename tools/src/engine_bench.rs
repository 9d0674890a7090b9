//! `walctl bench --engine`: the engine's figures, each next to what it is compared with in the
//! same run.
//!
//! - put throughput under `never`, `batch` and `always` against `Wal::append` of the same
//!   records (the engine's cost is its index and locks), each side alone in its own block,
//!   the engine's block with its index work drained and timed apart (see [`put_vs_append`]),
//!   the ratios taken over pairs of runs whose blocks come engine, append, append, engine
//!   (see [`abba_ratios`]), and beside them the ratio of each side's fastest block (see
//!   [`fastest_blocks`]);
//! - reopen of `--keys` keys: with index checkpoints after a clean close; after a crash right
//!   after writing them at full speed (checkpoints of the sealed segments only: the active
//!   segment is replayed); after a crash 4 MiB of records past a checkpoint of the active
//!   segment (`Engine::checkpoint_tail`, what the checkpointer writes when writes slow down);
//!   and full replay (no checkpoints) of the same logs, each against a raw sequential read of
//!   the same segment files timed next to it (see [`time_open`]); cold (page cache
//!   dropped, when the process may) and warm. Every open after a crash is the first (the
//!   durable point the previous one recorded is undone);
//! - get latency p50/p99 for keys in sealed segments (memory-mapped) and in the active segment
//!   (pread), warm, and cold (the first gets after dropping the page cache);
//! - heap memory the open index costs per million keys, measured in a fresh process;
//! - subscription delivery latency p50/p99 under `always` and `batch` (10 ms), a writer at a
//!   steady 2000 changes/s.

use crate::bench::{
    drop_caches, err, median, percentiles, prefault_memory, raw_read, segment_files, sync_disks,
    Latency,
};
use crate::{CmdResult, Failure};
use seglog::wal::{Entry, FsyncPolicy, Wal, WalConfig};
use seglog::{CacheConfig, Config, Engine};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What `walctl bench --engine` measures.
#[derive(Debug, Clone)]
pub struct EngineBenchOptions {
    /// Working directory (replaced).
    pub dir: PathBuf,
    /// Keys of the reopen and get data set.
    pub keys: u64,
    /// Value bytes.
    pub value_size: usize,
    /// Repetitions (medians are reported).
    pub runs: usize,
    /// Segment size.
    pub segment_size: u64,
    /// Whether to measure put against append (`--no-put` skips it).
    pub put: bool,
}

fn config(fsync: FsyncPolicy, segment_size: u64) -> Config {
    Config {
        wal: WalConfig {
            fsync,
            fsync_interval_ms: 10,
            segment_size_bytes: segment_size,
            ..WalConfig::default()
        },
        cache: CacheConfig { value_cache_mb: 0 },
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> Failure {
    err(what, e)
}

/// The key of item `i`: 20 bytes, in an order unrelated to `i`.
fn key(i: u64) -> String {
    format!("key-{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn fresh(dir: &Path) -> Result<(), Failure> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fail("remove bench directory", e)),
    }
}

/// The header of the last segment in `dir`: where its durable point is, which each open after
/// a crash rewrites (see `seglog::wal::format::DurablePoint`); put back by
/// [`restore_last_header`] so that every open measured is the first after the crash.
fn last_header(dir: &Path) -> Result<(PathBuf, Vec<u8>), Failure> {
    let (files, _) = segment_files(dir)?;
    let last = files
        .last()
        .ok_or_else(|| fail("find the last segment", "no segments"))?
        .clone();
    let mut b = std::fs::read(&last).map_err(|e| fail("read the last segment", e))?;
    b.truncate(seglog::wal::format::HEADER_LEN);
    Ok((last, b))
}

fn restore_last_header(saved: &(PathBuf, Vec<u8>)) -> Result<(), Failure> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&saved.0)
        .map_err(|e| fail("open the last segment", e))?;
    f.write_all_at(&saved.1, 0)
        .map_err(|e| fail("restore the last segment's header", e))
}

/// One block of [`put_vs_append`]: `n` operations on a fresh directory. The engine's block
/// ends with its background work done (`checkpoint_now`), timed apart.
struct PutBlock {
    /// Nanoseconds per operation of the puts or appends.
    ns: f64,
    /// Nanoseconds per operation of finishing the index work left when the puts returned.
    drain_ns: f64,
}

fn put_block(
    dir: &Path,
    cfg: &Config,
    engine: bool,
    n: u64,
    value: &[u8],
) -> Result<PutBlock, Failure> {
    fresh(dir)?;
    sync_disks();
    // Room for everything the larger side's block touches, with a margin: the page cache of
    // the log, and for the engine also its index run files (each written once by a flush and
    // again by merges), its memtables and its run buffers. Sized for the log alone (one and a
    // half times it), the engine's block got memory the host had not backed yet and its puts
    // measured 300-420 ns instead of 263-274 (3 M puts of 200 B under `never`); both sides
    // get the same.
    let bytes = n as usize * (value.len() + 96);
    prefault_memory(bytes.saturating_mul(3));
    let block = if engine {
        let e = Engine::open(dir, cfg.clone()).map_err(|e| fail("open engine", e))?;
        let t = Instant::now();
        for i in 0..n {
            e.put(key(i).as_bytes(), value)
                .map_err(|e| fail("put", e))?;
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        let t = Instant::now();
        e.checkpoint_now().map_err(|e| fail("checkpoint", e))?;
        let drain_ns = t.elapsed().as_nanos() as f64 / n as f64;
        e.close().map_err(|e| fail("close", e))?;
        PutBlock { ns, drain_ns }
    } else {
        let wal = Wal::open(dir, cfg.wal.clone())?;
        let t = Instant::now();
        for i in 0..n {
            let k = key(i);
            wal.append(Entry {
                kind: seglog::record::KIND_PUT,
                key: k.as_bytes(),
                value,
            })?;
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        wal.close()?;
        PutBlock { ns, drain_ns: 0.0 }
    };
    fresh(dir)?;
    Ok(block)
}

/// `n` engine puts in one block and `n` raw WAL appends of the same records in another, the
/// engine first in even runs: (put ns, drain ns, append ns) per operation. Two consecutive runs
/// thus place the blocks engine, append, append, engine (see [`abba_ratios`]).
///
/// Blocks, not slices: a segment's index work takes the checkpointer longer than a short
/// slice of puts lasts, so slices interleaved with appends charged the appends for much of
/// it (their appends measured 310-490 ns against 205 alone). Each side runs alone, on fresh
/// directories, after the dirty pages of the last block were written back and with memory
/// the host backs (see [`prefault_memory`]). The puts run long enough (11 segments of 64 MiB
/// at 200-byte values) for the checkpointer's pace to show: writers wait when it falls
/// [`seglog::MAX_FROZEN_MEMTABLES`] memtables behind, and what is left when the puts return
/// is timed as the drain.
fn put_vs_append(
    dir: &Path,
    fsync: FsyncPolicy,
    n: u64,
    value: &[u8],
    run: usize,
) -> Result<(f64, f64, f64), Failure> {
    let cfg = config(fsync, 64 << 20);
    let (mut put, mut append) = (None, None);
    let engine_first = run.is_multiple_of(2);
    for engine in [engine_first, !engine_first] {
        let b = put_block(&dir.join("put"), &cfg, engine, n, value)?;
        if engine {
            put = Some(b);
        } else {
            append = Some(b);
        }
    }
    let (Some(put), Some(append)) = (put, append) else {
        unreachable!("both sides ran: the loop covers both values of `engine`")
    };
    Ok((put.ns, put.drain_ns, append.ns))
}

/// (put + drain) / append and put / append of each pair of runs `2k, 2k + 1`, from the sums
/// of its two runs' blocks: the engine's blocks come first and fourth, the appends' second and
/// third. A steady drift in the machine's speed costs both sides alike, and so does a
/// disturbance that comes every other block (it hits one block of each side). Per run, the
/// latter split the ratios into two clusters by the run's parity, and the median of an odd
/// number of runs fell in whichever cluster had one run more. A last run without its pair is
/// left out.
fn abba_ratios(p: &[f64], d: &[f64], a: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let pairs = p.len().min(d.len()).min(a.len()) / 2;
    (0..pairs)
        .map(|k| {
            let r = 2 * k..2 * k + 2;
            let (put, drain, append) = (
                p[r.clone()].iter().sum::<f64>(),
                d[r.clone()].iter().sum::<f64>(),
                a[r].iter().sum::<f64>(),
            );
            ((put + drain) / append, put / append)
        })
        .unzip()
}

/// The fastest block of each side and their ratio: (put + drain, append, ratio). A second
/// estimate beside the pairs' median, for a machine whose disturbances come and go in
/// stretches longer than a pair: every block pays the engine's own work (its merges, its
/// index), so the engine's fastest block still includes it; what it leaves out is the time a
/// block lost to the machine. Reported, never a replacement for the median.
fn fastest_blocks(p: &[f64], d: &[f64], a: &[f64]) -> Option<(f64, f64, f64)> {
    let put = p.iter().zip(d).map(|(p, d)| p + d).min_by(f64::total_cmp)?;
    let append = a.iter().copied().min_by(f64::total_cmp)?;
    Some((put, append, put / append))
}

/// How each engine [`time_open`] opens is left for the next open.
#[derive(Clone, Copy)]
enum Leave {
    /// Dropped without a clean close, as after a crash.
    Dropped,
    /// Closed cleanly, so that the next open finds the log as a clean close left it.
    Closed,
}

/// One [`time_open`]: seconds of the open cold (when the page cache can be dropped) and warm,
/// its report, and the paired raw reads' seconds (see [`time_open`]).
struct TimedOpen {
    cold: Option<f64>,
    warm: f64,
    report: seglog::OpenReport,
    raw_cold: Option<f64>,
    raw_warm: Option<f64>,
}

/// Seconds to open the engine in `dir`, cold first when possible, then warm. Each engine is
/// left as `leave` says (the close is not timed); `reset` then undoes what its background
/// work wrote. With `raw`, a raw read of those files is timed next to each open, cold next to
/// the cold one and warm next to the warm one, right before the open or right after it as the
/// `bool` says: the disk's speed here drifts by a third within minutes, and a full replay
/// compared with raw reads taken minutes apart measured the drift as much as the replay
/// (0.70x in one run in which, read by read, it was 0.94x). Before or after, alternately (see
/// [`time_opens`]): whichever reads second may find the disk slower for the first's reading
/// (at 10M keys, replays right after a raw read of the same 2.5 GB took 1.35-2.49 s, and
/// 1.33-1.40 s with no read before them).
fn time_open(
    dir: &Path,
    cfg: &Config,
    leave: Leave,
    reset: &dyn Fn() -> Result<(), Failure>,
    raw: Option<(&[PathBuf], bool)>,
) -> Result<TimedOpen, Failure> {
    let raw_first = raw.is_some_and(|(_, first)| first);
    let time_raw = || -> Result<Option<f64>, Failure> {
        let Some((files, _)) = raw else {
            return Ok(None);
        };
        let t = Instant::now();
        raw_read(files)?;
        Ok(Some(t.elapsed().as_secs_f64()))
    };
    let finish = |e: Engine| -> Result<(), Failure> {
        match leave {
            Leave::Dropped => drop(e),
            Leave::Closed => e.close().map_err(|e| fail("close", e))?,
        }
        reset()
    };
    let mut raw_cold = None;
    let cold = if drop_caches() {
        if raw_first {
            raw_cold = time_raw()?;
            drop_caches();
        }
        let t = Instant::now();
        let e = Engine::open(dir, cfg.clone()).map_err(|e| fail("open", e))?;
        let s = t.elapsed().as_secs_f64();
        finish(e)?;
        if raw.is_some() && !raw_first {
            drop_caches();
            raw_cold = time_raw()?;
        }
        // Warm the files again for the warm open below.
        finish(Engine::open(dir, cfg.clone()).map_err(|e| fail("open", e))?)?;
        Some(s)
    } else {
        None
    };
    let mut raw_warm = if raw_first { time_raw()? } else { None };
    let t = Instant::now();
    let e = Engine::open(dir, cfg.clone()).map_err(|e| fail("open", e))?;
    let warm = t.elapsed().as_secs_f64();
    let report = e.open_report().clone();
    finish(e)?;
    if !raw_first {
        raw_warm = time_raw()?;
    }
    Ok(TimedOpen {
        cold,
        warm,
        report,
        raw_cold,
        raw_warm,
    })
}

/// What [`time_opens`] measured: seconds of each open cold (when measurable) and warm, the
/// last open's report, and the paired raw reads' seconds (empty without `raw`).
#[derive(Default)]
struct Opens {
    cold: Vec<f64>,
    warm: Vec<f64>,
    report: Option<seglog::OpenReport>,
    raw_cold: Vec<f64>,
    raw_warm: Vec<f64>,
}

impl Opens {
    /// Raw read seconds over open seconds, cold and warm: how fast the opens read the log
    /// against the raw reads timed next to them. Over each pair of runs `2k, 2k + 1`, whose
    /// raw reads come before and after their opens, so that each side reads first once (a
    /// last run without its pair is left out); run by run when there is a single run.
    fn paired_ratios(&self) -> (Vec<f64>, Vec<f64>) {
        let ratios = |raw: &[f64], open: &[f64]| -> Vec<f64> {
            if raw.len().min(open.len()) < 2 {
                return raw.iter().zip(open).map(|(r, o)| r / o).collect();
            }
            raw.chunks_exact(2)
                .zip(open.chunks_exact(2))
                .map(|(r, o)| (r[0] + r[1]) / (o[0] + o[1]))
                .collect()
        };
        (
            ratios(&self.raw_cold, &self.cold),
            ratios(&self.raw_warm, &self.warm),
        )
    }
}

/// [`time_open`] `runs` times, with the raw reads (when given) before the opens in even runs
/// and after them in odd ones.
fn time_opens(
    runs: usize,
    dir: &Path,
    cfg: &Config,
    leave: Leave,
    reset: &dyn Fn() -> Result<(), Failure>,
    raw: Option<&[PathBuf]>,
) -> Result<Opens, Failure> {
    let mut o = Opens::default();
    for run in 0..runs {
        // The raw read before the open in even runs, after it in odd ones (see `time_open`).
        let t = time_open(dir, cfg, leave, reset, raw.map(|f| (f, run % 2 == 0)))?;
        o.cold.extend(t.cold);
        o.warm.push(t.warm);
        o.report = Some(t.report);
        o.raw_cold.extend(t.raw_cold);
        o.raw_warm.extend(t.raw_warm);
    }
    Ok(o)
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// `walctl bench --engine-open-rss DIR` (in a fresh process): opens the engine and prints the
/// anonymous (heap) and file-backed memory the open added, in KiB, and the key count.
pub fn open_rss(dir: &Path, segment_size: u64, out: &mut dyn Write) -> CmdResult {
    let (anon, file) = (rss_kib("RssAnon:"), rss_kib("RssFile:"));
    let e =
        Engine::open(dir, config(FsyncPolicy::Never, segment_size)).map_err(|e| fail("open", e))?;
    let (anon2, file2) = (rss_kib("RssAnon:"), rss_kib("RssFile:"));
    let keys = e.len().map_err(|e| fail("count keys", e))?;
    writeln!(
        out,
        "{} {} {}",
        anon2.saturating_sub(anon),
        file2.saturating_sub(file),
        keys
    )
    .map_err(|e| fail("write", e))?;
    drop(e);
    Ok(())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Delivery latency of `n` changes written at a steady 2000/s to one subscriber.
fn subscription_latency(dir: &Path, fsync: FsyncPolicy, n: u64) -> Result<Latency, Failure> {
    fresh(dir)?;
    let e = Engine::open(dir, config(fsync, 64 << 20)).map_err(|e| fail("open", e))?;
    let mut lat = Vec::with_capacity(n as usize);
    let mut failure = None;
    std::thread::scope(|s| {
        let writer = &e;
        let w = s.spawn(move || -> Result<(), seglog::Error> {
            for i in 0..n {
                writer.put(format!("k{}", i % 1000).as_bytes(), &[1u8; 100])?;
                // Load pacing (a daemon's steady event rate), not synchronisation.
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok(())
        });
        let mut sub = e.subscribe(1);
        while (lat.len() as u64) < n {
            match sub.next_timeout(Duration::from_secs(30)) {
                Ok(Some(c)) => lat.push(now_us().saturating_sub(c.timestamp_us) * 1000),
                Ok(None) => {
                    failure = Some(fail("subscribe", "no change within 30 s"));
                    break;
                }
                Err(e) => {
                    failure = Some(fail("subscribe", e));
                    break;
                }
            }
        }
        if let Ok(Err(e)) = w.join() {
            failure.get_or_insert(fail("put", e));
        }
    });
    e.close().map_err(|e| fail("close", e))?;
    fresh(dir)?;
    match failure {
        Some(f) => Err(f),
        None => Ok(percentiles(lat)),
    }
}

/// Get latency over `keys` (indices), each measured alone.
fn get_latency(e: &Engine, keys: &[u64]) -> Result<Latency, Failure> {
    let mut ns = Vec::with_capacity(keys.len());
    for &i in keys {
        let k = key(i);
        let t = Instant::now();
        let v = e.get(k.as_bytes()).map_err(|e| fail("get", e))?;
        ns.push(t.elapsed().as_nanos() as u64);
        if v.is_none() {
            return Err(Failure::Check(format!("key {k} missing")));
        }
    }
    Ok(percentiles(ns))
}

fn fmt_s(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Put against raw WAL append under each fsync policy (see [`put_vs_append`]), printed.
fn put_figures(opts: &EngineBenchOptions, value: &[u8], out: &mut dyn Write) -> CmdResult {
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(|e| fail("write", e));
    // Runs in pairs (see `abba_ratios`).
    let put_runs = opts.runs.max(2).next_multiple_of(2);
    w(
        out,
        format!("\nput vs raw WAL append, same records, each side alone in its own block, {} runs (ns per operation, medians of the runs; drain: the index work left when the puts returned, timed apart; ratios: (put + drain) / append and put / append of each pair of runs, blocks in the order engine, append, append, engine, and their median):", put_runs),
    )?;
    for (name, fsync, n) in [
        ("never", FsyncPolicy::Never, 3_000_000u64),
        ("batch", FsyncPolicy::Batch, 3_000_000),
        ("always", FsyncPolicy::Always, 3_000),
    ] {
        let (mut p_ns, mut d_ns, mut a_ns) = (vec![], vec![], vec![]);
        for run in 0..put_runs {
            let (p, d, a) = put_vs_append(&opts.dir, fsync, n, value, run)?;
            p_ns.push(p);
            d_ns.push(d);
            a_ns.push(a);
        }
        let (full, puts) = abba_ratios(&p_ns, &d_ns, &a_ns);
        w(
            out,
            format!(
                "  {name:<6} put {:>7.0} ns + drain {:>5.0} ns  append {:>7.0} ns  ratio {:.3}x [{}]  puts alone {:.3}x [{}]",
                median(&p_ns),
                median(&d_ns),
                median(&a_ns),
                median(&full),
                fmt_s(&full),
                median(&puts),
                fmt_s(&puts)
            ),
        )?;
        if let Some((put, append, ratio)) = fastest_blocks(&p_ns, &d_ns, &a_ns) {
            w(
                out,
                format!("         fastest block of each side: put + drain {put:.0} ns, append {append:.0} ns, ratio {ratio:.3}x"),
            )?;
        }
    }

    Ok(())
}

/// Runs every engine figure and prints them.
pub fn run(opts: &EngineBenchOptions, out: &mut dyn Write) -> CmdResult {
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(|e| fail("write", e));
    std::fs::create_dir_all(&opts.dir).map_err(|e| fail("create bench directory", e))?;
    let runs = opts.runs.max(1);
    let value = vec![7u8; opts.value_size];

    w(out, format!("seglog engine benchmark: {} keys of 20 bytes, {} B values, {} runs (medians; per-run values in brackets)", opts.keys, opts.value_size, runs))?;
    if opts.put {
        put_figures(opts, &value, out)?;
    } else {
        w(
            out,
            "\nput vs raw WAL append: skipped (--no-put)".to_string(),
        )?;
    }

    // The data set: every key once, in random key order.
    let data = opts.dir.join("engine");
    fresh(&data)?;
    let cfg = config(FsyncPolicy::Never, opts.segment_size);
    eprintln!("walctl bench: writing {} keys", opts.keys);
    let e = Engine::open(&data, cfg.clone()).map_err(|e| fail("open", e))?;
    for i in 0..opts.keys {
        e.put(key(i).as_bytes(), &value)
            .map_err(|e| fail("put", e))?;
    }
    let active_first = e.wal().active_segment().unwrap_or(1);
    e.checkpoint_now().map_err(|e| fail("checkpoint", e))?;
    // Dropped without a clean close: runs of the sealed segments only, as after a crash.
    drop(e);
    let (files, bytes) = segment_files(&data)?;
    w(
        out,
        format!(
            "\nreopen: {:.0} MiB of log in {} segments (seconds) [cold per run] / [warm per run]:",
            bytes as f64 / 1048576.0,
            files.len()
        ),
    )?;

    let mut raw_cold = vec![];
    let mut raw_warm = vec![];
    for _ in 0..runs {
        if drop_caches() {
            let t = Instant::now();
            raw_read(&files)?;
            raw_cold.push(t.elapsed().as_secs_f64());
        }
        let t = Instant::now();
        raw_read(&files)?;
        raw_warm.push(t.elapsed().as_secs_f64());
    }
    // Each open after the crash records a durable point at the recovered end: undone, so that
    // each is the first open after the crash.
    let opens = |leave, reset: &dyn Fn() -> Result<(), Failure>, raw| {
        time_opens(runs, &data, &cfg, leave, reset, raw)
    };
    let crashed = last_header(&data)?;
    let crash = opens(Leave::Dropped, &|| restore_last_header(&crashed), None)?;
    // A clean close writes the active segment's part of the index too, and the `CLOSED`
    // marker; each open removes the marker, and each engine is closed again for the next.
    Engine::open(&data, cfg.clone())
        .map_err(|e| fail("open", e))?
        .close()
        .map_err(|e| fail("close", e))?;
    let clean = opens(Leave::Closed, &|| Ok(()), None)?;
    let index = data.join("index");
    let aside = opts.dir.join("index-aside");
    fresh(&aside)?;
    std::fs::rename(&index, &aside).map_err(|e| fail("move the index aside", e))?;
    // Full replays, each compared with the open with checkpoints of the same log: after a
    // clean close (the log's end taken from its `CLOSED` marker) and after a crash (the last
    // segment scanned first). Each open writes new runs in the background (and the clean
    // close all of them): they go before the next full replay. Each is paired with a raw
    // read of the log timed next to it (see `time_open`).
    let full_clean = opens(Leave::Closed, &|| fresh(&index), Some(&files))?;
    // As after a crash: no marker.
    drop(Engine::open(&data, cfg.clone()).map_err(|e| fail("open", e))?);
    fresh(&index)?;
    let full_crash = opens(Leave::Dropped, &|| fresh(&index), Some(&files))?;
    fresh(&index)?;
    std::fs::rename(&aside, &index).map_err(|e| fail("put the index back", e))?;

    // A crash at a low write rate: the checkpointer wrote a tail checkpoint (after 5 s without
    // a roll, once 4 MiB of the active segment were in memory only), then another
    // `TAIL_CHECKPOINT_BYTES` of records came in (updates of existing keys) before the crash.
    let e = Engine::open(&data, cfg.clone()).map_err(|e| fail("open", e))?;
    e.checkpoint_tail()
        .map_err(|e| fail("checkpoint the tail", e))?;
    let frame = seglog::wal::format::frame_size(key(0).len(), value.len()) as u64;
    let past_tail = seglog::TAIL_CHECKPOINT_BYTES / frame;
    // Updates only, also when the data set has fewer keys than that (the key count stays).
    for i in 0..past_tail {
        e.put(key(i % opts.keys.max(1)).as_bytes(), &value)
            .map_err(|e| fail("put", e))?;
    }
    drop(e);
    let crashed = last_header(&data)?;
    let tail = opens(Leave::Dropped, &|| restore_last_header(&crashed), None)?;
    fresh(&aside)?;
    std::fs::rename(&index, &aside).map_err(|e| fail("move the index aside", e))?;
    let full_tail = opens(
        Leave::Dropped,
        &|| {
            fresh(&index)?;
            restore_last_header(&crashed)
        },
        None,
    )?;
    fresh(&index)?;
    std::fs::rename(&aside, &index).map_err(|e| fail("put the index back", e))?;
    // Closed cleanly for what follows (memory after open, gets), as before the tail rows.
    Engine::open(&data, cfg.clone())
        .map_err(|e| fail("open", e))?
        .close()
        .map_err(|e| fail("close", e))?;
    let rows: [(&str, &Opens); 6] = [
        ("with checkpoints, after a clean close", &clean),
        ("with checkpoints, after a crash", &crash),
        ("full replay (no checkpoints), clean close", &full_clean),
        ("full replay (no checkpoints), crash", &full_crash),
        (
            "with checkpoints, crash 4 MiB past a tail checkpoint",
            &tail,
        ),
        ("full replay (no checkpoints), that crash", &full_tail),
    ];
    let mbps = |s: f64| bytes as f64 / s / 1e6;
    w(
        out,
        format!(
            "  {:<42} cold {:>7.3} [{}]  warm {:>7.3} [{}]",
            "raw sequential read of the segments",
            median(&raw_cold),
            fmt_s(&raw_cold),
            median(&raw_warm),
            fmt_s(&raw_warm)
        ),
    )?;
    for (name, o) in &rows {
        w(
            out,
            format!(
                "  {name:<42} cold {:>7.3} [{}]  warm {:>7.3} [{}]",
                median(&o.cold),
                fmt_s(&o.cold),
                median(&o.warm),
                fmt_s(&o.warm)
            ),
        )?;
    }
    for (name, r) in [
        ("clean", &clean.report),
        ("crash", &crash.report),
        ("crash past a tail checkpoint", &tail.report),
        ("full", &full_clean.report),
    ] {
        if let Some(r) = r {
            w(out, format!("  {name}: {r:?}"))?;
        }
    }
    let (clean_ratios, crash_ratios) = (full_clean.paired_ratios(), full_crash.paired_ratios());
    let summary = |what: &str, opens: fn(&Opens) -> &[f64], clean_r: &[f64], crash_r: &[f64]| {
        let m = |o: &Opens| median(opens(o));
        let (full_clean_s, full_crash_s) = (m(&full_clean), m(&full_crash));
        format!(
            "  {what}: checkpoints {:.1}x faster than full replay after a clean close, {:.1}x after a crash, {:.1}x after a crash 4 MiB past a tail checkpoint; full replay {:.0} MB/s after a clean close and {:.0} MB/s after a crash, against raw reads timed next to them (pairs of runs, one read before its open and one after): {:.2}x [{}] and {:.2}x [{}]",
            full_clean_s / m(&clean),
            full_crash_s / m(&crash),
            m(&full_tail) / m(&tail),
            mbps(full_clean_s),
            mbps(full_crash_s),
            median(clean_r),
            fmt_s(clean_r),
            median(crash_r),
            fmt_s(crash_r),
        )
    };
    if !raw_cold.is_empty() {
        w(
            out,
            summary("cold", |o| &o.cold, &clean_ratios.0, &crash_ratios.0),
        )?;
    }
    w(
        out,
        summary("warm", |o| &o.warm, &clean_ratios.1, &crash_ratios.1),
    )?;

    // Memory, in a fresh process so freed memory of this one does not hide it.
    let exe = std::env::current_exe().map_err(|e| fail("find walctl", e))?;
    let o = std::process::Command::new(exe)
        .args(["bench", "--engine-open-rss"])
        .arg(&data)
        .args(["--segment-size", &opts.segment_size.to_string()])
        .output()
        .map_err(|e| fail("run walctl", e))?;
    let text = String::from_utf8_lossy(&o.stdout);
    let nums: Vec<f64> = text
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if let [anon, file, keys] = nums[..] {
        w(out, format!(
            "\nmemory after open (fresh process, {keys:.0} keys): heap {:.1} MB = {:.1} MB per million keys; mapped index files resident {:.1} MB",
            anon / 1024.0, anon / 1024.0 / (keys / 1e6).max(1e-6), file / 1024.0
        ))?;
    } else {
        w(
            out,
            format!(
                "\nmemory: not measured ({})",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        )?;
    }

    // Gets.
    let e = Engine::open(&data, cfg.clone()).map_err(|e| fail("open", e))?;
    let first_active_key = active_first.saturating_sub(1).min(opts.keys);
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut pick = |lo: u64, hi: u64, n: usize| -> Vec<u64> {
        (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                lo + rng % (hi - lo).max(1)
            })
            .collect()
    };
    let sealed_keys = pick(0, first_active_key.max(1), 20_000);
    let active_keys = pick(first_active_key, opts.keys, 20_000);
    w(out, "\nget latency, value cache off (us):".into())?;
    for (name, ks) in [
        ("sealed segment (mmap)", &sealed_keys),
        ("active segment (pread)", &active_keys),
    ] {
        if first_active_key == 0 && name.starts_with("sealed")
            || first_active_key >= opts.keys && name.starts_with("active")
        {
            continue;
        }
        let cold = if drop_caches() {
            Some(get_latency(&e, &ks[..2000])?)
        } else {
            None
        };
        get_latency(&e, ks)?;
        let warm = get_latency(&e, ks)?;
        let c = cold.map_or(
            "not measured (no permission to drop the page cache)".to_string(),
            |c| format!("p50 {:.1} p99 {:.1}", c.p50_us, c.p99_us),
        );
        w(out, format!("  {name:<24} warm p50 {:.2} p99 {:.2}   cold (first 2000 gets after dropping the cache) {c}", warm.p50_us, warm.p99_us))?;
    }
    drop(e);

    w(
        out,
        "\nsubscription delivery latency, 2000 changes at 2000/s (us):".into(),
    )?;
    for (name, fsync) in [
        ("always", FsyncPolicy::Always),
        ("batch 10 ms", FsyncPolicy::Batch),
    ] {
        let l = subscription_latency(&opts.dir.join("subscribe"), fsync, 2000)?;
        w(
            out,
            format!(
                "  {name:<12} p50 {:.0} p99 {:.0} p999 {:.0}",
                l.p50_us, l.p99_us, l.p999_us
            ),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{abba_ratios, fastest_blocks, Opens};

    /// Block times of `runs` runs of [`super::put_vs_append`] (engine first in even runs): the
    /// engine takes `engine` (+ `drain`), the append `append`, and `extra` is added to every
    /// other block, starting with the first when `from_first`.
    fn blocks(
        runs: usize,
        engine: f64,
        drain: f64,
        append: f64,
        extra: f64,
        from_first: bool,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut p, mut d, mut a) = (vec![], vec![], vec![]);
        for run in 0..runs {
            let engine_slot = if run.is_multiple_of(2) {
                2 * run
            } else {
                2 * run + 1
            };
            let append_slot = if run.is_multiple_of(2) {
                2 * run + 1
            } else {
                2 * run
            };
            let hit = |slot: usize| {
                if slot.is_multiple_of(2) == from_first {
                    extra
                } else {
                    0.0
                }
            };
            p.push(engine + hit(engine_slot));
            d.push(drain);
            a.push(append + hit(append_slot));
        }
        (p, d, a)
    }

    #[test]
    fn full_replays_are_compared_with_raw_reads_timed_next_to_them_in_pairs_of_runs() {
        // The disk slows down after the second run: each pair of replays is as fast as its
        // raw reads, which the medians of the two taken apart would not show; within a pair,
        // whichever reads second is slower, and the pair's sums even that out. A fifth run
        // without its pair is left out; a single run is its own pair.
        let o = Opens {
            cold: vec![0.2, 0.3, 0.6, 0.4, 9.0],
            warm: vec![0.1, 0.1],
            report: None,
            raw_cold: vec![0.3, 0.2, 0.4, 0.6, 1.0],
            raw_warm: vec![0.05, 0.025],
        };
        let (cold, warm) = o.paired_ratios();
        assert_eq!(cold, vec![1.0, 1.0]);
        assert_eq!(warm, vec![(0.05 + 0.025) / (0.1 + 0.1)]);
        let one = Opens {
            cold: vec![0.4],
            raw_cold: vec![0.2],
            ..Opens::default()
        };
        assert_eq!(one.paired_ratios().0, vec![0.5]);
    }

    #[test]
    fn pairs_of_runs_give_both_sides_the_same_disturbance() {
        let (p, d, a) = blocks(5, 100.0, 10.0, 100.0, 0.0, true);
        let (full, puts) = abba_ratios(&p, &d, &a);
        // Five runs make two pairs: the last run is left out.
        assert_eq!(full, vec![1.1, 1.1]);
        assert_eq!(puts, vec![1.0, 1.0]);

        // A disturbance every other block: per run, the ratios split by the run's parity, and
        // which runs are high depends on where the disturbance started; per pair, they do not.
        let (p0, d0, a0) = blocks(4, 100.0, 10.0, 100.0, 60.0, true);
        let (p1, d1, a1) = blocks(4, 100.0, 10.0, 100.0, 60.0, false);
        let per_run = |p: &[f64], d: &[f64], a: &[f64]| -> Vec<f64> {
            (0..p.len()).map(|i| (p[i] + d[i]) / a[i]).collect()
        };
        assert!(per_run(&p0, &d0, &a0)[0] > 1.5 && per_run(&p1, &d1, &a1)[0] < 0.8);
        let (f0, _) = abba_ratios(&p0, &d0, &a0);
        let (f1, _) = abba_ratios(&p1, &d1, &a1);
        assert_eq!(f0, f1);
        // Both sides got one disturbed block in each pair: (2 * 110 + 60) / (2 * 100 + 60).
        assert!(
            f0.iter().all(|r| (r - 280.0 / 260.0).abs() < 1e-12),
            "{f0:?}"
        );
    }

    #[test]
    fn the_fastest_blocks_count_the_drain_and_leave_out_the_disturbed_ones() {
        let (p, d, a) = blocks(4, 100.0, 10.0, 100.0, 60.0, true);
        assert_eq!(fastest_blocks(&p, &d, &a), Some((110.0, 100.0, 1.1)));
        // The drain of the fastest put block counts, not the smallest drain of another block.
        let (p, d, a) = (vec![100.0, 90.0], vec![0.0, 30.0], vec![100.0, 100.0]);
        assert_eq!(fastest_blocks(&p, &d, &a), Some((100.0, 100.0, 1.0)));
        assert_eq!(fastest_blocks(&[], &[], &[]), None);
    }
}
