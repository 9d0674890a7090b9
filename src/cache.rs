//! A bounded cache of values, keyed by version (the LSN that wrote them): a version's value
//! never changes, so entries never need invalidating. Eviction is first-in first-out, which
//! keeps the bound exact and the bookkeeping to one queue.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Values up to a byte budget.
pub(crate) struct ValueCache {
    inner: Mutex<Inner>,
    budget_bytes: usize,
}

#[derive(Default)]
struct Inner {
    values: HashMap<u64, Arc<[u8]>>,
    order: VecDeque<u64>,
    bytes: usize,
}

impl ValueCache {
    pub(crate) fn new(budget_bytes: usize) -> Self {
        ValueCache {
            inner: Mutex::new(Inner::default()),
            budget_bytes,
        }
    }

    pub(crate) fn get(&self, version: u64) -> Option<Arc<[u8]>> {
        self.inner.lock().values.get(&version).cloned()
    }

    pub(crate) fn insert(&self, version: u64, value: &[u8]) {
        // A value larger than a quarter of the budget would evict everything for little gain.
        if value.len() > self.budget_bytes / 4 {
            return;
        }
        let mut g = self.inner.lock();
        if g.values.contains_key(&version) {
            return;
        }
        while g.bytes + value.len() > self.budget_bytes {
            let Some(old) = g.order.pop_front() else {
                break;
            };
            if let Some(v) = g.values.remove(&old) {
                g.bytes -= v.len();
            }
        }
        g.bytes += value.len();
        g.values.insert(version, Arc::from(value));
        g.order.push_back(version);
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_budget_and_evicts_oldest_first() {
        let c = ValueCache::new(1000);
        for v in 0..100u64 {
            c.insert(v, &[v as u8; 100]);
            assert!(c.bytes() <= 1000);
        }
        assert!(c.get(0).is_none());
        assert_eq!(c.get(99).as_deref(), Some(&[99u8; 100][..]));
        c.insert(500, &[0u8; 400]);
        assert!(
            c.get(500).is_none(),
            "larger than a quarter of the budget: not cached"
        );
    }
}
