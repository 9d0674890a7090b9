//! Index checkpoints: what a sealed segment did to the index, so reopening reads this instead of
//! replaying the segment's records.
//!
//! One file per sealed segment, `DIR/index/NNNNNNNNNNNNNNNNNNNN.idx` (the segment's first LSN),
//! written after the segment seals (temp file, fsync, rename, directory fsync). Little-endian:
//!
//! ```text
//! header (48 bytes)
//!  0  [u8; 8] magic "seglogIX"      24  u64 last_lsn    (the segment's footer)
//!  8  u16     version = 1           32  u32 chain_crc   (the segment's footer)
//! 10  u16/u32 reserved = 0          36  u32 reserved = 0
//! 16  u64     first_lsn             40  u64 entry count
//! entries, in LSN order
//!  put:    u8 1, u16 key_len, key, u64 version (LSN), u64 frame offset in the segment
//!  delete: u8 2, u16 key_len, key, u64 version
//!  epoch:  u8 3, u64 epoch
//! trailer: u32 CRC-32C of everything before it
//! ```
//!
//! A checkpoint is used only when its checksum holds and its first LSN, last LSN and chain value
//! equal the segment's footer; anything else (missing, truncated, damaged, from another log)
//! makes the open replay that segment instead. A checkpoint can make reopening faster, never
//! the index wrong.

use crate::error::Result;
use crate::record::Op;
use seglog_wal::dir::INDEX_DIR;
use seglog_wal::{Io, SealedSegment, Wal};
use std::path::{Path, PathBuf};

const MAGIC: [u8; 8] = *b"seglogIX";
const VERSION: u16 = 1;
const HEADER_LEN: usize = 48;

/// One index change recorded in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Put {
        key: Vec<u8>,
        version: u64,
        offset: u64,
    },
    Delete {
        key: Vec<u8>,
    },
    Epoch(u64),
}

pub(crate) fn path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(INDEX_DIR).join(format!("{first_lsn:020}.idx"))
}

/// Calls `f(segment, change)` for the index change of every record `from..=to`, in LSN order;
/// returns how many. Replay on open and checkpoint building share it.
pub(crate) fn for_each_change(
    wal: &Wal,
    from: u64,
    to: u64,
    mut f: impl FnMut(u64, Change),
) -> Result<u64> {
    let mut n = 0;
    for r in wal.reader(from) {
        let r = r?;
        if r.lsn > to {
            break;
        }
        n += 1;
        let change = match Op::decode(&r)? {
            Op::Put { key, .. } => Change::Put {
                key: key.to_vec(),
                version: r.lsn,
                offset: r.location.offset,
            },
            Op::Delete { key } => Change::Delete { key: key.to_vec() },
            Op::Epoch(e) => Change::Epoch(e),
        };
        f(r.location.segment, change);
    }
    Ok(n)
}

/// The index changes a sealed segment's records make.
pub(crate) fn build(wal: &Wal, seg: &SealedSegment) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    for_each_change(wal, seg.first_lsn, seg.last_lsn, |_, c| out.push(c))?;
    Ok(out)
}

fn encode(seg: &SealedSegment, changes: &[Change]) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN + changes.len() * 32);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&[0u8; 6]);
    b.extend_from_slice(&seg.first_lsn.to_le_bytes());
    b.extend_from_slice(&seg.last_lsn.to_le_bytes());
    b.extend_from_slice(&seg.chain_crc.to_le_bytes());
    b.extend_from_slice(&[0u8; 4]);
    b.extend_from_slice(&(changes.len() as u64).to_le_bytes());
    for c in changes {
        match c {
            Change::Put {
                key,
                version,
                offset,
            } => {
                b.push(1);
                b.extend_from_slice(&(key.len() as u16).to_le_bytes());
                b.extend_from_slice(key);
                b.extend_from_slice(&version.to_le_bytes());
                b.extend_from_slice(&offset.to_le_bytes());
            }
            Change::Delete { key } => {
                b.push(2);
                b.extend_from_slice(&(key.len() as u16).to_le_bytes());
                b.extend_from_slice(key);
            }
            Change::Epoch(e) => {
                b.push(3);
                b.extend_from_slice(&e.to_le_bytes());
            }
        }
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// A little-endian cursor that fails instead of panicking on short input.
struct Cur<'a>(&'a [u8]);
impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
}

/// Decodes a checkpoint for `seg`; `None` unless it is intact and made for exactly that segment.
fn decode(bytes: &[u8], seg: &SealedSegment) -> Option<Vec<Change>> {
    let (body, trailer) = bytes.split_at(bytes.len().checked_sub(4)?);
    if crc32c::crc32c(body).to_le_bytes() != trailer
        || body.len() < HEADER_LEN
        || body[..8] != MAGIC
    {
        return None;
    }
    let mut c = Cur(&body[8..]);
    let version = c.u16()?;
    c.take(6)?;
    let (first, last) = (c.u64()?, c.u64()?);
    let chain = u32::from_le_bytes(c.take(4)?.try_into().ok()?);
    c.take(4)?;
    let count = c.u64()?;
    if version != VERSION
        || first != seg.first_lsn
        || last != seg.last_lsn
        || chain != seg.chain_crc
    {
        return None;
    }
    let mut out = Vec::with_capacity(count.min(1 << 20) as usize);
    for _ in 0..count {
        out.push(match c.u8()? {
            1 => {
                let n = usize::from(c.u16()?);
                let key = c.take(n)?.to_vec();
                Change::Put {
                    key,
                    version: c.u64()?,
                    offset: c.u64()?,
                }
            }
            2 => {
                let n = usize::from(c.u16()?);
                Change::Delete {
                    key: c.take(n)?.to_vec(),
                }
            }
            3 => Change::Epoch(c.u64()?),
            _ => return None,
        });
    }
    c.0.is_empty().then_some(out)
}

/// Writes the checkpoint of `seg` durably.
pub(crate) fn write(
    io: &dyn Io,
    dir: &Path,
    seg: &SealedSegment,
    changes: &[Change],
) -> Result<()> {
    let idx_dir = dir.join(INDEX_DIR);
    let err = |op: &'static str, p: &Path, e: std::io::Error| seglog_wal::Error::Io {
        op,
        path: p.to_path_buf(),
        source: e,
    };
    if seglog_wal::io::create_dir_durable(io, &idx_dir)
        .map_err(|e| err("create directory", &idx_dir, e))?
    {
        tracing::debug!(dir = %idx_dir.display(), "created the index checkpoint directory");
    }
    let dst = path(dir, seg.first_lsn);
    let tmp = dst.with_extension("idx.tmp");
    let bytes = encode(seg, changes);
    let f = io
        .create_truncate(&tmp)
        .map_err(|e| err("create", &tmp, e))?;
    f.write_at(&bytes, 0).map_err(|e| err("write", &tmp, e))?;
    f.sync_data().map_err(|e| err("fdatasync", &tmp, e))?;
    io.rename(&tmp, &dst).map_err(|e| err("rename", &tmp, e))?;
    io.sync_dir(&idx_dir)
        .map_err(|e| err("fsync directory", &idx_dir, e))?;
    Ok(())
}

/// The checkpoint of `seg` if one exists and is valid for it.
pub(crate) fn load(io: &dyn Io, dir: &Path, seg: &SealedSegment) -> Option<Vec<Change>> {
    let p = path(dir, seg.first_lsn);
    let f = io.open_read(&p).ok()?;
    let len = usize::try_from(f.file_len().ok()?).ok()?;
    let mut bytes = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match f.read_at(&mut bytes[done..], done as u64) {
            Ok(0) | Err(_) => return None,
            Ok(n) => done += n,
        }
    }
    let out = decode(&bytes, seg);
    if out.is_none() {
        tracing::warn!(checkpoint = %p.display(), "index checkpoint unusable; replaying its segment instead");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> SealedSegment {
        SealedSegment {
            first_lsn: 10,
            last_lsn: 13,
            chain_crc: 99,
            path: PathBuf::from("x"),
        }
    }

    #[test]
    fn roundtrips_and_rejects_damage_or_another_segment() {
        let changes = vec![
            Change::Put {
                key: b"a".to_vec(),
                version: 10,
                offset: 64,
            },
            Change::Delete { key: b"b".to_vec() },
            Change::Epoch(3),
            Change::Put {
                key: vec![],
                version: 13,
                offset: 200,
            },
        ];
        let b = encode(&seg(), &changes);
        assert_eq!(decode(&b, &seg()), Some(changes));
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x40;
            assert_eq!(decode(&d, &seg()), None, "flip at {i} accepted");
            assert_eq!(decode(&b[..i], &seg()), None, "truncation at {i} accepted");
        }
        let other = SealedSegment {
            chain_crc: 98,
            ..seg()
        };
        assert_eq!(decode(&b, &other), None);
    }
}
