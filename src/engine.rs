//! The engine: keyed records on top of the log.
//!
//! Every write is a log record (see [`crate::record`]); the index ([`crate::index`]) maps each
//! live key to its version (the LSN of the record that last wrote it) and the location of that
//! record's frame, from which `get` reads the value back (checksum checked). Opening loads the
//! index's run files (checkpoints written after each roll) and replays only what they do not
//! cover.
//!
//! # Invariants
//! - Changes reach the index in LSN order. A write without conditions appends its records and
//!   queues their changes under the log's append lock, and nothing else (see
//!   [`crate::unapplied`]); the queue is applied to the index under its write lock, whole.
//! - A conditional write (or one carrying an epoch, or a fence) holds the index's write lock
//!   and, inside it, the log's append lock while it applies the queue, checks its conditions
//!   against that state and appends: no other write can come between its check and its append
//!   (`Wal::exclusive` starts its closure only once a roll in progress has ended, so that an
//!   append waiting for a roll cannot let another in).
//! - A read sees every write that returned before it started: it applies the queue first when
//!   changes are queued (`queued` above `applied`).
//! - The wait for durability happens after the locks are released, so concurrent writers
//!   still share fsyncs (group commit). A write returns under the log's policy (`always`:
//!   durable); the index may show records not yet durable.
//! - A write from a writer epoch below the log's epoch is refused before anything is written.
//! - Locks are taken index first, then log; never the other way round.
//!
//! Limits: keys up to 65535 bytes; a batch (keys, values and 32 bytes per record) must fit in
//! one segment minus 104 bytes, else `RecordTooLarge` before anything is written, so nothing is
//! ever accepted that a later open would refuse. Index cost: per key changed in the active
//! segment, a memtable cell in memory (32 bytes in a hash table 3/8 to 3/4 full: 43 to 85 bytes,
//! and the key);
//! per key in a run file, 32 bytes plus the key (up to twice the key in a merged run, which
//! keeps superseded keys until they are half its heap), mapped from the file (page cache, not
//! heap); once a scan has read a run, 4 bytes per entry of it in the heap (its key order).

use crate::cache::ValueCache;
use crate::error::{Error, Result};
use crate::index::{self, Index, IndexShape};
use crate::mapped::SealedMaps;
use crate::record::Op;
use crate::run::Slot;
use crate::subscription::{Registry, Subscription};
use crate::unapplied::{self, Unapplied};
use crate::Config;
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use seglog_wal::format::frame_size;
use seglog_wal::{Appended, Durability, Entry, Io, Locked, Wal};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Once};

/// The checkpointer thread's nice value: the lowest priority. It writes a segment's index run
/// at each roll (walking the frozen memtable's table in hash order, building and writing about
/// 50 bytes a key), and merges them. On two cores at the same priority as the writer, the
/// threads it displaced (the applier, the kernel's writeback) took the writer's core: measured
/// with 3 M puts of 200 B values alone under `never`, the writer waited 80 to 200 ms for its
/// core and a put cost 1.25 times a raw append; at nice 19, 35 to 50 ms and 1.18 times (1.09
/// times with no checkpoints at all). It still gets a whole idle core, and if starved its work
/// waits: frozen memtables stay in memory until written (`IndexShape::memtable_entries`), and
/// past `MAX_FROZEN_MEMTABLES` of them writers wait for it (`index::Backlog`).
const CHECKPOINTER_NICE: i32 = 19;

/// What a conditional write expects of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key's current version must be this.
    Version(u64),
}

/// One operation of an atomic batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOp<'a> {
    /// Set a key.
    Put {
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
        /// Condition, checked against the state before the batch.
        expect: Option<Expect>,
    },
    /// Remove a key (a tombstone is written even when it is absent).
    Delete {
        /// Key.
        key: &'a [u8],
        /// Condition, checked against the state before the batch.
        expect: Option<Expect>,
    },
}

/// What [`Engine::stats`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineStats {
    /// Live keys (counting them reads every layer of the index once).
    pub keys: usize,
    /// The log's epoch.
    pub epoch: u64,
    /// Bytes in the value cache.
    pub value_cache_bytes: usize,
    /// How the index is made up: layers, memtables, run files.
    pub index: IndexShape,
    /// The log's counters (the I/O backend among them).
    pub wal: seglog_wal::WalStats,
}

/// A key-value engine over a segmented write-ahead log.
pub struct Engine {
    core: Arc<Core>,
    subscribers: Registry,
    maps: SealedMaps,
    cache: ValueCache,
    report: OpenReport,
    /// The background threads, joined on close: the applier, the checkpointer, and the
    /// thread that prepares the next roll's memtable map (`index::stock_spare`).
    background: Mutex<Vec<(&'static str, std::thread::JoinHandle<()>)>>,
    /// Held while index runs are written or merged (shared with the checkpointer thread).
    checkpoint_lock: Arc<Mutex<()>>,
    /// The index directory's clean-up after open (see [`clean_index_dir`]), done once.
    index_cleaned: Arc<Once>,
}

/// Removes what the index directory holds and no layer uses (see `index::remove_unused`), the
/// first time it is called after open; later callers wait for that first call to end. The
/// checkpointer does it when it starts; `checkpoint_now` too, so that after it returns the
/// directory holds the runs in use and nothing else from before the open, whichever thread got
/// there first. Not being able to clean costs disk space, not correctness: a warning.
fn clean_index_dir(once: &Once, wal: &Wal, state: &RwLock<Index>, lock: &Mutex<()>) {
    once.call_once(|| {
        if let Err(e) = index::remove_unused(wal, state, lock) {
            tracing::warn!(error = %e, "could not clean the index directory");
        }
    });
}

/// What the engine shares with its applier thread.
struct Core {
    wal: Arc<Wal>,
    /// The index. Readers hold it shared; appliers of queued changes, conditional writers and
    /// the checkpointer's swaps hold it exclusively.
    state: Arc<RwLock<Index>>,
    /// LSN of the last change queued (stored under the log's append lock, so it only grows).
    queued: AtomicU64,
    /// LSN of the last change applied to the index (stored under its write lock).
    applied: AtomicU64,
    /// An applier's buffers, swapped with the queue's (used under the index's write lock).
    taken: Mutex<Unapplied>,
    /// Nudged at each roll, emptied on close: the checkpointer and the spare-map thread.
    on_roll: Mutex<Vec<Sender<Nudge>>>,
    /// Nudged when changes are queued (see [`unapplied::WAKE`]), emptied on close.
    applier: Mutex<Option<Sender<Nudge>>>,
    /// The frozen memtables waiting to be written: writers wait while there are too many.
    backlog: Arc<index::Backlog>,
}

/// What [`Engine::open`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Index run files (checkpoints) loaded.
    pub run_files: usize,
    /// Sealed segments those run files cover.
    pub segments_from_checkpoints: usize,
    /// Sealed segments replayed record by record (no usable checkpoint).
    pub segments_replayed: usize,
    /// Records replayed (those segments and the active one).
    pub records_replayed: u64,
}

enum Nudge {
    SegmentSealed,
    ChangesQueued,
}

/// What the closure of a conditional write decided.
enum Checked {
    Appended(Appended),
    /// A check read a damaged run: repair, then try again.
    Repair,
}

/// The change queue in the log's attachment. It is attached when the engine opens, and an
/// attachment cannot be replaced (`Wal::attach` refuses a second one).
fn queue<'l>(l: &'l mut Locked<'_, '_>) -> &'l mut Unapplied {
    match l.attachment::<Unapplied>() {
        Some(q) => q,
        None => unreachable!("the engine attaches its change queue to the log when it opens"),
    }
}

fn check(key: &[u8], expect: Option<Expect>, current: Option<u64>) -> Result<()> {
    let ok = match expect {
        None => true,
        Some(Expect::Absent) => current.is_none(),
        Some(Expect::Version(v)) => current == Some(v),
    };
    if ok {
        return Ok(());
    }
    let expected = match expect {
        Some(Expect::Absent) => "the key to be absent".to_string(),
        Some(Expect::Version(v)) => format!("version {v}"),
        None => String::new(),
    };
    Err(Error::Conflict {
        key: String::from_utf8_lossy(key).into_owned(),
        expected,
        current,
    })
}

impl BatchOp<'_> {
    fn key(&self) -> &[u8] {
        match *self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key, .. } => key,
        }
    }

    fn expect(&self) -> Option<Expect> {
        match *self {
            BatchOp::Put { expect, .. } | BatchOp::Delete { expect, .. } => expect,
        }
    }
}

/// Checks a write's epoch and every condition of `ops` against `st`.
fn check_all(st: &Index, ops: &[BatchOp<'_>], epoch: Option<u64>) -> Result<()> {
    if let Some(e) = epoch {
        if e < st.epoch() {
            return Err(Error::StaleEpoch {
                writer: e,
                log: st.epoch(),
            });
        }
    }
    for op in ops {
        if let Some(expect) = op.expect() {
            check(op.key(), Some(expect), st.get(op.key()).map(|s| s.version))?;
        }
    }
    Ok(())
}

/// Queues the changes of `ops`, appended as `entries` at `appended`.
fn queue_changes(
    q: &mut Unapplied,
    ops: &[BatchOp<'_>],
    entries: &[Entry<'_>],
    appended: &Appended,
) {
    let mut location = appended.location;
    for (i, (op, e)) in ops.iter().zip(entries).enumerate() {
        let delete = matches!(op, BatchOp::Delete { .. });
        q.push(op.key(), appended.first_lsn + i as u64, location, delete);
        location.offset += frame_size(e.key.len(), e.value.len()) as u64;
    }
}

impl Core {
    /// Applies the changes in `q` to the index, in order, and empties `q`. The caller holds
    /// the index's write lock, and `q` is the queue (under the log's lock) or what an applier
    /// took from it.
    fn apply(&self, st: &mut Index, q: &mut Unapplied) {
        for (key, c) in q.iter() {
            self.roll(st, c.location.segment);
            let val = (!c.delete()).then_some(Slot {
                version: c.lsn,
                location: c.location,
            });
            st.set(key, val);
        }
        if let Some(last) = q.last() {
            st.note_last(last.lsn, last.location);
            self.applied.store(last.lsn, Ordering::Relaxed);
        }
        q.clear();
    }

    /// Takes the queue (under the log's lock, briefly) and applies it; the caller holds the
    /// index's write lock. Returns how many changes it applied.
    fn apply_queued(&self, st: &mut Index) -> usize {
        let mut taken = self.taken.lock();
        let swapped: seglog_wal::Result<()> = self.wal.exclusive(|l| {
            queue(l).swap_changes(&mut taken);
            Ok(())
        });
        // The closure never fails and appends nothing, so `exclusive` has nothing to report.
        debug_assert!(swapped.is_ok());
        let n = taken.len();
        self.apply(st, &mut taken);
        n
    }

    /// The applier thread's loop: applies the queue every [`unapplied::PERIOD`] while changes
    /// come in; once it finds none, it marks the queue idle and sleeps until a writer wakes it.
    /// Ends when its channel closes.
    fn run_applier(&self, nudges: &Receiver<Nudge>) {
        let mut idle = false;
        loop {
            let nudged = if idle {
                nudges.recv().is_ok()
            } else {
                !matches!(
                    nudges.recv_timeout(unapplied::PERIOD),
                    Err(RecvTimeoutError::Disconnected)
                )
            };
            if !nudged {
                return;
            }
            idle = self.apply_queued(&mut self.state.write()) == 0 && self.mark_idle();
        }
    }

    /// Marks the queue idle when it is empty (under the log's lock, so that the next writer
    /// sees the mark and wakes the applier). Returns whether it did.
    fn mark_idle(&self) -> bool {
        let marked: seglog_wal::Result<bool> = self.wal.exclusive(|l| {
            let q = queue(l);
            q.applier_idle = q.len() == 0;
            Ok(q.applier_idle)
        });
        // As in `apply_queued`: nothing to report.
        marked.unwrap_or(false)
    }

    /// Records landed in `segment`: when that is a new one, the previous one sealed, the
    /// index freezes its memtable, the checkpointer is nudged to write it as a run, and the
    /// spare-map thread to prepare the map the next roll takes.
    fn roll(&self, st: &mut Index, segment: u64) {
        if st.roll(segment) {
            self.nudge_background();
        }
    }

    /// Wakes the checkpointer and the spare-map thread.
    fn nudge_background(&self) {
        for tx in self.on_roll.lock().iter() {
            // Only a nudge: a send fails only when the thread is gone (closing).
            let _nudge_only = tx.send(Nudge::SegmentSealed);
        }
    }

    /// The index, shared, with every change queued before the call applied.
    fn fresh(&self) -> RwLockReadGuard<'_, Index> {
        let st = self.state.read();
        if self.queued.load(Ordering::Acquire) <= self.applied.load(Ordering::Relaxed) {
            return st;
        }
        drop(st);
        let mut st = self.state.write();
        // Another reader (or the applier) may have applied them meanwhile.
        if self.queued.load(Ordering::Acquire) > self.applied.load(Ordering::Relaxed) {
            self.apply_queued(&mut st);
        }
        RwLockWriteGuard::downgrade(st)
    }
}

impl Engine {
    /// Opens (creating if needed) the engine in `dir`: opens the log and replays it.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<Engine> {
        Self::from_wal(Wal::open(dir, config.wal)?, config.cache.value_cache_mb)
    }

    /// As [`Engine::open`], on a given I/O backend.
    pub fn open_with_io(io: Arc<dyn Io>, dir: impl AsRef<Path>, config: Config) -> Result<Engine> {
        Self::from_wal(
            Wal::open_with_io(io, dir, config.wal)?,
            config.cache.value_cache_mb,
        )
    }

    fn from_wal(wal: Wal, cache_mb: u64) -> Result<Engine> {
        let wal = Arc::new(wal);
        let (index, loaded) = Index::open(&wal)?;
        // The applier thread starts idle: the first write wakes it.
        wal.attach(Box::new(Unapplied::idle()))?;
        let report = OpenReport {
            run_files: loaded.run_files,
            segments_from_checkpoints: loaded.segments_from_runs,
            segments_replayed: loaded.segments_replayed,
            records_replayed: loaded.records_replayed,
        };
        let state = Arc::new(RwLock::new(index));
        let spawn_failed = |what: &'static str, e| seglog_wal::Error::Io {
            op: what,
            path: wal.dir().to_path_buf(),
            source: e,
        };
        let (tx, rx) = std::sync::mpsc::channel::<Nudge>();
        let worker_wal = wal.clone();
        let worker_state = state.clone();
        let checkpoint_lock = Arc::new(Mutex::new(()));
        let worker_lock = checkpoint_lock.clone();
        let index_cleaned = Arc::new(Once::new());
        let worker_cleaned = index_cleaned.clone();
        let backlog = state.read().backlog();
        let checkpointer = std::thread::Builder::new()
            .name("seglog-checkpointer".into())
            .spawn(move || {
                let (wal, state, lock) = (&*worker_wal, &*worker_state, &*worker_lock);
                // Background work: on a small machine it shares a core with the writers, and
                // at the same priority it took their core whenever the other one was busy
                // (see `CHECKPOINTER_NICE`).
                crate::mapped::lower_thread_priority(CHECKPOINTER_NICE);
                crate::run::reuse_buffers_on_this_thread();
                clean_index_dir(&worker_cleaned, wal, state, lock);
                // Cleared however this thread ends (see `index::Backlog`).
                let _writing = backlog.writing_until_dropped();
                // Runs replayed at open are written at once; later work comes with each roll,
                // and run files are made durable once old enough (see `index::sync_runs`).
                let mut nudged = Ok(Nudge::SegmentSealed);
                loop {
                    if nudged.is_ok() {
                        let round = index::maintain(wal, state, lock);
                        // Writers wait for room only while rounds succeed (see
                        // `index::Backlog`).
                        backlog.set_writing(round.is_ok());
                        if let Err(e) = round {
                            tracing::warn!(error = %e, "could not write index runs (the index stays in memory; reopening replays those segments)");
                        }
                    }
                    if let Err(e) =
                        index::sync_runs_aged(wal, state, lock, index::RUN_SYNC_AFTER)
                    {
                        tracing::warn!(error = %e, "could not make index runs durable (a power loss would cost replaying their segments)");
                    }
                    nudged = match rx.recv_timeout(index::TAIL_CHECKPOINT_IDLE) {
                        Ok(n) => Ok(n),
                        Err(RecvTimeoutError::Timeout) => Err(()),
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    // No roll for a while: the active segment may hold most of what a crash
                    // would make the next open replay (see `Engine::checkpoint_tail`).
                    if nudged.is_err()
                        && state.read().tail_bytes() >= index::TAIL_CHECKPOINT_BYTES
                    {
                        if let Err(e) = index::checkpoint_tail(wal, state, lock) {
                            tracing::warn!(error = %e, "could not write the index run of the active segment (a crash would cost replaying it)");
                        }
                    }
                }
            })
            .map_err(|e| spawn_failed("spawn checkpointer thread", e))?;
        let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Nudge>();
        let spare = state.read().spare();
        let spare_stocker = std::thread::Builder::new()
            .name("seglog-spares".into())
            .spawn(move || {
                // Background work too (emptying a 16 MiB table, writing a byte a page): at the
                // writers' priority it preempted them on their core (see `CHECKPOINTER_NICE`).
                crate::mapped::lower_thread_priority(CHECKPOINTER_NICE);
                while spare_rx.recv().is_ok() {
                    index::stock_spare(&spare);
                }
            })
            .map_err(|e| spawn_failed("spawn spare-map thread", e))?;
        let state_backlog = state.read().backlog();
        let last = wal.last_lsn();
        let (applier_tx, applier_rx) = std::sync::mpsc::channel::<Nudge>();
        let core = Arc::new(Core {
            wal: wal.clone(),
            state,
            queued: AtomicU64::new(last),
            applied: AtomicU64::new(last),
            taken: Mutex::new(Unapplied::default()),
            on_roll: Mutex::new(vec![tx, spare_tx]),
            applier: Mutex::new(Some(applier_tx)),
            backlog: state_backlog,
        });
        let applier_core = core.clone();
        let applier = std::thread::Builder::new()
            .name("seglog-applier".into())
            .spawn(move || applier_core.run_applier(&applier_rx))
            .map_err(|e| spawn_failed("spawn applier thread", e))?;
        Ok(Engine {
            core,
            subscribers: Registry::default(),
            maps: SealedMaps::default(),
            cache: ValueCache::new((cache_mb as usize).saturating_mul(1 << 20)),
            report,
            background: Mutex::new(vec![
                ("applier", applier),
                ("checkpointer", checkpointer),
                ("spare-map", spare_stocker),
            ]),
            checkpoint_lock,
            index_cleaned,
        })
    }

    /// What opening did: segments loaded from checkpoints, segments and records replayed.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// Writes, now, the index runs (checkpoints) of every sealed segment that has none yet and
    /// merges run files of comparable size, after removing what the index directory held from
    /// before the open and no layer uses. Returns how many run files it wrote. (A background
    /// thread does this after every roll; tests and benchmarks call it to know the work is done.)
    /// As there, the runs are not fdatasynced: a power loss may cost replaying their segments
    /// at the next open, never a wrong index; [`Engine::sync_index`] and `close` make them
    /// durable (see docs/durability.md).
    pub fn checkpoint_now(&self) -> Result<usize> {
        let core = &*self.core;
        clean_index_dir(
            &self.index_cleaned,
            &core.wal,
            &core.state,
            &self.checkpoint_lock,
        );
        // Queued changes may hold a roll: applied, its memtable is frozen and written below.
        drop(core.fresh());
        index::maintain(&core.wal, &core.state, &self.checkpoint_lock)
    }

    /// Writes the index of the active segment so far as a run (after making the log durable
    /// to there), so that an open after a crash reads it instead of replaying those records,
    /// and the log's recovery starts near there (see docs/durability.md). Returns whether it
    /// wrote one. The checkpointer does this by itself when the log has had no roll for
    /// [`crate::TAIL_CHECKPOINT_IDLE`] and [`crate::TAIL_CHECKPOINT_BYTES`] of the active
    /// segment are in memory only: at full write speed, segments seal and are checkpointed
    /// anyway.
    pub fn checkpoint_tail(&self) -> Result<bool> {
        drop(self.core.fresh());
        index::checkpoint_tail(&self.core.wal, &self.core.state, &self.checkpoint_lock)
    }

    /// Makes every index run file durable now (fdatasync), and removes the run files that
    /// merges replaced and kept until then. The checkpointer does this for run files
    /// [`crate::RUN_SYNC_AFTER`] old, and `close` for all; after it, a power loss costs the next
    /// open no replay of what the run files cover.
    pub fn sync_index(&self) -> Result<()> {
        index::sync_runs_aged(
            &self.core.wal,
            &self.core.state,
            &self.checkpoint_lock,
            std::time::Duration::ZERO,
        )
    }

    /// Sets `key` to `value`; returns the new version.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<u64> {
        self.write_one(key, Some(value))
    }

    /// Sets `key` to `value` if `expect` holds, else fails with `Conflict`.
    pub fn put_if(&self, key: &[u8], value: &[u8], expect: Expect) -> Result<u64> {
        self.write(
            &[BatchOp::Put {
                key,
                value,
                expect: Some(expect),
            }],
            None,
        )
        .map(|(_, last)| last)
    }

    /// Removes `key`; returns the tombstone's LSN, or `None` when the key did not exist (then
    /// nothing is written).
    pub fn delete(&self, key: &[u8]) -> Result<Option<u64>> {
        if self.version(key)?.is_none() {
            return Ok(None);
        }
        self.write_one(key, None).map(Some)
    }

    /// Removes `key` if `expect` holds, else fails with `Conflict`.
    pub fn delete_if(&self, key: &[u8], expect: Expect) -> Result<u64> {
        self.write(
            &[BatchOp::Delete {
                key,
                expect: Some(expect),
            }],
            None,
        )
        .map(|(_, last)| last)
    }

    /// Applies `ops` atomically (all or none, after a crash too) and returns their first and
    /// last LSN. Every condition is checked against the state before the batch; when a key
    /// appears twice, the later operation wins. With `epoch`, the batch is refused when the
    /// writer's epoch is below the log's.
    pub fn write_batch(&self, ops: &[BatchOp<'_>], epoch: Option<u64>) -> Result<(u64, u64)> {
        self.write(ops, epoch)
    }

    /// Raises the log's epoch to `epoch` (an epoch record in the log); from then on writes that
    /// carry a lower epoch are refused. Fails with `StaleEpoch` when `epoch` is not above the
    /// current one.
    ///
    /// Unlike puts and deletes, a fence never waits for the checkpointer to catch up (see
    /// [`MAX_FROZEN_MEMTABLES`](crate::MAX_FROZEN_MEMTABLES)): it is one small record, and a
    /// new primary fencing off an old one should not wait behind index writes.
    pub fn fence(&self, epoch: u64) -> Result<u64> {
        let core = &*self.core;
        let bytes = epoch.to_le_bytes();
        let mut st = core.state.write();
        // As in `write_checked`: most of the queue outside the log's lock.
        core.apply_queued(&mut st);
        let appended = core.wal.exclusive(move |l| -> Result<Appended> {
            let mut st = st;
            core.apply(&mut st, queue(l));
            let current = st.epoch();
            if epoch <= current {
                return Err(Error::StaleEpoch {
                    writer: epoch,
                    log: current,
                });
            }
            let appended = l.append(&[Op::Epoch(epoch).entry(&bytes)])?;
            core.queued.store(appended.last_lsn, Ordering::Release);
            core.roll(&mut st, appended.location.segment);
            st.fence(epoch);
            st.note_last(appended.last_lsn, appended.location);
            core.applied.store(appended.last_lsn, Ordering::Relaxed);
            Ok(appended)
        })?;
        self.wait(appended.last_lsn)?;
        Ok(appended.last_lsn)
    }

    /// One put (`value`) or delete (`None`) of `key` without conditions: the path of
    /// [`Engine::write`] for a batch of one unconditional operation, without its slices and
    /// per-operation loops. A put of a small value costs little more than its append, so what
    /// the generic path adds around it shows: counted with callgrind, a put of a 200-byte
    /// value took 1,133 instructions through it and takes 1,003 this way (the log's append
    /// alone, 779).
    fn write_one(&self, key: &[u8], value: Option<&[u8]>) -> Result<u64> {
        // As in `write`.
        self.core
            .backlog
            .wait_for_room(|| self.core.nudge_background());
        let no_epoch = [0u8; 8];
        let op = match value {
            Some(value) => Op::Put { key, value },
            None => Op::Delete { key },
        };
        let entry = op.entry(&no_epoch);
        let appended = self.write_queued(std::slice::from_ref(&entry), |q, appended| {
            q.push(key, appended.first_lsn, appended.location, value.is_none());
        })?;
        self.wait(appended.last_lsn)?;
        Ok(appended.last_lsn)
    }

    fn write<'a>(&self, ops: &[BatchOp<'a>], epoch: Option<u64>) -> Result<(u64, u64)> {
        // Bounded memory: too many frozen memtables waiting to be written hold writers here,
        // before they take any lock (see `index::Backlog`).
        self.core
            .backlog
            .wait_for_room(|| self.core.nudge_background());
        let no_epoch = [0u8; 8];
        let to_entry = |op: &BatchOp<'a>| match *op {
            BatchOp::Put { key, value, .. } => Op::Put { key, value }.entry(&no_epoch),
            BatchOp::Delete { key, .. } => Op::Delete { key }.entry(&no_epoch),
        };
        // A single operation (the common case) needs no heap allocation.
        let one;
        let many: Vec<Entry<'_>>;
        let entries: &[Entry<'_>] = if let [op] = ops {
            one = [to_entry(op)];
            &one
        } else {
            many = ops.iter().map(to_entry).collect();
            &many
        };
        let conditional = epoch.is_some() || ops.iter().any(|op| op.expect().is_some());
        let appended = if conditional {
            self.write_checked(ops, entries, epoch)?
        } else {
            self.write_queued(entries, |q, appended| {
                queue_changes(q, ops, entries, appended);
            })?
        };
        self.wait(appended.last_lsn)?;
        Ok((appended.first_lsn, appended.last_lsn))
    }

    /// A write without conditions: `entries` appended, and their changes queued by
    /// `queue_them`, under the log's lock only (see [`crate::unapplied`]).
    fn write_queued(
        &self,
        entries: &[Entry<'_>],
        queue_them: impl FnOnce(&mut Unapplied, &Appended),
    ) -> Result<Appended> {
        let core = &*self.core;
        let queued = core.wal.exclusive(|l| -> Result<_> {
            let appended = l.append(entries)?;
            let q = queue(l);
            let before = q.len();
            queue_them(q, &appended);
            core.queued.store(appended.last_lsn, Ordering::Release);
            let wake = std::mem::take(&mut q.applier_idle)
                || (before < unapplied::WAKE && q.len() >= unapplied::WAKE);
            let full = q.len() >= unapplied::LIMIT || q.key_bytes() >= unapplied::LIMIT_KEY_BYTES;
            Ok((appended, wake, full))
        });
        let (appended, wake, full) = match queued {
            Ok(q) => q,
            Err(e) => {
                // The closure may have queued the change and taken the idle mark before the
                // log failed to write it out: wake the applier rather than leave it asleep.
                self.wake_applier();
                return Err(e);
            }
        };
        if full {
            core.apply_queued(&mut core.state.write());
        } else if wake {
            self.wake_applier();
        }
        Ok(appended)
    }

    fn wake_applier(&self) {
        if let Some(tx) = &*self.core.applier.lock() {
            // Only a nudge: a send fails only when the thread is gone (closing).
            let _nudge_only = tx.send(Nudge::ChangesQueued);
        }
    }

    /// A write with conditions or an epoch: checked and appended holding the index's write
    /// lock and the log's, so that no other write comes between the check and the append.
    fn write_checked(
        &self,
        ops: &[BatchOp<'_>],
        entries: &[Entry<'_>],
        epoch: Option<u64>,
    ) -> Result<Appended> {
        let core = &*self.core;
        loop {
            // First under the shared lock: a write that fails its check fails here without
            // holding anything exclusively, and one that passes finds what it reads in cache
            // when it checks again below, where every appender waits for it.
            self.read_index(|st| check_all(st, ops, epoch))??;
            let mut st = core.state.write();
            // Most of the queue is applied here, holding the log's lock only for the swap;
            // below, under it, only what came in since.
            core.apply_queued(&mut st);
            let checked = core.wal.exclusive(move |l| -> Result<Checked> {
                let mut st = st;
                core.apply(&mut st, queue(l));
                let verdict = check_all(&st, ops, epoch);
                // A check that read a damaged run decided nothing.
                if ops.iter().any(|op| op.expect().is_some()) && st.damaged() {
                    return Ok(Checked::Repair);
                }
                verdict?;
                let appended = l.append(entries)?;
                let q = queue(l);
                queue_changes(q, ops, entries, &appended);
                core.queued.store(appended.last_lsn, Ordering::Release);
                core.apply(&mut st, q);
                Ok(Checked::Appended(appended))
            })?;
            match checked {
                Checked::Appended(appended) => return Ok(appended),
                Checked::Repair => self.repair_index()?,
            }
        }
    }

    /// Returns under the log's policy: `always` once `lsn` is durable, else at once.
    fn wait(&self, lsn: u64) -> Result<()> {
        if self.core.wal.config().durability() == Durability::Always {
            self.core.wal.wait_durable(lsn)?;
        }
        Ok(())
    }

    /// The value of `key` and its version: from the value cache, else read back from the log
    /// (through a memory map for sealed segments, `pread` for the active one; checksum checked).
    pub fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>> {
        let Some(slot) = self.read_index(|st| st.get(key))? else {
            return Ok(None);
        };
        if let Some(v) = self.cache.get(slot.version) {
            return Ok(Some((v.to_vec(), slot.version)));
        }
        let r = match self
            .maps
            .read(&self.core.wal, slot.location, slot.version)?
        {
            Some(r) => r,
            None => self.core.wal.read_record(slot.location, slot.version)?,
        };
        if r.key != key {
            return Err(Error::Malformed {
                lsn: r.lsn,
                reason: "the index points at another key's record".into(),
            });
        }
        self.cache.insert(slot.version, &r.value);
        Ok(Some((r.value, slot.version)))
    }

    /// The current version of `key`, if it exists.
    pub fn version(&self, key: &[u8]) -> Result<Option<u64>> {
        self.read_index(|st| st.get(key).map(|s| s.version))
    }

    /// Live keys from `from` on (inclusive), in order, with their versions; at most `limit`.
    pub fn scan(&self, from: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, u64)>> {
        self.read_index(|st| st.scan(from, limit))
    }

    /// Runs `f` on the index, with every write that returned before the call applied
    /// (see [`Core::fresh`]). When a run it read turned out damaged (a checkpoint block that
    /// fails its checksum, see [`crate::run`]), what `f` computed is thrown away, the run's
    /// range is replayed in its place, and `f` runs again.
    fn read_index<T>(&self, f: impl Fn(&Index) -> T) -> Result<T> {
        loop {
            {
                let st = self.core.fresh();
                let out = f(&st);
                if !st.damaged() {
                    return Ok(out);
                }
            }
            self.repair_index()?;
        }
    }

    /// Replaces the index runs found damaged by replaying their records.
    fn repair_index(&self) -> Result<()> {
        let _one = self.checkpoint_lock.lock();
        index::repair_damaged(&self.core.wal, &self.core.state).map(|_| ())
    }

    /// Live keys, counted in one pass over every layer of the index (outside its lock), with
    /// the same repair-and-retry as [`Engine::read_index`].
    fn count_live(&self) -> Result<usize> {
        loop {
            let snapshot = self.core.fresh().count_snapshot();
            let n = Index::count_live(&snapshot);
            if !Index::snapshot_damaged(&snapshot) {
                return Ok(n);
            }
            self.repair_index()?;
        }
    }

    /// Counters: keys, epoch, value cache and the log's.
    pub fn stats(&self) -> Result<EngineStats> {
        let keys = self.count_live()?;
        let (epoch, index) = {
            let st = self.core.fresh();
            (st.epoch(), st.shape())
        };
        Ok(EngineStats {
            keys,
            epoch,
            value_cache_bytes: self.cache.bytes(),
            index,
            wal: self.core.wal.stats(),
        })
    }

    /// Number of live keys. Counting reads every layer of the index once: O(keys).
    pub fn len(&self) -> Result<usize> {
        self.count_live()
    }

    /// True when no key is live.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The log's epoch (0 until the first fence).
    pub fn epoch(&self) -> u64 {
        // Epochs are applied by `fence` itself, never queued.
        self.core.state.read().epoch()
    }

    /// Every change from `from_lsn` on (clamped to the oldest LSN held): first those on disk,
    /// then new ones as they become durable.
    pub fn subscribe(&self, from_lsn: u64) -> Subscription<'_> {
        Subscription::new(self, from_lsn)
    }

    /// The lowest LSN a live subscription still has to read, if any: what retention must keep.
    pub fn min_subscribed_lsn(&self) -> Option<u64> {
        self.subscribers.min()
    }

    pub(crate) fn subscribers(&self) -> &Registry {
        &self.subscribers
    }

    /// The log below.
    pub fn wal(&self) -> &Wal {
        &self.core.wal
    }

    /// Clean shutdown (see [`Wal::close`]).
    /// Before closing the log, the index is written whole as run files (see
    /// [`crate::index`]), so the next open replays nothing.
    pub fn close(self) -> Result<()> {
        self.stop_background();
        self.core.apply_queued(&mut self.core.state.write());
        self.core.wal.sync()?;
        if let Err(e) =
            index::write_at_close(&self.core.wal, &self.core.state, &self.checkpoint_lock)
        {
            tracing::warn!(error = %e, "could not write the index at close (the next open replays the active segment)");
        }
        let wal = self.core.wal.clone();
        // The background threads are joined: the engine holds the only other reference.
        drop(self);
        match Arc::try_unwrap(wal) {
            Ok(w) => Ok(w.close()?),
            // Not reachable while the engine is the only other owner; if it ever were,
            // make what was appended durable rather than leave without a word.
            Err(w) => Ok(w.sync().map(|_| ())?),
        }
    }

    fn stop_background(&self) {
        // Dropping the senders ends the threads' receive loops.
        drop(self.core.applier.lock().take());
        drop(std::mem::take(&mut *self.core.on_roll.lock()));
        for (name, handle) in std::mem::take(&mut *self.background.lock()) {
            if handle.join().is_err() {
                tracing::error!(thread = name, "a background thread panicked");
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_background();
    }
}
