//! The log writer: appends, group commit, segment rolls, the flusher, poisoning, recovery on open.
//!
//! # Group commit
//! Appenders encode their frames under the state mutex into one shared `pending` buffer (the
//! chain crc makes encoding inherently sequential). One thread at a time is the **leader**: it
//! takes the whole `pending` buffer, `pwrite`s it and fdatasyncs, outside the mutex, then
//! publishes the new watermarks. An appender that needs its record durable either becomes the
//! leader (nobody leads) or waits on the *ack* condvar, checking only atomic watermarks, so
//! finished waiters never touch the state mutex. While it has work and others wait, the leader
//! keeps leading (up to [`MAX_LEAD_ROUNDS`] rounds) instead of handing off: the thread that is
//! already running starts the next write+fdatasync at once, covering everything appended during
//! the previous one. With one appender this is exactly `pwrite` + `fdatasync`, no hand-off.
//!
//! # Invariants
//! - Bytes are written in LSN order (one leader at a time), so `written_lsn` is a prefix.
//! - `durable_lsn <= written_lsn <= last assigned LSN`; both only grow, and only at the end of a
//!   batch (pending never ends inside a batch because a batch is encoded in one critical section).
//! - A segment is sealed (footer written, file cut to size, fsynced) before the next one is
//!   created; the roll holds the mutex and waits for the leader's I/O in flight to finish.
//! - After any failed write or fsync the log is poisoned: every later operation that writes
//!   returns [`Error::Poisoned`] until the log is reopened. No fsync is retried.
//! - The durable point in the active segment's header (`format::DurablePoint`, where the next
//!   recovery starts its scan) is written only after the fdatasync covering every frame before
//!   it returned, by the leader in the same I/O round; a failure to write it poisons the log.

use crate::config::{Durability, FsyncPolicy, RecoveryMode, WalConfig};
use crate::dir::{self, LogView, CLOSED_FILE, SPARE_FILE};
use crate::error::{Error, Result};
use crate::format::{
    self, ClosedMarker, DurablePoint, Entry, Location, Record, SegmentFooter, SegmentHeader,
    DURABLE_LEN, FOOTER_LEN, HDR_DURABLE, HEADER_LEN, MAX_KEY_LEN,
};
use crate::io::{create_dir_durable, DirLock, Io, IoFile, LockOutcome};
use crate::reader::{self, LiveLimit, LiveSource, TailState, WalReader};
use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
use std::any::Any;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Pending bytes at which a buffered appender writes them out without waiting for the flusher.
pub const WRITE_BUFFER_BYTES: usize = 1 << 20;
/// Most bytes of log between the durable points written into the active segment's header (an
/// eighth of the segment when that is less; see `format::DurablePoint`): after a crash,
/// recovery scans about this much of it, plus what was written since the last fdatasync.
pub const DURABLE_POINT_EVERY: u64 = 1 << 20;
/// Rounds a leader runs past its own record while others wait, before handing off.
pub const MAX_LEAD_ROUNDS: u32 = 8;
const ZERO_CHUNK: usize = 1 << 20;

/// A sealed segment as its footer describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSegment {
    /// Its first LSN (file name).
    pub first_lsn: u64,
    /// Its last LSN.
    pub last_lsn: u64,
    /// Chain value after its last record.
    pub chain_crc: u32,
    /// Its file.
    pub path: PathBuf,
}

/// Segments whose read handles `Wal::read_record` keeps open.
const READ_FILES_CACHED: usize = 64;

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// LSN of its first record.
    pub first_lsn: u64,
    /// LSN of its last record.
    pub last_lsn: u64,
    /// Where its first frame is; the others follow contiguously.
    pub location: Location,
}

/// The log's append lock, held for [`Wal::exclusive`].
pub struct Locked<'w, 'g> {
    shared: &'w Shared,
    guard: &'g mut MutexGuard<'w, State>,
    /// First and last LSN appended under this lock hold.
    appended: Option<(u64, u64)>,
}

impl Locked<'_, '_> {
    /// Appends `entries` as one atomic batch, as [`Wal::submit_batch_located`] does.
    pub fn append(&mut self, entries: &[Entry<'_>]) -> Result<Appended> {
        let (first, last, location) = self.shared.encode(self.guard, entries)?;
        let first_of_hold = self.appended.map_or(first, |(f, _)| f);
        self.appended = Some((first_of_hold, last));
        Ok(Appended {
            first_lsn: first,
            last_lsn: last,
            location,
        })
    }

    /// The attachment (see [`Wal::attach`]), when there is one of type `A`.
    pub fn attachment<A: Any>(&mut self) -> Option<&mut A> {
        self.guard.attachment.as_mut()?.downcast_mut::<A>()
    }
}

/// What recovery did when the log was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The torn tail that was cut, if any.
    pub torn_tail: Option<TornTail>,
    /// True when the directory held a `CLOSED` marker (the last run closed it cleanly).
    pub closed_cleanly: bool,
    /// True when a seal interrupted by a crash was completed.
    pub finished_seal: bool,
    /// Temporary files removed.
    pub removed_temp_files: usize,
    /// Segments after a gap in the log (a segment missing between two others, as in a copy of a
    /// live directory that missed one created while it ran) that tail-tolerant recovery set
    /// aside, as they are named now (`*.seg.dropped`). Their records are not in the log.
    pub dropped_segments: Vec<PathBuf>,
    /// Last LSN after recovery.
    pub last_lsn: u64,
}

/// A cut tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment.
    pub segment: PathBuf,
    /// Where the cut started.
    pub offset: u64,
    /// Non-zero bytes that were zeroed.
    pub bytes_cut: u64,
    /// LSNs of whole records dropped with it (an incomplete batch), if any.
    pub lsns_cut: Option<(u64, u64)>,
    /// Why the first cut frame was invalid.
    pub reason: String,
    /// True when valid records followed the bad one (only in tail-tolerant mode).
    pub valid_records_lost: bool,
}

/// Counters, cheap and always on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalStats {
    /// I/O backend in use.
    pub backend: &'static str,
    /// Records appended since open.
    pub appends: u64,
    /// Encoded bytes appended since open.
    pub bytes_appended: u64,
    /// `pwrite` calls for records.
    pub writes: u64,
    /// fdatasync calls covering records (seals not included).
    pub fsyncs: u64,
    /// Total time spent in those fdatasyncs, ns.
    pub fsync_nanos: u64,
    /// Total time spent in record writes, ns.
    pub write_nanos: u64,
    /// Segment rolls.
    pub rolls: u64,
    /// Highest LSN handed to the OS.
    pub written_lsn: u64,
    /// Highest durable LSN.
    pub durable_lsn: u64,
    /// Highest assigned LSN.
    pub last_lsn: u64,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    fsyncs: AtomicU64,
    fsync_nanos: AtomicU64,
    write_nanos: AtomicU64,
    rolls: AtomicU64,
}

struct Active {
    file: Arc<dyn IoFile>,
    path: Arc<Path>,
    first_lsn: u64,
    capacity: u64,
    /// Offset just past the last encoded frame (pending included).
    end: u64,
    /// The point just past the last frame written (the written watermark, in this segment).
    written: Option<DurablePoint>,
    /// `records_end` of the last durable point written into the header (see [`DURABLE_POINT_EVERY`]).
    marked: u64,
}

impl Active {
    /// The durable point to write into the header after an fdatasync that covered `point`,
    /// when it is [`DURABLE_POINT_EVERY`] bytes (or an eighth of the segment, when less) past
    /// the last one written.
    fn mark_due(&self, point: Option<DurablePoint>) -> Option<(DurablePoint, [u8; DURABLE_LEN])> {
        let p = point?;
        let every = DURABLE_POINT_EVERY.min(self.capacity / 8).max(1);
        if p.records_end < self.marked.saturating_add(every) {
            return None;
        }
        Some((p, p.encode(self.first_lsn)?))
    }
}

struct State {
    active: Option<Active>,
    next_lsn: u64,
    chain_crc: u32,
    pending: Vec<u8>,
    pending_last_lsn: u64,
    spare_buf: Vec<u8>,
    /// A thread is leading (writing and syncing on behalf of everyone).
    leading: bool,
    /// The leader has I/O in flight outside the mutex (a roll waits for it).
    io_in_flight: bool,
    rolling: bool,
    spare_requested: bool,
    written_lsn: u64,
    durable_lsn: u64,
    poisoned: Option<String>,
    closed: bool,
    /// Records and encoded bytes appended since open (kept here, not in atomics: the encode
    /// path already holds the mutex).
    appends: u64,
    bytes_appended: u64,
    /// The caller's state kept under this mutex (see [`Wal::attach`]).
    attachment: Option<Box<dyn Any + Send>>,
}

#[derive(Default)]
struct PrepState {
    ready: Option<Arc<dyn IoFile>>,
    busy: bool,
    wanted: bool,
    failed: Option<io::Error>,
    stop: bool,
}

struct Shared {
    dir: PathBuf,
    io: Arc<dyn Io>,
    config: WalConfig,
    durability: Durability,
    state: Mutex<State>,
    /// Signals the end of leader I/O to a roll waiting for it, and the end of a roll.
    changed: Condvar,
    /// Watermark waiters sleep here; they check only the atomics below.
    ack: Mutex<()>,
    ack_cv: Condvar,
    /// Mirrors `leading || rolling`: someone is making progress that waiters will be told of.
    busy: AtomicBool,
    /// Mirrors `poisoned.is_some()`.
    poisoned_flag: AtomicBool,
    durable: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    segments: Arc<RwLock<Vec<(u64, PathBuf)>>>,
    /// First LSN of the active segment (u64::MAX while none is active): every segment below
    /// it is sealed.
    active_first: AtomicU64,
    /// Read handles for `read_record`, by segment.
    read_files: Mutex<std::collections::HashMap<u64, Arc<dyn IoFile>>>,
    counters: Counters,
    prep: Mutex<PrepState>,
    prep_cv: Condvar,
    stop: Mutex<bool>,
    stop_cv: Condvar,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Written,
    Durable,
}

/// A segmented write-ahead log open for writing.
///
/// `Wal` is `Sync`: share it with `Arc` and append from many threads. Call [`Wal::close`] for a
/// clean shutdown; dropping it makes buffered records durable on a best-effort basis.
pub struct Wal {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    report: RecoveryReport,
    _lock: Box<dyn DirLock>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn nanos(since: Instant) -> u64 {
    since.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` on the std backend.
    pub fn open(dir: impl AsRef<Path>, config: WalConfig) -> Result<Wal> {
        let io = crate::io::open_backend(&config)?;
        Self::open_with_io(io, dir, config)
    }

    /// Opens the log in `dir` on the given I/O backend, recovering it first: a torn tail is cut
    /// and reported, an interrupted seal is completed, temporary files are removed.
    pub fn open_with_io(io: Arc<dyn Io>, dir: impl AsRef<Path>, config: WalConfig) -> Result<Wal> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        create_dir_durable(&*io, &dir).map_err(|e| Error::io("create directory", &dir, e))?;
        let lock = match io
            .lock_dir(&dir)
            .map_err(|e| Error::io("lock", dir.join(dir::LOCK_FILE), e))?
        {
            LockOutcome::Acquired(l) => l,
            LockOutcome::Held(pid) => return Err(Error::Locked { dir, pid }),
        };
        let (view, report) = recover(&io, &dir, &config)?;

        let durability = config.durability();
        let last = view.last_lsn();
        let segments: Vec<(u64, PathBuf)> = view
            .segments
            .iter()
            .map(|s| (s.first_lsn(), s.path.clone()))
            .collect();
        let active = match view.segments.last() {
            Some(s) if !s.sealed() => {
                let file = io
                    .open_rw(&s.path)
                    .map_err(|e| Error::io("open", &s.path, e))?;
                // Make the recovered prefix durable: after a process crash it may sit in the
                // page cache only, and the watermark below says it is durable.
                file.sync_data()
                    .map_err(|e| Error::io("fdatasync", &s.path, e))?;
                // That prefix is durable now: the next recovery may start where it ends.
                let point = DurablePoint {
                    records_end: s.records_end,
                    last_lsn: s.last_lsn,
                    chain_crc: view.chain_crc,
                };
                let mut marked = 0;
                if let Some(b) = point.encode(s.first_lsn()) {
                    file.write_at(&b, HDR_DURABLE as u64)
                        .map_err(|e| Error::io("write", &s.path, e))?;
                    marked = s.records_end;
                }
                Some(Active {
                    file,
                    path: s.path.clone().into(),
                    first_lsn: s.first_lsn(),
                    capacity: s.header.capacity,
                    end: s.records_end,
                    written: Some(point),
                    marked,
                })
            }
            _ => None,
        };
        let state = State {
            active,
            next_lsn: last + 1,
            chain_crc: view.chain_crc,
            pending: Vec::with_capacity(64 << 10),
            pending_last_lsn: last,
            spare_buf: Vec::with_capacity(64 << 10),
            leading: false,
            io_in_flight: false,
            rolling: false,
            spare_requested: false,
            written_lsn: last,
            durable_lsn: last,
            poisoned: None,
            closed: false,
            appends: 0,
            bytes_appended: 0,
            attachment: None,
        };
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            io,
            config,
            durability,
            state: Mutex::new(state),
            changed: Condvar::new(),
            ack: Mutex::new(()),
            ack_cv: Condvar::new(),
            busy: AtomicBool::new(false),
            poisoned_flag: AtomicBool::new(false),
            durable: Arc::new(AtomicU64::new(last)),
            written: Arc::new(AtomicU64::new(last)),
            segments: Arc::new(RwLock::new(segments)),
            read_files: Mutex::new(std::collections::HashMap::new()),
            active_first: AtomicU64::new(u64::MAX),
            counters: Counters::default(),
            prep: Mutex::new(PrepState::default()),
            prep_cv: Condvar::new(),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
        });
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("seglog-prealloc".into())
                .spawn(move || s.preparer_loop())
                .map_err(|e| Error::io("spawn preallocator thread", &dir, e))?,
        );
        let mut wal = Wal {
            shared,
            threads,
            report,
            _lock: lock,
        };
        {
            let s = &wal.shared;
            let mut g = s.state.lock();
            match &g.active {
                None => s.open_new_segment(&mut g)?,
                Some(a) => s.active_first.store(a.first_lsn, Ordering::Release),
            }
        }
        if let Durability::Batch { interval_ms } = durability {
            wal.spawn_flusher(interval_ms)?;
        } else if durability == Durability::Never {
            wal.spawn_flusher(wal.shared.config.fsync_interval_ms)?;
        }
        Ok(wal)
    }

    fn spawn_flusher(&mut self, interval_ms: u64) -> Result<()> {
        let s = self.shared.clone();
        let h = std::thread::Builder::new()
            .name("seglog-flusher".into())
            .spawn(move || s.flusher_loop(Duration::from_millis(interval_ms)))
            .map_err(|e| Error::io("spawn flusher thread", &self.shared.dir, e))?;
        self.threads.push(h);
        Ok(())
    }

    /// Appends one record and returns its LSN. Under `Always` it returns once the record is
    /// durable; under `Batch` and `Never` once it is buffered (see [`Durability`]).
    pub fn append(&self, entry: Entry<'_>) -> Result<u64> {
        self.write_entries(std::slice::from_ref(&entry), true)
            .map(|(_, last)| last)
    }

    /// Appends records atomically: after a crash either all of them are in the log or none.
    /// Returns the first and last LSN. Durability as for [`Wal::append`].
    pub fn append_batch(&self, entries: &[Entry<'_>]) -> Result<(u64, u64)> {
        self.write_entries(entries, true)
    }

    /// Assigns an LSN and buffers the record without waiting for anything, whatever the policy.
    /// Nothing is promised about the record until [`Wal::flush`], [`Wal::sync`] or
    /// [`Wal::wait_durable`] covers it.
    pub fn submit(&self, entry: Entry<'_>) -> Result<u64> {
        self.write_entries(std::slice::from_ref(&entry), false)
            .map(|(_, last)| last)
    }

    fn write_entries(&self, entries: &[Entry<'_>], wait: bool) -> Result<(u64, u64)> {
        self.write_located(entries, wait)
            .map(|a| (a.first_lsn, a.last_lsn))
    }

    /// Buffers `entries` as one atomic batch without waiting (as [`Wal::submit`]) and says
    /// where its first frame lands; the others follow it contiguously, each
    /// [`format::frame_size`] bytes long, in the same segment.
    pub fn submit_batch_located(&self, entries: &[Entry<'_>]) -> Result<Appended> {
        self.write_located(entries, false)
    }

    /// Keeps `attachment` under the log's append lock, for [`Wal::exclusive`]: state of the
    /// caller's that changes together with appends (so in LSN order), such as the changes a
    /// keyed store has appended and not yet applied to its index. One per log: fails with
    /// [`Error::Attached`] when there is one already.
    pub fn attach(&self, attachment: Box<dyn Any + Send>) -> Result<()> {
        let mut g = self.shared.state.lock();
        if g.attachment.is_some() {
            return Err(Error::Attached);
        }
        g.attachment = Some(attachment);
        Ok(())
    }

    /// Runs `f` holding the log's append lock: what `f` appends through [`Locked::append`] and
    /// what it changes in the attachment ([`Locked::attachment`]) happen together, ordered
    /// with every other append, and no other append comes between the start of `f` and its
    /// own (also when its append rolls the log), so that what `f` read decides on the log as
    /// its records find it. Buffered records are written out afterwards as after
    /// [`Wal::submit_batch_located`] (nothing waits for durability). An error `f` returns
    /// after appending does not undo the append.
    ///
    /// `f` should be short: every appender waits for it. It must not call back into this log
    /// (the lock is not reentrant).
    pub fn exclusive<T, E: From<Error>>(
        &self,
        f: impl FnOnce(&mut Locked<'_, '_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let s = &*self.shared;
        let mut g = s.state.lock();
        // A roll in progress waits for I/O in flight with the lock released, and the
        // appenders that find it rolling wait with the lock released too: `f` must not start
        // before it ends, or an append waiting for the roll inside `f` would let others
        // append between what `f` read and its record. Once it ends, no roll but one `f`
        // starts itself can begin while `f` runs, and during that one every other appender
        // waits (see `Shared::encode`).
        while g.rolling {
            s.changed.wait(&mut g);
        }
        let mut locked = Locked {
            shared: s,
            guard: &mut g,
            appended: None,
        };
        let out = f(&mut locked)?;
        let Some((first, last)) = locked.appended else {
            return Ok(out);
        };
        if g.pending.len() < WRITE_BUFFER_BYTES {
            return Ok(out);
        }
        match s.drive(&mut g, last, Need::Written) {
            Ok(()) => Ok(out),
            // Encoded, so possibly written: not a refusal.
            Err(Error::Poisoned { cause }) => Err(Error::Unacknowledged {
                first_lsn: first,
                last_lsn: last,
                cause,
            }
            .into()),
            Err(e) => Err(e.into()),
        }
    }

    fn write_located(&self, entries: &[Entry<'_>], wait: bool) -> Result<Appended> {
        let s = &*self.shared;
        let mut g = s.state.lock();
        let (first, last, location) = s.encode(&mut g, entries)?;
        let r = if wait && s.durability == Durability::Always {
            s.drive(&mut g, last, Need::Durable)
        } else if g.pending.len() >= WRITE_BUFFER_BYTES {
            s.drive(&mut g, last, Need::Written)
        } else {
            Ok(())
        };
        match r {
            Ok(()) => Ok(Appended {
                first_lsn: first,
                last_lsn: last,
                location,
            }),
            // Encoded, so possibly written: not a refusal.
            Err(Error::Poisoned { cause }) => Err(Error::Unacknowledged {
                first_lsn: first,
                last_lsn: last,
                cause,
            }),
            Err(e) => Err(e),
        }
    }

    /// Hands every buffered record to the OS (survives a process crash, not power loss).
    /// Returns the written watermark.
    pub fn flush(&self) -> Result<u64> {
        let s = &*self.shared;
        let mut g = s.state.lock();
        let target = g.next_lsn - 1;
        s.drive(&mut g, target, Need::Written)?;
        Ok(g.written_lsn)
    }

    /// Writes and fdatasyncs every record appended so far, whatever the policy. Returns the
    /// durable watermark.
    pub fn sync(&self) -> Result<u64> {
        let s = &*self.shared;
        let mut g = s.state.lock();
        let target = g.next_lsn - 1;
        s.drive(&mut g, target, Need::Durable)?;
        Ok(g.durable_lsn)
    }

    /// Blocks until `lsn` is durable. Under `Batch` this waits for the flusher; under the other
    /// policies it syncs. An LSN not yet assigned is an error.
    pub fn wait_durable(&self, lsn: u64) -> Result<()> {
        let s = &*self.shared;
        let mut g = s.state.lock();
        if lsn >= g.next_lsn {
            return Err(Error::LsnNotAppended {
                lsn,
                last: g.next_lsn - 1,
            });
        }
        loop {
            s.check_writable(&g)?;
            if g.durable_lsn >= lsn {
                return Ok(());
            }
            match s.durability {
                // The flusher makes it durable; wait for its acknowledgement.
                Durability::Batch { .. } => {
                    MutexGuard::unlocked(&mut g, || s.wait_ack(lsn, Need::Durable, true))
                }
                _ => return s.drive(&mut g, lsn, Need::Durable),
            }
        }
    }

    /// A reader from `from_lsn` (clamped to the first LSN held) that sees records up to the
    /// durable watermark (the written one under `Never`), following the log as it grows.
    pub fn reader(&self, from_lsn: u64) -> WalReader {
        let s = &self.shared;
        let limit = match s.durability {
            Durability::Never => s.written.clone(),
            _ => s.durable.clone(),
        };
        let source = LiveSource {
            io: s.io.clone(),
            segments: s.segments.clone(),
            limit: LiveLimit(limit),
        };
        WalReader::new(Arc::new(source), from_lsn)
    }

    /// A reader from the record after `lsn`, which is at `location` with the chain value
    /// `chain_crc`, read without reading (or checking) the records before it in its segment:
    /// for a caller that knows them already (the engine's index, after an index run that ends
    /// there). The record at `location` is read and checked first; when it is not `lsn` with
    /// that chain value, the result is an error and the caller reads from the segment's start.
    pub fn reader_after(&self, location: Location, lsn: u64, chain_crc: u32) -> Result<WalReader> {
        let r = self.read_record(location, lsn)?;
        if r.crc != chain_crc {
            return Err(Error::corrupt(
                &self.shared.segment_path(location)?,
                location.offset,
                format!("record {lsn} has another chain value than the one expected"),
            ));
        }
        let next = Location {
            segment: location.segment,
            offset: location.offset + format::frame_size(r.key.len(), r.value.len()) as u64,
        };
        self.reader_at(next, lsn + 1, chain_crc)
    }

    /// A reader from record `lsn`, whose frame is at `location` and links to the chain value
    /// `prev_crc`, without reading the records before it in its segment. Every record from
    /// there is checked as any reader checks it, the first against `prev_crc`; what this
    /// cannot check is that a frame *is* at `location`: bytes inside a record's value may
    /// look like one (see [`Wal::frame_at_or_after`]). A caller that did not learn `location`
    /// from the records before it must confirm it by reading those records up to there.
    pub fn reader_at(&self, location: Location, lsn: u64, prev_crc: u32) -> Result<WalReader> {
        let path = self.shared.segment_path(location)?;
        let Some(before) = lsn.checked_sub(1) else {
            return Err(Error::corrupt(
                &path,
                location.offset,
                "a record numbered 0",
            ));
        };
        let mut cursor = reader::SegmentCursor::open(&*self.shared.io, &path, location.segment)?;
        cursor.skip_to(DurablePoint {
            records_end: location.offset,
            last_lsn: before,
            chain_crc: prev_crc,
        });
        let mut reader = self.reader(lsn);
        reader.start_at(cursor);
        Ok(reader)
    }

    /// The first place of segment `first_lsn`, at or after `offset` and within `window` bytes
    /// of it, where a record frame checks out on its own (its length fits, its checksum
    /// matches, its LSN is past the segment's first): the frame's location, LSN and chain
    /// link, for [`Wal::reader_at`]. `None` when there is none in that window (a frame longer
    /// than what is left of it is passed over: at most `window` bytes are read).
    ///
    /// Only a candidate: the records before it are not read, and bytes inside a record's value
    /// may form a valid frame. A caller that reads the segment in two parts, the second from
    /// here, must confirm that the first part's records end exactly here.
    pub fn frame_at_or_after(
        &self,
        first_lsn: u64,
        offset: u64,
        window: usize,
    ) -> Result<Option<(Location, u64, u32)>> {
        let (path, file) = self.open_segment(first_lsn)?;
        let end = self.end_of(first_lsn, &path, &*file)?;
        // Frames start at multiples of FRAME_ALIGN, after the header.
        let align = format::FRAME_ALIGN as u64;
        let start = offset.max(HEADER_LEN as u64).div_ceil(align) * align;
        if start >= end {
            return Ok(None);
        }
        let len = (end - start).min(window as u64) as usize;
        let mut buf = vec![0u8; len];
        let n =
            reader::read_full(&*file, &mut buf, start).map_err(|e| Error::io("read", &path, e))?;
        buf.truncate(n);
        let mut i = 0usize;
        while i < buf.len() {
            let room = usize::try_from(end - (start + i as u64)).unwrap_or(usize::MAX);
            if let format::Frame::Record(v) = format::decode_frame(&buf[i..], room) {
                if v.lsn > first_lsn {
                    let location = Location {
                        segment: first_lsn,
                        offset: start + i as u64,
                    };
                    return Ok(Some((location, v.lsn, v.prev_crc)));
                }
            }
            i += format::FRAME_ALIGN;
        }
        Ok(None)
    }

    /// Where the frames of segment `first_lsn` end: the end of those appended when it is the
    /// active segment, else the file's length (its footer included).
    pub fn segment_end(&self, first_lsn: u64) -> Result<u64> {
        let (path, file) = self.open_segment(first_lsn)?;
        self.end_of(first_lsn, &path, &*file)
    }

    /// Opens segment `first_lsn` for reading: its path and file.
    fn open_segment(&self, first_lsn: u64) -> Result<(PathBuf, Arc<dyn IoFile>)> {
        let path = self.shared.segment_path(Location {
            segment: first_lsn,
            offset: 0,
        })?;
        let file = self
            .shared
            .io
            .open_read(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        Ok((path, file))
    }

    /// [`Wal::segment_end`] of segment `first_lsn`, opened as `file`.
    fn end_of(&self, first_lsn: u64, path: &Path, file: &dyn IoFile) -> Result<u64> {
        let active_end = self
            .shared
            .state
            .lock()
            .active
            .as_ref()
            .filter(|a| a.first_lsn == first_lsn)
            .map(|a| a.end);
        match active_end {
            Some(end) => Ok(end),
            None => file.file_len().map_err(|e| Error::io("stat", path, e)),
        }
    }

    /// Reads back the record `lsn` whose frame is at `location` (as returned by
    /// [`Wal::submit_batch_located`] or found in [`Record::location`]), checking its checksum
    /// and LSN. A record still buffered is handed to the OS first.
    pub fn read_record(&self, location: Location, lsn: u64) -> Result<Record> {
        let s = &*self.shared;
        if s.written.load(Ordering::Acquire) < lsn {
            let mut g = s.state.lock();
            if lsn >= g.next_lsn {
                return Err(Error::LsnNotAppended {
                    lsn,
                    last: g.next_lsn - 1,
                });
            }
            s.drive(&mut g, lsn, Need::Written)?;
        }
        let path = s.segment_path(location)?;
        let file = {
            let mut files = s.read_files.lock();
            match files.get(&location.segment) {
                Some(f) => f.clone(),
                None => {
                    let f =
                        s.io.open_read(&path)
                            .map_err(|e| Error::io("open", &path, e))?;
                    if files.len() >= READ_FILES_CACHED {
                        files.clear();
                    }
                    files.insert(location.segment, f.clone());
                    f
                }
            }
        };
        let mut head = [0u8; format::RECORD_HEADER_LEN];
        let n = crate::reader::read_full(&*file, &mut head, location.offset)
            .map_err(|e| Error::io("read", &path, e))?;
        let frame_len = if n == head.len() {
            u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize
        } else {
            0
        };
        let max = s.config.segment_size_bytes.max(location.offset) as usize;
        if frame_len < format::RECORD_HEADER_LEN || frame_len > max {
            return Err(Error::corrupt(
                &path,
                location.offset,
                format!("no record frame for LSN {lsn} here"),
            ));
        }
        let mut buf = vec![0u8; format::align_up(frame_len)];
        let n = crate::reader::read_full(&*file, &mut buf, location.offset)
            .map_err(|e| Error::io("read", &path, e))?;
        match format::decode_frame(&buf[..n], buf.len()) {
            format::Frame::Record(v) if v.lsn == lsn => Ok(v.to_record(&buf, location)),
            format::Frame::Record(v) => Err(Error::corrupt(
                &path,
                location.offset,
                format!("record {} where {lsn} was expected", v.lsn),
            )),
            _ => Err(Error::corrupt(
                &path,
                location.offset,
                format!("record {lsn} fails its checksum"),
            )),
        }
    }

    /// Highest LSN a [`Wal::reader`] may return now: the durable watermark (the written one
    /// under `Never`).
    pub fn visible_lsn(&self) -> u64 {
        match self.shared.durability {
            Durability::Never => self.written_lsn(),
            _ => self.durable_lsn(),
        }
    }

    /// Blocks until `lsn` is visible to readers ([`Wal::visible_lsn`]), the log is poisoned, or
    /// `timeout` passes. Returns whether `lsn` is visible. Does not make anything durable itself:
    /// it waits for appenders and the flusher.
    pub fn wait_visible(&self, lsn: u64, timeout: Duration) -> bool {
        let s = &*self.shared;
        let need = match s.durability {
            Durability::Never => Need::Written,
            _ => Need::Durable,
        };
        let deadline = Instant::now() + timeout;
        let mut a = s.ack.lock();
        loop {
            if s.watermark(need) >= lsn {
                return true;
            }
            if s.poisoned_flag.load(Ordering::Acquire)
                || s.ack_cv.wait_until(&mut a, deadline).timed_out()
            {
                return s.watermark(need) >= lsn;
            }
        }
    }

    /// Every sealed segment, in LSN order, as its footer describes it (one read per segment).
    pub fn sealed_segments(&self) -> Result<Vec<SealedSegment>> {
        let active = self.shared.active_first.load(Ordering::Acquire);
        let segs: Vec<(u64, PathBuf)> = self
            .shared
            .segments
            .read()
            .iter()
            .filter(|(f, _)| *f < active)
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(segs.len());
        for (first, path) in segs {
            let file = self
                .shared
                .io
                .open_read(&path)
                .map_err(|e| Error::io("open", &path, e))?;
            let len = file.file_len().map_err(|e| Error::io("stat", &path, e))?;
            let footer = dir::read_footer_at_end(&*file, &path, len)?
                .ok_or_else(|| Error::corrupt(&path, len, "sealed segment without a footer"))?;
            out.push(SealedSegment {
                first_lsn: first,
                last_lsn: footer.last_lsn,
                chain_crc: footer.chain_crc,
                path,
            });
        }
        Ok(out)
    }

    /// First LSN (file name) of the segment appends go to, if one is open.
    pub fn active_segment(&self) -> Option<u64> {
        let a = self.shared.active_first.load(Ordering::Acquire);
        (a != u64::MAX).then_some(a)
    }

    /// The I/O backend.
    pub fn io(&self) -> &Arc<dyn Io> {
        &self.shared.io
    }

    /// True when the backend's files are OS files that may be opened directly (see
    /// [`Io::files_are_real`]).
    pub fn files_are_real(&self) -> bool {
        self.shared.io.files_are_real()
    }

    /// Asks the OS to read segment `first_lsn` into the page cache ([`IoFile::prefetch`]) from
    /// `offset` to the end of its records (the file's end when it is sealed, the end of the
    /// frames appended when it is the active segment), `piece` bytes a request: for a reader
    /// about to read it through, so that the disk reads ahead of it as fast as it can. A
    /// backend without a page cache ignores it.
    pub fn prefetch_segment(&self, first_lsn: u64, offset: u64, piece: u64) -> Result<()> {
        let (path, file) = self.open_segment(first_lsn)?;
        let end = self.end_of(first_lsn, &path, &*file)?;
        let piece = piece.max(1);
        let mut at = offset;
        while at < end {
            file.prefetch(at, piece.min(end - at));
            at = at.saturating_add(piece);
        }
        Ok(())
    }

    /// The path of segment `first_lsn` when it is sealed (never written again), else `None`
    /// (the active segment, or no such segment).
    pub fn sealed_segment_path(&self, first_lsn: u64) -> Option<PathBuf> {
        if first_lsn >= self.shared.active_first.load(Ordering::Acquire) {
            return None;
        }
        self.shared
            .segments
            .read()
            .iter()
            .find(|(f, _)| *f == first_lsn)
            .map(|(_, p)| p.clone())
    }

    /// Highest durable LSN.
    pub fn durable_lsn(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Highest LSN handed to the OS.
    pub fn written_lsn(&self) -> u64 {
        self.shared.written.load(Ordering::Acquire)
    }

    /// Highest assigned LSN.
    pub fn last_lsn(&self) -> u64 {
        self.shared.state.lock().next_lsn - 1
    }

    /// First LSN still held.
    pub fn first_lsn(&self) -> u64 {
        self.shared.segments.read().first().map_or(1, |s| s.0)
    }

    /// What recovery did at open.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The configuration in force.
    pub fn config(&self) -> &WalConfig {
        &self.shared.config
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Counters.
    pub fn stats(&self) -> WalStats {
        let c = &self.shared.counters;
        let g = self.shared.state.lock();
        WalStats {
            backend: self.shared.io.name(),
            appends: g.appends,
            bytes_appended: g.bytes_appended,
            writes: c.writes.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            fsync_nanos: c.fsync_nanos.load(Ordering::Relaxed),
            write_nanos: c.write_nanos.load(Ordering::Relaxed),
            rolls: c.rolls.load(Ordering::Relaxed),
            written_lsn: g.written_lsn,
            durable_lsn: g.durable_lsn,
            last_lsn: g.next_lsn - 1,
        }
    }

    /// Error the log is poisoned with, if any.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.state.lock().poisoned.clone()
    }

    /// Clean shutdown: makes everything durable, then writes the `CLOSED` marker that lets the
    /// next open and `walctl verify` check the tail exactly.
    pub fn close(mut self) -> Result<()> {
        self.stop_threads();
        let s = self.shared.clone();
        let mut g = s.state.lock();
        let last = g.next_lsn - 1;
        s.drive(&mut g, last, Need::Durable)?;
        g.closed = true;
        // Not worth a marker when the last roll could not create a segment: open re-checks.
        let Some(a) = g.active.as_ref() else {
            return Ok(());
        };
        // The durable point the last round wrote is not covered by that round's fdatasync:
        // made durable before the marker, so that a closed log's points are all whole.
        if let Err(e) = a.file.sync_data() {
            let err = Error::io("fdatasync", &*a.path, e);
            s.poison(&mut g, &err);
            return Err(err);
        }
        let file_len = a
            .file
            .file_len()
            .map_err(|e| Error::io("stat", &*a.path, e))?;
        let marker = ClosedMarker {
            last_lsn: last,
            segment_first_lsn: a.first_lsn,
            records_end: a.end,
            file_len,
            chain_crc: g.chain_crc,
        };
        let tmp = s.dir.join(format!("{CLOSED_FILE}.tmp"));
        let dst = s.dir.join(CLOSED_FILE);
        let f =
            s.io.create_truncate(&tmp)
                .map_err(|e| Error::io("create", &tmp, e))?;
        f.write_at(&marker.encode(), 0)
            .map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_data().map_err(|e| Error::io("fdatasync", &tmp, e))?;
        s.io.rename(&tmp, &dst)
            .map_err(|e| Error::io("rename", &tmp, e))?;
        // The prepared spare segment would only cost disk space (and backup time) while closed.
        let spare = s.dir.join(SPARE_FILE);
        if s.io.exists(&spare) {
            s.io.remove_file(&spare)
                .map_err(|e| Error::io("remove", &spare, e))?;
        }
        s.io.sync_dir(&s.dir)
            .map_err(|e| Error::io("fsync directory", &s.dir, e))?;
        Ok(())
    }

    fn stop_threads(&mut self) {
        *self.shared.stop.lock() = true;
        self.shared.stop_cv.notify_all();
        self.shared.prep.lock().stop = true;
        self.shared.prep_cv.notify_all();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a seglog background thread panicked");
            }
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return; // closed
        }
        self.stop_threads();
        let s = &self.shared;
        let mut g = s.state.lock();
        if g.poisoned.is_some() || g.closed {
            return;
        }
        let last = g.next_lsn - 1;
        if let Err(e) = s.drive(&mut g, last, Need::Durable) {
            tracing::warn!(dir = %s.dir.display(), error = %e, "records appended before drop may not be durable");
        }
    }
}

impl Shared {
    /// The file of the segment `location` is in; an error naming the place when there is none.
    fn segment_path(&self, location: Location) -> Result<PathBuf> {
        self.segments
            .read()
            .iter()
            .find(|(first, _)| *first == location.segment)
            .map(|(_, p)| p.clone())
            .ok_or_else(|| {
                Error::corrupt(
                    self.dir.join(format::segment_file_name(location.segment)),
                    location.offset,
                    "no such segment",
                )
            })
    }

    fn check_writable(&self, g: &State) -> Result<()> {
        if let Some(cause) = &g.poisoned {
            return Err(Error::Poisoned {
                cause: cause.clone(),
            });
        }
        if g.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn poison(&self, g: &mut State, err: &Error) {
        if g.poisoned.is_none() {
            tracing::error!(dir = %self.dir.display(), error = %err, "write-ahead log poisoned: refusing writes until reopened");
            g.poisoned = Some(err.to_string());
            self.poisoned_flag.store(true, Ordering::Release);
            self.notify_ack();
        }
    }

    fn notify_ack(&self) {
        // Taking the ack mutex orders this after any waiter's check of the atomics.
        let _g = self.ack.lock();
        self.ack_cv.notify_all();
    }

    fn watermark(&self, need: Need) -> u64 {
        match need {
            Need::Written => self.written.load(Ordering::Acquire),
            Need::Durable => self.durable.load(Ordering::Acquire),
        }
    }

    /// Sleeps until `target` reaches the watermark, the log is poisoned, or (unless `passive`)
    /// nobody is leading any more, so the caller may lead.
    fn wait_ack(&self, target: u64, need: Need, passive: bool) {
        let mut a = self.ack.lock();
        loop {
            if self.watermark(need) >= target || self.poisoned_flag.load(Ordering::Acquire) {
                return;
            }
            if !passive && !self.busy.load(Ordering::Acquire) {
                return;
            }
            self.ack_cv.wait(&mut a);
        }
    }

    fn max_record_bytes(&self) -> u64 {
        self.config.segment_size_bytes - (HEADER_LEN + FOOTER_LEN) as u64
    }

    /// Encodes `entries` as one atomic batch into `pending`, rolling first if needed.
    ///
    /// Always inlined (into [`Locked::append`] and [`Wal::write_located`], its only callers):
    /// called, it returned its `(first, last, location)` through memory written as 8-byte
    /// stores, which `Locked::append` read back as 16-byte loads; such a load cannot take its
    /// bytes from two pending stores and waits for them to reach the cache. Measured on the
    /// engine's puts (3 M puts of 200 B on tmpfs, writer profile): 5 of `Locked::append`'s
    /// 6.7 ns a put went to that one load; inlined, the writer's CPU per put fell about 5 ns.
    #[inline(always)]
    fn encode(
        &self,
        g: &mut MutexGuard<'_, State>,
        entries: &[Entry<'_>],
    ) -> Result<(u64, u64, Location)> {
        if entries.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let mut size = 0u64;
        for e in entries {
            if e.key.len() > MAX_KEY_LEN {
                return Err(Error::KeyTooLarge {
                    len: e.key.len(),
                    max: MAX_KEY_LEN,
                });
            }
            size += format::frame_size(e.key.len(), e.value.len()) as u64;
        }
        if size > self.max_record_bytes() {
            return Err(Error::RecordTooLarge {
                size,
                max: self.max_record_bytes(),
            });
        }
        loop {
            self.check_writable(g)?;
            if g.rolling {
                self.changed.wait(g);
                continue;
            }
            match &g.active {
                None => self.open_new_segment(g)?,
                Some(a) if a.end + size + FOOTER_LEN as u64 > a.capacity => self.roll(g)?,
                Some(_) => break,
            }
        }
        let ts = now_us();
        let first = g.next_lsn;
        let n = entries.len();
        let st = &mut **g;
        let location = match &st.active {
            Some(a) => Location {
                segment: a.first_lsn,
                offset: a.end,
            },
            None => Location::default(), // unreachable: the loop above breaks only with an active segment
        };
        let mut chain = st.chain_crc;
        for (i, e) in entries.iter().enumerate() {
            let flags = if i + 1 < n {
                format::FLAG_BATCH_CONTINUES
            } else {
                0
            };
            chain = format::encode_frame(&mut st.pending, e, first + i as u64, ts, chain, flags);
        }
        let last = first + n as u64 - 1;
        st.chain_crc = chain;
        st.next_lsn = last + 1;
        st.pending_last_lsn = last;
        let a = st
            .active
            .as_mut()
            .expect("active segment: the loop above breaks only when it is Some");
        a.end += size;
        if !st.spare_requested && a.end > a.capacity / 2 {
            st.spare_requested = true;
            self.request_spare();
        }
        st.appends += n as u64;
        st.bytes_appended += size;
        Ok((first, last, location))
    }

    /// Returns once `target` is written (or durable): leads if nobody does, else waits.
    fn drive(&self, g: &mut MutexGuard<'_, State>, target: u64, need: Need) -> Result<()> {
        loop {
            if let Some(cause) = &g.poisoned {
                return Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            let reached = match need {
                Need::Written => g.written_lsn >= target,
                Need::Durable => g.durable_lsn >= target,
            };
            if reached {
                return Ok(());
            }
            if g.leading || g.rolling {
                MutexGuard::unlocked(g, || self.wait_ack(target, need, false));
                continue;
            }
            return self.lead(g, target, need);
        }
    }

    /// Leads rounds of write (+ fdatasync) until `target` is reached, and a few more while
    /// others have records pending.
    fn lead(&self, g: &mut MutexGuard<'_, State>, target: u64, need: Need) -> Result<()> {
        g.leading = true;
        self.busy.store(true, Ordering::Release);
        let mut rounds = 0u32;
        let result = loop {
            while g.rolling {
                self.changed.wait(g);
            }
            if let Some(cause) = &g.poisoned {
                break Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            let sync = need == Need::Durable || self.durability == Durability::Always;
            // With data to write, one call writes and syncs (io_uring links the two); else
            // sync what earlier rounds wrote.
            if !self.write_step(g, sync) && sync {
                self.sync_step(g);
            }
            self.notify_ack();
            rounds += 1;
            let reached = match need {
                Need::Written => g.written_lsn >= target,
                Need::Durable => g.durable_lsn >= target,
            };
            if reached
                && (g.pending.is_empty()
                    || self.durability != Durability::Always
                    || rounds >= MAX_LEAD_ROUNDS)
            {
                break match &g.poisoned {
                    Some(cause) => Err(Error::Poisoned {
                        cause: cause.clone(),
                    }),
                    None => Ok(()),
                };
            }
        };
        g.leading = false;
        self.busy.store(g.rolling, Ordering::Release);
        self.notify_ack();
        result
    }

    /// Runs `f` outside the mutex with `io_in_flight` set, waking a roll that waits for it.
    fn unlocked_io<R>(&self, g: &mut MutexGuard<'_, State>, f: impl FnOnce() -> R) -> R {
        g.io_in_flight = true;
        let r = MutexGuard::unlocked(g, f);
        g.io_in_flight = false;
        if g.rolling {
            self.changed.notify_all();
        }
        r
    }

    /// Writes all of `pending`, and with `sync` makes it (and everything written before it)
    /// durable in the same call. Returns false when there was nothing to write.
    fn write_step(&self, g: &mut MutexGuard<'_, State>, sync: bool) -> bool {
        let Some(a) = g.active.as_ref() else {
            return false;
        };
        if g.pending.is_empty() || g.poisoned.is_some() {
            return false;
        }
        let file = a.file.clone();
        let path = a.path.clone();
        let offset = a.end - g.pending.len() as u64;
        let last = g.pending_last_lsn;
        // `pending` holds every record encoded so far: the chain value is its last one's.
        let point = DurablePoint {
            records_end: a.end,
            last_lsn: last,
            chain_crc: g.chain_crc,
        };
        let mark = if sync { a.mark_due(Some(point)) } else { None };
        let fresh = std::mem::take(&mut g.spare_buf);
        let mut buf = std::mem::replace(&mut g.pending, fresh);
        let t = Instant::now();
        let r = self.unlocked_io(g, || {
            if sync {
                file.write_and_sync(&buf, offset)?;
                // Only after the fdatasync covering it returned (see `DurablePoint`).
                match mark {
                    Some((_, b)) => file.write_at(&b, HDR_DURABLE as u64),
                    None => Ok(()),
                }
            } else {
                file.write_at(&buf, offset)
            }
        });
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        if sync {
            self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.counters
                .fsync_nanos
                .fetch_add(nanos(t), Ordering::Relaxed);
        } else {
            self.counters
                .write_nanos
                .fetch_add(nanos(t), Ordering::Relaxed);
        }
        match r {
            Ok(()) => {
                g.written_lsn = last;
                self.written.store(last, Ordering::Release);
                if let Some(a) = g.active.as_mut() {
                    a.written = Some(point);
                    if let Some((p, _)) = mark {
                        a.marked = p.records_end;
                    }
                }
                if sync {
                    g.durable_lsn = last;
                    self.durable.store(last, Ordering::Release);
                } else if self.durability != Durability::Always {
                    // Start write-back now so the fsync at seal (or the next batch fsync)
                    // finds little left to do. A hint: its failure loses nothing.
                    if let Err(e) = file.start_writeback(offset, buf.len() as u64) {
                        tracing::debug!(error = %e, "sync_file_range hint failed");
                    }
                }
            }
            Err(e) => self.poison(
                g,
                &Error::io(if sync { "write+fdatasync" } else { "write" }, &*path, e),
            ),
        }
        buf.clear();
        if buf.capacity() <= 4 * WRITE_BUFFER_BYTES {
            g.spare_buf = buf;
        }
        true
    }

    /// fdatasyncs the active segment, covering everything written before it started.
    fn sync_step(&self, g: &mut MutexGuard<'_, State>) {
        let covers = g.written_lsn;
        let Some(a) = g.active.as_ref() else { return };
        if covers <= g.durable_lsn || g.poisoned.is_some() {
            return;
        }
        let file = a.file.clone();
        let path = a.path.clone();
        let mark = a.mark_due(a.written);
        let t = Instant::now();
        let r = self.unlocked_io(g, || {
            file.sync_data()?;
            // Only after the fdatasync covering it returned (see `DurablePoint`).
            match mark {
                Some((_, b)) => file.write_at(&b, HDR_DURABLE as u64),
                None => Ok(()),
            }
        });
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.counters
            .fsync_nanos
            .fetch_add(nanos(t), Ordering::Relaxed);
        match r {
            Ok(()) => {
                if covers > g.durable_lsn {
                    g.durable_lsn = covers;
                    self.durable.store(covers, Ordering::Release);
                }
                if let (Some(a), Some((p, _))) = (g.active.as_mut(), mark) {
                    a.marked = a.marked.max(p.records_end);
                }
            }
            Err(e) => self.poison(g, &Error::io("fdatasync", &*path, e)),
        }
    }

    /// Seals the active segment and opens the next one. Holds the mutex throughout; waits for
    /// the write and sync roles to be idle first.
    fn roll(&self, g: &mut MutexGuard<'_, State>) -> Result<()> {
        g.rolling = true;
        self.busy.store(true, Ordering::Release);
        while g.io_in_flight {
            self.changed.wait(g);
        }
        let r = self.seal_active(g).and_then(|()| self.open_new_segment(g));
        g.rolling = false;
        self.busy.store(g.leading, Ordering::Release);
        self.changed.notify_all();
        self.notify_ack();
        r
    }

    fn seal_active(&self, g: &mut MutexGuard<'_, State>) -> Result<()> {
        self.check_writable(g)?;
        let Some(a) = g.active.as_ref() else {
            return Ok(());
        };
        let (file, path, end, first_lsn) = (a.file.clone(), a.path.clone(), a.end, a.first_lsn);
        // Seal I/O happens under the mutex: appenders wait, and nobody else does I/O.
        let last = g.next_lsn - 1;
        let result = (|| {
            if !g.pending.is_empty() {
                let off = end - g.pending.len() as u64;
                file.write_at(&g.pending, off)
                    .map_err(|e| Error::io("write", &*path, e))?;
            }
            let footer = SegmentFooter {
                first_lsn,
                last_lsn: last,
                record_count: last + 1 - first_lsn,
                chain_crc: g.chain_crc,
            };
            file.write_at(&footer.encode(), end)
                .map_err(|e| Error::io("write footer", &*path, e))?;
            file.set_len(end + FOOTER_LEN as u64)
                .map_err(|e| Error::io("truncate", &*path, e))?;
            // fsync, not fdatasync: the file length changed.
            file.sync_all().map_err(|e| Error::io("fsync", &*path, e))
        })();
        if let Err(e) = result {
            self.poison(g, &e);
            return Err(e);
        }
        g.pending.clear();
        g.active = None;
        self.active_first.store(u64::MAX, Ordering::Release);
        g.written_lsn = last;
        g.durable_lsn = last;
        self.written.store(last, Ordering::Release);
        self.durable.store(last, Ordering::Release);
        self.counters.rolls.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(segment = %path.display(), last_lsn = last, "segment sealed");
        Ok(())
    }

    /// Installs the prepared spare as the new active segment starting at `next_lsn`.
    fn open_new_segment(&self, g: &mut MutexGuard<'_, State>) -> Result<()> {
        let spare = self.dir.join(SPARE_FILE);
        let file = self
            .take_spare()
            .map_err(|e| Error::io("prepare segment", &spare, e))?;
        let first_lsn = g.next_lsn;
        let capacity = self.config.segment_size_bytes;
        let header = SegmentHeader {
            first_lsn,
            created_unix_us: now_us(),
            capacity,
            prev_crc: g.chain_crc,
        };
        file.write_at(&header.encode(), 0)
            .map_err(|e| Error::io("write header", &spare, e))?;
        file.sync_data()
            .map_err(|e| Error::io("fdatasync", &spare, e))?;
        let path = self.dir.join(format::segment_file_name(first_lsn));
        self.io
            .rename(&spare, &path)
            .map_err(|e| Error::io("rename", &spare, e))?;
        if let Err(e) = self.io.sync_dir(&self.dir) {
            // The directory may or may not hold the new segment after a crash: unknown state.
            let err = Error::io("fsync directory", &self.dir, e);
            self.poison(g, &err);
            return Err(err);
        }
        self.segments.write().push((first_lsn, path.clone()));
        self.active_first.store(first_lsn, Ordering::Release);
        g.active = Some(Active {
            file,
            path: path.into(),
            first_lsn,
            capacity,
            end: HEADER_LEN as u64,
            written: None,
            marked: 0,
        });
        g.spare_requested = false;
        Ok(())
    }

    fn request_spare(&self) {
        let mut p = self.prep.lock();
        if p.ready.is_none() && !p.busy {
            p.wanted = true;
            self.prep_cv.notify_all();
        }
    }

    /// Waits for the preparer's spare file (asking for one if none is coming).
    fn take_spare(&self) -> io::Result<Arc<dyn IoFile>> {
        let mut p = self.prep.lock();
        loop {
            if let Some(f) = p.ready.take() {
                return Ok(f);
            }
            if let Some(e) = p.failed.take() {
                return Err(e);
            }
            if p.stop {
                return Err(io::Error::other("the log is shutting down"));
            }
            if !p.busy && !p.wanted {
                p.wanted = true;
                self.prep_cv.notify_all();
            }
            self.prep_cv.wait(&mut p);
        }
    }

    fn preparer_loop(&self) {
        let mut p = self.prep.lock();
        loop {
            while !p.wanted && !p.stop {
                self.prep_cv.wait(&mut p);
            }
            if p.stop {
                return;
            }
            p.wanted = false;
            p.busy = true;
            let r = MutexGuard::unlocked(&mut p, || self.prepare_spare());
            p.busy = false;
            match r {
                Ok(f) => p.ready = Some(f),
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "could not prepare the next segment");
                    p.failed = Some(e);
                }
            }
            self.prep_cv.notify_all();
        }
    }

    /// Creates `next.seg.tmp`, reserves its space and (under `always`/`batch`) zero-fills it, so
    /// durable overwrites later need no allocation or extent conversion.
    fn prepare_spare(&self) -> io::Result<Arc<dyn IoFile>> {
        let path = self.dir.join(SPARE_FILE);
        let file = self.io.create_truncate(&path)?;
        let cap = self.config.segment_size_bytes;
        let result = (|| {
            if self.config.preallocate {
                let zero_fill = match file.allocate(0, cap) {
                    Ok(()) => self.config.fsync != FsyncPolicy::Never,
                    Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                        tracing::info!(dir = %self.dir.display(), "fallocate unsupported here: preallocating by writing zeros");
                        true
                    }
                    Err(e) => return Err(e),
                };
                if zero_fill {
                    let zeros = vec![0u8; ZERO_CHUNK];
                    let mut off = 0;
                    while off < cap {
                        let n = (cap - off).min(ZERO_CHUNK as u64) as usize;
                        file.write_at(&zeros[..n], off)?;
                        off += n as u64;
                    }
                }
            }
            file.sync_all()
        })();
        match result {
            Ok(()) => Ok(file),
            Err(e) => {
                if let Err(rm) = self.io.remove_file(&path) {
                    tracing::warn!(error = %rm, "could not remove the unfinished spare segment");
                }
                Err(e)
            }
        }
    }

    fn flusher_loop(&self, interval: Duration) {
        let mut stop = self.stop.lock();
        loop {
            if *stop {
                return;
            }
            self.stop_cv.wait_for(&mut stop, interval);
            if *stop {
                return;
            }
            MutexGuard::unlocked(&mut stop, || self.flush_tick());
        }
    }

    fn flush_tick(&self) {
        let mut g = self.state.lock();
        if g.poisoned.is_some() || g.closed {
            return;
        }
        let target = g.next_lsn - 1;
        let need = match self.durability {
            Durability::Batch { .. } => Need::Durable,
            _ => Need::Written,
        };
        // A failure poisons the log (and is logged there); appenders see it.
        if let Err(e) = self.drive(&mut g, target, need) {
            tracing::debug!(error = %e, "flusher stopped by an earlier failure");
        }
    }
}

/// Tail-tolerant recovery of a log with a gap (a segment missing between two others, which no
/// crash leaves: a segment is created only after the one before it is sealed and fsynced, so it
/// is a copy of a live directory that missed a segment created while it ran, or a deleted
/// file): keeps the log up to the gap, whose last LSN is `last_lsn`, and renames every segment
/// after it to `NAME.seg.dropped` (`.N` added when that name is taken), removes a `CLOSED`
/// marker (it names an end the log no longer has), then fsyncs the directory. No segment is
/// deleted; later opens ignore the set-aside files. Returns their new paths.
fn set_aside_after_gap(io: &Arc<dyn Io>, dir: &Path, last_lsn: u64) -> Result<Vec<PathBuf>> {
    let names = io.list_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut after: Vec<(u64, String)> = names
        .into_iter()
        .filter_map(|n| format::parse_segment_file_name(&n).map(|lsn| (lsn, n)))
        .filter(|&(lsn, _)| lsn > last_lsn)
        .collect();
    after.sort();
    let mut moved = Vec::with_capacity(after.len());
    for (_, name) in after {
        let from = dir.join(&name);
        let mut to = dir.join(format!("{name}{}", dir::DROPPED_SUFFIX));
        let mut n = 0u32;
        while io.exists(&to) {
            n += 1;
            to = dir.join(format!("{name}{}.{n}", dir::DROPPED_SUFFIX));
        }
        io.rename(&from, &to)
            .map_err(|e| Error::io("rename", &from, e))?;
        moved.push(to);
    }
    // A `CLOSED` marker names an end the log no longer has: the log is now a crash image.
    let marker = dir.join(CLOSED_FILE);
    if io.exists(&marker) {
        io.remove_file(&marker)
            .map_err(|e| Error::io("remove", &marker, e))?;
    }
    io.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))?;
    Ok(moved)
}

/// Recovery: reads the directory, applies the decision table to the tail, cuts a torn tail,
/// completes an interrupted seal, removes temporary files and the `CLOSED` marker.
fn recover(io: &Arc<dyn Io>, dir: &Path, config: &WalConfig) -> Result<(LogView, RecoveryReport)> {
    let mut dropped = Vec::new();
    let mut view = match LogView::open_after_close(io.clone(), dir) {
        Err(Error::MissingSegment {
            last_lsn,
            next,
            next_first_lsn,
            ..
        }) if config.recovery == RecoveryMode::TailTolerant => {
            dropped = set_aside_after_gap(io, dir, last_lsn)?;
            tracing::warn!(dir = %dir.display(), last_lsn, next = %next.display(), next_first_lsn, segments = dropped.len(), "records missing between two segments: kept the log up to the gap, set the segments after it aside");
            LogView::open_after_close(io.clone(), dir)?
        }
        r => r?,
    };
    let mut report = RecoveryReport {
        closed_cleanly: view.closed.is_some(),
        dropped_segments: dropped,
        ..Default::default()
    };
    if let Some(last) = view.segments.last() {
        let (cut_at, reason, lsns_cut, lost_valid) = match &view.tail {
            TailState::Clean => (None, String::new(), None, false),
            TailState::Torn {
                offset,
                reason,
                lsns_cut,
            } => (Some(*offset), reason.clone(), *lsns_cut, false),
            TailState::Corrupt { offset, reason } => match config.recovery {
                RecoveryMode::Strict => {
                    return Err(Error::corrupt(&last.path, *offset, reason.clone()))
                }
                RecoveryMode::TailTolerant => (Some(last.records_end), reason.clone(), None, true),
            },
        };
        let file = io
            .open_rw(&last.path)
            .map_err(|e| Error::io("open", &last.path, e))?;
        // A durable point torn by the crash (the scan above ignored it) is cleared, durably,
        // before anything else: the segment may be sealed below or later, and in a sealed
        // segment such bytes would be damage.
        let mut header = [0u8; HEADER_LEN];
        let n = reader::read_full(&*file, &mut header, 0)
            .map_err(|e| Error::io("read", &last.path, e))?;
        if DurablePoint::is_damaged(&header[..n], last.first_lsn()) {
            file.write_at(&[0u8; DURABLE_LEN], HDR_DURABLE as u64)
                .and_then(|()| file.sync_data())
                .map_err(|e| Error::io("write+fdatasync", &last.path, e))?;
            tracing::warn!(segment = %last.path.display(), "cleared a durable point torn by the crash");
        }
        if let Some(at) = cut_at {
            let end = reader::nonzero_end(&*file, &last.path, at)?;
            let zeros = vec![0u8; ZERO_CHUNK];
            let mut off = at;
            while off < end {
                let n = (end - off).min(ZERO_CHUNK as u64) as usize;
                file.write_at(&zeros[..n], off)
                    .map_err(|e| Error::io("write", &last.path, e))?;
                off += n as u64;
            }
            file.sync_data()
                .map_err(|e| Error::io("fdatasync", &last.path, e))?;
            tracing::warn!(segment = %last.path.display(), offset = at, bytes = end - at, reason = %reason, "cut the torn tail of the log");
            report.torn_tail = Some(TornTail {
                segment: last.path.clone(),
                offset: at,
                bytes_cut: end - at,
                lsns_cut,
                reason,
                valid_records_lost: lost_valid,
            });
            view.tail = TailState::Clean;
        }
        if let Some(footer_at) = last.footer.map(|_| last.records_end) {
            let want = footer_at + FOOTER_LEN as u64;
            if last.file_len > want {
                // Crashed between writing the footer and cutting the file: finish the seal.
                file.set_len(want)
                    .map_err(|e| Error::io("truncate", &last.path, e))?;
                file.sync_all()
                    .map_err(|e| Error::io("fsync", &last.path, e))?;
                report.finished_seal = true;
            }
        }
    }
    let mut removed = view.temp_files.clone();
    if view.closed.is_some() {
        removed.push(dir.join(CLOSED_FILE));
    }
    for p in &removed {
        io.remove_file(p).map_err(|e| Error::io("remove", p, e))?;
    }
    if !removed.is_empty() {
        io.sync_dir(dir)
            .map_err(|e| Error::io("fsync directory", dir, e))?;
    }
    report.removed_temp_files = view.temp_files.len();
    view.temp_files.clear();
    view.closed = None;
    report.last_lsn = view.last_lsn();
    Ok((view, report))
}
