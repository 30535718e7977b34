//! One namespace's state, sharded by message ID so that asks and publishes of different
//! IDs never contend. A cheap hash of the whole ID picks the shard (IDs are usually
//! hashes already; the fold also spreads IDs that differ in a few bytes); each shard holds
//! one table of its IDs, each either a stored message or the connections waiting for it
//! (never both: a stored message answers an ask at once), and their deadlines
//! ([`Deadlines`]), behind its own mutex, held for one table lookup per frame and never across
//! an `.await`. Which IDs a connection waits for is kept by the connection's own queue
//! ([`ConnQueue`]), not by the shards, so a shard's lock covers nothing per connection.
//!
//! What spans shards is atomic: the namespace's stored bytes (a reservation counter
//! that never passes `max_namespace_held_bytes`; each shard takes from it in steps of
//! [`NAMESPACE_STEP_BYTES`] and stores frames out of that allowance under its own lock,
//! giving it back once it stores nothing, on every sweep, and before a publish that
//! found the namespace full tries again, so a frame that fits is not refused), the
//! process-wide [`HeldBytes`] budget (charged each stored frame plus
//! [`STORED_MESSAGE_OVERHEAD`]), and its connection count. Each connection's waiting
//! asks are bounded (`max_pending_asks`) by its queue.
//!
//! Expiry: every stored message and every waiting ask pushes one (deadline, id) entry on
//! its shard's [`Deadlines`]. Whoever next touches the shard (a frame of an ID in it, the
//! periodic sweep) takes the entries that are due and forgets what they name; checking
//! costs two peeks when nothing is due. A publish refused for want of room, or an ask
//! refused for too many waiting, first expires what is due in every shard and tries
//! again, so expired entries of other shards never hold a budget. An entry can outlive
//! what it named (a one-receiver message taken early, an ask answered or dropped):
//! taking it then finds nothing due and does nothing, and the entries are rebuilt from
//! the live ones once stale ones outnumber them.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use smallvec::SmallVec;
use tokio::time::Instant;

use super::deadlines::Deadlines;
use super::queue::{ConnQueue, Pushed};
use super::{AskEnd, AskHook, FrameKind, IdHasher, MailboxError, MailboxHeader, MessageId, Namespace};
use crate::Limits;
use crate::budget::{HeldBytes, detach};

/// What a stored message costs against the process-wide held-bytes budget on top of its
/// frame: its entry in the shard's table (key and value), its deadline entry,
/// and the hash table's control byte, rounded up for the table's spare capacity.
pub const STORED_MESSAGE_OVERHEAD: usize = 2
    * (std::mem::size_of::<MessageId>()
        + std::mem::size_of::<Slot>()
        + std::mem::size_of::<(Instant, MessageId)>()
        + 1);

/// The least a shard takes of its namespace's byte bound at once (see
/// `Shard::allowance`); a shard keeps at most twice this unused.
pub const NAMESPACE_STEP_BYTES: usize = 64 << 10;

/// Deadline entries allowed beyond twice the live ones before they are rebuilt.
const DEADLINE_SLACK: usize = 64;

pub(super) struct Space {
    pub(super) namespace: Namespace,
    shards: Box<[Mutex<Shard>]>,
    /// Sum of the stored frames' lengths over every shard, bounded by
    /// `max_namespace_held_bytes`: raised before a frame is stored, lowered when it goes.
    held_bytes: AtomicUsize,
    /// The bound on `held_bytes`.
    max_held_bytes: usize,
    /// The process-wide budget stored messages also count against.
    global: HeldBytes,
    /// Connections in the namespace; with no stored message, zero means idle.
    connections: AtomicUsize,
}

/// One connection as the shards see it: its ID and its queue, which also keeps the IDs
/// it waits for.
pub(super) struct Member {
    pub(super) id: u64,
    pub(super) queue: ConnQueue,
}

#[derive(Default)]
struct Shard {
    /// Every ID of this shard that is stored or waited for.
    slots: HashMap<MessageId, Slot, IdHasher>,
    /// Stored messages among `slots`.
    stored: usize,
    deadlines: Deadlines,
    /// Sum of every connection's waiting asks in this shard.
    pending_asks: usize,
    /// Bytes of the namespace's bound this shard has taken but not used: stored frames
    /// take from it under the shard's lock, so the namespace's counter (one cache line
    /// for every core) is touched once per [`NAMESPACE_STEP_BYTES`] rather than twice per
    /// message. Zero whenever the shard stores nothing; given back on every sweep.
    allowance: usize,
}

/// What a shard knows of one ID.
enum Slot {
    /// A message published and kept for its TTL.
    Stored(Stored),
    /// Connections waiting for a message of the ID, in the order they asked; most IDs
    /// have one, kept without an allocation of its own.
    Waiting(SmallVec<[Waiter; 1]>),
}

struct Stored {
    /// The frame as published, header included, sent byte for byte to askers.
    frame: Bytes,
    expires_at: Instant,
    one_receiver: bool,
}

struct Waiter {
    member: Arc<Member>,
    deadline: Instant,
    /// When the ask came, to report how long it waited.
    asked_at: Instant,
}

/// What one namespace holds, summed over its shards.
pub(super) struct SpaceStats {
    pub(super) stored_messages: usize,
    pub(super) held_bytes: usize,
    pub(super) pending_asks: usize,
    pub(super) connections: usize,
}

impl Member {
    pub(super) fn new(id: u64, queue: ConnQueue) -> Member {
        Member { id, queue }
    }
}

impl Space {
    /// A namespace of `shards` shards (at least one), storing at most `max_held_bytes`
    /// and counting what it stores against `global` too.
    pub(super) fn new(
        namespace: Namespace,
        shards: usize,
        max_held_bytes: usize,
        global: HeldBytes,
    ) -> Space {
        let shards = (0..shards.max(1)).map(|_| Mutex::new(Shard::default())).collect();
        Space {
            namespace,
            shards,
            held_bytes: AtomicUsize::new(0),
            max_held_bytes,
            global,
            connections: AtomicUsize::new(0),
        }
    }

    fn budget(&self) -> Budget<'_> {
        Budget { held: &self.held_bytes, max: self.max_held_bytes, global: &self.global }
    }

    fn shard_of(&self, id: &MessageId) -> &Mutex<Shard> {
        // Every byte counts, so IDs that share a prefix or a suffix (a client's own
        // counter in a few bytes) still spread: fold the four words, multiplying by the
        // golden ratio after each, and take the high bits.
        let hash = id.chunks_exact(8).fold(0u64, |hash, word| {
            let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
            (hash ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        });
        let n = ((hash >> 32) % self.shards.len() as u64) as usize;
        &self.shards[n]
    }

    fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a connection in. Called under the registry lock, so an idle check cannot
    /// remove the namespace meanwhile.
    pub(super) fn add_conn(&self) {
        self.connections.fetch_add(1, Ordering::SeqCst);
    }

    /// Removes a connection: closes its queue, so nothing more is given to it, then
    /// withdraws every ask it had waiting from the shards that hold them.
    pub(super) fn remove_conn(&self, member: &Member) {
        for id in member.queue.close() {
            Self::lock(self.shard_of(&id)).withdraw(&id, member.id);
        }
        self.connections.fetch_sub(1, Ordering::SeqCst);
    }

    /// No connection and nothing stored: the namespace can be forgotten.
    pub(super) fn is_idle(&self) -> bool {
        self.connections.load(Ordering::SeqCst) == 0
            && self.shards.iter().all(|shard| Self::lock(shard).stored == 0)
    }

    pub(super) fn stats(&self) -> SpaceStats {
        let mut stats = SpaceStats {
            stored_messages: 0,
            held_bytes: self.held_bytes.load(Ordering::SeqCst),
            pending_asks: 0,
            connections: self.connections.load(Ordering::SeqCst),
        };
        for shard in &self.shards {
            let shard = Self::lock(shard);
            stats.stored_messages += shard.stored;
            stats.pending_asks += shard.pending_asks;
            // Taken for frames to come, not stored.
            stats.held_bytes = stats.held_bytes.saturating_sub(shard.allowance);
        }
        stats
    }

    /// Forgets every message and ask, in every shard, whose deadline is at or before
    /// `now`. Expired asks are reported to `on_ask`.
    pub(super) fn expire(&self, now: Instant, on_ask: Option<&AskHook>) {
        for shard in &self.shards {
            let mut shard = Self::lock(shard);
            shard.expire(now, self.budget(), on_ask);
            // What a shard holds for frames to come is given back, so a publish that
            // found the namespace full sees every byte that is not stored.
            shard.give_back_allowance(self.budget());
        }
    }

    /// Handles one frame from connection `from` at `now`, under the lock of its ID's
    /// shard only. The consumers that must be woken for frames queued to them are added
    /// to `wakes`, for the caller to wake once it has released the lock. Asks answered or
    /// expired are reported to `on_ask`.
    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
    pub(super) fn handle(
        &self,
        from: &Arc<Member>,
        frame: Bytes,
        header: &MailboxHeader,
        limits: &Limits,
        now: Instant,
        wakes: &mut Vec<Waker>,
        on_ask: Option<&AskHook>,
    ) -> Result<(), MailboxError> {
        let ttl = Duration::from_secs(u64::from(header.ttl_secs)).min(limits.max_mailbox_ttl);
        let shard = self.shard_of(&header.id);
        let mut guard = Self::lock(shard);
        guard.expire(now, self.budget(), on_ask);
        match header.kind {
            FrameKind::Ask => {
                let held = self.budget();
                let answered = match guard.ask(from, &header.id, ttl, limits, now, wakes, held) {
                    Err(MailboxError::TooManyAsks { .. }) => {
                        // Asks of this connection that expired in other shards still
                        // count until those shards are touched: expire them, try again.
                        drop(guard);
                        self.expire(now, on_ask);
                        Self::lock(shard).ask(from, &header.id, ttl, limits, now, wakes, held)?
                    }
                    answered => answered?,
                };
                if let (true, Some(hook)) = (answered, on_ask) {
                    hook(AskEnd::Answered { waited: Duration::ZERO });
                }
                Ok(())
            }
            FrameKind::Publish => {
                let budget = self.budget();
                match guard.publish(&frame, header, ttl, budget, now, wakes, on_ask) {
                    Err(MailboxError::NamespaceFull { .. } | MailboxError::HeldBytesFull { .. }) => {
                        // Expired messages of other shards may hold the budget: forget
                        // them and try once more. The other shards are locked one at a
                        // time, never two at once, so shards cannot deadlock.
                        drop(guard);
                        self.expire(now, on_ask);
                        let mut guard = Self::lock(shard);
                        guard.publish(&frame, header, ttl, budget, now, wakes, on_ask).map(drop)
                    }
                    handled => handled.map(drop),
                }
            }
        }
    }

    /// Hands `frame`, a publish that came from elsewhere (another instance), to the
    /// connections waiting for its ID now, without storing it: one of them for a
    /// one-receiver message. Nothing happens when a message of that ID is stored here
    /// already (its askers were answered). Returns whether anyone got it.
    pub(super) fn deliver(
        &self,
        frame: Bytes,
        header: &MailboxHeader,
        now: Instant,
        wakes: &mut Vec<Waker>,
        on_ask: Option<&AskHook>,
    ) -> bool {
        let mut guard = Self::lock(self.shard_of(&header.id));
        guard.expire(now, self.budget(), on_ask);
        // A zero TTL stores nothing, so the namespace's budget is never reserved; frames
        // queued for the waiters still count against the process-wide one.
        let budget = Budget { max: usize::MAX, ..self.budget() };
        guard.publish(&frame, header, Duration::ZERO, budget, now, wakes, on_ask).unwrap_or(false)
    }

    /// Whether some connection waits for `id` now.
    pub(super) fn is_waiting(&self, id: &MessageId) -> bool {
        matches!(Self::lock(self.shard_of(id)).slots.get(id), Some(Slot::Waiting(_)))
    }

    /// Whether a message of `id` is stored here now (expired ones may still count until
    /// their shard is next touched).
    pub(super) fn holds(&self, id: &MessageId) -> bool {
        matches!(Self::lock(self.shard_of(id)).slots.get(id), Some(Slot::Stored(_)))
    }

    /// The namespace's counter as it stands: stored bytes plus the shards' allowances.
    #[cfg(test)]
    pub(super) fn counted_bytes(&self) -> usize {
        self.held_bytes.load(Ordering::SeqCst)
    }

    #[cfg(test)]
    pub(super) fn deadline_lens(&self) -> Vec<usize> {
        self.shards.iter().map(|shard| Self::lock(shard).deadlines.len()).collect()
    }

    #[cfg(test)]
    pub(super) fn shard_index(&self, id: &MessageId) -> usize {
        let shard: *const Mutex<Shard> = self.shard_of(id);
        self.shards.iter().position(|s| std::ptr::eq(s, shard)).unwrap_or(usize::MAX)
    }
}

/// The namespace's byte budget (the shared counter and its limit) and the process-wide
/// one.
#[derive(Clone, Copy)]
struct Budget<'a> {
    held: &'a AtomicUsize,
    max: usize,
    global: &'a HeldBytes,
}

impl Budget<'_> {
    /// Takes `n` bytes of the namespace's bound if they fit.
    fn take(self, n: usize) -> bool {
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                held.checked_add(n).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken by [`Budget::take`].
    fn give_back(self, n: usize) {
        if n > 0 {
            self.held.fetch_sub(n, Ordering::SeqCst);
        }
    }
}

impl Shard {
    /// Reserves a frame of `len` bytes in the namespace (from the shard's allowance,
    /// topped up by at least a step) and, with its overhead, in the process, or neither:
    /// says which is full. Near the bound the allowance is topped up by exactly what is
    /// missing, so a step never refuses a frame that fits.
    fn reserve(&mut self, len: usize, budget: Budget<'_>) -> Result<(), MailboxError> {
        if self.allowance < len {
            let short = len - self.allowance;
            let step = short.max(NAMESPACE_STEP_BYTES);
            if budget.take(step) {
                self.allowance += step;
            } else if step > short && budget.take(short) {
                self.allowance += short;
            } else {
                return Err(MailboxError::NamespaceFull { max: budget.max });
            }
        }
        if !budget.global.try_reserve(len + STORED_MESSAGE_OVERHEAD) {
            if self.stored == 0 {
                self.give_back_allowance(budget);
            }
            return Err(MailboxError::HeldBytesFull { max: budget.global.max() });
        }
        self.allowance -= len;
        Ok(())
    }

    /// Gives back what [`Shard::reserve`] took for a frame of `len` bytes: the process's
    /// share at once, the namespace's to the allowance (all of it once the shard stores
    /// nothing, what exceeds a step beyond two).
    fn release(&mut self, len: usize, budget: Budget<'_>) {
        budget.global.release(len + STORED_MESSAGE_OVERHEAD);
        self.allowance += len;
        if self.stored == 0 {
            self.give_back_allowance(budget);
        } else if self.allowance > 2 * NAMESPACE_STEP_BYTES {
            budget.give_back(self.allowance - NAMESPACE_STEP_BYTES);
            self.allowance = NAMESPACE_STEP_BYTES;
        }
    }

    /// Returns the whole unused allowance to the namespace.
    fn give_back_allowance(&mut self, budget: Budget<'_>) {
        budget.give_back(std::mem::take(&mut self.allowance));
    }

    fn expire(&mut self, now: Instant, budget: Budget<'_>, on_ask: Option<&AskHook>) {
        while let Some(id) = self.deadlines.pop_due(now) {
            self.expire_id(&id, now, budget, on_ask);
        }
    }

    fn expire_id(&mut self, id: &MessageId, now: Instant, budget: Budget<'_>, on_ask: Option<&AskHook>) {
        let Entry::Occupied(mut slot) = self.slots.entry(*id) else { return };
        match slot.get_mut() {
            Slot::Stored(stored) => {
                if stored.expires_at > now {
                    return;
                }
                let len = stored.frame.len();
                slot.remove();
                self.stored -= 1;
                self.release(len, budget);
            }
            Slot::Waiting(waiters) => {
                let mut expired = 0;
                waiters.retain(|w| {
                    let live = w.deadline > now;
                    if !live {
                        expired += 1;
                        w.member.queue.forget_ask(id);
                    }
                    live
                });
                if waiters.is_empty() {
                    slot.remove();
                }
                self.pending_asks -= expired;
                if let Some(hook) = on_ask {
                    (0..expired).for_each(|_| hook(AskEnd::Expired));
                }
            }
        }
    }

    /// Withdraws the ask of connection `member` for `id`, if it still waits.
    fn withdraw(&mut self, id: &MessageId, member: u64) {
        let Entry::Occupied(mut slot) = self.slots.entry(*id) else { return };
        let Slot::Waiting(waiters) = slot.get_mut() else { return };
        let before = waiters.len();
        waiters.retain(|w| w.member.id != member);
        self.pending_asks -= before - waiters.len();
        if waiters.is_empty() {
            slot.remove();
        }
    }

    /// Returns whether the ask was answered at once from storage.
    #[allow(clippy::too_many_arguments)] // one call site, in `Space::handle`
    fn ask(
        &mut self,
        from: &Arc<Member>,
        id: &MessageId,
        ttl: Duration,
        limits: &Limits,
        now: Instant,
        wakes: &mut Vec<Waker>,
        budget: Budget<'_>,
    ) -> Result<bool, MailboxError> {
        let entry = self.slots.entry(*id);
        if let Entry::Occupied(slot) = &entry
            && let Slot::Stored(stored) = slot.get()
        {
            match from.queue.push(stored.frame.clone()) {
                Pushed::Queued(waker) => wakes.extend(waker),
                Pushed::Slow | Pushed::Closed => return Err(MailboxError::SlowConsumer),
            }
            if stored.one_receiver {
                let len = stored.frame.len();
                if let Entry::Occupied(slot) = entry {
                    slot.remove();
                }
                self.stored -= 1;
                self.release(len, budget);
            }
            return Ok(true);
        }
        // Not stored: the ask waits, unless it asked not to or waits already (one
        // delivery per connection, and no second deadline entry).
        if ttl.is_zero() || !from.queue.add_ask(id, limits.max_pending_asks)? {
            return Ok(false);
        }
        let deadline = now + ttl;
        let waiter = Waiter { member: from.clone(), deadline, asked_at: now };
        match entry {
            Entry::Occupied(mut slot) => {
                if let Slot::Waiting(waiters) = slot.get_mut() {
                    waiters.push(waiter);
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(Slot::Waiting(SmallVec::from_buf([waiter])));
            }
        }
        self.pending_asks += 1;
        self.push_deadline(deadline, id);
        Ok(false)
    }

    /// Returns whether a waiting connection got the frame. Waiting connections get
    /// views of `frame` (its read buffer stays shared, for as long as the frame is
    /// queued); what is stored is [`detach`]ed first, so a small message kept for its
    /// TTL never keeps a larger read buffer alive.
    #[allow(clippy::too_many_arguments)] // called by `Space::handle` and `Space::deliver` only
    fn publish(
        &mut self,
        frame: &Bytes,
        header: &MailboxHeader,
        ttl: Duration,
        budget: Budget<'_>,
        now: Instant,
        wakes: &mut Vec<Waker>,
        on_ask: Option<&AskHook>,
    ) -> Result<bool, MailboxError> {
        let id = &header.id;
        // Taken out of the table, and put back where they stay: one lookup when the
        // publish answers its waiters, as most do.
        let waiters = match self.slots.remove(id) {
            Some(stored @ Slot::Stored(_)) => {
                // The first PUB of an ID wins while it lives.
                self.slots.insert(*id, stored);
                return Ok(false);
            }
            Some(Slot::Waiting(waiters)) => waiters,
            None => SmallVec::new(),
        };
        let one_receiver = header.one_receiver();
        let taken_at_once = one_receiver && !waiters.is_empty();
        let would_store = !(ttl.is_zero() || taken_at_once);
        // Reserved before anyone is answered, so a refused PUB delivers nothing.
        if would_store && let Err(full) = self.reserve(frame.len(), budget) {
            if !waiters.is_empty() {
                self.slots.insert(*id, Slot::Waiting(waiters));
            }
            return Err(full);
        }
        let reserved = would_store;
        let mut delivered = false;
        let mut rest = SmallVec::<[Waiter; 1]>::new();
        for w in waiters {
            if one_receiver && delivered {
                rest.push(w);
                continue;
            }
            self.pending_asks -= 1;
            // A slow or closing connection does not get it; for a one-receiver message,
            // the next waiter does.
            if let Pushed::Queued(waker) = w.member.queue.answer(id, frame.clone()) {
                wakes.extend(waker);
                delivered = true;
                if let Some(hook) = on_ask {
                    hook(AskEnd::Answered { waited: now.saturating_duration_since(w.asked_at) });
                }
            }
        }
        if !rest.is_empty() {
            // Only after a one-receiver delivery, which stores nothing below.
            self.slots.insert(*id, Slot::Waiting(rest));
        }
        if ttl.is_zero() || (one_receiver && delivered) {
            if reserved {
                self.release(frame.len(), budget);
            }
            return Ok(delivered);
        }
        if !reserved && self.reserve(frame.len(), budget).is_err() {
            // Only reachable when a one-receiver delivery failed on a slow consumer and
            // the budget is full; nobody is owed this message.
            return Ok(delivered);
        }
        let expires_at = now + ttl;
        self.slots.insert(*id, Slot::Stored(Stored { frame: detach(frame), expires_at, one_receiver }));
        self.stored += 1;
        self.push_deadline(expires_at, id);
        Ok(delivered)
    }

    fn push_deadline(&mut self, at: Instant, id: &MessageId) {
        self.deadlines.push(at, id);
        let live = self.stored + self.pending_asks;
        if self.deadlines.len() > 2 * live + DEADLINE_SLACK {
            self.rebuild_deadlines();
        }
    }

    /// Keeps one deadline per live message and waiting ask.
    fn rebuild_deadlines(&mut self) {
        let slots = &self.slots;
        self.deadlines.rebuild(|entries| {
            for (id, slot) in slots {
                match slot {
                    Slot::Stored(m) => entries.push((m.expires_at, *id)),
                    Slot::Waiting(waiters) => entries.extend(waiters.iter().map(|w| (w.deadline, *id))),
                }
            }
        });
    }
}
