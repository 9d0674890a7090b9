//! The index: every live key's version and record location, in layers.
//!
//! ```text
//!   newest                                                                 oldest
//!   active memtable | frozen memtable | run (memory) | run file | ... | run file
//!   [a, ...]          [f, a-1]          [r, f-1]       [p, r-1]          [log start, ...]
//! ```
//! - The **active memtable** (a hash map, [`crate::keymap`], so a put costs one probe whatever
//!   the key order; its sorted view is built when a scan needs it and kept until the next
//!   change) takes the changes of the records appended to the active segment since it began
//!   (or since the open replayed it).
//! - When the log rolls, the active memtable is **frozen** as it is: its LSN range ends exactly
//!   at the end of the segment that just sealed.
//! - A **run** ([`crate::run`]) is immutable, its entries ordered by key hash (the order the
//!   memtables' tables are placed in, so a flush walks a table instead of sorting it; scans
//!   sort each run by key once, when they first read it). Opening builds runs in memory for the
//!   segments it must replay; a background task writes frozen memtables and in-memory runs
//!   as run files (the checkpoints), and merges run files whose sizes are comparable, so the
//!   number of layers stays logarithmic in the number of keys.
//!
//! # Invariants
//! - The layers' LSN ranges are contiguous and do not overlap; together with the active
//!   memtable they cover the log from its first LSN to the last appended record.
//! - A key's state is the one in the newest layer that mentions it (a tombstone says deleted).
//! - A run file ends where a sealed segment ends, or at a record of the active segment (a run
//!   written at close or by a tail checkpoint, [`checkpoint_tail`]: the record's location
//!   recorded); either way its chain value is recorded, so that the run can be checked against
//!   the log at the next open, and the replay of the active segment then starts after that
//!   record ([`Wal::reader_after`]) instead of at the segment's first.
//! - Layers are replaced only by the background task (under the checkpoint lock), by a run
//!   that covers exactly their ranges; the write path only adds at the newest end. A merged
//!   run file is durable before the files it replaces are unlinked (they are kept until then,
//!   see `Run::retire`), so after a crash the open finds the inputs, the output or both, and
//!   takes the longest valid run at each step.
//! - Run files are not fdatasynced when written, but once [`RUN_SYNC_AFTER`] old (see
//!   `write_run`): a power loss may leave one missing or torn, and the open then replays its
//!   range. `Engine::sync_index` and a clean close sync them all.

use crate::error::Result;
use crate::keymap::KeyMap;
use crate::record::{KIND_DELETE, KIND_EPOCH, KIND_PUT};
use crate::run::{self, Backing, KeyRef, Run, RunBuilder, RunMeta, Slot, Val};
use parking_lot::{Mutex, RwLock};
use seglog_wal::dir::INDEX_DIR;
use seglog_wal::{Io, Location, Wal, WalReader};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::OnceLock;

type Sorted = Vec<(Vec<u8>, Val)>;

/// The active memtable's live state in a run's order, (hash, key): what counting merges.
type Hashed = Vec<(u64, Vec<u8>, Val)>;

fn sorted(map: &KeyMap) -> Sorted {
    map.sorted()
        .into_iter()
        .map(|n| {
            let (k, v) = map.at(n);
            (k.to_vec(), v)
        })
        .collect()
}

/// The entries of a sorted view from the first key at least `from`.
fn sorted_from<'a>(v: &'a [(Vec<u8>, Val)], from: &[u8]) -> Source<'a> {
    let start = v.partition_point(|(k, _)| k.as_slice() < from);
    Source::Sorted(v[start..].iter())
}

/// The active memtable.
pub(crate) struct Memtable {
    map: KeyMap,
    /// Whether its map was sized for a segment's worth of changes: at a roll, like the last
    /// memtable; else (the first memtable after open) after its first [`SIZING_SAMPLE`] keys
    /// (see [`Index::set`]).
    sized: bool,
    /// Its sorted view, built for scans and dropped at the next change.
    sorted: Mutex<Option<Arc<Sorted>>>,
}

impl Memtable {
    fn new(seed: u64) -> Memtable {
        Memtable {
            map: KeyMap::with_capacity(0, 0, seed),
            sized: false,
            sorted: Mutex::new(None),
        }
    }

    /// Its state in a run's order (see [`Hashed`]).
    fn hashed(&self) -> Hashed {
        let seed = self.map.seed();
        let mut v: Hashed = self
            .sorted()
            .iter()
            .map(|(k, v)| (run::key_hash(seed, k), k.clone(), *v))
            .collect();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| run::cmp_keys(&a.1, &b.1)));
        v
    }

    fn sorted(&self) -> Arc<Sorted> {
        self.sorted
            .lock()
            .get_or_insert_with(|| Arc::new(sorted(&self.map)))
            .clone()
    }
}

/// Memtable maps kept for reuse (see [`SparePool`]).
pub(crate) type Spare = Arc<Mutex<SparePool>>;

/// Keys the first memtable after open takes before it is sized for its segment.
const SIZING_SAMPLE: usize = 4096;

/// Most maps a [`SparePool`] keeps.
const SPARES: usize = 2;

/// Memtable maps for the next rolls, so that a roll neither allocates nor leaves the writer
/// to fault in fresh memory put after put (a tenth of a put's time with 200-byte values): a
/// dropped frozen memtable gives its map back, and a background thread empties it, or
/// allocates one and writes its pages, before the roll that takes it (see [`stock_spare`]). At most [`SPARES`] maps are kept, so the memory held is bounded by that
/// many more memtables.
pub(crate) struct SparePool {
    /// Empty, sized for `want` and its pages written: ready for a roll.
    ready: Vec<KeyMap>,
    /// Given back by dropped frozen memtables, not emptied yet.
    returned: Vec<KeyMap>,
    /// Keys and key bytes the next memtable is expected to hold: the last frozen one's.
    want: (usize, usize),
    /// The index's hash seed, which every map takes.
    seed: u64,
}

impl SparePool {
    fn new(seed: u64) -> SparePool {
        SparePool {
            ready: Vec::new(),
            returned: Vec::new(),
            want: (0, 0),
            seed,
        }
    }
}

impl Frozen {
    /// Freezes `map` (its pending changes settled: a flush walks its table, see
    /// [`KeyMap::hash_walk`]).
    fn new(mut map: KeyMap, idx: &Index, first_lsn: u64, last_lsn: u64, epoch: u64) -> Frozen {
        map.settle();
        idx.backlog.frozen.fetch_add(1, Ordering::AcqRel);
        Frozen {
            map,
            spare: idx.spare.clone(),
            backlog: idx.backlog.clone(),
            sorted: OnceLock::new(),
            first_lsn,
            last_lsn,
            epoch,
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        {
            let mut pool = self.spare.lock();
            if pool.ready.len() + pool.returned.len() < SPARES {
                let empty = KeyMap::with_capacity(0, 0, pool.seed);
                pool.returned.push(std::mem::replace(&mut self.map, empty));
            }
        }
        self.backlog.frozen.fetch_sub(1, Ordering::AcqRel);
        let _g = self.backlog.lock.lock();
        self.backlog.written.notify_all();
    }
}

/// Makes a map ready for the next roll when none is: a returned one emptied, else a new one,
/// sized like the last memtable, its pages written. Runs on a thread of its own, woken at
/// every roll (not on the checkpointer's: a flush takes about as long as a segment takes to
/// fill at full speed, so the checkpointer is often still busy at the next roll).
pub(crate) fn stock_spare(spare: &Spare) {
    let (returned, want, seed) = {
        let mut pool = spare.lock();
        if !pool.ready.is_empty() || pool.want.0 == 0 {
            return;
        }
        (pool.returned.pop(), pool.want, pool.seed)
    };
    let mut map = match returned {
        Some(mut m) => {
            m.reset(want.0, want.1);
            m
        }
        None => KeyMap::with_capacity(want.0, want.1, seed),
    };
    map.touch_capacity();
    let mut pool = spare.lock();
    if pool.ready.len() + pool.returned.len() < SPARES {
        pool.ready.push(map);
    }
}

/// Frozen memtables a writer may leave waiting to be written before it waits for the
/// checkpointer (see [`Backlog`]).
pub const MAX_FROZEN_MEMTABLES: usize = 4;

/// The frozen memtables alive, and a gate that holds writers while there are too many.
///
/// A frozen memtable stays in memory until the checkpointer has written it as a run. Writing
/// one costs the checkpointer about as much CPU as the puts that filled it cost the writer,
/// and merges add to that, so writers at full speed on a small machine outrun it; without a
/// bound, the memtables waiting would grow without end. Past [`MAX_FROZEN_MEMTABLES`] a
/// writer waits (before it appends, holding no lock) until one is written, as a
/// write stall does in RocksDB. It never waits while the checkpointer is failing (its
/// last round returned an error: the index then stays in memory, as documented) or after
/// the engine began closing.
#[derive(Default)]
pub(crate) struct Backlog {
    frozen: std::sync::atomic::AtomicUsize,
    /// Cleared while the checkpointer is failing, and for good when it stops.
    writing: std::sync::atomic::AtomicBool,
    lock: Mutex<()>,
    written: parking_lot::Condvar,
}

impl Backlog {
    /// Frozen memtables alive.
    pub(crate) fn frozen(&self) -> usize {
        self.frozen.load(Ordering::Acquire)
    }

    #[inline]
    fn over(&self) -> bool {
        self.frozen() > MAX_FROZEN_MEMTABLES && self.writing.load(Ordering::Acquire)
    }

    /// Returns once at most [`MAX_FROZEN_MEMTABLES`] memtables wait (or the checkpointer is
    /// not writing); `nudge` wakes the checkpointer, called before each wait.
    #[inline]
    pub(crate) fn wait_for_room(&self, nudge: impl Fn()) {
        if self.over() {
            self.wait_for_room_slow(nudge);
        }
    }

    #[cold]
    fn wait_for_room_slow(&self, nudge: impl Fn()) {
        let mut g = self.lock.lock();
        while self.over() {
            nudge();
            // The timeout only re-sends the nudge; every change of the count notifies.
            self.written
                .wait_for(&mut g, std::time::Duration::from_millis(100));
        }
    }

    /// Whether the checkpointer is writing runs (see the type's docs); wakes the waiters.
    pub(crate) fn set_writing(&self, writing: bool) {
        self.writing.store(writing, Ordering::Release);
        let _g = self.lock.lock();
        self.written.notify_all();
    }

    /// Marks the checkpointer writing until the guard drops, however its thread ends (a
    /// panic included): writers must never wait for a checkpointer that is gone.
    pub(crate) fn writing_until_dropped(&self) -> WritingGuard<'_> {
        self.set_writing(true);
        WritingGuard(self)
    }
}

/// See [`Backlog::writing_until_dropped`].
pub(crate) struct WritingGuard<'a>(&'a Backlog);

impl Drop for WritingGuard<'_> {
    fn drop(&mut self) {
        self.0.set_writing(false);
    }
}

/// An immutable memtable: the changes of `first_lsn..=last_lsn`.
pub(crate) struct Frozen {
    map: KeyMap,
    /// Where its map goes when the frozen memtable is dropped (flushed and swapped out).
    spare: Spare,
    /// Counts it while it lives.
    backlog: Arc<Backlog>,
    /// Its entry numbers in key order, sorted the first time a scan needs them.
    sorted: OnceLock<Vec<u32>>,
    first_lsn: u64,
    last_lsn: u64,
    epoch: u64,
}

/// One immutable layer of the index.
#[derive(Clone)]
pub(crate) enum Layer {
    Frozen(Arc<Frozen>),
    Run(Arc<Run>),
}

/// A layer's entries as [`merge`] reads them, (hash, key, change): in a run's order (hash,
/// key), or in key order with every hash 0. An enum rather than a boxed iterator, so that the
/// merge's call for the next entry is direct and inlined (building a flush's run of 262k
/// entries took 29 ms through a boxed iterator, 17.5-19.5 ms through this).
enum Source<'a> {
    /// A frozen memtable, in a run's order.
    Walk(crate::keymap::HashWalk<'a>),
    /// A run, in its order.
    Run(run::Cursor<'a>),
    /// The active memtable in a run's order.
    Hashed(std::slice::Iter<'a, (u64, Vec<u8>, Val)>),
    /// A frozen memtable, in key order.
    Memtable(crate::keymap::InOrder<'a>),
    /// A run, in key order.
    RunKeys(run::KeyCursor<'a>),
    /// The active memtable's sorted view, in key order.
    Sorted(std::slice::Iter<'a, (Vec<u8>, Val)>),
}

impl<'a> Iterator for Source<'a> {
    type Item = (u64, KeyRef<'a>, Val);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Source::Walk(w) => w.next(),
            Source::Run(r) => r.next(),
            Source::Hashed(h) => h.next().map(|(h, k, v)| (*h, KeyRef::new(k), *v)),
            Source::Memtable(m) => m.next().map(|(k, v)| (0, KeyRef::new(k), v)),
            Source::RunKeys(r) => r.next(),
            Source::Sorted(s) => s.next().map(|(k, v)| (0, KeyRef::new(k), *v)),
        }
    }
}

impl Layer {
    fn first_lsn(&self) -> u64 {
        match self {
            Layer::Frozen(f) => f.first_lsn,
            Layer::Run(r) => r.meta().first_lsn,
        }
    }
    fn last_lsn(&self) -> u64 {
        match self {
            Layer::Frozen(f) => f.last_lsn,
            Layer::Run(r) => r.meta().last_lsn,
        }
    }
    fn epoch(&self) -> u64 {
        match self {
            Layer::Frozen(f) => f.epoch,
            Layer::Run(r) => r.meta().epoch,
        }
    }
    fn len(&self) -> usize {
        match self {
            Layer::Frozen(f) => f.map.len(),
            Layer::Run(r) => r.len(),
        }
    }
    /// Bytes of keys held (at least those of the keys it holds).
    fn key_bytes(&self) -> usize {
        match self {
            Layer::Frozen(f) => f.map.key_bytes(),
            Layer::Run(r) => r.key_bytes(),
        }
    }
    fn in_file(&self) -> bool {
        matches!(self, Layer::Run(r) if r.in_file())
    }
    /// True for a run found damaged (see [`Run::damaged`]); memtables never are.
    fn damaged(&self) -> bool {
        matches!(self, Layer::Run(r) if r.damaged())
    }
    fn same(&self, other: &Layer) -> bool {
        match (self, other) {
            (Layer::Frozen(a), Layer::Frozen(b)) => Arc::ptr_eq(a, b),
            (Layer::Run(a), Layer::Run(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
    /// What the layer says about `key`, whose hash under the index's seed is `hash`.
    fn get(&self, hash: u64, key: &[u8]) -> Option<Val> {
        match self {
            Layer::Frozen(f) => f.map.get_hashed(hash, key),
            Layer::Run(r) => r.get(hash, key),
        }
    }
    /// Its entries in a run's order.
    fn iter(&self) -> Source<'_> {
        match self {
            Layer::Frozen(f) => Source::Walk(f.map.hash_walk()),
            Layer::Run(r) => Source::Run(r.iter()),
        }
    }
    /// Its entries from the first key at least `from`, in key order.
    fn iter_keys_from<'a>(&'a self, from: &[u8]) -> Source<'a> {
        match self {
            Layer::Frozen(f) => {
                let order = f.sorted.get_or_init(|| f.map.sorted());
                let start = order.partition_point(|&n| f.map.at(n).0 < from);
                Source::Memtable(f.map.in_order(&order[start..]))
            }
            Layer::Run(r) => Source::RunKeys(r.iter_keys_from(from)),
        }
    }
}

/// Visits each key once, in the sources' order, with the state of the first (newest) source
/// that holds it; stops when `f` returns false. Sources are all in a run's order, (hash, key),
/// or all in key order with every hash 0. Returns false when it stopped at an entry below the
/// last one visited: sound sources are ordered, a damaged run's block reads as hash 0 and an
/// empty key (see [`Run::damaged`]), and what a merge visits must never be out of order.
///
/// A tournament over the sources' heads: each node of a complete binary tree holds the source
/// whose head wins below it (smallest; on equal entries the newer source), so after a source
/// advances only the matches on its path to the root are played again: log2 of the number of
/// sources comparisons an entry instead of one a source (2 instead of 4 for a merge of four
/// run files, 5 instead of 24 for a scan over 24). In a run's order most matches are decided
/// by the 64-bit hashes alone.
#[must_use = "entries out of order mean a damaged source"]
fn merge<'a, I: Iterator<Item = (u64, KeyRef<'a>, Val)>>(
    mut sources: Vec<I>,
    mut f: impl FnMut(usize, u64, KeyRef<'a>, Val) -> bool,
) -> bool {
    /// Keys are read only when the hashes are equal (in key order, where every hash is 0,
    /// always).
    #[inline]
    fn cmp(a: (u64, KeyRef<'_>), b: (u64, KeyRef<'_>)) -> std::cmp::Ordering {
        a.0.cmp(&b.0)
            .then_with(|| run::cmp_keys(a.1.get(), b.1.get()))
    }
    let n = sources.len();
    if n <= 1 {
        // One source (a flush of one memtable): no tournament, only the order check (with
        // a direct source, a flush's build of 262k entries took 16 ms this way, 21 ms
        // through the tournament).
        let mut last: Option<(u64, KeyRef<'a>)> = None;
        for (hash, key, val) in sources.pop().into_iter().flatten() {
            match last.map(|l| cmp((hash, key), l)) {
                Some(std::cmp::Ordering::Equal) => continue,
                Some(std::cmp::Ordering::Less) => return false,
                _ => {}
            }
            if !f(0, hash, key, val) {
                return true;
            }
            last = Some((hash, key));
        }
        return true;
    }
    let leaves = n.next_power_of_two();
    let mut heads: Vec<Option<(u64, KeyRef<'a>, Val)>> =
        sources.iter_mut().map(|s| s.next()).collect();
    heads.resize(leaves, None);
    // Whether source `a`'s head goes before source `b`'s (an exhausted source goes last).
    let before =
        |heads: &[Option<(u64, KeyRef<'a>, Val)>], a: usize, b: usize| match (heads[a], heads[b]) {
            (Some((ha, ka, _)), Some((hb, kb, _))) => match cmp((ha, ka), (hb, kb)) {
                std::cmp::Ordering::Equal => a < b,
                o => o == std::cmp::Ordering::Less,
            },
            (Some(_), None) => true,
            (None, _) => false,
        };
    // tree[1] is the root, tree[leaves + i] the leaf of source i.
    let mut tree = vec![0usize; 2 * leaves];
    for (i, t) in tree[leaves..].iter_mut().enumerate() {
        *t = i;
    }
    for node in (1..leaves).rev() {
        let (a, b) = (tree[2 * node], tree[2 * node + 1]);
        tree[node] = if before(&heads, a, b) { a } else { b };
    }
    let mut last: Option<(u64, KeyRef<'a>)> = None;
    loop {
        let w = tree[1];
        let Some((hash, key, val)) = heads[w] else {
            return true;
        };
        // The first of equal entries to win is the newest source's: older ones are skipped.
        match last.map(|l| cmp((hash, key), l)) {
            Some(std::cmp::Ordering::Equal) => {}
            Some(std::cmp::Ordering::Less) => return false,
            _ => {
                if !f(w, hash, key, val) {
                    return true;
                }
                last = Some((hash, key));
            }
        }
        heads[w] = sources[w].next();
        let mut node = (leaves + w) / 2;
        while node >= 1 {
            let (a, b) = (tree[2 * node], tree[2 * node + 1]);
            tree[node] = if before(&heads, a, b) { a } else { b };
            node /= 2;
        }
    }
}

/// The index (see the module docs).
pub(crate) struct Index {
    active: Memtable,
    /// First LSN the active memtable covers.
    active_first: u64,
    /// Highest epoch fenced by a record of the active memtable's range.
    active_epoch: u64,
    /// Segment (first LSN) the active memtable's records are in.
    active_segment: u64,
    /// About where in that segment the active memtable's records start (see
    /// [`Index::tail_bytes`]).
    active_from: u64,
    /// Immutable layers, newest first.
    layers: Vec<Layer>,
    /// Maps for the next rolls to reuse.
    spare: Spare,
    /// The frozen memtables alive (see [`Backlog`]).
    backlog: Arc<Backlog>,
    /// The log's segment size (for sizing the first memtable, see [`Index::set`]).
    segment_bytes: u64,
    /// The log's epoch: the highest ever fenced.
    epoch: u64,
    /// LSN and location of the last record the index has seen, when it is in the active
    /// segment (a run written at close records it, see [`write_at_close`]).
    last_record: Option<(u64, Location)>,
    /// Runs found damaged after open and replaced by replay, since open.
    repaired: usize,
    /// The hash seed of the index (see [`load_seed`]).
    seed: u64,
}

/// What [`Index::open`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Loaded {
    pub segments_from_runs: usize,
    pub run_files: usize,
    pub segments_replayed: usize,
    pub records_replayed: u64,
}

impl Index {
    /// Builds the index of `wal`: valid run files where they exist, replay elsewhere.
    pub(crate) fn open(wal: &Wal) -> Result<(Index, Loaded)> {
        let mut loaded = Loaded::default();
        let sealed = wal.sealed_segments()?;
        let idx_dir = wal.dir().join(INDEX_DIR);
        let seed = load_seed(wal);
        let mut files: Vec<(u64, u64)> = wal
            .io()
            .list_dir(&idx_dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|n| run::parse_file_name(n))
            .collect();
        // At each position, the longest run first.
        files.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        // What each stretch of the log comes from: a run file, or a replay (LSN range, chain).
        enum Part {
            File(Box<Run>),
            Replay(u64, u64, u32),
        }
        let mut parts: Vec<Part> = Vec::new();
        let mut tail_start: TailStart = None;
        let mut next = wal.first_lsn();
        loop {
            let mut used = None;
            for &(first, last) in files.iter().filter(|f| f.0 == next) {
                let path = idx_dir.join(run::file_name(first, last));
                match Run::open(&**wal.io(), &path, wal.files_are_real()) {
                    Some(r)
                        if r.meta().first_lsn == first
                            && r.meta().last_lsn == last
                            && r.meta().seed == seed
                            && ends_in_log(wal, &sealed, &r) =>
                    {
                        used = Some(r);
                        break;
                    }
                    _ => {
                        tracing::warn!(run = %path.display(), "index run unusable; replaying the records it covers instead")
                    }
                }
            }
            if let Some(r) = used {
                let m = r.meta();
                loaded.run_files += 1;
                loaded.segments_from_runs += sealed
                    .iter()
                    .filter(|s| s.first_lsn >= m.first_lsn && s.last_lsn <= m.last_lsn)
                    .count();
                next = m.last_lsn + 1;
                parts.push(Part::File(Box::new(r)));
                continue;
            }
            match sealed
                .iter()
                .find(|s| s.first_lsn <= next && next <= s.last_lsn)
            {
                Some(seg) => {
                    parts.push(Part::Replay(next, seg.last_lsn, seg.chain_crc));
                    loaded.segments_replayed += 1;
                    next = seg.last_lsn + 1;
                }
                None => {
                    // The rest of the log: the active segment (or what a run left of it).
                    parts.push(Part::Replay(next, u64::MAX, 0));
                    // After a run that ends inside it, read from that run's last record on
                    // (`ends_in_log` found it there, with the run's chain value).
                    if let Some(Part::File(r)) = parts.iter().rev().nth(1) {
                        let m = r.meta();
                        tail_start = m.end.map(|at| (at, m.last_lsn, m.chain_crc));
                    }
                    break;
                }
            }
        }
        // Segments replay independently: one worker a core, each taking the next segment (or
        // half of one, with few segments), and a read-ahead asking for them in that order
        // (`replay_all`).
        let jobs: Vec<(u64, u64, u32)> = parts
            .iter()
            .filter_map(|p| match *p {
                Part::Replay(a, b, c) => Some((a, b, c)),
                Part::File(_) => None,
            })
            .collect();
        let mut replayed = replay_all(wal, &jobs, seed, tail_start, &sealed).into_iter();
        let mut oldest_first: Vec<Layer> = Vec::with_capacity(parts.len());
        for p in parts {
            let runs = match p {
                Part::File(r) => vec![*r],
                Part::Replay(..) => {
                    // One result a job, in job order.
                    let (runs, n) = replayed.next().ok_or_else(|| {
                        crate::Error::Index("replay returned fewer results than jobs".into())
                    })??;
                    loaded.records_replayed += n;
                    runs
                }
            };
            oldest_first.extend(runs.into_iter().map(|r| Layer::Run(Arc::new(r))));
        }
        let active_first = oldest_first.last().map_or(next, |l| l.last_lsn() + 1);
        oldest_first.reverse();
        let index = Index {
            active: Memtable::new(seed),
            active_first,
            active_epoch: 0,
            active_segment: wal.active_segment().unwrap_or(0),
            // Where the changes only in memory begin: after the newest run file, when it ends
            // inside the active segment.
            active_from: oldest_first
                .iter()
                .find_map(|l| match l {
                    Layer::Run(r) if r.in_file() => Some(r.meta().end),
                    _ => None,
                })
                .flatten()
                .filter(|at| Some(at.segment) == wal.active_segment())
                .map_or(0, |at| at.offset),
            epoch: oldest_first.iter().map(Layer::epoch).max().unwrap_or(0),
            last_record: match oldest_first.first() {
                Some(Layer::Run(r)) => r.meta().end.map(|at| (r.meta().last_lsn, at)),
                _ => None,
            },
            layers: oldest_first,
            spare: Arc::new(Mutex::new(SparePool::new(seed))),
            backlog: Arc::default(),
            repaired: 0,
            seed,
            segment_bytes: wal.config().segment_size_bytes,
        };
        Ok((index, loaded))
    }

    /// The live slot of `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Slot> {
        let hash = run::key_hash(self.seed, key);
        if let Some(v) = self.active.map.get_hashed(hash, key) {
            return v;
        }
        self.layers.iter().find_map(|l| l.get(hash, key)).flatten()
    }

    /// Records the change a record in the active segment made. Call [`Index::roll`] first.
    pub(crate) fn set(&mut self, key: &[u8], val: Val) {
        self.active.map.set(key, val);
        if !self.active.sized && self.active.map.settled() >= SIZING_SAMPLE {
            if let Some(at) = val {
                self.size_active(at);
            }
        }
        *self.active.sorted.get_mut() = None;
    }

    /// Sizes the first memtable after open for the whole segment, extrapolating from its
    /// first changes, `at` the latest: a map that grew by doubling would place its keys again
    /// at each step, about a tenth of a put's time over the first segment.
    fn size_active(&mut self, at: Slot) {
        self.active.sized = true;
        let in_segment = at.version.saturating_sub(self.active_segment) + 1;
        let in_memtable = at.version.saturating_sub(self.active_first) + 1;
        let keys = self.active.map.settled() as u64;
        let key_bytes = self.active.map.key_bytes() as u64;
        if at.location.offset == 0 || keys == 0 {
            return;
        }
        // Records the segment will hold at the size of those so far, and the share of them
        // that changed a key not changed before.
        let records = self.segment_bytes.saturating_mul(in_segment) / at.location.offset;
        let expect_keys = records.saturating_mul(keys) / in_memtable.max(keys);
        let expect_bytes = expect_keys.saturating_mul(key_bytes) / keys;
        // A segment holds at most 1 GiB (`MAX_SEGMENT_SIZE`) of records of at least a frame
        // header each: both fit a usize.
        self.active
            .map
            .expect(expect_keys as usize, expect_bytes as usize);
    }

    /// Notes the last record applied: its LSN and location.
    pub(crate) fn note_last(&mut self, lsn: u64, at: Location) {
        self.last_record = Some((lsn, at));
    }

    /// Records an epoch fence.
    pub(crate) fn fence(&mut self, epoch: u64) {
        self.active_epoch = self.active_epoch.max(epoch);
        self.epoch = self.epoch.max(epoch);
    }

    /// The pool of maps for the next rolls (see [`stock_spare`]).
    pub(crate) fn backlog(&self) -> Arc<Backlog> {
        self.backlog.clone()
    }

    pub(crate) fn spare(&self) -> Spare {
        self.spare.clone()
    }

    /// The log's epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Called before applying records appended to `segment`: when that is a new segment, the
    /// previous one sealed and the active memtable is frozen. Returns true when it froze.
    pub(crate) fn roll(&mut self, segment: u64) -> bool {
        if segment == self.active_segment {
            return false;
        }
        // `segment` is the first LSN of the new segment: the memtable's range ends before it.
        if self.active_first < segment {
            // The next segment likely changes as many keys: sized now, the new memtable's
            // table never grows.
            let expected = (self.active.map.len(), self.active.map.key_bytes());
            let reused = {
                let mut pool = self.spare.lock();
                pool.want = expected;
                pool.ready.pop().or_else(|| pool.returned.pop())
            };
            // A ready map is empty and sized already: its reset costs nothing.
            let map = match reused {
                Some(mut m) => {
                    m.reset(expected.0, expected.1);
                    m
                }
                None => KeyMap::with_capacity(expected.0, expected.1, self.seed),
            };
            let fresh = Memtable {
                map,
                sized: true,
                sorted: Mutex::new(None),
            };
            let map = std::mem::replace(&mut self.active, fresh).map;
            let frozen = Frozen::new(map, self, self.active_first, segment - 1, self.active_epoch);
            self.layers.insert(0, Layer::Frozen(Arc::new(frozen)));
        }
        self.active_first = segment;
        self.active_epoch = 0;
        self.active_segment = segment;
        self.active_from = 0;
        true
    }

    /// About how many bytes of the active segment the active memtable's changes come from
    /// (what an open after a crash would replay of them).
    pub(crate) fn tail_bytes(&self) -> u64 {
        match self.last_record {
            Some((lsn, at)) if lsn >= self.active_first && at.segment == self.active_segment => {
                at.offset.saturating_sub(self.active_from)
            }
            _ => 0,
        }
    }

    fn sources<'a>(
        active: &'a [(Vec<u8>, Val)],
        layers: &'a [Layer],
        from: &[u8],
    ) -> Vec<Source<'a>> {
        let mut s: Vec<Source<'a>> = Vec::with_capacity(layers.len() + 1);
        s.push(sorted_from(active, from));
        s.extend(layers.iter().map(|l| l.iter_keys_from(from)));
        s
    }

    /// Live keys from `from` on, in order, with their versions; at most `limit`.
    pub(crate) fn scan(&self, from: &[u8], limit: usize) -> Vec<(Vec<u8>, u64)> {
        let mut out = Vec::new();
        if limit == 0 {
            return out;
        }
        let active = self.active.sorted();
        // Out of order only past a damaged block, which the caller checks for.
        let _sorted = merge(Self::sources(&active, &self.layers, from), |_, _, k, v| {
            if let Some(s) = v {
                out.push((k.get().to_vec(), s.version));
            }
            out.len() < limit
        });
        out
    }

    /// What counting live keys needs, taken under the lock: the active memtable in a run's
    /// order (it is bounded by a segment) and the immutable layers.
    pub(crate) fn count_snapshot(&self) -> (Hashed, Vec<Layer>) {
        (self.active.hashed(), self.layers.clone())
    }

    /// Counts the live keys of a [`Index::count_snapshot`] (one pass over every layer, in a
    /// run's order: no layer needs its key order for this).
    pub(crate) fn count_live(snapshot: &(Hashed, Vec<Layer>)) -> usize {
        let mut n = 0;
        // A count reads no key unless two hashes are equal; the key heaps are checked anyway,
        // so that a count, like any read of the whole index, finds damage wherever it is.
        for l in &snapshot.1 {
            if let Layer::Run(r) = l {
                if r.key_heap().is_none() {
                    return 0;
                }
            }
        }
        let mut sources: Vec<Source<'_>> = Vec::with_capacity(snapshot.1.len() + 1);
        sources.push(Source::Hashed(snapshot.0.iter()));
        sources.extend(snapshot.1.iter().map(Layer::iter));
        // Out of order only past a damaged block, which the caller checks for.
        let _sorted = merge(sources, |_, _, _, v| {
            n += usize::from(v.is_some());
            true
        });
        n
    }

    /// True when a run of the index was found damaged: what was read from the index since
    /// must be discarded and read again after [`repair_damaged`].
    pub(crate) fn damaged(&self) -> bool {
        self.layers.iter().any(Layer::damaged)
    }

    /// [`Index::damaged`], for the layers of a [`Index::count_snapshot`].
    pub(crate) fn snapshot_damaged(snapshot: &(Hashed, Vec<Layer>)) -> bool {
        snapshot.1.iter().any(Layer::damaged)
    }

    /// Layers and the bytes they hold: (layers, run files, bytes in memory, bytes in files).
    pub(crate) fn shape(&self) -> IndexShape {
        let mut s = IndexShape {
            layers: self.layers.len() + 1,
            memtable_entries: self.active.map.len(),
            runs_repaired: self.repaired,
            ..IndexShape::default()
        };
        for l in &self.layers {
            match l {
                Layer::Frozen(f) => s.memtable_entries += f.map.len(),
                Layer::Run(r) if r.in_file() => {
                    s.run_files += 1;
                    s.run_file_bytes += r.byte_len() as u64;
                    s.unsynced_run_files += usize::from(!r.synced());
                    s.retired_run_files += r.retired().len();
                }
                Layer::Run(r) => s.memory_run_bytes += r.byte_len() as u64,
            }
        }
        s
    }
}

/// How the index is made up (see [`crate::EngineStats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexShape {
    /// Layers, the active memtable included.
    pub layers: usize,
    /// Entries in memtables (active and frozen), waiting to be written as runs.
    pub memtable_entries: usize,
    /// Runs built in memory by replay, waiting to be written: their bytes.
    pub memory_run_bytes: u64,
    /// Run files (the index checkpoints).
    pub run_files: usize,
    /// Their bytes (mapped, in the page cache, not the heap).
    pub run_file_bytes: u64,
    /// Run files not yet known durable (see [`RUN_SYNC_AFTER`]).
    pub unsynced_run_files: usize,
    /// Run files that merges replaced, kept until the merged runs are durable.
    pub retired_run_files: usize,
    /// Run files found damaged since open (a block failed its checksum when first read) and
    /// replaced by replaying the records they covered.
    pub runs_repaired: usize,
}

/// What replaying a job gives: its runs, oldest first (none when empty; two when the job was
/// read in two parts, see [`replay_all`]), and the records read.
type Replayed = Result<(Vec<Run>, u64)>;

/// True when the log holds the end of `run`: a sealed segment ending at its last LSN with its
/// chain value, or else the record at the location the run recorded, with that chain value.
fn ends_in_log(wal: &Wal, sealed: &[seglog_wal::SealedSegment], run: &Run) -> bool {
    let m = run.meta();
    if let Some(s) = sealed.iter().find(|s| s.last_lsn == m.last_lsn) {
        return s.chain_crc == m.chain_crc;
    }
    match m.end {
        Some(at) => wal
            .read_record(at, m.last_lsn)
            .is_ok_and(|r| r.crc == m.chain_crc),
        None => false,
    }
}

/// A replayed record's change: its key (in [`ReplayBuffers::keys`]) and its hash, and its
/// value, packed into 32 bytes (the run is built from the changes in hash order, at random, so
/// their size is cache misses). A replay job covers one segment, so the segment is the job's,
/// and offsets are 32 bits (segments are at most 1 GiB).
struct Change {
    key_at: u32,
    key_len: u32,
    version: u64,
    hash: u64,
    offset: u32,
    live: bool,
}

impl Change {
    fn key<'k>(&self, keys: &'k [u8]) -> &'k [u8] {
        let at = self.key_at as usize;
        &keys[at..at + self.key_len as usize]
    }

    fn val(&self, segment: u64) -> Val {
        self.live.then_some(Slot {
            version: self.version,
            location: Location {
                segment,
                offset: u64::from(self.offset),
            },
        })
    }
}

/// The working memory of a replay worker, reused from one segment to the next (a fresh
/// allocation per segment would be paid in page faults, more than the replay's other work).
#[derive(Default)]
struct ReplayBuffers {
    keys: Vec<u8>,
    changes: Vec<Change>,
    sort: run::KeySort,
}

/// What [`replay`] read: the run (none for an empty range), how many records, and where it
/// stopped when it stopped at its `stop_at` offset (the location and LSN of the first record
/// there, not replayed).
struct ReplayedPart {
    run: Option<Run>,
    records: u64,
    stopped: Option<(Location, u64)>,
}

impl ReplayedPart {
    fn empty() -> ReplayedPart {
        ReplayedPart {
            run: None,
            records: 0,
            stopped: None,
        }
    }
}

/// Replays `from..=to` from `reader` into a run held in memory, with `chain_crc` as the chain
/// value at its end (0 when the range does not end a sealed segment); with `stop_at`, it stops
/// before the first record whose frame starts at or after that offset.
fn replay(
    wal: &Wal,
    (from, to, chain_crc): (u64, u64, u32),
    seed: u64,
    mut reader: WalReader,
    stop_at: Option<u64>,
    bufs: &mut ReplayBuffers,
) -> Result<ReplayedPart> {
    let ReplayBuffers {
        keys,
        changes: items,
        sort,
    } = bufs;
    keys.clear();
    items.clear();
    let mut epoch = 0u64;
    let mut last = None;
    let mut last_at = Location::default();
    let mut malformed = None;
    let mut segment = None;
    let mut stopped = None;
    while let Some(r) = reader.next_with(|r| {
        if r.lsn > to {
            return false;
        }
        if stop_at.is_some_and(|at| r.location.offset >= at) {
            stopped = Some((r.location, r.lsn));
            return false;
        }
        last = Some(r.lsn);
        last_at = r.location;
        let live = match r.kind {
            KIND_PUT => true,
            KIND_DELETE => false,
            KIND_EPOCH => {
                match <[u8; 8]>::try_from(r.value) {
                    Ok(b) => epoch = epoch.max(u64::from_le_bytes(b)),
                    Err(_) => {
                        malformed =
                            Some((r.lsn, format!("epoch record of {} bytes", r.value.len())))
                    }
                }
                return true;
            }
            k => {
                malformed = Some((r.lsn, format!("unknown record kind {k}")));
                return true;
            }
        };
        let (Ok(key_at), Ok(offset)) =
            (u32::try_from(keys.len()), u32::try_from(r.location.offset))
        else {
            malformed = Some((r.lsn, "a segment larger than 4 GiB".into()));
            return true;
        };
        if *segment.get_or_insert(r.location.segment) != r.location.segment {
            // The jobs are cut at segment ends (`Index::open`); a log that breaks that is not
            // indexed wrongly.
            malformed = Some((r.lsn, "a replay job that spans two segments".into()));
            return true;
        }
        items.push(Change {
            key_at,
            key_len: r.key.len() as u32,
            version: r.lsn,
            hash: run::key_hash(seed, r.key),
            offset,
            live,
        });
        keys.extend_from_slice(r.key);
        true
    }) {
        if let Some((lsn, reason)) = malformed.take() {
            return Err(crate::Error::Malformed { lsn, reason });
        }
        if !r? {
            break;
        }
    }
    let Some(last) = last else {
        return Ok(ReplayedPart {
            run: None,
            records: 0,
            stopped,
        });
    };
    let n = last - from.max(wal.first_lsn()) + 1;
    let segment = segment.unwrap_or_default();
    let latest =
        sort.latest_per_key_by_hash(items.len(), |i| items[i].hash, |i| items[i].key(keys));
    let key_bytes = latest
        .iter()
        .map(|&n| items[n as usize].key_len as usize)
        .sum();
    // The segment's keys go to the run's heap whole, in one copy, when at most half of their
    // bytes are superseded ones (the bound a merge keeps a heap to, see `run::merge_runs`):
    // the entries then point into it, and the build below reads no key. Else each live key
    // is copied on its own.
    let whole = key_bytes * 2 >= keys.len();
    let mut b = RunBuilder::with_capacity(latest.len(), if whole { keys.len() } else { key_bytes });
    let placed = whole.then(|| b.add_heap(keys));
    // `latest` visits the changes in hash order, so at random: ask for the change (and the
    // key, when copied) a few places ahead while this one is written, hiding the cache misses
    // behind each other.
    const AHEAD: usize = 8;
    for (i, &n) in latest.iter().enumerate() {
        if let Some(&m) = latest.get(i + 2 * AHEAD) {
            crate::mapped::prefetch(&items[m as usize]);
        }
        let item = &items[n as usize];
        match placed {
            Some(heap) => b.push_placed(
                item.hash,
                heap + item.key_at as usize,
                item.key_len as usize,
                item.val(segment),
            ),
            None => {
                if let Some(&m) = latest.get(i + AHEAD) {
                    if let Some(k) = keys.get(items[m as usize].key_at as usize) {
                        crate::mapped::prefetch(k);
                    }
                }
                b.push(item.hash, item.key(keys), item.val(segment));
            }
        }
    }
    let meta = RunMeta {
        first_lsn: from,
        last_lsn: last,
        chain_crc,
        epoch,
        end: (chain_crc == 0).then_some(last_at),
        seed,
    };
    let bytes = b.finish(meta).ok_or_else(unfit)?;
    let run = Run::parse(Backing::Heap(bytes), None, true)
        .ok_or_else(|| crate::Error::Index("a run built by replay does not parse".into()))?;
    Ok(ReplayedPart {
        run: Some(run),
        records: n,
        stopped,
    })
}

/// A reader for a job from `from`: after the index run's last record when `start` is that
/// record (the one before `from`), else from the start of `from`'s segment. With `read_ahead`,
/// the reader leaves asking the OS for the segment to [`read_ahead`].
fn job_reader(wal: &Wal, from: u64, start: TailStart, read_ahead: bool) -> WalReader {
    let reader = match start {
        Some((at, lsn, chain)) if lsn + 1 == from => wal.reader_after(at, lsn, chain).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the index run's last record is not where it says; replaying its segment from the start");
            wal.reader(from)
        }),
        _ => wal.reader(from),
    };
    if read_ahead {
        reader.without_prefetch()
    } else {
        reader
    }
}

/// The error for a change that does not fit a run entry (see [`RunBuilder::finish`]).
fn unfit() -> crate::Error {
    crate::Error::Index("a change does not fit an index run entry".into())
}

fn io_err(op: &'static str, p: &Path, e: std::io::Error) -> seglog_wal::Error {
    seglog_wal::Error::Io {
        op,
        path: p.to_path_buf(),
        source: e,
    }
}

/// Writes `bytes` as the file `name` of the index directory: to a temporary name, renamed
/// into place and the directory fsynced (created first, durably, when missing). With
/// `sync_data` the file is fdatasynced before the rename, so that its name never stands for
/// bytes that are not durable; without, its bytes are left to the kernel's writeback (see
/// [`write_run`] for when that is enough). Returns its path.
fn write_index_file(wal: &Wal, name: &str, bytes: &[u8], sync_data: bool) -> Result<PathBuf> {
    let io: &dyn Io = &**wal.io();
    let dir = index_dir(wal)?;
    let tmp = dir.join(temporary_name(name));
    let f = io
        .create_truncate(&tmp)
        .map_err(|e| io_err("create", &tmp, e))?;
    f.write_at(bytes, 0).map_err(|e| io_err("write", &tmp, e))?;
    if sync_data {
        f.sync_data().map_err(|e| io_err("fdatasync", &tmp, e))?;
    }
    drop(f);
    rename_into_place(wal, name)
}

/// The index directory, created (durably) when missing.
fn index_dir(wal: &Wal) -> Result<PathBuf> {
    let dir = wal.dir().join(INDEX_DIR);
    seglog_wal::io::create_dir_durable(&**wal.io(), &dir)
        .map_err(|e| io_err("create directory", &dir, e))?;
    Ok(dir)
}

/// The name an index file is written under before it is renamed to `name`.
fn temporary_name(name: &str) -> String {
    format!("{name}.tmp")
}

/// Renames the written temporary of the index file `name` into place and fsyncs the
/// directory; returns the file's path.
fn rename_into_place(wal: &Wal, name: &str) -> Result<PathBuf> {
    let io: &dyn Io = &**wal.io();
    let dir = wal.dir().join(INDEX_DIR);
    let (tmp, dst) = (dir.join(temporary_name(name)), dir.join(name));
    io.rename(&tmp, &dst)
        .map_err(|e| io_err("rename", &tmp, e))?;
    io.sync_dir(&dir)
        .map_err(|e| io_err("fsync directory", &dir, e))?;
    Ok(dst)
}

/// The index directory's file holding its hash seed.
const SEED_FILE: &str = "seed";

/// The index's hash seed (see [`run::key_hash`]), from `DIR/index/seed`: 8 bytes, the seed
/// little-endian, then their CRC-32C. When that file is missing or damaged, a new seed is
/// chosen at random and written there durably; the run files, written under the old one, are
/// then not used (their ranges are replayed). When it cannot be written (a read-only or full
/// disk), the new seed is used for this process only: runs written under it are replayed at
/// the next open, which costs time, never correctness.
fn load_seed(wal: &Wal) -> u64 {
    let path = wal.dir().join(INDEX_DIR).join(SEED_FILE);
    let mut buf = [0u8; 12];
    let read = wal
        .io()
        .open_read(&path)
        .and_then(|f| f.read_at(&mut buf, 0));
    if let Ok(12) = read {
        let (seed, crc) = buf.split_at(8);
        if crc32c::crc32c(seed).to_le_bytes() == crc {
            let mut w = [0u8; 8];
            w.copy_from_slice(seed);
            return u64::from_le_bytes(w);
        }
    }
    let seed = {
        use std::hash::BuildHasher;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::collections::hash_map::RandomState::new().hash_one((now, std::process::id()))
    };
    let mut bytes = seed.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(&seed.to_le_bytes()).to_le_bytes());
    if let Err(e) = write_index_file(wal, SEED_FILE, &bytes, true) {
        tracing::warn!(error = %e, "could not write the index's hash seed; checkpoints written by this process will be replayed at the next open");
    }
    seed
}

/// Writes `bytes` as the run file for `meta` and returns it, mapped. With `sync_data` its
/// bytes are durable before its name is; without, the run can be lost or torn by a power
/// loss, and is then ignored at the next open, which replays its range instead (its
/// checksums tell).
///
/// Only the run written at a clean close is synced here (after every run file before it,
/// see [`write_at_close`]). The others, a roll's and a merge's, are left to the kernel's
/// writeback, and [`sync_runs`] makes them durable once [`RUN_SYNC_AFTER`] old, or at close:
/// - nothing depends on them meanwhile: their segments stay, and a merge keeps the files it
///   replaced until its own is durable (see [`Run::retire`]), so a power loss costs a replay
///   of what the lost runs covered since their inputs, never a wrong index;
/// - their writes, at the moment a flush or a merge ends, were what slowed the writer most:
///   tens of MiB at once on the log's device, ahead of its own writeback and of each roll's
///   fsync. 3 M puts of 200 B under `never` (puts and drain) came to 1.16-1.47 times the
///   raw appends (median 1.34) with merged runs fdatasynced and flushed runs' writeback
///   started, and 1.07-1.17 times (median 1.14) with neither (8 rounds, alternating).
fn write_run(wal: &Wal, meta: RunMeta, bytes: Vec<u8>, sync_data: bool) -> Result<Run> {
    let name = run::file_name(meta.first_lsn, meta.last_lsn);
    let dst = write_index_file(wal, &name, &bytes, sync_data)?;
    let backing = if wal.files_are_real() {
        let map = crate::mapped::map_file(&dst).map_err(|e| io_err("mmap", &dst, e))?;
        run::recycle(bytes);
        Backing::Map(map)
    } else {
        Backing::Heap(bytes)
    };
    open_written(backing, dst, sync_data)
}

/// As [`write_run`] for a run built in its temporary file ([`run::Spill`]): `file` is
/// that file, written, or the error that ended the build.
fn install_built_run(
    wal: &Wal,
    meta: RunMeta,
    file: std::io::Result<std::fs::File>,
    sync_data: bool,
) -> Result<Run> {
    let name = run::file_name(meta.first_lsn, meta.last_lsn);
    let tmp = wal.dir().join(INDEX_DIR).join(temporary_name(&name));
    let file = file.map_err(|e| io_err("write", &tmp, e))?;
    if sync_data {
        file.sync_data().map_err(|e| io_err("fdatasync", &tmp, e))?;
    }
    drop(file);
    let dst = rename_into_place(wal, &name)?;
    let map = crate::mapped::map_file(&dst).map_err(|e| io_err("mmap", &dst, e))?;
    open_written(Backing::Map(map), dst, sync_data)
}

/// The run just written at `dst`, parsed from `backing` (its bytes).
fn open_written(backing: Backing, dst: PathBuf, sync_data: bool) -> Result<Run> {
    let run = Run::parse(backing, Some(dst.clone()), true).ok_or_else(|| {
        crate::Error::Index(format!(
            "the run {} just written does not parse",
            dst.display()
        ))
    })?;
    if sync_data {
        run.mark_synced();
    }
    Ok(run)
}

/// Merges `group` (adjacent layers, newest first) into a run's entries, without tombstones
/// when `drop_tombstones`. `None` when an input was found damaged (the caller repairs it
/// first). `between` is called every [`BETWEEN_EVERY`] entries; an error from it ends the
/// merge.
fn merge_layers(
    group: &[Layer],
    drop_tombstones: bool,
    spill: Option<run::Spill<'_>>,
    between: &mut dyn FnMut() -> Result<()>,
) -> Result<Option<RunBuilder>> {
    let entries: usize = group.iter().map(Layer::len).sum();
    let key_bytes: usize = group.iter().map(Layer::key_bytes).sum();
    let mut b = RunBuilder::with_capacity_in(entries, key_bytes, spill);
    let runs: Option<Vec<&Run>> = group
        .iter()
        .map(|l| match l {
            Layer::Run(r) => Some(&**r),
            Layer::Frozen(_) => None,
        })
        .collect();
    if let Some(runs) = runs.filter(|r| r.len() > 1) {
        // Run files only (a merge): entries copied as bytes (see `run::merge_runs`).
        let mut failed = None;
        let merged = run::merge_runs(&runs, drop_tombstones, &mut b, BETWEEN_EVERY, &mut || {
            between().map_err(|e| failed = Some(e)).is_ok()
        });
        if let Some(e) = failed {
            return Err(e);
        }
        return match merged {
            None => Ok(None),
            Some(true) => Ok(Some(b)),
            Some(false) => Err(out_of_order(group)),
        };
    }
    if let [Layer::Frozen(f)] = group {
        // One memtable (a flush): its table walked front to back straight into the run, its
        // key arena copied whole as the run's heap. Nothing to check: it is in memory, and
        // the walk is in a run's order by construction.
        let base = b.add_heap(f.map.key_heap());
        let mut walk = f.map.hash_walk();
        let mut visited = 0usize;
        while let Some(p) = walk.next_placed() {
            if p.val.is_some() || !drop_tombstones {
                b.push_placed(p.hash, base + p.start, p.len, p.val);
            }
            visited += 1;
            if visited.is_multiple_of(BETWEEN_EVERY) {
                between()?;
            }
        }
        return Ok(Some(b));
    }
    // Each input's key heap is copied whole, and the entries point into the copies: a merge in
    // a run's order visits the keys at random, and copying them one by one cost a cache miss
    // a key (a segment's flush of 262k entries took 27-29 ms of CPU that way). Superseded keys
    // come along; `RunBuilder::finish` drops them when they are the most. For each input: the
    // heap its keys are located in, and where its copy starts.
    let mut heaps: Vec<(&[u8], usize)> = Vec::with_capacity(group.len());
    for l in group {
        let (locate, copy) = match l {
            Layer::Frozen(f) => (f.map.key_heap(), Some(f.map.key_heap())),
            Layer::Run(r) => (r.key_heap_unchecked(), r.key_heap()),
        };
        // A heap block that fails its checksum marks its run damaged: the caller repairs it.
        let Some(copy) = copy else {
            return Ok(None);
        };
        heaps.push((locate, b.add_heap(copy)));
    }
    // A damaged block reads as entries out of order: the merge stops there rather than build
    // a run that is not ordered.
    let (mut visited, mut failed) = (0usize, None);
    let in_order = merge(group.iter().map(Layer::iter).collect(), |src, h, k, v| {
        if v.is_some() || !drop_tombstones {
            // Every key of a layer's walk or cursor is in its heap; copied alone otherwise.
            match heaps
                .get(src)
                .and_then(|&(heap, base)| Some((base, k.place_in(heap)?)))
            {
                Some((base, (off, len))) => b.push_placed(h, base + off, len, v),
                None => b.push(h, k.get(), v),
            }
        }
        visited += 1;
        if visited.is_multiple_of(BETWEEN_EVERY) {
            if let Err(e) = between() {
                failed = Some(e);
                return false;
            }
        }
        true
    });
    if let Some(e) = failed {
        return Err(e);
    }
    if group.iter().any(Layer::damaged) {
        // The merge read a damaged block: its output is not to be trusted. The caller repairs
        // the input first.
        return Ok(None);
    }
    if !in_order {
        return Err(out_of_order(group));
    }
    Ok(Some(b))
}

/// The error for layers that merge out of order though none of their blocks is damaged.
fn out_of_order(group: &[Layer]) -> crate::Error {
    let (first, last) = match (group.last(), group.first()) {
        (Some(o), Some(n)) => (o.first_lsn(), n.last_lsn()),
        _ => (0, 0),
    };
    crate::Error::Index(format!(
        "index layers {first}..={last} merge out of order without a damaged block"
    ))
}

/// What [`replace`] writes besides its group's entries.
struct Output {
    /// The log's chain value at the run's last LSN.
    chain_crc: u32,
    /// Where the record at its last LSN is, for a run that does not end a sealed segment.
    end: Option<Location>,
    /// Whether tombstones are left out (the group holds the oldest layer).
    drop_tombstones: bool,
    /// Whether the file is fdatasynced before its rename (see [`write_run`]).
    sync_data: bool,
}

/// Replaces `group` (adjacent layers, newest first) by one run file. Returns false when the
/// layers changed meanwhile (then nothing is installed; the file is left for the next open's
/// clean-up). `between` is called every [`BETWEEN_EVERY`] entries while the run is built
/// (see [`merge_one`]); an error from it ends the replacement.
fn replace(
    wal: &Wal,
    state: &RwLock<Index>,
    group: &[Layer],
    out: Output,
    between: &mut dyn FnMut() -> Result<()>,
) -> Result<bool> {
    let Output {
        chain_crc,
        end,
        drop_tombstones,
        sync_data,
    } = out;
    let (Some(newest), Some(oldest)) = (group.first(), group.last()) else {
        return Ok(false);
    };
    let meta = RunMeta {
        first_lsn: oldest.first_lsn(),
        last_lsn: newest.last_lsn(),
        chain_crc,
        epoch: group.iter().map(Layer::epoch).max().unwrap_or(0),
        end,
        seed: state.read().seed,
    };
    // On real files, a run larger than the builder's kept buffer is built in its file (see
    // `run::Spill`), so that a merge's memory does not grow with the index. Only those: the
    // file is allocated at the run's largest possible size while it is built (its inputs'
    // entries and heaps), and building small runs that way would take disk space ahead of
    // the log's appends for nothing (and cost more CPU, see `mapped::BuildMap`).
    // (The index directory exists from the open on, which writes the hash seed there; if it
    // does not, the build falls back to the heap and the write creates it.)
    let name = run::file_name(meta.first_lsn, meta.last_lsn);
    let tmp = wal
        .files_are_real()
        .then(|| wal.dir().join(INDEX_DIR).join(temporary_name(&name)));
    let spill = tmp.as_deref().map(|path| run::Spill {
        path,
        above: run::MAX_KEPT_BUFFER,
    });
    let Some(b) = merge_layers(group, drop_tombstones, spill, between)? else {
        return Ok(false);
    };
    let built = b.finish_built(meta).ok_or_else(unfit)?;
    // The files of the group, and those its runs still keep (see `Run::retire`): removed once
    // the new run is durable, at once when it is synced now.
    let replaced: Vec<PathBuf> = group
        .iter()
        .filter_map(|l| match l {
            Layer::Run(r) => Some(r),
            Layer::Frozen(_) => None,
        })
        .flat_map(|r| {
            r.path()
                .map(Path::to_path_buf)
                .into_iter()
                .chain(r.retired())
        })
        .collect();
    let written = match built {
        run::Built::Heap(bytes) => write_run(wal, meta, bytes, sync_data)?,
        run::Built::File(file) => install_built_run(wal, meta, file, sync_data)?,
    };
    if !sync_data {
        written.retire(replaced.clone());
    }
    let run = Layer::Run(Arc::new(written));
    {
        let mut idx = state.write();
        let Some(at) = idx.layers.iter().position(|l| l.same(newest)) else {
            return Ok(false);
        };
        let n = group.len();
        if idx.layers.len() < at + n
            || !idx.layers[at..at + n]
                .iter()
                .zip(group)
                .all(|(a, b)| a.same(b))
        {
            return Ok(false);
        }
        idx.layers.splice(at..at + n, [run]);
    }
    if sync_data {
        // The new run is durable and installed: the files it replaces can go.
        remove_run_files(wal, &replaced)?;
    }
    Ok(true)
}

/// Removes `files` from the index directory (those already gone are skipped; one that cannot
/// be removed is left to the next open's clean-up), then fsyncs the directory.
fn remove_run_files(wal: &Wal, files: &[PathBuf]) -> Result<()> {
    let mut removed = false;
    for p in files {
        match wal.io().remove_file(p) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(run = %p.display(), error = %e, "could not remove a replaced index run")
            }
        }
    }
    if removed {
        let dir = wal.dir().join(INDEX_DIR);
        wal.io()
            .sync_dir(&dir)
            .map_err(|e| io_err("fsync directory", &dir, e))?;
    }
    Ok(())
}

/// Background upkeep of the index: writes every layer that is not yet a run file and ends at a
/// sealed segment, then merges run files of comparable size. `one_writer` serialises callers.
/// Returns how many run files it wrote.
pub(crate) fn maintain(wal: &Wal, state: &RwLock<Index>, one_writer: &Mutex<()>) -> Result<usize> {
    let _one = one_writer.lock();
    let mut written = 0;
    // Each round repairs what the last one found damaged; a repaired run is replaced by runs
    // built in memory (never damaged), so rounds end.
    loop {
        repair_damaged(wal, state)?;
        written += flush_and_merge(wal, state)?;
        if !state.read().damaged() {
            return Ok(written);
        }
    }
}

/// Run files merged at once: each entry is rewritten about log_4 of the number of flushes
/// times (pairs: log_2, twice as many bytes written; at full write speed the checkpointer's
/// writes were a third of its time), for up to three run files a level waiting.
const MERGE_FAN_IN: usize = 4;

/// Run files beyond which the adjacent ones with the fewest entries in all are merged whatever
/// their sizes, so that a get never looks through more runs than this (plus memtables).
const MAX_RUN_FILES: usize = 24;

/// Entries a merge builds between two looks at the frozen memtables waiting (see
/// [`merge_one`]): about a millisecond's work.
const BETWEEN_EVERY: usize = 16 * 1024;

/// What a step of upkeep did.
enum Step {
    /// Wrote a run file.
    Wrote,
    /// Found nothing to do.
    Idle,
    /// Gave up: the layers changed meanwhile, or an input was found damaged (the round ends;
    /// the next one repairs first).
    Stopped,
}

/// One round of [`maintain`]; the caller holds its lock.
///
/// A merge that is due goes first while at most one frozen memtable waits; past that,
/// flushes do. Flushes only, whenever one waited, starved the merges under sustained writes
/// (a new memtable froze during each flush): run files piled up, and the merges all came at
/// the end, at once. Waiting memtables are written together as one run (see [`flush_one`]),
/// so a flush that waits for a merge also saves merging later; and past
/// [`MAX_FROZEN_MEMTABLES`] the writers wait, which bounds both the memory and the delay.
fn flush_and_merge(wal: &Wal, state: &RwLock<Index>) -> Result<usize> {
    let backlog = state.read().backlog();
    let mut written = 0;
    loop {
        let step = if backlog.frozen() <= 1 {
            match merge_one(wal, state)? {
                Step::Idle => flush_one(wal, state)?,
                done => done,
            }
        } else {
            match flush_one(wal, state)? {
                Step::Idle => merge_one(wal, state)?,
                done => done,
            }
        };
        match step {
            Step::Wrote => written += 1,
            Step::Idle | Step::Stopped => return Ok(written),
        }
    }
}

/// Writes the oldest layer that is only in memory as a run file (see below).
fn flush_one(wal: &Wal, state: &RwLock<Index>) -> Result<Step> {
    let sealed: HashMap<u64, u32> = wal
        .sealed_segments()?
        .into_iter()
        .map(|s| (s.last_lsn, s.chain_crc))
        .collect();
    // The oldest layer that is only in memory, with the newer ones up to a sealed end,
    // and with every newer layer only in memory up to the newest sealed end among them (after
    // a replay at open, all of its layers: written as one run, not as one run a segment that
    // the merges below would then rewrite again and again).
    let group: Option<(Vec<Layer>, u32, bool)> = {
        let idx = state.read();
        idx.layers
            .iter()
            .rposition(|l| !l.in_file())
            .and_then(|oldest| {
                let in_memory = (0..=oldest)
                    .rev()
                    .take_while(|&j| !idx.layers[j].in_file())
                    .last()
                    .unwrap_or(oldest);
                let end = (in_memory..=oldest)
                    .find(|&j| sealed.contains_key(&idx.layers[j].last_lsn()))
                    .or_else(|| {
                        (0..in_memory)
                            .rev()
                            .find(|&j| sealed.contains_key(&idx.layers[j].last_lsn()))
                    })?;
                let chain = sealed[&idx.layers[end].last_lsn()];
                Some((
                    idx.layers[end..=oldest].to_vec(),
                    chain,
                    oldest + 1 == idx.layers.len(),
                ))
            })
    };
    let Some((group, chain, oldest)) = group else {
        return Ok(Step::Idle);
    };
    let out = Output {
        chain_crc: chain,
        end: None,
        drop_tombstones: oldest,
        sync_data: false,
    };
    Ok(if replace(wal, state, &group, out, &mut || Ok(()))? {
        Step::Wrote
    } else {
        Step::Stopped
    })
}

/// The adjacent run files to merge next, when any (see [`MERGE_FAN_IN`]), given each layer
/// newest first as (whether it is a run file, entries).
fn merge_window(l: &[(bool, usize)]) -> Option<std::ops::Range<usize>> {
    let windows = || {
        (0..l.len().saturating_sub(MERGE_FAN_IN - 1))
            .map(|i| i..i + MERGE_FAN_IN)
            .filter(|w| l[w.clone()].iter().all(|&(file, _)| file))
    };
    // Due: the oldest run holds at most half as many entries as the newer ones together (a
    // much larger older run waits for newer ones to catch up; merging into it at every flush
    // would rewrite it each time), so equal flushes merge as a tree of fan-in four. Of the
    // windows due, the one with the fewest entries goes (the newest of equals): the smallest
    // tier first. Taking the newest instead, a backlog of small runs merged as a cascade, each
    // merge taking the last one's output and three small runs (200 waiting runs of equal
    // size: each entry written 34.5 times instead of 4.5).
    let comparable = windows()
        .filter(|w| {
            let oldest = l[w.end - 1].1;
            let newer: usize = l[w.start..w.end - 1].iter().map(|&(_, n)| n).sum();
            2 * oldest <= newer.max(1)
        })
        .min_by_key(|w| (l[w.clone()].iter().map(|&(_, n)| n).sum::<usize>(), w.start));
    if comparable.is_some() || l.iter().filter(|&&(file, _)| file).count() <= MAX_RUN_FILES {
        return comparable;
    }
    // Too many run files: the adjacent ones with the fewest entries in all merge, pairs
    // included, so that this always finds one.
    (0..l.len().saturating_sub(1))
        .map(|i| i..i + 2)
        .filter(|w| l[w.clone()].iter().all(|&(file, _)| file))
        .min_by_key(|w| l[w.clone()].iter().map(|&(_, n)| n).sum::<usize>())
}

/// Merges the run files [`merge_window`] picks into one.
fn merge_one(wal: &Wal, state: &RwLock<Index>) -> Result<Step> {
    let window: Option<(Vec<Layer>, u32, Option<Location>, bool)> = {
        let idx = state.read();
        let l = &idx.layers;
        let shape: Vec<(bool, usize)> = l.iter().map(|x| (x.in_file(), x.len())).collect();
        merge_window(&shape).map(|w| {
            // The merged run ends where its newest input does, and is checked the same way.
            let (chain, end) = match &l[w.start] {
                Layer::Run(r) => (r.meta().chain_crc, r.meta().end),
                Layer::Frozen(_) => (0, None),
            };
            let oldest = w.end == l.len();
            (l[w].to_vec(), chain, end, oldest)
        })
    };
    let Some((group, chain, end, oldest)) = window else {
        return Ok(Step::Idle);
    };
    // A merge of millions of entries takes a few hundred milliseconds, long enough for the
    // writers to fill the frozen memtables' bound and wait: memtables that froze meanwhile
    // are written while it runs (flushes touch only the newest layers; the merge's inputs are
    // checked to be still in place before its run is installed).
    let backlog = state.read().backlog();
    let mut flush_waiting = || -> Result<()> {
        while backlog.frozen() >= 2 {
            if !matches!(flush_one(wal, state)?, Step::Wrote) {
                break;
            }
        }
        Ok(())
    };
    let out = Output {
        chain_crc: chain,
        end,
        drop_tombstones: oldest,
        sync_data: false,
    };
    Ok(if replace(wal, state, &group, out, &mut flush_waiting)? {
        Step::Wrote
    } else {
        Step::Stopped
    })
}

/// Age at which the checkpointer makes a run file durable (see [`sync_runs`]): the kernel's
/// default expiry of dirty pages (`vm.dirty_expire_centisecs`, 30 s), so that by then its
/// writeback has mostly happened and the fdatasync finds little left to write. It bounds what
/// a power loss costs the next open: the replay of about this long of writes.
pub const RUN_SYNC_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Fdatasyncs every run file of the index not known to be durable and at least `min_age` old
/// (see [`Run::age`]): those written after a roll or by a merge (see [`write_run`]) and those
/// found at open (a process killed after writing one may have left it in the page cache
/// only). Then removes the files the durable runs replaced (see [`Run::retire`]). The caller
/// holds the index writer lock (`one_writer` of [`maintain`]).
///
/// A failed fdatasync is reported and tried again at the next call. Unlike the log's (which
/// poisons it), that cannot lose anything: a run whose bytes did not reach the disk fails its
/// checksums at the next open, which then replays its range from the segments.
fn sync_runs(wal: &Wal, state: &RwLock<Index>, min_age: std::time::Duration) -> Result<()> {
    let files: Vec<Arc<Run>> = state
        .read()
        .layers
        .iter()
        .filter_map(|l| match l {
            Layer::Run(r) if r.path().is_some() => Some(r.clone()),
            _ => None,
        })
        .collect();
    for r in &files {
        if let (Some(p), false) = (r.path(), r.synced()) {
            if r.age() < min_age {
                continue;
            }
            let f = wal.io().open_read(p).map_err(|e| io_err("open", p, e))?;
            f.sync_data().map_err(|e| io_err("fdatasync", p, e))?;
            r.mark_synced();
        }
    }
    let replaced: Vec<PathBuf> = files
        .iter()
        .filter(|r| r.synced())
        .flat_map(|r| r.take_retired())
        .collect();
    remove_run_files(wal, &replaced)
}

/// [`sync_runs`] for a caller that does not hold the index writer lock: the engine's
/// `sync_index` (every run, `min_age` zero) and the checkpointer's periodic step
/// ([`RUN_SYNC_AFTER`]).
pub(crate) fn sync_runs_aged(
    wal: &Wal,
    state: &RwLock<Index>,
    one_writer: &Mutex<()>,
    min_age: std::time::Duration,
) -> Result<()> {
    let _one = one_writer.lock();
    sync_runs(wal, state, min_age)
}

/// At a clean close, after the log is durable: makes every run file durable, and writes every
/// layer not yet in a run file, the active memtable included, as one run ending at the last
/// record and bound to that record's chain value, so that the next open replays nothing (a
/// power loss after the close included). Returns whether it wrote one.
pub(crate) fn write_at_close(
    wal: &Wal,
    state: &RwLock<Index>,
    one_writer: &Mutex<()>,
) -> Result<bool> {
    maintain(wal, state, one_writer)?;
    let _one = one_writer.lock();
    sync_runs(wal, state, std::time::Duration::ZERO)?;
    write_through_last_record(wal, state, true)
}

/// Log bytes of the active segment whose changes are only in the active memtable at which the
/// checkpointer, once the log has had no roll for [`TAIL_CHECKPOINT_IDLE`], writes them as a
/// run (see [`checkpoint_tail`]).
pub const TAIL_CHECKPOINT_BYTES: u64 = 4 << 20;

/// How long the checkpointer waits for a roll before it looks at the active segment (see
/// [`TAIL_CHECKPOINT_BYTES`]); also how often it looks for run files old enough to sync.
pub const TAIL_CHECKPOINT_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes the changes of the active segment so far as a run ending at its last applied
/// record, after making the log durable to there, so that an open after a crash reads that run
/// instead of replaying those records (and the log's recovery starts near its end, at the
/// durable point the sync recorded). Returns whether it wrote one.
pub(crate) fn checkpoint_tail(
    wal: &Wal,
    state: &RwLock<Index>,
    one_writer: &Mutex<()>,
) -> Result<bool> {
    maintain(wal, state, one_writer)?;
    wal.sync()?;
    let _one = one_writer.lock();
    write_through_last_record(wal, state, false)
}

/// Freezes the active memtable at the last record applied and writes it, with every layer
/// still only in memory, as one run ending at that record (its location and chain value
/// recorded, see [`RunMeta::end`]); fdatasynced before its rename with `sync_data`. The caller
/// holds the index writer lock. Returns whether it wrote a run.
fn write_through_last_record(wal: &Wal, state: &RwLock<Index>, sync_data: bool) -> Result<bool> {
    let (group, lsn, at, oldest) = {
        let mut idx = state.write();
        let Some((lsn, at)) = idx.last_record else {
            return Ok(false);
        };
        if idx.active_first <= lsn {
            let fresh = Memtable::new(idx.seed);
            let map = std::mem::replace(&mut idx.active, fresh).map;
            let frozen = Frozen::new(map, &idx, idx.active_first, lsn, idx.active_epoch);
            idx.layers.insert(0, Layer::Frozen(Arc::new(frozen)));
            idx.active_first = lsn + 1;
            idx.active_from = at.offset;
            idx.active_epoch = 0;
        }
        let n = idx.layers.iter().take_while(|l| !l.in_file()).count();
        if n == 0 || idx.layers[0].last_lsn() != lsn {
            return Ok(false);
        }
        (idx.layers[..n].to_vec(), lsn, at, n == idx.layers.len())
    };
    let chain = wal.read_record(at, lsn)?.crc;
    let out = Output {
        chain_crc: chain,
        end: Some(at),
        drop_tombstones: oldest,
        sync_data,
    };
    replace(wal, state, &group, out, &mut || Ok(()))
}

/// Replaces each run found damaged (see [`crate::run`]) by runs replayed from the log for its
/// range, one a segment, and unlinks its file so that no later open uses it. The caller holds
/// the index writer lock (`one_writer` of [`maintain`]). Returns how many runs it replaced.
pub(crate) fn repair_damaged(wal: &Wal, state: &RwLock<Index>) -> Result<usize> {
    let damaged: Vec<Arc<Run>> = state
        .read()
        .layers
        .iter()
        .filter_map(|l| match l {
            Layer::Run(r) if r.damaged() => Some(r.clone()),
            _ => None,
        })
        .collect();
    if damaged.is_empty() {
        return Ok(0);
    }
    let sealed = wal.sealed_segments()?;
    let dir = wal.dir().join(INDEX_DIR);
    let mut repaired = 0;
    for run in damaged {
        let m = run.meta();
        tracing::warn!(run = ?run.path(), first_lsn = m.first_lsn, last_lsn = m.last_lsn, "index run damaged; replaying the records it covers instead");
        let mut jobs = Vec::new();
        let mut next = m.first_lsn;
        while next <= m.last_lsn {
            let job = match sealed
                .iter()
                .find(|s| s.first_lsn <= next && next <= s.last_lsn)
            {
                Some(s) if s.last_lsn <= m.last_lsn => (next, s.last_lsn, s.chain_crc),
                Some(_) | None => (next, m.last_lsn, 0),
            };
            jobs.push(job);
            next = job.1 + 1;
        }
        let mut newest_first = Vec::with_capacity(jobs.len());
        let seed = state.read().seed;
        for replayed in replay_all(wal, &jobs, seed, None, &sealed) {
            let (runs, _) = replayed?;
            newest_first.extend(runs.into_iter().map(|r| Layer::Run(Arc::new(r))));
        }
        newest_first.reverse();
        {
            let mut idx = state.write();
            let Some(at) = idx
                .layers
                .iter()
                .position(|l| matches!(l, Layer::Run(r) if Arc::ptr_eq(r, &run)))
            else {
                continue;
            };
            idx.layers.splice(at..at + 1, newest_first);
            idx.repaired += 1;
        }
        repaired += 1;
        if let Some(p) = run.path() {
            wal.io().remove_file(p).map_err(|e| seglog_wal::Error::Io {
                op: "remove damaged index run",
                path: p.to_path_buf(),
                source: e,
            })?;
            wal.io().sync_dir(&dir).map_err(|e| seglog_wal::Error::Io {
                op: "fsync directory",
                path: dir.clone(),
                source: e,
            })?;
        }
        // What it kept of the runs it replaced goes too: the log covers its range.
        remove_run_files(wal, &run.take_retired())?;
    }
    Ok(repaired)
}

/// Where the replay of the active segment starts, when an index run covers its beginning:
/// that run's last record (location, LSN, chain value), read with [`Wal::reader_after`].
type TailStart = Option<(Location, u64, u32)>;

/// A job is read in two parts when the replay has fewer than this many jobs a core: with a
/// few segments, the workers otherwise sat idle at both ends of a cold replay (timelines at
/// 1M keys, four segments, two workers: the second worker waited 80 ms for its segment, the
/// first segment streaming in ahead of it, and the last segment's parse, sort and build ran
/// alone for the last 30 ms).
const SPLIT_BELOW_JOBS_PER_WORKER: usize = 8;

/// Jobs that read fewer bytes than this (a page) are read whole. Small, so that the tests'
/// small segments take the split path too.
const SPLIT_MIN_BYTES: u64 = 4 << 10;

/// How far past the middle of a job's bytes its second part looks for a frame to start at.
const SPLIT_WINDOW: usize = 64 << 10;

/// What a replay worker does: a whole job, or one of its two parts. The first part reads
/// from the job's start and stops before the first record at or after `mid`; the second
/// starts at the first frame at or after `mid` that checks out on its own
/// ([`Wal::frame_at_or_after`]). That frame is only a candidate (a value may hold bytes that
/// look like one), so the second part's result is used only when the first part stopped
/// exactly there ([`join_parts`]); otherwise the job is read again, whole.
#[derive(Clone, Copy)]
enum Task {
    Whole(usize),
    First(usize, u64),
    /// The job, its segment, and the offset to look for a frame from.
    Second(usize, u64, u64),
}

/// A task's result; a second part's with the frame it started at (location, LSN).
type TaskResult = (Result<ReplayedPart>, Option<(Location, u64)>);

/// Replays `jobs` (first LSN, last LSN or `u64::MAX` for the rest of the log, chain value at
/// the end or 0), the one to the end of the log from `tail` when given, with hashes under
/// `seed`: one worker a core, each taking the next task (see [`Task`]); the results come
/// back one a job, in job order. `sealed` are the log's sealed segments: a job covers one of
/// them, or the active segment.
fn replay_all(
    wal: &Wal,
    jobs: &[(u64, u64, u32)],
    seed: u64,
    tail: TailStart,
    sealed: &[seglog_wal::SealedSegment],
) -> Vec<Replayed> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = |job: (u64, u64, u32)| tail.filter(|_| job.1 == u64::MAX);
    // Where each job reads: its segment, and the offset it starts at.
    let reads: Vec<Option<(u64, u64)>> = jobs
        .iter()
        .map(|&job| match start(job) {
            Some((at, _, _)) => Some((at.segment, at.offset)),
            None => sealed
                .iter()
                .find(|s| s.first_lsn <= job.0 && job.0 <= s.last_lsn)
                .map(|s| s.first_lsn)
                .or_else(|| wal.active_segment())
                .map(|seg| (seg, 0)),
        })
        .collect();
    let split = cores > 1 && jobs.len() < SPLIT_BELOW_JOBS_PER_WORKER * cores;
    let mut tasks = Vec::with_capacity(jobs.len() * 2);
    for (j, read) in reads.iter().enumerate() {
        let mid = read.filter(|_| split).and_then(|(segment, offset)| {
            let end = wal.segment_end(segment).ok()?;
            (end.saturating_sub(offset) >= SPLIT_MIN_BYTES)
                .then(|| (segment, offset + (end - offset) / 2))
        });
        match mid {
            Some((segment, mid)) => {
                tasks.extend([Task::First(j, mid), Task::Second(j, segment, mid)])
            }
            None => tasks.push(Task::Whole(j)),
        }
    }
    let workers = cores.min(tasks.len()).max(1);
    let results: Vec<Mutex<Option<TaskResult>>> = tasks.iter().map(|_| Mutex::new(None)).collect();
    let taken = Taken {
        state: Mutex::new((0, workers)),
        changed: parking_lot::Condvar::new(),
    };
    let ahead = wal.files_are_real();
    let run_task = |task: Task, bufs: &mut ReplayBuffers| -> TaskResult {
        match task {
            Task::Whole(j) | Task::First(j, _) => {
                let job = jobs[j];
                let stop_at = match task {
                    Task::First(_, mid) => Some(mid),
                    _ => None,
                };
                let reader = job_reader(wal, job.0, start(job), ahead);
                // A first part ends inside the segment: no chain value at a sealed end.
                let job = if stop_at.is_some() {
                    (job.0, job.1, 0)
                } else {
                    job
                };
                (replay(wal, job, seed, reader, stop_at, bufs), None)
            }
            Task::Second(j, segment, mid) => {
                let (from, to, chain) = jobs[j];
                // No candidate (or none past the job's first record): the first part reads
                // on past `mid` and `join_parts` reads the job again.
                let found = match wal.frame_at_or_after(segment, mid, SPLIT_WINDOW) {
                    Ok(Some((at, lsn, prev))) if lsn > from && lsn <= to => (at, lsn, prev),
                    _ => return (Ok(ReplayedPart::empty()), None),
                };
                let (at, lsn, prev) = found;
                let reader = match wal.reader_at(at, lsn, prev) {
                    Ok(r) if ahead => r.without_prefetch(),
                    Ok(r) => r,
                    Err(e) => return (Err(e.into()), Some((at, lsn))),
                };
                (
                    replay(wal, (lsn, to, chain), seed, reader, None, bufs),
                    Some((at, lsn)),
                )
            }
        }
    };
    std::thread::scope(|s| {
        if ahead {
            s.spawn(|| {
                read_ahead(&taken, workers, tasks.len(), |t| {
                    // A second part's bytes were asked for with its first part's, to the end.
                    let (Task::Whole(j) | Task::First(j, _)) = tasks[t] else {
                        return;
                    };
                    if let Some((segment, offset)) = reads[j] {
                        // Only a hint: the worker reads the segment anyway, and reports what
                        // fails.
                        if let Err(e) = wal.prefetch_segment(segment, offset, READ_AHEAD_PIECE) {
                            tracing::debug!(error = %e, segment, "replay read-ahead failed");
                        }
                    }
                })
            });
        }
        for _ in 0..workers {
            s.spawn(|| {
                let _done = WorkerDone(&taken);
                let mut bufs = ReplayBuffers::default();
                loop {
                    let t = {
                        let mut st = taken.state.lock();
                        st.0 += 1;
                        st.0 - 1
                    };
                    taken.changed.notify_all();
                    let Some(&task) = tasks.get(t) else {
                        break;
                    };
                    *results[t].lock() = Some(run_task(task, &mut bufs));
                }
            });
        }
    });
    // Each task's result is filled by the worker that took it (the scope joined them all); a
    // missing one means a worker panicked.
    let mut results = results.into_iter().map(|r| {
        r.into_inner().unwrap_or_else(|| {
            (
                Err(crate::Error::Index(
                    "a replay worker stopped without a result".into(),
                )),
                None,
            )
        })
    });
    let mut out = Vec::with_capacity(jobs.len());
    let mut bufs = ReplayBuffers::default();
    for task in &tasks {
        let replayed = match *task {
            Task::Whole(_) => results.next().map_or_else(missing, |(r, _)| whole(r)),
            Task::First(j, _) => match (results.next(), results.next()) {
                (Some((first, _)), Some(second)) => join_parts(first, second, || {
                    let job = jobs[j];
                    let reader = job_reader(wal, job.0, start(job), false);
                    whole(replay(wal, job, seed, reader, None, &mut bufs))
                }),
                _ => missing(),
            },
            // Taken with its first part, above.
            Task::Second(..) => continue,
        };
        out.push(replayed);
    }
    out
}

/// A job read whole: its run, if any.
fn whole(r: Result<ReplayedPart>) -> Replayed {
    r.map(|p| (p.run.into_iter().collect(), p.records))
}

fn missing() -> Replayed {
    Err(crate::Error::Index(
        "replay returned fewer results than tasks".into(),
    ))
}

/// A job read in two parts (see [`Task`]): both runs when the first part stopped exactly at the
/// frame the second started at; the first alone when it read to the job's end (nothing is at
/// or after the middle, so whatever the second part found there is not in the log); else the
/// job read again, whole, by `again`. A failed first part is the job's failure; a failed
/// second part is, once the first confirms where it started.
fn join_parts(
    first: Result<ReplayedPart>,
    (second, started): TaskResult,
    again: impl FnOnce() -> Replayed,
) -> Replayed {
    let first = first?;
    match first.stopped {
        None => Ok((first.run.into_iter().collect(), first.records)),
        Some(at) if started == Some(at) => {
            let second = second?;
            let runs = first.run.into_iter().chain(second.run).collect();
            Ok((runs, first.records + second.records))
        }
        Some(_) => again(),
    }
}

/// The replay workers' progress, for [`read_ahead`]: (jobs taken, workers still working).
struct Taken {
    state: Mutex<(usize, usize)>,
    changed: parking_lot::Condvar,
}

/// Counts a replay worker out when it ends, however it ends.
struct WorkerDone<'a>(&'a Taken);

impl Drop for WorkerDone<'_> {
    fn drop(&mut self) {
        self.0.state.lock().1 -= 1;
        self.0.changed.notify_all();
    }
}

/// How much of a segment one read-ahead request asks for.
const READ_AHEAD_PIECE: u64 = 4 << 20;

/// Asks for the replay jobs' segments (`ask(j)` for job `j`) in the order the workers take the
/// jobs, each whole, once it is at most `workers` jobs past the last one taken (so at most
/// that many segments are read ahead of those in replay); returns once every job is asked for
/// or every worker has ended. The disk then reads one stream, without a pause, while the
/// workers parse and sort. When each worker asked only a few MiB past where it read, the disk
/// waited whenever both sorted, and the two streams slowed each other.
fn read_ahead(taken: &Taken, workers: usize, jobs: usize, mut ask: impl FnMut(usize)) {
    for j in 0..jobs {
        {
            let mut t = taken.state.lock();
            while j >= t.0 + workers && t.1 > 0 {
                taken.changed.wait(&mut t);
            }
            if t.1 == 0 {
                return;
            }
        }
        ask(j);
    }
}

/// Removes files of the index directory that no layer uses: runs replaced by a merge before a
/// crash or kept until it was durable, unusable runs, temporary files, checkpoints of an
/// older format (the hash seed's file stays). When it finds any, it first makes the run files
/// in use durable.
pub(crate) fn remove_unused(
    wal: &Wal,
    state: &RwLock<Index>,
    one_writer: &Mutex<()>,
) -> Result<usize> {
    let _one = one_writer.lock();
    let dir = wal.dir().join(INDEX_DIR);
    // The runs in use may be merges not yet durable whose inputs are among the unused files
    // (see `Run::retire`): they are made durable first.
    let mut synced = false;
    let used: Vec<PathBuf> = state
        .read()
        .layers
        .iter()
        .filter_map(|l| match l {
            Layer::Run(r) => r.path().map(Path::to_path_buf),
            Layer::Frozen(_) => None,
        })
        .collect();
    let mut removed = 0;
    for name in wal.io().list_dir(&dir).unwrap_or_default() {
        let p = dir.join(&name);
        if used.contains(&p) || name == SEED_FILE || wal.io().is_dir(&p) {
            continue;
        }
        if !synced {
            sync_runs(wal, state, std::time::Duration::ZERO)?;
            synced = true;
        }
        if let Err(e) = wal.io().remove_file(&p) {
            tracing::warn!(file = %p.display(), error = %e, "could not remove an unused index file");
            continue;
        }
        removed += 1;
    }
    if removed > 0 {
        wal.io().sync_dir(&dir).map_err(|e| seglog_wal::Error::Io {
            op: "fsync directory",
            path: dir.clone(),
            source: e,
        })?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_run_built_in_its_file_is_renamed_into_place_and_read_from_there() {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let wal = Wal::open(tmp.path().join("log"), seglog_wal::WalConfig::default())
            .expect("open a log");
        let meta = RunMeta {
            first_lsn: 1,
            last_lsn: 3,
            chain_crc: 5,
            epoch: 0,
            end: None,
            seed: 9,
        };
        let name = run::file_name(meta.first_lsn, meta.last_lsn);
        let dir = index_dir(&wal).expect("index directory");
        let path = dir.join(temporary_name(&name));
        let spill = run::Spill {
            path: &path,
            above: 0,
        };
        let mut b = RunBuilder::with_capacity_in(3, 6, Some(spill));
        let slot = |v: u64| {
            Some(Slot {
                version: v,
                location: Location {
                    segment: 1,
                    offset: 100 * v,
                },
            })
        };
        for (h, k) in [(1u64, "a"), (2, "bb"), (3, "ccc")] {
            b.push(h, k.as_bytes(), slot(h));
        }
        let Some(run::Built::File(Ok(file))) = b.finish_built(meta) else {
            panic!("the run was not built in its file");
        };
        let run = install_built_run(&wal, meta, Ok(file), true).expect("install the run");
        assert!(!path.exists(), "the temporary is renamed");
        assert_eq!(run.path(), Some(dir.join(&name).as_path()));
        let got: Vec<(u64, Vec<u8>, Val)> = run
            .iter()
            .map(|(h, k, v)| (h, k.get().to_vec(), v))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, b"a".to_vec(), slot(1)),
                (2, b"bb".to_vec(), slot(2)),
                (3, b"ccc".to_vec(), slot(3))
            ]
        );
        // The file on disk holds that run (the map is of the renamed file).
        let bytes = std::fs::read(dir.join(&name)).expect("read the run file");
        let from_disk = Run::parse(Backing::Heap(bytes), None, false).expect("the file parses");
        let again: Vec<(u64, Vec<u8>, Val)> = from_disk
            .iter()
            .map(|(h, k, v)| (h, k.get().to_vec(), v))
            .collect();
        assert_eq!(again, got);
    }

    /// Any source a test makes up, for [`merge`].
    type Entries<'a> = Box<dyn Iterator<Item = (u64, KeyRef<'a>, Val)> + 'a>;

    proptest! {
        /// Keys short and long, sharing prefixes and trailing zero bytes, against a map where
        /// the newest source wins: in key order (every hash 0), and in a run's order with
        /// hashes that few keys share (the key length) or none (a real hash).
        #[test]
        fn merge_visits_each_key_once_in_order_with_the_newest_state(
            sources in proptest::collection::vec(
                proptest::collection::btree_map(
                    proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(b'k'), any::<u8>()], 0..12),
                    any::<u64>(),
                    0..40,
                ),
                0..5,
            ),
            hashing in 0..3u8,
        ) {
            let hash = |k: &[u8]| match hashing {
                0 => 0,
                1 => k.len() as u64,
                _ => run::key_hash(7, k),
            };
            let mut model = std::collections::BTreeMap::new();
            for (newest_first, src) in sources.iter().enumerate().rev() {
                for (k, &v) in src {
                    model.insert((hash(k), k.clone()), (newest_first, v));
                }
            }
            let slot = |v: u64| Some(Slot { version: v, location: Location::default() });
            let iters: Vec<Entries<'_>> = sources
                .iter()
                .map(|src| {
                    let mut v: Vec<(u64, &[u8], Val)> =
                        src.iter().map(|(k, &v)| (hash(k), k.as_slice(), slot(v))).collect();
                    v.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
                    Box::new(v.into_iter().map(|(h, k, v)| (h, KeyRef::new(k), v))) as Entries<'_>
                })
                .collect();
            let mut seen = Vec::new();
            let sorted = merge(iters, |_, h, k, v| {
                seen.push(((h, k.get().to_vec()), v));
                true
            });
            prop_assert!(sorted);
            let want: Vec<((u64, Vec<u8>), Val)> =
                model.into_iter().map(|(k, (_, v))| (k, slot(v))).collect();
            prop_assert_eq!(seen, want);
        }
    }

    #[test]
    fn merge_stops_at_an_entry_out_of_order() {
        // As a damaged run reads: hash 0 and an empty key where a later entry should be.
        let damaged: Vec<(u64, &[u8])> = vec![(5, b"b"), (7, b"d"), (0, b""), (9, b"f")];
        let sound: Vec<(u64, &[u8])> = vec![(6, b"c"), (8, b"e")];
        let iters: Vec<Entries<'_>> = [damaged, sound]
            .into_iter()
            .map(|keys| {
                Box::new(keys.into_iter().map(|(h, k)| (h, KeyRef::new(k), None))) as Entries<'_>
            })
            .collect();
        let mut seen = Vec::new();
        let sorted = merge(iters, |_, _, k, _| {
            seen.push(k.get());
            true
        });
        assert!(!sorted);
        // The empty key wins as soon as it heads its source, right after "d".
        assert_eq!(seen, [&b"b"[..], b"c", b"d"]);

        // Alone (the single-source loop), the damaged source stops the merge at the same key.
        let damaged: Vec<(u64, &[u8])> = vec![(5, b"b"), (7, b"d"), (0, b""), (9, b"f")];
        let mut seen = Vec::new();
        let sorted = merge(
            vec![damaged.into_iter().map(|(h, k)| (h, KeyRef::new(k), None))],
            |_, _, k, _| {
                seen.push(k.get());
                true
            },
        );
        assert!(!sorted);
        assert_eq!(seen, [&b"b"[..], b"d"]);
        // Equal hashes, keys out of order: stopped too.
        let keys: Vec<(u64, &[u8])> = vec![(5, b"b"), (5, b"a")];
        let sorted = merge(
            vec![keys.into_iter().map(|(h, k)| (h, KeyRef::new(k), None))],
            |_, _, _, _| true,
        );
        assert!(!sorted);
    }

    #[test]
    fn read_ahead_asks_for_each_job_in_order_as_far_as_its_window_and_ends_with_the_workers() {
        for window in 1..=3 {
            for jobs in [0, 1, 2, 7] {
                // One worker, taking the jobs one by one.
                let taken = Taken {
                    state: Mutex::new((0, 1)),
                    changed: parking_lot::Condvar::new(),
                };
                let asked = (Mutex::new(Vec::<usize>::new()), parking_lot::Condvar::new());
                std::thread::scope(|s| {
                    s.spawn(|| {
                        read_ahead(&taken, window, jobs, |j| {
                            // Recorded, not asserted here: a panic in this thread would leave
                            // the worker waiting.
                            let t = taken.state.lock().0;
                            asked
                                .0
                                .lock()
                                .push(if j < t + window { j } else { usize::MAX });
                            asked.1.notify_all();
                        })
                    });
                    s.spawn(|| {
                        let _done = WorkerDone(&taken);
                        for t in 1..=jobs {
                            taken.state.lock().0 = t;
                            taken.changed.notify_all();
                            // The read-ahead goes on to the end of its window, in order.
                            let want = jobs.min(t + window);
                            let mut a = asked.0.lock();
                            while a.len() < want {
                                asked.1.wait(&mut a);
                            }
                            // Exactly: none past the window (nor any asked for early).
                            assert_eq!(*a, (0..want).collect::<Vec<_>>(), "window {window}");
                        }
                    });
                });
                // The scope joined the read-ahead: it ended once the worker had.
                assert_eq!(*asked.0.lock(), (0..jobs).collect::<Vec<_>>());
            }
        }
    }

    fn frozen(spare: &Spare) -> Frozen {
        frozen_in(spare, &Arc::new(Backlog::default()))
    }

    fn frozen_in(spare: &Spare, backlog: &Arc<Backlog>) -> Frozen {
        let backlog = backlog.clone();
        backlog.frozen.fetch_add(1, Ordering::AcqRel);
        Frozen {
            map: KeyMap::with_capacity(10, 100, 0),
            spare: spare.clone(),
            backlog,
            sorted: OnceLock::new(),
            first_lsn: 1,
            last_lsn: 2,
            epoch: 0,
        }
    }

    /// Flushes `flushes` runs of the given sizes one after another, merging as the
    /// checkpointer does; returns the largest number of run files seen and the entries
    /// written in all (flushes and merges).
    fn simulate_merges(flushes: impl Iterator<Item = usize>) -> (usize, usize, usize) {
        let (mut runs, mut most, mut written, mut flushed) = (Vec::new(), 0, 0, 0);
        for n in flushes {
            runs.insert(0, (true, n));
            written += n;
            flushed += n;
            written += merge_all(&mut runs);
            most = most.max(runs.len());
        }
        (most, written, flushed)
    }

    /// Merges `runs` while a merge is due; returns the entries written.
    fn merge_all(runs: &mut Vec<(bool, usize)>) -> usize {
        let mut written = 0;
        while let Some(w) = merge_window(runs) {
            let merged: usize = runs[w.clone()].iter().map(|&(_, n)| n).sum();
            written += merged;
            runs.splice(w, [(true, merged)]);
        }
        written
    }

    #[test]
    fn merges_keep_run_files_few_and_rewrite_each_entry_a_few_times() {
        // Equal flushes: a segment at a time. 4^5 flushes: at most three runs a level waiting,
        // each entry merged once a level.
        let (most, written, flushed) = simulate_merges(std::iter::repeat_n(1000, 1024));
        assert!(most <= 3 * 5 + 1, "{most} run files");
        assert!(
            written <= 6 * flushed,
            "{written} entries written for {flushed}"
        );
        // Flushes of uneven sizes (a lagging checkpointer writes several memtables as one).
        let sizes = (0..2000usize).map(|i| 1000 * (1 + (i * 7919) % 5));
        let (most, written, flushed) = simulate_merges(sizes);
        assert!(most <= MAX_RUN_FILES, "{most} run files");
        assert!(
            written <= 8 * flushed,
            "{written} entries written for {flushed}"
        );
        // A backlog (merges waited while flushes kept coming): merged by tiers, not as a
        // cascade that rewrites the growing run at each step.
        let mut runs = vec![(true, 1000); 200];
        let written = 200 * 1000 + merge_all(&mut runs);
        assert!(
            written <= 5 * 200 * 1000,
            "{written} entries written for 200,000"
        );
        // A huge old run and small new ones: the small ones merge among themselves first.
        let sizes = std::iter::once(1 << 30).chain(std::iter::repeat_n(1, 100));
        let (most, written, flushed) = simulate_merges(sizes);
        assert!(most <= MAX_RUN_FILES, "{most} run files");
        assert!(
            written < flushed + 1000,
            "the huge run was rewritten: {written}"
        );
    }

    #[test]
    fn writers_wait_while_too_many_frozen_memtables_wait_to_be_written() {
        let spare: Spare = Arc::new(Mutex::new(SparePool::new(0)));
        let backlog = Arc::new(Backlog::default());
        backlog.set_writing(true);
        let mut alive: Vec<Frozen> = (0..MAX_FROZEN_MEMTABLES)
            .map(|_| frozen_in(&spare, &backlog))
            .collect();
        // At the bound, a writer passes without nudging anyone.
        backlog.wait_for_room(|| panic!("waited at the bound"));
        for release in ["a memtable written", "the checkpointer failing"] {
            alive.push(frozen_in(&spare, &backlog));
            assert_eq!(backlog.frozen(), MAX_FROZEN_MEMTABLES + 1);
            let (nudged_tx, nudged) = std::sync::mpsc::channel();
            let waiter = {
                let backlog = backlog.clone();
                std::thread::spawn(move || {
                    backlog.wait_for_room(|| {
                        let _ = nudged_tx.send(());
                    })
                })
            };
            // The waiter nudges the checkpointer under the gate's lock, just before it waits:
            // whatever is done after this wakes it.
            nudged.recv().unwrap();
            assert!(!waiter.is_finished(), "passed the gate over the bound");
            if release == "a memtable written" {
                drop(alive.pop());
            } else {
                backlog.set_writing(false);
            }
            waiter.join().unwrap();
        }
        // Not writing: over the bound, writers still pass.
        alive.push(frozen_in(&spare, &backlog));
        backlog.wait_for_room(|| panic!("waited for a failing checkpointer"));
        // A checkpointer thread that panics leaves writers free to pass.
        let checkpointer = {
            let backlog = backlog.clone();
            std::thread::spawn(move || {
                let _writing = backlog.writing_until_dropped();
                assert!(backlog.over());
                panic!("a checkpointer bug (expected by this test)");
            })
        };
        assert!(checkpointer.join().is_err());
        assert!(
            !backlog.over(),
            "writers would wait for a dead checkpointer"
        );
        backlog.wait_for_room(|| panic!("waited for a dead checkpointer"));
        drop(alive);
        assert_eq!(backlog.frozen(), 0);
    }

    #[test]
    fn the_spare_pool_prepares_one_map_and_keeps_a_bounded_number() {
        let spare: Spare = Arc::new(Mutex::new(SparePool::new(0)));
        stock_spare(&spare);
        assert!(
            spare.lock().ready.is_empty(),
            "nothing is prepared before a roll gave a size"
        );
        spare.lock().want = (1000, 8000);
        stock_spare(&spare);
        stock_spare(&spare);
        {
            let pool = spare.lock();
            assert_eq!(pool.ready.len(), 1, "one map is prepared, not one per call");
            assert_eq!(pool.ready[0].len(), 0);
            assert!(pool.ready[0].capacity() >= 1000);
        }
        for _ in 0..3 {
            drop(frozen(&spare));
        }
        {
            let pool = spare.lock();
            assert_eq!(pool.ready.len() + pool.returned.len(), SPARES);
        }
        // A returned map is emptied and made ready once the ready one is taken.
        let taken = spare.lock().ready.pop();
        assert!(taken.is_some());
        stock_spare(&spare);
        let pool = spare.lock();
        assert_eq!(pool.ready.len(), 1);
        assert_eq!(pool.ready[0].len(), 0);
        assert!(pool.ready[0].capacity() >= 1000);
        assert!(pool.returned.is_empty());
    }
}
