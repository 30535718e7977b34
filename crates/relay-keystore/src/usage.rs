//! Per-key usage counters: lock-free adds on the hot path, written to the store in
//! batches by [`crate::KeyStore::flush_usage`].
//!
//! Each key has a `base` (the totals the store holds, as far as this process knows) and
//! `pending` (added here since the last successful write). The total shown is their
//! sum. A flush moves `pending` into `base` before writing (so the shown total never
//! dips, which a Prometheus counter would read as a reset) and moves it back if the
//! write fails. With PostgreSQL, `base` is then replaced by the deployment's totals read
//! back from the database.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::record::Usage;

/// Running totals of one key.
#[derive(Debug, Default)]
pub(crate) struct UsageCounters {
    base: [AtomicU64; 3],
    pending: [AtomicU64; 3],
}

impl UsageCounters {
    pub(crate) fn starting_at(usage: Usage) -> Self {
        let counters = Self::default();
        counters.set_base(usage);
        counters
    }

    /// Adds to the pending counts (saturating at `u64::MAX`).
    pub(crate) fn add(&self, messages: u64, bytes: u64, rooms: u64) {
        for (counter, n) in self.pending.iter().zip([messages, bytes, rooms]) {
            saturating_add(counter, n);
        }
    }

    /// The totals: what the store holds plus what is pending here.
    pub(crate) fn snapshot(&self) -> Usage {
        let [m, b, r] = std::array::from_fn(|i| {
            self.base[i].load(Ordering::Relaxed).saturating_add(self.pending[i].load(Ordering::Relaxed))
        });
        Usage { messages: m, bytes: b, rooms: r }
    }

    /// Moves the pending counts into the base and returns them (the delta to write), or
    /// `None` when nothing is pending. Call [`UsageCounters::restore`] with the delta if
    /// the write then fails.
    pub(crate) fn take_pending(&self) -> Option<Usage> {
        let [m, b, r] = std::array::from_fn(|i| {
            let n = self.pending[i].load(Ordering::Acquire);
            // Base first, then pending: a reader sees the total rise, never dip.
            saturating_add(&self.base[i], n);
            self.pending[i].fetch_sub(n, Ordering::AcqRel);
            n
        });
        let delta = Usage { messages: m, bytes: b, rooms: r };
        (delta != Usage::default()).then_some(delta)
    }

    /// Gives back a delta whose write failed: it is pending again.
    pub(crate) fn restore(&self, delta: Usage) {
        for (i, n) in [delta.messages, delta.bytes, delta.rooms].into_iter().enumerate() {
            saturating_add(&self.pending[i], n);
            let _ =
                self.base[i].fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(n)));
        }
    }

    /// Replaces the base with totals read from the store.
    pub(crate) fn set_base(&self, usage: Usage) {
        for (counter, n) in self.base.iter().zip([usage.messages, usage.bytes, usage.rooms]) {
            counter.store(n, Ordering::Release);
        }
    }
}

fn saturating_add(counter: &AtomicU64, n: u64) {
    if n == 0 {
        return;
    }
    // Never fails: the closure always returns Some.
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_add(n)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_only_after_adds_and_saturates() {
        let c = UsageCounters::starting_at(Usage { messages: 1, bytes: 2, rooms: 3 });
        assert_eq!(c.take_pending(), None);
        c.add(1, u64::MAX, 0);
        assert_eq!(c.snapshot(), Usage { messages: 2, bytes: u64::MAX, rooms: 3 });
        assert_eq!(c.take_pending(), Some(Usage { messages: 1, bytes: u64::MAX, rooms: 0 }));
        assert_eq!(c.take_pending(), None);
        assert_eq!(c.snapshot(), Usage { messages: 2, bytes: u64::MAX, rooms: 3 });
    }

    #[test]
    fn a_restored_delta_is_pending_again_and_the_total_is_unchanged() {
        let c = UsageCounters::starting_at(Usage { messages: 10, bytes: 100, rooms: 1 });
        c.add(2, 20, 1);
        let delta = c.take_pending().expect("pending");
        c.restore(delta);
        assert_eq!(c.snapshot(), Usage { messages: 12, bytes: 120, rooms: 2 });
        assert_eq!(c.take_pending(), Some(Usage { messages: 2, bytes: 20, rooms: 1 }));
    }
}
