//! The narrow I/O layer every byte of the WAL goes through.
//!
//! [`Io`] (the file system) and [`IoFile`] (one open file) are the only way the WAL touches
//! storage. Backends:
//! - [`StdIo`]: `pwrite`/`pread`/`fdatasync` through std and libc.
//! - [`crate::sim::SimIo`]: an in-memory file system that tracks written versus synced bytes and
//!   directory entries, fails or tears writes on demand and simulates power loss.
//! - an io_uring backend (next): it plugs in here.
//!
//! Contract every backend keeps: `write_at` writes all of `buf` or returns an error (after which
//! the WAL poisons itself); `sync_data` makes every completed `write_at` of this file durable;
//! `sync_dir` makes creations, renames and removals of entries in that directory durable.

use crate::direct::DirectWriter;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One open file.
pub trait IoFile: Send + Sync {
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Makes the file's data (and the metadata needed to read it back) durable: fdatasync.
    fn sync_data(&self) -> io::Result<()>;
    /// `write_at` then `sync_data`, as one operation where the backend can (io_uring submits the
    /// write and a linked fdatasync together). Success means `buf` is written and durable.
    fn write_and_sync(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_at(buf, offset)?;
        self.sync_data()
    }
    /// Makes data and all metadata durable (fsync); used after a length change.
    fn sync_all(&self) -> io::Result<()>;
    /// Sets the file length.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current file length.
    fn file_len(&self) -> io::Result<u64>;
    /// Reserves `[offset, offset+len)` on disk (fallocate). `ErrorKind::Unsupported` when the
    /// file system refuses; the caller then writes zeros instead.
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Hints that `[offset, offset+len)` will be read soon, so the OS starts reading it while
    /// the caller works on what it has (posix_fadvise WILLNEED). The default does nothing.
    fn prefetch(&self, _offset: u64, _len: u64) {}
    /// Hints that `[offset, offset+len)` may be written back now (sync_file_range WRITE).
    /// Durability is not implied. The default does nothing.
    fn start_writeback(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// An advisory exclusive lock on a data directory, released on drop.
pub trait DirLock: Send + Sync {}

/// Result of trying to lock a directory.
pub enum LockOutcome {
    /// We hold it.
    Acquired(Box<dyn DirLock>),
    /// Someone else does; the pid they wrote, if readable.
    Held(Option<u32>),
}

/// The file system.
pub trait Io: Send + Sync + 'static {
    /// Short name for logs and `walctl inspect` ("std", "sim", "io_uring").
    fn name(&self) -> &'static str;
    /// True when paths name files of the OS file system, so that callers may open them
    /// directly (the engine memory-maps sealed segments). False for simulated file systems,
    /// whose files exist only behind this trait.
    fn files_are_real(&self) -> bool {
        false
    }
    /// Opens an existing file for reading and writing.
    fn open_rw(&self, path: &Path) -> io::Result<Arc<dyn IoFile>>;
    /// Opens an existing file read-only.
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn IoFile>>;
    /// Creates a file that must not exist yet, for reading and writing.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn IoFile>>;
    /// Creates or truncates a file, for reading and writing.
    fn create_truncate(&self, path: &Path) -> io::Result<Arc<dyn IoFile>>;
    /// Atomically renames `from` to `to` (same directory).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of a directory (files and subdirectories).
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates one directory (its parent exists).
    fn create_dir(&self, dir: &Path) -> io::Result<()>;
    /// True when the path exists.
    fn exists(&self, path: &Path) -> bool;
    /// True when the path is a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// fsyncs a directory, making entry changes in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes the exclusive write lock of `dir` (lock file `dir/LOCK`), recording our pid.
    fn lock_dir(&self, dir: &Path) -> io::Result<LockOutcome>;
}

/// The portable backend: std files, `pwrite`, `pread`, `fdatasync`.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdIo {
    /// Open files for writing with O_DIRECT (see [`crate::direct`]).
    pub direct: bool,
}

/// An open file of the std backend: the file, and its O_DIRECT writer when opened that way.
/// The io_uring backend's files wrap one and replace only how writes and syncs are issued.
pub(crate) struct StdFile {
    pub(crate) file: File,
    pub(crate) direct: Option<DirectWriter>,
}

/// Opens with O_DIRECT; a file system that refuses it gets an error saying so.
pub(crate) fn open_direct(path: &Path, o: &mut OpenOptions) -> io::Result<File> {
    match o.custom_flags(libc::O_DIRECT).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(crate::direct::refused(path, e)),
        r => r,
    }
}

/// `(offset, len)` as `off_t`s, when they fit.
fn off_len(offset: u64, len: u64) -> Option<(libc::off_t, libc::off_t)> {
    Some((
        libc::off_t::try_from(offset).ok()?,
        libc::off_t::try_from(len).ok()?,
    ))
}

/// `pread` that retries on EINTR.
pub(crate) fn pread(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        match file.read_at(buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// fallocate, with `Unsupported` for file systems that refuse it. Public for the engine,
/// which allocates the run files it builds through a writable map (`seglog::mapped`).
pub fn fallocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let Some((off, l)) = off_len(offset, len) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range too large",
        ));
    };
    // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by `file`
    // and stays open for the duration of the call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, off, l) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => {
            Err(io::Error::new(io::ErrorKind::Unsupported, err))
        }
        _ => Err(err),
    }
}

/// posix_fadvise(WILLNEED): a read-ahead hint.
pub(crate) fn fadvise_willneed(file: &File, offset: u64, len: u64) {
    let Some((off, l)) = off_len(offset, len) else {
        return;
    };
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open.
    // A hint: its result changes nothing about correctness.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), off, l, libc::POSIX_FADV_WILLNEED) };
}

impl IoFile for StdFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match &self.direct {
            Some(d) => d.write(buf, offset, |a, o| self.file.write_all_at(a, o)),
            None => self.file.write_all_at(buf, offset),
        }
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        pread(
            self.direct.as_ref().map_or(&self.file, |d| d.reader()),
            buf,
            offset,
        )
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if let Some(d) = &self.direct {
            d.invalidate();
        }
        self.file.set_len(len)
    }
    fn file_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        fallocate(&self.file, offset, len)
    }
    fn prefetch(&self, offset: u64, len: u64) {
        fadvise_willneed(&self.file, offset, len)
    }
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let Some((off, l)) = off_len(offset, len) else {
            return Ok(());
        };
        // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open.
        let rc = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), off, l, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc != 0 {
            // A hint: a file system that does not support it loses nothing.
            tracing::trace!(error = %io::Error::last_os_error(), "sync_file_range refused");
        }
        Ok(())
    }
}

struct StdLock {
    // Held for its descriptor: the flock lives as long as the file is open.
    _file: File,
}
impl DirLock for StdLock {}

fn rw_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true).mode(0o644);
    o
}

impl StdIo {
    /// Opens `path` with `o`, with O_DIRECT (and a buffered reader beside it) when configured.
    pub(crate) fn open_file(&self, path: &Path, o: &mut OpenOptions) -> io::Result<StdFile> {
        if self.direct {
            let file = open_direct(path, o)?;
            let reader = File::open(path)?;
            return Ok(StdFile {
                file,
                direct: Some(DirectWriter::new(reader)),
            });
        }
        Ok(StdFile {
            file: o.open(path)?,
            direct: None,
        })
    }

    fn open_with(&self, path: &Path, o: &mut OpenOptions) -> io::Result<Arc<dyn IoFile>> {
        Ok(Arc::new(self.open_file(path, o)?))
    }
}

impl Io for StdIo {
    fn files_are_real(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        if self.direct {
            "std+direct"
        } else {
            "std"
        }
    }
    fn open_rw(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.open_with(path, &mut rw_options())
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        Ok(Arc::new(StdFile {
            file: File::open(path)?,
            direct: None,
        }))
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.open_with(path, rw_options().create_new(true))
    }
    fn create_truncate(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.open_with(path, rw_options().create(true).truncate(true))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in fs::read_dir(dir)? {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        match File::open(dir)?.sync_all() {
            // Some file systems (several FUSE ones among them) cannot fsync a directory at all and
            // say EINVAL: there is nothing more to make durable there. Any other error stands.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(dir = %dir.display(), "this file system cannot fsync directories (EINVAL); relying on it to persist entries");
                Ok(())
            }
            r => r,
        }
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<LockOutcome> {
        use std::io::{Read, Seek, Write};
        let path = dir.join(crate::dir::LOCK_FILE);
        let mut file = rw_options().create(true).truncate(false).open(&path)?;
        let mut recorded = String::new();
        let holder: Option<u32> = file
            .read_to_string(&mut recorded)
            .ok()
            .and_then(|_| recorded.trim().parse().ok());
        // SAFETY: flock only reads its integer arguments; the descriptor is open.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) => return Ok(LockOutcome::Held(holder)),
                // No flock here (some FUSE and network file systems): fall back to the pid in the
                // lock file, refusing while that process is alive.
                Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
                    if let Some(pid) = holder.filter(|&p| p != std::process::id() && pid_alive(p)) {
                        return Ok(LockOutcome::Held(Some(pid)));
                    }
                    tracing::warn!(dir = %dir.display(), "flock is not supported here; locking by pid file only");
                }
                _ => return Err(err),
            }
        }
        file.set_len(0)?;
        file.seek(io::SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())?;
        Ok(LockOutcome::Acquired(Box::new(StdLock { _file: file })))
    }
}

/// True when a process with this pid exists.
fn pid_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let rc = unsafe { libc::kill(p, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Creates `dir` and any missing parents, fsyncing each parent whose entries changed so the new
/// directories survive power loss. Returns true when `dir` was created.
pub fn create_dir_durable(io: &dyn Io, dir: &Path) -> io::Result<bool> {
    if io.is_dir(dir) {
        return Ok(false);
    }
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.as_os_str().is_empty() || io.is_dir(d) {
            break;
        }
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    for d in missing.iter().rev() {
        match io.create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let parent = match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        io.sync_dir(&parent)?;
    }
    Ok(true)
}

/// Chooses and sets up the backend `config` asks for (`[wal] io`, `direct_io`).
pub fn open_backend(config: &crate::WalConfig) -> crate::Result<Arc<dyn Io>> {
    open_backend_with(config, crate::uring::probe)
}

/// True when, for this fsync policy, `auto` picks io_uring: where it measured at least as fast as
/// std on the reference machine (`walctl bench --matrix`, docs/benchmarks.md). There (2 vCPU KVM
/// guest, virtio disk, ext4, Linux 6.18) std won under every policy: geometric means of
/// io_uring/std over the 24 cells of each policy were 0.78x (`always`), 0.85x (`batch`) and
/// 0.83x (`never`), because the kernel runs io_uring's fdatasync, and buffered writes it cannot
/// complete without blocking, on io-wq worker threads: two more context switches per operation
/// than a plain syscall, on two CPUs. So `auto` uses std for every policy here; io_uring remains
/// available with `io = "io_uring"`.
pub fn auto_prefers_io_uring(policy: crate::FsyncPolicy) -> bool {
    match policy {
        crate::FsyncPolicy::Always | crate::FsyncPolicy::Batch | crate::FsyncPolicy::Never => false,
    }
}

/// [`open_backend`] with the io_uring probe given (tests make it fail to check the fallback).
pub fn open_backend_with(
    config: &crate::WalConfig,
    probe: impl Fn() -> io::Result<()>,
) -> crate::Result<Arc<dyn Io>> {
    select_backend(config, auto_prefers_io_uring(config.fsync), probe)
}

/// The selection rule: `std` and `io_uring` as asked (an `io_uring` that cannot be set up is an
/// error); `auto` takes io_uring when `auto_wants_io_uring` and the probe succeeds, and falls back
/// to std with one warning naming the reason when it does not.
pub fn select_backend(
    config: &crate::WalConfig,
    auto_wants_io_uring: bool,
    probe: impl Fn() -> io::Result<()>,
) -> crate::Result<Arc<dyn Io>> {
    use crate::config::IoChoice;
    let direct = config.direct_io;
    let std_io: Arc<dyn Io> = Arc::new(StdIo { direct });
    match config.io {
        IoChoice::Std => Ok(std_io),
        IoChoice::IoUring => match probe() {
            Ok(()) => Ok(Arc::new(crate::uring::UringIo::unprobed(direct))),
            Err(e) => Err(crate::Error::IoUringUnavailable {
                reason: e.to_string(),
            }),
        },
        IoChoice::Auto if !auto_wants_io_uring => {
            tracing::debug!(policy = ?config.fsync, "io = auto: std measured faster for this policy");
            Ok(std_io)
        }
        IoChoice::Auto => match probe() {
            Ok(()) => Ok(Arc::new(crate::uring::UringIo::unprobed(direct))),
            Err(e) => {
                tracing::warn!(reason = %e, "io_uring is not available here; using the std backend");
                Ok(std_io)
            }
        },
    }
}
