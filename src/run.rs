//! Sorted runs: the index's immutable layers, and its checkpoints on disk.
//!
//! A run holds, for a contiguous LSN range of the log, the last change each key received in that
//! range: the key's version and the location of its record, or a tombstone. Entries are ordered
//! by the key's 64-bit hash ([`key_hash`]; among equal hashes, which distinct keys rarely share,
//! by key). That order is what makes writing the index cheap: a memtable is a hash table placed
//! by the same hash's high bits, so it is written as a run by walking its table, without a sort
//! (`keymap::HashWalk`, which reads the table front to back and no key: each cell holds its
//! key's hash and value); a run's key
//! heap is its inputs' heaps copied whole, its entries pointing into the copies, so no key is
//! copied on its own (in hash order that would be a cache miss a key); runs merge in one
//! sequential pass comparing 64-bit integers ([`merge_runs`]); and a
//! lookup goes straight to where the hash's value puts the key (the hashes are uniform), without
//! a bloom filter. Scans, which promise key order, sort a run's entries by key the first time
//! one needs it, and keep that order with the run (4 bytes an entry, [`Run::key_order`]).
//!
//! On disk a run is `DIR/index/<first_lsn:020>-<last_lsn:020>.run`, used in place through a
//! read-only memory map (or read into memory on a simulated file system); in memory, a run
//! built by replaying log records has the same bytes without a file.
//!
//! ```text
//! header (80 bytes, little-endian)
//!  0 [u8; 8] magic "seglogRN"          32 u64 epoch: highest epoch fenced in the range (0: none)
//!  8 u16     version = 4               40 u64 entry count n
//! 10 u16     reserved = 0              48 u64 key heap bytes
//! 12 u32     chain_crc at last_lsn     56 u64 hash seed (the index's, see `key_hash`)
//! 16 u64     first_lsn                 64 u64 segment of the record last_lsn   } both 0 when the
//! 24 u64     last_lsn                  72 u64 offset of the record last_lsn    } range ends a
//!                                                                                sealed segment
//! entries (n x 32 bytes, ascending by (key hash, key), each key once)
//!  0 u64 key hash (with the seed)      16 u64 version (LSN of the change)
//!  8 u40 key offset in the key heap    24 u32 version - segment: the record's segment is named
//! 13 u16 key length                           by its first LSN, and holds fewer than 2^32
//! 15 u8  1 = live, 2 = tombstone              records (segments <= 1 GiB)
//!                                      28 u32 frame offset in the segment
//!  (a tombstone's version, segment and offset are 0)
//! key heap (the keys, in any order: each entry points at its key; bytes no entry points at
//!   may remain, keys superseded in a merge)
//! block checksums (c = ceil(B / 4096) x u32): the CRC-32C of each 4096-byte block of the B
//!   bytes above (header included; the last block may be shorter)
//! trailer: u32 CRC-32C of the block checksums
//! ```
//!
//! # Invariants
//! - A run file is written whole to a temporary name, renamed into place and its directory
//!   fsynced (fdatasynced before the rename only at a clean close; the others later, see
//!   `index::write_run`). A run larger than the builder's kept buffer is built in that
//!   temporary file itself, through a writable map that is dropped before the
//!   file is cut to size and renamed ([`Spill`], `mapped::BuildMap`): a merge's memory does
//!   not grow with the index. A run file is never modified after its rename, only unlinked
//!   once a merged run that covers it is durable (or once it was found damaged and its range
//!   replayed). That is what makes mapping it sound (see [`crate::mapped`]).
//! - A run file is used only when its block checksums and header hold and the log has its end:
//!   either a sealed segment ends at `last_lsn` with the footer chain value the run recorded,
//!   or (a run written at close, ending inside the active segment) the record `last_lsn` is at
//!   the recorded location with that chain value. The chain value covers every record before
//!   it, so a run can never be applied to another log or another history (a log cut shorter by
//!   recovery fails the check too).
//!   Anything else (missing, truncated, damaged, foreign) is ignored and the segments it would
//!   have covered are replayed: a checkpoint can make opening faster, never the index wrong.
//! - Opening checks the header's block and the checksum table, not the whole file: that is what
//!   keeps reopening from reading every checkpoint byte. Every other block is checked the first
//!   time anything in it is read, and no byte of a block is used before its check passed. A
//!   block that fails marks the run [`Run::damaged`]: whatever was read in that operation is
//!   discarded, the index replays the run's range in its place and unlinks the file
//!   (`index::repair_damaged`), and the operation runs again.
//! - A run is used only with the hash seed it was written with (the index's, kept in
//!   `DIR/index/seed`): under another seed its order means nothing, and its range is replayed.
//! - Readers never trust an entry beyond the checksum: every access is bounds-checked and a
//!   malformed entry reads as absent rather than panicking.

use crate::mapped::{self, Mapped};
use seglog_wal::Location;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const MAGIC: [u8; 8] = *b"seglogRN";
const VERSION: u16 = 4;
const HEADER_LEN: usize = 80;
const ENTRY_LEN: usize = 32;
/// Key heaps are addressed with 40 bits (1 TiB).
const MAX_KEY_HEAP: usize = 1 << 40;
const TAG_LIVE: u8 = 1;
const TAG_DEAD: u8 = 2;
/// Bytes each block checksum covers: a page, the unit a mapped run is read in anyway.
const CHECKED_BLOCK: usize = 4096;

/// Where a live key's current value is: its version (the LSN that wrote it) and the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub version: u64,
    pub location: Location,
}

/// What a layer of the index says about a key: live at a slot, or deleted (`None`).
pub(crate) type Val = Option<Slot>;

/// The run file name of an LSN range, and back.
pub(crate) fn file_name(first_lsn: u64, last_lsn: u64) -> String {
    format!("{first_lsn:020}-{last_lsn:020}.run")
}

pub(crate) fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".run")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 20 || b.len() != 20 {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// For each distinct key among `key(0..n)`, the highest number with that key, in key order:
/// with numbers that follow the log, each key's last change, as a run holds it.
pub(crate) fn latest_per_key<'k>(n: usize, key: impl Fn(usize) -> &'k [u8]) -> Vec<u32> {
    let mut sort = KEPT.with(|k| std::mem::take(&mut k.borrow_mut().sort));
    let latest = sort.latest_per_key(n, key).to_vec();
    KEPT.with(|k| {
        let mut k = k.borrow_mut();
        if k.keep && sort.pairs.capacity() * std::mem::size_of::<(u64, u32)>() <= MAX_KEPT_BUFFER {
            k.sort = sort;
        }
    });
    latest
}

/// The buffers of a key sort, kept by a caller that sorts again and again (a replay worker
/// sorts one segment after another) so that each sort reuses the memory of the last.
#[derive(Default)]
pub(crate) struct KeySort {
    /// Sort word and number, ordered (see [`KeySort::sort`]).
    pairs: Vec<(u64, u32)>,
    /// The numbers in key order.
    order: Vec<u32>,
    /// Scratch room for [`radix_sort_by_word`].
    scratch: Vec<(u64, u32)>,
    /// Hash words (see [`KeySort::latest_per_key_by_hash`]), ordered.
    words: Vec<u64>,
    /// Scratch room for [`radix_sort_high_bits`].
    word_scratch: Vec<u64>,
    /// The number of each key's last change, in (hash, key) order (see
    /// [`KeySort::latest_per_key_by_hash`]).
    latest: Vec<u32>,
    /// The numbers of a group of equal hashes.
    group: Vec<u32>,
}

/// Orders `pairs` by word, keeping the order of equal words: a least-significant-digit radix
/// sort, a byte a pass, that skips the passes in which every word has the same byte (words of
/// short keys end in zeros, keys counted in order share their leading bytes). `scratch` is
/// room for a copy.
///
/// Sorting a segment's worth of keys is a good part of the checkpointer's work at each roll,
/// CPU taken from the writers on a small machine: on 262k words a comparison sort took about
/// 18 ms, this one a few.
fn radix_sort_by_word(pairs: &mut Vec<(u64, u32)>, scratch: &mut Vec<(u64, u32)>) {
    let n = pairs.len();
    if n < 256 {
        // Too few for passes over 256 buckets to pay; stable, like the passes.
        pairs.sort_by_key(|p| p.0);
        return;
    }
    let mut counts = [[0usize; 256]; 8];
    for &(w, _) in pairs.iter() {
        for (d, c) in counts.iter_mut().enumerate() {
            c[(w >> (8 * d)) as usize & 0xff] += 1;
        }
    }
    scratch.clear();
    scratch.resize(n, (0, 0));
    for (d, c) in counts.iter().enumerate() {
        if c.contains(&n) {
            continue;
        }
        let mut at = [0usize; 256];
        let mut sum = 0;
        for (a, &k) in at.iter_mut().zip(c) {
            *a = sum;
            sum += k;
        }
        for &p in pairs.iter() {
            let b = (p.0 >> (8 * d)) as usize & 0xff;
            scratch[at[b]] = p;
            at[b] += 1;
        }
        std::mem::swap(pairs, scratch);
    }
}

/// Orders `words` by their bits from `from_bit` up, keeping the order of words equal there: a
/// least-significant-digit radix sort, [`DIGIT_BITS`] bits a pass, that skips the passes in
/// which every word has the same digit. `scratch` is room for a copy.
fn radix_sort_high_bits(words: &mut Vec<u64>, scratch: &mut Vec<u64>, from_bit: u32) {
    const BUCKETS: usize = 1 << DIGIT_BITS;
    const MAX_PASSES: usize = (u64::BITS as usize).div_ceil(DIGIT_BITS as usize);
    let n = words.len();
    if from_bit >= u64::BITS {
        return;
    }
    // Too few words for passes over 2048 buckets to pay; or more than the u32 counts hold
    // (more than a segment's records). Stable, like the passes.
    if n < 4 * BUCKETS || u32::try_from(n).is_err() {
        words.sort_by_key(|w| w >> from_bit);
        return;
    }
    let passes = (u64::BITS - from_bit).div_ceil(DIGIT_BITS) as usize;
    let shift = |d: usize| from_bit + DIGIT_BITS * d as u32;
    let mut counts = [[0u32; BUCKETS]; MAX_PASSES];
    for &w in words.iter() {
        for (d, c) in counts[..passes].iter_mut().enumerate() {
            c[(w >> shift(d)) as usize & (BUCKETS - 1)] += 1;
        }
    }
    scratch.clear();
    scratch.resize(n, 0);
    for (d, c) in counts[..passes].iter().enumerate() {
        if c.iter().any(|&k| k as usize == n) {
            continue;
        }
        let mut at = [0u32; BUCKETS];
        let mut sum = 0;
        for (a, &k) in at.iter_mut().zip(c) {
            *a = sum;
            sum += k;
        }
        for &w in words.iter() {
            let b = (w >> shift(d)) as usize & (BUCKETS - 1);
            scratch[at[b] as usize] = w;
            at[b] += 1;
        }
        std::mem::swap(words, scratch);
    }
}

/// Bits a pass of [`radix_sort_high_bits`] sorts by: 2048 buckets, whose counts and places stay
/// in the first levels of cache.
const DIGIT_BITS: u32 = 11;

/// Passes [`KeySort::latest_per_key_by_hash`] sorts its words' high bits in, at most.
const SORTED_PASSES: u32 = 3;

impl KeySort {
    /// For each distinct key among `key(0..n)`, the highest number with that key, ordered by
    /// (hash, key) as a run's entries are (with numbers that follow the log: each key's last
    /// change, in the order a run holds them). `hash(i)` is the hash of `key(i)`.
    ///
    /// Sorts one 8-byte word a change: the hash's high bits above the number, which fills the
    /// low `b` bits (`b` the bits `n - 1` needs), so that the words are distinct and a radix
    /// sort of their high bits orders them by hash, then number, in a few passes over 8 bytes
    /// each: [`SORTED_PASSES`] at most, the top 33 bits, enough to set apart all but a few
    /// pairs of a segment's distinct keys (262k keys share their top 33 bits in about 4 pairs
    /// on average; all 46 bits above the number took 5 passes, not 3). Changes whose words
    /// share the sorted bits (one key changed again, or, rarely, keys whose hashes differ only
    /// below them) are then ordered by whole hash and key.
    pub(crate) fn latest_per_key_by_hash<'k>(
        &mut self,
        n: usize,
        hash: impl Fn(usize) -> u64,
        key: impl Fn(usize) -> &'k [u8],
    ) -> &[u32] {
        self.words.clear();
        self.latest.clear();
        // A run holds the changes of fewer than 2^32 records (segments are at most 1 GiB), so
        // numbers fit `b <= 32` bits and `u32`.
        let b = u64::BITS - (n.saturating_sub(1) as u64).leading_zeros();
        let number = if b == 0 {
            0
        } else {
            u64::MAX >> (u64::BITS - b)
        };
        self.words
            .extend((0..n).map(|i| (hash(i) & !number) | i as u64));
        let from_bit = b.max(u64::BITS - SORTED_PASSES * DIGIT_BITS);
        radix_sort_high_bits(&mut self.words, &mut self.word_scratch, from_bit);
        // The bits sorted by: words equal there keep the order of their numbers.
        let sorted = u64::MAX.checked_shl(from_bit).unwrap_or(0);
        let (words, out, group) = (&self.words, &mut self.latest, &mut self.group);
        let mut start = 0;
        while start < n {
            let high = words[start] & sorted;
            let mut end = start + 1;
            while end < n && words[end] & sorted == high {
                end += 1;
            }
            if end - start == 1 {
                out.push((words[start] & number) as u32);
            } else {
                group.clear();
                group.extend(words[start..end].iter().map(|&w| (w & number) as u32));
                // Stable: equal keys keep their order by number, the last change last.
                group.sort_by(|&a, &b| {
                    let (a, b) = (a as usize, b as usize);
                    hash(a).cmp(&hash(b)).then_with(|| cmp_keys(key(a), key(b)))
                });
                for (j, &g) in group.iter().enumerate() {
                    let later_same_key = group
                        .get(j + 1)
                        .is_some_and(|&m| key(m as usize) == key(g as usize));
                    if !later_same_key {
                        out.push(g);
                    }
                }
            }
            start = end;
        }
        out
    }

    /// [`latest_per_key`], in this sort's buffers.
    pub(crate) fn latest_per_key<'k>(
        &mut self,
        n: usize,
        key: impl Fn(usize) -> &'k [u8],
    ) -> &[u32] {
        self.sort(n, &key);
        let (pairs, order) = (&self.pairs, &mut self.order);
        let mut kept = 0;
        for i in 0..order.len() {
            // Different sort words mean different keys; only equal words need the keys.
            let later_same_key = i + 1 < order.len()
                && pairs[i + 1].0 == pairs[i].0
                && key(order[i + 1] as usize) == key(order[i] as usize);
            if !later_same_key {
                order[kept] = order[i];
                kept += 1;
            }
        }
        order.truncate(kept);
        order
    }

    /// Orders the numbers `0..n` by `key(i)`, equal keys by number (in replay, numbers follow
    /// the log, so the last change of a key comes last among its equals), into `self.order`;
    /// `self.pairs[i].0` is then the sort word of `self.order[i]`'s key.
    ///
    /// Sorting compares 8-byte integers, not byte strings: the 8 key bytes after the prefix
    /// that every key shares (keys of one application tend to share one, `user/`, `key-`),
    /// big-endian, paired with the number. Only numbers whose words tie are then ordered by
    /// whole keys.
    fn sort<'k>(&mut self, n: usize, key: impl Fn(usize) -> &'k [u8]) {
        self.pairs.clear();
        self.order.clear();
        if n == 0 {
            return;
        }
        let first = key(0);
        let mut shared = first.len();
        for i in 1..n {
            let k = key(i);
            shared = shared.min(k.iter().zip(first).take_while(|(a, b)| a == b).count());
        }
        let word = |k: &[u8]| {
            let mut w = [0u8; 8];
            let rest = k.get(shared..).unwrap_or_default();
            let m = rest.len().min(8);
            w[..m].copy_from_slice(&rest[..m]);
            u64::from_be_bytes(w)
        };
        // A run holds the changes of fewer than 2^32 records (segments are at most 1 GiB).
        self.pairs.extend((0..n).map(|i| (word(key(i)), i as u32)));
        // Numbers ascend, and the sort is stable: pairs end ordered by word, then number.
        radix_sort_by_word(&mut self.pairs, &mut self.scratch);
        self.order.extend(self.pairs.iter().map(|&(_, i)| i));
        let (pairs, order) = (&self.pairs, &mut self.order);
        let mut start = 0;
        while start < n {
            let mut end = start + 1;
            while end < n && pairs[end].0 == pairs[start].0 {
                end += 1;
            }
            if end - start > 1 {
                // Stable: equal keys keep their order by number.
                order[start..end].sort_by(|&a, &b| key(a as usize).cmp(key(b as usize)));
            }
            start = end;
        }
    }
}

/// The numbers `0..n` ordered by key, equal keys by number (see [`KeySort::sort`]).
#[cfg(test)]
fn sort_keys<'k>(n: usize, key: impl Fn(usize) -> &'k [u8]) -> Vec<u32> {
    let mut s = KeySort::default();
    s.sort(n, key);
    s.order
}

/// The 64-bit hash that orders a run's entries and places a memtable's keys, under the
/// index's `seed`. Part of the file format: it must never change.
///
/// The seed is chosen at random for each data directory (see `index::load_seed`): the order is
/// persisted, so it cannot change from process to process, and a seed no one outside knows keeps
/// keys crafted to collide (which would make a memtable's probes linear) from being made.
pub(crate) fn key_hash(seed: u64, key: &[u8]) -> u64 {
    fn fmix(mut h: u64) -> u64 {
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^= h >> 33;
        h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        h ^ (h >> 33)
    }
    let mut h = 0x9E37_79B9_7F4A_7C15u64 ^ seed ^ key.len() as u64;
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x9FB2_1C65_1E98_DF25);
        h ^= h >> 29;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        h = (h ^ tail_word(key, rest)).wrapping_mul(0x9FB2_1C65_1E98_DF25);
    }
    fmix(h)
}

/// The last `rest.len()` (1 to 7) bytes of `key` as a little-endian word, zero-padded: the
/// same value as copying them into a zeroed `[u8; 8]`, without the byte-wise copy whose
/// partial stores stall the 8-byte load after them (a store-forwarding stall on every put).
fn tail_word(key: &[u8], rest: &[u8]) -> u64 {
    let n = rest.len();
    if key.len() >= 8 {
        // The key's last 8 bytes (overlapping the last full chunk), shifted so that only the
        // remainder is left: 1 <= n <= 7, so the shift is 8 to 56 bits.
        let mut w = [0u8; 8];
        w.copy_from_slice(&key[key.len() - 8..]);
        return u64::from_le_bytes(w) >> (8 * (8 - n));
    }
    rest.iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// The order of keys (bytewise, a prefix first), as `a.cmp(b)` has it, compared eight bytes
/// at a time as big-endian words, inline.
///
/// Merges compare keys a few times an entry (the tournament's matches and the order check),
/// often keys that share their first bytes. The calls to the C library's `memcmp` were 14 to
/// 24% of the checkpointer's samples at full write speed; compared inline, a merge of four
/// runs of 262k entries went from 52.6 to 48.4 ms of CPU (median of 8).
#[inline]
pub(crate) fn cmp_keys(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let (mut x, mut y) = (a, b);
    while let (Some((wa, ra)), Some((wb, rb))) =
        (x.split_first_chunk::<8>(), y.split_first_chunk::<8>())
    {
        if wa != wb {
            return u64::from_be_bytes(*wa).cmp(&u64::from_be_bytes(*wb));
        }
        (x, y) = (ra, rb);
    }
    // Fewer than 8 bytes left in one of them.
    for (p, q) in x.iter().zip(y) {
        if p != q {
            return p.cmp(q);
        }
    }
    x.len().cmp(&y.len())
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut w = [0u8; 8];
    w.copy_from_slice(s);
    Some(u64::from_le_bytes(w))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    let mut w = [0u8; 4];
    w.copy_from_slice(s);
    Some(u32::from_le_bytes(w))
}

/// Largest buffer [`reuse_buffers_on_this_thread`] keeps: a segment's run is about 14 MiB
/// with 20-byte keys, and runs merged from a few segments' fit too; larger merges allocate.
pub(crate) const MAX_KEPT_BUFFER: usize = 64 << 20;

/// A thread's buffers for building runs, kept between runs (see
/// [`reuse_buffers_on_this_thread`]).
#[derive(Default)]
struct KeptBuffers {
    keep: bool,
    run: Vec<u8>,
    sort: KeySort,
}

thread_local! {
    static KEPT: std::cell::RefCell<KeptBuffers> = std::cell::RefCell::default();
}

/// From now on this thread keeps the buffers of the runs it builds and sorts (up to
/// [`MAX_KEPT_BUFFER`] each) for the next ones.
///
/// The checkpointer builds one run after another. Fresh buffers of tens of MiB come from the
/// kernel as pages it must fault in and zero one at a time, and that was a third of the
/// checkpointer's time (as much CPU as the run's sort and merge), taken from the writers on a
/// small machine. Only the thread that asks keeps them, so the memory held is bounded by one
/// set of buffers; other threads (a scan sorting the active memtable, the open) allocate.
pub(crate) fn reuse_buffers_on_this_thread() {
    KEPT.with(|k| k.borrow_mut().keep = true);
}

/// Gives a finished run's bytes back for the next run this thread builds (when it keeps
/// buffers and they are not too large).
pub(crate) fn recycle(bytes: Vec<u8>) {
    KEPT.with(|k| {
        let mut k = k.borrow_mut();
        if k.keep && bytes.capacity() <= MAX_KEPT_BUFFER && bytes.capacity() > k.run.capacity() {
            k.run = bytes;
        }
    });
}

/// Builds a run's bytes from entries given in ascending (hash, key) order, in place: entries
/// and keys are written where the finished run has them, so finishing moves at most the keys
/// (when fewer entries came than announced) and never copies the run.
pub(crate) struct RunBuilder {
    /// The run: header (written by `finish`), room for `room` entries, then the keys.
    buf: Buf,
    /// Entries there is room for before the keys.
    room: usize,
    /// Entries pushed.
    n: usize,
    /// Bytes in the key heap: the keys pushed and the heaps added.
    key_len: usize,
    /// Bytes of the keys the entries point to (the rest of the heap is no key's).
    live_key_len: usize,
    /// Set when a pushed change did not fit an entry (see [`RunBuilder::finish`]).
    unfit: bool,
}

/// Where a [`RunBuilder`] builds the run: a heap buffer, or the run file's temporary through a
/// writable map (see [`Spill`]).
enum Buf {
    Heap(Vec<u8>),
    /// The first `len` bytes of the map are the buffer's.
    Map {
        map: mapped::BuildMap,
        len: usize,
    },
}

impl Buf {
    fn len(&self) -> usize {
        match self {
            Buf::Heap(v) => v.len(),
            Buf::Map { len, .. } => *len,
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Buf::Heap(v) => v,
            // `len` never exceeds the map's length (`resize` grows the map first).
            Buf::Map { map, len } => &map.bytes()[..*len],
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Buf::Heap(v) => v,
            Buf::Map { map, len } => &mut map.bytes_mut()[..*len],
        }
    }

    /// Makes the buffer `new_len` bytes long, new bytes zero. A map that cannot grow (the disk
    /// is full) is given up for a heap buffer with the same bytes: the build goes on, and
    /// writing the run then reports the error.
    fn resize(&mut self, new_len: usize) {
        match self {
            Buf::Heap(v) => v.resize(new_len, 0),
            Buf::Map { map, len } => {
                if new_len > map.bytes().len() {
                    if let Err(e) = map.grow(new_len.saturating_add(new_len / 4)) {
                        tracing::warn!(error = %e, "cannot grow a run file being built; building it in memory");
                        let mut v = map.bytes()[..*len].to_vec();
                        v.resize(new_len, 0);
                        *self = Buf::Heap(v);
                        return;
                    }
                }
                if new_len > *len {
                    // Bytes past `len` may hold what a `truncate` left.
                    map.bytes_mut()[*len..new_len].fill(0);
                }
                *len = new_len;
            }
        }
    }

    fn truncate(&mut self, new_len: usize) {
        match self {
            Buf::Heap(v) => v.truncate(new_len),
            Buf::Map { len, .. } => *len = (*len).min(new_len),
        }
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        let at = self.len();
        self.resize(at + bytes.len());
        self.bytes_mut()[at..].copy_from_slice(bytes);
    }
}

/// Where a large run is built: in its file's temporary, `path`, when the run needs more than
/// `above` bytes (see [`mapped::BuildMap`]). The index gives it for the runs it writes to
/// files, with `above` = [`MAX_KEPT_BUFFER`]: the anonymous memory a flush or merge takes is
/// then at most that, whatever the size of the index (a merge of the largest runs is about
/// the whole index).
#[derive(Clone, Copy)]
pub(crate) struct Spill<'a> {
    pub(crate) path: &'a Path,
    pub(crate) above: usize,
}

/// A finished run (see [`RunBuilder::finish_built`]).
pub(crate) enum Built {
    /// Its bytes.
    Heap(Vec<u8>),
    /// Its bytes in the [`Spill`] file, cut to size, not synced; or the error that ended them.
    File(std::io::Result<std::fs::File>),
}

/// The header fields a finished run carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunMeta {
    pub first_lsn: u64,
    pub last_lsn: u64,
    /// Chain value of the log at `last_lsn` when that is the end of a sealed segment, else 0
    /// (an in-memory run of the active segment, never written).
    pub chain_crc: u32,
    pub epoch: u64,
    /// Where the record `last_lsn` is, for a run that does not end a sealed segment.
    pub end: Option<Location>,
    /// The seed of the hashes that order its entries (see [`key_hash`]).
    pub seed: u64,
}

impl RunBuilder {
    /// A builder for about `entries` entries with `key_bytes` bytes of keys in all; more fit,
    /// at the cost of moving the keys. On a thread that keeps its buffers, the last run's
    /// bytes are reused when they are large enough (their old contents are overwritten before
    /// anything reads them: `push` writes every byte of an entry and a key, and `finish`
    /// writes the header). Else allocated zeroed and whole: the allocator hands out fresh
    /// zeroed pages untouched, so room left unused costs address space, not memory.
    pub(crate) fn with_capacity(entries: usize, key_bytes: usize) -> RunBuilder {
        RunBuilder::with_capacity_in(entries, key_bytes, None)
    }

    /// As [`RunBuilder::with_capacity`], but a run larger than `spill.above` is built in
    /// `spill.path` (when that file can be created with its blocks; else in memory).
    pub(crate) fn with_capacity_in(
        entries: usize,
        key_bytes: usize,
        spill: Option<Spill<'_>>,
    ) -> RunBuilder {
        let body = HEADER_LEN + entries * ENTRY_LEN + key_bytes;
        // With the checksum table and trailer: `finish` then never reallocates.
        let len = body + body.div_ceil(CHECKED_BLOCK) * 4 + 4;
        if let Some(spill) = spill.filter(|s| len > s.above) {
            match mapped::BuildMap::create(spill.path, len) {
                // A new file reads as zeros: the buffer starts as `vec![0; len]` would.
                Ok(map) => return RunBuilder::new(Buf::Map { map, len }, entries),
                Err(e) => tracing::warn!(
                    path = %spill.path.display(), error = %e,
                    "cannot build a run in its file; building it in memory"
                ),
            }
        }
        let kept = KEPT.with(|k| {
            let mut k = k.borrow_mut();
            if k.run.capacity() >= len {
                std::mem::take(&mut k.run)
            } else {
                Vec::new()
            }
        });
        let buf = if kept.capacity() >= len {
            let mut b = kept;
            // Only bytes past the kept length are zeroed; the rest is overwritten.
            b.resize(len, 0);
            b
        } else {
            vec![0u8; len]
        };
        RunBuilder::new(Buf::Heap(buf), entries)
    }

    fn new(buf: Buf, room: usize) -> RunBuilder {
        RunBuilder {
            buf,
            room,
            n: 0,
            key_len: 0,
            live_key_len: 0,
            unfit: false,
        }
    }

    /// Where the keys start while building.
    fn keys_at(&self) -> usize {
        HEADER_LEN + self.room * ENTRY_LEN
    }

    /// Appends the next entry and copies its key to the end of the key heap: `hash` is
    /// `key`'s under the run's seed, and (hash, key) must ascend strictly from entry to entry.
    #[inline]
    pub(crate) fn push(&mut self, hash: u64, key: &[u8], val: Val) {
        let off = self.add_heap(key);
        self.push_placed(hash, off, key.len(), val);
    }

    /// Copies `bytes` to the end of the key heap, where entries pushed with
    /// [`RunBuilder::push_placed`] can point; returns the offset they start at.
    pub(crate) fn add_heap(&mut self, bytes: &[u8]) -> usize {
        let off = self.key_len;
        let at = self.keys_at() + off;
        let end = at + bytes.len();
        if end > self.buf.len() {
            self.buf.resize(end);
        }
        self.buf.bytes_mut()[at..end].copy_from_slice(bytes);
        self.key_len += bytes.len();
        off
    }

    /// Appends the next entry, whose key is already in the heap: `len` bytes at `off` (see
    /// [`RunBuilder::add_heap`]). As for [`RunBuilder::push`], `hash` is the key's and (hash,
    /// key) must ascend strictly; a key outside the heap makes the run unfit.
    #[inline]
    pub(crate) fn push_placed(&mut self, hash: u64, off: usize, len: usize, val: Val) {
        let mut e = [0u8; ENTRY_LEN];
        e[0..8].copy_from_slice(&hash.to_le_bytes());
        e[15] = TAG_DEAD;
        if let Some(slot) = val {
            // A segment holds fewer than 2^32 records and at most 1 GiB (`MAX_SEGMENT_SIZE`),
            // so both fit 32 bits for any record the log wrote.
            let since = slot.version.checked_sub(slot.location.segment);
            match (
                since.map(u32::try_from),
                u32::try_from(slot.location.offset),
            ) {
                (Some(Ok(since)), Ok(offset)) => {
                    e[15] = TAG_LIVE;
                    e[16..24].copy_from_slice(&slot.version.to_le_bytes());
                    e[24..28].copy_from_slice(&since.to_le_bytes());
                    e[28..32].copy_from_slice(&offset.to_le_bytes());
                }
                _ => self.unfit = true,
            }
        }
        self.push_entry(e, off, len);
    }

    /// Appends the entry `e` (its key's place aside), its key `len` bytes at `off` in the heap.
    #[inline]
    fn push_entry(&mut self, mut e: [u8; ENTRY_LEN], off: usize, len: usize) {
        if self.n == self.room {
            // More entries than announced: move the keys up to make room.
            let more = self.room.max(64);
            let from = self.keys_at();
            let buf_len = self.buf.len();
            self.buf.resize(buf_len + more * ENTRY_LEN);
            self.buf
                .bytes_mut()
                .copy_within(from..from + self.key_len, from + more * ENTRY_LEN);
            self.room += more;
        }
        // The key offset takes 5 bytes (checked against `MAX_KEY_HEAP` below), the length 2.
        e[8..13].copy_from_slice(&(off as u64).to_le_bytes()[..5]);
        e[13..15].copy_from_slice(&(len as u16).to_le_bytes());
        if self.key_len > MAX_KEY_HEAP
            || len > usize::from(u16::MAX)
            || off.checked_add(len).is_none_or(|end| end > self.key_len)
        {
            self.unfit = true;
        }
        let at = HEADER_LEN + self.n * ENTRY_LEN;
        self.buf.bytes_mut()[at..at + ENTRY_LEN].copy_from_slice(&e);
        self.live_key_len += len;
        self.n += 1;
        debug_assert!(
            self.unfit || self.last_two_ascend(),
            "run entries out of order"
        );
    }

    /// Whether the last two entries pushed ascend by (hash, key) (checked in debug builds).
    fn last_two_ascend(&self) -> bool {
        let Some(prev) = self.n.checked_sub(2) else {
            return true;
        };
        match (self.hash_key(prev), self.hash_key(prev + 1)) {
            (Some((ha, ka)), Some((hb, kb))) => (ha, ka) < (hb, kb),
            _ => false,
        }
    }

    /// Rewrites the key heap with only the keys the entries point to, in entry order (when
    /// most of it is no key's: a merge's inputs' heaps are copied whole, keys superseded in
    /// the merge included).
    ///
    /// The new heap is written past the old one, in the buffer itself (no second buffer as
    /// large as the keys: a spilled run's buffer is its file), then moved down over it.
    fn compact_keys(&mut self) {
        let keys_at = self.keys_at();
        let new_at = keys_at + self.key_len;
        self.buf.resize(new_at + self.live_key_len);
        let buf = self.buf.bytes_mut();
        let mut new_len = 0usize;
        for i in 0..self.n {
            let at = HEADER_LEN + i * ENTRY_LEN;
            let Some((off, len)) = key_place(&buf[at..at + ENTRY_LEN]) else {
                continue;
            };
            // Every entry's key lies in the heap (`push_entry` marks the run unfit otherwise,
            // and an unfit run is never finished), and their lengths add up to
            // `live_key_len`: both ranges are in the buffer.
            buf.copy_within(keys_at + off..keys_at + off + len, new_at + new_len);
            buf[at + 8..at + 13].copy_from_slice(&(new_len as u64).to_le_bytes()[..5]);
            new_len += len;
        }
        buf.copy_within(new_at..new_at + new_len, keys_at);
        self.buf.truncate(keys_at + new_len);
        self.key_len = new_len;
    }

    /// Entry `i`'s hash and key (while building).
    fn hash_key(&self, i: usize) -> Option<(u64, &[u8])> {
        let at = HEADER_LEN + i * ENTRY_LEN;
        let e = self.buf.bytes().get(at..at + ENTRY_LEN)?;
        let (off, len) = key_place(e)?;
        let k = self.keys_at() + off;
        Some((u64_at(e, 0)?, self.buf.bytes().get(k..k + len)?))
    }

    /// The run's bytes; `None` when a pushed change did not fit an entry: a key heap past
    /// 1 TiB, or a record more than 2^32 LSNs past its segment's first or 4 GiB into it (a
    /// log never writes one).
    ///
    /// For a builder that may spill ([`RunBuilder::with_capacity_in`]), use
    /// [`RunBuilder::finish_built`]: this one answers `None` for a run built in a file.
    pub(crate) fn finish(self, meta: RunMeta) -> Option<Vec<u8>> {
        match self.finish_built(meta)? {
            Built::Heap(bytes) => Some(bytes),
            Built::File(_) => None,
        }
    }

    /// The finished run, in memory or in its [`Spill`] file; `None` when it is unfit (see
    /// [`RunBuilder::finish`]).
    pub(crate) fn finish_built(mut self, meta: RunMeta) -> Option<Built> {
        if self.unfit {
            return None;
        }
        // Keys no entry points to (superseded in a merge) are dropped once they are more than
        // those that remain; below that, copying the heaps whole is cheaper than reading each
        // key (at random, in a run's order) to copy it alone.
        if self.key_len > 2 * self.live_key_len + CHECKED_BLOCK {
            self.compact_keys();
        }
        let n = self.n;
        let keys_at = HEADER_LEN + n * ENTRY_LEN;
        let from = self.keys_at();
        if from != keys_at {
            self.buf
                .bytes_mut()
                .copy_within(from..from + self.key_len, keys_at);
        }
        self.buf.truncate(keys_at + self.key_len);
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&[0u8; 2]);
        h.extend_from_slice(&meta.chain_crc.to_le_bytes());
        h.extend_from_slice(&meta.first_lsn.to_le_bytes());
        h.extend_from_slice(&meta.last_lsn.to_le_bytes());
        h.extend_from_slice(&meta.epoch.to_le_bytes());
        h.extend_from_slice(&(n as u64).to_le_bytes());
        h.extend_from_slice(&(self.key_len as u64).to_le_bytes());
        h.extend_from_slice(&meta.seed.to_le_bytes());
        let end = meta.end.unwrap_or_default();
        h.extend_from_slice(&end.segment.to_le_bytes());
        h.extend_from_slice(&end.offset.to_le_bytes());
        self.buf.bytes_mut()[..HEADER_LEN].copy_from_slice(&h);
        let body_len = self.buf.len();
        let blocks = body_len.div_ceil(CHECKED_BLOCK);
        let mut sums = Vec::with_capacity(blocks * 4 + 4);
        for block in self.buf.bytes().chunks(CHECKED_BLOCK) {
            sums.extend_from_slice(&crc32c::crc32c(block).to_le_bytes());
        }
        let crc = crc32c::crc32c(&sums);
        sums.extend_from_slice(&crc.to_le_bytes());
        self.buf.extend_from_slice(&sums);
        Some(match self.buf {
            Buf::Heap(bytes) => Built::Heap(bytes),
            Buf::Map { map, len } => Built::File(map.finish(len)),
        })
    }
}

/// One input of [`merge_runs`]: a run's entries and key heap, checked, and where its heap's
/// copy starts in the output.
struct MergeInput<'a> {
    entries: &'a [u8],
    heap: &'a [u8],
    base: usize,
    /// The next entry's offset in `entries`.
    at: usize,
}

impl<'a> MergeInput<'a> {
    fn head(&self) -> Option<&'a [u8]> {
        self.entries.get(self.at..self.at + ENTRY_LEN)
    }

    /// The key of the entry bytes `e` (`None` when it is not within the heap: malformed).
    fn key(&self, e: &[u8]) -> Option<&'a [u8]> {
        let (off, len) = key_place(e)?;
        self.heap.get(off..off.checked_add(len)?)
    }
}

/// The order of two inputs' head entries `a` and `b`, by (hash, key); `None` when a key is
/// malformed.
#[inline]
fn cmp_heads(
    a: (&MergeInput<'_>, &[u8]),
    b: (&MergeInput<'_>, &[u8]),
) -> Option<std::cmp::Ordering> {
    let (ha, hb) = (u64_at(a.1, 0)?, u64_at(b.1, 0)?);
    if ha != hb {
        return Some(ha.cmp(&hb));
    }
    Some(cmp_keys(a.0.key(a.1)?, b.0.key(b.1)?))
}

/// Merges `runs` (adjacent, newest first) into `b`: each key once, with its newest entry,
/// tombstones dropped when `drop_tombstones`. Each run's entries and key heap are checked whole
/// first, then read as bytes: an entry is compared by its hash (keys only when two hashes are
/// equal) and copied as it is, its key's place moved to the copy of its run's heap. (Through
/// the general merge, decoding and encoding each entry, a merge of four segments' runs took
/// about 45 ns an entry.) `between` is called every `every` entries; the merge stops when it
/// returns false.
///
/// Returns `None` when a run is damaged (a block fails its checksum: the run is marked), else
/// whether the entries were in order (a sound run's are).
pub(crate) fn merge_runs(
    runs: &[&Run],
    drop_tombstones: bool,
    b: &mut RunBuilder,
    every: usize,
    between: &mut dyn FnMut() -> bool,
) -> Option<bool> {
    let mut ins = Vec::with_capacity(runs.len());
    for r in runs {
        let body = r.checked(HEADER_LEN..r.sums_at)?;
        let (entries, heap) = body.split_at_checked(r.count.checked_mul(ENTRY_LEN)?)?;
        let base = b.add_heap(heap);
        ins.push(MergeInput {
            entries,
            heap,
            base,
            at: 0,
        });
    }
    // A malformed entry (a key outside its heap) counts as out of order: no sound run has one.
    Some(merge_inputs(&mut ins, drop_tombstones, b, every, between).unwrap_or(false))
}

/// The loop of [`merge_runs`]: `None` at a malformed entry.
///
/// Most steps find one input whose head hash is below all others' (distinct keys rarely share
/// a hash): that entry is copied and its input moves on, comparing integers only. A step
/// where heads share the smallest hash (one key changed in several inputs, or a rare
/// collision) goes through [`merge_tied`], which compares keys. (With every step comparing
/// heads by (hash, key), the loop took 28 ns an entry merging four runs of 270k entries into
/// a reused buffer; this way, 18.)
fn merge_inputs(
    ins: &mut [MergeInput<'_>],
    drop_tombstones: bool,
    b: &mut RunBuilder,
    every: usize,
    between: &mut dyn FnMut() -> bool,
) -> Option<bool> {
    // Each input's head hash, and which inputs have a head, newest first (the order that
    // decides among equal keys).
    let mut hashes: Vec<u64> = Vec::with_capacity(ins.len());
    let mut live: Vec<usize> = Vec::with_capacity(ins.len());
    for (j, input) in ins.iter().enumerate() {
        hashes.push(match input.head() {
            Some(e) => {
                live.push(j);
                u64_at(e, 0)?
            }
            None => 0,
        });
    }
    let mut visited = 0usize;
    while let Some(&first) = live.first() {
        let mut w = first;
        let mut min = hashes[first];
        let mut tied = false;
        for &j in &live[1..] {
            let h = hashes[j];
            tied |= h == min;
            if h < min {
                min = h;
                w = j;
                tied = false;
            }
        }
        if tied {
            if !merge_tied(ins, &mut hashes, &mut live, drop_tombstones, b)? {
                return Some(false);
            }
        } else {
            let input = &mut ins[w];
            let e = input.head()?;
            copy_entry(b, input, e, drop_tombstones)?;
            input.at += ENTRY_LEN;
            match advanced(input, e, min)? {
                Advanced::To(h) => hashes[w] = h,
                Advanced::Ended => live.retain(|&j| j != w),
                Advanced::OutOfOrder => return Some(false),
            }
        }
        visited += 1;
        if visited.is_multiple_of(every) && !between() {
            return Some(true);
        }
    }
    Some(true)
}

/// Copies `input`'s entry `e` to `b`, its key's place moved to the copy of the input's heap;
/// nothing for a tombstone when `drop_tombstones`. `None` when the entry is malformed.
#[inline]
fn copy_entry(
    b: &mut RunBuilder,
    input: &MergeInput<'_>,
    e: &[u8],
    drop_tombstones: bool,
) -> Option<()> {
    if !(drop_tombstones && e.get(15) != Some(&TAG_LIVE)) {
        let (off, len) = key_place(e)?;
        let mut entry = [0u8; ENTRY_LEN];
        entry.copy_from_slice(e);
        b.push_entry(entry, input.base + off, len);
    }
    Some(())
}

/// Where an input of [`merge_inputs`] is after moving past an entry.
enum Advanced {
    /// At an entry with this hash.
    To(u64),
    /// At its end.
    Ended,
    /// At an entry that does not come after the one it moved past: the input is out of order.
    OutOfOrder,
}

/// Reads `input`'s new head after it moved past `prev`, whose hash is `prev_hash`.
#[inline]
fn advanced(input: &MergeInput<'_>, prev: &[u8], prev_hash: u64) -> Option<Advanced> {
    let Some(next) = input.head() else {
        return Some(Advanced::Ended);
    };
    let h = u64_at(next, 0)?;
    let after =
        h > prev_hash || (h == prev_hash && cmp_keys(input.key(next)?, input.key(prev)?).is_gt());
    Some(if after {
        Advanced::To(h)
    } else {
        Advanced::OutOfOrder
    })
}

/// One step of [`merge_inputs`] where several heads share the smallest hash: the smallest
/// (hash, key) among them is copied, from the newest input that has it, and every input whose
/// head is that key moves past it (older changes of the key are superseded). False when an
/// input's entries are out of order.
fn merge_tied(
    ins: &mut [MergeInput<'_>],
    hashes: &mut [u64],
    live: &mut Vec<usize>,
    drop_tombstones: bool,
    b: &mut RunBuilder,
) -> Option<bool> {
    // The smallest head; among equal ones the newest input's (the first found).
    let mut best: Option<(usize, &[u8])> = None;
    for &j in live.iter() {
        let e = ins[j].head()?;
        best = match best {
            Some((bj, be)) if cmp_heads((&ins[bj], be), (&ins[j], e))?.is_le() => Some((bj, be)),
            _ => Some((j, e)),
        };
    }
    let (w, e) = best?;
    copy_entry(b, &ins[w], e, drop_tombstones)?;
    let min = hashes[w];
    let mut ended = false;
    for &j in live.iter() {
        let h = ins[j].head()?;
        if j != w && cmp_heads((&ins[j], h), (&ins[w], e))?.is_ne() {
            continue;
        }
        ins[j].at += ENTRY_LEN;
        match advanced(&ins[j], h, min)? {
            Advanced::To(next) => hashes[j] = next,
            Advanced::Ended => ended = true,
            Advanced::OutOfOrder => return Some(false),
        }
    }
    if ended {
        live.retain(|&j| ins[j].head().is_some());
    }
    Some(true)
}

/// Where the key of the entry bytes `e` is in the key heap: (offset, length).
fn key_place(e: &[u8]) -> Option<(usize, usize)> {
    let mut off = [0u8; 8];
    off[..5].copy_from_slice(e.get(8..13)?);
    let off = usize::try_from(u64::from_le_bytes(off)).ok()?;
    let len = usize::from(u16::from_le_bytes([*e.get(13)?, *e.get(14)?]));
    Some((off, len))
}

/// A key as a merge sees it. A merge in a run's order compares keys only when two hashes are
/// equal, and a run's entries can point into a copy of their inputs' heaps: so a key of a run
/// is located without being read, and checked against its block's checksum only when it is
/// read ([`KeyRef::get`]).
#[derive(Clone, Copy)]
pub(crate) struct KeyRef<'a> {
    /// The key's bytes: unchecked when `run` is set.
    bytes: &'a [u8],
    run: Option<&'a Run>,
}

impl<'a> KeyRef<'a> {
    /// A key whose bytes can be read as they are (in memory, or already checked).
    pub(crate) fn new(bytes: &'a [u8]) -> KeyRef<'a> {
        KeyRef { bytes, run: None }
    }

    /// The key (empty when it lies in a block of a run that fails its checksum: the run is
    /// then [`Run::damaged`], and what was read from it is discarded).
    #[inline]
    pub(crate) fn get(self) -> &'a [u8] {
        match self.run {
            None => self.bytes,
            Some(r) => r.check_slice(self.bytes).unwrap_or_default(),
        }
    }

    /// Where the key is in `heap` (offset, length), when it lies within it; its bytes are not
    /// read.
    pub(crate) fn place_in(self, heap: &[u8]) -> Option<(usize, usize)> {
        let off = (self.bytes.as_ptr() as usize).checked_sub(heap.as_ptr() as usize)?;
        (off.checked_add(self.bytes.len())? <= heap.len()).then_some((off, self.bytes.len()))
    }
}

/// The bytes behind a run.
pub(crate) enum Backing {
    /// A mapped run file.
    Map(Mapped),
    /// Bytes in memory: a run built by replay, or a file read on a simulated file system.
    Heap(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m.bytes(),
            Backing::Heap(v) => v,
        }
    }

    /// Asks for `range` of a mapped file to be read now (see [`Mapped::will_need`]).
    fn will_need(&self, range: std::ops::Range<usize>) {
        if let Backing::Map(m) = self {
            m.will_need(range);
        }
    }
}

/// A sorted run (see the module docs).
pub(crate) struct Run {
    backing: Backing,
    meta: RunMeta,
    count: usize,
    keys_at: usize,
    keys_len: usize,
    /// Its entry numbers in key order, sorted when a scan first needs them (see
    /// [`Run::key_order`]).
    key_order: std::sync::OnceLock<Box<[u32]>>,
    /// Where the block checksums start (the end of the checked bytes).
    sums_at: usize,
    /// One bit a checked block: set once its checksum held.
    checked: Box<[AtomicU64]>,
    /// Set when a block's checksum failed: nothing this run says can be trusted.
    damaged: AtomicBool,
    /// The run's file once it is written; `None` for a run that lives only in memory.
    path: Option<PathBuf>,
    /// Set once its file is known durable (fdatasynced by this process).
    synced: AtomicBool,
    /// The run files this one replaced (a merge's inputs, and what they had replaced), kept
    /// until its own file is durable: until then they cover its range after a power loss.
    retired: parking_lot::Mutex<Vec<PathBuf>>,
    /// When this process wrote or found its file: its age decides when it is synced (see
    /// `index::sync_runs`).
    since: std::time::Instant,
}

impl Run {
    /// Parses a run's bytes; `None` when they are not a well-formed run. `trusted` bytes (a run
    /// this process just built) count as checked; otherwise the header's block and the
    /// checksum table are checked now and every other block when first read.
    pub(crate) fn parse(backing: Backing, path: Option<PathBuf>, trusted: bool) -> Option<Run> {
        // An open reads the header and the checksum table at the end, a few KiB of a file of
        // many MiB: asked for exactly, they are read alone (a fault would read 8 MiB around
        // each, most of a cold open after a crash).
        backing.will_need(0..HEADER_LEN);
        let b = backing.bytes();
        if b.len() < HEADER_LEN + 8 || b[..8] != MAGIC || b[8..10] != VERSION.to_le_bytes() {
            return None;
        }
        let count = usize::try_from(u64_at(b, 40)?).ok()?;
        let keys_len = usize::try_from(u64_at(b, 48)?).ok()?;
        let keys_at = HEADER_LEN.checked_add(count.checked_mul(ENTRY_LEN)?)?;
        let sums_at = keys_at.checked_add(keys_len)?;
        let sums = sums_at.div_ceil(CHECKED_BLOCK);
        if sums_at.checked_add(sums.checked_mul(4)?)?.checked_add(4)? != b.len() {
            return None;
        }
        backing.will_need(sums_at..b.len());
        let table = &b[sums_at..b.len() - 4];
        if crc32c::crc32c(table).to_le_bytes()[..] != b[b.len() - 4..] {
            return None;
        }
        let checked: Box<[AtomicU64]> = (0..sums.div_ceil(64))
            .map(|_| AtomicU64::new(if trusted { u64::MAX } else { 0 }))
            .collect();
        let run = Run {
            backing,
            meta: RunMeta {
                first_lsn: 0,
                last_lsn: 0,
                chain_crc: 0,
                epoch: 0,
                end: None,
                seed: 0,
            },
            count,
            keys_at,
            keys_len,
            key_order: std::sync::OnceLock::new(),
            sums_at,
            checked,
            damaged: AtomicBool::new(false),
            path,
            synced: AtomicBool::new(false),
            retired: parking_lot::Mutex::new(Vec::new()),
            since: std::time::Instant::now(),
        };
        // The header's fields were read above before their check: it decides now.
        let h = run.checked(0..HEADER_LEN)?;
        let meta = RunMeta {
            chain_crc: u32_at(h, 12)?,
            first_lsn: u64_at(h, 16)?,
            last_lsn: u64_at(h, 24)?,
            epoch: u64_at(h, 32)?,
            end: match (u64_at(h, 64)?, u64_at(h, 72)?) {
                (0, 0) => None,
                (segment, offset) => Some(Location { segment, offset }),
            },
            seed: u64_at(h, 56)?,
        };
        if meta.first_lsn > meta.last_lsn {
            return None;
        }
        Some(Run { meta, ..run })
    }

    /// The bytes `range` of the run once every block they touch has passed its checksum;
    /// `None` (and the run marked damaged) when one fails, or when `range` is out of bounds.
    fn checked(&self, range: std::ops::Range<usize>) -> Option<&[u8]> {
        let b = self.backing.bytes();
        let bytes = b.get(range.clone())?;
        if range.end > self.sums_at {
            return None;
        }
        let last = range.end.saturating_sub(1).max(range.start) / CHECKED_BLOCK;
        for block in range.start / CHECKED_BLOCK..=last {
            let (word, bit) = (&self.checked[block / 64], 1u64 << (block % 64));
            // Relaxed: the bit vouches for bytes that never change (a sealed, read-only file),
            // so there is no write of them to order against.
            if word.load(Ordering::Relaxed) & bit != 0 {
                continue;
            }
            let data = &b[block * CHECKED_BLOCK..self.sums_at.min((block + 1) * CHECKED_BLOCK)];
            let want = u32_at(b, self.sums_at + 4 * block)?;
            if crc32c::crc32c(data) != want {
                self.damaged.store(true, Ordering::Release);
                tracing::error!(run = ?self.path, block, "index run block fails its checksum");
                return None;
            }
            word.fetch_or(bit, Ordering::Relaxed);
        }
        Some(bytes)
    }

    /// `bytes`, a part of the run's bytes, once its blocks passed their checksums (see
    /// [`Run::checked`]).
    fn check_slice<'a>(&'a self, bytes: &'a [u8]) -> Option<&'a [u8]> {
        let start = (bytes.as_ptr() as usize).checked_sub(self.backing.bytes().as_ptr() as usize)?;
        self.checked(start..start.checked_add(bytes.len())?)
    }

    /// The key heap, every block of it checked (`None` when one fails: the run is then
    /// damaged).
    pub(crate) fn key_heap(&self) -> Option<&[u8]> {
        self.checked(self.keys_at..self.keys_at + self.keys_len)
    }

    /// The key heap's bytes, unchecked: only to locate keys in (see [`KeyRef::place_in`]).
    pub(crate) fn key_heap_unchecked(&self) -> &[u8] {
        self.backing
            .bytes()
            .get(self.keys_at..self.keys_at + self.keys_len)
            .unwrap_or_default()
    }

    /// True once a block of the run failed its checksum (see the module docs): what any
    /// operation read from it since must be discarded.
    pub(crate) fn damaged(&self) -> bool {
        self.damaged.load(Ordering::Acquire)
    }

    /// Opens and verifies the run file at `path`: mapped when `mappable` (an OS file), else read
    /// through `io`. `None` when it is missing, unreadable or not a valid run.
    pub(crate) fn open(io: &dyn seglog_wal::Io, path: &Path, mappable: bool) -> Option<Run> {
        let backing = if mappable {
            Backing::Map(mapped::map_file(path).ok()?)
        } else {
            let f = io.open_read(path).ok()?;
            let len = usize::try_from(f.file_len().ok()?).ok()?;
            let mut bytes = vec![0u8; len];
            let mut done = 0;
            while done < len {
                match f.read_at(&mut bytes[done..], done as u64) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => done += n,
                }
            }
            Backing::Heap(bytes)
        };
        Run::parse(backing, Some(path.to_path_buf()), false)
    }

    pub(crate) fn meta(&self) -> RunMeta {
        self.meta
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Bytes of keys the run holds.
    pub(crate) fn key_bytes(&self) -> usize {
        self.keys_len
    }

    /// Bytes the run occupies (its file, or its memory).
    pub(crate) fn byte_len(&self) -> usize {
        self.backing.bytes().len()
    }

    /// True when the run is a file; false for one that lives only in memory.
    pub(crate) fn in_file(&self) -> bool {
        self.path.is_some()
    }

    /// True once its file is known durable (see `index::write_run`).
    pub(crate) fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Records that its file was fdatasynced.
    pub(crate) fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// How long ago this process wrote or found its file.
    pub(crate) fn age(&self) -> std::time::Duration {
        self.since.elapsed()
    }

    /// The run files it replaced and keeps until it is durable (see [`Run::retire`]).
    pub(crate) fn retired(&self) -> Vec<PathBuf> {
        self.retired.lock().clone()
    }

    /// Keeps `files` (the run files it replaced) until its own file is durable.
    pub(crate) fn retire(&self, files: Vec<PathBuf>) {
        self.retired.lock().extend(files);
    }

    /// The run files it replaced, forgotten here: the caller removes them.
    pub(crate) fn take_retired(&self) -> Vec<PathBuf> {
        std::mem::take(&mut *self.retired.lock())
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn entry(&self, i: usize) -> Option<&[u8]> {
        if i >= self.count {
            return None;
        }
        let at = HEADER_LEN + i * ENTRY_LEN;
        self.checked(at..at + ENTRY_LEN)
    }

    /// The key of entry `i` (empty when malformed or damaged).
    pub(crate) fn key(&self, i: usize) -> &[u8] {
        self.entry(i).map_or(&[], |e| self.key_of(e))
    }

    /// The key the entry bytes `e` point to (empty when malformed or damaged).
    fn key_of(&self, e: &[u8]) -> &[u8] {
        self.key_range(e)
            .and_then(|r| self.checked(r))
            .unwrap_or_default()
    }

    /// The bytes of the run the key of the entry bytes `e` occupies, when within the key heap.
    fn key_range(&self, e: &[u8]) -> Option<std::ops::Range<usize>> {
        let (off, len) = key_place(e)?;
        let end = off.checked_add(len).filter(|&end| end <= self.keys_len)?;
        Some(self.keys_at + off..self.keys_at + end)
    }

    /// The hash of entry `i` (0 when malformed or damaged).
    fn hash(&self, i: usize) -> u64 {
        self.entry(i).and_then(|e| u64_at(e, 0)).unwrap_or(0)
    }

    /// The first entry whose hash is at least `hash`.
    ///
    /// The hashes are uniform over 64 bits, so the entry is about `hash / 2^64` of the way in:
    /// the search starts there and widens by doubling steps until it brackets the answer (a
    /// few entries away, one or two 4 KiB blocks read), then halves. A binary search over the
    /// whole run would read about log2(n) blocks, most of them cold.
    pub(crate) fn lower_bound_hash(&self, hash: u64) -> usize {
        let n = self.count;
        if n == 0 {
            return 0;
        }
        // Less than n: the product is below 2^64 * n.
        let guess = ((u128::from(hash) * n as u128) >> 64) as usize;
        // Bracket: every entry before `lo` hashes below `hash`, every one from `hi` at least.
        let (mut lo, mut hi);
        if self.hash(guess) < hash {
            (lo, hi) = (guess + 1, n);
            let mut step = 1;
            while lo + step - 1 < n {
                if self.hash(lo + step - 1) >= hash {
                    hi = lo + step - 1;
                    break;
                }
                lo += step;
                step *= 2;
            }
        } else {
            (lo, hi) = (0, guess);
            let mut step = 1;
            while step <= hi {
                if self.hash(hi - step) < hash {
                    lo = hi - step + 1;
                    break;
                }
                hi -= step;
                step *= 2;
            }
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.hash(mid) < hash {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// What this run says about `key`, whose hash under the run's seed is `hash`: `None` when
    /// it holds no entry for it, `Some(None)` for a tombstone, `Some(Some(slot))` for a live
    /// key.
    pub(crate) fn get(&self, hash: u64, key: &[u8]) -> Option<Val> {
        let mut i = self.lower_bound_hash(hash);
        while i < self.count && self.hash(i) == hash {
            let e = self.entry(i)?;
            if self.key_of(e) == key {
                // A tombstone's (and a malformed entry's) change is `None`: the key reads
                // deleted.
                return Some(val_of(e));
            }
            i += 1;
        }
        None
    }

    /// Every entry, in the run's order: (hash, key).
    pub(crate) fn iter(&self) -> Cursor<'_> {
        Cursor {
            run: self,
            i: 0,
            entries_ok: 0..0,
        }
    }

    /// The entry numbers in key order, sorted the first time this is called and kept with
    /// the run (4 bytes an entry) for the scans that follow. Keys of a damaged block read as
    /// empty (the run is then [`Run::damaged`], and what was read is discarded).
    pub(crate) fn key_order(&self) -> &[u32] {
        self.key_order.get_or_init(|| {
            let mut s = KeySort::default();
            s.sort(self.count, |i| self.key(i));
            std::mem::take(&mut s.order).into_boxed_slice()
        })
    }

    /// Entries from the first key at least `from`, in key order (see [`Run::key_order`]).
    pub(crate) fn iter_keys_from<'a>(&'a self, from: &[u8]) -> KeyCursor<'a> {
        let order = self.key_order();
        let start = order.partition_point(|&i| cmp_keys(self.key(i as usize), from).is_lt());
        KeyCursor {
            run: self,
            order: &order[start..],
        }
    }

    /// Like [`Run::checked`], for a reader that moves forward: `ok` is the span of whole
    /// blocks the last check covered, and a range inside it needs no second look at the
    /// checked bits. (Merges walk every entry and key of their inputs in order; checking
    /// each one's blocks again made a walk of one run 20.6 ns an entry instead of 17.)
    fn checked_in(
        &self,
        range: std::ops::Range<usize>,
        ok: &mut std::ops::Range<usize>,
    ) -> Option<&[u8]> {
        if ok.start <= range.start && range.end <= ok.end {
            return self.backing.bytes().get(range);
        }
        let bytes = self.checked(range.clone())?;
        let first = range.start / CHECKED_BLOCK * CHECKED_BLOCK;
        let last = range.end.saturating_sub(1).max(range.start) / CHECKED_BLOCK;
        *ok = first..self.sums_at.min((last + 1) * CHECKED_BLOCK);
        Some(bytes)
    }
}

/// A run's entries in its order, (hash, key) (see [`Run::iter`]): each key located, not read
/// (see [`KeyRef`]). A damaged or malformed entry reads as hash 0 and an empty key with no
/// change, which no sound run has after its first entry: a merge finds it out of order.
pub(crate) struct Cursor<'a> {
    run: &'a Run,
    i: usize,
    /// The checked span of entries last looked at (see [`Run::checked_in`]).
    entries_ok: std::ops::Range<usize>,
}

impl<'a> Iterator for Cursor<'a> {
    type Item = (u64, KeyRef<'a>, Val);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let run = self.run;
        if self.i >= run.count {
            return None;
        }
        let at = HEADER_LEN + self.i * ENTRY_LEN;
        self.i += 1;
        let damaged = (0, KeyRef::new(&[]), None);
        let Some(e) = run.checked_in(at..at + ENTRY_LEN, &mut self.entries_ok) else {
            return Some(damaged);
        };
        let Some(bytes) = run.key_range(e).and_then(|r| run.backing.bytes().get(r)) else {
            return Some(damaged);
        };
        let key = KeyRef {
            bytes,
            run: Some(run),
        };
        Some((u64_at(e, 0).unwrap_or(0), key, val_of(e)))
    }
}

/// A run's entries in key order (see [`Run::iter_keys_from`]); damaged entries read as in
/// [`Cursor`]. The hash it gives is always 0: a merge in key order compares keys only.
pub(crate) struct KeyCursor<'a> {
    run: &'a Run,
    order: &'a [u32],
}

impl<'a> Iterator for KeyCursor<'a> {
    type Item = (u64, KeyRef<'a>, Val);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let (&i, rest) = self.order.split_first()?;
        self.order = rest;
        let run = self.run;
        Some(match run.entry(i as usize) {
            Some(e) => (0, KeyRef::new(run.key_of(e)), val_of(e)),
            None => (0, KeyRef::new(&[]), None),
        })
    }
}

/// The change the entry bytes `e` hold: `None` for a tombstone (or a malformed entry).
fn val_of(e: &[u8]) -> Val {
    if e.get(15) != Some(&TAG_LIVE) {
        return None;
    }
    let version = u64_at(e, 16)?;
    Some(Slot {
        version,
        location: Location {
            segment: version.checked_sub(u64::from(u32_at(e, 24)?))?,
            offset: u64::from(u32_at(e, 28)?),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A run of `entries` (pushed in the order given: (hash, key) ascending), keys copied.
    fn run_of(entries: &[(u64, Vec<u8>, Val)], first_lsn: u64) -> Run {
        let mut b = RunBuilder::with_capacity(entries.len(), 0);
        for (h, k, v) in entries {
            b.push(*h, k, *v);
        }
        let meta = RunMeta {
            first_lsn,
            last_lsn: first_lsn,
            chain_crc: 0,
            epoch: 0,
            end: None,
            seed: 0,
        };
        Run::parse(Backing::Heap(b.finish(meta).expect("fits")), None, false).expect("parses")
    }

    proptest! {
        /// `merge_runs` against a model: each key once with the newest run's change, in
        /// (hash, key) order, tombstones dropped when asked; with hashes from few values, so
        /// that distinct keys often share one (compared by key), and keys repeated across runs,
        /// so that most of the copied heaps is superseded (then dropped at the finish).
        #[test]
        fn merged_runs_hold_each_keys_newest_change_and_a_bounded_heap(
            runs in proptest::collection::vec(
                proptest::collection::btree_map(
                    proptest::collection::vec(0u8..6, 0..40), (0u64..1000, any::<bool>()), 0..60),
                1..6),
            drop_tombstones in any::<bool>(),
            every in 1usize..50,
        ) {
            let hash = |k: &[u8]| u64::from(k.iter().map(|&b| u32::from(b)).sum::<u32>() % 5);
            let val = |v: u64, live: bool| live.then_some(Slot {
                version: v + 1,
                location: Location { segment: 1, offset: v },
            });
            let built: Vec<Run> = runs
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let mut e: Vec<(u64, Vec<u8>, Val)> =
                        m.iter().map(|(k, &(v, live))| (hash(k), k.clone(), val(v, live))).collect();
                    e.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
                    run_of(&e, 100 - i as u64)
                })
                .collect();
            // Newest first: the first run that has a key decides it.
            let mut model: std::collections::BTreeMap<(u64, Vec<u8>), Val> = Default::default();
            for m in &runs {
                for (k, &(v, live)) in m {
                    model.entry((hash(k), k.clone())).or_insert(val(v, live));
                }
            }
            let want: Vec<(u64, Vec<u8>, Val)> = model
                .into_iter()
                .filter(|(_, v)| v.is_some() || !drop_tombstones)
                .map(|((h, k), v)| (h, k, v))
                .collect();
            let refs: Vec<&Run> = built.iter().collect();
            let mut b = RunBuilder::with_capacity(0, 0);
            let mut calls = 0;
            let merged = merge_runs(&refs, drop_tombstones, &mut b, every, &mut || { calls += 1; true });
            prop_assert_eq!(merged, Some(true));
            prop_assert_eq!(calls, (runs.iter().flat_map(|m| m.keys()).collect::<std::collections::BTreeSet<_>>().len()) / every);
            let meta = RunMeta { first_lsn: 1, last_lsn: 100, chain_crc: 0, epoch: 0, end: None, seed: 0 };
            let run = Run::parse(Backing::Heap(b.finish(meta).expect("fits")), None, false).expect("parses");
            let got: Vec<(u64, Vec<u8>, Val)> = run.iter().map(|(h, k, v)| (h, k.get().to_vec(), v)).collect();
            prop_assert!(!run.damaged());
            let live_bytes: usize = want.iter().map(|(_, k, _)| k.len()).sum();
            prop_assert_eq!(got, want);
            prop_assert!(run.key_bytes() <= 2 * live_bytes + CHECKED_BLOCK);

            // Built in its file instead (as the index builds runs larger than its kept
            // buffer), room announced as `index::merge_layers` does: the same bytes.
            let dir = tempfile::tempdir().expect("temporary directory");
            let path = dir.path().join("merged.run.tmp");
            let entries: usize = built.iter().map(Run::len).sum();
            let key_bytes: usize = built.iter().map(Run::key_bytes).sum();
            let mut spilled = RunBuilder::with_capacity_in(entries, key_bytes, Some(Spill { path: &path, above: 0 }));
            prop_assert_eq!(merge_runs(&refs, drop_tombstones, &mut spilled, every, &mut || true), Some(true));
            let Some(Built::File(Ok(file))) = spilled.finish_built(meta) else {
                return Err(TestCaseError::fail("the spilled run was not built in its file"));
            };
            drop(file);
            prop_assert_eq!(std::fs::read(&path).expect("read the spilled run"), run.backing.bytes().to_vec());
        }
    }

    /// The bytes of the run built by `build` in memory, and in a file through a map (from an
    /// empty announcement, so that the map grows many times).
    fn built_both_ways(build: impl Fn(&mut RunBuilder)) -> (Vec<u8>, Vec<u8>) {
        let meta = RunMeta {
            first_lsn: 1,
            last_lsn: 9,
            chain_crc: 7,
            epoch: 3,
            end: None,
            seed: 5,
        };
        let mut heap = RunBuilder::with_capacity(0, 0);
        build(&mut heap);
        let heap = heap.finish(meta).expect("fits");
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("run.tmp");
        let mut mapped = RunBuilder::with_capacity_in(
            0,
            0,
            Some(Spill {
                path: &path,
                above: 0,
            }),
        );
        assert!(
            matches!(mapped.buf, Buf::Map { .. }),
            "the builder maps its file"
        );
        build(&mut mapped);
        let Some(Built::File(Ok(file))) = mapped.finish_built(meta) else {
            panic!("the run was not built in its file");
        };
        drop(file);
        (heap, std::fs::read(&path).expect("read the built run"))
    }

    #[test]
    fn a_run_built_in_its_file_is_the_run_built_in_memory() {
        let key = |i: u64| format!("key-{i:08}").into_bytes();
        let val = |i: u64| {
            (!i.is_multiple_of(3)).then_some(Slot {
                version: 10 + i,
                location: Location {
                    segment: 10,
                    offset: 64 * i,
                },
            })
        };
        // More entries than announced: the keys move up again and again.
        let (heap, file) = built_both_ways(|b| {
            for i in 0..5000u64 {
                b.push(i << 20, &key(i), val(i));
            }
        });
        assert_eq!(file, heap);
        let run = Run::parse(Backing::Heap(file), None, false).expect("parses");
        assert_eq!(run.len(), 5000);
        assert_eq!(
            run.iter()
                .nth(4321)
                .map(|(h, k, v)| (h, k.get().to_vec(), v)),
            Some((4321 << 20, key(4321), val(4321)))
        );

        // A heap that is mostly no key's: compacted at the finish, in the file as in memory.
        let (heap, file) = built_both_ways(|b| {
            b.add_heap(&[0xAB; 50_000]);
            for i in 0..100u64 {
                b.push(i, &key(i), val(i));
            }
        });
        assert_eq!(file, heap);
        let run = Run::parse(Backing::Heap(file), None, false).expect("parses");
        assert_eq!(run.key_bytes(), 100 * key(0).len());
        assert_eq!(
            run.iter()
                .map(|(_, k, _)| k.get().to_vec())
                .collect::<Vec<_>>(),
            (0..100).map(key).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_run_abandoned_while_built_in_its_file_leaves_no_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("run.tmp");
        let mut b = RunBuilder::with_capacity_in(
            1000,
            1 << 20,
            Some(Spill {
                path: &path,
                above: 0,
            }),
        );
        b.push(1, b"key", None);
        assert!(path.exists());
        drop(b);
        assert!(!path.exists());
        // An unfit run is abandoned too.
        let mut b = RunBuilder::with_capacity_in(
            10,
            10,
            Some(Spill {
                path: &path,
                above: 0,
            }),
        );
        b.push(
            1,
            b"key",
            Some(Slot {
                version: 1 << 40,
                location: Location {
                    segment: 1,
                    offset: 0,
                },
            }),
        );
        assert!(b
            .finish_built(RunMeta {
                first_lsn: 1,
                last_lsn: 1,
                chain_crc: 0,
                epoch: 0,
                end: None,
                seed: 0
            })
            .is_none());
        assert!(!path.exists());
        // Below its threshold, a builder builds in memory and creates no file.
        let b = RunBuilder::with_capacity_in(
            10,
            10,
            Some(Spill {
                path: &path,
                above: 1 << 20,
            }),
        );
        assert!(matches!(b.buf, Buf::Heap(_)));
        assert!(!path.exists());
    }

    #[test]
    fn a_merge_of_runs_stops_at_damage_and_at_entries_out_of_order() {
        let keys: Vec<(u64, Vec<u8>, Val)> = (0..2000u64)
            .map(|i| (i, format!("key-{i:06}").into_bytes(), None))
            .collect();
        let sound = run_of(&keys[..10], 1);
        let bytes = |r: &Run| r.backing.bytes().to_vec();
        // A byte of the key heap flipped, past the header's block: found before anything is
        // merged, and the run marked.
        let mut bad = bytes(&run_of(&keys, 2));
        let at = bad.len() - 400;
        bad[at] ^= 1;
        let damaged = Run::parse(Backing::Heap(bad), None, false).expect("header intact");
        let mut b = RunBuilder::with_capacity(0, 0);
        assert_eq!(
            merge_runs(&[&sound, &damaged], false, &mut b, 1000, &mut || true),
            None
        );
        assert!(damaged.damaged());
        // Entries out of order (built by hand: the builder checks its order in debug builds).
        let mut swapped = bytes(&run_of(&keys[..2], 3));
        let (a, z) = (HEADER_LEN, HEADER_LEN + ENTRY_LEN);
        let first: Vec<u8> = swapped[a..z].to_vec();
        swapped.copy_within(z..z + ENTRY_LEN, a);
        swapped[z..z + ENTRY_LEN].copy_from_slice(&first);
        let unordered = Run::parse(Backing::Heap(reseal(swapped)), None, false).expect("parses");
        let mut b = RunBuilder::with_capacity(0, 0);
        assert_eq!(
            merge_runs(&[&sound, &unordered], false, &mut b, 1000, &mut || true),
            Some(false)
        );
        assert!(!unordered.damaged());
    }

    #[test]
    fn superseded_keys_are_dropped_from_the_heap_once_they_are_the_most() {
        let keys: Vec<Vec<u8>> = (0..1000u64)
            .map(|i| format!("key-{i:016}").into_bytes())
            .collect();
        let live_bytes: usize = keys.iter().map(Vec::len).sum();
        let version = |run: u64, i: u64| {
            Some(Slot {
                version: run * 10_000 + i,
                location: Location {
                    segment: 1,
                    offset: i,
                },
            })
        };
        let runs: Vec<Run> = (0..3u64)
            .map(|r| {
                let e: Vec<(u64, Vec<u8>, Val)> = keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (i as u64, k.clone(), version(3 - r, i as u64)))
                    .collect();
                run_of(&e, 100 - r)
            })
            .collect();
        let meta = RunMeta {
            first_lsn: 1,
            last_lsn: 100,
            chain_crc: 0,
            epoch: 0,
            end: None,
            seed: 0,
        };
        for n in [2, 3] {
            let refs: Vec<&Run> = runs[..n].iter().collect();
            let mut b = RunBuilder::with_capacity(0, 0);
            assert_eq!(
                merge_runs(&refs, false, &mut b, 100, &mut || true),
                Some(true)
            );
            let run = Run::parse(Backing::Heap(b.finish(meta).unwrap()), None, false).unwrap();
            // Two heaps copied: half superseded, kept. Three: two thirds, dropped.
            assert_eq!(
                run.key_bytes(),
                if n == 2 { 2 * live_bytes } else { live_bytes }
            );
            for (i, k) in keys.iter().enumerate() {
                assert_eq!(
                    run.get(i as u64, k),
                    Some(version(3, i as u64)),
                    "{n} runs, key {i}"
                );
            }
        }
    }

    /// A run's bytes with their block checksums and trailer computed again.
    fn reseal(mut b: Vec<u8>) -> Vec<u8> {
        let sums_at = {
            let n = usize::try_from(u64_at(&b, 40).unwrap()).unwrap();
            let keys = usize::try_from(u64_at(&b, 48).unwrap()).unwrap();
            HEADER_LEN + n * ENTRY_LEN + keys
        };
        b.truncate(sums_at);
        for i in 0..sums_at.div_ceil(CHECKED_BLOCK) {
            let crc = crc32c::crc32c(&b[i * CHECKED_BLOCK..sums_at.min((i + 1) * CHECKED_BLOCK)]);
            b.extend_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b[sums_at..]);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    proptest! {
        // Cheap (tens of microseconds a case): more cases than the default.
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// "Readers never trust an entry beyond the checksum": a run whose bytes are anything
        /// at all, with checksums that hold (as a bug of ours, or a crafted file, could leave),
        /// is refused or read without a panic by every read path (lookups, both orders of
        /// iteration, a merge); untouched, it reads back as built.
        #[test]
        fn a_run_of_any_bytes_with_valid_checksums_reads_without_a_panic(
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..12), 0..200),
            // (place, byte): places past the end wrap, so header, entries and heap all get hit.
            writes in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..24),
            cut in proptest::option::of(any::<usize>()),
        ) {
            let mut entries: Vec<(u64, Vec<u8>, Val)> = keys
                .into_iter()
                .enumerate()
                .map(|(i, k)| {
                    let v = (i % 3 != 0).then_some(Slot {
                        version: 10 + i as u64,
                        location: Location { segment: 1, offset: 8 * i as u64 },
                    });
                    (key_hash(0, &k), k, v)
                })
                .collect();
            entries.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            entries.dedup_by(|a, b| (a.0, &a.1) == (b.0, &b.1));
            let sound = run_of(&entries, 1);
            let mut bytes = sound.backing.bytes().to_vec();
            // Header, entries and key heap: what the block checksums cover.
            let body = sound.sums_at;
            for &(at, byte) in &writes {
                bytes[at % body] = byte;
            }
            if let Some(c) = cut {
                bytes.truncate(HEADER_LEN + c % (body - HEADER_LEN + 1));
            }
            // Resealed only where the header's counts still fit the bytes (else the reseal
            // itself has nothing to go by): the run must then be refused.
            let n = u64_at(&bytes, 40).and_then(|n| usize::try_from(n).ok());
            let k = u64_at(&bytes, 48).and_then(|k| usize::try_from(k).ok());
            let fits = matches!((n, k), (Some(n), Some(k))
                if n.checked_mul(ENTRY_LEN).and_then(|e| e.checked_add(HEADER_LEN + k))
                    .is_some_and(|end| end <= bytes.len()));
            let bytes = if fits { reseal(bytes) } else { bytes };
            let untouched = writes.is_empty() && cut.is_none();
            match Run::parse(Backing::Heap(bytes), None, false) {
                None => prop_assert!(!untouched, "a sound run refused"),
                Some(run) => {
                    for (h, k, v) in &entries {
                        let got = run.get(*h, k);
                        if untouched {
                            prop_assert_eq!(got, Some(*v));
                        }
                    }
                    let _ = run.get(7, b"absent");
                    let in_order: Vec<_> = run.iter().map(|(h, k, v)| (h, k.get().to_vec(), v)).collect();
                    let by_key: Vec<_> = run.iter_keys_from(b"").map(|(_, k, v)| (k.get().to_vec(), v)).collect();
                    let from_middle = run.iter_keys_from(&[0x80]).count();
                    prop_assert!(from_middle <= by_key.len());
                    let mut out = RunBuilder::with_capacity(run.len() + sound.len(), 0);
                    let merged = merge_runs(&[&run, &sound], false, &mut out, 64, &mut || true);
                    if untouched {
                        prop_assert_eq!(in_order.len(), entries.len());
                        prop_assert_eq!(by_key.len(), entries.len());
                        prop_assert_eq!(merged, Some(true));
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn sort_keys_orders_by_key_then_number(
            keys in proptest::collection::vec(
                (proptest::collection::vec(0u8..3, 0..12), any::<bool>()), 0..300),
        ) {
            // Half the keys share a long prefix, so that the words compared start past it.
            let keys: Vec<Vec<u8>> = keys
                .into_iter()
                .map(|(k, long)| if long { [b"shared-prefix/".as_slice(), &k].concat() } else { k })
                .collect();
            let got = sort_keys(keys.len(), |i| keys[i].as_slice());
            let mut want: Vec<u32> = (0..keys.len() as u32).collect();
            want.sort_by(|&a, &b| keys[a as usize].cmp(&keys[b as usize]).then(a.cmp(&b)));
            prop_assert_eq!(got, want);
        }
    }

    proptest! {
        #[test]
        fn cmp_keys_orders_like_slices(
            // Few distinct bytes, so that long common prefixes and prefixes of each other
            // come up, across the 8-byte words and in the tail.
            a in proptest::collection::vec(0u8..3, 0..30),
            b in proptest::collection::vec(0u8..3, 0..30),
            shared in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let (a, b) = ([shared.as_slice(), &a].concat(), [shared.as_slice(), &b].concat());
            prop_assert_eq!(cmp_keys(&a, &b), a.cmp(&b));
            prop_assert_eq!(cmp_keys(&b, &a), b.cmp(&a));
            prop_assert_eq!(cmp_keys(&a, &a), std::cmp::Ordering::Equal);
        }
    }

    proptest! {
        #[test]
        fn radix_sort_orders_by_word_then_number(
            // Few distinct bytes at random positions: ties, and passes skipped or not.
            words in proptest::collection::vec(
                proptest::collection::vec((0usize..8, 0u8..4), 0..3), 0..1500),
        ) {
            let mut pairs: Vec<(u64, u32)> = words
                .iter()
                .enumerate()
                .map(|(i, bytes)| {
                    let w = bytes.iter().fold(0u64, |w, &(at, b)| w | u64::from(b) << (8 * at));
                    (w, i as u32)
                })
                .collect();
            let mut want = pairs.clone();
            want.sort_unstable();
            radix_sort_by_word(&mut pairs, &mut Vec::new());
            prop_assert_eq!(pairs, want);
        }

        #[test]
        fn radix_sort_high_bits_orders_by_those_bits_keeping_ties_in_order(
            // Few distinct digits at random positions: ties, and passes skipped or not; enough
            // words for the passes, and a few too few.
            words in proptest::collection::vec(
                proptest::collection::vec((0u32..64, 0u64..4), 0..3), 0..12_000),
            from_bit in 0u32..70,
        ) {
            let mut got: Vec<u64> = words
                .iter()
                .map(|bits| bits.iter().fold(0u64, |w, &(at, b)| w | b.rotate_left(at)))
                .collect();
            let mut want = got.clone();
            if from_bit < 64 {
                want.sort_by_key(|w| w >> from_bit);
            }
            radix_sort_high_bits(&mut got, &mut Vec::new(), from_bit);
            prop_assert_eq!(got, want);
        }
    }

    /// `key_hash` as first written (byte-wise tail copy), with seed 0: the order of every run
    /// file depends on it.
    fn key_hash_reference(key: &[u8]) -> u64 {
        let mut h = 0x9E37_79B9_7F4A_7C15u64 ^ key.len() as u64;
        let mut chunks = key.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x9FB2_1C65_1E98_DF25);
            h ^= h >> 29;
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x9FB2_1C65_1E98_DF25);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^= h >> 33;
        h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        h ^ (h >> 33)
    }

    #[test]
    fn key_hash_never_changes() {
        assert_eq!(key_hash(0, b""), 0x9ca0_66f1_a4ab_2eea);
        assert_eq!(key_hash(0, b"key-0123"), 0x2729_6223_2d90_dd5e);
        assert_eq!(key_hash(0, b"key-00000000000000ab"), 0x7d22_2342_a014_66bb);
        // The seed changes every hash.
        assert_ne!(key_hash(1, b"key-0123"), key_hash(0, b"key-0123"));
        assert_ne!(key_hash(1 << 63, b""), key_hash(0, b""));
        // Every length up to several chunks, every tail length, bytes with the high bit set.
        for len in 0..=40usize {
            let key: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(73).wrapping_add(0xF1))
                .collect();
            assert_eq!(key_hash(0, &key), key_hash_reference(&key), "length {len}");
        }
    }

    proptest! {
        #[test]
        fn key_hash_matches_its_first_definition(key in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(key_hash(0, &key), key_hash_reference(&key));
        }
    }

    proptest! {
        #[test]
        fn builder_bytes_do_not_depend_on_its_capacity(
            n in 0usize..300,
            announced in 0usize..400,
            key_bytes in 0usize..4000,
            seed in any::<u64>(),
        ) {
            let meta = RunMeta { first_lsn: 1, last_lsn: 1000, chain_crc: 7, epoch: 2, end: None, seed };
            let mut keys: Vec<(u64, Vec<u8>)> = (0..n)
                .map(|i| {
                    let k = format!("key-{i:05}").into_bytes();
                    (key_hash(seed, &k), k)
                })
                .collect();
            keys.sort();
            let val = |i: usize| (!i.is_multiple_of(5)).then_some(Slot {
                version: i as u64 + 1,
                location: Location { segment: 1, offset: 64 * i as u64 },
            });
            let build = |entries: usize, key_bytes: usize| {
                let mut b = RunBuilder::with_capacity(entries, key_bytes);
                for (i, (h, k)) in keys.iter().enumerate() {
                    b.push(*h, k, val(i));
                }
                b.finish(meta).expect("every change fits an entry")
            };
            let exact = build(n, keys.iter().map(|k| k.1.len()).sum());
            prop_assert!(build(announced, key_bytes) == exact);
            let run = Run::parse(Backing::Heap(exact.clone()), None, false).expect("a built run parses");
            prop_assert_eq!(run.len(), n);
            prop_assert_eq!(run.meta(), meta);
            for (i, (h, k)) in keys.iter().enumerate() {
                prop_assert_eq!(run.get(*h, k), Some(val(i)));
            }
            let absent = b"key-99999";
            prop_assert_eq!(run.get(key_hash(seed, absent), absent), None);
            let walked: Vec<(u64, Vec<u8>, Val)> = run.iter().map(|(h, k, v)| (h, k.get().to_vec(), v)).collect();
            let want: Vec<(u64, Vec<u8>, Val)> =
                keys.iter().enumerate().map(|(i, (h, k))| (*h, k.clone(), val(i))).collect();
            prop_assert_eq!(walked, want);
            // In key order from any key, across the 4 KiB blocks the checks cover.
            let mut by_key: Vec<(Vec<u8>, Val)> =
                keys.iter().enumerate().map(|(i, (_, k))| (k.clone(), val(i))).collect();
            by_key.sort_by(|a, b| a.0.cmp(&b.0));
            for from in [0, n / 3, n.saturating_sub(1), n] {
                let start = by_key.get(from).map_or_else(|| b"kez".to_vec(), |e| e.0.clone());
                let walked: Vec<(Vec<u8>, Val)> =
                    run.iter_keys_from(&start).map(|(_, k, v)| (k.get().to_vec(), v)).collect();
                prop_assert_eq!(&walked[..], &by_key[from..]);
            }
            // A damaged block is found by a walk that reaches it, never read as entries.
            if n > 200 {
                let mut bad = exact;
                // Entry 200 is past the first block (the header's, which parsing checks).
                bad[HEADER_LEN + 200 * ENTRY_LEN] ^= 1;
                let run = Run::parse(Backing::Heap(bad), None, false).expect("header intact");
                let walked: Vec<(u64, Vec<u8>, Val)> =
                    run.iter().map(|(h, k, v)| (h, k.get().to_vec(), v)).collect();
                prop_assert!(run.damaged());
                prop_assert_eq!(walked.len(), n);
                prop_assert!(walked.iter().any(|(h, k, v)| *h == 0 && k.is_empty() && v.is_none()));
                for (i, (h, k, v)) in walked.iter().enumerate() {
                    prop_assert!(k.is_empty() || (*h == keys[i].0 && *k == keys[i].1 && *v == val(i)));
                }
            }
        }
    }

    proptest! {
        /// The search from the hash's place against a linear one, with hashes spread evenly
        /// or bunched (many equal, all at one end), present or not.
        #[test]
        fn lower_bound_hash_finds_the_first_entry_at_least_the_hash(
            mut hashes in proptest::collection::vec(
                prop_oneof![any::<u64>(), 0u64..4, (u64::MAX - 3)..=u64::MAX, Just(1u64 << 63)],
                0..700,
            ),
            probes in proptest::collection::vec(any::<u64>(), 1..20),
        ) {
            hashes.sort();
            let meta = RunMeta { first_lsn: 1, last_lsn: 1, chain_crc: 0, epoch: 0, end: None, seed: 0 };
            let mut b = RunBuilder::with_capacity(hashes.len(), 0);
            for (i, &h) in hashes.iter().enumerate() {
                // Distinct keys among equal hashes, ascending.
                b.push(h, &(i as u32).to_be_bytes(), None);
            }
            let run = Run::parse(Backing::Heap(b.finish(meta).unwrap()), None, false).unwrap();
            let mut probes = probes;
            probes.extend(hashes.iter().step_by(7).copied());
            probes.extend([0, 1, 2, 3, u64::MAX, 1 << 63]);
            for p in probes {
                prop_assert_eq!(run.lower_bound_hash(p), hashes.partition_point(|&h| h < p), "hash {}", p);
            }
            for (i, &h) in hashes.iter().enumerate() {
                prop_assert_eq!(run.get(h, &(i as u32).to_be_bytes()), Some(None));
            }
        }
    }

    proptest! {
        #[test]
        fn latest_per_key_by_hash_keeps_each_keys_last_change_in_run_order(
            keys in proptest::collection::vec(proptest::collection::vec(0u8..3, 0..4), 0..300),
            bunched in any::<bool>(),
        ) {
            // Bunched: a hash that many distinct keys share (their length).
            let hash = |k: &[u8]| if bunched { k.len() as u64 } else { key_hash(9, k) };
            let mut sort = KeySort::default();
            let got = sort
                .latest_per_key_by_hash(keys.len(), |i| hash(&keys[i]), |i| keys[i].as_slice())
                .to_vec();
            let mut last = std::collections::BTreeMap::new();
            for (i, k) in keys.iter().enumerate() {
                last.insert((hash(k), k.clone()), i as u32);
            }
            let want: Vec<u32> = last.into_values().collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn latest_per_key_by_hash_orders_a_segments_worth_of_changes(
            seed in any::<u64>(),
            n in 8192usize..12_000,
            hashes in 0..4,
        ) {
            // Enough changes for the radix passes; keys drawn from a small set, so that many
            // change again. Hashes: whole, only low bits (distinct keys sharing their high
            // bits), a few values (long groups of distinct keys), or differing only between
            // the numbers' bits and the radix passes' (sorted as one group).
            let mut x = seed | 1;
            let keys: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    format!("k{}", x % 6000).into_bytes()
                })
                .collect();
            let hash = |k: &[u8]| match hashes {
                0 => key_hash(3, k),
                1 => key_hash(3, k) & 0x3FFF,
                2 => (key_hash(3, k) % 5) << 40,
                _ => (key_hash(3, k) & 0x1_FFFF) << 14,
            };
            let mut sort = KeySort::default();
            let got = sort
                .latest_per_key_by_hash(n, |i| hash(&keys[i]), |i| keys[i].as_slice())
                .to_vec();
            let mut last = std::collections::BTreeMap::new();
            for (i, k) in keys.iter().enumerate() {
                last.insert((hash(k), k.clone()), i as u32);
            }
            let want: Vec<u32> = last.into_values().collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn changes_that_do_not_fit_an_entry_are_refused() {
        let meta = RunMeta {
            first_lsn: 1,
            last_lsn: 10,
            chain_crc: 0,
            epoch: 0,
            end: None,
            seed: 0,
        };
        let slot = |version, segment, offset| {
            Some(Slot {
                version,
                location: Location { segment, offset },
            })
        };
        let build = |val: Val| {
            let mut b = RunBuilder::with_capacity(1, 1);
            b.push(key_hash(0, b"k"), b"k", val);
            b.finish(meta)
        };
        // At the limits: a record 2^32 - 1 LSNs into its segment, 4 GiB - 1 bytes in.
        let edge = slot(u64::from(u32::MAX) + 5, 5, u64::from(u32::MAX));
        let run = Run::parse(Backing::Heap(build(edge).unwrap()), None, false).unwrap();
        assert_eq!(run.get(key_hash(0, b"k"), b"k"), Some(edge));
        assert!(build(None).is_some());
        // Past them (no log writes these): refused, not stored wrong.
        assert!(build(slot(u64::from(u32::MAX) + 6, 5, 0)).is_none());
        assert!(build(slot(4, 5, 0)).is_none());
        assert!(build(slot(5, 5, 1 << 32)).is_none());
    }

    #[test]
    fn sort_keys_past_a_prefix_every_key_shares() {
        let keys: Vec<Vec<u8>> = [
            b"user/b9".as_slice(),
            b"user/",
            b"user/a",
            b"user/b",
            b"user/a",
        ]
        .iter()
        .map(|k| k.to_vec())
        .collect();
        assert_eq!(sort_keys(keys.len(), |i| &keys[i]), vec![1, 2, 4, 3, 0]);
        assert_eq!(latest_per_key(keys.len(), |i| &keys[i]), vec![1, 4, 3, 0]);
    }
}
