//! Memory maps: read-only ones of sealed segments and run files, and the writable one of a
//! run file being built ([`BuildMap`]). Every `unsafe` of the engine is in this module
//! (the maps, and hints at the end: cache prefetches, a huge-page request and a thread's CPU
//! priority).
//!
//! # Why the maps are sound
//! `memmap2::Mmap::map` is unsafe because the bytes behind a map can change, or vanish (a
//! truncation turns reads into SIGBUS), while Rust code holds a `&[u8]` to them. The maps here
//! cover **sealed** segments only, and seglog keeps these invariants:
//! - a sealed segment is never written again: the writer only appends to the active segment,
//!   and sealing (footer, cut to size, fsync) completes before the segment counts as sealed
//!   (`Wal::sealed_segment_path` answers only then);
//! - nothing in seglog truncates or rewrites a sealed segment in place: recovery cuts only the
//!   last, unsealed segment; compaction (to come) writes new files and unlinks old ones, and an
//!   unlinked file stays mapped intact until the map is dropped;
//! - the data directory belongs to seglog (docs/operations.md): another process truncating a
//!   segment file is outside the contract.
//!
//! Even so, nothing read through a map is trusted: a frame is returned only when its checksum
//! and LSN hold, exactly as for `pread`.
//!
//! The index's run files (see [`crate::run`]) are mapped under the same rules: a run file is
//! written whole under a temporary name, fsynced and renamed into place, never written again,
//! and only unlinked (never truncated) once a merged run replaces it; every run is checksummed
//! when it is opened and every access to it is bounds-checked. A large run is built in its
//! temporary file through a writable map ([`BuildMap`]), which is dropped before the file is
//! cut to size and renamed: nothing maps a run file for reading while it is written.

use crate::error::{Error, Result};
use memmap2::Mmap;
use parking_lot::RwLock;
use seglog_wal::format::{self, Frame};
use seglog_wal::{Location, Record, Wal};
use std::collections::HashMap;
use std::sync::Arc;

/// A read-only map of an immutable file (a run file of the index).
pub(crate) struct Mapped(Mmap);

impl Mapped {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Asks the OS to read `range` of the file now (`MADV_WILLNEED`), so that the first touch
    /// of it does not fault in the default read-around instead (8 MiB on this machine's disk,
    /// for a few bytes). A hint: an error is ignored.
    pub(crate) fn will_need(&self, range: std::ops::Range<usize>) {
        let len = range.end.saturating_sub(range.start);
        if len > 0 && range.end <= self.0.len() {
            let _ = self
                .0
                .advise_range(memmap2::Advice::WillNeed, range.start, len);
        }
    }
}

/// Maps the run file at `path`.
pub(crate) fn map_file(path: &std::path::Path) -> std::io::Result<Mapped> {
    let file = std::fs::File::open(path)?;
    // SAFETY: run files are immutable once renamed into place and are only ever unlinked, never
    // truncated or rewritten (module docs): the mapped bytes stay as they are while the map
    // lives (an unlinked file stays mapped intact). The caller checksums the bytes before use.
    let map = unsafe { Mmap::map(&file) }?;
    Ok(Mapped(map))
}

/// A read-write map of a run file being built: the output of a merge or flush too large for
/// a heap buffer (see `run::RunBuilder`), built in the page cache, where the file's bytes end
/// up anyway, instead of in anonymous memory as large as the run (a merge of the largest runs
/// is about the whole index: at 100 M keys, gigabytes of heap held while it lasts).
///
/// Sound (see the module docs) because the file is this builder's own: a temporary name in
/// the index directory, created (truncated) by it, renamed into place only after
/// [`BuildMap::finish`] has dropped the map, and never mapped by anyone else under that name;
/// the only truncations (`set_len`) happen with no map alive. Its blocks are allocated
/// (`fallocate`) before a byte of the map is written, so that a store never needs a block
/// the file system cannot give (on a full disk that would be a SIGBUS, not an error).
///
/// Dropped unfinished (a merge that stopped at a damaged input or an error), it removes its
/// file: an abandoned build would otherwise hold its allocated blocks until the next open.
pub(crate) struct BuildMap {
    /// `None` until mapped, and once [`BuildMap::finish`] took them.
    file: Option<(std::fs::File, memmap2::MmapMut)>,
    path: std::path::PathBuf,
    /// Set by [`BuildMap::finish`]: the file is the caller's now.
    finished: bool,
}

impl BuildMap {
    /// Creates (or truncates) `path`, `len` bytes allocated on disk, and maps it. An error when
    /// the file system cannot allocate them (full, or without `fallocate`): the caller then
    /// builds in memory.
    pub(crate) fn create(path: &std::path::Path, len: usize) -> std::io::Result<BuildMap> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        // Removes the file if what follows fails.
        let mut built = BuildMap {
            file: None,
            path: path.to_path_buf(),
            finished: false,
        };
        allocate(&file, len)?;
        let map = map_writable(&file)?;
        built.file = Some((file, map));
        Ok(built)
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match &self.file {
            Some((_, map)) => map,
            // Only while `create` runs, which reads nothing.
            None => &[],
        }
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.file {
            Some((_, map)) => map,
            None => &mut [],
        }
    }

    /// Makes the file and its map `len` bytes (at least its length now), blocks allocated.
    pub(crate) fn grow(&mut self, len: usize) -> std::io::Result<()> {
        let Some((file, map)) = &mut self.file else {
            return Err(std::io::ErrorKind::NotFound.into());
        };
        if len <= map.len() {
            return Ok(());
        }
        allocate(file, len)?;
        *map = map_writable(file)?;
        Ok(())
    }

    /// Drops the map and cuts the file to `len` bytes; returns the file (written to the page
    /// cache, not synced).
    pub(crate) fn finish(mut self, len: usize) -> std::io::Result<std::fs::File> {
        let Some((file, map)) = self.file.take() else {
            return Err(std::io::ErrorKind::NotFound.into());
        };
        drop(map);
        file.set_len(len as u64)?;
        self.finished = true;
        Ok(file)
    }
}

impl Drop for BuildMap {
    fn drop(&mut self) {
        if !self.finished {
            drop(self.file.take());
            // Garbage either way: no directory fsync, and a failure leaves it to the next
            // open's clean-up of unused index files.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Extends `file` to `len` bytes with its blocks allocated (`fallocate`, mode 0).
fn allocate(file: &std::fs::File, len: usize) -> std::io::Result<()> {
    seglog_wal::io::fallocate(file, 0, len as u64)
}

/// Maps the whole of `file` (a [`BuildMap`]'s) for reading and writing.
fn map_writable(file: &std::fs::File) -> std::io::Result<memmap2::MmapMut> {
    // SAFETY: `file` is a [`BuildMap`]'s own temporary file (see there): nothing else writes,
    // maps or truncates it while this map lives, and its blocks are allocated, so the bytes
    // behind the map are exactly what this process stores and every store has a block.
    let map = unsafe { memmap2::MmapMut::map_mut(file) }?;
    // Its pages faulted in writable at once (a hint; kernels before 5.14 refuse it, and the
    // pages then fault one by one as they are first written). A scratch build that built every
    // run this way (3 M puts of 200 B, six blocks each): checkpointer CPU median 300 ms with
    // it, 380 without; 245 for runs built in memory, which is why only large ones are built
    // this way.
    let _ = map.advise(memmap2::Advice::PopulateWrite);
    Ok(map)
}

/// Maps of sealed segments, by first LSN, created on first use.
#[derive(Default)]
pub(crate) struct SealedMaps {
    maps: RwLock<HashMap<u64, Arc<Mmap>>>,
}

impl SealedMaps {
    fn map(&self, wal: &Wal, segment: u64) -> Result<Option<Arc<Mmap>>> {
        if let Some(m) = self.maps.read().get(&segment) {
            return Ok(Some(m.clone()));
        }
        if !wal.files_are_real() {
            return Ok(None); // a simulated file system: read through the log's I/O trait
        }
        let Some(path) = wal.sealed_segment_path(segment) else {
            return Ok(None);
        };
        let file = std::fs::File::open(&path).map_err(|e| seglog_wal::Error::Io {
            op: "open",
            path: path.clone(),
            source: e,
        })?;
        // SAFETY: `path` is a sealed segment (checked just above): it is never written,
        // truncated or rewritten in place again (module docs), so the mapped bytes stay as they
        // are for the life of the map; and every frame read from it is checksum-checked.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| seglog_wal::Error::Io {
            op: "mmap",
            path,
            source: e,
        })?;
        let map = Arc::new(map);
        self.maps.write().insert(segment, map.clone());
        Ok(Some(map))
    }

    /// The record `lsn` at `location` when its segment is sealed and mappable; `None` for the
    /// active segment or a simulated file system (the caller then reads through the log).
    pub(crate) fn read(&self, wal: &Wal, location: Location, lsn: u64) -> Result<Option<Record>> {
        let Some(map) = self.map(wal, location.segment)? else {
            return Ok(None);
        };
        let bytes = usize::try_from(location.offset)
            .ok()
            .and_then(|o| map.get(o..))
            .unwrap_or(&[]);
        match format::decode_frame(bytes, bytes.len()) {
            Frame::Record(v) if v.lsn == lsn => Ok(Some(v.to_record(bytes, location))),
            _ => Err(Error::Wal(seglog_wal::Error::Corruption {
                segment: wal
                    .sealed_segment_path(location.segment)
                    .unwrap_or_default(),
                offset: location.offset,
                reason: format!("record {lsn} is not where the index says, or fails its checksum"),
            })),
        }
    }
}

/// Asks the CPU to start loading the cache line of `value` (a hint: it has no effect on what
/// the program computes). The memtable prefetches the table slot a put will write while the
/// log append runs, so the insert after it does not wait on a cache miss.
#[inline]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has; a prefetch never faults
    // and reads nothing into the program (here the address is a live reference anyway).
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Asks the CPU to take the cache line of `value` for writing (a hint, as [`prefetch`]):
/// a store to a line another core holds first waits for that core to give it up, and a
/// locked instruction after the store (a lock's release) waits for that in turn.
#[inline]
pub(crate) fn prefetch_for_write<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHW only hints the cache (it never faults, writes nothing and reads
    // nothing into registers); CPUs without it execute it as a no-op (0F 0D is a NOP hint
    // on Intel CPUs from before it). The address is a live reference.
    unsafe {
        std::arch::asm!("prefetchw [{0}]", in(reg) (value as *const T), options(nostack, preserves_flags, readonly));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Asks the kernel to back the large buffer `v` with transparent huge pages where it can (a
/// hint: contents and validity are unchanged). A memtable fills hundreds of thousands of
/// entries; with 4 KiB pages the writer takes a page fault every few dozen puts, with 2 MiB
/// pages a few hundred times fewer. Small buffers and kernels without the feature are left
/// as they are.
pub(crate) fn advise_huge_pages<T>(v: &Vec<T>) {
    const HUGE: usize = 2 << 20;
    let bytes = v.capacity().saturating_mul(std::mem::size_of::<T>());
    if bytes < 2 * HUGE {
        return;
    }
    let start = v.as_ptr() as usize;
    let first = start.next_multiple_of(HUGE);
    let end = (start + bytes) / HUGE * HUGE;
    if end <= first {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: the range lies inside `v`'s allocation (rounded inwards to whole huge pages),
    // which this process owns for as long as `v` lives; MADV_HUGEPAGE changes only how the
    // kernel may back those pages, never what they contain, so no Rust reference is affected.
    // Failure (kernel without THP) is harmless and ignored.
    unsafe {
        libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
    }
}

/// Lowers the calling thread's CPU priority to `nice` (a hint to the scheduler: what the
/// thread computes is unchanged). For background work that must not take the foreground's
/// core: on Linux a nice value set with `setpriority` on a thread id applies to that thread
/// only. Elsewhere, or when refused, the thread keeps its priority.
pub(crate) fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: `gettid` and `setpriority` take and return plain integers and touch no memory of
    // the process; raising one's own nice value needs no privilege, and a failure is harmless
    // (reported in the return value, ignored: the thread then runs at its old priority).
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}
