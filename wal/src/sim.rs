//! An in-memory file system for tests: tracks written versus synced bytes and directory
//! entries, injects failures, tears writes and simulates power loss.
//!
//! Model (what a disk with a volatile cache promises, and no more):
//! - A file's bytes are durable only up to its last `sync_data`/`sync_all`. Writes since then
//!   are kept in order; at power loss a prefix of them survives, the next one possibly torn at
//!   any byte, the rest are lost (chosen by a seeded generator).
//! - A directory entry (create, rename, remove) is durable only after `sync_dir` of its
//!   directory. At power loss the directory reverts to its durable entries.
//! - Power loss and a process crash end the process: every handle opened before fails with
//!   EIO, and so does every call through a `SimIo` made before (its background threads, still
//!   running in the test, must not touch the disk the next process finds); locks are released.
//!   The next process uses [`SimIo::restart`].
//!
//! Faults: the n-th next write or sync fails with EIO; the next write is torn after k bytes
//! (the prefix lands, the call fails); writes beyond a byte budget fail with ENOSPC; fallocate
//! can be made unsupported.

use crate::io::{DirLock, Io, IoFile, LockOutcome};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Default, Clone)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Operations since the last sync, in order: (offset, bytes) writes or a length change.
    unsynced: Vec<Op>,
}

#[derive(Clone)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

fn apply(v: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write(off, bytes) => {
            let end = *off as usize + bytes.len();
            if v.len() < end {
                v.resize(end, 0);
            }
            v[*off as usize..end].copy_from_slice(bytes);
        }
        Op::SetLen(n) => v.resize(*n as usize, 0),
    }
}

/// Injected faults. Counters count down on each matching call; at 1 the call fails.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Fail the n-th next write (1 = the next one) with EIO.
    pub fail_write_in: Option<u64>,
    /// Fail the n-th next `sync_data`/`sync_all` of a file with EIO.
    pub fail_sync_in: Option<u64>,
    /// Fail the n-th next `sync_dir` with EIO.
    pub fail_dir_sync_in: Option<u64>,
    /// Tear the next write after this many bytes: the prefix lands, the call fails with EIO.
    pub tear_next_write_at: Option<usize>,
    /// Total bytes all files may hold; writes and allocations beyond fail with ENOSPC.
    pub capacity_bytes: Option<u64>,
    /// Make `allocate` report `Unsupported`, as some FUSE and network file systems do.
    pub fallocate_unsupported: bool,
    /// When set, write and sync faults hit only files whose current name ends with this
    /// (`".seg"`: segments, not the spare being prepared in the background).
    pub only_files_ending: Option<String>,
}

#[derive(Default)]
pub(crate) struct Fs {
    inodes: BTreeMap<u64, Inode>,
    /// Current directory entries: path -> inode.
    names: BTreeMap<PathBuf, u64>,
    /// Durable directory entries.
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    durable_dirs: BTreeSet<PathBuf>,
    next_ino: u64,
    generation: u64,
    faults: Faults,
    locks: BTreeSet<PathBuf>,
    rng: u64,
}

/// Counts of calls, for tests that check an fsync really happened.
#[derive(Debug, Default)]
pub struct SimCounters {
    /// File syncs.
    pub syncs: AtomicU64,
    /// Directory syncs.
    pub dir_syncs: AtomicU64,
    /// Writes.
    pub writes: AtomicU64,
}

/// The simulated file system. Cheap to clone: clones share the same state, and the process
/// they stand for (see [`SimIo::restart`]).
#[derive(Clone, Default)]
pub struct SimIo {
    fs: Arc<Mutex<Fs>>,
    counters: Arc<SimCounters>,
    /// The file system's generation when this process started: once a power loss or a crash
    /// ends it, its calls fail.
    generation: u64,
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated EIO: {what}"))
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

impl Fs {
    fn used(&self) -> u64 {
        self.names
            .values()
            .filter_map(|i| self.inodes.get(i))
            .map(|n| n.data.len() as u64)
            .sum()
    }
    fn next_rand(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// True when write/sync faults apply to this inode.
    fn targeted(&self, ino: u64) -> bool {
        match &self.faults.only_files_ending {
            None => true,
            Some(suffix) => self
                .names
                .iter()
                .any(|(p, i)| *i == ino && p.to_string_lossy().ends_with(suffix.as_str())),
        }
    }
    pub(crate) fn countdown(c: &mut Option<u64>) -> bool {
        match c {
            Some(1) => {
                *c = None;
                true
            }
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }
    fn parent_durable(&self, path: &Path) -> bool {
        path.parent().is_none_or(|p| {
            p.as_os_str().is_empty() || self.durable_dirs.contains(p) || p == Path::new("/")
        })
    }
}

struct SimFile {
    io: SimIo,
    ino: u64,
    generation: u64,
    writable: bool,
}

impl SimFile {
    fn with<R>(&self, f: impl FnOnce(&mut Fs, u64) -> io::Result<R>) -> io::Result<R> {
        let mut fs = self.io.fs.lock();
        if fs.generation != self.generation {
            return Err(eio("handle from before a power loss"));
        }
        f(&mut fs, self.ino)
    }
}

impl IoFile for SimFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        self.io.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.with(|fs, ino| {
            let targeted = fs.targeted(ino);
            if targeted && Fs::countdown(&mut fs.faults.fail_write_in) {
                return Err(eio("write"));
            }
            let cur = fs.inodes[&ino].data.len() as u64;
            let grow = (offset + buf.len() as u64).saturating_sub(cur);
            if let Some(cap) = fs.faults.capacity_bytes {
                if fs.used() + grow > cap {
                    return Err(enospc());
                }
            }
            let tear = if targeted {
                fs.faults.tear_next_write_at.take()
            } else {
                None
            };
            let (bytes, fail) = match tear {
                Some(k) => (&buf[..k.min(buf.len())], true),
                None => (buf, false),
            };
            let op = Op::Write(offset, bytes.to_vec());
            let n = fs.inodes.get_mut(&ino).ok_or_else(|| eio("inode gone"))?;
            apply(&mut n.data, &op);
            n.unsynced.push(op);
            if fail {
                return Err(eio("torn write"));
            }
            Ok(())
        })
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.with(|fs, ino| {
            let d = &fs.inodes[&ino].data;
            if offset >= d.len() as u64 {
                return Ok(0);
            }
            let n = buf.len().min(d.len() - offset as usize);
            buf[..n].copy_from_slice(&d[offset as usize..offset as usize + n]);
            Ok(n)
        })
    }
    fn sync_data(&self) -> io::Result<()> {
        self.io.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.with(|fs, ino| {
            if fs.targeted(ino) && Fs::countdown(&mut fs.faults.fail_sync_in) {
                // Like Linux after a failed fsync: the dirty pages may be dropped; what is on
                // disk is unknown. Model the worst: the unsynced writes are lost for good.
                let n = fs.inodes.get_mut(&ino).ok_or_else(|| eio("inode gone"))?;
                n.unsynced.clear();
                return Err(eio("fsync"));
            }
            let n = fs.inodes.get_mut(&ino).ok_or_else(|| eio("inode gone"))?;
            for op in std::mem::take(&mut n.unsynced) {
                apply(&mut n.durable, &op);
            }
            Ok(())
        })
    }
    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|fs, ino| {
            let op = Op::SetLen(len);
            let n = fs.inodes.get_mut(&ino).ok_or_else(|| eio("inode gone"))?;
            apply(&mut n.data, &op);
            n.unsynced.push(op);
            Ok(())
        })
    }
    fn file_len(&self) -> io::Result<u64> {
        self.with(|fs, ino| Ok(fs.inodes[&ino].data.len() as u64))
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.with(|fs, ino| {
            if fs.faults.fallocate_unsupported {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "simulated: fallocate not supported",
                ));
            }
            let cur = fs.inodes[&ino].data.len() as u64;
            let grow = (offset + len).saturating_sub(cur);
            if let Some(cap) = fs.faults.capacity_bytes {
                if fs.used() + grow > cap {
                    return Err(enospc());
                }
            }
            if grow > 0 {
                let op = Op::SetLen(offset + len);
                let n = fs.inodes.get_mut(&ino).ok_or_else(|| eio("inode gone"))?;
                apply(&mut n.data, &op);
                n.unsynced.push(op);
            }
            Ok(())
        })
    }
}

struct SimLock {
    io: SimIo,
    path: PathBuf,
    generation: u64,
}
impl DirLock for SimLock {}
impl Drop for SimLock {
    fn drop(&mut self) {
        let mut fs = self.io.fs.lock();
        if fs.generation == self.generation {
            fs.locks.remove(&self.path);
        }
    }
}

impl SimIo {
    /// An empty file system whose power-loss choices follow `seed`.
    pub fn new(seed: u64) -> Self {
        let io = SimIo::default();
        {
            let mut fs = io.fs.lock();
            fs.rng = seed;
            fs.dirs.insert(PathBuf::from("/"));
            fs.durable_dirs.insert(PathBuf::from("/"));
        }
        io
    }

    /// A handle for the process that starts after a power loss or a crash (the handles of the
    /// process before fail from then on).
    pub fn restart(&self) -> SimIo {
        SimIo {
            fs: self.fs.clone(),
            counters: self.counters.clone(),
            generation: self.fs.lock().generation,
        }
    }

    /// The error for a call from a process that a power loss or a crash ended.
    fn alive(&self, fs: &Fs) -> io::Result<()> {
        if fs.generation == self.generation {
            Ok(())
        } else {
            Err(eio(
                "call from a process that a power loss or a crash ended",
            ))
        }
    }

    /// Changes the injected faults.
    pub fn set_faults(&self, f: Faults) {
        self.fs.lock().faults = f;
    }

    /// Current faults (counters included).
    pub fn faults(&self) -> Faults {
        self.fs.lock().faults.clone()
    }

    /// Call counters.
    pub fn counters(&self) -> &SimCounters {
        &self.counters
    }

    /// Simulates power loss: unsynced writes are lost (a seeded prefix survives, possibly torn),
    /// directories revert to their durable entries, open handles die, locks are released.
    pub fn power_loss(&self) {
        let mut fs = self.fs.lock();
        fs.generation += 1;
        fs.locks.clear();
        fs.faults = Faults::default();
        let inos: Vec<u64> = fs.inodes.keys().copied().collect();
        for ino in inos {
            let mut n = fs.inodes.remove(&ino).unwrap_or_default();
            let ops = std::mem::take(&mut n.unsynced);
            if !ops.is_empty() {
                let keep = (fs.next_rand() % (ops.len() as u64 + 1)) as usize;
                for op in &ops[..keep] {
                    apply(&mut n.durable, op);
                }
                if let Some(Op::Write(off, bytes)) = ops.get(keep) {
                    // The next write may be torn at any byte.
                    let k = (fs.next_rand() % (bytes.len() as u64 + 1)) as usize;
                    apply(&mut n.durable, &Op::Write(*off, bytes[..k].to_vec()));
                }
            }
            n.data = n.durable.clone();
            fs.inodes.insert(ino, n);
        }
        fs.names = fs.durable_names.clone();
        fs.dirs = fs.durable_dirs.clone();
        let live: BTreeSet<u64> = fs.names.values().copied().collect();
        fs.inodes.retain(|i, _| live.contains(i));
    }

    /// Simulates a process crash (kill -9): the page cache survives, so nothing written is lost;
    /// handles die and locks are released.
    pub fn process_crash(&self) {
        let mut fs = self.fs.lock();
        fs.generation += 1;
        fs.locks.clear();
        fs.faults = Faults::default();
    }

    /// Current bytes of a file, for tests that damage files on purpose.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let fs = self.fs.lock();
        fs.names.get(path).map(|i| fs.inodes[i].data.clone())
    }

    /// Creates (or replaces) a file with these bytes, durable, creating its directory.
    pub fn write_file(&self, path: &Path, bytes: Vec<u8>) {
        let mut fs = self.fs.lock();
        let mut dirs = Vec::new();
        let mut p = path.parent();
        while let Some(d) = p {
            if d.as_os_str().is_empty() {
                break;
            }
            dirs.push(d.to_path_buf());
            p = d.parent();
        }
        for d in dirs {
            fs.dirs.insert(d.clone());
            fs.durable_dirs.insert(d);
        }
        fs.next_ino += 1;
        let i = fs.next_ino;
        fs.inodes.insert(
            i,
            Inode {
                data: bytes.clone(),
                durable: bytes,
                unsynced: Vec::new(),
            },
        );
        fs.names.insert(path.to_path_buf(), i);
        fs.durable_names.insert(path.to_path_buf(), i);
    }

    /// Replaces a file's bytes as if they had been written and synced.
    pub fn put_file_bytes(&self, path: &Path, bytes: Vec<u8>) {
        let mut fs = self.fs.lock();
        if let Some(&i) = fs.names.get(path) {
            let n = fs.inodes.get_mut(&i).expect("inode of a named file exists");
            n.data = bytes.clone();
            n.durable = bytes;
            n.unsynced.clear();
        }
    }

    fn open(
        &self,
        path: &Path,
        create: bool,
        must_be_new: bool,
        truncate: bool,
        writable: bool,
    ) -> io::Result<Arc<dyn IoFile>> {
        let mut fs = self.fs.lock();
        self.alive(&fs)?;
        let exists = fs.names.get(path).copied();
        let ino = match exists {
            Some(_) if must_be_new => return Err(io::Error::from(io::ErrorKind::AlreadyExists)),
            Some(i) => {
                if truncate {
                    let op = Op::SetLen(0);
                    let n = fs.inodes.get_mut(&i).expect("inode of a named file exists");
                    apply(&mut n.data, &op);
                    n.unsynced.push(op);
                }
                i
            }
            None if create => {
                let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
                if !fs.dirs.contains(&parent) {
                    return Err(io::Error::from(io::ErrorKind::NotFound));
                }
                fs.next_ino += 1;
                let i = fs.next_ino;
                fs.inodes.insert(i, Inode::default());
                fs.names.insert(path.to_path_buf(), i);
                i
            }
            None => return Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        Ok(Arc::new(SimFile {
            io: self.clone(),
            ino,
            generation: fs.generation,
            writable,
        }))
    }
}

impl Io for SimIo {
    fn name(&self) -> &'static str {
        "sim"
    }
    fn open_rw(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.open(path, false, false, false, true)
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.open(path, false, false, false, false)
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.open(path, true, true, false, true)
    }
    fn create_truncate(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.open(path, true, false, true, true)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock();
        self.alive(&fs)?;
        let i = fs
            .names
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        fs.names.insert(to.to_path_buf(), i);
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock();
        self.alive(&fs)?;
        fs.names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let fs = self.fs.lock();
        self.alive(&fs)?;
        if !fs.dirs.contains(dir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let files = fs.names.keys().filter(|p| p.parent() == Some(dir));
        let dirs = fs.dirs.iter().filter(|p| p.parent() == Some(dir));
        Ok(files
            .chain(dirs)
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect())
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock();
        self.alive(&fs)?;
        let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        if !fs.dirs.contains(&parent) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        if !fs.dirs.insert(dir.to_path_buf()) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        Ok(())
    }
    fn exists(&self, path: &Path) -> bool {
        let fs = self.fs.lock();
        // A process that ended sees nothing (it cannot act on what it would see).
        self.alive(&fs).is_ok() && (fs.names.contains_key(path) || fs.dirs.contains(path))
    }
    fn is_dir(&self, path: &Path) -> bool {
        let fs = self.fs.lock();
        self.alive(&fs).is_ok() && fs.dirs.contains(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.counters.dir_syncs.fetch_add(1, Ordering::Relaxed);
        let mut fs = self.fs.lock();
        self.alive(&fs)?;
        if Fs::countdown(&mut fs.faults.fail_dir_sync_in) {
            return Err(eio("directory fsync"));
        }
        if !fs.dirs.contains(dir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        // Entries of `dir` become durable: additions, renames and removals alike.
        let durable_names: BTreeMap<PathBuf, u64> = fs
            .durable_names
            .iter()
            .filter(|(p, _)| p.parent() != Some(dir))
            .map(|(p, i)| (p.clone(), *i))
            .chain(
                fs.names
                    .iter()
                    .filter(|(p, _)| p.parent() == Some(dir))
                    .map(|(p, i)| (p.clone(), *i)),
            )
            .collect();
        fs.durable_names = durable_names;
        let subdirs: Vec<PathBuf> = fs
            .dirs
            .iter()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect();
        fs.durable_dirs.retain(|p| p.parent() != Some(dir));
        if fs.parent_durable(dir) || fs.durable_dirs.contains(dir) {
            fs.durable_dirs.extend(subdirs);
        }
        Ok(())
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<LockOutcome> {
        let mut fs = self.fs.lock();
        self.alive(&fs)?;
        if !fs.locks.insert(dir.to_path_buf()) {
            return Ok(LockOutcome::Held(Some(std::process::id())));
        }
        let generation = fs.generation;
        Ok(LockOutcome::Acquired(Box::new(SimLock {
            io: self.clone(),
            path: dir.to_path_buf(),
            generation,
        })))
    }
}

/// Runs everything that reads a data directory over files made of arbitrary bytes: the
/// read-only view, a full verify, a reader, and recovery (open for writing) followed by a read
/// and an append. It must never panic, and recovery must never return a record that a reader
/// of the same bytes would reject. Used by the fuzz target and by a proptest on stable Rust.
/// Returns the number of records recovered, or the error that refused the directory.
pub fn exercise_directory(files: &[(String, Vec<u8>)]) -> Result<u64, crate::Error> {
    use crate::{Entry, LogView, Wal, WalConfig};
    let sim = SimIo::new(1);
    let dir = Path::new("/fuzz");
    sim.write_file(&dir.join(".keep"), Vec::new());
    sim.fs.lock().names.remove(&dir.join(".keep"));
    for (name, bytes) in files {
        sim.write_file(&dir.join(name), bytes.clone());
    }
    let io: Arc<dyn Io> = Arc::new(sim.clone());
    if let Ok((view, _problem)) = LogView::open_prefix(io.clone(), dir) {
        for r in view.reader(1) {
            if r.is_err() {
                break;
            }
        }
        let _verify_outcome = view.verify_records();
    }
    let config = WalConfig {
        segment_size_bytes: 4096,
        ..WalConfig::default()
    };
    let wal = Wal::open_with_io(io, dir, config)?;
    let mut n = 0u64;
    for (r, expect) in wal.reader(1).zip(wal.first_lsn()..) {
        assert_eq!(r?.lsn, expect, "recovered log has a hole");
        n += 1;
    }
    wal.append(Entry::new(b"k", b"after recovery"))?;
    wal.close()?;
    Ok(n)
}
