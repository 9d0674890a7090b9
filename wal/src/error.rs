//! Errors of the write-ahead log.
//!
//! Every error that concerns a file names it; every corruption names the segment, the byte offset
//! and the reason. Callers match on the variant; `Display` is a sentence for operators.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout `seglog-wal`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed on `path`.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("write", "fdatasync", "open", ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Bytes on disk that do not form what the format says must be there.
    #[error("corruption in {} at offset {offset}: {reason}", segment.display())]
    Corruption {
        /// The segment (or marker) file.
        segment: PathBuf,
        /// Byte offset inside that file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// Two consecutive segments do not join: records are missing between them.
    #[error("missing segment: {} ends at LSN {last_lsn} but the next segment {} starts at LSN {next_first_lsn}", after.display(), next.display())]
    MissingSegment {
        /// The segment before the gap.
        after: PathBuf,
        /// Its last LSN.
        last_lsn: u64,
        /// The segment after the gap.
        next: PathBuf,
        /// Its first LSN.
        next_first_lsn: u64,
    },

    /// A file in the data directory that seglog did not write.
    #[error("foreign file {} in the data directory: {reason}", path.display())]
    ForeignFile {
        /// The file.
        path: PathBuf,
        /// Why it is not one of ours.
        reason: String,
    },

    /// Another process holds the directory's write lock.
    #[error("{} is locked by another writer{}", dir.display(), match pid { Some(p) => format!(" (pid {p})"), None => String::new() })]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it into the lock file.
        pid: Option<u32>,
    },

    /// A write or fsync failed earlier; the on-disk state is unknown until the log is reopened.
    #[error("the log refuses writes after an earlier I/O failure ({cause}); reopen it to recover")]
    Poisoned {
        /// The first failure.
        cause: String,
    },

    /// The write or fsync carrying these records failed. They may or may not be in the log after
    /// it is reopened; the log is poisoned.
    #[error("append of LSN {first_lsn}..={last_lsn} failed ({cause}): those records may or may not survive a reopen, and the log refuses writes until reopened")]
    Unacknowledged {
        /// First LSN of the failed append.
        first_lsn: u64,
        /// Last LSN of the failed append.
        last_lsn: u64,
        /// The failure that poisoned the log.
        cause: String,
    },

    /// A record (or batch) that can never fit in one segment.
    #[error("record of {size} bytes exceeds the largest that fits in a segment ({max} bytes)")]
    RecordTooLarge {
        /// Encoded size asked for.
        size: u64,
        /// Largest accepted.
        max: u64,
    },

    /// A key longer than the format allows.
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// An LSN that has not been appended yet was passed to `wait_durable`.
    #[error("LSN {lsn} has not been appended (the last is {last})")]
    LsnNotAppended {
        /// The LSN asked for.
        lsn: u64,
        /// The last LSN appended.
        last: u64,
    },

    /// `[wal] io = "io_uring"` but io_uring cannot be set up here.
    #[error(
        "io_uring was asked for ([wal] io = \"io_uring\") but cannot be set up here: {reason}"
    )]
    IoUringUnavailable {
        /// Why (ENOSYS on old kernels, EPERM under seccomp or io_uring_disabled, ...).
        reason: String,
    },

    /// An empty batch was passed to `append_batch`.
    #[error("append_batch needs at least one record")]
    EmptyBatch,

    /// [`crate::Wal::attach`] on a log that has an attachment already.
    #[error("the log already has an attachment")]
    Attached,

    /// The log was closed.
    #[error("the log is closed")]
    Closed,

    /// A configuration value out of its bounds or malformed.
    #[error("config key `{key}`: {message}")]
    Config {
        /// The key, as written in the TOML file (`wal.segment_size`).
        key: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        segment: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corruption {
            segment: segment.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// True for errors that say the bytes on disk are wrong (as opposed to an I/O failure, a
    /// lock, or a bad argument). `walctl verify` exits 1 on these and 2 on the others.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Corruption { .. } | Error::MissingSegment { .. } | Error::ForeignFile { .. }
        )
    }
}
