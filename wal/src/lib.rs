//! seglog-wal: a segmented, checksummed write-ahead log.
//!
//! Records are framed with a chained crc32c and a gap-free LSN, written into segment files that
//! roll at a configured size and seal with a footer; appends are made durable by group commit
//! under one of three [`Durability`] policies; recovery cuts a torn tail and reports every other
//! kind of damage with file, offset and reason. The format is specified in `docs/format.md`,
//! the durability contract in `docs/durability.md`.
//!
//! Modules, one job each:
//! - [`format`]: bytes on disk (header, frame, footer, marker); pure encode/decode.
//! - [`io`]: the narrow I/O trait, the std backend and backend selection; [`uring`]: the
//!   io_uring backend; [`direct`]: O_DIRECT alignment; [`sim`]: the fault-injecting test backend.
//! - [`reader`]: segment cursor, tail decision table, [`WalReader`].
//! - [`dir`]: the data directory and its read-only [`LogView`].
//! - [`writer`]: [`Wal`]: appends, group commit, rolls, flusher, poisoning, recovery.
//! - [`config`]: the `[wal]` config section.

#![deny(missing_docs)]

pub mod config;
pub mod dir;
pub mod direct;
pub mod error;
pub mod faulty;
pub mod format;
pub mod io;
pub mod reader;
pub mod sim;
pub mod uring;
pub mod writer;

pub use config::{
    parse_duration_secs, parse_size, Durability, FsyncPolicy, IoChoice, RecoveryMode, WalConfig,
};
pub use dir::{LogView, SegmentInfo};
pub use error::{Error, Result};
pub use format::{Entry, Location, Record};
pub use io::{Io, IoFile, StdIo};
pub use reader::{RecordRef, TailState, WalReader};
pub use writer::{Appended, Locked, RecoveryReport, SealedSegment, TornTail, Wal, WalStats};
