//! `walctl bench`: WAL append and replay figures next to physical baselines measured in the same
//! run, on the same directory, so every result is a ratio.
//!
//! Baselines:
//! - `always`: a `pwrite` + `fdatasync` loop of one record's size into a file that was already
//!   written (zero-filled and fsynced): the best a durable append can do on this disk.
//! - `batch`/`never`: 1 MiB sequential `pwrite`s into a preallocated file, no fsync.
//! - replay: plain 1 MiB sequential reads of the same segment files.
//!
//! Before each read measurement the page cache is dropped when the process may (root); otherwise
//! both reads run warm and the report says so.

use crate::{CmdResult, Failure};
use seglog::wal::{Entry, FsyncPolicy, LogView, StdIo, Wal, WalConfig};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Fsync policy of the WAL under test.
    pub fsync: FsyncPolicy,
    /// Flusher interval for `batch`.
    pub interval_ms: u64,
    /// Concurrent appenders.
    pub writers: usize,
    /// Value bytes per record.
    pub record_size: usize,
    /// Records in total (split across writers).
    pub records: u64,
    /// Directory to work in (created; `wal/` and `baseline.dat` inside are replaced).
    pub dir: PathBuf,
    /// WAL segment size.
    pub segment_size: u64,
    /// Also measure replay of the written log.
    pub replay: bool,
    /// Print JSON instead of a table.
    pub json: bool,
    /// I/O backend of the WAL under test.
    pub io: seglog::wal::IoChoice,
    /// O_DIRECT for the active segment.
    pub direct: bool,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
}

pub(crate) fn percentiles(mut ns: Vec<u64>) -> Latency {
    if ns.is_empty() {
        return Latency::default();
    }
    ns.sort_unstable();
    let at = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    Latency {
        p50_us: at(0.50),
        p99_us: at(0.99),
        p999_us: at(0.999),
    }
}

/// Result of one append run.
#[derive(Debug, Clone)]
pub struct AppendResult {
    /// Appends per second.
    pub appends_per_sec: f64,
    /// Payload MB/s (values only).
    pub mb_per_sec: f64,
    /// Per-append latency.
    pub latency: Latency,
    /// fdatasyncs issued.
    pub fsyncs: u64,
    /// The backend that ran it.
    pub backend: &'static str,
}

/// Result of the raw baseline for appends.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// What it is.
    pub what: String,
    /// Operations (records) per second.
    pub ops_per_sec: f64,
    /// MB/s.
    pub mb_per_sec: f64,
    /// Per-operation latency.
    pub latency: Latency,
}

/// Result of the replay measurement.
#[derive(Debug, Clone)]
pub struct ReplayResult {
    /// Records read.
    pub records: u64,
    /// Bytes of segment files.
    pub bytes: u64,
    /// Replay MB/s (segment bytes / time).
    pub mb_per_sec: f64,
    /// Raw sequential read MB/s of the same files.
    pub raw_mb_per_sec: f64,
    /// True when the page cache was dropped before each read.
    pub cold: bool,
    /// Raw sequential read of the same files through io_uring, 4 reads of 1 MiB in flight, MB/s.
    pub uring_raw_mb_per_sec: Option<f64>,
}

pub(crate) fn err(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Error(format!("{what}: {e}"))
}

/// Drops the page cache (root only). Returns whether it did.
pub fn drop_caches() -> bool {
    sync_disks();
    fs::write("/proc/sys/vm/drop_caches", b"3\n").is_ok()
}

/// Writes every dirty page of the machine back, so that a timed block does not pay for the
/// writeback of the one before.
pub fn sync_disks() {
    // SAFETY: sync() takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Touches `bytes` of fresh memory, then frees it. A virtual machine may hand freed memory
/// back to its host (free page reporting), and the guest's next use of it then faults on
/// the host: a block of puts that happened to get such memory for its page cache ran up to
/// twice as slow, whichever side it timed. Done before each timed block, so that both sides
/// start from memory the host backs.
pub fn prefault_memory(bytes: usize) {
    let mut v = vec![0u8; bytes];
    for b in v.iter_mut().step_by(4096) {
        *b = 1;
    }
    std::hint::black_box(&v);
}

/// `pwrite` + `fdatasync` of `size` bytes, `iters` times, into an already written file.
pub fn baseline_fdatasync(path: &Path, size: usize, iters: u64) -> Result<Baseline, Failure> {
    let total = (size as u64 * iters).div_ceil(1 << 20) * (1 << 20);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| err("create baseline file", e))?;
    let zeros = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < total {
        f.write_all_at(&zeros, off)
            .map_err(|e| err("write baseline file", e))?;
        off += zeros.len() as u64;
    }
    f.sync_all().map_err(|e| err("fsync baseline file", e))?;
    let buf = vec![0x5au8; size];
    let mut lat = Vec::with_capacity(iters as usize);
    let t = Instant::now();
    for i in 0..iters {
        let s = Instant::now();
        f.write_all_at(&buf, i * size as u64)
            .map_err(|e| err("write baseline file", e))?;
        f.sync_data()
            .map_err(|e| err("fdatasync baseline file", e))?;
        lat.push(s.elapsed().as_nanos() as u64);
    }
    let secs = t.elapsed().as_secs_f64();
    drop(f);
    fs::remove_file(path).map_err(|e| err("remove baseline file", e))?;
    Ok(Baseline {
        what: "pwrite+fdatasync into a preallocated (written) file".into(),
        ops_per_sec: iters as f64 / secs,
        mb_per_sec: (iters * size as u64) as f64 / secs / 1e6,
        latency: percentiles(lat),
    })
}

/// 1 MiB sequential writes of `total` bytes into a preallocated file, no fsync.
pub fn baseline_buffered(path: &Path, total: u64, record_size: usize) -> Result<Baseline, Failure> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| err("create baseline file", e))?;
    let total = total.max(1 << 20);
    // Same preallocation as the WAL's segments under `never`.
    // SAFETY: fallocate reads only its integer arguments; the descriptor is open.
    let rc = unsafe {
        libc::fallocate(
            std::os::unix::io::AsRawFd::as_raw_fd(&f),
            0,
            0,
            total as libc::off_t,
        )
    };
    if rc != 0 {
        tracing::info!(
            "fallocate refused for the baseline file: measuring writes into a growing file"
        );
    }
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut off = 0;
    while off < total {
        f.write_all_at(&buf, off)
            .map_err(|e| err("write baseline file", e))?;
        off += buf.len() as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    drop(f);
    fs::remove_file(path).map_err(|e| err("remove baseline file", e))?;
    let mb = total as f64 / secs / 1e6;
    Ok(Baseline {
        what: "1 MiB sequential pwrite into a preallocated file, no fsync".into(),
        ops_per_sec: total as f64 / secs / record_size.max(1) as f64,
        mb_per_sec: mb,
        latency: Latency::default(),
    })
}

/// Runs the WAL append workload in `dir` (a fresh log).
pub fn run_appends(dir: &Path, opts: &BenchOptions) -> Result<AppendResult, Failure> {
    let config = WalConfig {
        fsync: opts.fsync,
        fsync_interval_ms: opts.interval_ms,
        segment_size_bytes: opts.segment_size,
        io: opts.io,
        direct_io: opts.direct,
        ..WalConfig::default()
    };
    let wal = Wal::open(dir, config)?;
    let writers = opts.writers.max(1);
    let per = opts.records / writers as u64;
    let total = per * writers as u64;
    let value = vec![0x42u8; opts.record_size];
    // Timing every append costs two clock reads (~40 ns), a fifth of a 100-byte `never`
    // append: above a million records every 16th append is timed instead.
    let sample_mask: u64 = if total > 1_000_000 { 15 } else { 0 };
    let start = std::sync::Barrier::new(writers + 1);
    let (lats, secs) = std::thread::scope(|s| -> Result<(Vec<u64>, f64), Failure> {
        let handles: Vec<_> = (0..writers)
            .map(|_| {
                let (wal, value, start) = (&wal, &value, &start);
                s.spawn(move || -> Result<Vec<u64>, seglog::wal::Error> {
                    let mut lat = Vec::with_capacity((per / (sample_mask + 1)) as usize + 1);
                    start.wait();
                    for i in 0..per {
                        let entry = Entry {
                            kind: 0,
                            key: b"",
                            value,
                        };
                        if i & sample_mask == 0 {
                            let t = Instant::now();
                            wal.append(entry)?;
                            lat.push(t.elapsed().as_nanos() as u64);
                        } else {
                            wal.append(entry)?;
                        }
                    }
                    Ok(lat)
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        let mut all = Vec::with_capacity(total as usize);
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| Failure::Error("a bench writer panicked".into()))??,
            );
        }
        // Count until the policy's promise is kept for every record: durable for always and
        // batch, handed to the OS for never.
        match opts.fsync {
            FsyncPolicy::Never => wal.flush().map(|_| ())?,
            _ => wal.sync().map(|_| ())?,
        }
        Ok((all, t0.elapsed().as_secs_f64()))
    })?;
    let stats = wal.stats();
    wal.close()?;
    Ok(AppendResult {
        appends_per_sec: total as f64 / secs,
        mb_per_sec: (total * opts.record_size as u64) as f64 / secs / 1e6,
        latency: percentiles(lats),
        fsyncs: stats.fsyncs,
        backend: stats.backend,
    })
}

pub(crate) fn segment_files(dir: &Path) -> Result<(Vec<PathBuf>, u64), Failure> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| err("list", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    let bytes = files
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    Ok((files, bytes))
}

/// Replays the log in `dir` through the WAL reader and reads its files raw, both cold when the
/// page cache can be dropped.
pub fn run_replay(dir: &Path) -> Result<ReplayResult, Failure> {
    let (files, bytes) = segment_files(dir)?;
    let cold = drop_caches();
    if !cold {
        // Warm both runs alike.
        raw_read(&files)?;
    }
    let t = Instant::now();
    let view = LogView::open(Arc::new(StdIo::default()), dir)?;
    let mut records = 0u64;
    let mut sum = 0u64;
    for r in view.reader(1) {
        let r = r?;
        records += 1;
        sum = sum.wrapping_add(r.value.len() as u64);
    }
    let replay_secs = t.elapsed().as_secs_f64();
    std::hint::black_box(sum);
    if cold {
        drop_caches();
    }
    let t = Instant::now();
    raw_read(&files)?;
    let raw_secs = t.elapsed().as_secs_f64();
    if cold {
        drop_caches();
    }
    let t = Instant::now();
    let uring_raw_mb_per_sec = match uring_read(&files, 4) {
        Ok(_) => Some(bytes as f64 / t.elapsed().as_secs_f64() / 1e6),
        Err(e) => {
            tracing::info!(error = %e, "io_uring read not measured");
            None
        }
    };
    Ok(ReplayResult {
        records,
        bytes,
        mb_per_sec: bytes as f64 / replay_secs / 1e6,
        raw_mb_per_sec: bytes as f64 / raw_secs / 1e6,
        cold,
        uring_raw_mb_per_sec,
    })
}

/// Reads the files sequentially through io_uring with `depth` 1 MiB reads in flight: the
/// candidate read path for replay, measured against `pread` + `posix_fadvise`.
fn uring_read(files: &[PathBuf], depth: usize) -> std::io::Result<u64> {
    use io_uring::{opcode, types, IoUring};
    use std::os::unix::io::AsRawFd;
    const CHUNK: usize = 1 << 20;
    let mut ring = IoUring::new(depth as u32 * 2)?;
    let mut bufs: Vec<Vec<u8>> = (0..depth).map(|_| vec![0u8; CHUNK]).collect();
    let mut total = 0u64;
    for p in files {
        let f = File::open(p)?;
        let len = f.metadata()?.len();
        let fd = types::Fd(f.as_raw_fd());
        let mut next = 0u64;
        let mut in_flight = 0usize;
        let mut free: Vec<usize> = (0..depth).collect();
        loop {
            while next < len {
                let Some(slot) = free.pop() else { break };
                let e = opcode::Read::new(fd, bufs[slot].as_mut_ptr(), CHUNK as u32)
                    .offset(next)
                    .build()
                    .user_data(slot as u64);
                // SAFETY: bufs[slot] is not touched again until its completion is reaped below,
                // and `bufs` outlives every read (all are reaped before this function returns);
                // the ring has room for `depth` entries.
                unsafe { ring.submission().push(&e) }
                    .map_err(|_| std::io::Error::other("submission queue full"))?;
                next += CHUNK as u64;
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            ring.submit_and_wait(1)?;
            let done: Vec<(u64, i32)> = ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (slot, res) in done {
                if res < 0 {
                    return Err(std::io::Error::from_raw_os_error(-res));
                }
                total += res as u64;
                free.push(slot as usize);
                in_flight -= 1;
            }
        }
    }
    Ok(total)
}

pub(crate) fn raw_read(files: &[PathBuf]) -> Result<u64, Failure> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    for p in files {
        let mut f = File::open(p).map_err(|e| err("open", e))?;
        loop {
            let n = f.read(&mut buf).map_err(|e| err("read", e))?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok(total)
}

/// Everything one `walctl bench` run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Options used.
    pub opts: BenchOptions,
    /// The WAL.
    pub append: AppendResult,
    /// The physical baseline for appends.
    pub baseline: Baseline,
    /// Replay, when measured.
    pub replay: Option<ReplayResult>,
}

/// Runs the whole benchmark.
pub fn measure(opts: &BenchOptions) -> Result<Report, Failure> {
    fs::create_dir_all(&opts.dir).map_err(|e| err("create bench directory", e))?;
    let wal_dir = opts.dir.join("wal");
    if wal_dir.exists() {
        fs::remove_dir_all(&wal_dir).map_err(|e| err("clear bench directory", e))?;
    }
    let base_path = opts.dir.join("baseline.dat");
    let baseline = match opts.fsync {
        FsyncPolicy::Always => {
            baseline_fdatasync(&base_path, opts.record_size + 32, opts.records.min(5000))?
        }
        _ => baseline_buffered(
            &base_path,
            opts.records * seglog::wal::format::frame_size(0, opts.record_size) as u64,
            opts.record_size,
        )?,
    };
    let append = run_appends(&wal_dir, opts)?;
    let replay = if opts.replay {
        Some(run_replay(&wal_dir)?)
    } else {
        None
    };
    Ok(Report {
        opts: opts.clone(),
        append,
        baseline,
        replay,
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Prints a report as a table.
pub fn print_table(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let o = &r.opts;
    writeln!(
        out,
        "walctl bench: fsync={:?} writers={} record_size={}B records={} segment_size={} dir={}",
        o.fsync,
        o.writers,
        o.record_size,
        o.records,
        o.segment_size,
        o.dir.display()
    )?;
    writeln!(out, "baseline: {}", r.baseline.what)?;
    writeln!(
        out,
        "{:<22} {:>14} {:>14} {:>8}",
        "figure", "seglog", "baseline", "ratio"
    )?;
    let a = &r.append;
    let b = &r.baseline;
    match o.fsync {
        FsyncPolicy::Always => {
            writeln!(
                out,
                "{:<22} {:>14.0} {:>14.0} {:>7.2}x",
                "appends/s",
                a.appends_per_sec,
                b.ops_per_sec,
                ratio(a.appends_per_sec, b.ops_per_sec)
            )?;
            writeln!(
                out,
                "{:<22} {:>14.2} {:>14.2} {:>7.2}x",
                "MB/s",
                a.mb_per_sec,
                b.mb_per_sec,
                ratio(a.mb_per_sec, b.mb_per_sec)
            )?;
            for (name, x, y) in [
                ("p50 latency us", a.latency.p50_us, b.latency.p50_us),
                ("p99 latency us", a.latency.p99_us, b.latency.p99_us),
                ("p999 latency us", a.latency.p999_us, b.latency.p999_us),
            ] {
                writeln!(out, "{name:<22} {x:>14.1} {y:>14.1} {:>7.2}x", ratio(x, y))?;
            }
        }
        _ => {
            writeln!(
                out,
                "{:<22} {:>14.0} {:>14} {:>8}",
                "appends/s", a.appends_per_sec, "-", "-"
            )?;
            writeln!(
                out,
                "{:<22} {:>14.2} {:>14.2} {:>7.2}x",
                "MB/s",
                a.mb_per_sec,
                b.mb_per_sec,
                ratio(a.mb_per_sec, b.mb_per_sec)
            )?;
            writeln!(
                out,
                "{:<22} {:>14.1} {:>14} {:>8}",
                "p50 latency us", a.latency.p50_us, "-", "-"
            )?;
            writeln!(
                out,
                "{:<22} {:>14.1} {:>14} {:>8}",
                "p99 latency us", a.latency.p99_us, "-", "-"
            )?;
            writeln!(
                out,
                "{:<22} {:>14.1} {:>14} {:>8}",
                "p999 latency us", a.latency.p999_us, "-", "-"
            )?;
        }
    }
    writeln!(out, "{:<22} {:>14}", "fdatasyncs", a.fsyncs)?;
    if let Some(p) = &r.replay {
        writeln!(out, "replay of {} records, {:.1} MiB ({} page cache); baseline: raw 1 MiB sequential read of the same files", p.records, p.bytes as f64 / (1u64 << 20) as f64, if p.cold { "cold" } else { "warm" })?;
        writeln!(
            out,
            "{:<22} {:>14.1} {:>14.1} {:>7.2}x",
            "replay MB/s",
            p.mb_per_sec,
            p.raw_mb_per_sec,
            ratio(p.mb_per_sec, p.raw_mb_per_sec)
        )?;
        if let Some(u) = p.uring_raw_mb_per_sec {
            writeln!(
                out,
                "{:<22} {:>14.1} {:>14.1} {:>7.2}x",
                "io_uring QD4 read MB/s",
                u,
                p.raw_mb_per_sec,
                ratio(u, p.raw_mb_per_sec)
            )?;
        }
    }
    Ok(())
}

/// Prints a report as one JSON object.
pub fn print_json(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let o = &r.opts;
    let lat = |l: &Latency| serde_json::json!({"p50_us": l.p50_us, "p99_us": l.p99_us, "p999_us": l.p999_us});
    let mut v = serde_json::json!({
        "fsync": format!("{:?}", o.fsync).to_lowercase(),
        "writers": o.writers,
        "record_size": o.record_size,
        "records": o.records,
        "append": {"appends_per_sec": r.append.appends_per_sec, "mb_per_sec": r.append.mb_per_sec, "latency": lat(&r.append.latency), "fdatasyncs": r.append.fsyncs},
        "baseline": {"what": r.baseline.what, "ops_per_sec": r.baseline.ops_per_sec, "mb_per_sec": r.baseline.mb_per_sec, "latency": lat(&r.baseline.latency)},
        "ratio_mb_per_sec": ratio(r.append.mb_per_sec, r.baseline.mb_per_sec),
    });
    if let Some(p) = &r.replay {
        v["replay"] = serde_json::json!({"records": p.records, "bytes": p.bytes, "mb_per_sec": p.mb_per_sec, "raw_mb_per_sec": p.raw_mb_per_sec, "ratio": ratio(p.mb_per_sec, p.raw_mb_per_sec), "cold_cache": p.cold});
    }
    writeln!(out, "{v}")
}

/// `walctl bench`.
pub fn run(opts: &BenchOptions, out: &mut dyn Write) -> CmdResult {
    let r = measure(opts)?;
    if opts.json {
        print_json(&r, out)?;
    } else {
        print_table(&r, out)?;
    }
    Ok(())
}

/// One target of issue 2's benchmark list, measured `runs` times.
#[derive(Debug, Clone)]
pub struct TargetRow {
    /// What is measured.
    pub name: &'static str,
    /// The figure per run (appends/s or MB/s).
    pub values: Vec<f64>,
    /// The same-run baseline per run.
    pub baselines: Vec<f64>,
    /// What the baseline is.
    pub baseline_what: &'static str,
    /// Required ratio (figure / baseline) or absolute figure.
    pub target: Target,
}

/// A target: a minimum ratio to the same-run baseline, or a minimum absolute figure.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// figure / baseline at least this.
    Ratio(f64),
    /// figure at least this.
    Absolute(f64),
}

/// The median of `v` (0 when empty): of an even count, the mean of the two middle values, so
/// that neither a time (lower is better) nor a ratio to a baseline (either way) is read
/// from the more favourable of the two.
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => 0.0,
        n if !n.is_multiple_of(2) => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

impl TargetRow {
    /// Median of the per-run ratios (figure / same-run baseline).
    pub fn median_ratio(&self) -> f64 {
        let r: Vec<f64> = self
            .values
            .iter()
            .zip(&self.baselines)
            .map(|(a, b)| ratio(*a, *b))
            .collect();
        median(&r)
    }
    /// True when the median meets the target.
    pub fn met(&self) -> bool {
        match self.target {
            Target::Ratio(x) => self.median_ratio() >= x,
            Target::Absolute(x) => median(&self.values) >= x,
        }
    }
}

fn opts(
    dir: &Path,
    fsync: FsyncPolicy,
    writers: usize,
    record_size: usize,
    records: u64,
) -> BenchOptions {
    BenchOptions {
        fsync,
        interval_ms: 10,
        writers,
        record_size,
        records,
        dir: dir.to_path_buf(),
        segment_size: 64 << 20,
        replay: false,
        json: false,
        io: seglog::wal::IoChoice::Auto,
        direct: false,
    }
}

/// Runs every target `runs` times, each repetition measuring its baselines in the same run.
pub fn measure_targets(
    dir: &Path,
    runs: usize,
    replay_bytes: u64,
    mut progress: impl FnMut(&str),
) -> Result<Vec<TargetRow>, Failure> {
    fs::create_dir_all(dir).map_err(|e| err("create bench directory", e))?;
    let wal_dir = dir.join("wal");
    let base = dir.join("baseline.dat");
    // Clears the log of the previous phase and lets the disk settle (writeback of earlier
    // phases, extent freeing) so that no phase pays for the one before.
    let fresh = |p: &Path| -> Result<(), Failure> {
        if p.exists() {
            fs::remove_dir_all(p).map_err(|e| err("clear bench directory", e))?;
        }
        // SAFETY: sync() takes no arguments and cannot fail.
        unsafe { libc::sync() };
        Ok(())
    };
    let mut rows = vec![
        TargetRow {
            name: "always, 1 writer, 1 KiB: appends/s",
            values: vec![],
            baselines: vec![],
            baseline_what: "pwrite+fdatasync of 1 KiB into a written file, /s",
            target: Target::Ratio(0.9),
        },
        TargetRow {
            name: "always, 64 writers, 1 KiB: appends/s",
            values: vec![],
            baselines: vec![],
            baseline_what: "seglog always, 1 writer, same run, appends/s",
            target: Target::Ratio(10.0),
        },
        TargetRow {
            name: "batch 10 ms, 4 writers, 1 KiB: appends/s",
            values: vec![],
            baselines: vec![],
            baseline_what: "1 MiB sequential pwrite, records/s equivalent",
            target: Target::Absolute(500_000.0),
        },
        TargetRow {
            name: "never, 1 writer, 100 B: appends/s",
            values: vec![],
            baselines: vec![],
            baseline_what: "1 MiB sequential pwrite, records/s equivalent",
            target: Target::Absolute(5_000_000.0),
        },
        TargetRow {
            name: "replay: MB/s",
            values: vec![],
            baselines: vec![],
            baseline_what: "raw 1 MiB sequential read of the same files, MB/s",
            target: Target::Ratio(0.8),
        },
    ];
    let replay_records = replay_bytes / (seglog::wal::format::frame_size(0, 1024) as u64);
    for run in 1..=runs {
        progress(&format!("run {run}/{runs}: always x1"));
        fresh(&wal_dir)?;
        let b = baseline_fdatasync(&base, 1024 + 32, 3000)?;
        let a1 = run_appends(&wal_dir, &opts(dir, FsyncPolicy::Always, 1, 1024, 3000))?;
        rows[0].values.push(a1.appends_per_sec);
        rows[0].baselines.push(b.ops_per_sec);

        progress(&format!("run {run}/{runs}: always x64"));
        fresh(&wal_dir)?;
        let a64 = run_appends(&wal_dir, &opts(dir, FsyncPolicy::Always, 64, 1024, 128_000))?;
        rows[1].values.push(a64.appends_per_sec);
        rows[1].baselines.push(a1.appends_per_sec);

        progress(&format!("run {run}/{runs}: batch x4"));
        fresh(&wal_dir)?;
        let n = 2_000_000;
        let bb = baseline_buffered(
            &base,
            n * seglog::wal::format::frame_size(0, 1024) as u64,
            seglog::wal::format::frame_size(0, 1024),
        )?;
        let ab = run_appends(&wal_dir, &opts(dir, FsyncPolicy::Batch, 4, 1024, n))?;
        rows[2].values.push(ab.appends_per_sec);
        rows[2].baselines.push(bb.ops_per_sec);

        progress(&format!("run {run}/{runs}: never x1"));
        fresh(&wal_dir)?;
        let n = 10_000_000;
        let bn = baseline_buffered(
            &base,
            n * seglog::wal::format::frame_size(0, 100) as u64,
            seglog::wal::format::frame_size(0, 100),
        )?;
        let an = run_appends(&wal_dir, &opts(dir, FsyncPolicy::Never, 1, 100, n))?;
        rows[3].values.push(an.appends_per_sec);
        rows[3].baselines.push(bn.ops_per_sec);

        progress(&format!("run {run}/{runs}: replay"));
        fresh(&wal_dir)?;
        run_appends(
            &wal_dir,
            &opts(dir, FsyncPolicy::Never, 1, 1024, replay_records),
        )?;
        let r = run_replay(&wal_dir)?;
        rows[4].values.push(r.mb_per_sec);
        rows[4].baselines.push(r.raw_mb_per_sec);
    }
    fresh(&wal_dir)?;
    Ok(rows)
}

/// Prints the targets table (Markdown, ready for docs/benchmarks.md).
pub fn print_targets(rows: &[TargetRow], cold: bool, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "page cache before replay: {}",
        if cold {
            "dropped (cold)"
        } else {
            "not droppable here (warm)"
        }
    )?;
    writeln!(
        out,
        "| figure | runs | median | same-run baseline (median) | median ratio | target | met |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---|---|")?;
    for r in rows {
        let runs: Vec<String> = r.values.iter().map(|v| format!("{v:.0}")).collect();
        let target = match r.target {
            Target::Ratio(x) => format!(">= {x}x"),
            Target::Absolute(x) => format!(">= {x:.0}"),
        };
        writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} ({}) | {:.2}x | {} | {} |",
            r.name,
            runs.join(", "),
            median(&r.values),
            median(&r.baselines),
            r.baseline_what,
            r.median_ratio(),
            target,
            if r.met() { "yes" } else { "NO" }
        )?;
    }
    Ok(())
}

/// One cell of the backend matrix.
#[derive(Debug, Clone)]
pub struct MatrixCell {
    /// Fsync policy.
    pub fsync: FsyncPolicy,
    /// Concurrent appenders.
    pub writers: usize,
    /// Value bytes.
    pub record_size: usize,
    /// O_DIRECT.
    pub direct: bool,
    /// std appends/s, per run.
    pub std: Vec<f64>,
    /// io_uring appends/s, per run.
    pub uring: Vec<f64>,
}

impl MatrixCell {
    /// Median io_uring / median std.
    pub fn ratio(&self) -> f64 {
        ratio(median(&self.uring), median(&self.std))
    }
}

/// Records per cell: enough for a stable rate, bounded in bytes and time.
fn matrix_records(fsync: FsyncPolicy, writers: usize, size: usize) -> u64 {
    match fsync {
        FsyncPolicy::Always => (600 * writers as u64).clamp(1000, 12_000),
        _ => ((96u64 << 20) / (size as u64 + 32)).min(400_000),
    }
}

/// Runs the full backend matrix `runs` times; std and io_uring back to back in each cell,
/// alternating which goes first.
pub fn measure_matrix(
    dir: &Path,
    runs: usize,
    mut progress: impl FnMut(&str),
) -> Result<Vec<MatrixCell>, Failure> {
    fs::create_dir_all(dir).map_err(|e| err("create bench directory", e))?;
    let wal_dir = dir.join("wal");
    let mut cells = Vec::new();
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Batch, FsyncPolicy::Never] {
        for direct in [false, true] {
            for writers in [1usize, 4, 16, 64] {
                for size in [128usize, 1024, 4096] {
                    cells.push(MatrixCell {
                        fsync,
                        writers,
                        record_size: size,
                        direct,
                        std: vec![],
                        uring: vec![],
                    });
                }
            }
        }
    }
    let total = cells.len();
    for run in 0..runs {
        for (i, c) in cells.iter_mut().enumerate() {
            progress(&format!(
                "run {}/{runs} cell {}/{total}: {:?} x{} {}B{}",
                run + 1,
                i + 1,
                c.fsync,
                c.writers,
                c.record_size,
                if c.direct { " direct" } else { "" }
            ));
            let records = matrix_records(c.fsync, c.writers, c.record_size);
            let order = if (run + i) % 2 == 0 {
                [seglog::wal::IoChoice::Std, seglog::wal::IoChoice::IoUring]
            } else {
                [seglog::wal::IoChoice::IoUring, seglog::wal::IoChoice::Std]
            };
            for io in order {
                if wal_dir.exists() {
                    fs::remove_dir_all(&wal_dir).map_err(|e| err("clear bench directory", e))?;
                }
                // SAFETY: sync() takes no arguments and cannot fail.
                unsafe { libc::sync() };
                let o = BenchOptions {
                    io,
                    direct: c.direct,
                    ..opts(dir, c.fsync, c.writers, c.record_size, records)
                };
                let r = run_appends(&wal_dir, &o)?;
                match io {
                    seglog::wal::IoChoice::Std => c.std.push(r.appends_per_sec),
                    _ => c.uring.push(r.appends_per_sec),
                }
            }
        }
    }
    if wal_dir.exists() {
        fs::remove_dir_all(&wal_dir).map_err(|e| err("clear bench directory", e))?;
    }
    Ok(cells)
}

/// Geometric mean of io_uring/std ratios over the cells of one policy.
pub fn policy_ratio(cells: &[MatrixCell], fsync: FsyncPolicy) -> f64 {
    let rs: Vec<f64> = cells
        .iter()
        .filter(|c| c.fsync == fsync)
        .map(|c| c.ratio().max(1e-9).ln())
        .collect();
    if rs.is_empty() {
        return 1.0;
    }
    (rs.iter().sum::<f64>() / rs.len() as f64).exp()
}

/// Prints the matrix as Markdown.
pub fn print_matrix(cells: &[MatrixCell], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "| fsync | mode | writers | record | std appends/s | io_uring appends/s | io_uring / std |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|")?;
    for c in cells {
        writeln!(
            out,
            "| {:?} | {} | {} | {} B | {:.0} | {:.0} | {:.2}x |",
            c.fsync,
            if c.direct { "O_DIRECT" } else { "buffered" },
            c.writers,
            c.record_size,
            median(&c.std),
            median(&c.uring),
            c.ratio()
        )?;
    }
    writeln!(out)?;
    for p in [FsyncPolicy::Always, FsyncPolicy::Batch, FsyncPolicy::Never] {
        writeln!(
            out,
            "geometric mean io_uring/std for {p:?}: {:.3}x",
            policy_ratio(cells, p)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
