//! A fault-injecting decorator around any backend: the n-th next write or sync of a targeted
//! file fails with EIO, or the next write is torn (a prefix lands, the call fails). It lets the
//! fault-injection tests run on the real backends (std, io_uring, O_DIRECT), where
//! [`crate::sim::SimIo`] also simulates power loss but only in memory.

use crate::io::{Io, IoFile, LockOutcome};
use crate::sim::{Faults, Fs};
use parking_lot::Mutex;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Wraps `inner`, injecting `Faults` (only `fail_write_in`, `fail_sync_in`,
/// `tear_next_write_at` and `only_files_ending` apply; the latter matches the name a file was
/// opened under, so a segment prepared as `next.seg.tmp` keeps that name here after its rename).
pub struct FaultyIo {
    inner: Arc<dyn Io>,
    faults: Arc<Mutex<Faults>>,
}

struct FaultyFile {
    inner: Arc<dyn IoFile>,
    path: PathBuf,
    faults: Arc<Mutex<Faults>>,
}

impl FaultyIo {
    /// Wraps a backend.
    pub fn new(inner: Arc<dyn Io>) -> Self {
        FaultyIo {
            inner,
            faults: Arc::new(Mutex::new(Faults::default())),
        }
    }
    /// Sets the faults to inject.
    pub fn set_faults(&self, f: Faults) {
        *self.faults.lock() = f;
    }
    fn wrap(&self, f: io::Result<Arc<dyn IoFile>>, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        Ok(Arc::new(FaultyFile {
            inner: f?,
            path: path.to_path_buf(),
            faults: self.faults.clone(),
        }))
    }
}

impl FaultyFile {
    fn targeted(&self, f: &Faults) -> bool {
        f.only_files_ending
            .as_deref()
            .is_none_or(|s| self.path.to_string_lossy().ends_with(s))
    }
    fn check_sync(&self) -> io::Result<()> {
        let mut f = self.faults.lock();
        if self.targeted(&f) && Fs::countdown(&mut f.fail_sync_in) {
            return Err(io::Error::other("injected EIO: fsync"));
        }
        Ok(())
    }
}

impl IoFile for FaultyFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let tear = {
            let mut f = self.faults.lock();
            if !self.targeted(&f) {
                None
            } else if Fs::countdown(&mut f.fail_write_in) {
                return Err(io::Error::other("injected EIO: write"));
            } else {
                f.tear_next_write_at.take()
            }
        };
        match tear {
            Some(k) => {
                self.inner.write_at(&buf[..k.min(buf.len())], offset)?;
                Err(io::Error::other("injected EIO: torn write"))
            }
            None => self.inner.write_at(buf, offset),
        }
    }
    fn write_and_sync(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        // Through the faulty write and sync, so both injection points apply.
        self.write_at(buf, offset)?;
        self.sync_data()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.check_sync()?;
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.check_sync()?;
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
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.start_writeback(offset, len)
    }
}

impl Io for FaultyIo {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn files_are_real(&self) -> bool {
        self.inner.files_are_real()
    }
    fn open_rw(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.wrap(self.inner.open_rw(path), path)
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.inner.open_read(path)
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.wrap(self.inner.create_new(path), path)
    }
    fn create_truncate(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.wrap(self.inner.create_truncate(path), path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.inner.is_dir(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<LockOutcome> {
        self.inner.lock_dir(dir)
    }
}
