//! The memtable's hash map: byte keys to index values, insert and overwrite only.
//!
//! Built for the write path, where a put inserts a key in whatever order the user writes
//! them into a table of up to a segment's worth of keys, a table larger than the CPU caches,
//! and for the flush, which writes the table as a run file once its segment sealed:
//! - Keys are copied into one arena (`keys`), not allocated one by one: no allocator call per
//!   put, and dropping a memtable frees two buffers, not a million (a memtable is dropped on
//!   the checkpointer thread; freeing another thread's allocations one by one contends on the
//!   allocator's arena lock with the writer).
//! - The table (`cells`) is open addressing with linear probing, and each cell holds the whole
//!   entry in 32 bytes: the key's full hash, its place in the arena, and its value. A probe
//!   reads the arena only on a full hash match; growing the table (rare: a new memtable is
//!   sized like the last one) places the cells again from their hashes, reading no key.
//! - A key's home cell is given by the high bits of its hash ([`run::key_hash`], under the
//!   index's seed), so the table is in hash order but for the keys that linear probing moved
//!   past others: walking it and ordering each cluster of occupied cells yields the keys in the
//!   order of a run's entries ([`HashWalk`]). A flush thus reads the table front to back, the
//!   way memory is fastest to read, and neither sorts nor follows a pointer per key. (With
//!   the entries kept apart in arrival order and the table holding their numbers, the walk
//!   read them at random: 18-24 ms of a flush's CPU for a segment of 262k keys, most of it
//!   waiting for memory.)
//! - A change is first only appended (its key to the arena, its cell to `pending`); the table
//!   learns the last [`PENDING`] changes together, when that many have accumulated. A table
//!   insert is a cache miss whatever one does; settled together, the misses of a whole batch
//!   are prefetched at once and overlap, instead of costing one memory round trip per put.
//!   Lookups read the pending changes (newest first) before the table.
//! - The arena is written in order; each put asks for its lines a few puts ahead, so they are
//!   in cache when written (the stores of a buffer larger than the caches otherwise miss, and
//!   the index lock's release after the insert waits for them).
//! - Page faults are the other cost of a put that is not computing: the buffers are reused
//!   from memtable to memtable, emptied and their pages written on another thread before the
//!   roll that takes them (see `index::stock_spare`); the table's pages are written when it is
//!   allocated (never first read as the kernel's shared zero page, whose replacement flushes
//!   the TLB of every core); and large buffers ask for transparent huge pages.
//!
//! ```text
//!   cells:   [empty | {hash, start, len+1, version, version-segment, offset} | empty | ...]
//!            power of two, at most 3/4 full; len+1 = 0 marks an empty cell
//!   keys:    [key0 bytes | key1 bytes | ...][pending keys]      the arena
//!   pending: [cell, cell, ...]                                  at most PENDING
//! ```
//!
//! # Invariants
//! - The table holds each key at most once (`settled` cells); `pending` holds the changes
//!   not in it yet, in order, their keys at the arena's tail in the same order.
//! - Settling moves the pending keys down over those that only overwrote a settled key, so
//!   the arena holds each settled key once after it (a flush copies it whole as its run's key
//!   heap).
//! - Nothing is ever removed (a delete is a tombstone value), so probe chains never break.
//! - A key sits at its home cell or after it, with no empty cell between (wrapping from the
//!   table's end to its start): so every key of a cluster has its home in that cluster, and
//!   clusters are in hash order, but for the one that wraps.
//! - A record's LSN is at most 2^32 past its segment's first LSN and its offset below 4 GiB
//!   (a segment holds at most 1 GiB, `seglog_wal::config::MAX_SEGMENT_SIZE`): a cell keeps
//!   both in 32 bits, as a run entry does.
//!
//! Cost per key: its bytes and one 32-byte cell in a table 3/8 to 3/4 full, 42.7 to 85.3
//! bytes.

use crate::mapped::advise_huge_pages;
use crate::run::{self, Val};

/// Changes appended before the table learns them together (see the module docs).
pub(crate) const PENDING: usize = 32;

/// An offset no frame can have (a segment is at most 1 GiB): marks a tombstone.
const TOMBSTONE: u32 = u32::MAX;

/// One key and its value: a cell of the table, or a pending change. Aligned so that a cell
/// never straddles two cache lines.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
#[repr(C, align(32))]
struct Cell {
    /// The key's hash under the map's seed.
    hash: u64,
    /// Where the key starts in the arena.
    start: u32,
    /// The key's length plus one; 0 marks an empty cell.
    len1: u32,
    /// The LSN of the change (0 for a tombstone).
    version: u64,
    /// `version` minus the record's segment (named by its first LSN); 0 for a tombstone.
    since: u32,
    /// The frame's offset in its segment, or [`TOMBSTONE`].
    offset: u32,
}

impl Cell {
    fn new(hash: u64, start: u32, len: u32, val: Val) -> Cell {
        let (version, since, offset) = match val {
            // Both fit 32 bits for any record the log wrote (see the module's invariants),
            // the offset below `TOMBSTONE`.
            Some(s) => (
                s.version,
                s.version.wrapping_sub(s.location.segment) as u32,
                s.location.offset as u32,
            ),
            None => (0, 0, TOMBSTONE),
        };
        debug_assert!(val.is_none_or(|s| {
            s.location.offset < u64::from(TOMBSTONE)
                && s.version
                    .checked_sub(s.location.segment)
                    .is_some_and(|d| d <= u64::from(u32::MAX))
        }));
        Cell {
            hash,
            start,
            len1: len + 1,
            version,
            since,
            offset,
        }
    }

    fn occupied(&self) -> bool {
        self.len1 != 0
    }

    fn key_range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.start as usize + self.len1.saturating_sub(1) as usize
    }

    fn val(&self) -> Val {
        (self.offset != TOMBSTONE).then_some(run::Slot {
            version: self.version,
            location: seglog_wal::Location {
                segment: self.version.wrapping_sub(u64::from(self.since)),
                offset: u64::from(self.offset),
            },
        })
    }
}

/// See the module docs.
pub(crate) struct KeyMap {
    /// The index's hash seed (see [`run::key_hash`]).
    seed: u64,
    keys: Vec<u8>,
    /// The table: a power of two, at most 3/4 full.
    cells: Vec<Cell>,
    /// Occupied cells.
    settled: usize,
    /// Changes not in the table yet, in order (see the module docs).
    pending: Vec<Cell>,
}

/// The smallest table holding `n` keys at most 3/4 full.
fn table_size(n: usize) -> usize {
    (n.saturating_mul(4) / 3 + 1).next_power_of_two().max(16)
}

/// An empty table of `n` cells whose pages are written now. (`vec![Cell::default(); n]`
/// could take fresh zero pages from the kernel unwritten; the first probe of a page then
/// maps the shared zero page, and the insert after it faults again and flushes the TLB of
/// every core the process runs on.)
fn empty_cells(n: usize) -> Vec<Cell> {
    let mut v = Vec::with_capacity(n);
    advise_huge_pages(&v);
    v.resize(n, Cell::default());
    v
}

/// The home cell of `hash` in a table of `len` cells (a power of two, at least 16): its high
/// bits, so that cell order is hash order.
fn home(hash: u64, len: usize) -> usize {
    (hash >> (64 - len.trailing_zeros())) as usize
}

impl KeyMap {
    /// A map that holds `n` keys, `key_bytes` of them in all, before any buffer grows; its
    /// keys hashed under `seed` (the index's).
    pub(crate) fn with_capacity(n: usize, key_bytes: usize, seed: u64) -> KeyMap {
        let mut m = KeyMap {
            seed,
            keys: Vec::new(),
            cells: empty_cells(table_size(n)),
            settled: 0,
            pending: Vec::with_capacity(PENDING),
        };
        m.reserve_keys(key_bytes);
        m
    }

    /// Room for `key_bytes` of keys in all, without reallocating.
    fn reserve_keys(&mut self, key_bytes: usize) {
        if self.keys.capacity() < key_bytes {
            self.keys.reserve(key_bytes - self.keys.len());
            advise_huge_pages(&self.keys);
        }
    }

    /// Writes a byte in every page of the room left in the key arena, so that the puts
    /// filling it take no page faults (see `index::stock_spare`: a spare map is prepared on
    /// another core than the writer's). The table's pages are written when it is made.
    pub(crate) fn touch_capacity(&mut self) {
        const PAGE: usize = 4096;
        for b in self.keys.spare_capacity_mut().iter_mut().step_by(PAGE) {
            b.write(0);
        }
    }

    /// Empties the map, keeping its buffers, so that it holds `n` keys and `key_bytes` of
    /// them before any buffer grows. Reusing a map's memory instead of allocating anew spares
    /// the writer the page faults of fresh memory (costly in a virtual machine).
    pub(crate) fn reset(&mut self, n: usize, key_bytes: usize) {
        let settled_any = self.settled > 0;
        self.keys.clear();
        self.settled = 0;
        self.pending.clear();
        let size = table_size(n);
        if self.cells.len() == size {
            // Only settling writes cells: a table that settled nothing is still empty.
            if settled_any {
                self.cells.fill(Cell::default());
            }
        } else {
            self.cells = empty_cells(size);
        }
        self.reserve_keys(key_bytes);
    }

    /// Whether pending change `i` is the first of its key: neither in the table nor changed
    /// by an earlier pending change.
    fn pending_is_new(&self, i: usize) -> bool {
        let c = &self.pending[i];
        let key = self.key_of(c);
        self.probe(key, c.hash).1.is_none()
            && !self.pending[..i]
                .iter()
                .any(|p| p.hash == c.hash && self.key_of(p) == key)
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.settled
            + (0..self.pending.len())
                .filter(|&i| self.pending_is_new(i))
                .count()
    }

    /// Keys the table holds before it grows.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.cells.len() / 4 * 3
    }

    /// Bytes of keys held (for sizing the next map).
    pub(crate) fn key_bytes(&self) -> usize {
        self.keys.len()
    }

    fn hash(&self, key: &[u8]) -> u64 {
        run::key_hash(self.seed, key)
    }

    /// The seed its keys are hashed under.
    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    /// The key arena: every settled key once (see the module docs), where the walk's keys are
    /// (a flush copies it whole as its run's key heap).
    pub(crate) fn key_heap(&self) -> &[u8] {
        &self.keys
    }

    fn key_of(&self, c: &Cell) -> &[u8] {
        &self.keys[c.key_range()]
    }

    /// The cell holding `key` in the table, or the empty cell where it would go.
    fn probe(&self, key: &[u8], hash: u64) -> (usize, Option<usize>) {
        let mask = self.cells.len() - 1;
        let mut i = home(hash, self.cells.len());
        loop {
            let c = &self.cells[i];
            if !c.occupied() {
                return (i, None);
            }
            if c.hash == hash && self.key_of(c) == key {
                return (i, Some(i));
            }
            // The table is never full (at most 3/4), so this finds an empty cell.
            i = (i + 1) & mask;
        }
    }

    #[cfg(test)]
    pub(crate) fn get(&self, key: &[u8]) -> Option<Val> {
        self.get_hashed(self.hash(key), key)
    }

    /// [`KeyMap::get`] of a key whose hash under the map's seed is `hash`.
    pub(crate) fn get_hashed(&self, hash: u64, key: &[u8]) -> Option<Val> {
        if let Some(c) = self
            .pending
            .iter()
            .rev()
            .find(|c| c.hash == hash && self.key_of(c) == key)
        {
            return Some(c.val());
        }
        let (_, found) = self.probe(key, hash);
        found.map(|i| self.cells[i].val())
    }

    /// Sets `key`'s value, inserting the key when it is new.
    pub(crate) fn set(&mut self, key: &[u8], val: Val) {
        let hash = self.hash(key);
        // A memtable holds the changes of one segment (at most 1 GiB, see
        // `seglog_wal::config::MAX_SEGMENT_SIZE`), and its keys are part of those records:
        // arena offsets fit in 32 bits, and so do key lengths (at most 65535, see `engine`).
        let (Ok(start), Ok(len), Ok(_)) = (
            u32::try_from(self.keys.len()),
            u32::try_from(key.len()),
            u32::try_from(self.keys.len() + key.len() + 1),
        ) else {
            unreachable!("a memtable holds less than a segment's worth of changes")
        };
        if self.keys.len() + key.len() > self.keys.capacity() {
            // Doubling, as `Vec` would, but with the huge-page hint on the new buffer.
            self.reserve_keys((self.keys.len() + key.len()).max(1024) * 2);
        }
        self.keys.extend_from_slice(key);
        if let Some(k) = self.keys.spare_capacity_mut().get(512) {
            crate::mapped::prefetch(k);
        }
        // Its cell is settled with the next [`PENDING`] changes or so: asked for now, it is in
        // cache by then. So is the cache line after it (a line holds two cells): at the
        // table's fill, the probe often goes on into it.
        let at = home(hash, self.cells.len());
        for c in [self.cells.get(at), self.cells.get((at | 1) + 1)]
            .into_iter()
            .flatten()
        {
            crate::mapped::prefetch_for_write(c);
        }
        self.pending.push(Cell::new(hash, start, len, val));
        if self.pending.len() >= PENDING {
            self.settle();
        }
    }

    /// Puts the pending changes into the table (see the module docs).
    pub(crate) fn settle(&mut self) {
        let Some(first) = self.pending.first() else {
            return;
        };
        let mut key_end = first.start as usize;
        while (self.settled + self.pending.len()) * 4 > self.cells.len() * 3 {
            self.grow();
        }
        for c in &self.pending {
            crate::mapped::prefetch_for_write(&self.cells[home(c.hash, self.cells.len())]);
        }
        for r in 0..self.pending.len() {
            let c = self.pending[r];
            // Its key has not been moved yet: moves only go down, before change `r`'s key.
            let (at, found) = self.probe(self.key_of(&c), c.hash);
            if found.is_some() {
                let key_at = self.cells[at].start;
                self.cells[at] = Cell { start: key_at, ..c };
                continue;
            }
            let range = c.key_range();
            if range.start != key_end {
                self.keys.copy_within(range.clone(), key_end);
            }
            self.cells[at] = Cell {
                // Below the old arena length, which fits in 32 bits (see `set`).
                start: key_end as u32,
                ..c
            };
            key_end += range.len();
            self.settled += 1;
        }
        self.keys.truncate(key_end);
        self.pending.clear();
    }

    /// Doubles the table, placing every settled key again from its hash.
    fn grow(&mut self) {
        self.rehash(self.cells.len() * 2);
    }

    /// Makes room for `n` keys, `key_bytes` of them in all, before any buffer grows: the
    /// table grows at once to its size for `n` (each settled key placed once, not once per
    /// doubling). For a map that was not sized when it was made.
    pub(crate) fn expect(&mut self, n: usize, key_bytes: usize) {
        let size = table_size(n);
        if size > self.cells.len() {
            self.rehash(size);
        }
        self.reserve_keys(key_bytes);
    }

    /// Keys in the table (the pending changes aside): a cheap lower bound of [`KeyMap::len`].
    pub(crate) fn settled(&self) -> usize {
        self.settled
    }

    /// Places every settled cell again, from its hash (no key is read), in a table of `size`
    /// cells (a power of two holding them at most 3/4 full).
    fn rehash(&mut self, size: usize) {
        let mask = size - 1;
        let mut cells = empty_cells(size);
        for c in self.cells.iter().filter(|c| c.occupied()) {
            let mut i = home(c.hash, size);
            while cells[i].occupied() {
                i = (i + 1) & mask;
            }
            cells[i] = *c;
        }
        self.cells = cells;
    }

    /// Numbers of every key's current value, in key order (for [`KeyMap::at`]): a cell's
    /// index in the table, or the table's length plus a pending change's. A key settled and
    /// changed again while pending has two; the pending one is current. (Numbers hold until
    /// the map changes; a frozen memtable's never does.)
    pub(crate) fn sorted(&self) -> Vec<u32> {
        // A table of a segment's keys at most 3/4 full has fewer than 2^32 cells (see `set`).
        let numbers: Vec<u32> = (0..self.cells.len())
            .filter(|&i| self.cells[i].occupied())
            .chain(self.cells.len()..self.cells.len() + self.pending.len())
            .map(|n| n as u32)
            .collect();
        run::latest_per_key(numbers.len(), |j| self.at(numbers[j]).0)
            .into_iter()
            .map(|j| numbers[j as usize])
            .collect()
    }

    fn cell(&self, n: u32) -> &Cell {
        let n = n as usize;
        match n.checked_sub(self.cells.len()) {
            Some(p) => &self.pending[p],
            None => &self.cells[n],
        }
    }

    /// Key and value number `n` (see [`KeyMap::sorted`]).
    pub(crate) fn at(&self, n: u32) -> (&[u8], Val) {
        let c = self.cell(n);
        (self.key_of(c), c.val())
    }

    /// The entries numbered by `order` (numbers from [`KeyMap::sorted`]), in that order.
    pub(crate) fn in_order<'a>(&'a self, order: &'a [u32]) -> InOrder<'a> {
        InOrder {
            map: self,
            order,
            i: 0,
        }
    }

    /// Every settled key with its hash and value, in the order of a run's entries: (hash,
    /// key). Call [`KeyMap::settle`] first: pending changes are not visited.
    pub(crate) fn hash_walk(&self) -> HashWalk<'_> {
        debug_assert!(
            self.pending.is_empty(),
            "a walk of a map with pending changes"
        );
        let mut w = HashWalk {
            map: self,
            next_cell: 0,
            ordered: Vec::new(),
            at: 0,
            wrapped: Vec::new(),
        };
        // The cluster at cell 0 may hold keys whose homes are at the table's end (probing
        // wrapped): those go last, with the chunk that ends the table.
        let len = self.cells.len();
        // (A table always has an empty cell: it is at most 3/4 full.)
        let first_empty = self.cells.iter().position(|c| !c.occupied()).unwrap_or(0);
        for c in &self.cells[..first_empty] {
            if home(c.hash, len) < first_empty {
                w.ordered.push(*c);
            } else {
                w.wrapped.push(*c);
            }
        }
        w.sort_ordered();
        w.next_cell = first_empty;
        w
    }
}

/// A key as a walk gives it: its hash, where it is in the map's key heap ([`KeyMap::key_heap`])
/// and its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placed {
    pub hash: u64,
    pub start: usize,
    pub len: usize,
    pub val: Val,
}

/// A settled map's keys in (hash, key) order (see [`KeyMap::hash_walk`]).
///
/// Keys are placed by the high bits of their hash, and a key never sits before its home cell
/// nor past an empty one: so each cluster of occupied cells holds exactly the keys whose homes
/// are in it, and ordering each cluster (a few keys: the table is at most 3/4 full) orders the
/// whole map. The walk reads the table a chunk of whole clusters at a time: it copies the
/// chunk's occupied cells out without branching on which are (at the table's fill, whether a
/// cell is taken is a coin toss), then puts them in order with an insertion sort, which only
/// has the few keys inside each cluster to move. (Visiting cluster by cluster instead, the
/// walk of a table of 270k keys took 19.5 ns a key; chunk by chunk it takes 9.5, most of it
/// reading the table from memory.)
pub(crate) struct HashWalk<'a> {
    map: &'a KeyMap,
    /// The first cell not read yet.
    next_cell: usize,
    /// The cells read, in order: those from `at` on are still to be given.
    ordered: Vec<Cell>,
    /// The next place in `ordered`.
    at: usize,
    /// Keys of the cluster at cell 0 whose homes are at the table's end: given with the
    /// chunk that ends the table.
    wrapped: Vec<Cell>,
}

/// Cells a walk reads at least at a time: 64 KiB, which stay in the core's cache while they
/// are ordered and given.
const WALK_CHUNK: usize = 2048;

impl HashWalk<'_> {
    /// Reads the next chunk of whole clusters into `ordered`, in order. False at the table's
    /// end.
    fn read_chunk(&mut self) -> bool {
        let cells = &self.map.cells;
        let len = cells.len();
        let from = self.next_cell;
        if from == len {
            return false;
        }
        // Up to an empty cell, so that no cluster is split between two chunks.
        let mut to = (from + WALK_CHUNK).min(len);
        while to < len && cells[to - 1].occupied() && cells[to].occupied() {
            to += 1;
        }
        self.ordered.clear();
        self.ordered.resize(to - from, Cell::default());
        let mut n = 0;
        for c in &cells[from..to] {
            // `n` counts the occupied cells before this one: below `to - from`.
            self.ordered[n] = *c;
            n += usize::from(c.occupied());
        }
        self.ordered.truncate(n);
        if to == len {
            self.ordered.append(&mut self.wrapped);
        }
        self.next_cell = to;
        self.at = 0;
        self.sort_ordered();
        true
    }

    /// Orders `ordered` by (hash, key) by insertion: it holds whole clusters, each in hash
    /// order but for the keys inside it (each key is once in a settled map: equal hashes are
    /// distinct keys).
    fn sort_ordered(&mut self) {
        let map = self.map;
        let before = |a: &Cell, b: &Cell| {
            a.hash < b.hash
                || (a.hash == b.hash && run::cmp_keys(map.key_of(a), map.key_of(b)).is_lt())
        };
        let v = &mut self.ordered;
        for i in 1..v.len() {
            if !before(&v[i], &v[i - 1]) {
                continue;
            }
            let c = v[i];
            let mut j = i;
            while j > 0 && before(&c, &v[j - 1]) {
                v[j] = v[j - 1];
                j -= 1;
            }
            v[j] = c;
        }
    }

    /// The next key, placed in the map's key heap (as the iterator's, without the key).
    #[inline]
    pub(crate) fn next_placed(&mut self) -> Option<Placed> {
        let c = self.next_cell()?;
        let r = c.key_range();
        Some(Placed {
            hash: c.hash,
            start: r.start,
            len: r.len(),
            val: c.val(),
        })
    }

    #[inline]
    fn next_cell(&mut self) -> Option<Cell> {
        while self.at == self.ordered.len() {
            if !self.read_chunk() {
                return None;
            }
        }
        let c = self.ordered[self.at];
        self.at += 1;
        Some(c)
    }
}

impl<'a> Iterator for HashWalk<'a> {
    type Item = (u64, run::KeyRef<'a>, Val);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let map = self.map;
        let c = self.next_cell()?;
        Some((c.hash, run::KeyRef::new(map.key_of(&c)), c.val()))
    }
}

/// A map's entries in the order of a list of numbers (see [`KeyMap::in_order`]): a type of
/// its own, so that a merge calls it directly (see `index::Source`).
///
/// In key order the cells and their keys are visited at random, two cache misses each in a
/// map larger than the caches: each step asks for the cell and the key of those a few places
/// ahead, so the misses overlap.
pub(crate) struct InOrder<'a> {
    map: &'a KeyMap,
    order: &'a [u32],
    i: usize,
}

impl<'a> Iterator for InOrder<'a> {
    type Item = (&'a [u8], Val);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        const AHEAD: usize = 8;
        let (map, order, i) = (self.map, self.order, self.i);
        let &n = order.get(i)?;
        self.i = i + 1;
        if let Some(&m) = order.get(i + 2 * AHEAD) {
            crate::mapped::prefetch(map.cell(m));
        }
        if let Some(&m) = order.get(i + AHEAD) {
            if let Some(k) = map.keys.get(map.cell(m).start as usize) {
                crate::mapped::prefetch(k);
            }
        }
        Some(map.at(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Slot;
    use proptest::prelude::*;
    use seglog_wal::Location;
    use std::collections::HashMap;

    /// A live value, or a tombstone for every third `v`.
    fn val(v: u64) -> Val {
        let tombstone = v.is_multiple_of(3);
        (!tombstone).then_some(Slot {
            version: v,
            location: Location {
                segment: 1,
                offset: v,
            },
        })
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_map(
            ops in proptest::collection::vec((proptest::collection::vec(0u8..4, 0..5), 0u64..1000), 0..600),
            capacity in 0usize..40,
            seed in any::<u64>(),
        ) {
            let mut m = KeyMap::with_capacity(capacity, capacity * 2, seed);
            let mut model: HashMap<Vec<u8>, Val> = HashMap::new();
            for (k, v) in &ops {
                m.set(k, val(*v));
                model.insert(k.clone(), val(*v));
                prop_assert_eq!(m.get(k), Some(val(*v)));
                prop_assert_eq!(m.len(), model.len());
            }
            prop_assert_eq!(m.len(), model.len());
            for (k, v) in &model {
                prop_assert_eq!(m.get(k), Some(*v));
            }
            prop_assert_eq!(m.get(&[9, 9, 9]), None);
            let mut expect: Vec<_> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
            expect.sort_by(|a, b| a.0.cmp(&b.0));
            let got_pending: Vec<_> = m.sorted().into_iter().map(|n| { let (k, v) = m.at(n); (k.to_vec(), v) }).collect();
            prop_assert_eq!(&got_pending, &expect);
            m.settle();
            prop_assert_eq!(m.len(), model.len());
            for (k, v) in &model {
                prop_assert_eq!(m.get(k), Some(*v));
            }
            let got: Vec<_> = m.sorted().into_iter().map(|n| { let (k, v) = m.at(n); (k.to_vec(), v) }).collect();
            prop_assert_eq!(got, expect);
            // Settled, the table walks in a run's order: each key once, by (hash, key).
            let mut want: Vec<_> = model
                .iter()
                .map(|(k, v)| (run::key_hash(seed, k), k.clone(), *v))
                .collect();
            want.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            let walked: Vec<_> = m.hash_walk().map(|(h, k, v)| (h, k.get().to_vec(), v)).collect();
            prop_assert_eq!(&walked, &want);
            // The same walk placed in the key heap, as a flush reads it.
            let mut w = m.hash_walk();
            let mut placed = Vec::new();
            while let Some(p) = w.next_placed() {
                placed.push((p.hash, m.key_heap()[p.start..p.start + p.len].to_vec(), p.val));
            }
            prop_assert_eq!(placed, want);
        }
    }

    /// Tables small and nearly full, so that clusters wrap from the end to the start, walked
    /// against a sort, with a seed that gives many keys the same home.
    #[test]
    fn walks_wrapping_clusters_in_hash_order() {
        for n in [1usize, 5, 11, 12, 40, 300, 3000] {
            for seed in 0..20u64 {
                let mut m = KeyMap::with_capacity(n, 8 * n, seed);
                for i in 0..n as u64 {
                    m.set(&(i * 7919).to_le_bytes(), val(i + 1));
                }
                m.settle();
                let mut want: Vec<(u64, Vec<u8>)> = (0..n as u64)
                    .map(|i| {
                        let k = (i * 7919).to_le_bytes().to_vec();
                        (run::key_hash(seed, &k), k)
                    })
                    .collect();
                want.sort();
                let walked: Vec<(u64, Vec<u8>)> = m
                    .hash_walk()
                    .map(|(h, k, _)| (h, k.get().to_vec()))
                    .collect();
                assert_eq!(walked, want, "{n} keys, seed {seed}");
            }
        }
        // A wrapped cluster, made sure of: the last slot and the first both taken.
        let wrapped = (0..200u64).any(|seed| {
            let mut m = KeyMap::with_capacity(12, 96, seed);
            for i in 0..12u64 {
                m.set(&i.to_le_bytes(), val(i + 1));
            }
            m.settle();
            m.cells[0].occupied() && m.cells[m.cells.len() - 1].occupied()
        });
        assert!(
            wrapped,
            "no seed made a cluster wrap: the test covers less than it says"
        );
    }

    #[test]
    fn reset_empties_and_keeps_working() {
        let mut m = KeyMap::with_capacity(4, 0, 1);
        for i in 0..1000u64 {
            m.set(&i.to_le_bytes(), val(i + 1));
        }
        m.reset(10, 3);
        assert_eq!(m.len(), 0);
        assert_eq!(m.get(&5u64.to_le_bytes()), None);
        m.set(b"k", val(1));
        assert_eq!(m.get(b"k"), Some(val(1)));
        assert_eq!(
            std::mem::size_of::<Cell>(),
            32,
            "the module docs' cost per key"
        );
    }

    #[test]
    fn reset_to_the_same_size_forgets_settled_and_pending_keys() {
        let mut m = KeyMap::with_capacity(100, 800, 2);
        let size = m.cells.len();
        // More than `PENDING` keys: some are settled into the table.
        for i in 0..50u64 {
            m.set(&i.to_le_bytes(), val(i + 1));
        }
        m.reset(100, 800);
        assert_eq!(m.cells.len(), size, "the same table, cleared");
        assert!(m.cells.iter().all(|c| !c.occupied()));
        // Fewer than `PENDING`: nothing reached the table, which stays as it is.
        for i in 100..110u64 {
            m.set(&i.to_le_bytes(), val(i + 1));
        }
        m.reset(100, 800);
        m.touch_capacity();
        for i in (0..50u64).chain(100..110) {
            assert_eq!(m.get(&i.to_le_bytes()), None);
        }
        for i in 200..300u64 {
            m.set(&i.to_le_bytes(), val(i + 1));
        }
        assert_eq!(m.len(), 100);
        for i in 200..300u64 {
            assert_eq!(m.get(&i.to_le_bytes()), Some(val(i + 1)));
        }
    }

    #[test]
    fn a_map_expecting_more_keys_grows_once() {
        let mut m = KeyMap::with_capacity(0, 0, 3);
        // Settled and pending keys before the table grows.
        for i in 0..40u64 {
            m.set(&i.to_le_bytes(), val(i + 1));
        }
        m.expect(10_000, 80_000);
        let size = m.cells.len();
        assert!(size * 3 >= 10_000 * 4);
        for i in 0..40u64 {
            assert_eq!(m.get(&i.to_le_bytes()), Some(val(i + 1)));
        }
        for i in 40..10_000u64 {
            m.set(&i.to_le_bytes(), val(i + 1));
        }
        assert_eq!(m.cells.len(), size, "no growth for the keys it expected");
        assert_eq!(m.len(), 10_000);
        for i in (0..10_000u64).step_by(7) {
            assert_eq!(m.get(&i.to_le_bytes()), Some(val(i + 1)));
        }
        m.expect(10, 10);
        assert_eq!(m.cells.len(), size, "never shrinks");
    }

    #[test]
    fn grows_past_its_capacity() {
        let mut m = KeyMap::with_capacity(0, 0, 3);
        for i in 0..100_000u64 {
            m.set(&i.to_be_bytes(), val(i + 1));
        }
        assert_eq!(m.len(), 100_000);
        assert!(m.cells.len() * 3 >= m.len() * 4);
        for i in (0..100_000u64).step_by(97) {
            assert_eq!(m.get(&i.to_be_bytes()), Some(val(i + 1)));
        }
    }
}
