//! The mailbox: the Silence Labs compatible message relay (docs/protocol.md section 4),
//! without sockets.
//!
//! A [`Mailbox`] holds namespaces; [`Mailbox::connect`] joins one and returns a
//! [`MailboxConn`]. Frames from the client go to [`MailboxConn::handle_frame`] (or, for a
//! burst, [`MailboxConn::handle_frame_deferred`] then [`MailboxConn::wake_receivers`]);
//! frames for the client come out of [`MailboxConn::recv`] / [`MailboxConn::recv_many`] /
//! [`MailboxConn::poll_recv_many`]. A PUB
//! is stored until its TTL and sent to every connection waiting for its ID; an ASK is
//! answered from storage at once or waits until its own TTL. Stored frames are the
//! [`Bytes`] the client sent: never copied, only reference-counted.
//!
//! Bounds: a frame is at most `max_message_bytes`; a namespace stores at most
//! `max_namespace_held_bytes`; a connection has at most `max_pending_asks` waiting asks
//! and `send_queue_frames` frames (`send_queue_bytes` bytes) queued towards it, past
//! which it is a slow consumer. Stored and queued frames also count against the
//! process-wide held-bytes budget ([`crate::budget`]), shared with rooms; a PUB that
//! does not fit is refused ([`MailboxError::HeldBytesFull`]).
//! A namespace is split into `mailbox_namespace_shards` shards by message ID, each with
//! its own lock, so frames of different IDs never contend. Expiry is a per-shard queue
//! of deadlines (`deadlines.rs`) taken by whoever next touches the shard, plus one sweeper task
//! per [`Mailbox`] ([`Mailbox::start`]) that also forgets idle namespaces.
//!
//! The frame layout itself lives in `relay_proto::mailbox`; the items a transport needs
//! ([`HEADER_LEN`], [`FLAG_ONE_RECEIVER`], [`MessageId`]) are re-exported here.

mod deadlines;
mod queue;
mod space;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

pub use queue::{CHARGE_STEP_BYTES, QUEUED_FRAME_OVERHEAD};
pub use relay_proto::mailbox::{FLAG_ONE_RECEIVER, FrameKind, HEADER_LEN, MailboxHeader, MessageId};
pub use space::{NAMESPACE_STEP_BYTES, STORED_MESSAGE_OVERHEAD};

/// The hasher of every table keyed by message ID: seeded at random per table, so a
/// client cannot choose IDs that collide, and several times cheaper than the standard
/// library's SipHash on 32-byte keys (which cost about 7 % of the relay's CPU at 256 B).
type IdHasher = foldhash::fast::RandomState;

use crate::{CoreError, HeldBytes, Limits, RoomId};
use queue::ConnQueue;
use space::{Member, Space};

/// How often the background sweeper forgets expired messages and asks in namespaces
/// nobody touches, and removes idle namespaces. Active namespaces expire lazily on every
/// frame, so this only bounds how long idle memory lingers.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Why the mailbox refused a frame or a connection. The transport closes the
/// connection with the code named on each variant.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MailboxError {
    /// Close 1007: a frame shorter than the 36-byte header.
    #[error("frame shorter than 36 bytes ({len} bytes)")]
    FrameTooShort {
        /// The frame's length.
        len: usize,
    },
    /// Close 1009: a frame over `max_message_bytes`.
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    FrameTooBig {
        /// The frame's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Close 1013: storing the message would pass `max_namespace_held_bytes`.
    #[error("namespace storage full ({max} bytes)")]
    NamespaceFull {
        /// The limit.
        max: usize,
    },
    /// Close 1013: storing the message would pass the process-wide `max_held_bytes`.
    #[error("relay memory budget full ({max} bytes held)")]
    HeldBytesFull {
        /// The limit.
        max: usize,
    },
    /// Close 1013: the connection already has `max_pending_asks` asks waiting.
    #[error("too many pending asks (limit {max})")]
    TooManyAsks {
        /// The limit.
        max: usize,
    },
    /// Close 1013: more than `send_queue_frames` frames (or `send_queue_bytes` bytes)
    /// waited to be sent to the connection; what it had queued was dropped.
    #[error("slow consumer")]
    SlowConsumer,
}

/// A namespace: message IDs of different namespaces never meet. Any bytes; use
/// [`Namespace::tenant`] and [`Namespace::room`] so tenants and rooms cannot collide.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Namespace(Bytes);

impl Namespace {
    /// A namespace named by `name` exactly.
    pub fn new(name: impl Into<Bytes>) -> Namespace {
        Namespace(name.into())
    }

    /// The namespace of an API-key tenant: `t:<tenant>`.
    pub fn tenant(tenant: &str) -> Namespace {
        Namespace(Bytes::from(format!("t:{tenant}")))
    }

    /// The namespace of a room-scoped mailbox: `r:<room id>`.
    pub fn room(room: &RoomId) -> Namespace {
        Namespace(Bytes::from(format!("r:{room}")))
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<&str> for Namespace {
    fn from(s: &str) -> Namespace {
        Namespace(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for Namespace {
    fn from(s: String) -> Namespace {
        Namespace(Bytes::from(s))
    }
}

impl From<Vec<u8>> for Namespace {
    fn from(v: Vec<u8>) -> Namespace {
        Namespace(Bytes::from(v))
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({:?})", String::from_utf8_lossy(&self.0))
    }
}

/// A snapshot of what the mailbox holds, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxStats {
    /// Namespaces alive (with a connection or a stored message).
    pub namespaces: usize,
    /// Stored messages.
    pub entries: usize,
    /// Bytes of stored frames, headers included.
    pub bytes: usize,
    /// Asks waiting for a message.
    pub pending_asks: usize,
    /// Open connections.
    pub connections: usize,
}

/// How an ASK ended, as told to the hook of [`Mailbox::set_on_ask`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskEnd {
    /// The ask got its message, `waited` after it was asked: zero when the message was
    /// stored already, else the time from the ask to the PUB that answered it.
    Answered {
        /// From the ask to its delivery (both at the `now` the frames were handled at).
        waited: Duration,
    },
    /// The ask's TTL passed before any message came.
    Expired,
}

/// Called for each ask that is answered or expires. Runs under a shard's lock.
type AskHook = Box<dyn Fn(AskEnd) + Send + Sync>;

/// The mailbox hub: every namespace of one server. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Mailbox {
    hub: Arc<Hub>,
}

struct Hub {
    limits: Limits,
    /// The process-wide held-bytes budget (shared with rooms).
    budget: HeldBytes,
    namespaces: Mutex<HashMap<Namespace, Arc<Space>>>,
    next_conn: AtomicU64,
    /// Told how each ask ended ([`Mailbox::set_on_ask`]), e.g. for metrics.
    on_ask: OnceLock<AskHook>,
}

/// One connection to a namespace: frames in through [`MailboxConn::handle_frame`],
/// frames out through [`MailboxConn::recv`]. Dropping it withdraws its waiting asks.
pub struct MailboxConn {
    hub: Arc<Hub>,
    space: Arc<Space>,
    /// This connection's ID, queue and count of waiting asks, shared with its waiters.
    member: Arc<Member>,
    /// Receivers owed a wake-up for frames queued by [`MailboxConn::handle_frame_deferred`].
    deferred: Vec<Waker>,
}

impl Mailbox {
    /// An empty mailbox enforcing `limits`, with its sweeper task: every
    /// [`SWEEP_INTERVAL`] it forgets expired messages and asks in namespaces nobody
    /// touches, and removes idle namespaces; it ends when the last clone is dropped.
    /// Fails with [`CoreError::NoRuntime`] outside a tokio runtime: use
    /// [`Mailbox::with_manual_sweep`] there.
    pub fn start(limits: Limits) -> Result<Mailbox, CoreError> {
        let budget = HeldBytes::new(limits.max_held_bytes);
        Mailbox::start_with_budget(limits, budget)
    }

    /// Like [`Mailbox::start`], with stored and queued frames counted against `budget`
    /// (shared with the rooms of the same process) instead of one of its own.
    pub fn start_with_budget(limits: Limits, budget: HeldBytes) -> Result<Mailbox, CoreError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| CoreError::NoRuntime)?;
        let mailbox = Mailbox::manual_with_budget(limits, budget);
        runtime.spawn(sweeper(Arc::downgrade(&mailbox.hub)));
        Ok(mailbox)
    }

    /// An empty mailbox enforcing `limits`, without a sweeper task: the caller calls
    /// [`Mailbox::sweep`] (tests, or a runtime of its own). Namespaces still expire
    /// lazily whenever a frame touches them, but idle ones are only forgotten by a sweep.
    pub fn with_manual_sweep(limits: Limits) -> Mailbox {
        let budget = HeldBytes::new(limits.max_held_bytes);
        Mailbox::manual_with_budget(limits, budget)
    }

    fn manual_with_budget(limits: Limits, budget: HeldBytes) -> Mailbox {
        let hub = Arc::new(Hub {
            limits,
            budget,
            namespaces: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            on_ask: OnceLock::new(),
        });
        Mailbox { hub }
    }

    /// The limits this mailbox enforces.
    pub fn limits(&self) -> &Limits {
        &self.hub.limits
    }

    /// The held-bytes budget its stored and queued frames count against.
    pub fn budget(&self) -> &HeldBytes {
        &self.hub.budget
    }

    /// Opens a connection to `namespace`, creating the namespace if needed.
    pub fn connect(&self, namespace: impl Into<Namespace>) -> MailboxConn {
        let namespace = namespace.into();
        let id = self.hub.next_conn.fetch_add(1, Ordering::Relaxed);
        let limits = &self.hub.limits;
        let queue =
            ConnQueue::new(limits.send_queue_frames, limits.send_queue_bytes, self.hub.budget.clone());
        let member = Arc::new(Member::new(id, queue));
        let (shards, max_held) = (limits.mailbox_namespace_shards, limits.max_namespace_held_bytes);
        let mut namespaces = self.hub.lock_namespaces();
        let space = namespaces
            .entry(namespace.clone())
            .or_insert_with(|| Arc::new(Space::new(namespace, shards, max_held, self.hub.budget.clone())))
            .clone();
        // Counted under the registry lock, so an idle check cannot remove it meanwhile.
        space.add_conn();
        drop(namespaces);
        MailboxConn { hub: self.hub.clone(), space, member, deferred: Vec::new() }
    }

    /// Calls `hook` for every ask from now on that is answered (with how long it waited)
    /// or expires unanswered; asks withdrawn by a disconnect are not reported. It runs
    /// under the lock of the ask's shard, on the task handling the frame or the sweep: keep it
    /// to a few atomic operations, and never call into the mailbox from it. Only the
    /// first call has an effect; returns whether this one did.
    pub fn set_on_ask(&self, hook: impl Fn(AskEnd) + Send + Sync + 'static) -> bool {
        self.hub.on_ask.set(Box::new(hook)).is_ok()
    }

    /// Hands `frame`, a publish that reached this server from elsewhere (another
    /// instance sharing the mailbox), to the connections of `namespace` waiting for its
    /// ID at `now`, without storing it here: to one of them for a one-receiver message.
    /// Does nothing when a message of that ID is stored here already or `frame` is not
    /// a publish. Returns whether anyone got it.
    pub fn deliver(&self, namespace: &Namespace, frame: Bytes, now: Instant) -> bool {
        let Some(header) = MailboxHeader::parse(&frame).filter(|h| h.kind == FrameKind::Publish) else {
            return false;
        };
        let Some(space) = self.hub.lock_namespaces().get(namespace).cloned() else { return false };
        let mut wakes = Vec::new();
        let delivered = space.deliver(frame, &header, now, &mut wakes, self.hub.on_ask.get());
        wakes.into_iter().for_each(Waker::wake);
        delivered
    }

    /// Whether a connection of `namespace` waits for `id` now.
    pub fn is_waiting(&self, namespace: &Namespace, id: &MessageId) -> bool {
        let space = self.hub.lock_namespaces().get(namespace).cloned();
        space.is_some_and(|space| space.is_waiting(id))
    }

    /// Forgets every message and ask due at `now` and removes idle namespaces. The
    /// sweeper task of [`Mailbox::start`] calls this; call it directly on a mailbox
    /// made with [`Mailbox::with_manual_sweep`].
    pub fn sweep(&self, now: Instant) {
        self.hub.sweep(now);
    }

    /// What the mailbox holds right now. Walks every namespace: for metrics scrapes, not
    /// for the hot path.
    pub fn stats(&self) -> MailboxStats {
        let spaces: Vec<Arc<Space>> = self.hub.lock_namespaces().values().cloned().collect();
        let mut stats = MailboxStats { namespaces: spaces.len(), ..MailboxStats::default() };
        for space in spaces {
            let held = space.stats();
            stats.entries += held.stored_messages;
            stats.bytes += held.held_bytes;
            stats.pending_asks += held.pending_asks;
            stats.connections += held.connections;
        }
        stats
    }
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox").field("limits", &self.hub.limits).finish_non_exhaustive()
    }
}

impl Hub {
    fn lock_namespaces(&self) -> MutexGuard<'_, HashMap<Namespace, Arc<Space>>> {
        self.namespaces.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sweep(&self, now: Instant) {
        let spaces: Vec<Arc<Space>> = self.lock_namespaces().values().cloned().collect();
        for space in spaces {
            space.expire(now, self.on_ask.get());
            if space.is_idle() {
                self.remove_if_idle(&space);
            }
        }
    }

    /// Removes `space` from the registry if it is still the registered one and idle.
    fn remove_if_idle(&self, space: &Arc<Space>) {
        let mut namespaces = self.lock_namespaces();
        if let Some(current) = namespaces.get(&space.namespace)
            && Arc::ptr_eq(current, space)
            && space.is_idle()
        {
            namespaces.remove(&space.namespace);
        }
    }
}

async fn sweeper(hub: Weak<Hub>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        hub.sweep(Instant::now());
    }
}

impl MailboxConn {
    /// The namespace this connection is in.
    pub fn namespace(&self) -> &Namespace {
        &self.space.namespace
    }

    /// Whether a message of `id` is stored in this connection's namespace now, so an
    /// ask for it is answered at once.
    pub fn holds(&self, id: &MessageId) -> bool {
        self.space.holds(id)
    }

    /// Handles one frame from the client at the current (tokio) time.
    pub fn handle_frame(&self, frame: Bytes) -> Result<(), MailboxError> {
        self.handle_frame_at(frame, Instant::now())
    }

    /// Handles one frame from the client at `now`: an ASK (exactly 36 bytes) or a PUB
    /// (longer). An error means the connection must be closed with the code it names.
    /// Receivers the frame is queued for are woken before this returns.
    pub fn handle_frame_at(&self, frame: Bytes, now: Instant) -> Result<(), MailboxError> {
        let mut wakes = Vec::new();
        let handled = self.handle_into(frame, now, &mut wakes);
        wakes.into_iter().for_each(Waker::wake);
        handled
    }

    /// Like [`MailboxConn::handle_frame_at`], but the receivers the frame is queued for
    /// are not woken until [`MailboxConn::wake_receivers`] (or until this connection is
    /// dropped). A transport handling a burst of frames read in one go wakes each
    /// receiver once, after the burst: the receiver then finds every frame of the burst
    /// queued and writes them together, instead of waking, and writing, once per frame.
    pub fn handle_frame_deferred(&mut self, frame: Bytes, now: Instant) -> Result<(), MailboxError> {
        let mut wakes = std::mem::take(&mut self.deferred);
        let handled = self.handle_into(frame, now, &mut wakes);
        self.deferred = wakes;
        handled
    }

    /// Wakes every receiver owed a wake-up by [`MailboxConn::handle_frame_deferred`].
    pub fn wake_receivers(&mut self) {
        self.deferred.drain(..).for_each(Waker::wake);
    }

    fn handle_into(&self, frame: Bytes, now: Instant, wakes: &mut Vec<Waker>) -> Result<(), MailboxError> {
        let max = self.hub.limits.max_message_bytes;
        if frame.len() > max {
            return Err(MailboxError::FrameTooBig { len: frame.len(), max });
        }
        let header = MailboxHeader::parse(&frame).ok_or(MailboxError::FrameTooShort { len: frame.len() })?;
        if self.member.queue.is_slow() {
            return Err(MailboxError::SlowConsumer);
        }
        let on_ask = self.hub.on_ask.get();
        self.space.handle(&self.member, frame, &header, &self.hub.limits, now, wakes, on_ask)
    }

    /// Waits for the next frame to send to the client. Cancel-safe. Fails only when the
    /// connection became a slow consumer.
    pub async fn recv(&mut self) -> Result<Bytes, MailboxError> {
        let mut one = Vec::with_capacity(1);
        self.recv_many(&mut one, 1).await?;
        one.pop().ok_or(MailboxError::SlowConsumer)
    }

    /// Waits until a frame is ready, then moves up to `max` ready frames into `out` in
    /// one go; returns how many. Cancel-safe. Fails only for a slow consumer.
    pub async fn recv_many(&mut self, out: &mut Vec<Bytes>, max: usize) -> Result<usize, MailboxError> {
        std::future::poll_fn(|cx| self.member.queue.poll_recv_many(cx, out, max)).await
    }

    /// Moves up to `max` (at least one) ready frames into `out` and returns how many, or
    /// registers `cx` to be woken when a frame is queued. Only the last task to poll is
    /// woken: one consumer per connection. Fails only for a slow consumer.
    pub fn poll_recv_many(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<Bytes>,
        max: usize,
    ) -> Poll<Result<usize, MailboxError>> {
        self.member.queue.poll_recv_many(cx, out, max)
    }

    /// Resolves once this connection has become a slow consumer: lets a writer blocked
    /// on a stalled socket give up without waiting for its write to time out.
    pub async fn slow_consumer(&self) {
        self.member.queue.wait_slow().await;
    }

    /// Moves up to `max` ready frames into `out` without waiting; returns how many.
    pub fn try_recv_many(&self, out: &mut Vec<Bytes>, max: usize) -> Result<usize, MailboxError> {
        self.member.queue.try_recv_many(out, max)
    }
}

impl Drop for MailboxConn {
    fn drop(&mut self) {
        self.wake_receivers();
        self.space.remove_conn(&self.member);
        if self.space.is_idle() {
            self.hub.remove_if_idle(&self.space);
        }
    }
}

impl fmt::Debug for MailboxConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxConn")
            .field("namespace", &self.space.namespace)
            .field("id", &self.member.id)
            .finish()
    }
}

#[cfg(test)]
mod tests;
