//! Rooms: create one over HTTP, join it over a WebSocket, exchange messages with the
//! other parties, and survive a dropped connection by resuming with the resume token.
//!
//! A [`RoomConnection`] is backed by one background task that owns the socket. The
//! task delivers incoming frames, in `seq` order and each exactly once, into an
//! unbounded queue read through [`RoomEvents`]; that queue is bounded in practice by
//! the relay, because the client acks only what the application has taken from it and
//! the relay holds at most `max_room_held_bytes` unacked. Outgoing messages go through
//! a bounded queue ([`JoinOptions::send_queue`]) that also holds them while the task
//! reconnects. Sends are exactly-once across a reconnect: the task numbers its data
//! frames, keeps those the relay has not confirmed, and after a resume sends again
//! exactly the ones after the `received` count of the relay's `welcome`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use relay_proto::CloseCode;
use relay_proto::room::{self as proto, ClientControl, RELAY_HEADER_LEN, RelayHeader, ServerEvent};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::config::{ClientConfig, percent_encode};
use crate::error::{Error, Result};
use crate::net::{Endpoint, Stream as NetStream};

/// The destination slot that means "every other party" on the wire (relay-proto's).
pub use relay_proto::room::BROADCAST_SLOT;

/// Creates rooms and joins them on one relay.
#[derive(Debug, Clone)]
pub struct RoomClient {
    endpoint: Endpoint,
    config: ClientConfig,
}

/// What `POST /v1/rooms` answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RoomInfo {
    /// The room ID, a canonical lowercase UUID. Whoever holds it can join.
    pub room_uuid: String,
    /// Number of parties (slots `0..room_size`).
    pub room_size: u16,
    /// When the room closes, Unix seconds.
    pub expires_at: u64,
    /// For a room created with [`RoomClient::create_room_with_party_tokens`]: each
    /// slot's party token, slot 0 first (hand each party its own). Empty otherwise.
    #[serde(default)]
    pub party_tokens: Vec<PartyToken>,
}

/// A party token: joins a room created with them, taking the slot it is bound to
/// ([`JoinOptions::party_token`]). Redacted in `Debug` output.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct PartyToken(String);

impl PartyToken {
    /// A token received from the backend that created the room.
    pub fn new(token: impl Into<String>) -> PartyToken {
        PartyToken(token.into())
    }

    /// The token as the relay wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PartyToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PartyToken(<redacted>)")
    }
}

/// How to join a room.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// Ask for this slot on first join; `None` takes the next free one.
    pub slot: Option<u16>,
    /// The party token of a room created with them: takes the slot it is bound to
    /// (required by such a room; ignored by others and when resuming).
    pub party_token: Option<PartyToken>,
    /// Resume a slot held by an earlier connection (e.g. from a previous process),
    /// from [`RoomConnection::resume_state`]. Takes precedence over `slot`.
    pub resume: Option<ResumeState>,
    /// What to do when the connection drops.
    pub reconnect: ReconnectPolicy,
    /// Ack after this many messages taken from the stream (protocol: at most 64).
    pub ack_every: u64,
    /// Ack at least this often while messages are taken (protocol: about 1 s).
    pub ack_interval: Duration,
    /// Outgoing messages queued before [`RoomSender`] applies backpressure; they also
    /// wait here while the connection is being resumed (default 1024).
    pub send_queue: usize,
    /// A connection that brings nothing (not even the relay's pings, every 20 s by
    /// default) for this long is treated as dropped and resumed: a link that died
    /// without a reset (default 75 s).
    pub idle_timeout: Duration,
}

impl Default for JoinOptions {
    fn default() -> JoinOptions {
        JoinOptions {
            slot: None,
            party_token: None,
            resume: None,
            reconnect: ReconnectPolicy::default(),
            ack_every: 64,
            ack_interval: Duration::from_secs(1),
            send_queue: 1024,
            idle_timeout: Duration::from_secs(75),
        }
    }
}

impl JoinOptions {
    /// Default options asking for `slot`.
    pub fn slot(slot: u16) -> JoinOptions {
        JoinOptions { slot: Some(slot), ..JoinOptions::default() }
    }

    /// Default options joining with a party token (the slot it is bound to).
    pub fn party_token(token: PartyToken) -> JoinOptions {
        JoinOptions { party_token: Some(token), ..JoinOptions::default() }
    }
}

/// What identifies a party's place in a room across connections.
#[derive(Clone, PartialEq, Eq)]
pub struct ResumeState {
    /// The room.
    pub room_uuid: String,
    /// The token the relay gave in `welcome`.
    pub resume_token: String,
    /// The last `seq` handed to the application.
    pub last_seq: u64,
}

impl std::fmt::Debug for ResumeState {
    /// Never prints the token: whoever holds it can take the slot.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumeState")
            .field("room_uuid", &self.room_uuid)
            .field("resume_token", &"<redacted>")
            .field("last_seq", &self.last_seq)
            .finish()
    }
}

/// The reconnect budget after a dropped connection (a TCP error or EOF without a close
/// frame, or a close with 1011 or 1013). Refusals that a retry cannot cure
/// (`room_not_found`, `bad_resume_token`, `resume_gap`) end the connection at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Attempts before giving up; 0 disables reconnecting.
    pub max_attempts: u32,
    /// Wait before the second attempt (the first is immediate); doubles each time.
    pub initial_backoff: Duration,
    /// Upper bound of the wait between attempts.
    pub max_backoff: Duration,
    /// Give up when this much time has passed since the drop. Keep it under the
    /// relay's reconnect grace (default 30 s) or the slot may be gone.
    pub deadline: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> ReconnectPolicy {
        ReconnectPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            deadline: Duration::from_secs(25),
        }
    }
}

impl ReconnectPolicy {
    /// Never reconnect: a drop ends the connection with an error.
    pub fn disabled() -> ReconnectPolicy {
        ReconnectPolicy { max_attempts: 0, ..ReconnectPolicy::default() }
    }
}

/// The relay's `welcome`, the first frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Welcome {
    /// The room.
    pub room_uuid: String,
    /// This party's slot.
    pub slot: u16,
    /// Number of parties.
    pub room_size: u16,
    /// When the room closes, Unix seconds.
    pub expires_at: u64,
    /// Slots connected at the time, including this one.
    pub present: Vec<u16>,
    /// Whether this connection resumed a slot.
    pub resumed: bool,
    /// The seq the next data frame to this party will carry.
    pub next_seq: u64,
    /// Data frames the relay has taken from this slot over all its connections: the
    /// client sends again exactly its frames after this one when it resumes.
    #[serde(default)]
    pub received: u64,
    /// The token that takes this slot back; read it through
    /// [`RoomConnection::resume_state`]. Redacted in `Debug` output.
    #[serde(default)]
    resume_token: Secret,
}

/// A string kept out of `Debug` output.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One data message received from another party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMessage {
    /// The sender's slot, stamped by the relay.
    pub from: u16,
    /// This party's receive sequence number: 1, 2, 3... with no gaps.
    pub seq: u64,
    /// Whether the sender broadcast it (else it was sent to this slot only).
    pub broadcast: bool,
    /// The payload.
    pub payload: Bytes,
}

/// Everything a room connection reports, in the order the relay sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomEvent {
    /// A data message.
    Message(RoomMessage),
    /// Another party connected (first time or reconnect).
    Joined {
        /// Its slot.
        slot: u16,
    },
    /// Another party's connection dropped; its slot is held for a reconnect.
    Left {
        /// Its slot.
        slot: u16,
    },
    /// Every slot has joined at least once.
    Ready {
        /// Number of parties.
        room_size: u16,
    },
    /// A non-fatal problem with something this party sent (`bad_destination`,
    /// `room_buffer_full`, `malformed_frame`, `bad_control`); the connection stays.
    RelayError {
        /// The machine-readable code.
        code: String,
        /// The relay's explanation.
        message: String,
        /// The refused data frame: this party's count of its data frames in the room
        /// (the 1st, 2nd... it sent, across reconnects). `None` for a refused text frame.
        frame: Option<u64>,
    },
    /// A party aborted the room ([`RoomConnection::abort`]); the stream ends next with
    /// [`Error::Aborted`].
    Aborted {
        /// The slot that aborted, stamped by the relay.
        slot: u16,
        /// Its reason.
        reason: String,
    },
    /// The answer to [`RoomConnection::request_status`], each list by slot.
    Status {
        /// Slots connected now.
        present: Vec<u16>,
        /// Data frames the relay has taken from each slot.
        sent: Vec<u64>,
        /// Milliseconds since each slot last sent a data frame.
        idle_ms: Vec<u64>,
    },
    /// The relay is about to close the connection with this code.
    Closing {
        /// The close code.
        code: u16,
        /// The reason.
        reason: String,
    },
    /// The connection dropped and was resumed; nothing was lost or repeated, in either
    /// direction: frames the relay had not taken were sent again, the others not.
    Reconnected {
        /// Attempts it took.
        attempts: u32,
    },
}

/// Where an outgoing message goes: one party ([`Destination::Slot`]) or every other
/// party ([`Destination::Broadcast`]). relay-proto's type, re-exported.
pub use relay_proto::room::Destination;

/// A message to send, the item of [`RoomSender`]'s `Sink`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Where it goes.
    pub to: Destination,
    /// The payload.
    pub payload: Bytes,
}

impl OutgoingMessage {
    /// A message to one slot.
    pub fn to_slot(slot: u16, payload: impl Into<Bytes>) -> OutgoingMessage {
        OutgoingMessage { to: Destination::Slot(slot), payload: payload.into() }
    }

    /// A message to every other party.
    pub fn broadcast(payload: impl Into<Bytes>) -> OutgoingMessage {
        OutgoingMessage { to: Destination::Broadcast, payload: payload.into() }
    }

    /// The client-to-relay frame: `to` u16 LE, then the payload.
    pub fn encode(&self) -> Bytes {
        let header = proto::client_header(self.to);
        let mut b = BytesMut::with_capacity(header.len() + self.payload.len());
        b.put_slice(&header);
        b.put_slice(&self.payload);
        b.freeze()
    }
}

/// Decodes a relay-to-client data frame (`seq` u64 LE, `from` u16 LE, `flags` u16 LE,
/// payload).
pub fn decode_room_frame(frame: Bytes) -> Result<RoomMessage> {
    let Some((RelayHeader { seq, from, broadcast }, _)) = RelayHeader::parse(&frame) else {
        return Err(Error::Protocol(format!(
            "data frame of {} bytes, shorter than its {RELAY_HEADER_LEN}-byte header",
            frame.len()
        )));
    };
    Ok(RoomMessage { from, seq, broadcast, payload: frame.slice(RELAY_HEADER_LEN..) })
}

impl RoomClient {
    /// A client for the relay at `base_url` (`http(s)://` or `ws(s)://`, optionally with
    /// a path prefix when the relay sits under one behind a proxy).
    pub fn new(base_url: &str, config: ClientConfig) -> Result<RoomClient> {
        Ok(RoomClient { endpoint: Endpoint::parse(base_url)?, config })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// `POST /v1/rooms`: creates a room of `room_size` parties living `ttl` (the
    /// relay's default when `None`). Needs the API key when the relay enforces keys.
    pub async fn create_room(&self, room_size: u16, ttl: Option<Duration>) -> Result<RoomInfo> {
        self.create(room_size, ttl, false).await
    }

    /// Like [`RoomClient::create_room`], but each slot is bound to a party token
    /// ([`RoomInfo::party_tokens`]): the room can be joined only with one, so the
    /// relay-stamped sender of every message is the party the token was handed to.
    pub async fn create_room_with_party_tokens(
        &self,
        room_size: u16,
        ttl: Option<Duration>,
    ) -> Result<RoomInfo> {
        self.create(room_size, ttl, true).await
    }

    async fn create(&self, room_size: u16, ttl: Option<Duration>, party_tokens: bool) -> Result<RoomInfo> {
        let request = relay_proto::rest::CreateRoomRequest {
            room_size: room_size.into(),
            ttl_secs: ttl.map(|t| t.as_secs()),
            party_tokens,
        };
        let body = serde_json::to_value(&request).map_err(|e| Error::Protocol(e.to_string()))?;
        let bytes = self.endpoint.request_json(http::Method::POST, "/v1/rooms", &body, &self.config).await?;
        let created: relay_proto::rest::RoomCreated = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Protocol(format!("create room answer: {e}")))?;
        Ok(RoomInfo {
            room_uuid: created.room_uuid,
            room_size: created.room_size,
            expires_at: created.expires_at,
            party_tokens: created.party_tokens.unwrap_or_default().into_iter().map(PartyToken).collect(),
        })
    }

    /// Joins `room_id` over a WebSocket and returns once the relay's `welcome` arrived.
    /// Refusals (unknown room, full, slot taken...) are their [`Error`] variants. Use
    /// [`RoomConnection::wait_ready`] to wait for every party.
    pub async fn join(&self, room_id: &str, options: JoinOptions) -> Result<RoomConnection> {
        let resume = options.resume.clone();
        let last_seq = resume.as_ref().map(|r| r.last_seq);
        let (ws, welcome) = match &resume {
            Some(r) => self.open(room_id, Some((&r.resume_token, r.last_seq)), None, None).await?,
            None => {
                let token = options.party_token.as_ref().map(PartyToken::as_str);
                self.open(room_id, None, options.slot, token).await?
            }
        };
        Ok(RoomConnection::spawn(self.clone(), ws, welcome, last_seq, options))
    }

    /// Opens one connection and reads its `welcome`.
    async fn open(
        &self,
        room_id: &str,
        resume: Option<(&str, u64)>,
        slot: Option<u16>,
        party_token: Option<&str>,
    ) -> Result<(Ws, Welcome)> {
        let mut path = format!("/v1/rooms/{}", percent_encode(room_id));
        if let Some((token, last_seq)) = resume {
            path.push_str(&format!("?resume_token={}&last_seq={last_seq}", percent_encode(token)));
        } else {
            let mut query = Vec::new();
            if let Some(slot) = slot {
                query.push(format!("slot={slot}"));
            }
            if let Some(token) = party_token {
                query.push(format!("party_token={}", percent_encode(token)));
            }
            if !query.is_empty() {
                path.push('?');
                path.push_str(&query.join("&"));
            }
        }
        // Joining needs only the room ID: the key stays home.
        let mut ws = self.endpoint.websocket(&path, &self.config, false).await?;
        let first = tokio::time::timeout(self.config.connect_timeout, ws.next())
            .await
            .map_err(|_| Error::Timeout { what: "welcome", after: self.config.connect_timeout })?;
        match first {
            Some(Ok(Message::Text(t))) => match ServerEvent::parse(&t) {
                Ok(ServerEvent::Welcome(w)) => Ok((ws, Welcome::from(w))),
                _ => Err(Error::Protocol(format!("expected welcome, got {t}"))),
            },
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((crate::error::NO_CLOSE_CODE, String::new()));
                Err(Error::from_close(code, &reason))
            }
            Some(Ok(other)) => Err(Error::Protocol(format!("expected welcome, got {other:?}"))),
            Some(Err(e)) => Err(Error::from_ws(e)),
            None => Err(Error::Protocol("connection closed before welcome".into())),
        }
    }
}

/// Shorthand for [`RoomClient::create_room`] with the key sent as
/// `Authorization: Bearer` and default settings otherwise.
pub async fn create_room(
    base_url: &str,
    api_key: &str,
    room_size: u16,
    ttl: Option<Duration>,
) -> Result<RoomInfo> {
    RoomClient::new(base_url, ClientConfig::with_api_key(api_key))?.create_room(room_size, ttl).await
}

/// Shorthand for [`RoomClient::join`] with default settings (webpki roots, default
/// timeouts).
pub async fn join(url: &str, room_id: &str, options: JoinOptions) -> Result<RoomConnection> {
    RoomClient::new(url, ClientConfig::default())?.join(room_id, options).await
}

type Ws = WebSocketStream<NetStream>;

impl From<proto::Welcome> for Welcome {
    fn from(w: proto::Welcome) -> Welcome {
        Welcome {
            room_uuid: w.room_uuid,
            slot: w.slot,
            room_size: w.room_size,
            expires_at: w.expires_at,
            present: w.present,
            resumed: w.resumed,
            next_seq: w.next_seq,
            received: w.received,
            resume_token: Secret(w.resume_token),
        }
    }
}

/// The code of an `error` event as text: the wire string, even for a code this
/// client does not know (which relay-proto reads as `ErrorCode::Unknown`).
fn error_code_text(code: relay_proto::ErrorCode, event: &str) -> String {
    if code != relay_proto::ErrorCode::Unknown {
        return code.as_str().to_owned();
    }
    serde_json::from_str::<serde_json::Value>(event)
        .ok()
        .and_then(|v| v.get("code")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| code.as_str().to_owned())
}

/// What the application and the connection task share.
#[derive(Debug)]
struct Shared {
    /// Highest seq the application took from [`RoomEvents`]; what gets acked.
    consumed: AtomicU64,
    /// Highest seq acked to the relay.
    acked: AtomicU64,
    /// Wakes the task when `consumed` ran `ack_every` past `acked`.
    ack_wake: Notify,
    ack_every: u64,
    /// The current resume token (the relay may hand out a new one on resume).
    resume_token: Mutex<String>,
    room_uuid: String,
}

/// A joined room: receive with the `Stream` of [`RoomEvent`]s, send with the `Sink` of
/// [`OutgoingMessage`]s or [`RoomConnection::send_to`] / [`RoomConnection::broadcast`].
/// [`RoomConnection::split`] separates the two halves for concurrent use.
#[derive(Debug)]
pub struct RoomConnection {
    welcome: Welcome,
    ready: watch::Receiver<bool>,
    sender: RoomSender,
    events: RoomEvents,
}

impl RoomConnection {
    fn spawn(
        client: RoomClient,
        ws: Ws,
        welcome: Welcome,
        resume_seq: Option<u64>,
        options: JoinOptions,
    ) -> RoomConnection {
        let shared = Arc::new(Shared {
            consumed: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            ack_wake: Notify::new(),
            ack_every: options.ack_every.max(1),
            resume_token: Mutex::new(welcome.resume_token.0.clone()),
            room_uuid: welcome.room_uuid.clone(),
        });
        // Fresh join: the first data frame carries next_seq. Resume: we continue from
        // what we delivered before.
        let last_seq = resume_seq.unwrap_or(welcome.next_seq.saturating_sub(1));
        shared.consumed.store(last_seq, Ordering::Relaxed);
        shared.acked.store(last_seq, Ordering::Relaxed);
        let (cmd_tx, cmd_rx) = mpsc::channel(options.send_queue.max(1));
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = watch::channel(false);
        let task = ConnectionTask {
            client,
            shared: shared.clone(),
            room_uuid: welcome.room_uuid.clone(),
            last_seq,
            commands: cmd_rx,
            commands_closed: false,
            events: ev_tx,
            ready: ready_tx,
            slot: welcome.slot,
            retained: VecDeque::new(),
            next_frame: welcome.received + 1,
            status_requests: VecDeque::new(),
            aborted: None,
            leaving: false,
            closing: None,
            options,
        };
        tokio::spawn(task.run(ws));
        RoomConnection {
            welcome,
            ready: ready_rx,
            sender: RoomSender::new(cmd_tx),
            events: RoomEvents { rx: ev_rx, shared },
        }
    }

    /// The relay's `welcome` for the first connection.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// This party's slot.
    pub fn slot(&self) -> u16 {
        self.welcome.slot
    }

    /// Number of parties in the room.
    pub fn room_size(&self) -> u16 {
        self.welcome.room_size
    }

    /// The room ID.
    pub fn room_uuid(&self) -> &str {
        &self.welcome.room_uuid
    }

    /// Waits until every party has joined at least once. Does not consume events (the
    /// `Ready` event still comes through the stream). Bound it with a timeout.
    pub async fn wait_ready(&self) -> Result<()> {
        let mut rx = self.ready.clone();
        rx.wait_for(|r| *r).await.map(|_| ()).map_err(|_| Error::ConnectionClosed)
    }

    /// What a new process would need to take this slot back with
    /// [`JoinOptions::resume`]: nothing the application has not taken is counted.
    pub fn resume_state(&self) -> ResumeState {
        self.events.resume_state()
    }

    /// Sends `payload` to `slot`.
    pub async fn send_to(&self, slot: u16, payload: impl Into<Bytes>) -> Result<()> {
        self.sender.send_to(slot, payload).await
    }

    /// Sends `payload` to every other party.
    pub async fn broadcast(&self, payload: impl Into<Bytes>) -> Result<()> {
        self.sender.broadcast(payload).await
    }

    /// Tells the relay this party is done (after everything queued before it). The
    /// relay closes with 1000 and the event stream ends.
    pub async fn leave(&self) -> Result<()> {
        self.sender.leave().await
    }

    /// Aborts the room for every party (after everything queued before it), e.g. on
    /// catching a cheater: the others get [`RoomEvent::Aborted`] naming this slot and
    /// `reason` (the relay cuts it to 256 bytes); every stream ends with
    /// [`Error::Aborted`].
    pub async fn abort(&self, reason: impl Into<String>) -> Result<()> {
        self.sender.abort(reason).await
    }

    /// Asks the relay who is connected and how far each party got: the answer comes
    /// as [`RoomEvent::Status`].
    pub async fn request_status(&self) -> Result<()> {
        self.sender.request_status().await
    }

    /// Separates the sending half (cloneable) from the receiving half.
    pub fn split(self) -> (RoomSender, RoomEvents) {
        (self.sender, self.events)
    }

    /// The receiving half as a stream of data messages only.
    pub fn into_messages(self) -> (RoomSender, RoomMessages) {
        (self.sender, self.events.messages())
    }
}

impl Stream for RoomConnection {
    type Item = Result<RoomEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.events).poll_next(cx)
    }
}

impl Sink<OutgoingMessage> for RoomConnection {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.sender).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: OutgoingMessage) -> Result<()> {
        Pin::new(&mut self.sender).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.sender).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.sender).poll_close(cx)
    }
}

/// What the application asks the connection task to do.
#[derive(Debug)]
enum Command {
    /// An encoded client-to-relay data frame.
    Send(Bytes),
    /// Send `leave`.
    Leave,
    /// Send `abort` with this reason.
    Abort(String),
    /// Send `status` (for the application).
    Status,
}

type Reserve = Pin<
    Box<
        dyn Future<Output = std::result::Result<mpsc::OwnedPermit<Command>, mpsc::error::SendError<()>>>
            + Send
            + Sync,
    >,
>;

/// The sending half: a `Sink` of [`OutgoingMessage`]s, queued in order to the
/// connection task. `poll_flush` completes when the messages are queued (the task
/// writes them as soon as the socket takes them); a full queue is backpressure.
pub struct RoomSender {
    tx: mpsc::Sender<Command>,
    permit: Option<mpsc::OwnedPermit<Command>>,
    reserving: Option<Reserve>,
}

impl RoomSender {
    fn new(tx: mpsc::Sender<Command>) -> RoomSender {
        RoomSender { tx, permit: None, reserving: None }
    }

    /// Sends `payload` to `slot`.
    pub async fn send_to(&self, slot: u16, payload: impl Into<Bytes>) -> Result<()> {
        self.queue(Command::Send(OutgoingMessage::to_slot(slot, payload).encode())).await
    }

    /// Sends `payload` to every other party.
    pub async fn broadcast(&self, payload: impl Into<Bytes>) -> Result<()> {
        self.queue(Command::Send(OutgoingMessage::broadcast(payload).encode())).await
    }

    /// Sends `leave` after everything queued before it.
    pub async fn leave(&self) -> Result<()> {
        self.queue(Command::Leave).await
    }

    /// See [`RoomConnection::abort`].
    pub async fn abort(&self, reason: impl Into<String>) -> Result<()> {
        self.queue(Command::Abort(reason.into())).await
    }

    /// See [`RoomConnection::request_status`].
    pub async fn request_status(&self) -> Result<()> {
        self.queue(Command::Status).await
    }

    async fn queue(&self, cmd: Command) -> Result<()> {
        self.tx.send(cmd).await.map_err(|_| Error::ConnectionClosed)
    }
}

impl Clone for RoomSender {
    fn clone(&self) -> RoomSender {
        RoomSender::new(self.tx.clone())
    }
}

impl std::fmt::Debug for RoomSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomSender").field("closed", &self.tx.is_closed()).finish()
    }
}

impl Sink<OutgoingMessage> for RoomSender {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        let tx = self.tx.clone();
        let fut = self.reserving.get_or_insert_with(|| Box::pin(tx.reserve_owned()));
        let res = ready!(fut.as_mut().poll(cx));
        self.reserving = None;
        match res {
            Ok(permit) => {
                self.permit = Some(permit);
                Poll::Ready(Ok(()))
            }
            Err(_) => Poll::Ready(Err(Error::ConnectionClosed)),
        }
    }

    fn start_send(mut self: Pin<&mut Self>, item: OutgoingMessage) -> Result<()> {
        let permit = self
            .permit
            .take()
            .ok_or_else(|| Error::InvalidArgument("start_send without poll_ready".into()))?;
        permit.send(Command::Send(item.encode()));
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The receiving half: a `Stream` of [`RoomEvent`]s. It ends after the relay closes
/// the room normally; a fatal close or a failed reconnect is its last item, an `Err`.
#[derive(Debug)]
pub struct RoomEvents {
    rx: mpsc::UnboundedReceiver<Result<RoomEvent>>,
    shared: Arc<Shared>,
}

impl RoomEvents {
    /// Only the data messages (control events are skipped).
    pub fn messages(self) -> RoomMessages {
        RoomMessages { events: self }
    }

    /// See [`RoomConnection::resume_state`].
    pub fn resume_state(&self) -> ResumeState {
        ResumeState {
            room_uuid: self.shared.room_uuid.clone(),
            resume_token: self.shared.resume_token.lock().expect("not poisoned").clone(),
            last_seq: self.shared.consumed.load(Ordering::Acquire),
        }
    }
}

impl Stream for RoomEvents {
    type Item = Result<RoomEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = ready!(self.rx.poll_recv(cx));
        if let Some(Ok(RoomEvent::Message(m))) = &item {
            let shared = &self.shared;
            shared.consumed.store(m.seq, Ordering::Release);
            if m.seq.saturating_sub(shared.acked.load(Ordering::Acquire)) >= shared.ack_every {
                shared.ack_wake.notify_one();
            }
        }
        Poll::Ready(item)
    }
}

/// A `Stream` of data messages only: the shape an MPC library's delivery layer wants.
#[derive(Debug)]
pub struct RoomMessages {
    events: RoomEvents,
}

impl RoomMessages {
    /// See [`RoomConnection::resume_state`].
    pub fn resume_state(&self) -> ResumeState {
        self.events.resume_state()
    }
}

impl Stream for RoomMessages {
    type Item = Result<RoomMessage>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match ready!(Pin::new(&mut self.events).poll_next(cx)) {
                Some(Ok(RoomEvent::Message(m))) => return Poll::Ready(Some(Ok(m))),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
    }
}

/// How one connection ended.
enum Outcome {
    /// The network dropped it (or the relay asked us to come back): resume.
    Dropped(Error),
    /// It is over: `None` for a normal close, else why.
    Finished(Option<Error>),
}

/// The background task owning the socket.
struct ConnectionTask {
    client: RoomClient,
    shared: Arc<Shared>,
    room_uuid: String,
    /// Highest seq pushed into the event queue: what a resume continues after.
    last_seq: u64,
    commands: mpsc::Receiver<Command>,
    /// Every [`RoomSender`] is gone.
    commands_closed: bool,
    events: mpsc::UnboundedSender<Result<RoomEvent>>,
    ready: watch::Sender<bool>,
    /// This party's slot.
    slot: u16,
    /// Data frames sent but not known to be taken by the relay, with their numbers
    /// (this party's count of its data frames): sent again after a resume when the
    /// welcome's `received` is below their number.
    retained: VecDeque<(u64, Bytes)>,
    /// The number the next data frame gets.
    next_frame: u64,
    /// `status` requests awaiting their answer, oldest first: true when the application
    /// asked, false when this task did (to learn what it may forget of `retained`).
    status_requests: VecDeque<bool>,
    /// Who aborted the room and why, from the `aborted` event (or our own `abort`).
    aborted: Option<(u16, String)>,
    /// `leave` was sent: a drop now ends the connection.
    leaving: bool,
    /// The last `closing` event, whose code explains the close frame that follows.
    closing: Option<(u16, String)>,
    options: JoinOptions,
}

impl ConnectionTask {
    async fn run(mut self, mut ws: Ws) {
        loop {
            match self.drive(&mut ws).await {
                Outcome::Finished(err) => {
                    if let Some(e) = err {
                        let _ = self.events.send(Err(e));
                    }
                    return;
                }
                Outcome::Dropped(cause) => {
                    tracing::debug!(room = %self.room_uuid, "room connection dropped: {cause}");
                    drop(ws);
                    match self.reconnect(cause).await {
                        Ok((new_ws, attempts)) => {
                            ws = new_ws;
                            let _ = self.events.send(Ok(RoomEvent::Reconnected { attempts }));
                        }
                        Err(e) => {
                            let _ = self.events.send(Err(e));
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Resumes within the policy's budget.
    async fn reconnect(&mut self, cause: Error) -> Result<(Ws, u32)> {
        let policy = self.options.reconnect.clone();
        if self.leaving || policy.max_attempts == 0 {
            return Err(cause);
        }
        let start = Instant::now();
        let mut backoff = policy.initial_backoff;
        let mut attempts = 0;
        let mut last;
        loop {
            attempts += 1;
            let token = self.shared.resume_token.lock().expect("not poisoned").clone();
            let attempt = self.client.open(&self.room_uuid, Some((&token, self.last_seq)), None, None);
            match tokio::time::timeout_at(start + policy.deadline, attempt).await {
                Ok(Ok((ws, welcome))) => {
                    self.taken_through(welcome.received);
                    self.next_frame = self.next_frame.max(welcome.received + 1);
                    // Answers to requests on the old connection will not come.
                    self.status_requests.clear();
                    *self.shared.resume_token.lock().expect("not poisoned") = welcome.resume_token.0;
                    return Ok((ws, attempts));
                }
                Ok(Err(e)) if !e.is_transient() => {
                    return Err(Error::ReconnectFailed { attempts, last: Box::new(e) });
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = Error::Timeout { what: "reconnect", after: policy.deadline },
            }
            if attempts >= policy.max_attempts || start.elapsed() + backoff >= policy.deadline {
                return Err(Error::ReconnectFailed { attempts, last: Box::new(last) });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(policy.max_backoff);
        }
    }

    /// Runs one connection until it drops or finishes.
    async fn drive(&mut self, ws: &mut Ws) -> Outcome {
        // Exactly the frames the relay has not taken, in order (after a resume).
        for (_, frame) in self.retained.clone() {
            if let Err(e) = ws.send(Message::Binary(frame)).await {
                return Outcome::Dropped(Error::from_ws(e));
            }
        }
        let mut tick = tokio::time::interval(self.options.ack_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.shared.clone();
        let idle = tokio::time::sleep(self.options.idle_timeout);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                frame = ws.next() => {
                    idle.as_mut().reset(Instant::now() + self.options.idle_timeout);
                    let msg = match frame {
                        Some(Ok(msg)) => msg,
                        Some(Err(e)) => return Outcome::Dropped(Error::from_ws(e)),
                        None => return Outcome::Dropped(Error::Io(std::io::ErrorKind::UnexpectedEof.into())),
                    };
                    if let Some(outcome) = self.on_frame(msg) {
                        return outcome;
                    }
                    if let Err(e) = self.ack(ws, false).await {
                        return Outcome::Dropped(e);
                    }
                }
                cmd = self.commands.recv(), if !self.leaving && !self.commands_closed => match cmd {
                    Some(Command::Send(frame)) => {
                        self.retained.push_back((self.next_frame, frame.clone()));
                        self.next_frame += 1;
                        if let Err(e) = ws.send(Message::Binary(frame)).await {
                            return Outcome::Dropped(Error::from_ws(e));
                        }
                        if let Err(e) = self.bound_retained(ws).await {
                            return Outcome::Dropped(e);
                        }
                    }
                    Some(Command::Abort(reason)) => {
                        self.leaving = true;
                        let reason = relay_proto::room::bound_abort_reason(&reason).to_owned();
                        self.aborted = Some((self.slot, reason.clone()));
                        let abort = ClientControl::Abort { reason };
                        if let Err(e) = ws.send(Message::text(abort.to_json())).await {
                            return Outcome::Finished(Some(Error::from_ws(e)));
                        }
                    }
                    Some(Command::Status) => {
                        self.status_requests.push_back(true);
                        if let Err(e) = ws.send(Message::text(ClientControl::Status.to_json())).await {
                            return Outcome::Dropped(Error::from_ws(e));
                        }
                    }
                    Some(Command::Leave) => {
                        // Ack what was taken so the relay forgets it, then leave.
                        let _ = self.ack(ws, true).await;
                        self.leaving = true;
                        if let Err(e) = ws.send(Message::text(ClientControl::Leave.to_json())).await {
                            return Outcome::Finished(Some(Error::from_ws(e)));
                        }
                    }
                    None => self.commands_closed = true,
                },
                _ = self.events.closed(), if self.commands_closed => {
                    // The application dropped both halves: nobody is left to talk to.
                    let _ = ws.close(None).await;
                    return Outcome::Finished(None);
                }
                _ = &mut idle => {
                    let after = self.options.idle_timeout;
                    return Outcome::Dropped(Error::Timeout { what: "anything from the relay", after });
                }
                _ = tick.tick() => {
                    if let Err(e) = self.ack(ws, true).await {
                        return Outcome::Dropped(e);
                    }
                }
                _ = shared.ack_wake.notified() => {
                    if let Err(e) = self.ack(ws, false).await {
                        return Outcome::Dropped(e);
                    }
                }
            }
        }
    }

    /// Forgets the retained frames the relay has taken (numbered up to `received`).
    fn taken_through(&mut self, received: u64) {
        while self.retained.front().is_some_and(|(n, _)| *n <= received) {
            self.retained.pop_front();
        }
    }

    /// Keeps `retained` near `send_queue` frames: past it, asks the relay (once at a
    /// time) how many frames it has taken, and forgets those when the answer comes.
    async fn bound_retained(&mut self, ws: &mut Ws) -> Result<()> {
        if self.retained.len() <= self.options.send_queue.max(1) || self.status_requests.contains(&false) {
            return Ok(());
        }
        self.status_requests.push_back(false);
        ws.send(Message::text(ClientControl::Status.to_json())).await.map_err(Error::from_ws)
    }

    /// Acks what the application has taken: on the timer whenever there is something
    /// new, otherwise once `ack_every` messages are waiting.
    async fn ack(&mut self, ws: &mut Ws, timer: bool) -> Result<()> {
        let consumed = self.shared.consumed.load(Ordering::Acquire);
        let acked = self.shared.acked.load(Ordering::Acquire);
        if consumed <= acked || (!timer && consumed - acked < self.shared.ack_every) {
            return Ok(());
        }
        ws.send(Message::text(ClientControl::Ack { seq: consumed }.to_json()))
            .await
            .map_err(Error::from_ws)?;
        self.shared.acked.store(consumed, Ordering::Release);
        Ok(())
    }

    /// Handles one frame from the relay; `Some` ends the connection.
    fn on_frame(&mut self, msg: Message) -> Option<Outcome> {
        match msg {
            Message::Binary(frame) => {
                let m = match decode_room_frame(frame) {
                    Ok(m) => m,
                    Err(e) => return Some(Outcome::Finished(Some(e))),
                };
                if m.seq <= self.last_seq {
                    tracing::debug!(seq = m.seq, "dropping a data frame delivered before");
                    return None;
                }
                if m.seq != self.last_seq + 1 {
                    return Some(Outcome::Finished(Some(Error::Protocol(format!(
                        "seq jumped from {} to {}",
                        self.last_seq, m.seq
                    )))));
                }
                self.last_seq = m.seq;
                let seq = m.seq;
                if self.events.send(Ok(RoomEvent::Message(m))).is_err() {
                    // Nobody reads: count it as taken so the relay can forget it.
                    self.shared.consumed.store(seq, Ordering::Release);
                }
                None
            }
            Message::Text(text) => {
                let event = match ServerEvent::parse(&text) {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::debug!("ignoring an unknown control event {text}: {e}");
                        return None;
                    }
                };
                let event = match event {
                    ServerEvent::Welcome(_) => {
                        return Some(Outcome::Finished(Some(Error::Protocol("a second welcome".into()))));
                    }
                    ServerEvent::Joined { slot } => RoomEvent::Joined { slot },
                    ServerEvent::Left { slot } => RoomEvent::Left { slot },
                    ServerEvent::Ready { room_size } => {
                        let _ = self.ready.send(true);
                        RoomEvent::Ready { room_size }
                    }
                    ServerEvent::Error { code, message, frame } => {
                        // The relay takes frames in order: everything up to a refused
                        // one was taken.
                        if let Some(n) = frame {
                            self.taken_through(n);
                        }
                        RoomEvent::RelayError { code: error_code_text(code, &text), message, frame }
                    }
                    ServerEvent::Aborted { slot, reason } => {
                        self.aborted = Some((slot, reason.clone()));
                        RoomEvent::Aborted { slot, reason }
                    }
                    ServerEvent::Status(status) => {
                        if let Some(&sent) = status.sent.get(usize::from(self.slot)) {
                            self.taken_through(sent);
                        }
                        if self.status_requests.pop_front() == Some(false) {
                            return None;
                        }
                        RoomEvent::Status {
                            present: status.present,
                            sent: status.sent,
                            idle_ms: status.idle_ms,
                        }
                    }
                    ServerEvent::Closing { code, reason } => {
                        self.closing = Some((code, reason.clone()));
                        RoomEvent::Closing { code, reason }
                    }
                };
                let _ = self.events.send(Ok(event));
                None
            }
            Message::Close(frame) => {
                let (code, reason) = match (frame, self.closing.take()) {
                    (Some(f), _) => (u16::from(f.code), f.reason.to_string()),
                    (None, Some(c)) => c,
                    (None, None) => (crate::error::NO_CLOSE_CODE, String::new()),
                };
                let err = match (CloseCode::from_code(code), self.aborted.take()) {
                    (Some(CloseCode::Aborted), Some((slot, reason))) => {
                        Error::Aborted { slot: Some(slot), reason }
                    }
                    _ => Error::from_close(code, &reason),
                };
                Some(match CloseCode::from_code(code) {
                    Some(CloseCode::Normal) => Outcome::Finished(None),
                    // "a relay bug; reconnect" and "slow consumer; reconnect and resume"
                    Some(CloseCode::Internal | CloseCode::TryAgainLater) if !self.leaving => {
                        Outcome::Dropped(err)
                    }
                    _ => Outcome::Finished(Some(err)),
                })
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_frames_put_the_destination_first() {
        assert_eq!(&OutgoingMessage::to_slot(2, &b"hi"[..]).encode()[..], &[2, 0, b'h', b'i']);
        assert_eq!(&OutgoingMessage::broadcast(&b"x"[..]).encode()[..], &[0xFF, 0xFF, b'x']);
    }

    #[test]
    fn data_frames_decode_seq_sender_and_broadcast_flag() {
        let mut f = Vec::new();
        f.extend_from_slice(&7u64.to_le_bytes());
        f.extend_from_slice(&3u16.to_le_bytes());
        f.extend_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(b"payload");
        let m = decode_room_frame(Bytes::from(f)).unwrap();
        assert_eq!(
            m,
            RoomMessage { from: 3, seq: 7, broadcast: true, payload: Bytes::from_static(b"payload") }
        );
        assert!(matches!(decode_room_frame(Bytes::from_static(&[0; 11])), Err(Error::Protocol(_))));
    }

    #[test]
    fn error_events_keep_codes_this_client_does_not_know() {
        let known = r#"{"type":"error","code":"room_buffer_full","message":"m"}"#;
        assert_eq!(error_code_text(relay_proto::ErrorCode::RoomBufferFull, known), "room_buffer_full");
        let newer = r#"{"type":"error","code":"from_the_future","message":"m"}"#;
        assert_eq!(error_code_text(relay_proto::ErrorCode::Unknown, newer), "from_the_future");
    }

    #[test]
    fn control_events_parse_as_documented() {
        let text = r#"{"type":"welcome","room_uuid":"1a2b","slot":0,"room_size":3,"resume_token":"9d3f","expires_at":1767225600,"present":[0],"resumed":false,"next_seq":1}"#;
        let ServerEvent::Welcome(w) = ServerEvent::parse(text).unwrap() else { panic!("not a welcome") };
        let w = Welcome::from(w);
        assert!(matches!(w, Welcome { slot: 0, room_size: 3, next_seq: 1, .. }));
        assert_eq!(w.resume_token.0, "9d3f");
        assert!(!format!("{w:?}").contains("9d3f"), "the resume token stays out of Debug");
        let c = ServerEvent::parse(r#"{"type":"closing","code":4000,"reason":"room expired"}"#).unwrap();
        assert!(matches!(c, ServerEvent::Closing { code: 4000, .. }));
    }
}
