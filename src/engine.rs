//! The engine: keyed records on top of the log.
//!
//! Every write is a log record (see [`crate::record`]); the index ([`crate::index`]) maps each
//! live key to its version (the LSN of the record that last wrote it) and the location of that
//! record's frame, from which `get` reads the value back (checksum checked). Opening loads the
//! index's run files (checkpoints written after each roll) and replays only what they do not
//! cover.
//!
//! # Invariants
//! - One writer at a time decides: conditions are checked, the records are handed to the log
//!   (LSNs assigned) and the index is updated under the engine's write lock, so a condition can
//!   never be checked against a state another writer is changing. The wait for durability
//!   happens after the lock is released, so concurrent writers still share fsyncs (group commit).
//! - The index reflects every record handed to the log, durable or not yet; a write returns
//!   under the log's policy (`always`: durable).
//! - A write from a writer epoch below the log's epoch is refused before anything is written.
//!
//! Limits: keys up to 65535 bytes; a batch (keys, values and 32 bytes per record) must fit in
//! one segment minus 104 bytes, else `RecordTooLarge` before anything is written, so nothing is
//! ever accepted that a later open would refuse. Index cost: per key changed in the active
//! segment, a memtable entry in memory (32 bytes, 11 to 21 bytes of hash table, and the key);
//! per key in a run file, 32 bytes plus the key and 10 bloom bits, mapped from the file (page
//! cache, not heap).

use crate::cache::ValueCache;
use crate::error::{Error, Result};
use crate::index::{self, Index, IndexShape};
use crate::mapped::SealedMaps;
use crate::record::Op;
use crate::run::Slot;
use crate::subscription::{Registry, Subscription};
use crate::Config;
use parking_lot::{Mutex, RwLock, RwLockUpgradableReadGuard};
use seglog_wal::format::frame_size;
use seglog_wal::{Durability, Entry, Io, Wal};
use std::path::Path;
use std::sync::Arc;

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
    wal: Arc<Wal>,
    /// The index. Writers hold it as an upgradable read from their checks to their index
    /// update (one writer at a time, readers alongside) and upgrade it to apply the change.
    state: Arc<RwLock<Index>>,
    subscribers: Registry,
    maps: SealedMaps,
    cache: ValueCache,
    report: OpenReport,
    /// The background threads, nudged at every roll, and their nudge channels, taken on
    /// close: the checkpointer, and the thread that prepares the next roll's memtable map
    /// (`index::stock_spare`).
    background: Mutex<Vec<Background>>,
    /// Held while index runs are written or merged (shared with the checkpointer thread).
    checkpoint_lock: Arc<Mutex<()>>,
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
}

/// A background thread: its name, its nudge channel and its handle.
type Background = (
    &'static str,
    std::sync::mpsc::Sender<Nudge>,
    std::thread::JoinHandle<()>,
);

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
        let report = OpenReport {
            run_files: loaded.run_files,
            segments_from_checkpoints: loaded.segments_from_runs,
            segments_replayed: loaded.segments_replayed,
            records_replayed: loaded.records_replayed,
        };
        let state = Arc::new(RwLock::new(index));
        let (tx, rx) = std::sync::mpsc::channel::<Nudge>();
        let worker_wal = wal.clone();
        let worker_state = state.clone();
        let checkpoint_lock = Arc::new(Mutex::new(()));
        let worker_lock = checkpoint_lock.clone();
        let checkpointer = std::thread::Builder::new()
            .name("seglog-checkpointer".into())
            .spawn(move || {
                let (wal, state, lock) = (&*worker_wal, &*worker_state, &*worker_lock);
                if let Err(e) = index::remove_unused(wal, state, lock) {
                    tracing::warn!(error = %e, "could not clean the index directory");
                }
                // Runs replayed at open are written at once; later work comes with each roll.
                let mut nudged = Ok(Nudge::SegmentSealed);
                while let Ok(Nudge::SegmentSealed) = nudged {
                    if let Err(e) = index::maintain(wal, state, lock) {
                        tracing::warn!(error = %e, "could not write index runs (the index stays in memory; reopening replays those segments)");
                    }
                    nudged = rx.recv();
                }
            })
            .map_err(|e| seglog_wal::Error::Io { op: "spawn checkpointer thread", path: wal.dir().to_path_buf(), source: e })?;
        let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Nudge>();
        let spare = state.read().spare();
        let spare_stocker = std::thread::Builder::new()
            .name("seglog-spares".into())
            .spawn(move || {
                while let Ok(Nudge::SegmentSealed) = spare_rx.recv() {
                    index::stock_spare(&spare);
                }
            })
            .map_err(|e| seglog_wal::Error::Io {
                op: "spawn spare-map thread",
                path: wal.dir().to_path_buf(),
                source: e,
            })?;
        Ok(Engine {
            wal,
            state,
            subscribers: Registry::default(),
            maps: SealedMaps::default(),
            cache: ValueCache::new((cache_mb as usize).saturating_mul(1 << 20)),
            report,
            background: Mutex::new(vec![
                ("checkpointer", tx, checkpointer),
                ("spare-map", spare_tx, spare_stocker),
            ]),
            checkpoint_lock,
        })
    }

    /// What opening did: segments loaded from checkpoints, segments and records replayed.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// Writes, now, the index runs (checkpoints) of every sealed segment that has none yet and
    /// merges run files of comparable size. Returns how many run files it wrote. (A background
    /// thread does this after every roll; tests and benchmarks call it to know the work is done.)
    pub fn checkpoint_now(&self) -> Result<usize> {
        index::maintain(&self.wal, &self.state, &self.checkpoint_lock)
    }

    /// Sets `key` to `value`; returns the new version.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<u64> {
        self.write(
            &[BatchOp::Put {
                key,
                value,
                expect: None,
            }],
            None,
        )
        .map(|(_, last)| last)
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
        self.write(&[BatchOp::Delete { key, expect: None }], None)
            .map(|(_, last)| Some(last))
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
    pub fn fence(&self, epoch: u64) -> Result<u64> {
        let st = self.state.upgradable_read();
        let current = st.epoch();
        if epoch <= current {
            return Err(Error::StaleEpoch {
                writer: epoch,
                log: current,
            });
        }
        let bytes = epoch.to_le_bytes();
        let appended = self
            .wal
            .submit_batch_located(&[Op::Epoch(epoch).entry(&bytes)])?;
        {
            let mut st = RwLockUpgradableReadGuard::upgrade(st);
            self.roll(&mut st, appended.location.segment);
            st.fence(epoch);
            st.note_last(appended.last_lsn, appended.location);
        }
        self.wait(appended.last_lsn)?;
        Ok(appended.last_lsn)
    }

    fn write<'a>(&self, ops: &[BatchOp<'a>], epoch: Option<u64>) -> Result<(u64, u64)> {
        // One writer at a time, readers alongside: the upgradable read excludes other writers
        // (and the checkpointer's swaps) from the checks to the index update, so the index
        // changes in LSN order and the checks still hold when the batch is appended.
        let st = loop {
            let st = self.state.upgradable_read();
            if let Some(e) = epoch {
                if e < st.epoch() {
                    return Err(Error::StaleEpoch {
                        writer: e,
                        log: st.epoch(),
                    });
                }
            }
            let mut checked = Ok(());
            let mut read_index = false;
            for op in ops {
                let (key, expect) = match *op {
                    BatchOp::Put { key, expect, .. } | BatchOp::Delete { key, expect } => {
                        (key, expect)
                    }
                };
                if expect.is_some() {
                    read_index = true;
                    checked = check(key, expect, st.get(key).map(|s| s.version));
                    if checked.is_err() {
                        break;
                    }
                }
            }
            // A check that read a damaged run decided nothing: repair, then check again.
            if !read_index || !st.damaged() {
                checked?;
                break st;
            }
            drop(st);
            self.repair_index()?;
        };
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
        let appended = self.wal.submit_batch_located(entries)?;
        {
            let mut st = RwLockUpgradableReadGuard::upgrade(st);
            self.roll(&mut st, appended.location.segment);
            let mut location = appended.location;
            for (i, (op, e)) in ops.iter().zip(entries).enumerate() {
                let version = appended.first_lsn + i as u64;
                if version == appended.last_lsn {
                    st.note_last(version, location);
                }
                match *op {
                    BatchOp::Put { key, .. } => st.set(key, Some(Slot { version, location })),
                    BatchOp::Delete { key, .. } => st.set(key, None),
                }
                location.offset += frame_size(e.key.len(), e.value.len()) as u64;
            }
        }
        self.wait(appended.last_lsn)?;
        Ok((appended.first_lsn, appended.last_lsn))
    }

    /// Records landed in `segment`: when that is a new one, the previous one sealed, the
    /// index freezes its memtable, the checkpointer is nudged to write it as a run, and the
    /// spare-map thread to prepare the map the next roll takes.
    fn roll(&self, st: &mut Index, segment: u64) {
        if st.roll(segment) {
            for (_, tx, _) in self.background.lock().iter() {
                // Only a nudge: a send fails only when the thread is gone (closing).
                let _nudge_only = tx.send(Nudge::SegmentSealed);
            }
        }
    }

    /// Returns under the log's policy: `always` once `lsn` is durable, else at once.
    fn wait(&self, lsn: u64) -> Result<()> {
        if self.wal.config().durability() == Durability::Always {
            self.wal.wait_durable(lsn)?;
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
        let r = match self.maps.read(&self.wal, slot.location, slot.version)? {
            Some(r) => r,
            None => self.wal.read_record(slot.location, slot.version)?,
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

    /// Runs `f` on the index. When a run it read turned out damaged (a checkpoint block that
    /// fails its checksum, see [`crate::run`]), what `f` computed is thrown away, the run's
    /// range is replayed in its place, and `f` runs again.
    fn read_index<T>(&self, f: impl Fn(&Index) -> T) -> Result<T> {
        loop {
            {
                let st = self.state.read();
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
        index::repair_damaged(&self.wal, &self.state).map(|_| ())
    }

    /// Live keys, counted in one pass over every layer of the index (outside its lock), with
    /// the same repair-and-retry as [`Engine::read_index`].
    fn count_live(&self) -> Result<usize> {
        loop {
            let snapshot = self.state.read().count_snapshot();
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
            let st = self.state.read();
            (st.epoch(), st.shape())
        };
        Ok(EngineStats {
            keys,
            epoch,
            value_cache_bytes: self.cache.bytes(),
            index,
            wal: self.wal.stats(),
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
        self.state.read().epoch()
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
        &self.wal
    }

    /// Clean shutdown (see [`Wal::close`]).
    /// Before closing the log, the index is written whole as run files (see
    /// [`crate::index`]), so the next open replays nothing.
    pub fn close(self) -> Result<()> {
        self.stop_background();
        self.wal.sync()?;
        if let Err(e) = index::write_at_close(&self.wal, &self.state, &self.checkpoint_lock) {
            tracing::warn!(error = %e, "could not write the index at close (the next open replays the active segment)");
        }
        let wal = self.wal.clone();
        // Drop joins the checkpointer, the only other owner of the log.
        drop(self);
        match Arc::try_unwrap(wal) {
            Ok(w) => Ok(w.close()?),
            // Not reachable while the checkpointer is the only other owner; if it ever were,
            // make what was appended durable rather than leave without a word.
            Err(w) => Ok(w.sync().map(|_| ())?),
        }
    }

    fn stop_background(&self) {
        // Dropping the sender ends the thread's receive loop.
        for (name, tx, handle) in std::mem::take(&mut *self.background.lock()) {
            drop(tx);
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
