//! Rooms: one MPC operation = one room of N parties (docs/protocol.md section 3).
//!
//! [`Rooms`] is the registry; [`Party`] is one connected party. The relay stamps each
//! message with its sender's slot, numbers what it delivers to each receiver (`seq`
//! 1, 2, 3, ... per receiver), holds messages for parties that are absent, keeps what
//! was delivered but not acked so a dropped party can resume without loss, and bounds
//! everything a room holds by [`Limits::max_room_held_bytes`] and, with every other room
//! and the mailbox, by the process-wide [`HeldBytes`] budget ([`Limits::max_held_bytes`]).
//! A room may have an owner (the API key that created it): an owner has at most
//! [`Limits::max_rooms_per_key`] live rooms, and [`Rooms::close_owned_by`] closes them
//! all. A room nobody joins within [`Limits::room_join_timeout`] closes.
//!
//! No sockets here: the transport moves frames between a WebSocket and a [`Party`], and
//! a Rust service can drive a [`Party`] directly. Deadlines (TTL, reconnect grace) run
//! on `tokio::time`, so tests pause and advance time. The wall clock is never read
//! here: `expires_at` (the Unix second reported to clients) is computed from the
//! `now_unix` the caller passes to [`Rooms::create`].
//!
//! Concurrency: one `std::sync::Mutex` per room, never held across an `.await`. Each
//! connection has its own wake-up flag that a sender raises after queueing for it, and
//! wakes at once ([`Party::send`]) or once after a burst ([`Party::send_deferred`] then
//! [`Party::wake_receivers`]). A payload is a [`Bytes`]: a broadcast shares one buffer
//! among all its receivers.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::prelude::{BASE64_URL_SAFE_NO_PAD, Engine as _};
use bytes::Bytes;
use relay_proto::CloseCode;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::budget::{HeldBytes, detach};
use crate::error::CoreError;
use crate::id::{RoomId, RoomIdPrefix};
use crate::limits::Limits;
use crate::signal::Signal;

/// What one held message costs against [`Limits::max_room_held_bytes`] on top of its
/// payload: its bookkeeping, so that empty payloads cannot grow a room without bound.
pub const HELD_MESSAGE_OVERHEAD: usize = std::mem::size_of::<Held>();

/// Random bytes in a party token (128 bits), written base64url without padding.
pub const PARTY_TOKEN_BYTES: usize = 16;

/// The registry of live rooms. Cheap to clone (an `Arc` inside); every clone sees the
/// same rooms.
#[derive(Clone)]
pub struct Rooms {
    inner: Arc<Registry>,
}

/// A room as the registry describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    /// The room's ID.
    pub id: RoomId,
    /// Number of slots.
    pub room_size: u16,
    /// When the room was created, in Unix seconds (the `now_unix` given to create).
    pub created_at: u64,
    /// When the room expires, in Unix seconds.
    pub expires_at: u64,
    /// Slots with a live connection now.
    pub present: Vec<u16>,
    /// Whether every slot has joined at least once.
    pub ready: bool,
}

/// How a party joins: a first join (next free slot, or the slot it asks for), or a
/// reconnect with the resume token it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinRequest {
    /// The slot to take on a first join; ignored when resuming.
    pub slot: Option<u16>,
    /// Reconnect to the slot this token belongs to.
    pub resume: Option<Resume>,
    /// A first join of a room created with party tokens: takes the slot bound to this
    /// token. Ignored by rooms created without them, and when resuming.
    pub party_token: Option<String>,
}

/// A reconnect: the slot's resume token and the last `seq` the party received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The `resume_token` from the party's welcome.
    pub token: String,
    /// Everything up to this seq was received; replay starts after it. `None` replays
    /// everything not yet acked.
    pub last_seq: Option<u64>,
}

/// Where a message goes: one party by slot ([`Destination::Slot`]), or every other
/// party of the room that has not left ([`Destination::Broadcast`]). The wire protocol's
/// type, re-exported.
pub use relay_proto::room::Destination;

/// What a party learns when it joins: the first frame the transport sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The room's ID.
    pub room_id: RoomId,
    /// This party's slot.
    pub slot: u16,
    /// Number of slots.
    pub room_size: u16,
    /// Give this back (with `last_seq`) to reconnect to the same slot.
    pub resume_token: String,
    /// When the room expires, in Unix seconds.
    pub expires_at: u64,
    /// Slots connected now, this one included.
    pub present: Vec<u16>,
    /// Whether this join resumed an earlier connection.
    pub resumed: bool,
    /// The seq the next data message to this party will carry.
    pub next_seq: u64,
    /// Data frames taken from this slot so far, over all its connections (delivered or
    /// refused): the party sends again exactly the ones after this.
    pub received: u64,
}

/// The room as one party asks about it ([`Party::status`]), each list by slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomStatus {
    /// Slots with a live connection now.
    pub present: Vec<u16>,
    /// Data frames taken from each slot (its [`Welcome::received`] count).
    pub sent: Vec<u64>,
    /// Time since each slot last sent a data frame (since the room was created for a
    /// slot that never sent).
    pub idle: Vec<Duration>,
}

/// One message delivered to a party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Per-receiver number: 1, 2, 3, ... without gaps.
    pub seq: u64,
    /// The sender's slot, stamped by the relay.
    pub from: u16,
    /// Whether the sender broadcast it.
    pub broadcast: bool,
    /// The payload, shared with the other receivers of a broadcast.
    pub payload: Bytes,
}

/// Why a party's connection is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The room's TTL passed.
    Expired,
    /// Every party left (or dropped and did not come back within the grace).
    AllLeft,
    /// The same slot resumed on a newer connection.
    Replaced,
    /// The relay is shutting down.
    Shutdown,
    /// An operator closed the room ([`Rooms::close`], the admin API).
    ClosedByOperator,
    /// A party aborted the room ([`Party::abort`]).
    Aborted,
    /// Nobody joined within [`Limits::room_join_timeout`] of its creation.
    NotJoined,
    /// The API key that created the room was revoked ([`Rooms::close_owned_by`]).
    KeyRevoked,
    /// The API key that created the room expired ([`Rooms::close_owned_by`]).
    KeyExpired,
}

/// What a party receives, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartyEvent {
    /// A data message.
    Data(Delivery),
    /// Another party connected (first time or reconnect).
    Joined(u16),
    /// Another party's connection dropped (its slot is held) or it left.
    Left(u16),
    /// Every slot has joined at least once.
    Ready {
        /// Number of slots.
        room_size: u16,
    },
    /// A party aborted the room: `Closed(Aborted)` follows. Told once per connection,
    /// to every party but the one that aborted, and to a party resuming afterwards.
    Aborted {
        /// The slot that aborted.
        slot: u16,
        /// Its reason, cut to relay-proto's `MAX_ABORT_REASON_BYTES`.
        reason: String,
    },
    /// This connection is over; every later call returns the same.
    Closed(CloseReason),
}

/// One connected party of a room. Dropping it is a dropped connection: the slot is
/// held for a reconnect and the others are told it left. [`Party::leave`] ends the
/// party for good.
pub struct Party {
    room: Arc<Room>,
    slot: u16,
    conn: u64,
    signal: Arc<Signal>,
    /// Receivers owed a wake-up for messages queued by [`Party::send_deferred`].
    deferred: Vec<Arc<Signal>>,
    welcome: Welcome,
    /// Set by `leave`, so that drop does not report a second departure.
    done: bool,
    /// The number of the last data frame this party's sends counted (see
    /// [`Party::last_frame`]).
    last_frame: AtomicU64,
    /// This connection was told of the abort ([`PartyEvent::Aborted`]).
    told_abort: bool,
}

struct Registry {
    limits: Limits,
    prefix: Option<RoomIdPrefix>,
    rooms: Mutex<RoomMap>,
    /// The process-wide budget every room's held messages count against.
    budget: HeldBytes,
    /// Told of every room that closes ([`Rooms::set_on_close`]), e.g. for metrics.
    on_close: OnceLock<RoomCloseHook>,
}

/// The live rooms, and how many each owner has, under one lock.
#[derive(Default)]
struct RoomMap {
    rooms: HashMap<RoomId, Arc<Room>>,
    per_owner: HashMap<Arc<str>, usize>,
}

impl RoomMap {
    fn get(&self, id: &RoomId) -> Option<&Arc<Room>> {
        self.rooms.get(id)
    }

    fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Forgets room `id`, and counts it off its owner's rooms.
    fn remove(&mut self, id: &RoomId) {
        let Some(room) = self.rooms.remove(id) else { return };
        if let Some(owner) = &room.owner
            && let Some(count) = self.per_owner.get_mut(owner)
        {
            *count -= 1;
            if *count == 0 {
                self.per_owner.remove(owner);
            }
        }
    }
}

/// Called once per room that closes, with its lifetime and why it closed.
type RoomCloseHook = Box<dyn Fn(Duration, CloseReason) + Send + Sync>;

struct Room {
    id: RoomId,
    /// Who created it (an API key's name), if anyone in particular.
    owner: Option<Arc<str>>,
    /// The process-wide budget its held messages count against.
    budget: HeldBytes,
    size: u16,
    expires_at: u64,
    /// When the room was created: its lifetime is reported when it closes.
    created: Instant,
    /// Unix seconds of creation, as the creator gave them (for the admin's room list).
    created_at: u64,
    deadline: Instant,
    /// The room closes at this instant if nobody has joined by then (`None`: never).
    join_deadline: Option<Instant>,
    max_held_bytes: usize,
    max_message_bytes: usize,
    reconnect_grace: Duration,
    /// SHA-256 of each slot's party token, for a room created with them.
    party_tokens: Option<Vec<[u8; 32]>>,
    state: Mutex<RoomState>,
    /// Wakes the room's timer task when the grace deadline changes or the room closes.
    timer: Notify,
    registry: Weak<Registry>,
}

struct RoomState {
    slots: Vec<Slot>,
    /// Bytes held in all queues, each message counted per receiver (payload plus
    /// [`HELD_MESSAGE_OVERHEAD`]).
    held_bytes: usize,
    ready: bool,
    closed: Option<CloseReason>,
    next_conn: u64,
    /// Set while nobody is connected: the room closes then unless someone comes back.
    grace_until: Option<Instant>,
    /// Who aborted the room and why: the room lingers (closed) for the reconnect
    /// grace so that a party resuming meanwhile learns it.
    aborted: Option<(u16, String)>,
}

struct Slot {
    /// `Some` once a party joined this slot.
    token: Option<String>,
    /// The party sent `leave`: nothing more is held for it and it cannot come back.
    left: bool,
    conn: Option<Conn>,
    /// The seq the next message to this slot gets.
    next_seq: u64,
    /// Everything up to this seq was acked and dropped.
    acked: u64,
    /// The highest seq handed to the current connection.
    delivered: u64,
    /// Messages `acked+1 .. next_seq`, oldest first.
    queue: VecDeque<Held>,
    /// Control events waiting for the current connection.
    events: VecDeque<PartyEvent>,
    /// Data frames taken from this slot, over all its connections.
    received: u64,
    /// When this slot last sent a data frame.
    last_sent: Option<Instant>,
}

struct Conn {
    id: u64,
    signal: Arc<Signal>,
}

struct Held {
    seq: u64,
    from: u16,
    broadcast: bool,
    payload: Bytes,
}

impl Rooms {
    /// An empty registry enforcing `limits`; every room ID it issues starts with
    /// `prefix` when given. Its held messages count against a budget of its own of
    /// `limits.max_held_bytes`; use [`Rooms::with_budget`] to share one with a mailbox.
    pub fn new(limits: Limits, prefix: Option<RoomIdPrefix>) -> Rooms {
        let budget = HeldBytes::new(limits.max_held_bytes);
        Rooms::with_budget(limits, prefix, budget)
    }

    /// Like [`Rooms::new`], with held messages counted against `budget` (shared with
    /// the mailbox of the same process).
    pub fn with_budget(limits: Limits, prefix: Option<RoomIdPrefix>, budget: HeldBytes) -> Rooms {
        Rooms {
            inner: Arc::new(Registry {
                limits,
                prefix,
                rooms: Mutex::new(RoomMap::default()),
                budget,
                on_close: OnceLock::new(),
            }),
        }
    }

    /// The held-bytes budget this registry's rooms count against.
    pub fn budget(&self) -> &HeldBytes {
        &self.inner.budget
    }

    /// Calls `hook` with the lifetime (creation to close) and the reason of every room
    /// that closes from now on, for any reason. It runs on the closing task with no
    /// lock held; keep it quick. Only the first call has an effect; returns whether this
    /// one did.
    pub fn set_on_close(&self, hook: impl Fn(Duration, CloseReason) + Send + Sync + 'static) -> bool {
        self.inner.on_close.set(Box::new(hook)).is_ok()
    }

    /// The limits this registry enforces.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Creates a room of `room_size` parties living `ttl` (the default TTL when `None`).
    /// `now_unix` is the wall clock in Unix seconds, read by the caller: the room's
    /// `expires_at` is `now_unix + ttl`. Must run inside a tokio runtime: the room's
    /// expiry timer is a task (on `tokio::time`, not on `now_unix`).
    pub fn create(
        &self,
        room_size: u16,
        ttl: Option<Duration>,
        now_unix: u64,
    ) -> Result<RoomInfo, CoreError> {
        self.create_room(room_size, ttl, now_unix, None, None)
    }

    /// Creates a room for `owner` (an API key's name; `None` for nobody in particular),
    /// with party tokens when `party_tokens` is set (returned, slot 0 first): like
    /// [`Rooms::create`] and [`Rooms::create_with_party_tokens`], but refused with
    /// [`CoreError::TooManyRoomsForKey`] when `owner` already has
    /// [`Limits::max_rooms_per_key`] live rooms.
    pub fn create_owned(
        &self,
        owner: Option<&str>,
        room_size: u16,
        ttl: Option<Duration>,
        now_unix: u64,
        party_tokens: bool,
    ) -> Result<(RoomInfo, Option<Vec<String>>), CoreError> {
        let owner: Option<Arc<str>> = owner.map(Arc::from);
        if !party_tokens {
            return Ok((self.create_room(room_size, ttl, now_unix, None, owner)?, None));
        }
        let (digests, tokens) = self.party_tokens(room_size)?;
        let info = self.create_room(room_size, ttl, now_unix, Some(digests), owner)?;
        Ok((info, Some(tokens)))
    }

    /// Like [`Rooms::create`], but binds each slot to a fresh party token (at least
    /// 128 random bits): the room can be joined only with one
    /// ([`JoinRequest::party_token`]), which takes its slot. Returns the tokens, slot 0
    /// first; the room keeps only their SHA-256 digests.
    pub fn create_with_party_tokens(
        &self,
        room_size: u16,
        ttl: Option<Duration>,
        now_unix: u64,
    ) -> Result<(RoomInfo, Vec<String>), CoreError> {
        let (digests, tokens) = self.party_tokens(room_size)?;
        let info = self.create_room(room_size, ttl, now_unix, Some(digests), None)?;
        Ok((info, tokens))
    }

    /// Draws a party token per slot: their digests and the tokens.
    fn party_tokens(&self, room_size: u16) -> Result<(Vec<[u8; 32]>, Vec<String>), CoreError> {
        // A size over the limit is refused by `create_room` afterwards; draw no more
        // tokens than a valid room can have before that.
        let count = room_size.min(self.inner.limits.max_room_size);
        let mut tokens = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let mut bytes = [0u8; PARTY_TOKEN_BYTES];
            getrandom::fill(&mut bytes).map_err(|e| CoreError::Random(e.to_string()))?;
            tokens.push(BASE64_URL_SAFE_NO_PAD.encode(bytes));
        }
        let digests = tokens.iter().map(|t| party_token_digest(t)).collect();
        Ok((digests, tokens))
    }

    fn create_room(
        &self,
        room_size: u16,
        ttl: Option<Duration>,
        now_unix: u64,
        party_tokens: Option<Vec<[u8; 32]>>,
        owner: Option<Arc<str>>,
    ) -> Result<RoomInfo, CoreError> {
        let limits = &self.inner.limits;
        if room_size < 2 || room_size > limits.max_room_size {
            return Err(CoreError::BadRoomSize { got: room_size.into(), max: limits.max_room_size });
        }
        let ttl = ttl.unwrap_or(limits.room_ttl_default);
        if ttl.is_zero() || ttl > limits.room_ttl_max {
            return Err(CoreError::BadTtl {
                got_secs: ttl.as_secs(),
                max_secs: limits.room_ttl_max.as_secs(),
            });
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| CoreError::NoRuntime)?;
        let expires_at = now_unix.saturating_add(ttl.as_secs());

        let room = {
            let mut rooms = lock(&self.inner.rooms);
            if rooms.len() >= limits.max_rooms {
                return Err(CoreError::TooManyRooms(limits.max_rooms));
            }
            if let Some(owner) = &owner
                && rooms.per_owner.get(owner).is_some_and(|&n| n >= limits.max_rooms_per_key)
            {
                return Err(CoreError::TooManyRoomsForKey(limits.max_rooms_per_key));
            }
            let id = loop {
                let id = RoomId::generate(self.inner.prefix);
                if !rooms.rooms.contains_key(&id) {
                    break id;
                }
            };
            if let Some(owner) = &owner {
                *rooms.per_owner.entry(owner.clone()).or_insert(0) += 1;
            }
            let room = Arc::new(Room {
                id,
                owner,
                budget: self.inner.budget.clone(),
                size: room_size,
                expires_at,
                created_at: now_unix,
                created: Instant::now(),
                deadline: instant_after(ttl),
                join_deadline: (!limits.room_join_timeout.is_zero())
                    .then(|| instant_after(limits.room_join_timeout)),
                max_held_bytes: limits.max_room_held_bytes,
                max_message_bytes: limits.max_message_bytes,
                reconnect_grace: limits.reconnect_grace,
                party_tokens,
                state: Mutex::new(RoomState {
                    slots: (0..room_size).map(|_| Slot::new()).collect(),
                    held_bytes: 0,
                    ready: false,
                    closed: None,
                    next_conn: 0,
                    grace_until: None,
                    aborted: None,
                }),
                timer: Notify::new(),
                registry: Arc::downgrade(&self.inner),
            });
            rooms.rooms.insert(id, room.clone());
            room
        };
        let info = room.info();
        runtime.spawn(run_room_timer(room));
        Ok(info)
    }

    /// Joins room `id` as a new party or resumes a dropped one.
    pub fn join(&self, id: &RoomId, request: JoinRequest) -> Result<Party, CoreError> {
        let room = lock(&self.inner.rooms).get(id).cloned().ok_or(CoreError::RoomNotFound)?;
        Room::join(room, request)
    }

    /// The room `id`, if it is live.
    pub fn info(&self, id: &RoomId) -> Option<RoomInfo> {
        let room = lock(&self.inner.rooms).get(id).cloned()?;
        Some(room.info())
    }

    /// Every live room.
    pub fn list(&self) -> Vec<RoomInfo> {
        let rooms: Vec<Arc<Room>> = lock(&self.inner.rooms).rooms.values().cloned().collect();
        rooms.iter().map(|r| r.info()).collect()
    }

    /// Number of live rooms.
    pub fn len(&self) -> usize {
        lock(&self.inner.rooms).len()
    }

    /// Whether no room is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every room with `reason` (for a shutdown); their parties get
    /// [`PartyEvent::Closed`].
    pub fn close_all(&self, reason: CloseReason) {
        let rooms: Vec<Arc<Room>> = lock(&self.inner.rooms).rooms.values().cloned().collect();
        for room in rooms {
            room.close(reason);
        }
    }

    /// The owner room `id` was created for, if it is live and has one.
    pub fn owner(&self, id: &RoomId) -> Option<Arc<str>> {
        lock(&self.inner.rooms).get(id).and_then(|r| r.owner.clone())
    }

    /// Every owner with at least one live room.
    pub fn owners(&self) -> Vec<Arc<str>> {
        lock(&self.inner.rooms).per_owner.keys().cloned().collect()
    }

    /// Live rooms `owner` has now.
    pub fn count_owned_by(&self, owner: &str) -> usize {
        lock(&self.inner.rooms).per_owner.get(owner).copied().unwrap_or(0)
    }

    /// Closes every live room created for `owner` with `reason` (its key was revoked or
    /// expired); returns how many it closed.
    pub fn close_owned_by(&self, owner: &str, reason: CloseReason) -> usize {
        let owned: Vec<Arc<Room>> = {
            let map = lock(&self.inner.rooms);
            if !map.per_owner.contains_key(owner) {
                return 0;
            }
            map.rooms.values().filter(|r| r.owner.as_deref() == Some(owner)).cloned().collect()
        };
        owned.iter().filter(|room| room.close(reason)).count()
    }

    /// Closes room `id` with `reason` (an operator's decision); its parties get
    /// [`PartyEvent::Closed`]. Returns whether a live room had that ID.
    pub fn close(&self, id: &RoomId, reason: CloseReason) -> bool {
        let Some(room) = lock(&self.inner.rooms).get(id).cloned() else { return false };
        room.close(reason)
    }
}

/// `now + d`, saturating at a century from now instead of overflowing the clock (a
/// huge configured TTL or grace must not panic a room).
fn instant_after(d: Duration) -> Instant {
    /// Where a deadline saturates: later than any TTL a flag accepts.
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
    let now = Instant::now();
    now.checked_add(d).or_else(|| now.checked_add(FAR)).unwrap_or(now)
}

impl CloseReason {
    /// The WebSocket close code docs/protocol.md gives this reason.
    pub fn close_code(self) -> CloseCode {
        match self {
            CloseReason::Expired => CloseCode::RoomExpired,
            CloseReason::AllLeft => CloseCode::Normal,
            CloseReason::Replaced => CloseCode::Replaced,
            CloseReason::Shutdown => CloseCode::GoingAway,
            CloseReason::ClosedByOperator => CloseCode::Policy,
            CloseReason::Aborted => CloseCode::Aborted,
            CloseReason::NotJoined => CloseCode::Normal,
            CloseReason::KeyRevoked | CloseReason::KeyExpired => CloseCode::Policy,
        }
    }

    /// The number of [`CloseReason::close_code`], as sent in the close frame.
    pub fn code(self) -> u16 {
        self.close_code().code()
    }

    /// The close reason text docs/protocol.md gives this reason.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Expired => "room expired",
            CloseReason::AllLeft => "room closed",
            CloseReason::Replaced => "replaced by a newer connection",
            CloseReason::Shutdown => "server shutting down",
            CloseReason::ClosedByOperator => "room closed by the operator",
            CloseReason::Aborted => "room aborted",
            CloseReason::NotJoined => "room not joined in time",
            CloseReason::KeyRevoked => "api key revoked",
            CloseReason::KeyExpired => "api key expired",
        }
    }
}

impl Party {
    /// What the party was told when it joined.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// This party's slot.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The room's ID.
    pub fn room_id(&self) -> RoomId {
        self.room.id
    }

    /// Sends `payload` from this party's slot. All or nothing: a message over the
    /// room's held-bytes bound is refused for every destination. A message to a party
    /// that left is dropped.
    pub fn send(&self, to: Destination, payload: Bytes) -> Result<(), CoreError> {
        let mut wakes = Vec::new();
        let sent = self.send_into(to, payload, &mut wakes);
        wakes.iter().for_each(|s| s.wake());
        sent
    }

    /// Like [`Party::send`], but the receivers are not woken until
    /// [`Party::wake_receivers`] (or until this party is dropped). A transport handling a
    /// burst of frames read in one go wakes each receiver once, after the burst, so the
    /// receiver writes the whole burst with one system call instead of one per message.
    pub fn send_deferred(&mut self, to: Destination, payload: Bytes) -> Result<(), CoreError> {
        let mut wakes = std::mem::take(&mut self.deferred);
        let sent = self.send_into(to, payload, &mut wakes);
        self.deferred = wakes;
        sent
    }

    /// Wakes every receiver owed a wake-up by [`Party::send_deferred`].
    pub fn wake_receivers(&mut self) {
        self.deferred.drain(..).for_each(|s| s.wake());
    }

    /// Queues `payload` for `to`; receivers whose flag this raised go into `wakes`.
    fn send_into(
        &self,
        to: Destination,
        payload: Bytes,
        wakes: &mut Vec<Arc<Signal>>,
    ) -> Result<(), CoreError> {
        let room = &*self.room;
        // Copied out of its read buffer (when small) before the lock, so that holding
        // it keeps no larger buffer alive.
        let payload = detach(&payload);
        let mut st = lock(&room.state);
        if st.closed.is_some() || !st.is_current(self.slot, self.conn) {
            return Err(CoreError::PartyClosed);
        }
        st.slots[usize::from(self.slot)].count_frame(&self.last_frame);
        if payload.len() > room.max_message_bytes {
            return Err(CoreError::MessageTooBig { got: payload.len(), max: room.max_message_bytes });
        }
        let broadcast = matches!(to, Destination::Broadcast);
        let receivers = match to {
            Destination::Slot(slot) if slot == self.slot || slot >= room.size => {
                return Err(CoreError::BadDestination(slot));
            }
            Destination::Slot(slot) => usize::from(!st.slots[usize::from(slot)].left),
            Destination::Broadcast => {
                st.slots.iter().enumerate().filter(|(i, s)| *i != usize::from(self.slot) && !s.left).count()
            }
        };
        let cost = (payload.len() + HELD_MESSAGE_OVERHEAD) * receivers;
        if st.held_bytes + cost > room.max_held_bytes {
            return Err(CoreError::RoomBufferFull { max: room.max_held_bytes });
        }
        if !room.budget.try_reserve(cost) {
            return Err(CoreError::HeldBytesFull { max: room.budget.max() });
        }
        st.held_bytes += cost;
        let from = self.slot;
        let mut push = |slot: &mut Slot| {
            slot.queue.push_back(Held { seq: slot.next_seq, from, broadcast, payload: payload.clone() });
            slot.next_seq += 1;
            if let Some(conn) = &slot.conn
                && conn.signal.raise()
            {
                wakes.push(conn.signal.clone());
            }
        };
        match to {
            Destination::Slot(slot) => {
                let slot = &mut st.slots[usize::from(slot)];
                if !slot.left {
                    push(slot);
                }
            }
            Destination::Broadcast => {
                for (i, slot) in st.slots.iter_mut().enumerate() {
                    if i != usize::from(from) && !slot.left {
                        push(slot);
                    }
                }
            }
        }
        Ok(())
    }

    /// The number of the last data frame a send of this party counted, accepted or
    /// refused: the party's own count of its data frames in this room (1, 2, 3, ...
    /// across connections). What an `error` event names.
    pub fn last_frame(&self) -> u64 {
        self.last_frame.load(Ordering::Relaxed)
    }

    /// Counts a data frame the transport refused before it reached [`Party::send`]
    /// (e.g. malformed) and returns its number; `None` when this connection is over.
    pub fn refuse_frame(&self) -> Option<u64> {
        let mut st = lock(&self.room.state);
        if st.closed.is_some() || !st.is_current(self.slot, self.conn) {
            return None;
        }
        st.slots[usize::from(self.slot)].count_frame(&self.last_frame);
        Some(self.last_frame())
    }

    /// Who is connected, how many data frames each slot sent and how long ago its last
    /// one was: what a party waiting on a round asks.
    pub fn status(&self) -> RoomStatus {
        let st = lock(&self.room.state);
        let now = Instant::now();
        RoomStatus {
            present: st.present(),
            sent: st.slots.iter().map(|s| s.received).collect(),
            idle: st
                .slots
                .iter()
                .map(|s| now.saturating_duration_since(s.last_sent.unwrap_or(self.room.created)))
                .collect(),
        }
    }

    /// Aborts the room for everyone (e.g. this party caught a cheater): every other
    /// party gets [`PartyEvent::Aborted`] naming this slot and `reason` (cut to
    /// relay-proto's `MAX_ABORT_REASON_BYTES`), then every connection
    /// [`PartyEvent::Closed`] with [`CloseReason::Aborted`]. The room takes no more
    /// messages; it lingers for the reconnect grace so that a party resuming meanwhile
    /// learns of the abort, then is forgotten. Ignored from a connection that is over.
    pub fn abort(&self, reason: &str) {
        let reason = relay_proto::room::bound_abort_reason(reason).to_owned();
        {
            let mut st = lock(&self.room.state);
            if st.closed.is_some() || !st.is_current(self.slot, self.conn) {
                return;
            }
            st.aborted = Some((self.slot, reason));
            st.closed = Some(CloseReason::Aborted);
            self.room.budget.release(std::mem::take(&mut st.held_bytes));
            for slot in &mut st.slots {
                slot.queue = VecDeque::new();
                slot.events = VecDeque::new();
                if let Some(conn) = &slot.conn {
                    conn.signal.notify();
                }
            }
        }
        self.room.timer.notify_one();
        tracing::debug!(room = %self.room.id, slot = self.slot, "room aborted");
    }

    /// Everything up to `seq` was received: the relay forgets it. An ack past what was
    /// delivered counts up to what was delivered.
    pub fn ack(&self, seq: u64) {
        let mut st = lock(&self.room.state);
        if !st.is_current(self.slot, self.conn) {
            return;
        }
        let st = &mut *st;
        let slot = &mut st.slots[usize::from(self.slot)];
        let upto = seq.min(slot.delivered);
        if upto <= slot.acked {
            return;
        }
        let freed = slot.drop_through(upto);
        st.held_bytes -= freed;
        self.room.budget.release(freed);
    }

    /// Leaves the room for good: nothing more is held for this slot and it cannot be
    /// resumed. The others are told it left.
    pub fn leave(mut self) {
        self.done = true;
        let close_now = {
            let mut st = lock(&self.room.state);
            if !st.is_current(self.slot, self.conn) {
                return;
            }
            let st = &mut *st;
            let slot = &mut st.slots[usize::from(self.slot)];
            slot.left = true;
            slot.conn = None;
            slot.events.clear();
            let upto = slot.next_seq - 1;
            let freed = slot.drop_through(upto);
            st.held_bytes -= freed;
            self.room.budget.release(freed);
            self.room.after_disconnect(st, self.slot)
        };
        if close_now {
            self.room.close(CloseReason::AllLeft);
        }
    }

    /// The next event for this party: control events first, then data in `seq` order.
    /// Cancel-safe: nothing is lost if the future is dropped.
    pub async fn next_event(&mut self) -> PartyEvent {
        std::future::poll_fn(|cx| self.poll_next_event(cx)).await
    }

    /// The next event if one is ready, or `Pending` with `cx` registered to be woken
    /// when one may be. Only the last task to poll is woken: one consumer per party.
    pub fn poll_next_event(&mut self, cx: &mut Context<'_>) -> Poll<PartyEvent> {
        loop {
            if let Some(event) = self.try_next_event() {
                return Poll::Ready(event);
            }
            // Raised since the check above: something was queued meanwhile; look again.
            std::task::ready!(self.signal.poll(cx));
        }
    }

    /// The next event if one is ready now, without waiting (to batch writes).
    pub fn try_next_event(&mut self) -> Option<PartyEvent> {
        let mut st = lock(&self.room.state);
        if let Some(reason) = st.closed {
            if let Some((slot, why)) = &st.aborted
                && !self.told_abort
                && *slot != self.slot
            {
                self.told_abort = true;
                return Some(PartyEvent::Aborted { slot: *slot, reason: why.clone() });
            }
            return Some(PartyEvent::Closed(reason));
        }
        if !st.is_current(self.slot, self.conn) {
            return Some(PartyEvent::Closed(CloseReason::Replaced));
        }
        let slot = &mut st.slots[usize::from(self.slot)];
        if let Some(event) = slot.events.pop_front() {
            return Some(event);
        }
        if slot.delivered + 1 >= slot.next_seq {
            return None;
        }
        // The queue starts at seq acked+1, so seq delivered+1 sits at index delivered-acked.
        let index = usize::try_from(slot.delivered - slot.acked).ok()?;
        let held = slot.queue.get(index)?;
        slot.delivered = held.seq;
        Some(PartyEvent::Data(Delivery {
            seq: held.seq,
            from: held.from,
            broadcast: held.broadcast,
            payload: held.payload.clone(),
        }))
    }
}

impl Party {
    fn new(room: Arc<Room>, slot: u16, conn: u64, signal: Arc<Signal>, welcome: Welcome) -> Party {
        let last_frame = AtomicU64::new(welcome.received);
        Party {
            room,
            slot,
            conn,
            signal,
            deferred: Vec::new(),
            welcome,
            done: false,
            last_frame,
            told_abort: false,
        }
    }
}

impl Drop for Party {
    fn drop(&mut self) {
        self.wake_receivers();
        if self.done {
            return;
        }
        let close_now = {
            let mut st = lock(&self.room.state);
            if st.closed.is_some() || !st.is_current(self.slot, self.conn) {
                return;
            }
            st.slots[usize::from(self.slot)].conn = None;
            self.room.after_disconnect(&mut st, self.slot)
        };
        if close_now {
            self.room.close(CloseReason::AllLeft);
        }
    }
}

impl std::fmt::Debug for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Party").field("room", &self.room.id).field("slot", &self.slot).finish()
    }
}

impl Room {
    fn join(room: Arc<Room>, request: JoinRequest) -> Result<Party, CoreError> {
        let mut guard = lock(&room.state);
        let st = &mut *guard;
        if st.aborted.is_some() && request.resume.is_some() {
            drop(guard);
            return Room::join_aborted(room, request);
        }
        if st.closed.is_some() {
            return Err(CoreError::RoomNotFound);
        }
        let (index, resumed) = match &request.resume {
            Some(resume) => {
                let index = st
                    .slots
                    .iter()
                    .position(|s| s.token.as_deref().is_some_and(|t| tokens_equal(t, &resume.token)))
                    .ok_or(CoreError::BadResumeToken)?;
                let slot = &mut st.slots[index];
                if slot.left {
                    return Err(CoreError::BadResumeToken);
                }
                let last = resume.last_seq.unwrap_or(slot.acked);
                if last < slot.acked {
                    return Err(CoreError::ResumeGap { last_seq: last, acked: slot.acked });
                }
                if last >= slot.next_seq {
                    return Err(CoreError::ResumeAhead { last_seq: last, last: slot.next_seq - 1 });
                }
                let freed = slot.drop_through(last);
                st.held_bytes -= freed;
                room.budget.release(freed);
                slot.delivered = last;
                if let Some(old) = slot.conn.take() {
                    old.signal.notify();
                }
                (index, true)
            }
            None if room.party_tokens.is_some() => {
                let index = room.party_token_slot(request.party_token.as_deref())?;
                match request.slot {
                    Some(s) if usize::from(s) != index => return Err(CoreError::BadPartyToken),
                    _ => {}
                }
                if st.slots[index].token.is_some() {
                    return Err(CoreError::SlotTaken(u16::try_from(index).unwrap_or(u16::MAX)));
                }
                st.slots[index].token = Some(uuid::Uuid::new_v4().simple().to_string());
                (index, false)
            }
            None => {
                let index = match request.slot {
                    Some(s) if s >= room.size => {
                        return Err(CoreError::BadSlot { slot: s, room_size: room.size });
                    }
                    Some(s) if st.slots[usize::from(s)].token.is_some() => {
                        return Err(CoreError::SlotTaken(s));
                    }
                    Some(s) => usize::from(s),
                    None => st
                        .slots
                        .iter()
                        .position(|s| s.token.is_none())
                        .ok_or(CoreError::RoomFull(room.size))?,
                };
                st.slots[index].token = Some(uuid::Uuid::new_v4().simple().to_string());
                (index, false)
            }
        };
        let slot_no = u16::try_from(index).unwrap_or(u16::MAX);
        let conn_id = st.next_conn;
        st.next_conn += 1;
        let signal = Arc::new(Signal::default());
        {
            let slot = &mut st.slots[index];
            slot.conn = Some(Conn { id: conn_id, signal: signal.clone() });
            slot.events.clear();
        }
        if st.grace_until.take().is_some() {
            room.timer.notify_one();
        }
        for (i, other) in st.slots.iter_mut().enumerate() {
            if i != index {
                other.push_event(PartyEvent::Joined(slot_no));
            }
        }
        if !st.ready && st.slots.iter().all(|s| s.token.is_some()) {
            st.ready = true;
            for slot in &mut st.slots {
                slot.push_event(PartyEvent::Ready { room_size: room.size });
            }
        } else if st.ready {
            st.slots[index].push_event(PartyEvent::Ready { room_size: room.size });
        }
        let slot = &st.slots[index];
        let welcome = Welcome {
            room_id: room.id,
            slot: slot_no,
            room_size: room.size,
            resume_token: slot.token.clone().unwrap_or_default(),
            expires_at: room.expires_at,
            present: st.present(),
            resumed,
            next_seq: slot.delivered + 1,
            received: slot.received,
        };
        drop(guard);
        Ok(Party::new(room, slot_no, conn_id, signal, welcome))
    }

    /// A resume of a room that was aborted and lingers: the party gets its welcome, then
    /// [`PartyEvent::Aborted`] and [`PartyEvent::Closed`], and nothing else.
    fn join_aborted(room: Arc<Room>, request: JoinRequest) -> Result<Party, CoreError> {
        let resume = request.resume.ok_or(CoreError::RoomNotFound)?;
        let mut guard = lock(&room.state);
        let st = &mut *guard;
        let index = st
            .slots
            .iter()
            .position(|s| s.token.as_deref().is_some_and(|t| tokens_equal(t, &resume.token)))
            .ok_or(CoreError::BadResumeToken)?;
        let slot_no = u16::try_from(index).unwrap_or(u16::MAX);
        let conn_id = st.next_conn;
        st.next_conn += 1;
        let slot = &st.slots[index];
        let welcome = Welcome {
            room_id: room.id,
            slot: slot_no,
            room_size: room.size,
            resume_token: slot.token.clone().unwrap_or_default(),
            expires_at: room.expires_at,
            present: st.present(),
            resumed: true,
            next_seq: resume.last_seq.unwrap_or(slot.acked) + 1,
            received: slot.received,
        };
        drop(guard);
        Ok(Party::new(room, slot_no, conn_id, Arc::new(Signal::default()), welcome))
    }

    /// The slot bound to party token `token` (compared in constant time).
    fn party_token_slot(&self, token: Option<&str>) -> Result<usize, CoreError> {
        let (Some(digests), Some(token)) = (&self.party_tokens, token) else {
            return Err(CoreError::BadPartyToken);
        };
        let digest = party_token_digest(token);
        let mut found = None;
        for (i, d) in digests.iter().enumerate() {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(i);
            }
        }
        found.ok_or(CoreError::BadPartyToken)
    }

    fn info(&self) -> RoomInfo {
        let st = lock(&self.state);
        RoomInfo {
            id: self.id,
            room_size: self.size,
            created_at: self.created_at,
            expires_at: self.expires_at,
            present: st.present(),
            ready: st.ready,
        }
    }

    /// After `slot`'s connection ended: tells the others, and when nobody is left
    /// connected starts the reconnect grace. Returns true when the room must close now
    /// (every party left for good).
    fn after_disconnect(&self, st: &mut RoomState, slot: u16) -> bool {
        for (i, other) in st.slots.iter_mut().enumerate() {
            if i != usize::from(slot) {
                other.push_event(PartyEvent::Left(slot));
            }
        }
        if st.slots.iter().any(|s| s.conn.is_some()) {
            return false;
        }
        if st.slots.iter().all(|s| s.left) {
            return true;
        }
        st.grace_until = Some(instant_after(self.reconnect_grace));
        self.timer.notify_one();
        false
    }

    /// Closes the room: every connection gets [`PartyEvent::Closed`], held messages are
    /// freed and the registry forgets it. Idempotent: returns whether this call closed it.
    fn close(&self, reason: CloseReason) -> bool {
        {
            let mut st = lock(&self.state);
            if st.closed.is_some() {
                return false;
            }
            st.closed = Some(reason);
            self.budget.release(std::mem::take(&mut st.held_bytes));
            for slot in &mut st.slots {
                slot.queue = VecDeque::new();
                slot.events = VecDeque::new();
                if let Some(conn) = &slot.conn {
                    conn.signal.notify();
                }
            }
        }
        self.timer.notify_one();
        self.forget(reason);
        true
    }

    /// Removes the closed room from the registry and reports its close.
    fn forget(&self, reason: CloseReason) {
        if let Some(registry) = self.registry.upgrade() {
            lock(&registry.rooms).remove(&self.id);
            if let Some(hook) = registry.on_close.get() {
                hook(self.created.elapsed(), reason);
            }
        }
        tracing::debug!(room = %self.id, ?reason, "room closed");
    }
}

impl RoomState {
    fn is_current(&self, slot: u16, conn: u64) -> bool {
        self.slots[usize::from(slot)].conn.as_ref().is_some_and(|c| c.id == conn)
    }

    fn present(&self) -> Vec<u16> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].conn.is_some())
            .filter_map(|i| u16::try_from(i).ok())
            .collect()
    }
}

impl Slot {
    fn new() -> Slot {
        Slot {
            token: None,
            left: false,
            conn: None,
            next_seq: 1,
            acked: 0,
            delivered: 0,
            queue: VecDeque::new(),
            events: VecDeque::new(),
            received: 0,
            last_sent: None,
        }
    }

    /// Counts a data frame taken from this slot; its number goes into `last_frame`.
    fn count_frame(&mut self, last_frame: &AtomicU64) {
        self.received += 1;
        self.last_sent = Some(Instant::now());
        last_frame.store(self.received, Ordering::Relaxed);
    }

    /// Drops held messages up to `seq` and marks them acked; returns the bytes freed.
    fn drop_through(&mut self, seq: u64) -> usize {
        let mut freed = 0;
        while self.queue.front().is_some_and(|h| h.seq <= seq) {
            if let Some(held) = self.queue.pop_front() {
                freed += held.payload.len() + HELD_MESSAGE_OVERHEAD;
            }
        }
        self.acked = self.acked.max(seq);
        freed
    }

    /// Queues a control event for the connected party, if any. A pending `joined` or
    /// `left` of the same slot is superseded by the newer one, so a party that flaps
    /// cannot grow a slow reader's queue: at most one pending event per slot, plus
    /// `ready`.
    fn push_event(&mut self, event: PartyEvent) {
        if let Some(conn) = &self.conn {
            if let PartyEvent::Joined(s) | PartyEvent::Left(s) = event {
                self.events.retain(|e| !matches!(e, PartyEvent::Joined(x) | PartyEvent::Left(x) if *x == s));
            }
            self.events.push_back(event);
            conn.signal.notify();
        }
    }
}

/// The room's clock: closes it at its TTL, or when the reconnect grace after the last
/// connection passes with nobody back. Ends when the room closes.
async fn run_room_timer(room: Arc<Room>) {
    loop {
        let aborted = lock(&room.state).aborted.is_some();
        if aborted {
            // Linger, closed, so that a party resuming meanwhile learns of the abort.
            let linger = instant_after(room.reconnect_grace);
            tokio::time::sleep_until(linger.min(room.deadline)).await;
            room.forget(CloseReason::Aborted);
            return;
        }
        let (grace_until, join_deadline) = {
            let st = lock(&room.state);
            if st.closed.is_some() {
                return;
            }
            let joined = st.slots.iter().any(|s| s.token.is_some());
            (st.grace_until, room.join_deadline.filter(|_| !joined))
        };
        tokio::select! {
            () = tokio::time::sleep_until(room.deadline) => {
                room.close(CloseReason::Expired);
                return;
            }
            () = sleep_until_some(grace_until) => {
                let empty = {
                    let st = lock(&room.state);
                    st.grace_until.is_some_and(|t| t <= Instant::now())
                        && st.slots.iter().all(|s| s.conn.is_none())
                };
                if empty {
                    room.close(CloseReason::AllLeft);
                    return;
                }
            }
            () = sleep_until_some(join_deadline) => {
                let joined = lock(&room.state).slots.iter().any(|s| s.token.is_some());
                if !joined {
                    room.close(CloseReason::NotJoined);
                    return;
                }
            }
            () = room.timer.notified() => {}
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The SHA-256 digest of a party token: all a room keeps of it.
fn party_token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two tokens without stopping at the first difference.
fn tokens_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Locks `m`, recovering from poisoning: room state stays consistent between
/// statements, and one panicked task must not take a room down for everyone.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[path = "rooms_tests.rs"]
mod tests;
