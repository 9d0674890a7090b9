//! The io_uring backend.
//!
//! Writes and fdatasyncs of the log's files go through a small ring per open file; everything
//! else (opening, renaming, listing, directory fsync, locking, reads) is shared with
//! [`crate::io::StdIo`]: those calls are rare, and reads are sequential `pread`s with
//! `posix_fadvise` read-ahead, which measured faster than the ring here (docs/benchmarks.md).
//!
//! [`IoFile::write_and_sync`] submits a group's write and the fdatasync that covers it in one
//! `io_uring_enter`: the write carries `IO_LINK`, so the kernel starts the fsync only after the
//! write completed (completions are otherwise unordered). A short write breaks the link (the
//! fsync completes with `-ECANCELED`, having never run); the rest of the buffer is then
//! submitted again with its fsync.

use crate::io::{Io, IoFile, LockOutcome, StdFile, StdIo};
use io_uring::{opcode, squeue, types, IoUring};
use parking_lot::Mutex;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

const RING_ENTRIES: u32 = 8;
const WRITE: u64 = 1;
const FSYNC: u64 = 2;

/// io_uring for writes and syncs, std for the rest.
pub struct UringIo {
    std: StdIo,
    direct: bool,
}

/// Checks that an io_uring can be set up and supports what the log submits.
pub fn probe() -> io::Result<()> {
    let ring = IoUring::new(RING_ENTRIES)?;
    let mut p = io_uring::Probe::new();
    ring.submitter().register_probe(&mut p)?;
    for (code, name) in [
        (opcode::Write::CODE, "write"),
        (opcode::Fsync::CODE, "fsync"),
    ] {
        if !p.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring here lacks the {name} operation"),
            ));
        }
    }
    Ok(())
}

impl UringIo {
    /// Sets up the backend, failing when io_uring is not available.
    pub fn new(direct: bool) -> io::Result<Self> {
        probe()?;
        Ok(Self::unprobed(direct))
    }

    /// The backend, for a caller that already probed.
    pub(crate) fn unprobed(direct: bool) -> Self {
        UringIo {
            std: StdIo { direct: false },
            direct,
        }
    }

    fn open_with(&self, path: &Path, o: &mut OpenOptions) -> io::Result<Arc<dyn IoFile>> {
        let inner = StdIo {
            direct: self.direct,
        }
        .open_file(path, o)?;
        let ring = IoUring::new(RING_ENTRIES)?;
        Ok(Arc::new(UringFile {
            inner,
            ring: Mutex::new(ring),
        }))
    }
}

/// A std file whose writes and syncs go through a ring; everything else is the std file's.
struct UringFile {
    inner: StdFile,
    ring: Mutex<IoUring>,
}

/// A completion's result as an `io::Result` (negative values are errnos).
fn result(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

impl UringFile {
    /// Submits `buf` at `offset`, optionally linked to an fdatasync, and waits for both.
    fn submit(&self, buf: &[u8], offset: u64, sync: bool) -> io::Result<()> {
        let fd = types::Fd(self.inner.file.as_raw_fd());
        let mut ring = self.ring.lock();
        let mut done = 0usize;
        loop {
            let rest = &buf[done..];
            let mut expect = 0;
            {
                let mut sq = ring.submission();
                if !rest.is_empty() {
                    let len = rest.len().min(u32::MAX as usize) as u32;
                    let mut w = opcode::Write::new(fd, rest.as_ptr(), len)
                        .offset(offset + done as u64)
                        .build()
                        .user_data(WRITE);
                    if sync {
                        w = w.flags(squeue::Flags::IO_LINK);
                    }
                    // SAFETY: the entry points into `buf`, which this call borrows and does not
                    // release until both completions below are reaped: the buffer stays alive and
                    // unmoved for as long as the kernel may read it. The ring is empty (we reap
                    // everything we submit before returning), so push cannot overflow it.
                    unsafe { sq.push(&w) }
                        .map_err(|_| io::Error::other("io_uring submission queue full"))?;
                    expect += 1;
                }
                if sync {
                    let f = opcode::Fsync::new(fd)
                        .flags(types::FsyncFlags::DATASYNC)
                        .build()
                        .user_data(FSYNC);
                    // SAFETY: an fsync entry references no memory; the queue has room (see above).
                    unsafe { sq.push(&f) }
                        .map_err(|_| io::Error::other("io_uring submission queue full"))?;
                    expect += 1;
                }
            }
            loop {
                match ring.submit_and_wait(expect) {
                    Ok(_) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            let (mut wres, mut fres) = (None, None);
            for cqe in ring.completion() {
                match cqe.user_data() {
                    WRITE => wres = Some(cqe.result()),
                    _ => fres = Some(cqe.result()),
                }
            }
            if let Some(r) = wres {
                let n = result(r)?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                }
                done += n;
            }
            if done < buf.len() {
                // Short write: the linked fsync was cancelled without running. Submit the rest.
                continue;
            }
            match fres {
                None => return Ok(()),
                // Cancelled (never ran) because the write in its chain was short: sync now.
                Some(r) if r == -libc::ECANCELED => {
                    return self.submit(&[], offset, true);
                }
                Some(r) => return result(r).map(|_| ()),
            }
        }
    }

    fn raw_write(&self, buf: &[u8], offset: u64, sync: bool) -> io::Result<()> {
        match &self.inner.direct {
            Some(d) => {
                d.write(buf, offset, |a, o| self.submit(a, o, false))?;
                if sync {
                    self.submit(&[], 0, true)?;
                }
                Ok(())
            }
            None => self.submit(buf, offset, sync),
        }
    }
}

impl IoFile for UringFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.raw_write(buf, offset, false)
    }
    fn write_and_sync(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.raw_write(buf, offset, true)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.submit(&[], 0, true)
    }
    fn sync_all(&self) -> io::Result<()> {
        self.inner.sync_all()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn file_len(&self) -> io::Result<u64> {
        self.inner.file_len()
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.allocate(offset, len)
    }
    fn prefetch(&self, offset: u64, len: u64) {
        self.inner.prefetch(offset, len)
    }
}

impl Io for UringIo {
    fn files_are_real(&self) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        if self.direct {
            "io_uring+direct"
        } else {
            "io_uring"
        }
    }
    fn open_rw(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.open_with(path, OpenOptions::new().read(true).write(true))
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.std.open_read(path)
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.open_with(
            path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o644),
        )
    }
    fn create_truncate(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.open_with(
            path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644),
        )
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.std.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.std.remove_file(path)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.std.list_dir(dir)
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.std.create_dir(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        self.std.exists(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.std.is_dir(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.std.sync_dir(dir)
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<LockOutcome> {
        self.std.lock_dir(dir)
    }
}
