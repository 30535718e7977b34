//! One namespace's state: stored messages, waiting asks, the connections in it and a
//! min-heap of deadlines. Everything sits behind one mutex that is held for a few hash
//! operations and never across an `.await`.
//!
//! Expiry: every stored message and every waiting ask pushes one (deadline, id) entry on
//! the heap. Whoever next touches the namespace (a frame, a disconnect, the periodic
//! sweep) pops the entries that are due and forgets what they name; checking costs one
//! peek when nothing is due. An entry can outlive what it named (a one-receiver message
//! taken early, an ask answered or dropped): popping it then finds nothing due and does
//! nothing, and the heap is rebuilt from the live entries once stale ones outnumber them.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::queue::{ConnQueue, Pushed};
use super::{AskEnd, AskHook, FrameKind, MailboxError, MailboxHeader, MessageId, Namespace};
use crate::Limits;

/// Heap entries allowed beyond twice the live ones before the heap is rebuilt.
const HEAP_SLACK: usize = 64;

pub(super) struct Space {
    pub(super) namespace: Namespace,
    pub(super) state: std::sync::Mutex<SpaceState>,
}

#[derive(Default)]
pub(super) struct SpaceState {
    messages: HashMap<MessageId, Stored>,
    waiting: HashMap<MessageId, Vec<Waiter>>,
    conns: HashMap<u64, ConnSlot>,
    deadlines: BinaryHeap<Reverse<(Instant, MessageId)>>,
    /// Sum of the stored frames' lengths, bounded by `max_namespace_held_bytes`.
    pub(super) held_bytes: usize,
    /// Sum of every connection's waiting asks.
    pub(super) pending_asks: usize,
}

struct Stored {
    /// The frame as published, header included, sent byte for byte to askers.
    frame: Bytes,
    expires_at: Instant,
    one_receiver: bool,
}

/// The connection a frame came from: its ID and its own queue (an ASK answered from
/// storage is queued to it).
pub(super) struct Sender<'a> {
    pub(super) conn: u64,
    pub(super) queue: &'a ConnQueue,
}

struct Waiter {
    conn: u64,
    deadline: Instant,
    /// When the ask came, to report how long it waited.
    asked_at: Instant,
}

struct ConnSlot {
    queue: Arc<ConnQueue>,
    /// The IDs this connection waits for: bounds its asks and finds them on disconnect.
    asked: HashSet<MessageId>,
}

impl Space {
    pub(super) fn new(namespace: Namespace) -> Space {
        Space { namespace, state: std::sync::Mutex::new(SpaceState::default()) }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, SpaceState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SpaceState {
    pub(super) fn add_conn(&mut self, id: u64, queue: Arc<ConnQueue>) {
        self.conns.insert(id, ConnSlot { queue, asked: HashSet::new() });
    }

    /// Removes a connection and every ask it had waiting.
    pub(super) fn remove_conn(&mut self, id: u64) {
        let Some(slot) = self.conns.remove(&id) else { return };
        self.pending_asks -= slot.asked.len();
        for msg_id in &slot.asked {
            if let Entry::Occupied(mut waiters) = self.waiting.entry(*msg_id) {
                waiters.get_mut().retain(|w| w.conn != id);
                if waiters.get().is_empty() {
                    waiters.remove();
                }
            }
        }
    }

    /// No connection and nothing stored: the namespace can be forgotten.
    pub(super) fn is_idle(&self) -> bool {
        self.conns.is_empty() && self.messages.is_empty()
    }

    pub(super) fn stored_messages(&self) -> usize {
        self.messages.len()
    }

    pub(super) fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Forgets every message and ask whose deadline is at or before `now`.
    /// Expired asks are reported to `on_ask`.
    pub(super) fn expire(&mut self, now: Instant, on_ask: Option<&AskHook>) {
        while let Some(Reverse((at, id))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            self.expire_id(&id, now, on_ask);
        }
    }

    fn expire_id(&mut self, id: &MessageId, now: Instant, on_ask: Option<&AskHook>) {
        if let Entry::Occupied(stored) = self.messages.entry(*id)
            && stored.get().expires_at <= now
        {
            self.held_bytes -= stored.remove().frame.len();
        }
        if let Entry::Occupied(mut waiters) = self.waiting.entry(*id) {
            let conns = &mut self.conns;
            let mut expired = 0;
            waiters.get_mut().retain(|w| {
                let live = w.deadline > now;
                if !live {
                    expired += 1;
                    if let Some(slot) = conns.get_mut(&w.conn) {
                        slot.asked.remove(id);
                    }
                }
                live
            });
            self.pending_asks -= expired;
            if let Some(hook) = on_ask {
                (0..expired).for_each(|_| hook(AskEnd::Expired));
            }
            if waiters.get().is_empty() {
                waiters.remove();
            }
        }
    }

    /// Handles one frame from connection `from` at `now`. The consumers that must be
    /// woken for frames queued to them are added to `wakes`, for the caller to wake once
    /// it has released the namespace lock. Asks answered or expired are reported to
    /// `on_ask`.
    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
    pub(super) fn handle(
        &mut self,
        from: Sender<'_>,
        frame: Bytes,
        header: &MailboxHeader,
        limits: &Limits,
        now: Instant,
        wakes: &mut Vec<Waker>,
        on_ask: Option<&AskHook>,
    ) -> Result<(), MailboxError> {
        self.expire(now, on_ask);
        let ttl = Duration::from_secs(u64::from(header.ttl_secs)).min(limits.max_mailbox_ttl);
        match header.kind {
            FrameKind::Ask => {
                let answered = self.ask(from, &header.id, ttl, limits, now, wakes)?;
                if let (true, Some(hook)) = (answered, on_ask) {
                    hook(AskEnd::Answered { waited: std::time::Duration::ZERO });
                }
                Ok(())
            }
            FrameKind::Publish => self.publish(frame, header, ttl, limits, now, wakes, on_ask),
        }
    }

    /// Returns whether the ask was answered at once from storage.
    fn ask(
        &mut self,
        Sender { conn, queue: own }: Sender<'_>,
        id: &MessageId,
        ttl: std::time::Duration,
        limits: &Limits,
        now: Instant,
        wakes: &mut Vec<Waker>,
    ) -> Result<bool, MailboxError> {
        if let Entry::Occupied(stored) = self.messages.entry(*id) {
            match own.push(stored.get().frame.clone()) {
                Pushed::Queued(waker) => wakes.extend(waker),
                Pushed::Slow => return Err(MailboxError::SlowConsumer),
            }
            if stored.get().one_receiver {
                self.held_bytes -= stored.remove().frame.len();
            }
            return Ok(true);
        }
        if ttl.is_zero() {
            return Ok(false);
        }
        let Some(slot) = self.conns.get_mut(&conn) else { return Ok(false) };
        if slot.asked.contains(id) {
            // Already waiting: one delivery per connection, and no second heap entry.
            return Ok(false);
        }
        if slot.asked.len() >= limits.max_pending_asks {
            return Err(MailboxError::TooManyAsks { max: limits.max_pending_asks });
        }
        slot.asked.insert(*id);
        let deadline = now + ttl;
        self.waiting.entry(*id).or_default().push(Waiter { conn, deadline, asked_at: now });
        self.pending_asks += 1;
        self.push_deadline(deadline, id);
        Ok(false)
    }

    #[allow(clippy::too_many_arguments)] // one call site, next to `handle`'s
    fn publish(
        &mut self,
        frame: Bytes,
        header: &MailboxHeader,
        ttl: std::time::Duration,
        limits: &Limits,
        now: Instant,
        wakes: &mut Vec<Waker>,
        on_ask: Option<&AskHook>,
    ) -> Result<(), MailboxError> {
        let id = &header.id;
        if self.messages.contains_key(id) {
            // The first PUB of an ID wins while it lives.
            return Ok(());
        }
        let one_receiver = header.one_receiver();
        let taken_at_once = one_receiver && self.waiting.contains_key(id);
        let would_store = !(ttl.is_zero() || taken_at_once);
        if would_store && self.held_bytes + frame.len() > limits.max_namespace_held_bytes {
            return Err(MailboxError::NamespaceFull { max: limits.max_namespace_held_bytes });
        }
        let mut delivered = false;
        if let Some(waiters) = self.waiting.remove(id) {
            let mut rest = Vec::new();
            for w in waiters {
                if one_receiver && delivered {
                    rest.push(w);
                    continue;
                }
                let Some(slot) = self.conns.get_mut(&w.conn) else { continue };
                slot.asked.remove(id);
                self.pending_asks -= 1;
                if let Pushed::Queued(waker) = slot.queue.push(frame.clone()) {
                    wakes.extend(waker);
                    delivered = true;
                    if let Some(hook) = on_ask {
                        hook(AskEnd::Answered { waited: now.saturating_duration_since(w.asked_at) });
                    }
                }
            }
            if !rest.is_empty() {
                self.waiting.insert(*id, rest);
            }
        }
        if ttl.is_zero() || (one_receiver && delivered) {
            return Ok(());
        }
        if self.held_bytes + frame.len() > limits.max_namespace_held_bytes {
            // Only reachable when a one-receiver delivery failed on a slow consumer after
            // the check above passed without storage; nobody is owed this message.
            return Ok(());
        }
        let expires_at = now + ttl;
        self.held_bytes += frame.len();
        self.messages.insert(*id, Stored { frame, expires_at, one_receiver });
        self.push_deadline(expires_at, id);
        Ok(())
    }

    fn push_deadline(&mut self, at: Instant, id: &MessageId) {
        self.deadlines.push(Reverse((at, *id)));
        let live = self.messages.len() + self.pending_asks;
        if self.deadlines.len() > 2 * live + HEAP_SLACK {
            self.rebuild_deadlines();
        }
    }

    /// Replaces the heap with one entry per live message and waiting ask.
    fn rebuild_deadlines(&mut self) {
        let mut entries = Vec::with_capacity(self.messages.len() + self.pending_asks);
        entries.extend(self.messages.iter().map(|(id, m)| Reverse((m.expires_at, *id))));
        for (id, waiters) in &self.waiting {
            entries.extend(waiters.iter().map(|w| Reverse((w.deadline, *id))));
        }
        self.deadlines = BinaryHeap::from(entries);
    }

    #[cfg(test)]
    pub(super) fn heap_len(&self) -> usize {
        self.deadlines.len()
    }
}
