//! Changes appended to the log and not yet applied to the index.
//!
//! A write without conditions does not take the index lock. Under the log's append lock
//! (`Wal::exclusive`) it appends its records and queues their changes here, in LSN order, and
//! returns; the index learns them later, all those queued at once, under its write lock:
//! - on the applier thread, every [`PERIOD`] while changes come in. The thread is woken by a
//!   writer only when it went idle (it found the queue empty, and said so in the queue) or
//!   when [`WAKE`] changes are queued: waking a sleeping thread costs the waker a system call
//!   and, in a virtual machine, an interprocessor interrupt (about 7 µs here, measured: a wake
//!   every 1024 puts cost the writer 17% over the append, every 8192 puts 11%, and not waking
//!   the writer itself 7%);
//! - by the first reader that finds changes queued (see `Engine::read_index`): reads see every
//!   write that returned before they started;
//! - by the writer itself when [`LIMIT`] changes or [`LIMIT_KEY_BYTES`] of keys are queued
//!   (the bound on this queue's memory when the applier falls behind);
//! - by a conditional write, under both locks, before it checks its conditions.
//!
//! The queue lives in the log's attachment (`Wal::attach`): only appends change it, so its
//! order is the log's. An applier takes it whole, swapping in an empty one, while it holds the
//! index's write lock; appliers are thus serialised and the index changes in LSN order.
//!
//! Locks are always taken index first, then log: a writer without conditions takes only the
//! log's, a reader only the index's, an applier the index's and, for the swap, the log's.
//!
//! Why: the index insert is a random access into a table larger than the caches, and taking
//! the index lock is three atomic operations; on the writer's path they cost about a third of
//! a small record's append. Queued, the writer pays a copy of the key and 32 bytes.

use seglog_wal::Location;

/// How often the applier thread applies the queue while changes come in.
pub(crate) const PERIOD: std::time::Duration = std::time::Duration::from_millis(1);
/// Queued changes at which the writer nudges the applier thread, idle or not.
pub(crate) const WAKE: usize = 16 * 1024;
/// Queued changes at which the writer applies them itself.
pub(crate) const LIMIT: usize = 64 * 1024;
/// Queued key bytes at which the writer applies them itself.
pub(crate) const LIMIT_KEY_BYTES: usize = 16 << 20;

/// One queued change, in 32 bytes: the record's LSN and frame, and its key's length (the keys
/// follow each other in the arena, in the changes' order).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Change {
    /// The record's LSN: the key's new version.
    pub(crate) lsn: u64,
    /// Where the record's frame is.
    pub(crate) location: Location,
    /// The key's length (at most `MAX_KEY_LEN`, 16 bits), with [`DELETE`] for a tombstone.
    key_len: u32,
}

/// Marks a tombstone in [`Change::key_len`].
const DELETE: u32 = 1 << 31;

impl Change {
    /// True for a tombstone.
    pub(crate) fn delete(&self) -> bool {
        self.key_len & DELETE != 0
    }

    fn key_len(&self) -> usize {
        (self.key_len & !DELETE) as usize
    }
}

/// The queue (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Unapplied {
    keys: Vec<u8>,
    changes: Vec<Change>,
    /// The applier thread found the queue empty and waits to be woken (it applies nothing
    /// until then). Only meaningful in the log's attachment, where it is read and written
    /// under the log's lock.
    pub(crate) applier_idle: bool,
}

impl Unapplied {
    /// An empty queue marked idle: the applier thread waits for the first write to wake it.
    pub(crate) fn idle() -> Unapplied {
        Unapplied {
            applier_idle: true,
            ..Unapplied::default()
        }
    }

    /// Queues a change.
    pub(crate) fn push(&mut self, key: &[u8], lsn: u64, location: Location, delete: bool) {
        // Keys are at most `MAX_KEY_LEN` (65535) bytes: the log refuses longer ones before
        // a change is queued, so the length leaves the top bit free.
        let len = key.len() as u32;
        debug_assert!(len < DELETE);
        self.keys.extend_from_slice(key);
        self.changes.push(Change {
            lsn,
            location,
            key_len: if delete { len | DELETE } else { len },
        });
        // The buffers were last read by the applier, on another core: ask for the lines the
        // next pushes write ahead of them (see `crate::keymap` on stores that miss).
        if let Some(c) = self.changes.spare_capacity_mut().get(8) {
            crate::mapped::prefetch_for_write(c);
        }
        if let Some(k) = self.keys.spare_capacity_mut().get(512) {
            crate::mapped::prefetch_for_write(k);
        }
    }

    /// Changes queued.
    pub(crate) fn len(&self) -> usize {
        self.changes.len()
    }

    /// Key bytes queued.
    pub(crate) fn key_bytes(&self) -> usize {
        self.keys.len()
    }

    /// The changes in LSN order, each with its key.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &Change)> {
        let mut start = 0;
        self.changes.iter().map(move |c| {
            let key = &self.keys[start..start + c.key_len()];
            start += c.key_len();
            (key, c)
        })
    }

    /// The last change.
    pub(crate) fn last(&self) -> Option<&Change> {
        self.changes.last()
    }

    /// Forgets the changes, keeping the buffers.
    pub(crate) fn clear(&mut self) {
        self.keys.clear();
        self.changes.clear();
    }

    /// Exchanges the changes (not the idle mark) with `other`'s: an applier takes the queue
    /// and leaves its own emptied buffers in its place.
    pub(crate) fn swap_changes(&mut self, other: &mut Unapplied) {
        std::mem::swap(&mut self.keys, &mut other.keys);
        std::mem::swap(&mut self.changes, &mut other.changes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(segment: u64, offset: u64) -> Location {
        Location { segment, offset }
    }

    #[test]
    fn changes_come_back_in_order_with_their_keys_and_a_swap_keeps_the_idle_mark() {
        let mut q = Unapplied::idle();
        q.push(b"a", 1, at(1, 0), false);
        q.push(b"bb", 2, at(1, 40), true);
        q.push(b"", 3, at(3, 0), false);
        let seen: Vec<(Vec<u8>, u64, bool)> = q
            .iter()
            .map(|(k, c)| (k.to_vec(), c.lsn, c.delete()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (b"a".to_vec(), 1, false),
                (b"bb".to_vec(), 2, true),
                (vec![], 3, false)
            ]
        );
        assert_eq!((q.len(), q.key_bytes()), (3, 3));

        // Taken by an applier: the queue is empty and keeps its mark, the taken buffers hold
        // the changes.
        let mut taken = Unapplied::default();
        q.swap_changes(&mut taken);
        assert_eq!((q.len(), taken.len()), (0, 3));
        assert!(q.applier_idle && !taken.applier_idle);
        assert_eq!(taken.last().map(|c| c.lsn), Some(3));
        taken.clear();
        assert_eq!((taken.len(), taken.key_bytes()), (0, 0));
    }
}
