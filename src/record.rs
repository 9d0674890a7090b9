//! Engine records in the log: the WAL record `kind` byte says what a record means.
//!
//! | kind | meaning | key | value |
//! |---:|---|---|---|
//! | 1 | put | the key | the value |
//! | 2 | delete (tombstone) | the key | empty |
//! | 3 | epoch fence | empty | the new epoch, u64 little-endian |
//!
//! A key's version is the LSN of the record that last wrote it.

use crate::error::{Error, Result};
use seglog_wal::{Entry, Record};

/// Kind byte of a put.
pub const KIND_PUT: u8 = 1;
/// Kind byte of a delete.
pub const KIND_DELETE: u8 = 2;
/// Kind byte of an epoch fence.
pub const KIND_EPOCH: u8 = 3;

/// What a log record means to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// Set `key` to `value`.
    Put {
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
    },
    /// Remove `key`.
    Delete {
        /// Key.
        key: &'a [u8],
    },
    /// From here on, writers below this epoch are refused.
    Epoch(u64),
}

impl<'a> Op<'a> {
    /// The WAL entry for this operation; `epoch_bytes` holds the encoded epoch for `Epoch`.
    pub fn entry(&self, epoch_bytes: &'a [u8; 8]) -> Entry<'a> {
        match *self {
            Op::Put { key, value } => Entry {
                kind: KIND_PUT,
                key,
                value,
            },
            Op::Delete { key } => Entry {
                kind: KIND_DELETE,
                key,
                value: b"",
            },
            Op::Epoch(_) => Entry {
                kind: KIND_EPOCH,
                key: b"",
                value: epoch_bytes,
            },
        }
    }

    /// Interprets a log record.
    pub fn decode(r: &'a Record) -> Result<Op<'a>> {
        match r.kind {
            KIND_PUT => Ok(Op::Put {
                key: &r.key,
                value: &r.value,
            }),
            KIND_DELETE => Ok(Op::Delete { key: &r.key }),
            KIND_EPOCH => {
                let b: [u8; 8] = r
                    .value
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::Malformed {
                        lsn: r.lsn,
                        reason: format!("epoch record of {} bytes", r.value.len()),
                    })?;
                Ok(Op::Epoch(u64::from_le_bytes(b)))
            }
            k => Err(Error::Malformed {
                lsn: r.lsn,
                reason: format!("unknown record kind {k}"),
            }),
        }
    }
}
