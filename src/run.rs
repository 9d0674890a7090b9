//! Sorted runs: the index's immutable layers, and its checkpoints on disk.
//!
//! A run holds, for a contiguous LSN range of the log, the last change each key received in that
//! range: the key's version and the location of its record, or a tombstone. Entries are sorted
//! by key, so a lookup is a binary search and runs merge in one sequential pass. On disk a run is
//! `DIR/index/<first_lsn:020>-<last_lsn:020>.run`, used in place through a read-only memory map
//! (or read into memory on a simulated file system); in memory, a run built by replaying log
//! records has the same bytes without a file.
//!
//! ```text
//! header (80 bytes, little-endian)
//!  0 [u8; 8] magic "seglogRN"          32 u64 epoch: highest epoch fenced in the range (0: none)
//!  8 u16     version = 3               40 u64 entry count n
//! 10 u16     reserved = 0              48 u64 key heap bytes
//! 12 u32     chain_crc at last_lsn     56 u64 bloom blocks b (64 bytes each)
//! 16 u64     first_lsn                 64 u64 segment of the record last_lsn   } both 0 when the
//! 24 u64     last_lsn                  72 u64 offset of the record last_lsn    } range ends a
//!                                                                                sealed segment
//! entries (n x 24 bytes, ascending by key, each key once)
//!  0 u40 key offset in the key heap    16 u32 version - segment: the record's segment is
//!  5 u16 key length                           named by its first LSN, and holds fewer than
//!  7 u8  1 = live, 2 = tombstone              2^32 records (segments <= 1 GiB)
//!  8 u64 version (LSN of the change)   20 u32 frame offset in the segment
//!  (a tombstone's version, segment and offset are 0)
//! key heap (the keys, concatenated)
//! bloom filter (b blocks of 512 bits; 6 bits a key, all in the block the key's hash picks)
//! block checksums (c = ceil(B / 4096) x u32): the CRC-32C of each 4096-byte block of the B
//!   bytes above (header included; the last block may be shorter)
//! trailer: u32 CRC-32C of the block checksums
//! ```
//!
//! # Invariants
//! - A run file is written whole to a temporary name, fsynced, renamed into place and its
//!   directory fsynced; it is never modified afterwards, only unlinked once a merged run that
//!   covers it is durable (or once it was found damaged and its range replayed). That is what
//!   makes mapping it sound (see [`crate::mapped`]).
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
//! - Readers never trust an entry beyond the checksum: every access is bounds-checked and a
//!   malformed entry reads as absent rather than panicking.

use crate::mapped::{self, Mapped};
use seglog_wal::Location;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const MAGIC: [u8; 8] = *b"seglogRN";
const VERSION: u16 = 3;
const HEADER_LEN: usize = 80;
const ENTRY_LEN: usize = 24;
/// Key heaps are addressed with 40 bits (1 TiB).
const MAX_KEY_HEAP: usize = 1 << 40;
const BLOCK_BYTES: usize = 64;
const BLOOM_BITS_PER_KEY: usize = 10;
const BLOOM_PROBES: u32 = 6;
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

impl KeySort {
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

/// The 64-bit hash the bloom filter uses. Part of the file format: it must never change.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    fn fmix(mut h: u64) -> u64 {
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^= h >> 33;
        h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        h ^ (h >> 33)
    }
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

/// The block a hash selects among `blocks`, and its probe bits.
fn bloom_bits(hash: u64, blocks: usize) -> (usize, impl Iterator<Item = usize>) {
    let block = (((hash >> 32) * blocks as u64) >> 32) as usize;
    let h1 = hash as u32;
    let h2 = ((hash >> 16) as u32) | 1;
    let bits = (0..BLOOM_PROBES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % 512) as usize);
    (block, bits)
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
const MAX_KEPT_BUFFER: usize = 64 << 20;

/// A thread's buffers for building runs, kept between runs (see
/// [`reuse_buffers_on_this_thread`]).
#[derive(Default)]
struct KeptBuffers {
    keep: bool,
    run: Vec<u8>,
    hashes: Vec<u64>,
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

/// Builds a run's bytes from entries given in ascending key order, in place: entries and keys
/// are written where the finished run has them, so finishing moves at most the keys (when
/// fewer entries came than announced) and never copies the run.
pub(crate) struct RunBuilder {
    /// The run: header (written by `finish`), room for `room` entries, then the keys.
    buf: Vec<u8>,
    /// Entries there is room for before the keys.
    room: usize,
    /// Entries pushed.
    n: usize,
    /// Key bytes pushed.
    key_len: usize,
    hashes: Vec<u64>,
    /// Set when a pushed change did not fit an entry (see [`RunBuilder::finish`]).
    unfit: bool,
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
}

impl RunBuilder {
    /// A builder for about `entries` entries with `key_bytes` bytes of keys in all; more fit,
    /// at the cost of moving the keys. On a thread that keeps its buffers, the last run's
    /// bytes are reused when they are large enough (their old contents are overwritten before
    /// anything reads them: `push` writes every byte of an entry and a key, and `finish`
    /// writes the header and zeroes the bloom filter). Else allocated zeroed and whole: the
    /// allocator hands out fresh zeroed pages untouched, so room left unused costs address
    /// space, not memory.
    pub(crate) fn with_capacity(entries: usize, key_bytes: usize) -> RunBuilder {
        let body =
            HEADER_LEN + entries * ENTRY_LEN + key_bytes + bloom_blocks(entries) * BLOCK_BYTES;
        // With the checksum table and trailer: `finish` then never reallocates.
        let len = body + body.div_ceil(CHECKED_BLOCK) * 4 + 4;
        let (kept, mut hashes) = KEPT.with(|k| {
            let mut k = k.borrow_mut();
            let run = if k.run.capacity() >= len {
                std::mem::take(&mut k.run)
            } else {
                Vec::new()
            };
            (run, std::mem::take(&mut k.hashes))
        });
        let buf = if kept.capacity() >= len {
            let mut b = kept;
            // Only bytes past the kept length are zeroed; the rest is overwritten.
            b.resize(len, 0);
            b
        } else {
            vec![0u8; len]
        };
        hashes.clear();
        hashes.reserve(entries);
        RunBuilder {
            buf,
            room: entries,
            n: 0,
            key_len: 0,
            hashes,
            unfit: false,
        }
    }

    /// Where the keys start while building.
    fn keys_at(&self) -> usize {
        HEADER_LEN + self.room * ENTRY_LEN
    }

    /// Appends the next entry; keys must come in strictly ascending order.
    pub(crate) fn push(&mut self, key: &[u8], val: Val) {
        debug_assert!(
            self.last_key().is_none_or(|k| k < key),
            "run keys out of order"
        );
        if self.n == self.room {
            // More entries than announced: move the keys up to make room.
            let more = self.room.max(64);
            let from = self.keys_at();
            let len = self.buf.len();
            self.buf.resize(len + more * ENTRY_LEN, 0);
            self.buf
                .copy_within(from..from + self.key_len, from + more * ENTRY_LEN);
            self.room += more;
        }
        let mut e = [0u8; ENTRY_LEN];
        e[0..8].copy_from_slice(&(self.key_len as u64).to_le_bytes());
        e[5..7].copy_from_slice(&(key.len() as u16).to_le_bytes());
        e[7] = TAG_DEAD;
        if let Some(slot) = val {
            // A segment holds fewer than 2^32 records and at most 1 GiB (`MAX_SEGMENT_SIZE`),
            // so both fit 32 bits for any record the log wrote.
            let since = slot.version.checked_sub(slot.location.segment);
            match (
                since.map(u32::try_from),
                u32::try_from(slot.location.offset),
            ) {
                (Some(Ok(since)), Ok(offset)) => {
                    e[7] = TAG_LIVE;
                    e[8..16].copy_from_slice(&slot.version.to_le_bytes());
                    e[16..20].copy_from_slice(&since.to_le_bytes());
                    e[20..24].copy_from_slice(&offset.to_le_bytes());
                }
                _ => self.unfit = true,
            }
        }
        if self.key_len + key.len() > MAX_KEY_HEAP || key.len() > usize::from(u16::MAX) {
            self.unfit = true;
        }
        let at = HEADER_LEN + self.n * ENTRY_LEN;
        self.buf[at..at + ENTRY_LEN].copy_from_slice(&e);
        let k_at = self.keys_at() + self.key_len;
        let k_end = k_at + key.len();
        if k_end > self.buf.len() {
            self.buf.resize(k_end, 0);
        }
        self.buf[k_at..k_end].copy_from_slice(key);
        self.key_len += key.len();
        self.n += 1;
        self.hashes.push(key_hash(key));
    }

    /// The key pushed last (checked in debug builds: runs must be sorted).
    fn last_key(&self) -> Option<&[u8]> {
        let at = HEADER_LEN + self.n.checked_sub(1)? * ENTRY_LEN;
        let (off, len) = key_place(self.buf.get(at..at + ENTRY_LEN)?)?;
        let k = self.keys_at() + off;
        self.buf.get(k..k + len)
    }

    /// The run's bytes; `None` when a pushed change did not fit an entry: a key heap past
    /// 1 TiB, or a record more than 2^32 LSNs past its segment's first or 4 GiB into it (a
    /// log never writes one).
    pub(crate) fn finish(mut self, meta: RunMeta) -> Option<Vec<u8>> {
        if self.unfit {
            return None;
        }
        let n = self.n;
        let keys_at = HEADER_LEN + n * ENTRY_LEN;
        let from = self.keys_at();
        if from != keys_at {
            self.buf.copy_within(from..from + self.key_len, keys_at);
        }
        let bloom_at = keys_at + self.key_len;
        let blocks = bloom_blocks(n);
        // Truncate, then zero-fill: the bloom's bytes may hold moved keys.
        self.buf.truncate(bloom_at);
        self.buf.resize(bloom_at + blocks * BLOCK_BYTES, 0);
        let bloom = &mut self.buf[bloom_at..];
        for &h in &self.hashes {
            let (block, bits) = bloom_bits(h, blocks);
            for bit in bits {
                bloom[block * BLOCK_BYTES + bit / 8] |= 1 << (bit % 8);
            }
        }
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
        h.extend_from_slice(&(blocks as u64).to_le_bytes());
        let end = meta.end.unwrap_or_default();
        h.extend_from_slice(&end.segment.to_le_bytes());
        h.extend_from_slice(&end.offset.to_le_bytes());
        self.buf[..HEADER_LEN].copy_from_slice(&h);
        let body_len = self.buf.len();
        self.buf
            .reserve_exact(body_len.div_ceil(CHECKED_BLOCK) * 4 + 4);
        for i in 0..body_len.div_ceil(CHECKED_BLOCK) {
            let block = &self.buf[i * CHECKED_BLOCK..body_len.min((i + 1) * CHECKED_BLOCK)];
            let crc = crc32c::crc32c(block);
            self.buf.extend_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32c::crc32c(&self.buf[body_len..]);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        let hashes = std::mem::take(&mut self.hashes);
        KEPT.with(|k| {
            let mut k = k.borrow_mut();
            if k.keep && hashes.capacity() * std::mem::size_of::<u64>() <= MAX_KEPT_BUFFER {
                k.hashes = hashes;
            }
        });
        Some(self.buf)
    }
}

/// Where the key of the entry bytes `e` is in the key heap: (offset, length).
fn key_place(e: &[u8]) -> Option<(usize, usize)> {
    let mut off = [0u8; 8];
    off[..5].copy_from_slice(e.get(0..5)?);
    let off = usize::try_from(u64::from_le_bytes(off)).ok()?;
    let len = usize::from(u16::from_le_bytes([*e.get(5)?, *e.get(6)?]));
    Some((off, len))
}

/// Bloom filter blocks for `n` keys.
fn bloom_blocks(n: usize) -> usize {
    (n * BLOOM_BITS_PER_KEY).div_ceil(BLOCK_BYTES * 8).max(1)
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
}

/// A sorted run (see the module docs).
pub(crate) struct Run {
    backing: Backing,
    meta: RunMeta,
    count: usize,
    keys_at: usize,
    keys_len: usize,
    bloom_at: usize,
    blocks: usize,
    /// Where the block checksums start (the end of the checked bytes).
    sums_at: usize,
    /// One bit a checked block: set once its checksum held.
    checked: Box<[AtomicU64]>,
    /// Set when a block's checksum failed: nothing this run says can be trusted.
    damaged: AtomicBool,
    /// The run's file once it is durable; `None` for a run that lives only in memory.
    path: Option<PathBuf>,
}

impl Run {
    /// Parses a run's bytes; `None` when they are not a well-formed run. `trusted` bytes (a run
    /// this process just built) count as checked; otherwise the header's block and the
    /// checksum table are checked now and every other block when first read.
    pub(crate) fn parse(backing: Backing, path: Option<PathBuf>, trusted: bool) -> Option<Run> {
        let b = backing.bytes();
        if b.len() < HEADER_LEN + 8 || b[..8] != MAGIC || b[8..10] != VERSION.to_le_bytes() {
            return None;
        }
        let count = usize::try_from(u64_at(b, 40)?).ok()?;
        let keys_len = usize::try_from(u64_at(b, 48)?).ok()?;
        let blocks = usize::try_from(u64_at(b, 56)?).ok()?;
        let keys_at = HEADER_LEN.checked_add(count.checked_mul(ENTRY_LEN)?)?;
        let bloom_at = keys_at.checked_add(keys_len)?;
        let sums_at = bloom_at.checked_add(blocks.checked_mul(BLOCK_BYTES)?)?;
        let sums = sums_at.div_ceil(CHECKED_BLOCK);
        if sums_at.checked_add(sums.checked_mul(4)?)?.checked_add(4)? != b.len() || blocks == 0 {
            return None;
        }
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
            },
            count,
            keys_at,
            keys_len,
            bloom_at,
            blocks,
            sums_at,
            checked,
            damaged: AtomicBool::new(false),
            path,
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

    /// True when the run is a durable file; false for one that lives only in memory.
    pub(crate) fn durable(&self) -> bool {
        self.path.is_some()
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

    /// The change of entry `i`.
    pub(crate) fn val(&self, i: usize) -> Val {
        val_of(self.entry(i)?)
    }

    /// The first entry whose key is at least `key`.
    pub(crate) fn lower_bound(&self, key: &[u8]) -> usize {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if cmp_keys(self.key(mid), key).is_lt() {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn may_contain(&self, key: &[u8]) -> bool {
        let (block, mut bits) = bloom_bits(key_hash(key), self.blocks);
        let at = self.bloom_at + block * BLOCK_BYTES;
        let Some(bloom) = self.checked(at..at + BLOCK_BYTES) else {
            return true;
        };
        bits.all(|bit| bloom[bit / 8] & (1 << (bit % 8)) != 0)
    }

    /// What this run says about `key`: `None` when it holds no entry for it, `Some(None)` for a
    /// tombstone, `Some(Some(slot))` for a live key.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Val> {
        if !self.may_contain(key) {
            return None;
        }
        let i = self.lower_bound(key);
        if i < self.count && self.key(i) == key {
            // A tombstone's (and a malformed entry's) change is `None`: the key reads deleted.
            Some(self.val(i))
        } else {
            None
        }
    }

    /// Entries from the first key at least `from`, in order.
    pub(crate) fn iter_from<'a>(&'a self, from: &[u8]) -> Cursor<'a> {
        Cursor {
            run: self,
            i: self.lower_bound(from),
            entries_ok: 0..0,
            keys_ok: 0..0,
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

/// A run's entries in key order (see [`Run::iter_from`]). A damaged or malformed entry reads
/// as an empty key with no change, as [`Run::key`] and [`Run::val`] have it.
pub(crate) struct Cursor<'a> {
    run: &'a Run,
    i: usize,
    /// The checked spans of entries and of keys last looked at (see [`Run::checked_in`]).
    entries_ok: std::ops::Range<usize>,
    keys_ok: std::ops::Range<usize>,
}

impl<'a> Iterator for Cursor<'a> {
    type Item = (&'a [u8], Val);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let run = self.run;
        if self.i >= run.count {
            return None;
        }
        let at = HEADER_LEN + self.i * ENTRY_LEN;
        self.i += 1;
        let Some(e) = run.checked_in(at..at + ENTRY_LEN, &mut self.entries_ok) else {
            return Some((&[], None));
        };
        let key = run
            .key_range(e)
            .and_then(|r| run.checked_in(r, &mut self.keys_ok))
            .unwrap_or_default();
        Some((key, val_of(e)))
    }
}

/// The change the entry bytes `e` hold: `None` for a tombstone (or a malformed entry).
fn val_of(e: &[u8]) -> Val {
    if e.get(7) != Some(&TAG_LIVE) {
        return None;
    }
    let version = u64_at(e, 8)?;
    Some(Slot {
        version,
        location: Location {
            segment: version.checked_sub(u64::from(u32_at(e, 16)?))?,
            offset: u64::from(u32_at(e, 20)?),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
    }

    /// `key_hash` as first written (byte-wise tail copy): the bloom bits of every run file
    /// ever written depend on it.
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
        assert_eq!(key_hash(b""), 0x9ca0_66f1_a4ab_2eea);
        assert_eq!(key_hash(b"key-0123"), 0x2729_6223_2d90_dd5e);
        assert_eq!(key_hash(b"key-00000000000000ab"), 0x7d22_2342_a014_66bb);
        // Every length up to several chunks, every tail length, bytes with the high bit set.
        for len in 0..=40usize {
            let key: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(73).wrapping_add(0xF1))
                .collect();
            assert_eq!(key_hash(&key), key_hash_reference(&key), "length {len}");
        }
    }

    proptest! {
        #[test]
        fn key_hash_matches_its_first_definition(key in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(key_hash(&key), key_hash_reference(&key));
        }
    }

    proptest! {
        #[test]
        fn builder_bytes_do_not_depend_on_its_capacity(
            n in 0usize..300,
            announced in 0usize..400,
            key_bytes in 0usize..4000,
        ) {
            let meta = RunMeta { first_lsn: 1, last_lsn: 1000, chain_crc: 7, epoch: 2, end: None };
            let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("key-{i:05}").into_bytes()).collect();
            let val = |i: usize| (!i.is_multiple_of(5)).then_some(Slot {
                version: i as u64 + 1,
                location: Location { segment: 1, offset: 64 * i as u64 },
            });
            let build = |entries: usize, key_bytes: usize| {
                let mut b = RunBuilder::with_capacity(entries, key_bytes);
                for (i, k) in keys.iter().enumerate() {
                    b.push(k, val(i));
                }
                b.finish(meta).expect("every change fits an entry")
            };
            let exact = build(n, keys.iter().map(Vec::len).sum());
            prop_assert!(build(announced, key_bytes) == exact);
            let run = Run::parse(Backing::Heap(exact.clone()), None, false).expect("a built run parses");
            prop_assert_eq!(run.len(), n);
            for (i, k) in keys.iter().enumerate() {
                prop_assert_eq!(run.get(k), Some(val(i)));
            }
            // Iteration from any key, across the 4 KiB blocks the checks cover.
            for from in [0, n / 3, n.saturating_sub(1), n] {
                let start = keys.get(from).cloned().unwrap_or_else(|| b"kez".to_vec());
                let walked: Vec<(Vec<u8>, Val)> =
                    run.iter_from(&start).map(|(k, v)| (k.to_vec(), v)).collect();
                let want: Vec<(Vec<u8>, Val)> =
                    (from..n).map(|i| (keys[i].clone(), val(i))).collect();
                prop_assert_eq!(walked, want);
            }
            // A damaged block is found by a walk that reaches it, never read as entries.
            if n > 200 {
                let mut bad = exact;
                // Entry 200 is past the first block (the header's, which parsing checks).
                bad[HEADER_LEN + 200 * ENTRY_LEN] ^= 1;
                let run = Run::parse(Backing::Heap(bad), None, false).expect("header intact");
                let walked: Vec<(Vec<u8>, Val)> =
                    run.iter_from(b"").map(|(k, v)| (k.to_vec(), v)).collect();
                prop_assert!(run.damaged());
                prop_assert_eq!(walked.len(), n);
                prop_assert!(walked.iter().any(|(k, v)| k.is_empty() && v.is_none()));
                for (i, (k, v)) in walked.iter().enumerate() {
                    prop_assert!(k.is_empty() || (*k == keys[i] && *v == val(i)));
                }
            }
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
        };
        let slot = |version, segment, offset| {
            Some(Slot {
                version,
                location: Location { segment, offset },
            })
        };
        let build = |val: Val| {
            let mut b = RunBuilder::with_capacity(1, 1);
            b.push(b"k", val);
            b.finish(meta)
        };
        // At the limits: a record 2^32 - 1 LSNs into its segment, 4 GiB - 1 bytes in.
        let edge = slot(u64::from(u32::MAX) + 5, 5, u64::from(u32::MAX));
        let run = Run::parse(Backing::Heap(build(edge).unwrap()), None, false).unwrap();
        assert_eq!(run.get(b"k"), Some(edge));
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
