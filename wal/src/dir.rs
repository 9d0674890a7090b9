//! The data directory: what files it holds, the write lock, the `CLOSED` marker, and the
//! read-only view of a log ([`LogView`]) that recovery, `walctl` and readers start from.
//!
//! ```text
//! DIR/
//!   LOCK                        flock'd by the writer; holds its pid
//!   CLOSED                      present only after a clean close (format::ClosedMarker)
//!   00000000000000000001.seg    segments, named by first LSN
//!   00000000000000004097.seg
//!   next.seg.tmp                a segment being prepared (zero-filled) for the next roll
//!   index/                      the engine's index checkpoints (sorted run files)
//!   NNNNNNNNNNNNNNNNNNNN.seg.dropped
//!                               a segment after a gap, set aside by tail-tolerant recovery
//!                               (never read again; kept for the operator)
//! ```
//!
//! Invariants (docs/format.md, "Recovery"):
//! - Every segment but the last is sealed: its footer is the last bytes of the file. A segment
//!   is created only after the one before it was sealed and fsynced, so an unsealed non-last
//!   segment is damage, never a crash artefact.
//! - A visible segment always has a valid header: segments are prepared under a temporary name,
//!   their header written and fsynced, then renamed and the directory fsynced.
//! - While `CLOSED` exists, nothing was written since it was: a clean close writes it (temp
//!   file, fsync, rename, directory fsync) after every record is durable, and an open removes
//!   it (and fsyncs the directory) before it writes anything. Its end of the log stands for a
//!   scan of the last segment as a footer stands for one of a sealed segment.

use crate::error::{Error, Result};
use crate::format::{self, ClosedMarker, SegmentFooter, SegmentHeader, FOOTER_LEN, HEADER_LEN};
use crate::io::Io;
use crate::reader::{
    self, read_full, FixedLimit, FixedSource, SegmentCursor, TailScan, TailState, WalReader,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Lock file name.
pub const LOCK_FILE: &str = "LOCK";
/// Clean-close marker name.
pub const CLOSED_FILE: &str = "CLOSED";
/// Temporary name of a segment being prepared.
pub const SPARE_FILE: &str = "next.seg.tmp";
/// Subdirectory where the engine keeps index checkpoints (its contents are the engine's).
pub const INDEX_DIR: &str = "index";
const TMP_SUFFIX: &str = ".tmp";
/// Suffix of a segment that tail-tolerant recovery set aside (see `writer::recover`).
pub const DROPPED_SUFFIX: &str = ".dropped";

/// What one segment looks like on disk.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// Path of the file.
    pub path: PathBuf,
    /// Its header.
    pub header: SegmentHeader,
    /// Its footer when sealed.
    pub footer: Option<SegmentFooter>,
    /// File length in bytes.
    pub file_len: u64,
    /// Last LSN it holds (`first_lsn - 1` when empty). For the last segment: of the last
    /// complete batch found by the tail scan.
    pub last_lsn: u64,
    /// Offset where its frames end.
    pub records_end: u64,
}

impl SegmentInfo {
    /// First LSN (from the header, which matches the file name).
    pub fn first_lsn(&self) -> u64 {
        self.header.first_lsn
    }
    /// True when sealed.
    pub fn sealed(&self) -> bool {
        self.footer.is_some()
    }
    /// Records held.
    pub fn records(&self) -> u64 {
        self.last_lsn + 1 - self.header.first_lsn
    }
}

/// A consistent picture of a data directory, checked structurally without changing anything:
/// every segment's header, every sealed segment's footer and how consecutive segments join,
/// and a full scan of the last segment to find where its valid records end (recovery takes
/// that end from the `CLOSED` marker instead after a clean close, and starts the scan at the
/// segment's durable point after a crash: see [`LogView::open_after_close`]).
#[derive(Clone)]
pub struct LogView {
    /// The directory.
    pub dir: PathBuf,
    /// Segments in LSN order.
    pub segments: Vec<SegmentInfo>,
    /// How the last segment ends.
    pub tail: TailState,
    /// Chain value after the last valid record.
    pub chain_crc: u32,
    /// The `CLOSED` marker, when the log was closed cleanly.
    pub closed: Option<ClosedMarker>,
    /// Temporary files left by an interrupted segment preparation (removed by recovery).
    pub temp_files: Vec<PathBuf>,
    /// Segments set aside by tail-tolerant recovery after a gap (`*.seg.dropped`): not part of
    /// the log, kept for the operator.
    pub dropped: Vec<PathBuf>,
    io: Arc<dyn Io>,
}

impl LogView {
    /// Reads the directory. Corruption, a gap between segments or a foreign file is an error;
    /// a torn tail is not (it is reported in [`LogView::tail`]).
    pub fn open(io: Arc<dyn Io>, dir: &Path) -> Result<Self> {
        let (view, problem) = Self::open_prefix(io, dir)?;
        match problem {
            Some(e) => Err(e),
            None => Ok(view),
        }
    }

    /// Like [`LogView::open`], but after a clean close it takes the last segment's end from the
    /// `CLOSED` marker instead of scanning the segment, as it does for the sealed segments'
    /// ends from their footers (see [`LogView::trust_marker`]), and after a crash it scans the
    /// last segment from its header's durable point on (see `format::DurablePoint`). Recovery
    /// opens the log so; `walctl verify` and the other read-only views scan every frame.
    pub(crate) fn open_after_close(io: Arc<dyn Io>, dir: &Path) -> Result<Self> {
        let (view, problem) = Self::open_checked(io, dir, true)?;
        match problem {
            Some(e) => Err(e),
            None => Ok(view),
        }
    }

    /// Like [`LogView::open`], but on damage returns the view of the valid prefix before it
    /// together with the error, so `walctl dump` can print every good record and then fail.
    /// Errors reading the directory itself are returned as `Err`.
    pub fn open_prefix(io: Arc<dyn Io>, dir: &Path) -> Result<(Self, Option<Error>)> {
        Self::open_checked(io, dir, false)
    }

    /// [`LogView::open_prefix`]; with `trust_closed`, as [`LogView::open_after_close`].
    fn open_checked(
        io: Arc<dyn Io>,
        dir: &Path,
        trust_closed: bool,
    ) -> Result<(Self, Option<Error>)> {
        let names = io.list_dir(dir).map_err(|e| Error::io("list", dir, e))?;
        let mut problem: Option<Error> = None;
        let mut segs: Vec<(u64, PathBuf)> = Vec::new();
        let mut temp_files = Vec::new();
        let mut dropped = Vec::new();
        let mut closed_path = None;
        for name in names {
            let path = dir.join(&name);
            if let Some(lsn) = format::parse_segment_file_name(&name) {
                segs.push((lsn, path));
            } else if name == LOCK_FILE || name == INDEX_DIR {
            } else if is_dropped(&name) {
                dropped.push(path);
            } else if name == CLOSED_FILE {
                closed_path = Some(path);
            } else if name.ends_with(TMP_SUFFIX)
                && (name == SPARE_FILE || name.starts_with(CLOSED_FILE))
            {
                temp_files.push(path);
            } else {
                problem.get_or_insert(Error::ForeignFile {
                    path,
                    reason:
                        "seglog writes only segments (20-digit LSN + .seg), LOCK, CLOSED, index/ and set-aside segments (.seg.dropped) here"
                            .into(),
                });
            }
        }
        segs.sort();
        let closed = match closed_path {
            Some(p) => match read_marker(&*io, &p) {
                Ok(m) => Some(m),
                Err(e) => {
                    problem.get_or_insert(e);
                    None
                }
            },
            None => None,
        };
        let mut view = LogView {
            dir: dir.to_path_buf(),
            segments: Vec::new(),
            tail: TailState::Clean,
            chain_crc: 0,
            closed,
            temp_files,
            dropped,
            io: io.clone(),
        };
        if let Err(e) = view.load_segments(&segs, trust_closed) {
            problem.get_or_insert(e);
        }
        if view.segments.is_empty() && problem.is_none() {
            if let Some(m) = &view.closed {
                if m.last_lsn != 0 {
                    problem = Some(Error::corrupt(
                        dir.join(CLOSED_FILE),
                        0,
                        format!("log was closed at LSN {} but holds no segments", m.last_lsn),
                    ));
                }
            }
        }
        Ok((view, problem))
    }

    /// Checks segments in order, pushing each good one; on damage stops with the valid prefix
    /// loaded (a damaged segment's good records included, read up to the damage).
    fn load_segments(&mut self, segs: &[(u64, PathBuf)], trust_closed: bool) -> Result<()> {
        let io = self.io.clone();
        let count = segs.len();
        for (i, (lsn, path)) in segs.iter().enumerate() {
            let mut cursor = SegmentCursor::open(&*io, path, *lsn)?;
            // A durable point that is not one is damage, but in the last segment after a crash,
            // where power loss may have torn its write (recovery then scans the whole segment,
            // and the open writes a new one).
            if cursor.durable_damaged && (i + 1 < count || self.closed.is_some()) {
                return Err(Error::corrupt(
                    path,
                    format::HDR_DURABLE as u64,
                    "the durable point in the segment header fails its checksum",
                ));
            }
            if let Some(prev) = self.segments.last() {
                if prev.last_lsn + 1 != *lsn {
                    return Err(Error::MissingSegment {
                        after: prev.path.clone(),
                        last_lsn: prev.last_lsn,
                        next: path.clone(),
                        next_first_lsn: *lsn,
                    });
                }
                if cursor.header.prev_crc != self.chain_crc {
                    return Err(Error::corrupt(
                        path,
                        0,
                        format!(
                            "segment does not continue the checksum chain of {}",
                            prev.path.display()
                        ),
                    ));
                }
            }
            let file = io.open_read(path).map_err(|e| Error::io("open", path, e))?;
            let file_len = file.file_len().map_err(|e| Error::io("stat", path, e))?;
            if i + 1 < count {
                match read_footer_at_end(&*file, path, file_len)? {
                    Some(footer) if footer.first_lsn == *lsn => {
                        self.chain_crc = footer.chain_crc;
                        self.segments.push(SegmentInfo {
                            path: path.clone(),
                            header: cursor.header,
                            footer: Some(footer),
                            file_len,
                            last_lsn: footer.last_lsn,
                            records_end: file_len - FOOTER_LEN as u64,
                        });
                        continue;
                    }
                    _ => {
                        // Keep the good records before the damage visible, then fail.
                        let scan = reader::scan_tail(&mut cursor, None)?;
                        self.chain_crc = scan.chain_crc;
                        self.segments.push(SegmentInfo {
                            path: path.clone(),
                            header: cursor.header,
                            footer: None,
                            file_len,
                            last_lsn: scan.last_lsn,
                            records_end: scan.end_offset,
                        });
                        return Err(Error::corrupt(path, scan.end_offset, "segment is not sealed (no valid footer at its end) but later segments follow it"));
                    }
                }
            }
            if trust_closed {
                if let Some(scan) = self.trust_marker(&*file, path, &cursor, file_len)? {
                    self.push_tail(path, &cursor, file_len, &scan);
                    continue;
                }
            }
            // The last segment: scan every frame to find where the valid records end.
            let clean_end = match self.closed {
                Some(m) if m.segment_first_lsn == *lsn && m.file_len == file_len => {
                    Some((m.records_end, m.last_lsn))
                }
                Some(m) if m.segment_first_lsn == *lsn => {
                    let scan = reader::scan_tail(&mut cursor, None)?;
                    self.push_tail(path, &cursor, file_len, &scan);
                    return Err(Error::corrupt(
                        path,
                        file_len.min(m.file_len),
                        format!(
                            "segment is {file_len} bytes but was {} bytes when the log was closed",
                            m.file_len
                        ),
                    ));
                }
                Some(m) => {
                    let scan = reader::scan_tail(&mut cursor, None)?;
                    self.push_tail(path, &cursor, file_len, &scan);
                    return Err(Error::corrupt(
                        self.dir.join(CLOSED_FILE),
                        0,
                        format!(
                            "log was closed with segment {} last, but the last segment is {}",
                            format::segment_file_name(m.segment_first_lsn),
                            path.display()
                        ),
                    ));
                }
                None => None,
            };
            // Recovery after a crash starts at the header's durable point, when there is one
            // within the file: what lies before it is durable and unchanged since (see
            // `format::DurablePoint`), as a sealed segment's records are.
            let from_durable_point = |c: &mut SegmentCursor| {
                if trust_closed && clean_end.is_none() {
                    if let Some(p) = c.durable.filter(|p| p.records_end <= file_len) {
                        c.skip_to(p);
                    }
                }
            };
            from_durable_point(&mut cursor);
            let mut scan = reader::scan_tail(&mut cursor, clean_end)?;
            if clean_end.is_none() && matches!(scan.state, TailState::Corrupt { .. }) {
                // A writer may be appending right now: a frame read while it was being copied
                // looks bad while later, finished frames look valid. The writer only appends, so
                // such a frame checks out when read again; real damage does not.
                cursor = SegmentCursor::open(&*io, path, *lsn)?;
                from_durable_point(&mut cursor);
                scan = reader::scan_tail(&mut cursor, None)?;
            }
            self.push_tail(path, &cursor, file_len, &scan);
            if self.closed.is_some() && scan.state == TailState::Clean && scan.footer.is_none() {
                // Closed cleanly: the preallocated space after the records must be all zeros.
                if let Some(at) = cursor.first_nonzero_from(scan.end_offset)? {
                    return Err(Error::corrupt(
                        path,
                        at,
                        "non-zero bytes in the preallocated space after the last record",
                    ));
                }
            }
        }
        Ok(())
    }

    /// What a scan of the last segment would find, taken from the `CLOSED` marker, when the
    /// marker can stand for that scan (`path`, opened
    /// as `file` and `cursor`, `file_len` bytes): it names this segment and its length, its
    /// end is plausible for the segment (past the header, within the file, frame-aligned, room
    /// for the records it counts), nothing follows that end (the next frame's length is 0),
    /// and the segment has no footer. Otherwise the segment is scanned, which reports whatever
    /// disagrees with the marker as corruption.
    ///
    /// Why trusting it is sound: the marker is written, fsynced and renamed into place only
    /// after every record is durable, and the next open removes it (and fsyncs the directory)
    /// before it writes anything; so while it exists the log has not changed since it was
    /// written. What it does not cover is damage to the segment's bytes since: like damage in
    /// a sealed segment, whose records opening never reads either, that is found by the reader
    /// that reads them (every frame is checked) and by `walctl verify`, which scans as before.
    /// The scan read and checked the whole last segment: on a 64 MiB segment, 45 ms from the
    /// disk, most of the time a clean reopen took (docs/benchmarks.md).
    fn trust_marker(
        &self,
        file: &dyn crate::io::IoFile,
        path: &Path,
        cursor: &SegmentCursor,
        file_len: u64,
    ) -> Result<Option<TailScan>> {
        let Some(m) = self.closed else {
            return Ok(None);
        };
        let first = cursor.header.first_lsn;
        let records = m
            .last_lsn
            .checked_add(1)
            .and_then(|end| end.checked_sub(first));
        let room = m.records_end.checked_sub(HEADER_LEN as u64);
        let records = match (records, room) {
            (Some(r), Some(b))
                if r.checked_mul(format::RECORD_HEADER_LEN as u64)
                    .is_some_and(|need| need <= b) =>
            {
                r
            }
            _ => return Ok(None),
        };
        let plausible = m.segment_first_lsn == first
            && m.file_len == file_len
            && m.records_end <= file_len
            && m.records_end % format::FRAME_ALIGN as u64 == 0;
        if !plausible || read_footer_at_end(file, path, file_len)?.is_some() {
            return Ok(None);
        }
        let mut next = [0u8; 4];
        let n =
            read_full(file, &mut next, m.records_end).map_err(|e| Error::io("read", path, e))?;
        if next[..n] != [0u8; 4][..n] {
            return Ok(None);
        }
        Ok(Some(TailScan {
            end_offset: m.records_end,
            last_lsn: m.last_lsn,
            chain_crc: m.chain_crc,
            footer: None,
            state: TailState::Clean,
            records,
        }))
    }

    fn push_tail(&mut self, path: &Path, cursor: &SegmentCursor, file_len: u64, scan: &TailScan) {
        self.tail = scan.state.clone();
        self.chain_crc = scan.chain_crc;
        self.segments.push(SegmentInfo {
            path: path.to_path_buf(),
            header: cursor.header,
            footer: scan.footer.map(|(f, _)| f),
            file_len,
            last_lsn: scan.last_lsn,
            records_end: scan.footer.map_or(scan.end_offset, |(_, off)| off),
        });
    }

    /// First LSN held (1 for an empty log).
    pub fn first_lsn(&self) -> u64 {
        self.segments.first().map_or(1, |s| s.first_lsn())
    }

    /// Last valid LSN (0 for an empty log).
    pub fn last_lsn(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.last_lsn)
    }

    /// A reader over this view, from `from_lsn` up to [`LogView::last_lsn`]. It checks every
    /// record it reads, so it finds damage inside sealed segments that `open` does not read.
    pub fn reader(&self, from_lsn: u64) -> WalReader {
        let source = FixedSource {
            io: self.io.clone(),
            segments: self
                .segments
                .iter()
                .map(|s| (s.first_lsn(), s.path.clone()))
                .collect(),
            limit: FixedLimit(self.last_lsn()),
        };
        WalReader::new(Arc::new(source), from_lsn)
    }

    /// Fails when the tail is corrupt (`TailState::Corrupt`).
    pub fn check_tail(&self) -> Result<()> {
        match (&self.tail, self.segments.last()) {
            (TailState::Corrupt { offset, reason }, Some(s)) => {
                Err(Error::corrupt(&s.path, *offset, reason.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Everything a `verify` does: the structural checks of `open`, a corrupt tail, then every
    /// record of every segment read and checked. Returns the number of records read.
    pub fn verify_records(&self) -> Result<u64> {
        self.check_tail()?;
        let mut n = 0u64;
        for r in self.reader(self.first_lsn()) {
            r?;
            n += 1;
        }
        let expected = self.last_lsn() + 1 - self.first_lsn();
        if n != expected {
            let at = self
                .segments
                .last()
                .map(|s| s.path.clone())
                .unwrap_or_else(|| self.dir.clone());
            return Err(Error::corrupt(
                at,
                0,
                format!("read {n} records where the segments account for {expected}"),
            ));
        }
        Ok(n)
    }
}

impl std::fmt::Debug for LogView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogView")
            .field("dir", &self.dir)
            .field("segments", &self.segments)
            .field("tail", &self.tail)
            .field("closed", &self.closed)
            .field("io", &self.io.name())
            .finish()
    }
}

/// True for the name of a segment set aside by tail-tolerant recovery: a segment's name, then
/// [`DROPPED_SUFFIX`] and possibly a number that keeps it apart from an earlier one.
pub fn is_dropped(name: &str) -> bool {
    name.split_once(DROPPED_SUFFIX)
        .is_some_and(|(segment, rest)| {
            format::parse_segment_file_name(segment).is_some()
                && rest.strip_prefix('.').map_or(rest.is_empty(), |n| {
                    !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
                })
        })
}

fn read_marker(io: &dyn Io, p: &Path) -> Result<ClosedMarker> {
    let f = io.open_read(p).map_err(|e| Error::io("open", p, e))?;
    let mut b = vec![0u8; format::CLOSED_LEN + 1];
    let n = read_full(&*f, &mut b, 0).map_err(|e| Error::io("read", p, e))?;
    ClosedMarker::decode(&b[..n], p)
}

/// Reads the footer in the last `FOOTER_LEN` bytes of a file, if valid.
pub(crate) fn read_footer_at_end(
    file: &dyn crate::io::IoFile,
    path: &Path,
    file_len: u64,
) -> Result<Option<SegmentFooter>> {
    if file_len < (HEADER_LEN + FOOTER_LEN) as u64 {
        return Ok(None);
    }
    let mut b = [0u8; FOOTER_LEN];
    let at = file_len - FOOTER_LEN as u64;
    let n = read_full(file, &mut b, at).map_err(|e| Error::io("read", path, e))?;
    Ok(if n == FOOTER_LEN {
        SegmentFooter::decode(&b)
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use super::is_dropped;

    #[test]
    fn dropped_segment_names_are_recognised_and_nothing_else() {
        for ok in [
            "00000000000000000001.seg.dropped",
            "00000000000000004097.seg.dropped.2",
        ] {
            assert!(is_dropped(ok), "{ok}");
        }
        for not in [
            "00000000000000000001.seg",
            "00000000000000000001.seg.dropped.",
            "00000000000000000001.seg.dropped.x",
            "00000000000000000001.seg.droppedx",
            "1.seg.dropped",
            "notes.seg.dropped",
            ".seg.dropped",
        ] {
            assert!(!is_dropped(not), "{not}");
        }
    }
}
