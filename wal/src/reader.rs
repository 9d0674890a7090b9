//! Reading frames from segments: the segment cursor, the tail decision table, and [`WalReader`].
//!
//! A [`SegmentCursor`] walks one segment frame by frame, checking every frame's checksum, its LSN
//! (consecutive) and its chain link (`prev_crc` equals the previous frame's crc). Reads are
//! sequential and buffered in [`READ_CHUNK`]-byte chunks; each refill asks the OS for the next
//! [`PREFETCH_BYTES`], unless the caller asks for the whole segment itself
//! ([`WalReader::without_prefetch`], [`crate::Wal::prefetch_segment`]).
//!
//! [`WalReader`] walks segments in LSN order and never returns a record above its *limit*: the
//! durable (or, under `Never`, written) watermark of a live log, or the last LSN of the last
//! complete batch found by the tail scan of a read-only view. A frame at or below the limit that
//! does not check out is corruption and is returned as an error naming segment and offset; the
//! reader then stops.

use crate::error::{Error, Result};
use crate::format::{
    self, DurablePoint, Frame, FrameView, Location, Record, SegmentFooter, SegmentHeader,
    FLAG_BATCH_CONTINUES, FRAME_ALIGN, HEADER_LEN, RECORD_HEADER_LEN,
};
use crate::io::{Io, IoFile};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Sequential read size.
pub const READ_CHUNK: usize = 1 << 20;
/// Frames whose checksums a cursor checks in one batch (see [`SegmentCursor::check_ahead`]).
const CHECK_AHEAD: usize = 64;
/// How far past the current chunk a cursor asks the OS to read ahead.
pub const PREFETCH_BYTES: u64 = 4 << 20;

/// One step of a [`SegmentCursor`].
#[derive(Debug)]
pub(crate) enum Step {
    /// A frame that checks out, and links to the one before it. Its bytes are at
    /// `cursor.frame_bytes()` until the next call.
    Record(format::FrameView),
    /// Zero length or end of file at `offset`: nothing more written (yet).
    End { offset: u64 },
    /// A valid footer at `offset`.
    Footer { footer: SegmentFooter, offset: u64 },
    /// Bytes at `offset` that are not the next frame.
    Bad { offset: u64, reason: String },
}

/// Walks the frames of one segment.
pub(crate) struct SegmentCursor {
    pub path: PathBuf,
    file: Arc<dyn IoFile>,
    pub header: SegmentHeader,
    /// Read buffer: `buf[..end]` holds file bytes; the rest is room for the next read (kept
    /// allocated and initialised, so that a refill does not clear a chunk before reading it).
    buf: Vec<u8>,
    /// Bytes of `buf` that hold file data.
    end: usize,
    /// File offset of `buf[0]`.
    buf_off: u64,
    /// Index in `buf` of the next frame.
    pos: usize,
    /// Bytes of the last returned record frame, as `(start, len)` in `buf`.
    last: (usize, usize),
    /// LSN the next record must carry.
    pub expected_lsn: u64,
    /// Chain value the next record must link to.
    pub prev_crc: u32,
    /// File length when last looked at (refreshed at end of file: the active segment grows
    /// when it is not preallocated).
    known_len: u64,
    /// The durable point the header holds, if any (see [`DurablePoint`]).
    pub durable: Option<DurablePoint>,
    /// The header holds bytes where its durable point goes that are not one.
    pub durable_damaged: bool,
    /// Asks the OS for the chunks after the one it reads ([`PREFETCH_BYTES`]); off when the
    /// caller asks for the segment itself (see [`WalReader::without_prefetch`]).
    pub prefetch: bool,
    /// File offset up to which the buffered frames' checksums were found to match, in a batch
    /// (see [`SegmentCursor::check_ahead`]); 0 when none were. Reset whenever buffered bytes
    /// are read again.
    checked_to: u64,
}

impl SegmentCursor {
    /// Opens a segment and checks its header against the name's LSN.
    pub fn open(io: &dyn Io, path: &Path, name_lsn: u64) -> Result<Self> {
        let file = io.open_read(path).map_err(|e| Error::io("open", path, e))?;
        Self::with_file(file, path, name_lsn)
    }

    pub fn with_file(file: Arc<dyn IoFile>, path: &Path, name_lsn: u64) -> Result<Self> {
        let mut hdr = [0u8; HEADER_LEN];
        let n = read_full(&*file, &mut hdr, 0).map_err(|e| Error::io("read", path, e))?;
        let header = SegmentHeader::decode(&hdr[..n], path)?;
        let durable = DurablePoint::decode(&hdr[..n], header.first_lsn);
        let durable_damaged = DurablePoint::is_damaged(&hdr[..n], header.first_lsn);
        let known_len = file.file_len().map_err(|e| Error::io("stat", path, e))?;
        if header.first_lsn != name_lsn {
            return Err(Error::corrupt(
                path,
                0,
                format!(
                    "header says first LSN {} but the file name says {name_lsn}",
                    header.first_lsn
                ),
            ));
        }
        Ok(SegmentCursor {
            path: path.to_path_buf(),
            file,
            header,
            buf: Vec::new(),
            end: 0,
            buf_off: HEADER_LEN as u64,
            pos: 0,
            last: (0, 0),
            expected_lsn: header.first_lsn,
            prev_crc: header.prev_crc,
            known_len,
            durable,
            durable_damaged,
            prefetch: true,
            checked_to: 0,
        })
    }

    /// Moves to `point`, as if every frame before it had been read and checked: the next frame
    /// expected is at its `records_end`, with the LSN after its last and linking to its chain
    /// value. Only recovery does this, with the header's own durable point.
    pub(crate) fn skip_to(&mut self, point: DurablePoint) {
        self.buf_off = point.records_end;
        self.end = 0;
        self.pos = 0;
        self.last = (0, 0);
        self.expected_lsn = point.last_lsn + 1;
        self.prev_crc = point.chain_crc;
        self.checked_to = 0;
    }

    /// File offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.buf_off + self.pos as u64
    }

    /// Bytes of the record frame returned by the last `Step::Record`.
    pub fn frame_bytes(&self) -> &[u8] {
        &self.buf[self.last.0..self.last.0 + self.last.1]
    }

    /// Forgets buffered bytes from the current position on, so the next step reads the file
    /// again (used while tailing a segment that is still being written).
    pub fn forget_buffered(&mut self) {
        self.buf_off += self.pos as u64;
        self.end = 0;
        self.pos = 0;
        self.checked_to = 0;
    }

    /// Checks, in one batch, the checksums of the whole frames buffered from the next one on
    /// (up to [`CHECK_AHEAD`] of them, each at most [`format::BATCH_FRAME_MAX`] long), and
    /// records how far they match in `checked_to`: `step` then decodes those frames without
    /// computing their checksums again (see [`format::frames_check_out`] for why). Only the
    /// checksums: every other check of a frame is `step`'s, as before. Bytes that do not look
    /// like a frame end the batch; `step` finds out what they are.
    fn check_ahead(&mut self) {
        let mut frames = [(0usize, 0usize); CHECK_AHEAD];
        let mut n = 0;
        let mut at = self.pos;
        let limit = self.pos.saturating_add(self.room()).min(self.end);
        while n < CHECK_AHEAD && at + 4 <= limit {
            let len = u32::from_le_bytes([
                self.buf[at],
                self.buf[at + 1],
                self.buf[at + 2],
                self.buf[at + 3],
            ]) as usize;
            // The length is checked against the batch's bound before it is rounded up: a
            // damaged one near `u32::MAX` (the footer's tag among them) would overflow the
            // rounding where `usize` is 32 bits.
            if !(RECORD_HEADER_LEN..=format::BATCH_FRAME_MAX).contains(&len) {
                break;
            }
            let padded = format::align_up(len);
            if padded > format::BATCH_FRAME_MAX || padded > limit - at {
                break;
            }
            frames[n] = (at, padded);
            n += 1;
            at += padded;
        }
        let ok = format::frames_check_out(&self.buf, &frames[..n]);
        let upto = match ok.checked_sub(1) {
            Some(last) => frames[last].0 + frames[last].1,
            None => self.pos,
        };
        self.checked_to = self.buf_off + upto as u64;
    }

    /// Makes at least `need` bytes available from `pos`, reading more of the file; returns the
    /// bytes available (fewer at end of file).
    fn fill(&mut self, need: usize) -> Result<usize> {
        let avail = self.end - self.pos;
        if avail >= need {
            return Ok(avail);
        }
        // Move the unread tail to the front, then read behind it.
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.buf_off += self.pos as u64;
        self.pos = 0;
        let want = need.max(READ_CHUNK);
        // Ask for the chunks after this one now, so the disk reads them while we parse.
        if self.prefetch {
            let ahead = self.buf_off + (self.end + want) as u64;
            self.file.prefetch(ahead, PREFETCH_BYTES);
        }
        while self.end < need {
            let start = self.end;
            let upto = start.max(want);
            if self.buf.len() < upto {
                self.buf.resize(upto, 0);
            }
            let n = self
                .file
                .read_at(&mut self.buf[start..upto], self.buf_off + start as u64)
                .map_err(|e| Error::io("read", &self.path, e))?;
            self.end = start + n;
            if n == 0 {
                self.known_len = self
                    .file
                    .file_len()
                    .map_err(|e| Error::io("stat", &self.path, e))?;
                break;
            }
        }
        Ok(self.end)
    }

    /// Room a frame at the current offset may take: up to the larger of the preallocated
    /// capacity and the file length.
    fn room(&self) -> usize {
        let end = self.known_len.max(self.header.capacity);
        end.saturating_sub(self.offset()).min(usize::MAX as u64) as usize
    }

    /// Reads the next frame.
    #[inline]
    pub fn step(&mut self) -> Result<Step> {
        let offset = self.offset();
        let mut need = 4;
        loop {
            let avail = self.fill(need)?;
            if avail == 0 {
                return Ok(Step::End { offset });
            }
            let max_frame = self.room();
            if self.checked_to <= offset {
                self.check_ahead();
            }
            let crc_checked = offset < self.checked_to;
            match format::decode_frame_checked(
                &self.buf[self.pos..self.end],
                max_frame,
                crc_checked,
            ) {
                Frame::Incomplete { need: n } => {
                    // `fill(need)` already gave all the file had when `n <= need`.
                    if n <= need || self.fill(n)? < n {
                        return Ok(Step::Bad {
                            offset,
                            reason: "file ends inside a frame".into(),
                        });
                    }
                    need = n;
                }
                Frame::End => return Ok(Step::End { offset }),
                Frame::Footer(footer) => return Ok(Step::Footer { footer, offset }),
                Frame::Bad(reason) => {
                    return Ok(Step::Bad {
                        offset,
                        reason: reason.into(),
                    })
                }
                Frame::Record(v) => {
                    if v.lsn != self.expected_lsn {
                        return Ok(Step::Bad {
                            offset,
                            reason: format!(
                                "LSN {} where {} was expected",
                                v.lsn, self.expected_lsn
                            ),
                        });
                    }
                    if v.prev_crc != self.prev_crc {
                        return Ok(Step::Bad {
                            offset,
                            reason:
                                "checksum chain broken: record does not link to the previous one"
                                    .into(),
                        });
                    }
                    self.last = (self.pos, v.size);
                    self.pos += v.size;
                    self.expected_lsn += 1;
                    self.prev_crc = v.crc;
                    return Ok(Step::Record(v));
                }
            }
        }
    }

    /// Looks past a bad frame at `from` for any frame that checks out on its own and carries an
    /// LSN above `after_lsn`: evidence that the bad frame is damage inside the log, not a torn
    /// tail. Returns its offset.
    pub fn probe_valid_after(&self, from: u64, after_lsn: u64) -> Result<Option<u64>> {
        let len = self
            .file
            .file_len()
            .map_err(|e| Error::io("stat", &self.path, e))?;
        let mut off = (from + FRAME_ALIGN as u64) & !(FRAME_ALIGN as u64 - 1);
        let mut chunk = vec![0u8; READ_CHUNK + (1 << 16)];
        while off < len {
            let n = read_full(&*self.file, &mut chunk, off)
                .map_err(|e| Error::io("read", &self.path, e))?;
            if n == 0 {
                break;
            }
            let data = &chunk[..n];
            let mut i = 0;
            // Frames whose start lies in the first READ_CHUNK bytes are examined in this round.
            while i < n.min(READ_CHUNK) {
                if data[i..i + 4.min(n - i)].iter().any(|&b| b != 0) {
                    let room = (len - off - i as u64).min(usize::MAX as u64) as usize;
                    if let Frame::Record(v) = format::decode_frame(&data[i..], room) {
                        if v.lsn > after_lsn {
                            return Ok(Some(off + i as u64));
                        }
                    }
                }
                i += FRAME_ALIGN;
            }
            off += n.min(READ_CHUNK) as u64;
        }
        Ok(None)
    }

    /// True when every byte from `from` to the end of the file is zero; else the first offset that
    /// is not.
    pub fn first_nonzero_from(&self, from: u64) -> Result<Option<u64>> {
        first_nonzero(&*self.file, &self.path, from)
    }
}

/// Reads until `buf` is full or end of file; returns the bytes read.
pub(crate) fn read_full(file: &dyn IoFile, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// Offset of the first non-zero byte at or after `from`, if any.
pub(crate) fn first_nonzero(file: &dyn IoFile, path: &Path, from: u64) -> Result<Option<u64>> {
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut off = from;
    loop {
        let n = read_full(file, &mut chunk, off).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(i) = chunk[..n].iter().position(|&b| b != 0) {
            return Ok(Some(off + i as u64));
        }
        off += n as u64;
    }
}

/// Offset just past the last non-zero byte at or after `from` (equal to `from` when all zero).
pub(crate) fn nonzero_end(file: &dyn IoFile, path: &Path, from: u64) -> Result<u64> {
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut off = from;
    let mut end = from;
    loop {
        let n = read_full(file, &mut chunk, off).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            return Ok(end);
        }
        if let Some(i) = chunk[..n].iter().rposition(|&b| b != 0) {
            end = off + i as u64 + 1;
        }
        off += n as u64;
    }
}

/// How the written part of the last segment ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailState {
    /// At a zero length, at end of file, or at a footer: nothing to cut.
    Clean,
    /// A torn write after a crash: the bytes from `offset` are not a complete batch of valid
    /// records and no valid record follows them. Recovery cuts them.
    Torn {
        /// Where the cut starts.
        offset: u64,
        /// Why the frame there is not valid.
        reason: String,
        /// Records of an incomplete batch that the cut drops, as (first, last) LSN.
        lsns_cut: Option<(u64, u64)>,
    },
    /// A bad frame followed by a valid one, or a tail that contradicts the `CLOSED` marker:
    /// damage, not a crash. Strict recovery refuses to open.
    Corrupt {
        /// Where the damage is.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Result of scanning the last segment of a log (the decision table of docs/format.md).
#[derive(Debug, Clone)]
pub struct TailScan {
    /// Offset just past the last frame of the last complete batch.
    pub end_offset: u64,
    /// LSN of that frame (`first_lsn - 1` if none).
    pub last_lsn: u64,
    /// Chain value after it.
    pub chain_crc: u32,
    /// The footer, when the segment is sealed, and its offset.
    pub footer: Option<(SegmentFooter, u64)>,
    /// How it ends.
    pub state: TailState,
    /// Records seen.
    pub records: u64,
}

/// Scans a whole segment, classifying how it ends. `clean_end` is `Some((records_end, last_lsn))`
/// when a `CLOSED` marker says exactly where the log ended: then any other ending is corruption.
pub(crate) fn scan_tail(
    cursor: &mut SegmentCursor,
    clean_end: Option<(u64, u64)>,
) -> Result<TailScan> {
    // Position and chain after the last complete batch.
    let mut end_offset = cursor.offset();
    let mut last_lsn = cursor.expected_lsn - 1;
    let mut chain_crc = cursor.prev_crc;
    let mut records = 0u64;
    let mut batch_first: Option<u64> = None;
    let (footer, state) = loop {
        match cursor.step()? {
            Step::Record(v) => {
                records += 1;
                if v.flags & format::FLAG_BATCH_CONTINUES != 0 {
                    batch_first.get_or_insert(v.lsn);
                } else {
                    batch_first = None;
                    end_offset = cursor.offset();
                    last_lsn = v.lsn;
                    chain_crc = v.crc;
                }
            }
            Step::End { .. } => {
                if batch_first.is_some() {
                    break (
                        None,
                        torn(
                            end_offset,
                            "log ends inside a batch",
                            batch_first,
                            cursor.expected_lsn - 1,
                        ),
                    );
                }
                break (None, TailState::Clean);
            }
            Step::Footer { footer, offset } => {
                if batch_first.is_some() {
                    break (
                        None,
                        TailState::Corrupt {
                            offset,
                            reason: "footer inside a batch".into(),
                        },
                    );
                }
                if footer.last_lsn != last_lsn
                    || footer.chain_crc != chain_crc
                    || footer.first_lsn != cursor.header.first_lsn
                {
                    break (
                        None,
                        TailState::Corrupt {
                            offset,
                            reason: "footer does not match the records before it".into(),
                        },
                    );
                }
                break (Some((footer, offset)), TailState::Clean);
            }
            Step::Bad { offset, reason } => {
                // Damage inside the log if any valid record with a later LSN follows.
                if let Some(at) = cursor.probe_valid_after(offset, cursor.expected_lsn - 1)? {
                    break (
                        None,
                        TailState::Corrupt {
                            offset,
                            reason: format!("{reason}, and a valid record follows at offset {at}"),
                        },
                    );
                }
                break (
                    None,
                    torn(end_offset, &reason, batch_first, cursor.expected_lsn - 1),
                );
            }
        }
    };
    let mut state = state;
    if let Some((records_end, marker_lsn)) = clean_end {
        // The log was closed cleanly: the tail must be exactly where the marker says.
        if state != TailState::Clean || end_offset != records_end || last_lsn != marker_lsn {
            let reason = match &state {
                TailState::Corrupt { reason, .. } | TailState::Torn { reason, .. } => reason.clone(),
                TailState::Clean => format!("log ends at LSN {last_lsn} (offset {end_offset}) but was closed at LSN {marker_lsn} (offset {records_end})"),
            };
            state = TailState::Corrupt {
                offset: end_offset.min(records_end),
                reason,
            };
        }
    }
    Ok(TailScan {
        end_offset,
        last_lsn,
        chain_crc,
        footer,
        state,
        records,
    })
}

fn torn(offset: u64, reason: &str, batch_first: Option<u64>, last_seen: u64) -> TailState {
    TailState::Torn {
        offset,
        reason: reason.to_string(),
        lsns_cut: batch_first.map(|f| (f, last_seen)),
    }
}

/// Where a reader finds segments and how far it may read.
pub(crate) trait LogSource: Send + Sync {
    /// Segments as (first LSN, path), in LSN order.
    fn segments(&self) -> Vec<(u64, PathBuf)>;
    /// Highest LSN the reader may return now.
    fn limit(&self) -> u64;
    /// The file system.
    fn io(&self) -> &dyn Io;
}

/// A fixed limit (read-only views).
pub(crate) struct FixedLimit(pub u64);
/// A live watermark.
pub(crate) struct LiveLimit(pub Arc<AtomicU64>);

impl FixedLimit {
    fn get(&self) -> u64 {
        self.0
    }
}
impl LiveLimit {
    fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Iterates records from an LSN on, across segments, up to the source's limit.
///
/// Yields `Err` once on corruption or an I/O error, then ends. On a live log, `next()` returning
/// `None` means "nothing more yet": calling it again later returns records appended since.
pub struct WalReader {
    source: Arc<dyn LogSource>,
    from_lsn: u64,
    cursor: Option<SegmentCursor>,
    failed: bool,
    prefetch: bool,
}

impl WalReader {
    pub(crate) fn new(source: Arc<dyn LogSource>, from_lsn: u64) -> Self {
        WalReader {
            source,
            from_lsn: from_lsn.max(1),
            cursor: None,
            failed: false,
            prefetch: true,
        }
    }

    /// A reader that does not ask the OS to read ahead of it: for a caller that asks for the
    /// segments itself ([`crate::Wal::prefetch_segment`]), so that the disk reads one stream
    /// and not also the few MiB each reader would ask for. The OS's own read-ahead still runs.
    pub fn without_prefetch(mut self) -> Self {
        self.prefetch = false;
        if let Some(c) = self.cursor.as_mut() {
            c.prefetch = false;
        }
        self
    }

    /// Starts at `cursor`, already positioned in the segment holding `from_lsn` (see
    /// `Wal::reader_after`).
    pub(crate) fn start_at(&mut self, mut cursor: SegmentCursor) {
        cursor.prefetch = self.prefetch;
        self.cursor = Some(cursor);
    }

    /// LSN of the next record this reader will return (if it exists).
    pub fn next_lsn(&self) -> u64 {
        match &self.cursor {
            Some(c) => c.expected_lsn.max(self.from_lsn),
            None => self.from_lsn,
        }
    }

    /// Opens the segment holding `lsn` (the last one whose first LSN is at most `lsn`).
    fn open_segment_for(&self, lsn: u64) -> Result<Option<SegmentCursor>> {
        let segs = self.source.segments();
        let idx = match segs.iter().rposition(|(first, _)| *first <= lsn) {
            Some(i) => i,
            None if !segs.is_empty() => 0,
            None => return Ok(None),
        };
        let (first, path) = &segs[idx];
        let mut c = SegmentCursor::open(self.source.io(), path, *first)?;
        c.prefetch = self.prefetch;
        Ok(Some(c))
    }

    /// After a footer: opens the next segment, checking that it joins.
    fn open_next_segment(&self, after: &SegmentCursor) -> Result<Option<SegmentCursor>> {
        let segs = self.source.segments();
        let Some(pos) = segs
            .iter()
            .position(|(first, _)| *first > after.header.first_lsn)
        else {
            return Ok(None);
        };
        let (first, path) = &segs[pos];
        if *first != after.expected_lsn {
            return Err(Error::MissingSegment {
                after: after.path.clone(),
                last_lsn: after.expected_lsn - 1,
                next: path.clone(),
                next_first_lsn: *first,
            });
        }
        let mut c = SegmentCursor::open(self.source.io(), path, *first)?;
        c.prefetch = self.prefetch;
        if c.header.prev_crc != after.prev_crc {
            return Err(Error::corrupt(
                path,
                0,
                format!(
                    "segment does not continue the checksum chain of {}",
                    after.path.display()
                ),
            ));
        }
        Ok(Some(c))
    }

    /// Steps to the next record; its frame is then `self.cursor`'s `frame_bytes()`.
    #[inline]
    fn advance(&mut self) -> Result<Option<(FrameView, Location)>> {
        // Bytes buffered by an earlier call may predate writes the watermark now covers: the
        // first end or bad frame below the watermark is read again from disk before it counts.
        let mut reread = false;
        loop {
            let limit = self.source.limit();
            if self.next_lsn() > limit {
                return Ok(None);
            }
            if self.cursor.is_none() {
                self.cursor = self.open_segment_for(self.from_lsn)?;
                if self.cursor.is_none() {
                    return Ok(None);
                }
            }
            let Some(cursor) = self.cursor.as_mut() else {
                return Ok(None);
            };
            match cursor.step()? {
                Step::Record(v) => {
                    // v.lsn <= limit: the loop checked next_lsn() <= limit before stepping.
                    if v.lsn < self.from_lsn {
                        continue;
                    }
                    let location = Location {
                        segment: cursor.header.first_lsn,
                        offset: cursor.offset() - v.size as u64,
                    };
                    self.from_lsn = v.lsn + 1;
                    return Ok(Some((v, location)));
                }
                Step::Footer { footer, offset } => {
                    if footer.last_lsn != cursor.expected_lsn - 1
                        || footer.chain_crc != cursor.prev_crc
                    {
                        return Err(Error::corrupt(
                            &cursor.path,
                            offset,
                            "footer does not match the records before it",
                        ));
                    }
                    let cur = self.cursor.take().expect("cursor present: matched above");
                    match self.open_next_segment(&cur)? {
                        Some(next) => self.cursor = Some(next),
                        None => {
                            // The writer has not created the next segment yet.
                            self.from_lsn = cur.expected_lsn;
                            return Ok(None);
                        }
                    }
                }
                Step::End { offset } => {
                    if cursor.expected_lsn <= limit {
                        if !reread {
                            reread = true;
                            cursor.forget_buffered();
                            continue;
                        }
                        return Err(Error::corrupt(
                            &cursor.path,
                            offset,
                            format!("segment ends before LSN {limit}, which the log holds"),
                        ));
                    }
                    cursor.forget_buffered();
                    return Ok(None);
                }
                Step::Bad { offset, reason } => {
                    if cursor.expected_lsn <= limit {
                        if !reread {
                            reread = true;
                            cursor.forget_buffered();
                            continue;
                        }
                        return Err(Error::corrupt(&cursor.path, offset, reason));
                    }
                    cursor.forget_buffered();
                    return Ok(None);
                }
            }
        }
    }
}

impl WalReader {
    /// Steps to the next record and hands `f` its frame fields, its frame bytes and location;
    /// after an error, ends.
    fn step_with<R>(
        &mut self,
        f: impl FnOnce(FrameView, &[u8], Location) -> R,
    ) -> Option<Result<R>> {
        if self.failed {
            return None;
        }
        match self.advance() {
            Ok(Some((v, location))) => {
                // `advance` returned a record, so the cursor is present and holds its frame.
                let buf = self.cursor.as_ref().map_or(&[][..], |c| c.frame_bytes());
                Some(Ok(f(v, buf, location)))
            }
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    /// As [`Iterator::next`], but lends the record to `f` in the reader's buffer instead of
    /// copying its key and value (replay uses it: most records need only their key).
    pub fn next_with<R>(&mut self, f: impl FnOnce(RecordRef<'_>) -> R) -> Option<Result<R>> {
        self.step_with(|v, buf, location| {
            let k = RECORD_HEADER_LEN;
            f(RecordRef {
                lsn: v.lsn,
                kind: v.kind,
                key: buf.get(k..k + v.key_len).unwrap_or(&[]),
                value: buf
                    .get(k + v.key_len..k + v.key_len + v.value_len)
                    .unwrap_or(&[]),
                batch_continues: v.flags & FLAG_BATCH_CONTINUES != 0,
                location,
            })
        })
    }
}

/// A record lent by [`WalReader::next_with`]: key and value borrowed from the reader's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Log sequence number.
    pub lsn: u64,
    /// Caller-defined kind.
    pub kind: u8,
    /// Key bytes.
    pub key: &'a [u8],
    /// Value bytes.
    pub value: &'a [u8],
    /// True when more records of the same atomic batch follow.
    pub batch_continues: bool,
    /// Where the record's frame is.
    pub location: Location,
}

impl Iterator for WalReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step_with(|v, buf, location| v.to_record(buf, location))
    }
}

pub(crate) struct FixedSource {
    pub io: Arc<dyn Io>,
    pub segments: Vec<(u64, PathBuf)>,
    pub limit: FixedLimit,
}

impl LogSource for FixedSource {
    fn segments(&self) -> Vec<(u64, PathBuf)> {
        self.segments.clone()
    }
    fn limit(&self) -> u64 {
        self.limit.get()
    }
    fn io(&self) -> &dyn Io {
        &*self.io
    }
}

pub(crate) struct LiveSource {
    pub io: Arc<dyn Io>,
    pub segments: Arc<parking_lot::RwLock<Vec<(u64, PathBuf)>>>,
    pub limit: LiveLimit,
}

impl LogSource for LiveSource {
    fn segments(&self) -> Vec<(u64, PathBuf)> {
        self.segments.read().clone()
    }
    fn limit(&self) -> u64 {
        self.limit.get()
    }
    fn io(&self) -> &dyn Io {
        &*self.io
    }
}
