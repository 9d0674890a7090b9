//! The on-disk format: segment header, record frame, segment footer, closed marker.
//!
//! `docs/format.md` is the specification; this module is its only implementation. Offsets are
//! constants derived from each other so the code and the document cannot drift apart quietly.
//! Little-endian everywhere.
//!
//! ```text
//! segment file  NNNNNNNNNNNNNNNNNNNN.seg   (20-digit first LSN: names sort by LSN)
//! +----------------+--------+--------+-----+--------+----------------------------+
//! | header (64 B)  | frame  | frame  | ... | frame  | zeros (preallocated) | footer |
//! +----------------+--------+--------+-----+--------+----------------------------+
//!                                                    ^ active: zeros up to capacity
//!                                                    ^ sealed: footer, then EOF
//!
//! frame (8-byte aligned)
//!  0  u32 frame_len     header + key + value, unpadded; 0 = end (preallocated space)
//!  4  u32 crc           crc32c(bytes[0..4] ++ bytes[8..padded_len])  (covers prev_crc)
//!  8  u32 prev_crc      crc of the previous record in the log (the chain link)
//! 12  u8  kind          caller-defined record kind
//! 13  u8  flags         bit 0: BATCH_CONTINUES; other bits must be zero
//! 14  u16 key_len
//! 16  u64 lsn
//! 24  u64 timestamp_us  microseconds since the Unix epoch
//! 32  key, value, zero padding to a multiple of 8
//! ```
//!
//! Invariants:
//! - A frame's `crc` covers its `prev_crc`, which is the previous frame's `crc`: the crc of the
//!   last record identifies the whole log prefix up to it (the *chain value*).
//! - LSNs are strictly consecutive across the whole log; the chain value entering a segment is
//!   stored in its header so each segment can be checked alone.
//! - A batch is a run of frames whose flags have `BATCH_CONTINUES` on all but the last; a run
//!   without its last frame is an incomplete batch and is never returned.

use crate::error::{Error, Result};
use std::path::Path;

/// Magic bytes opening every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"seglogWL";
/// Current format version (header field). Version history is in docs/format.md.
pub const FORMAT_VERSION: u16 = 2;
/// Oldest format version this build reads (version 1 differs only in having no durable point).
pub const OLDEST_FORMAT_VERSION: u16 = 1;

/// Segment header length in bytes.
pub const HEADER_LEN: usize = 64;
const HDR_MAGIC: usize = 0;
const HDR_VERSION: usize = HDR_MAGIC + 8;
const HDR_HEADER_LEN: usize = HDR_VERSION + 2;
const HDR_RESERVED0: usize = HDR_HEADER_LEN + 2;
const HDR_FIRST_LSN: usize = HDR_RESERVED0 + 4;
const HDR_CREATED: usize = HDR_FIRST_LSN + 8;
const HDR_CAPACITY: usize = HDR_CREATED + 8;
const HDR_PREV_CRC: usize = HDR_CAPACITY + 8;
/// Where the header's durable point is (see [`DurablePoint`]).
pub const HDR_DURABLE: usize = HDR_PREV_CRC + 4;
const HDR_CRC: usize = HEADER_LEN - 4;
/// Bytes of the durable point: records end (u32), records (u32), chain value (u32), its CRC.
pub const DURABLE_LEN: usize = 16;
const _: () = assert!(HDR_DURABLE + DURABLE_LEN == HDR_CRC);

/// Record frame header length in bytes.
pub const RECORD_HEADER_LEN: usize = 32;
const REC_LEN: usize = 0;
const REC_CRC: usize = REC_LEN + 4;
const REC_PREV_CRC: usize = REC_CRC + 4;
const REC_KIND: usize = REC_PREV_CRC + 4;
const REC_FLAGS: usize = REC_KIND + 1;
const REC_KEY_LEN: usize = REC_FLAGS + 1;
const REC_LSN: usize = REC_KEY_LEN + 2;
const REC_TIMESTAMP: usize = REC_LSN + 8;
const _: () = assert!(REC_TIMESTAMP + 8 == RECORD_HEADER_LEN);

/// Frames start at multiples of this.
pub const FRAME_ALIGN: usize = 8;
/// Flag bit: more records of the same atomic batch follow.
pub const FLAG_BATCH_CONTINUES: u8 = 0x01;
const KNOWN_FLAGS: u8 = FLAG_BATCH_CONTINUES;
/// Longest key the frame can carry.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;

/// Footer length in bytes.
pub const FOOTER_LEN: usize = 40;
/// The value in the `frame_len` slot that marks a footer. Larger than any frame can be
/// (segments are at most [`MAX_SEGMENT_SIZE`]).
pub const FOOTER_TAG: u32 = 0xFFFF_FFFF;
const FTR_TAG: usize = 0;
const FTR_CRC: usize = FTR_TAG + 4;
const FTR_FIRST_LSN: usize = FTR_CRC + 4;
const FTR_LAST_LSN: usize = FTR_FIRST_LSN + 8;
const FTR_COUNT: usize = FTR_LAST_LSN + 8;
const FTR_CHAIN: usize = FTR_COUNT + 8;
const FTR_RESERVED: usize = FTR_CHAIN + 4;
const _: () = assert!(FTR_RESERVED + 4 == FOOTER_LEN);

/// Smallest segment size accepted.
pub const MIN_SEGMENT_SIZE: u64 = 4096;
/// Largest segment size accepted (keeps every frame length far below [`FOOTER_TAG`]).
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;

/// Magic of the `CLOSED` marker written on clean close.
pub const CLOSED_MAGIC: [u8; 8] = *b"seglogCL";
/// Length of the `CLOSED` marker.
pub const CLOSED_LEN: usize = 48;

/// Extension of segment files.
pub const SEGMENT_EXT: &str = "seg";

/// `crc32c` over a frame or footer: bytes `[0..4]` then `[8..end]`; bytes `[4..8]` hold it.
fn framed_crc(buf: &[u8]) -> u32 {
    let c = crc32c::crc32c(&buf[0..4]);
    crc32c::crc32c_append(c, &buf[8..])
}

/// Frames at most this long (padded) are checked in batches by [`frames_check_out`]; longer
/// ones are checked alone, by `crc32c`'s own three-way parallel loop.
pub(crate) const BATCH_FRAME_MAX: usize = 2048;

/// How many of `frames` (each `(start, padded length)` of a whole record frame in `buf`, at
/// most [`BATCH_FRAME_MAX`] long) check out against the checksum they carry, counting from the
/// first up to the first that does not.
///
/// Why batches: a record's checksum is one chain of dependent `crc32` instructions (about
/// three cycles each, eight bytes at a time), so a frame of a few hundred bytes waits on that
/// latency end to end: at 232-byte frames it was 14% of a replay's CPU. Four frames' chains
/// interleaved keep the instruction's pipeline full (see `crc4`). Every frame is still
/// checked, against the same `framed_crc` as [`decode_frame`]'s (a test compares them).
pub(crate) fn frames_check_out(buf: &[u8], frames: &[(usize, usize)]) -> usize {
    let frame = |&(start, len): &(usize, usize)| &buf[start..start + len];
    let mut ok = 0;
    for group in frames.chunks(4) {
        let crcs = match group {
            [a, b, c, d] => crc4([frame(a), frame(b), frame(c), frame(d)]),
            _ => {
                let mut crcs = [0u32; 4];
                for (crc, f) in crcs.iter_mut().zip(group) {
                    *crc = framed_crc(frame(f));
                }
                crcs
            }
        };
        for (f, crc) in group.iter().zip(crcs) {
            if u32_at(frame(f), REC_CRC) != crc {
                return ok;
            }
            ok += 1;
        }
    }
    ok
}

/// [`framed_crc`] of four frames (each at least [`RECORD_HEADER_LEN`] bytes, a multiple of
/// [`FRAME_ALIGN`]), their chains interleaved where the CPU has the `crc32` instruction.
fn crc4(f: [&[u8]; 4]) -> [u32; 4] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: `crc4_sse42` only needs SSE 4.2, which the CPU was just found to have.
        return unsafe { crc4_sse42(f) };
    }
    f.map(framed_crc)
}

/// [`crc4`] with SSE 4.2's `crc32` instruction: `crc32c` of bytes `[0..4]` then `[8..]` of
/// each frame, the four chains advanced together over their common length, then each alone.
/// The intrinsics take and return plain integers; what they need is the instruction, hence
/// `unsafe` (see the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc4_sse42(f: [&[u8]; 4]) -> [u32; 4] {
    use std::arch::x86_64::{_mm_crc32_u32, _mm_crc32_u64};
    // `crc32c(x)` is the raw CRC of `x` from `!0`, inverted; `crc32c_append(c, y)` continues
    // from `!c`: so `framed_crc` is the raw CRC of `[0..4]` then `[8..]`, inverted once.
    let mut c = [0u64; 4];
    for k in 0..4 {
        c[k] = u64::from(_mm_crc32_u32(!0, u32_at(f[k], REC_LEN)));
    }
    let word = |b: &[u8], i: usize| u64_at(b, 8 + 8 * i);
    let words = f.map(|b| (b.len() - 8) / FRAME_ALIGN);
    let common = words.iter().copied().min().unwrap_or(0);
    for i in 0..common {
        c[0] = _mm_crc32_u64(c[0], word(f[0], i));
        c[1] = _mm_crc32_u64(c[1], word(f[1], i));
        c[2] = _mm_crc32_u64(c[2], word(f[2], i));
        c[3] = _mm_crc32_u64(c[3], word(f[3], i));
    }
    for k in 0..4 {
        for i in common..words[k] {
            c[k] = _mm_crc32_u64(c[k], word(f[k], i));
        }
    }
    c.map(|c| !(c as u32))
}

/// Rounds `n` up to the frame alignment.
pub const fn align_up(n: usize) -> usize {
    (n + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// Bytes a record with this key and value occupies on disk, padding included.
pub const fn frame_size(key_len: usize, value_len: usize) -> usize {
    align_up(RECORD_HEADER_LEN + key_len + value_len)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The fixed header at offset 0 of every segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// LSN of the first record this segment holds (or will hold).
    pub first_lsn: u64,
    /// Creation time, microseconds since the Unix epoch.
    pub created_unix_us: u64,
    /// Preallocated size of the file when it was created.
    pub capacity: u64,
    /// Chain value entering the segment: the crc of the log's previous record (0 at the start).
    pub prev_crc: u32,
}

/// The header's checksum: over its bytes before the checksum, with the durable point's taken as
/// zeros (the point is rewritten in place and carries its own checksum, see [`DurablePoint`]).
fn header_crc(b: &[u8]) -> u32 {
    let c = crc32c::crc32c(&b[..HDR_DURABLE]);
    crc32c::crc32c_append(c, &[0u8; DURABLE_LEN])
}

impl SegmentHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[HDR_MAGIC..HDR_MAGIC + 8].copy_from_slice(&SEGMENT_MAGIC);
        b[HDR_VERSION..HDR_VERSION + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[HDR_HEADER_LEN..HDR_HEADER_LEN + 2].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        b[HDR_FIRST_LSN..HDR_FIRST_LSN + 8].copy_from_slice(&self.first_lsn.to_le_bytes());
        b[HDR_CREATED..HDR_CREATED + 8].copy_from_slice(&self.created_unix_us.to_le_bytes());
        b[HDR_CAPACITY..HDR_CAPACITY + 8].copy_from_slice(&self.capacity.to_le_bytes());
        b[HDR_PREV_CRC..HDR_PREV_CRC + 4].copy_from_slice(&self.prev_crc.to_le_bytes());
        let crc = header_crc(&b);
        b[HDR_CRC..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header read from `path`.
    pub fn decode(b: &[u8], path: &Path) -> Result<Self> {
        if b.len() < HEADER_LEN {
            return Err(Error::corrupt(
                path,
                0,
                format!(
                    "file is {} bytes, shorter than the {HEADER_LEN}-byte segment header",
                    b.len()
                ),
            ));
        }
        if b[HDR_MAGIC..HDR_MAGIC + 8] != SEGMENT_MAGIC {
            return Err(Error::ForeignFile {
                path: path.into(),
                reason: "it does not start with the seglog segment magic".into(),
            });
        }
        let stored = u32_at(b, HDR_CRC);
        if header_crc(b) != stored {
            return Err(Error::corrupt(path, 0, "segment header checksum mismatch"));
        }
        let version = u16_at(b, HDR_VERSION);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(Error::corrupt(path, HDR_VERSION as u64, format!("unsupported format version {version} (this build reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION})")));
        }
        if usize::from(u16_at(b, HDR_HEADER_LEN)) != HEADER_LEN {
            return Err(Error::corrupt(
                path,
                HDR_HEADER_LEN as u64,
                "unexpected header length",
            ));
        }
        Ok(SegmentHeader {
            first_lsn: u64_at(b, HDR_FIRST_LSN),
            created_unix_us: u64_at(b, HDR_CREATED),
            capacity: u64_at(b, HDR_CAPACITY),
            prev_crc: u32_at(b, HDR_PREV_CRC),
        })
    }
}

/// A point of the active segment that an fdatasync has made durable, kept in its header (bytes
/// [`HDR_DURABLE`]..+[`DURABLE_LEN`]) so that recovery can start its scan there instead of at
/// the first record.
///
/// ```text
///  0 u32 records_end   offset just past the point's last frame
///  4 u32 records       frames before it in the segment (its last LSN is first_lsn + records - 1)
///  8 u32 chain_crc     chain value after that frame
/// 12 u32 crc           CRC-32C of the segment's first_lsn (u64 LE) then bytes 0..12
/// ```
///
/// Why trusting it is sound: it is written (in place, never fsynced by itself) only after the
/// fdatasync that made every byte before `records_end` durable returned, and those bytes never
/// change afterwards (a recovery cuts only after where it starts scanning). So after a crash or
/// a power loss, and in a copy that read the file front to back (rsync, cp, tar: the header
/// first, and every byte before the point was written before the header said so), the bytes
/// before the point are the records it describes. A torn or stale point fails its CRC or
/// describes an earlier durable point: either way no wrong end. Damage to those bytes since
/// is found by the readers that read them, as in a sealed segment. All zeros: no point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurablePoint {
    /// Offset just past the point's last frame.
    pub records_end: u64,
    /// LSN of that frame.
    pub last_lsn: u64,
    /// Chain value after it.
    pub chain_crc: u32,
}

impl DurablePoint {
    fn crc(first_lsn: u64, b: &[u8]) -> u32 {
        crc32c::crc32c_append(crc32c::crc32c(&first_lsn.to_le_bytes()), &b[..12])
    }

    /// Encodes the point of a segment whose first LSN is `first_lsn`; `None` when it covers no
    /// frame or does not fit (a segment holds at most 1 GiB, so it always does for a point the
    /// log took).
    pub fn encode(&self, first_lsn: u64) -> Option<[u8; DURABLE_LEN]> {
        let end = u32::try_from(self.records_end).ok()?;
        let records = u32::try_from(self.last_lsn.checked_add(1)?.checked_sub(first_lsn)?).ok()?;
        if records == 0 {
            return None;
        }
        let mut b = [0u8; DURABLE_LEN];
        b[0..4].copy_from_slice(&end.to_le_bytes());
        b[4..8].copy_from_slice(&records.to_le_bytes());
        b[8..12].copy_from_slice(&self.chain_crc.to_le_bytes());
        let crc = Self::crc(first_lsn, &b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        Some(b)
    }

    /// True when the header's bytes `b` hold a point (its bytes are not all zero) that
    /// [`DurablePoint::decode`] does not accept: torn by a crash while the segment was active,
    /// or damaged.
    pub fn is_damaged(b: &[u8], first_lsn: u64) -> bool {
        b.get(HDR_DURABLE..HDR_DURABLE + DURABLE_LEN)
            .is_some_and(|p| p.iter().any(|&x| x != 0))
            && Self::decode(b, first_lsn).is_none()
    }

    /// The point in a header's bytes `b` (at least [`HEADER_LEN`]) of a segment whose first LSN
    /// is `first_lsn`: `None` when there is none, it fails its CRC, or it could not be a point
    /// of a segment (before the first frame, not frame-aligned, fewer bytes than its frames).
    pub fn decode(b: &[u8], first_lsn: u64) -> Option<Self> {
        let p = b.get(HDR_DURABLE..HDR_DURABLE + DURABLE_LEN)?;
        if p.iter().all(|&x| x == 0) || Self::crc(first_lsn, p) != u32_at(p, 12) {
            return None;
        }
        let records_end = u64::from(u32_at(p, 0));
        let records = u64::from(u32_at(p, 4));
        let plausible = records > 0
            && records_end % FRAME_ALIGN as u64 == 0
            && records_end >= HEADER_LEN as u64 + records * RECORD_HEADER_LEN as u64;
        if !plausible {
            return None;
        }
        Some(DurablePoint {
            records_end,
            last_lsn: first_lsn.checked_add(records - 1)?,
            chain_crc: u32_at(p, 8),
        })
    }
}

/// Written after the last frame when a segment seals; the file ends right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentFooter {
    /// Same as the header's.
    pub first_lsn: u64,
    /// LSN of the last record (`first_lsn - 1` for an empty segment).
    pub last_lsn: u64,
    /// Number of records (always `last_lsn + 1 - first_lsn`; stored as a cross-check).
    pub record_count: u64,
    /// Chain value after the last record.
    pub chain_crc: u32,
}

impl SegmentFooter {
    /// Encodes the footer.
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[FTR_TAG..FTR_TAG + 4].copy_from_slice(&FOOTER_TAG.to_le_bytes());
        b[FTR_FIRST_LSN..FTR_FIRST_LSN + 8].copy_from_slice(&self.first_lsn.to_le_bytes());
        b[FTR_LAST_LSN..FTR_LAST_LSN + 8].copy_from_slice(&self.last_lsn.to_le_bytes());
        b[FTR_COUNT..FTR_COUNT + 8].copy_from_slice(&self.record_count.to_le_bytes());
        b[FTR_CHAIN..FTR_CHAIN + 4].copy_from_slice(&self.chain_crc.to_le_bytes());
        let crc = framed_crc(&b);
        b[FTR_CRC..FTR_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a footer; `None` when the bytes are not a valid footer.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < FOOTER_LEN || u32_at(b, FTR_TAG) != FOOTER_TAG {
            return None;
        }
        let b = &b[..FOOTER_LEN];
        if framed_crc(b) != u32_at(b, FTR_CRC) || u32_at(b, FTR_RESERVED) != 0 {
            return None;
        }
        let f = SegmentFooter {
            first_lsn: u64_at(b, FTR_FIRST_LSN),
            last_lsn: u64_at(b, FTR_LAST_LSN),
            record_count: u64_at(b, FTR_COUNT),
            chain_crc: u32_at(b, FTR_CHAIN),
        };
        (f.last_lsn.wrapping_add(1).wrapping_sub(f.first_lsn) == f.record_count).then_some(f)
    }
}

/// A record as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Log sequence number.
    pub lsn: u64,
    /// Microseconds since the Unix epoch, taken when the record was appended.
    pub timestamp_us: u64,
    /// Caller-defined kind.
    pub kind: u8,
    /// Key bytes (may be empty).
    pub key: Vec<u8>,
    /// Value bytes.
    pub value: Vec<u8>,
    /// This record's crc: the chain value of the log prefix ending here.
    pub crc: u32,
    /// True when more records of the same atomic batch follow.
    pub batch_continues: bool,
    /// Where the record's frame is.
    pub location: Location,
}

/// Where a record's frame lives: the segment (by its first LSN) and the frame's byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    /// First LSN of the segment (its file name).
    pub segment: u64,
    /// Offset of the frame in the segment file.
    pub offset: u64,
}

/// A record to append. Borrowed so callers need not copy their buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Caller-defined kind (the engine uses it for put, delete, epoch).
    pub kind: u8,
    /// Key bytes, at most [`MAX_KEY_LEN`].
    pub key: &'a [u8],
    /// Value bytes.
    pub value: &'a [u8],
}

impl<'a> Entry<'a> {
    /// An entry of kind 0 with this key and value.
    pub fn new(key: &'a [u8], value: &'a [u8]) -> Self {
        Entry {
            kind: 0,
            key,
            value,
        }
    }
}

/// Appends the frame for `entry` to `out` and returns its crc (the new chain value).
///
/// The caller has checked `entry.key.len() <= MAX_KEY_LEN`.
pub fn encode_frame(
    out: &mut Vec<u8>,
    entry: &Entry<'_>,
    lsn: u64,
    timestamp_us: u64,
    prev_crc: u32,
    flags: u8,
) -> u32 {
    let frame_len = RECORD_HEADER_LEN + entry.key.len() + entry.value.len();
    let padded = align_up(frame_len);
    let start = out.len();
    out.resize(start + padded, 0);
    let b = &mut out[start..];
    b[REC_LEN..REC_LEN + 4].copy_from_slice(&(frame_len as u32).to_le_bytes());
    b[REC_PREV_CRC..REC_PREV_CRC + 4].copy_from_slice(&prev_crc.to_le_bytes());
    b[REC_KIND] = entry.kind;
    b[REC_FLAGS] = flags;
    b[REC_KEY_LEN..REC_KEY_LEN + 2].copy_from_slice(&(entry.key.len() as u16).to_le_bytes());
    b[REC_LSN..REC_LSN + 8].copy_from_slice(&lsn.to_le_bytes());
    b[REC_TIMESTAMP..REC_TIMESTAMP + 8].copy_from_slice(&timestamp_us.to_le_bytes());
    let k = RECORD_HEADER_LEN;
    b[k..k + entry.key.len()].copy_from_slice(entry.key);
    b[k + entry.key.len()..frame_len].copy_from_slice(entry.value);
    let crc = framed_crc(b);
    b[REC_CRC..REC_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    crc
}

/// What lies at a frame position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A frame that checks out on its own (its crc covers everything in it). The caller still
    /// checks the LSN and the chain link against what came before.
    Record(FrameView),
    /// A zero length: preallocated space, the end of the written part.
    End,
    /// A valid footer.
    Footer(SegmentFooter),
    /// The buffer ends before the frame does; `need` bytes from the frame start are required.
    Incomplete {
        /// Bytes needed from the frame start.
        need: usize,
    },
    /// Not a valid frame.
    Bad(&'static str),
}

/// Fields of a self-consistent frame, with the position of key and value in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameView {
    /// Padded size of the frame.
    pub size: usize,
    /// LSN.
    pub lsn: u64,
    /// Timestamp.
    pub timestamp_us: u64,
    /// Kind.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Frame crc.
    pub crc: u32,
    /// Chain link: crc of the previous record.
    pub prev_crc: u32,
    /// Key length.
    pub key_len: usize,
    /// Value length.
    pub value_len: usize,
}

impl FrameView {
    /// Builds the owned record from the buffer `buf` the frame was decoded from.
    pub fn to_record(&self, buf: &[u8], location: Location) -> Record {
        let k = RECORD_HEADER_LEN;
        Record {
            lsn: self.lsn,
            timestamp_us: self.timestamp_us,
            kind: self.kind,
            key: buf[k..k + self.key_len].to_vec(),
            value: buf[k + self.key_len..k + self.key_len + self.value_len].to_vec(),
            crc: self.crc,
            batch_continues: self.flags & FLAG_BATCH_CONTINUES != 0,
            location,
        }
    }
}

/// Decodes the frame at the start of `buf`. `max_frame` bounds a plausible frame length (the
/// room left in the segment). Pure: no I/O, never panics on any input.
pub fn decode_frame(buf: &[u8], max_frame: usize) -> Frame {
    decode_frame_checked(buf, max_frame, false)
}

/// [`decode_frame`], without computing the record's checksum again when `crc_checked` says
/// [`frames_check_out`] found this very frame's bytes to match it (every other check is
/// made).
#[inline]
pub(crate) fn decode_frame_checked(buf: &[u8], max_frame: usize, crc_checked: bool) -> Frame {
    if buf.len() < 4 {
        return Frame::Incomplete { need: 4 };
    }
    let len = u32_at(buf, REC_LEN);
    if len == 0 {
        return Frame::End;
    }
    if len == FOOTER_TAG {
        if buf.len() < FOOTER_LEN {
            return Frame::Incomplete { need: FOOTER_LEN };
        }
        return match SegmentFooter::decode(buf) {
            Some(f) => Frame::Footer(f),
            None => Frame::Bad("footer checksum mismatch"),
        };
    }
    let len = len as usize;
    if len < RECORD_HEADER_LEN {
        return Frame::Bad("frame length shorter than the record header");
    }
    let padded = align_up(len);
    if padded > max_frame {
        return Frame::Bad("frame length runs past the end of the segment");
    }
    if buf.len() < padded {
        return Frame::Incomplete { need: padded };
    }
    let b = &buf[..padded];
    let crc = u32_at(b, REC_CRC);
    if !crc_checked && framed_crc(b) != crc {
        return Frame::Bad("record checksum mismatch");
    }
    let flags = b[REC_FLAGS];
    if flags & !KNOWN_FLAGS != 0 {
        return Frame::Bad("unknown record flags");
    }
    let key_len = usize::from(u16_at(b, REC_KEY_LEN));
    if RECORD_HEADER_LEN + key_len > len {
        return Frame::Bad("key length exceeds the frame");
    }
    Frame::Record(FrameView {
        size: padded,
        lsn: u64_at(b, REC_LSN),
        timestamp_us: u64_at(b, REC_TIMESTAMP),
        kind: b[REC_KIND],
        flags,
        crc,
        prev_crc: u32_at(b, REC_PREV_CRC),
        key_len,
        value_len: len - RECORD_HEADER_LEN - key_len,
    })
}

/// State recorded in the `CLOSED` marker on clean close: where the log ended, exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedMarker {
    /// Last LSN in the log (0 when empty).
    pub last_lsn: u64,
    /// First LSN (file name) of the last segment.
    pub segment_first_lsn: u64,
    /// Offset in that segment where the written frames end.
    pub records_end: u64,
    /// Length of that segment file.
    pub file_len: u64,
    /// Chain value after the last record.
    pub chain_crc: u32,
}

impl ClosedMarker {
    /// Encodes the marker.
    pub fn encode(&self) -> [u8; CLOSED_LEN] {
        let mut b = [0u8; CLOSED_LEN];
        b[0..8].copy_from_slice(&CLOSED_MAGIC);
        b[8..16].copy_from_slice(&self.last_lsn.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_first_lsn.to_le_bytes());
        b[24..32].copy_from_slice(&self.records_end.to_le_bytes());
        b[32..40].copy_from_slice(&self.file_len.to_le_bytes());
        b[40..44].copy_from_slice(&self.chain_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b[..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a marker read from `path`.
    pub fn decode(b: &[u8], path: &Path) -> Result<Self> {
        if b.len() != CLOSED_LEN
            || b[0..8] != CLOSED_MAGIC
            || crc32c::crc32c(&b[..44]) != u32_at(b, 44)
        {
            return Err(Error::corrupt(path, 0, "CLOSED marker is damaged"));
        }
        Ok(ClosedMarker {
            last_lsn: u64_at(b, 8),
            segment_first_lsn: u64_at(b, 16),
            records_end: u64_at(b, 24),
            file_len: u64_at(b, 32),
            chain_crc: u32_at(b, 40),
        })
    }
}

/// File name of the segment whose first LSN is `first_lsn`.
pub fn segment_file_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.{SEGMENT_EXT}")
}

/// Parses a segment file name back to its first LSN.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(key: &[u8], value: &[u8], lsn: u64, prev: u32) -> (Vec<u8>, u32) {
        let mut v = Vec::new();
        let crc = encode_frame(
            &mut v,
            &Entry {
                kind: 7,
                key,
                value,
            },
            lsn,
            99,
            prev,
            0,
        );
        (v, crc)
    }

    #[test]
    fn frame_roundtrips_and_is_aligned() {
        let (buf, crc) = one(b"k", b"value", 5, 0xdead);
        assert_eq!(buf.len() % FRAME_ALIGN, 0);
        assert_eq!(buf.len(), frame_size(1, 5));
        let Frame::Record(v) = decode_frame(&buf, 1 << 20) else {
            panic!("not a record")
        };
        let r = v.to_record(&buf, Location::default());
        assert_eq!(
            (r.lsn, r.kind, r.key.as_slice(), r.value.as_slice(), r.crc),
            (5, 7, &b"k"[..], &b"value"[..], crc)
        );
        assert_eq!(v.prev_crc, 0xdead);
    }

    proptest::proptest! {
        /// Frames checked in a batch: as many check out as do one by one, up to the first
        /// that does not, whatever their lengths (four at a time share only their common
        /// length) and wherever the damaged one is.
        #[test]
        fn a_batch_checks_out_exactly_the_frames_that_do_alone(
            lens in proptest::collection::vec(0usize..300, 0..14),
            damage in proptest::option::of((0usize..14, 0usize..400, 0u8..8)),
        ) {
            let mut buf = Vec::new();
            let mut frames = Vec::new();
            for (i, &len) in lens.iter().enumerate() {
                let (f, _) = one(b"key", &vec![i as u8; len], i as u64 + 1, 7);
                frames.push((buf.len(), f.len()));
                buf.extend_from_slice(&f);
            }
            if let Some((frame, byte, bit)) = damage {
                if let Some(&(start, len)) = frames.get(frame) {
                    buf[start + byte % len] ^= 1 << bit;
                }
            }
            let alone = frames
                .iter()
                .take_while(|&&(start, len)| {
                    framed_crc(&buf[start..start + len]) == u32_at(&buf[start..], REC_CRC)
                })
                .count();
            proptest::prop_assert_eq!(frames_check_out(&buf, &frames), alone);
        }
    }

    #[test]
    fn chained_crc_depends_on_previous_record() {
        let (_, a) = one(b"k", b"v", 1, 0);
        let (_, b) = one(b"k", b"v", 1, 1);
        assert_ne!(a, b);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let (buf, _) = one(b"key", b"some value", 3, 42);
        for bit in 0..buf.len() * 8 {
            let mut c = buf.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            match decode_frame(&c, 1 << 20) {
                Frame::Record(_) => panic!("bit {bit} flip validated"),
                Frame::End | Frame::Footer(_) | Frame::Incomplete { .. } | Frame::Bad(_) => {}
            }
        }
    }

    #[test]
    fn torn_frame_shapes() {
        let (buf, _) = one(b"key", &[9u8; 100], 3, 42);
        // Fewer than 4 bytes: incomplete.
        assert!(matches!(
            decode_frame(&buf[..3], 1 << 20),
            Frame::Incomplete { .. }
        ));
        // Header present, body cut: incomplete.
        assert!(matches!(
            decode_frame(&buf[..40], 1 << 20),
            Frame::Incomplete { .. }
        ));
        // Zero length: end.
        assert_eq!(decode_frame(&[0u8; 64], 1 << 20), Frame::End);
        // Length too large for the room left: bad.
        assert!(matches!(decode_frame(&buf, 64), Frame::Bad(_)));
        // The tail of the frame zeroed (lost write): checksum mismatch.
        let mut z = buf.clone();
        let n = z.len();
        z[n - 20..].fill(0);
        assert!(matches!(decode_frame(&z, 1 << 20), Frame::Bad(_)));
    }

    #[test]
    fn footer_and_header_roundtrip() {
        let f = SegmentFooter {
            first_lsn: 10,
            last_lsn: 19,
            record_count: 10,
            chain_crc: 5,
        };
        let e = f.encode();
        assert_eq!(decode_frame(&e, 1 << 20), Frame::Footer(f));
        let mut bad = e;
        bad[20] ^= 1;
        assert!(matches!(decode_frame(&bad, 1 << 20), Frame::Bad(_)));
        let h = SegmentHeader {
            first_lsn: 10,
            created_unix_us: 1,
            capacity: 4096,
            prev_crc: 9,
        };
        assert_eq!(
            SegmentHeader::decode(&h.encode(), Path::new("x")).unwrap(),
            h
        );
    }

    /// The durable point: it round-trips; a header holding one still decodes (its checksum
    /// leaves the point out) and a version-1 header (no point) too; it is bound to its
    /// segment's first LSN; a flipped bit, all zeros or an impossible end mean none.
    #[test]
    fn durable_point_roundtrips_outside_the_header_checksum() {
        let h = SegmentHeader {
            first_lsn: 10,
            created_unix_us: 1,
            capacity: 1 << 20,
            prev_crc: 9,
        };
        let p = DurablePoint {
            records_end: HEADER_LEN as u64 + 5 * 80,
            last_lsn: 14,
            chain_crc: 77,
        };
        let mut b = h.encode();
        assert_eq!(
            DurablePoint::decode(&b, 10),
            None,
            "a new header holds none"
        );
        b[HDR_DURABLE..HDR_DURABLE + DURABLE_LEN].copy_from_slice(&p.encode(10).unwrap());
        assert_eq!(SegmentHeader::decode(&b, Path::new("x")).unwrap(), h);
        assert_eq!(DurablePoint::decode(&b, 10), Some(p));
        assert_eq!(DurablePoint::decode(&b, 11), None, "another segment's");
        for bit in 0..DURABLE_LEN * 8 {
            let mut f = b;
            f[HDR_DURABLE + bit / 8] ^= 1 << (bit % 8);
            assert_eq!(DurablePoint::decode(&f, 10), None, "bit {bit}");
            assert!(SegmentHeader::decode(&f, Path::new("x")).is_ok());
        }
        // More frames than bytes for them, or an end inside the header: impossible.
        for bad in [
            DurablePoint {
                records_end: 100,
                ..p
            },
            DurablePoint {
                records_end: 40,
                last_lsn: 10,
                ..p
            },
        ] {
            let mut f = b;
            f[HDR_DURABLE..HDR_DURABLE + DURABLE_LEN].copy_from_slice(&bad.encode(10).unwrap());
            assert_eq!(DurablePoint::decode(&f, 10), None, "{bad:?}");
        }
        let mut v1 = h.encode();
        v1[HDR_VERSION..HDR_VERSION + 2].copy_from_slice(&1u16.to_le_bytes());
        let crc = header_crc(&v1);
        v1[HDR_CRC..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&v1, Path::new("x")).unwrap(), h);
        let mut v3 = v1;
        v3[HDR_VERSION..HDR_VERSION + 2].copy_from_slice(&3u16.to_le_bytes());
        let crc = header_crc(&v3);
        v3[HDR_CRC..].copy_from_slice(&crc.to_le_bytes());
        assert!(SegmentHeader::decode(&v3, Path::new("x")).is_err());
    }

    #[test]
    fn segment_names_sort_by_lsn() {
        assert_eq!(parse_segment_file_name(&segment_file_name(123)), Some(123));
        assert!(segment_file_name(9) < segment_file_name(10));
        assert_eq!(parse_segment_file_name("123.seg"), None);
    }
}
