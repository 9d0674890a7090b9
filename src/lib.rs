//! seglog: an embedded storage engine on a segmented, checksummed write-ahead log.
//!
//! [`Engine`] keeps keyed records (put, get, delete, atomic batches, conditional writes, writer
//! epochs) on top of [`seglog_wal`], which is re-exported as [`wal`]. [`Config`] is the TOML
//! config file shared with the tools.

mod cache;
pub mod config;
pub mod engine;
pub mod error;
mod index;
mod keymap;
mod mapped;
pub mod record;
mod run;
pub mod subscription;
mod unapplied;

pub use config::{CacheConfig, Config};
pub use engine::{BatchOp, Engine, EngineStats, Expect, OpenReport};
pub use error::{Error, Result};
pub use index::{
    IndexShape, MAX_FROZEN_MEMTABLES, RUN_SYNC_AFTER, TAIL_CHECKPOINT_BYTES, TAIL_CHECKPOINT_IDLE,
};
pub use seglog_wal as wal;
pub use subscription::{Change, ChangeOp, Subscription};
