//! O_DIRECT writes: arbitrary `(buf, offset)` writes turned into block-aligned ones.
//!
//! O_DIRECT needs the file offset, the length and the buffer address aligned to the logical
//! block size; the log appends at arbitrary 8-byte-aligned offsets. [`DirectWriter`] widens each
//! write to whole [`BLOCK`]s: the bytes of the first and last block that the write does not
//! cover are taken from a one-block cache of the last block written (the common case: the next
//! append continues the block the previous one ended in) or read back through a buffered
//! descriptor (reads after direct writes are coherent: a direct write invalidates the cached
//! pages it covers). The partially filled last block is therefore rewritten, from memory, by
//! every append that continues it.

use std::alloc::{self, Layout};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

/// Alignment and granularity of direct writes.
pub const BLOCK: usize = 4096;

/// A zeroed heap buffer aligned to [`BLOCK`].
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reads of the owned bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (`len` a positive multiple of [`BLOCK`]).
    pub fn zeroed(len: usize) -> io::Result<Self> {
        let layout = Layout::from_size_align(len.max(BLOCK), BLOCK)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size (at least BLOCK).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(AlignedBuf { ptr, len })
    }
    fn layout(&self) -> Layout {
        // The same size and alignment `zeroed` validated.
        Layout::from_size_align(self.len.max(BLOCK), BLOCK).expect("validated in zeroed")
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr points to an allocation of at least len initialised (zeroed) bytes that
        // lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this same layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout()) };
    }
}

/// Widens writes to whole blocks for a file opened with O_DIRECT.
pub struct DirectWriter {
    /// Buffered descriptor of the same file, for reading back partial blocks.
    reader: File,
    /// The last block written: (its offset, its bytes).
    cache: parking_lot::Mutex<Option<(u64, Box<[u8]>)>>,
}

impl DirectWriter {
    /// `reader` is a buffered (not O_DIRECT) descriptor of the same file.
    pub fn new(reader: File) -> Self {
        DirectWriter {
            reader,
            cache: parking_lot::Mutex::new(None),
        }
    }

    /// Fills `dst` with the file's bytes at `off` (zeros past end of file), from the cache when
    /// it holds that block.
    fn fill_from(
        &self,
        cache: &Option<(u64, Box<[u8]>)>,
        dst: &mut [u8],
        off: u64,
    ) -> io::Result<()> {
        let block = off & !(BLOCK as u64 - 1);
        if let Some((b, bytes)) = cache {
            if *b == block {
                let i = (off - block) as usize;
                dst.copy_from_slice(&bytes[i..i + dst.len()]);
                return Ok(());
            }
        }
        let mut done = 0;
        while done < dst.len() {
            let n = self.reader.read_at(&mut dst[done..], off + done as u64)?;
            if n == 0 {
                break; // past end of file: zeros
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `buf` at `off` as one aligned write through `raw`.
    pub fn write(
        &self,
        buf: &[u8],
        off: u64,
        raw: impl FnOnce(&[u8], u64) -> io::Result<()>,
    ) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let b = BLOCK as u64;
        let start = off & !(b - 1);
        let data_end = off + buf.len() as u64;
        let end = data_end.div_ceil(b) * b;
        let mut abuf = AlignedBuf::zeroed((end - start) as usize)?;
        let mut cache = self.cache.lock();
        if off > start {
            self.fill_from(&cache, &mut abuf[..(off - start) as usize], start)?;
        }
        if data_end < end {
            let from = (data_end - start) as usize;
            self.fill_from(&cache, &mut abuf[from..], data_end)?;
        }
        abuf[(off - start) as usize..(data_end - start) as usize].copy_from_slice(buf);
        raw(&abuf, start)?;
        let last = (end - start) as usize - BLOCK;
        *cache = Some((end - b, abuf[last..].to_vec().into_boxed_slice()));
        Ok(())
    }

    /// Forgets the cached block (after a length change).
    pub fn invalidate(&self) {
        *self.cache.lock() = None;
    }

    /// The buffered descriptor.
    pub fn reader(&self) -> &File {
        &self.reader
    }
}

/// The error for a file system that refuses O_DIRECT.
pub fn refused(path: &std::path::Path, e: io::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "the file system under {} refuses O_DIRECT ({e}); set [wal] direct_io = false",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_writes_land_exactly_and_keep_neighbouring_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 3 * BLOCK]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let w = DirectWriter::new(File::open(&path).unwrap());
        let mut model = vec![7u8; 3 * BLOCK];
        for (off, len) in [
            (10usize, 100usize),
            (110, 5000),
            (5110, 3),
            (4095, 2),
            (0, 4096),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            w.write(&data, off as u64, |a, o| {
                assert_eq!(o % BLOCK as u64, 0);
                assert_eq!(a.len() % BLOCK, 0);
                assert_eq!(a.as_ptr() as usize % BLOCK, 0);
                file.write_all_at(a, o)
            })
            .unwrap();
            model[off..off + len].copy_from_slice(&data);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                model,
                "after writing {len} at {off}"
            );
        }
    }
}
