//! The deadlines of one shard's stored messages and waiting asks, taken earliest first.
//!
//! Most arrive in order: `now` only moves forward and a namespace's clients mostly ask
//! for one TTL, so a deadline is usually no earlier than the one before it. Those are
//! appended to a queue, a copy into memory already written; one that comes earlier
//! than the last goes to a min-heap beside it, and taking the earliest compares the two
//! fronts. Before, every deadline went through one heap, whose sift compared 32-byte
//! IDs whenever deadlines tied (asks of one read burst share `now`), and which was
//! rebuilt into a fresh allocation: with the stale entries, about 8 % of the relay's
//! CPU at 256 B.
//!
//! An entry is not removed when what it names goes early (an ask answered, a
//! one-receiver message taken): the shard rebuilds from what lives ([`Deadlines::rebuild`])
//! once stale entries outnumber live ones, reusing the allocation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use tokio::time::Instant;

use super::MessageId;

#[derive(Default)]
pub(super) struct Deadlines {
    /// Deadlines no earlier than the one before them, in the order they came.
    in_order: VecDeque<(Instant, MessageId)>,
    /// Deadlines that came earlier than the last one in `in_order`.
    out_of_order: BinaryHeap<Reverse<(Instant, MessageId)>>,
}

impl Deadlines {
    pub(super) fn push(&mut self, at: Instant, id: &MessageId) {
        match self.in_order.back() {
            Some(&(last, _)) if at < last => self.out_of_order.push(Reverse((at, *id))),
            _ => self.in_order.push_back((at, *id)),
        }
    }

    /// Entries held, live or stale.
    pub(super) fn len(&self) -> usize {
        self.in_order.len() + self.out_of_order.len()
    }

    /// Removes the earliest entry if it is due at `now`, and returns the ID it names.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<MessageId> {
        let queued = self.in_order.front().map(|&(at, _)| at);
        let heaped = self.out_of_order.peek().map(|Reverse((at, _))| *at);
        match (queued, heaped) {
            (Some(at), heaped) if at <= now && heaped.is_none_or(|h| at <= h) => {
                self.in_order.pop_front().map(|(_, id)| id)
            }
            (_, Some(at)) if at <= now => self.out_of_order.pop().map(|Reverse((_, id))| id),
            _ => None,
        }
    }

    /// Replaces every entry with those `fill` writes (in any order), keeping the
    /// allocation.
    pub(super) fn rebuild(&mut self, fill: impl FnOnce(&mut Vec<(Instant, MessageId)>)) {
        let mut entries = Vec::from(std::mem::take(&mut self.in_order));
        entries.clear();
        fill(&mut entries);
        entries.sort_unstable_by_key(|&(at, _)| at);
        self.in_order = VecDeque::from(entries);
        self.out_of_order.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn deadlines_come_out_earliest_first_however_they_went_in() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut d = Deadlines::default();
        for (s, n) in [(5, 1), (5, 2), (3, 3), (9, 4), (1, 5), (9, 6), (7, 7)] {
            d.push(at(s), &[n; 32]);
        }
        assert_eq!(d.len(), 7);
        assert_eq!(d.pop_due(at(0)), None);
        let mut order = Vec::new();
        while let Some(id) = d.pop_due(at(100)) {
            order.push(id[0]);
        }
        assert_eq!(order, [5, 3, 1, 2, 7, 4, 6]);
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn only_what_is_due_comes_out_and_a_rebuild_keeps_only_what_it_is_given() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut d = Deadlines::default();
        for s in [2, 4, 1, 6, 3] {
            d.push(at(s), &[s as u8; 32]);
        }
        assert_eq!(d.pop_due(at(2)), Some([1; 32]));
        assert_eq!(d.pop_due(at(2)), Some([2; 32]));
        assert_eq!(d.pop_due(at(2)), None);
        d.rebuild(|entries| entries.extend([(at(6), [6; 32]), (at(3), [3; 32])]));
        assert_eq!(d.len(), 2);
        assert_eq!(d.pop_due(at(10)), Some([3; 32]));
        assert_eq!(d.pop_due(at(10)), Some([6; 32]));
        assert_eq!(d.pop_due(at(10)), None);
    }
}
