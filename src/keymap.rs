//! The memtable's hash map: byte keys to index values, insert and overwrite only.
//!
//! Built for the write path, where a put inserts a key in whatever order the user writes
//! them into a table of up to a segment's worth of keys, a table larger than the CPU caches:
//! - Keys are copied into one arena (`keys`), not allocated one by one: no allocator call per
//!   put, and dropping a memtable frees three buffers, not a million (a memtable is dropped on
//!   the checkpointer thread; freeing another thread's allocations one by one contends on the
//!   allocator's arena lock with the writer).
//! - `entries` holds each key's place in the arena, the high half of its hash and its value
//!   (32 bytes); `slots` is an open-addressing table (linear probing) of entry numbers, each
//!   with the low half of the key's hash as a tag. A probe reads `entries` and the arena only
//!   on a tag match; growing the table (rare: a new memtable is sized like the last one)
//!   places the entries again from the two halves, and neither it nor a walk reads a key.
//! - A key's home slot is given by the high bits of its hash ([`run::key_hash`], under the
//!   index's seed), so the table is in hash order but for the keys that linear probing moved
//!   past others: walking it and sorting each cluster of occupied slots yields the keys in the
//!   order of a run's entries ([`HashWalk`]), which is how a frozen memtable is written as a run
//!   without sorting it.
//! - A change is first only appended (`entries`, the arena, and its hash to `pending`); the
//!   table learns the last [`PENDING`] changes together, when that many have accumulated. A
//!   table insert is a cache miss whatever one does; settled together, the misses of a whole
//!   batch are prefetched at once and overlap, instead of costing one memory round trip per
//!   put. Lookups read the pending changes (newest first) before the table.
//! - The entries and the arena are written in order, a new cache line every two puts. Those
//!   stores miss the caches (a memtable is larger than them, and was last touched a segment
//!   ago), and the index lock's release after the insert waits until they complete: each put
//!   asks for the lines a few puts ahead of it, so they are in cache when written (a put of a
//!   200-byte value went from about 1.6 to 1.35 times the raw append with this alone).
//! - Page faults are the other cost of a put that is not computing: the buffers are reused
//!   from memtable to memtable, emptied and their pages written on another thread before the
//!   roll that takes them (see `index::stock_spare`); the table's pages are written when it is
//!   allocated (never first read as the kernel's shared zero page, whose replacement flushes
//!   the TLB of every core); and large buffers ask for transparent huge pages.
//!
//! ```text
//!   slots:   [0 | tag:32 idx+1:32 | 0 | 0 | tag idx+1 | ...]   power of two, at most 3/4 full
//!   entries: [{start, len, version, segment, offset, hash_high}, ...][pending changes]   settled: each key once
//!   keys:    [key0 bytes | key1 bytes | ...][pending keys]      the arena
//!   pending: [hash, hash, ...]                                  at most PENDING
//! ```
//!
//! # Invariants
//! - `entries[..settled]` holds each key at most once and `slots` points at every one of them;
//!   `entries[settled..]` are the pending changes, in order, `pending` their hashes.
//! - Settling moves the pending entries (and their keys, at the arena's tail) down over the
//!   ones that only overwrote a settled key, so both buffers hold each key once after it.
//! - Nothing is ever removed (a delete is a tombstone value), so probe chains never break.
//! - A key sits at its home slot or after it, with no empty slot between (wrapping from the
//!   table's end to its start): so every key of a cluster has its home in that cluster, and
//!   clusters are in hash order, but for the one that wraps.
//!
//! Cost per key: its bytes, a 32-byte entry and 10.7 to 21.3 bytes of slots.

use crate::mapped::advise_huge_pages;
use crate::run::{self, Val};

/// Changes appended before the table learns them together (see the module docs).
pub(crate) const PENDING: usize = 32;

/// An offset no frame can have (a segment is at most 1 GiB): marks a tombstone.
const TOMBSTONE: u32 = u32::MAX;

/// One change: where its key is in the arena, the high half of its key's hash (the table's
/// tag holds the low half, so a walk in hash order reads no key), and its value, in 32 bytes.
#[derive(Clone, Copy, Default)]
struct KeyEntry {
    start: u32,
    len: u32,
    version: u64,
    segment: u64,
    /// The frame's offset (a segment is at most 1 GiB), or [`TOMBSTONE`].
    offset: u32,
    hash_high: u32,
}

impl KeyEntry {
    fn val(&self) -> Val {
        (self.offset != TOMBSTONE).then_some(run::Slot {
            version: self.version,
            location: seglog_wal::Location {
                segment: self.segment,
                offset: u64::from(self.offset),
            },
        })
    }

    fn new(start: u32, len: u32, hash: u64, val: Val) -> KeyEntry {
        let (version, segment, offset) = match val {
            // A frame's offset is below the segment size, at most 1 GiB
            // (`seglog_wal::config::MAX_SEGMENT_SIZE`): it fits, below `TOMBSTONE`.
            Some(s) => (s.version, s.location.segment, s.location.offset as u32),
            None => (0, 0, TOMBSTONE),
        };
        debug_assert!(val.is_none_or(|s| s.location.offset < u64::from(TOMBSTONE)));
        KeyEntry {
            start,
            len,
            version,
            segment,
            offset,
            hash_high: (hash >> 32) as u32,
        }
    }

    /// The full hash of its key, given the low half from its slot's tag.
    fn hash(&self, tag: u32) -> u64 {
        u64::from(self.hash_high) << 32 | u64::from(tag)
    }
}

/// See the module docs.
pub(crate) struct KeyMap {
    /// The index's hash seed (see [`run::key_hash`]).
    seed: u64,
    keys: Vec<u8>,
    entries: Vec<KeyEntry>,
    /// Entries before this one are in the table.
    settled: usize,
    /// The hashes of `entries[settled..]` (kept apart so that a lookup scans a few cache lines).
    pending: Vec<u64>,
    /// Empty (0) or `tag << 32 | (entry number + 1)`.
    slots: Vec<u64>,
}

/// The smallest table holding `n` keys at most 3/4 full.
fn table_size(n: usize) -> usize {
    (n.saturating_mul(4) / 3 + 1).next_power_of_two().max(16)
}

/// A zeroed table of `n` slots whose pages are written now. (`vec![0; n]` takes fresh zero
/// pages from the kernel unwritten; the first probe of a page then maps the shared zero
/// page, and the insert after it faults again and flushes the TLB of every core the process
/// runs on.)
fn zeroed_slots(n: usize) -> Vec<u64> {
    let mut v = Vec::with_capacity(n);
    advise_huge_pages(&v);
    v.resize(n, 0);
    v
}

fn slot_value(hash: u64, n: usize) -> u64 {
    // Entry numbers fit in 32 bits: see `KeyMap::set`.
    u64::from(tag(hash)) << 32 | (n as u64 + 1)
}

/// The part of a hash a slot keeps: its low half (the high bits choose the slot).
fn tag(hash: u64) -> u32 {
    hash as u32
}

/// The home slot of `hash` in a table of `len` slots (a power of two, at least 16): its high
/// bits, so that slot order is hash order.
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
            entries: Vec::new(),
            settled: 0,
            pending: Vec::with_capacity(PENDING),
            slots: zeroed_slots(table_size(n)),
        };
        m.reserve(n, key_bytes);
        m
    }

    /// Room for `n` entries and `key_bytes` of keys in all, without reallocating.
    fn reserve(&mut self, n: usize, key_bytes: usize) {
        if self.entries.capacity() < n {
            self.entries.reserve(n - self.entries.len());
            advise_huge_pages(&self.entries);
        }
        if self.keys.capacity() < key_bytes {
            self.keys.reserve(key_bytes - self.keys.len());
            advise_huge_pages(&self.keys);
        }
    }

    /// Writes a byte in every page of the room left in the entries and the key arena, so that
    /// the puts filling them take no page faults (see `index::stock_spare`: a spare map is
    /// prepared on another core than the writer's).
    pub(crate) fn touch_capacity(&mut self) {
        const PAGE: usize = 4096;
        let per_page = PAGE / std::mem::size_of::<KeyEntry>();
        for e in self
            .entries
            .spare_capacity_mut()
            .iter_mut()
            .step_by(per_page)
        {
            e.write(KeyEntry::default());
        }
        for b in self.keys.spare_capacity_mut().iter_mut().step_by(PAGE) {
            b.write(0);
        }
    }

    /// Empties the map, keeping its buffers, so that it holds `n` keys and `key_bytes` of
    /// them before any buffer grows. Reusing a map's memory instead of allocating anew spares
    /// the writer the page faults of fresh memory (one every 128 keys for the entries alone;
    /// costly in a virtual machine).
    pub(crate) fn reset(&mut self, n: usize, key_bytes: usize) {
        let settled_any = self.settled > 0;
        self.keys.clear();
        self.entries.clear();
        self.settled = 0;
        self.pending.clear();
        let size = table_size(n);
        if self.slots.len() == size {
            // Only settling writes slots: a table that settled nothing is still all zero.
            if settled_any {
                self.slots.fill(0);
            }
        } else {
            self.slots = zeroed_slots(size);
        }
        self.reserve(n, key_bytes);
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        let mut n = self.settled;
        for i in self.settled..self.entries.len() {
            let key = self.key_of(&self.entries[i]);
            let hash = self.pending[i - self.settled];
            let earlier = self.settled..i;
            if self.probe(key, hash).1.is_none()
                && !earlier.into_iter().any(|j| {
                    self.pending[j - self.settled] == hash && self.key_of(&self.entries[j]) == key
                })
            {
                n += 1;
            }
        }
        n
    }

    /// Entries the map holds before its buffers grow.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.entries.capacity()
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

    fn key_of(&self, e: &KeyEntry) -> &[u8] {
        &self.keys[e.start as usize..(e.start + e.len) as usize]
    }

    /// The slot number holding `key` among the settled entries, or the empty slot where it
    /// would go.
    fn probe(&self, key: &[u8], hash: u64) -> (usize, Option<usize>) {
        let mask = self.slots.len() - 1;
        let tag = u64::from(tag(hash));
        let mut i = home(hash, self.slots.len());
        loop {
            let s = self.slots[i];
            if s == 0 {
                return (i, None);
            }
            if s >> 32 == tag {
                let n = (s as u32 - 1) as usize;
                if self.key_of(&self.entries[n]) == key {
                    return (i, Some(n));
                }
            }
            // The table is never full (at most 3/4), so this finds an empty slot.
            i = (i + 1) & mask;
        }
    }

    #[cfg(test)]
    pub(crate) fn get(&self, key: &[u8]) -> Option<Val> {
        self.get_hashed(self.hash(key), key)
    }

    /// [`KeyMap::get`] of a key whose hash under the map's seed is `hash`.
    pub(crate) fn get_hashed(&self, hash: u64, key: &[u8]) -> Option<Val> {
        for (i, &h) in self.pending.iter().enumerate().rev() {
            if h == hash {
                let e = &self.entries[self.settled + i];
                if self.key_of(e) == key {
                    return Some(e.val());
                }
            }
        }
        let (_, n) = self.probe(key, hash);
        n.map(|n| self.entries[n].val())
    }

    /// Sets `key`'s value, inserting the key when it is new.
    pub(crate) fn set(&mut self, key: &[u8], val: Val) {
        let hash = self.hash(key);
        // A memtable holds the changes of one segment (at most 1 GiB, see
        // `seglog_wal::config::MAX_SEGMENT_SIZE`), each change a record of at least a frame
        // header, and its keys are part of those records: entry numbers and arena offsets
        // fit in 32 bits.
        let (Ok(_), Ok(_)) = (
            u32::try_from(self.entries.len() + 1),
            u32::try_from(self.keys.len() + key.len()),
        ) else {
            unreachable!("a memtable holds less than a segment's worth of changes")
        };
        // Both at most the arena's new length, checked above.
        let (start, len) = (self.keys.len() as u32, key.len() as u32);
        if self.entries.len() == self.entries.capacity()
            || self.keys.len() + key.len() > self.keys.capacity()
        {
            // Doubling, as `Vec` would, but with the huge-page hint on the new buffers.
            let (n, bytes) = (self.entries.len(), self.keys.len() + key.len());
            self.reserve(n.max(64) * 2, bytes.max(1024) * 2);
        }
        self.entries.push(KeyEntry::new(start, len, hash, val));
        self.keys.extend_from_slice(key);
        if let Some(e) = self.entries.spare_capacity_mut().get(8) {
            crate::mapped::prefetch(e);
        }
        if let Some(k) = self.keys.spare_capacity_mut().get(512) {
            crate::mapped::prefetch(k);
        }
        self.pending.push(hash);
        if self.pending.len() >= PENDING {
            self.settle();
        }
    }

    /// Puts the pending changes into the table (see the module docs).
    pub(crate) fn settle(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        while (self.settled + self.pending.len()) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        for &h in &self.pending {
            crate::mapped::prefetch(&self.slots[home(h, self.slots.len())]);
        }
        let first_pending = self.settled;
        let mut key_end = self.entries[first_pending].start as usize;
        for r in first_pending..self.entries.len() {
            let e = self.entries[r];
            let hash = self.pending[r - first_pending];
            // Its key has not been moved yet: moves only go down, before entry `r`'s key.
            let (slot, found) = self.probe(self.key_of(&e), hash);
            if let Some(n) = found {
                let key_at = self.entries[n].start;
                self.entries[n] = KeyEntry { start: key_at, ..e };
                continue;
            }
            let w = self.settled;
            let len = e.len as usize;
            if e.start as usize != key_end {
                self.keys
                    .copy_within(e.start as usize..e.start as usize + len, key_end);
            }
            self.entries[w] = KeyEntry {
                // Below the old arena length, which fits in 32 bits (see `set`).
                start: key_end as u32,
                ..e
            };
            key_end += len;
            self.slots[slot] = slot_value(hash, w);
            self.settled += 1;
        }
        self.entries.truncate(self.settled);
        self.keys.truncate(key_end);
        self.pending.clear();
    }

    /// Doubles the table, placing every settled entry again from its key's hash.
    fn grow(&mut self) {
        self.rehash(self.slots.len() * 2);
    }

    /// Makes room for `n` keys, `key_bytes` of them in all, before any buffer grows: the
    /// table grows at once to its size for `n` (each settled key placed once, not once per
    /// doubling). For a map that was not sized when it was made.
    pub(crate) fn expect(&mut self, n: usize, key_bytes: usize) {
        let size = table_size(n);
        if size > self.slots.len() {
            self.rehash(size);
        }
        self.reserve(n, key_bytes);
    }

    /// Keys in the table (the pending changes aside): a cheap lower bound of [`KeyMap::len`].
    pub(crate) fn settled(&self) -> usize {
        self.settled
    }

    /// Places every settled entry again, from its key's hash (the slot's tag and the entry's
    /// high half: no key is read), in a table of `size` slots (a power of two holding them at
    /// most 3/4 full).
    fn rehash(&mut self, size: usize) {
        let mask = size - 1;
        let mut slots = zeroed_slots(size);
        for &s in self.slots.iter().filter(|&&s| s != 0) {
            let n = (s as u32 - 1) as usize;
            let hash = self.entries[n].hash((s >> 32) as u32);
            let mut i = home(hash, size);
            while slots[i] != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = slot_value(hash, n);
        }
        self.slots = slots;
    }

    /// Entry numbers of every key's current value, in key order (for [`KeyMap::at`]). A key
    /// settled and changed again while pending has two entries; the later one is current.
    pub(crate) fn sorted(&self) -> Vec<u32> {
        run::latest_per_key(self.entries.len(), |n| self.key_of(&self.entries[n]))
    }

    /// Entry number `n`: its key and value.
    pub(crate) fn at(&self, n: u32) -> (&[u8], Val) {
        let e = &self.entries[n as usize];
        (self.key_of(e), e.val())
    }

    /// The entries numbered by `order` (numbers from [`KeyMap::sorted`]), in that order.
    pub(crate) fn in_order<'a>(&'a self, order: &'a [u32]) -> InOrder<'a> {
        InOrder {
            map: self,
            order,
            i: 0,
        }
    }
}

impl KeyMap {
    /// Every settled key with its hash and value, in the order of a run's entries: (hash,
    /// key). Call [`KeyMap::settle`] first: pending changes are not visited.
    pub(crate) fn hash_walk(&self) -> HashWalk<'_> {
        debug_assert!(
            self.pending.is_empty(),
            "a walk of a map with pending changes"
        );
        let mut w = HashWalk {
            map: self,
            next_slot: 0,
            cluster: Vec::new(),
            at: 0,
            wrapped: Vec::new(),
            asked_entries: 0,
        };
        // The cluster at slot 0 may hold keys whose homes are at the table's end (probing
        // wrapped): those go last, with the cluster that ends the table.
        let first_empty = self.slots.iter().position(|&s| s == 0).unwrap_or(0);
        w.read_cluster(0, first_empty);
        let len = self.slots.len();
        let wrapped_from = w
            .cluster
            .partition_point(|&(h, _)| home(h, len) < first_empty);
        w.wrapped = w.cluster.split_off(wrapped_from);
        w.next_slot = first_empty;
        w
    }
}

/// A settled map's keys in (hash, key) order (see [`KeyMap::hash_walk`]).
///
/// Keys are placed by the high bits of their hash, and a key never sits before its home slot
/// nor past an empty one: so each cluster of occupied slots holds exactly the keys whose homes
/// are in it, and sorting each cluster (a few keys: the table is at most 3/4 full) orders the
/// whole map. Walking a segment's memtable of 262k keys takes 7.5-11 ms of CPU, most of it
/// waiting for the entries, read at random (prefetched ahead); sorting it by key and visiting
/// its entries and keys in that order took about 33.
pub(crate) struct HashWalk<'a> {
    map: &'a KeyMap,
    /// The first slot not read yet.
    next_slot: usize,
    /// The cluster being visited, sorted: (hash, entry number).
    cluster: Vec<(u64, u32)>,
    /// The next place in `cluster`.
    at: usize,
    /// Keys of the cluster at slot 0 whose homes are at the table's end.
    wrapped: Vec<(u64, u32)>,
    /// Slots before this one had their entries asked for (see [`HashWalk::ask_ahead`]).
    asked_entries: usize,
}

/// How far ahead of the slot being read a walk asks for the entries (see
/// [`HashWalk::ask_ahead`]).
const WALK_AHEAD: usize = 64;

impl HashWalk<'_> {
    /// Asks for the entries that reading slot `i` and those after it will need, those of the
    /// keys [`WALK_AHEAD`] slots ahead. Entries are at random places in memory larger than the
    /// caches; asked for ahead, their cache misses overlap instead of coming one after the
    /// other. Called for every slot read, empty or not, so that every entry is asked for. (No
    /// key is read: the entry holds the high half of its key's hash.)
    #[inline]
    fn ask_ahead(&mut self, i: usize) {
        let map = self.map;
        let len = map.slots.len();
        while self.asked_entries < (i + WALK_AHEAD).min(len) {
            let n = (map.slots[self.asked_entries] as u32).wrapping_sub(1);
            if let Some(e) = map.entries.get(n as usize) {
                crate::mapped::prefetch(e);
            }
            self.asked_entries += 1;
        }
    }

    /// Reads slots `from..to` (all occupied) into `cluster`, sorted.
    fn read_cluster(&mut self, from: usize, to: usize) {
        let map = self.map;
        self.cluster.clear();
        self.at = 0;
        for i in from..to {
            self.ask_ahead(i);
            // Occupied: `to` is the first empty slot from `from`. Entry numbers are + 1.
            let s = map.slots[i];
            let n = (s as u32).wrapping_sub(1);
            self.cluster
                .push((map.entries[n as usize].hash((s >> 32) as u32), n));
        }
        self.sort_cluster();
    }

    fn sort_cluster(&mut self) {
        let map = self.map;
        if self.cluster.len() > 1 {
            // Each key is once in a settled map: equal hashes are distinct keys.
            self.cluster.sort_unstable_by(|a, b| {
                a.0.cmp(&b.0).then_with(|| {
                    run::cmp_keys(
                        map.key_of(&map.entries[a.1 as usize]),
                        map.key_of(&map.entries[b.1 as usize]),
                    )
                })
            });
        }
    }
}

impl<'a> Iterator for HashWalk<'a> {
    type Item = (u64, run::KeyRef<'a>, Val);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        while self.at == self.cluster.len() {
            let map = self.map;
            let slots = &map.slots;
            let len = slots.len();
            while self.next_slot < len && slots[self.next_slot] == 0 {
                self.ask_ahead(self.next_slot);
                self.next_slot += 1;
            }
            if self.next_slot == len {
                // Only when the table's last slot is empty (else the last cluster took them).
                if self.wrapped.is_empty() {
                    return None;
                }
                self.cluster = std::mem::take(&mut self.wrapped);
                self.at = 0;
                continue;
            }
            let from = self.next_slot;
            let to = slots[from..]
                .iter()
                .position(|&s| s == 0)
                .map_or(len, |p| from + p);
            self.read_cluster(from, to);
            if to == len && !self.wrapped.is_empty() {
                let wrapped = std::mem::take(&mut self.wrapped);
                self.cluster.extend(wrapped);
                self.sort_cluster();
            }
            self.next_slot = to;
        }
        let (hash, n) = self.cluster[self.at];
        self.at += 1;
        let e = &self.map.entries[n as usize];
        Some((hash, run::KeyRef::new(self.map.key_of(e)), e.val()))
    }
}

/// A map's entries in the order of a list of entry numbers (see [`KeyMap::in_order`]): a
/// type of its own, so that a flush's merge calls it directly (see `index::Source`).
///
/// In key order the entries and their keys are visited at random, two cache misses each in a
/// map larger than the caches: each step asks for the entry and the key of those a few
/// places ahead, so the misses overlap (building a segment's run of 262k entries went from
/// 45 ms to 32-38 ms).
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
        if let Some(e) = order
            .get(i + 2 * AHEAD)
            .and_then(|&m| map.entries.get(m as usize))
        {
            crate::mapped::prefetch(e);
        }
        if let Some(e) = order
            .get(i + AHEAD)
            .and_then(|&m| map.entries.get(m as usize))
        {
            if let Some(k) = map.keys.get(e.start as usize) {
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
            prop_assert_eq!(walked, want);
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
            m.slots[0] != 0 && m.slots[m.slots.len() - 1] != 0
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
            std::mem::size_of::<KeyEntry>(),
            32,
            "the module docs' cost per key"
        );
    }

    #[test]
    fn reset_to_the_same_size_forgets_settled_and_pending_keys() {
        let mut m = KeyMap::with_capacity(100, 800, 2);
        let size = m.slots.len();
        // More than `PENDING` keys: some are settled into the table.
        for i in 0..50u64 {
            m.set(&i.to_le_bytes(), val(i + 1));
        }
        m.reset(100, 800);
        assert_eq!(m.slots.len(), size, "the same table, cleared");
        assert!(m.slots.iter().all(|&s| s == 0));
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
        let size = m.slots.len();
        assert!(size * 3 >= 10_000 * 4);
        for i in 0..40u64 {
            assert_eq!(m.get(&i.to_le_bytes()), Some(val(i + 1)));
        }
        for i in 40..10_000u64 {
            m.set(&i.to_le_bytes(), val(i + 1));
        }
        assert_eq!(m.slots.len(), size, "no growth for the keys it expected");
        assert_eq!(m.len(), 10_000);
        for i in (0..10_000u64).step_by(7) {
            assert_eq!(m.get(&i.to_le_bytes()), Some(val(i + 1)));
        }
        m.expect(10, 10);
        assert_eq!(m.slots.len(), size, "never shrinks");
    }

    #[test]
    fn grows_past_its_capacity() {
        let mut m = KeyMap::with_capacity(0, 0, 3);
        for i in 0..100_000u64 {
            m.set(&i.to_be_bytes(), val(i + 1));
        }
        assert_eq!(m.len(), 100_000);
        assert!(m.slots.len() * 3 >= m.len() * 4);
        for i in (0..100_000u64).step_by(97) {
            assert_eq!(m.get(&i.to_be_bytes()), Some(val(i + 1)));
        }
    }
}
