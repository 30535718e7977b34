//! Per-key usage counters: lock-free adds on the hot path, written to disk in batches by
//! [`crate::KeyStore::flush_usage`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::record::Usage;

/// Running totals of one key. `dirty` is set after every add and cleared by the flush
/// that is about to write the totals, so an add racing a flush is written next time.
#[derive(Debug, Default)]
pub(crate) struct UsageCounters {
    messages: AtomicU64,
    bytes: AtomicU64,
    rooms: AtomicU64,
    dirty: AtomicBool,
}

impl UsageCounters {
    pub(crate) fn starting_at(usage: Usage) -> Self {
        Self {
            messages: AtomicU64::new(usage.messages),
            bytes: AtomicU64::new(usage.bytes),
            rooms: AtomicU64::new(usage.rooms),
            dirty: AtomicBool::new(false),
        }
    }

    /// Adds to the totals (saturating at `u64::MAX`).
    pub(crate) fn add(&self, messages: u64, bytes: u64, rooms: u64) {
        saturating_add(&self.messages, messages);
        saturating_add(&self.bytes, bytes);
        saturating_add(&self.rooms, rooms);
        self.dirty.store(true, Ordering::Release);
    }

    pub(crate) fn snapshot(&self) -> Usage {
        Usage {
            messages: self.messages.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            rooms: self.rooms.load(Ordering::Relaxed),
        }
    }

    /// The totals to write if anything was added since the last call, clearing the
    /// mark. Call [`UsageCounters::mark_dirty`] if the write then fails.
    pub(crate) fn take_if_dirty(&self) -> Option<Usage> {
        // Acquire pairs with the Release in `add`: every add whose mark we clear here is
        // visible in the snapshot below.
        self.dirty.swap(false, Ordering::AcqRel).then(|| self.snapshot())
    }

    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }
}

fn saturating_add(counter: &AtomicU64, n: u64) {
    if n == 0 {
        return;
    }
    // Never fails: the closure always returns Some.
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_add(n)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_only_after_adds_and_saturates() {
        let c = UsageCounters::starting_at(Usage { messages: 1, bytes: 2, rooms: 3 });
        assert_eq!(c.take_if_dirty(), None);
        c.add(1, u64::MAX, 0);
        assert_eq!(c.take_if_dirty(), Some(Usage { messages: 2, bytes: u64::MAX, rooms: 3 }));
        assert_eq!(c.take_if_dirty(), None);
        c.mark_dirty();
        assert!(c.take_if_dirty().is_some());
    }
}
