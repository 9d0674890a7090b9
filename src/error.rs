//! Errors of the engine.

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The log below failed (I/O, corruption, poisoning, a record too large, ...).
    #[error(transparent)]
    Wal(#[from] seglog_wal::Error),

    /// A conditional write whose expectation does not hold: nothing was written.
    #[error("conflict on key {key:?}: expected {expected}, but its current version is {}", match current { Some(v) => v.to_string(), None => "absent".into() })]
    Conflict {
        /// The key (lossy UTF-8, for the message).
        key: String,
        /// What the write expected, in words.
        expected: String,
        /// The key's current version (LSN of its last write), `None` when absent.
        current: Option<u64>,
    },

    /// A write from a writer whose epoch is lower than the log's: nothing was written.
    #[error("stale writer: epoch {writer} is below the log's epoch {log}; refusing the write")]
    StaleEpoch {
        /// The writer's epoch.
        writer: u64,
        /// The log's epoch.
        log: u64,
    },

    /// The index's own bookkeeping failed (a run that does not read back as written).
    #[error("index: {0}")]
    Index(String),

    /// A record in the log that the engine cannot interpret.
    #[error("log record {lsn} is not an engine record: {reason}")]
    Malformed {
        /// Its LSN.
        lsn: u64,
        /// What is wrong.
        reason: String,
    },
}
