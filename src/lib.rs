//! seglog: an embedded storage engine on a segmented, checksummed write-ahead log.
//!
//! Today this crate holds the configuration file format shared by the tools; the engine (keyed
//! records, reads, stale-write rejection, subscriptions) will be built here on top of
//! [`seglog_wal`], which is re-exported as [`wal`].

pub mod config;

pub use config::Config;
pub use seglog_wal as wal;
