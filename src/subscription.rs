//! Subscriptions: every change from an LSN on, first from disk, then live as it becomes
//! durable.
//!
//! Each subscription reads the log through its own [`seglog_wal::WalReader`]: it holds no
//! shared buffer and no lock that appenders or other subscribers wait for, so a slow subscriber
//! costs only its own reader's memory (one read buffer) and its place on disk. It sees a record
//! only once the record is durable (written, under `never`), and wakes when the watermark
//! moves. Every subscription registers the next LSN it needs, so retention can keep what the
//! slowest subscriber still has to read ([`crate::Engine::min_subscribed_lsn`]).

use crate::error::Result;
use crate::record::Op;
use crate::Engine;
use parking_lot::Mutex;
use seglog_wal::WalReader;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOp {
    /// The key was set to the value.
    Put {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// The key was removed.
    Delete {
        /// Key.
        key: Vec<u8>,
    },
    /// The log's epoch was raised.
    Epoch(u64),
}

/// One change, as a subscriber receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its LSN (the key's new version for a put).
    pub lsn: u64,
    /// When it was appended, µs since the Unix epoch.
    pub timestamp_us: u64,
    /// What it did.
    pub op: ChangeOp,
}

/// Positions of live subscriptions, by id.
#[derive(Default)]
pub(crate) struct Registry {
    next_id: AtomicU64,
    positions: Mutex<BTreeMap<u64, u64>>,
}

impl Registry {
    fn register(&self, lsn: u64) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.positions.lock().insert(id, lsn);
        id
    }
    pub(crate) fn min(&self) -> Option<u64> {
        self.positions.lock().values().min().copied()
    }
}

/// A live subscription; dropping it unregisters it.
pub struct Subscription<'e> {
    engine: &'e Engine,
    reader: WalReader,
    id: u64,
}

impl<'e> Subscription<'e> {
    pub(crate) fn new(engine: &'e Engine, from_lsn: u64) -> Self {
        let reader = engine.wal().reader(from_lsn);
        let id = engine.subscribers().register(reader.next_lsn());
        Subscription { engine, reader, id }
    }

    /// LSN of the next change this subscription will deliver.
    pub fn position(&self) -> u64 {
        self.reader.next_lsn()
    }

    /// The next change if one is visible now, without waiting.
    pub fn try_next(&mut self) -> Result<Option<Change>> {
        let Some(r) = self.reader.next().transpose()? else {
            return Ok(None);
        };
        let op = match Op::decode(&r)? {
            Op::Put { key, value } => ChangeOp::Put {
                key: key.to_vec(),
                value: value.to_vec(),
            },
            Op::Delete { key } => ChangeOp::Delete { key: key.to_vec() },
            Op::Epoch(e) => ChangeOp::Epoch(e),
        };
        if let Some(p) = self.engine.subscribers().positions.lock().get_mut(&self.id) {
            *p = r.lsn + 1;
        }
        Ok(Some(Change {
            lsn: r.lsn,
            timestamp_us: r.timestamp_us,
            op,
        }))
    }

    /// The next change, waiting up to `timeout` for one to become durable. `None` on timeout.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Change>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.try_next()? {
                return Ok(Some(c));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.engine.wal().wait_visible(self.reader.next_lsn(), left) {
                return Ok(None);
            }
        }
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        self.engine.subscribers().positions.lock().remove(&self.id);
    }
}
