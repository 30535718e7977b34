//! Room routes (docs/protocol.md section 3): create over REST (`POST /v1/rooms`, and the
//! Sodot shape `POST /create-room`), join over WebSocket (`GET /v1/rooms/{room_id}`).
//!
//! Every refusal of a join happens before the upgrade, as a JSON error. After the
//! upgrade one task per connection moves frames between the socket and a
//! [`relay_core::rooms::Party`]: it pulls events from the room only as fast as the
//! socket takes them, so a slow reader never costs more memory than the room's
//! held-bytes bound; it writes every event that is ready and flushes once (data events
//! with one vectored write per run of them).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::FusedFuture;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use relay_core::CoreError;
use relay_core::rooms::{CloseReason, Destination, JoinRequest, Party, PartyEvent, Resume, RoomInfo};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::auth::{Caller, UsageMeter, authenticate};
use crate::error::ApiError;
use crate::http::{Body, json, parse_json, query_param, read_body};
use crate::metrics::WsKind;
use crate::server::{AppState, DrainGuard};
use crate::ws::{WsStream, close, close_message, upgrade, validate_handshake};

/// Destination slot meaning "every other party" in a client data frame.
const BROADCAST_SLOT: u16 = 0xFFFF;
/// Bytes before the payload in a client data frame: `[to u16]`.
const CLIENT_HEADER: usize = 2;
/// Bytes before the payload in a relay data frame: `[seq u64][from u16][flags u16]`.
const RELAY_HEADER: usize = 12;
/// Flag bit of a relay data frame: the message was a broadcast.
const FLAG_BROADCAST: u16 = 0x0001;
/// Room size of a Sodot `/create-room` call without a body.
const SODOT_DEFAULT_ROOM_SIZE: u64 = 2;

/// The JSON body of a room creation.
#[derive(Debug, Default, Deserialize)]
struct CreateBody {
    room_size: Option<u64>,
    ttl_secs: Option<u64>,
}

/// `POST /v1/rooms`: `{"room_size": N, "ttl_secs": T?}` -> 201
/// `{"room_uuid", "room_size", "expires_at"}`.
#[utoipa::path(
    post, path = "/v1/rooms", operation_id = "create_room", tag = "rooms", summary = "Create a room",
    request_body = crate::openapi::CreateRoomRequest,
    responses(
        (status = 201, description = "The room", body = crate::openapi::RoomCreated),
        (status = 400, description = "Invalid JSON, or a room size or TTL out of range", body = crate::openapi::ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = crate::openapi::ErrorBody),
        (status = 403, description = "The API key is revoked or expired", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body over the size limit", body = crate::openapi::ErrorBody),
        (status = 503, description = "Too many rooms", body = crate::openapi::ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub(crate) async fn create(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let caller = authenticate(state, &req)?;
    if let Some(refusal) = state.key_rate_refusal(&caller) {
        return Ok(refusal);
    }
    let body = read_body(req, state.config().max_body_bytes).await?;
    let body: CreateBody = parse_json(&body)?;
    let size = body.room_size.ok_or_else(|| ApiError::bad_request("bad_request", "room_size is required"))?;
    let room = create_room(state, size, body.ttl_secs)?;
    count_room(state, &caller, &room);
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({"room_uuid": room.id, "room_size": room.room_size, "expires_at": room.expires_at}),
    ))
}

/// `POST /create-room` (Sodot shape): optional `{"room_size": N}` (2 without a body)
/// -> 200 `{"room_uuid"}`.
#[utoipa::path(
    post, path = "/create-room", operation_id = "create_room_sodot", tag = "rooms", summary = "Create a room (Sodot shape)",
    request_body(content = Option<crate::openapi::SodotCreateRoomRequest>, description = "Optional: a 2-party room without a body"),
    responses(
        (status = 200, description = "The room", body = crate::openapi::SodotRoomCreated),
        (status = 400, description = "Invalid JSON, or a room size or TTL out of range", body = crate::openapi::ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = crate::openapi::ErrorBody),
        (status = 403, description = "The API key is revoked or expired", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body over the size limit", body = crate::openapi::ErrorBody),
        (status = 503, description = "Too many rooms", body = crate::openapi::ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub(crate) async fn create_sodot(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let caller = authenticate(state, &req)?;
    if let Some(refusal) = state.key_rate_refusal(&caller) {
        return Ok(refusal);
    }
    let body = read_body(req, state.config().max_body_bytes).await?;
    let body: CreateBody =
        if body.iter().all(u8::is_ascii_whitespace) { CreateBody::default() } else { parse_json(&body)? };
    let room = create_room(state, body.room_size.unwrap_or(SODOT_DEFAULT_ROOM_SIZE), body.ttl_secs)?;
    count_room(state, &caller, &room);
    Ok(json(StatusCode::OK, &serde_json::json!({"room_uuid": room.id})))
}

/// `GET /v1/rooms/{room_id}` (WebSocket), with `slot`, or `resume_token` and `last_seq`.
#[utoipa::path(
    get, path = "/v1/rooms/{room_id}", operation_id = "join_room", tag = "rooms", summary = "Join a room (WebSocket)",
    description = "A WebSocket handshake (`Connection: Upgrade`, `Upgrade: websocket`, \
        `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Key`). Every refusal comes before the \
        upgrade, as a JSON error. Whoever holds the room ID may join: no API key.",
    params(
        ("room_id" = String, Path, description = "The room ID from the create call"),
        ("slot" = Option<u16>, Query, description = "The slot to take (0-based); the lowest free one when absent"),
        ("resume_token" = Option<String>, Query, description = "Resume a dropped connection: the token from its welcome"),
        ("last_seq" = Option<u64>, Query, description = "With resume_token: the last seq received"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the room's WebSocket"),
        (status = 400, description = "Malformed room ID, query or handshake", body = crate::openapi::ErrorBody),
        (status = 403, description = "Bad resume token", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such room", body = crate::openapi::ErrorBody),
        (status = 409, description = "Room full, slot taken, or resume gap", body = crate::openapi::ErrorBody),
        (status = 426, description = "Not a WebSocket handshake", body = crate::openapi::ErrorBody),
        (status = 503, description = "The relay is shutting down", body = crate::openapi::ErrorBody),
    ),
)]
pub(crate) async fn join(
    state: &AppState,
    req: Request<Incoming>,
    room_id: &str,
) -> Result<Response<Body>, ApiError> {
    let id = room_id
        .parse()
        .map_err(|e: relay_core::id::RoomIdError| ApiError::bad_request("bad_room_id", e.to_string()))?;
    let accept_key = validate_handshake(&req)?;
    let request = join_request(req.uri().query())?;
    let guard = state.drain_guard().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the relay is shutting down")
    })?;
    let party = state.rooms().join(&id, request).map_err(|e| core_error(&e))?;
    tracing::debug!(room = %id, slot = party.slot(), resumed = party.welcome().resumed, "party joined");
    let task_state = state.clone();
    let meter = state.room_usage_meter(&id);
    Ok(upgrade(req, accept_key, state.config(), move |ws| run_party(ws, party, task_state, guard, meter)))
}

/// Usage: the room counts against the caller's key, and so will its messages.
fn count_room(state: &AppState, caller: &Caller, room: &RoomInfo) {
    state.record_usage(caller, 0, 0, 1);
    state.set_room_owner(room.id, caller);
}

fn create_room(state: &AppState, size: u64, ttl_secs: Option<u64>) -> Result<RoomInfo, ApiError> {
    let max = state.rooms().limits().max_room_size;
    let size = u16::try_from(size).map_err(|_| core_error(&CoreError::BadRoomSize { got: size, max }))?;
    let room = state.rooms().create(size, ttl_secs.map(Duration::from_secs)).map_err(|e| core_error(&e))?;
    tracing::debug!(room = %room.id, size, "room created");
    state.metrics().room_created();
    Ok(room)
}

/// Reads `slot`, `resume_token` and `last_seq` from the query string.
fn join_request(query: Option<&str>) -> Result<JoinRequest, ApiError> {
    let slot = match query_param(query, "slot") {
        Some(s) => Some(s.parse::<u16>().map_err(|_| {
            ApiError::bad_request("bad_request", format!("slot must be a slot number, got {s:?}"))
        })?),
        None => None,
    };
    let last_seq = match query_param(query, "last_seq") {
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "bad_request",
                format!("last_seq must be a non-negative integer, got {s:?}"),
            )
        })?),
        None => None,
    };
    let resume = match (query_param(query, "resume_token").filter(|t| !t.is_empty()), last_seq) {
        (Some(token), last_seq) => Some(Resume { token, last_seq }),
        (None, Some(_)) => {
            return Err(ApiError::bad_request("bad_request", "last_seq needs a resume_token"));
        }
        (None, None) => None,
    };
    Ok(JoinRequest { slot, resume })
}

/// The HTTP refusal for a core error (docs/protocol.md section 3).
fn core_error(e: &CoreError) -> ApiError {
    let (status, code) = match e {
        CoreError::RoomId(_) => (StatusCode::BAD_REQUEST, "bad_room_id"),
        CoreError::BadRoomSize { .. }
        | CoreError::BadTtl { .. }
        | CoreError::BadSlot { .. }
        | CoreError::ResumeAhead { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
        CoreError::TooManyRooms(_) => (StatusCode::SERVICE_UNAVAILABLE, "too_many_rooms"),
        CoreError::RoomNotFound => (StatusCode::NOT_FOUND, "room_not_found"),
        CoreError::RoomFull(_) => (StatusCode::CONFLICT, "room_full"),
        CoreError::SlotTaken(_) => (StatusCode::CONFLICT, "slot_taken"),
        CoreError::ResumeGap { .. } => (StatusCode::CONFLICT, "resume_gap"),
        CoreError::BadResumeToken => (StatusCode::FORBIDDEN, "bad_resume_token"),
        CoreError::BadDestination(_) => (StatusCode::BAD_REQUEST, "bad_destination"),
        CoreError::RoomBufferFull { .. } => (StatusCode::CONFLICT, "room_buffer_full"),
        CoreError::MessageTooBig { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "message_too_big"),
        CoreError::NoRuntime | CoreError::PartyClosed | CoreError::Mailbox(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    };
    ApiError::new(status, code, e.to_string())
}

/// How a party's WebSocket ends.
enum Exit {
    /// The socket is gone (dropped, errored, or the client closed it): the slot is held.
    Dropped,
    /// The client sent `leave`.
    Leave,
    /// The relay closes with this code and reason.
    Close(u16, &'static str),
}

/// What woke a party's task, once it has handled every frame the socket had.
enum Step {
    /// An event for the client.
    Event(PartyEvent),
    /// A frame was refused: answer with an `error` event and go on.
    Refused(&'static str, String),
    /// The ping interval passed.
    Ping,
    /// The connection ends.
    Exit(Exit),
}

/// One party connection's state between wake-ups. Its task polls everything it waits
/// for (shutdown, the socket, the room, the ping timer) from one hand-written poll
/// function, like a mailbox connection's (see `mailbox::Conn`).
struct PartyConn {
    state: AppState,
    ws: WsStream,
    party: Party,
    meter: UsageMeter,
    message_rate: crate::ratelimit::MessageRate,
    ping: tokio::time::Interval,
    last_seen: Instant,
}

impl PartyConn {
    /// Handles every frame the socket has ready, wakes the parties they were queued for
    /// once, then reports what else is ready. `Pending` when nothing is.
    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        shutdown: Pin<&mut impl FusedFuture<Output = bool>>,
    ) -> Poll<Step> {
        if let Poll::Ready(true) = shutdown.poll(cx) {
            return Poll::Ready(Step::Exit(Exit::Close(close::GOING_AWAY, "server shutting down")));
        }
        let read = self.poll_frames(cx);
        // Once per burst, not once per frame: the receivers wake to the whole burst.
        self.party.wake_receivers();
        if read.is_ready() {
            return read;
        }
        if let Poll::Ready(event) = self.party.poll_next_event(cx) {
            return Poll::Ready(Step::Event(event));
        }
        if self.ping.poll_tick(cx).is_ready() {
            return Poll::Ready(Step::Ping);
        }
        Poll::Pending
    }

    /// Reads and handles frames until the socket has none ready or the coop budget is
    /// spent (`Pending`, with a wake-up registered either way), or one needs an answer
    /// or ends the connection (`Ready`).
    fn poll_frames(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        let now = Instant::now();
        let (mut relayed, mut relayed_bytes) = (0u64, 0usize);
        let mut arrived = false;
        let polled = loop {
            let Poll::Ready(incoming) = crate::ws::poll_next_message(&mut self.ws, cx) else {
                break Poll::Pending;
            };
            self.last_seen = now;
            arrived = true;
            let msg = match incoming {
                Some(Ok(_)) if !self.message_rate.allow(now) => {
                    self.state.metrics().rate_limited("ws_message");
                    break Poll::Ready(Step::Exit(Exit::Close(
                        close::TRY_AGAIN_LATER,
                        "message rate limit exceeded",
                    )));
                }
                Some(Ok(msg)) => msg,
                Some(Err(WsError::Capacity(_))) => {
                    break Poll::Ready(Step::Exit(Exit::Close(close::TOO_BIG, "message too big")));
                }
                Some(Err(WsError::Utf8(_))) => {
                    break Poll::Ready(Step::Exit(Exit::Close(
                        close::MALFORMED,
                        "invalid utf-8 in a text frame",
                    )));
                }
                Some(Err(WsError::Protocol(_))) => {
                    break Poll::Ready(Step::Exit(Exit::Close(close::PROTOCOL, "protocol error")));
                }
                Some(Err(_)) | None => break Poll::Ready(Step::Exit(Exit::Dropped)),
            };
            match msg {
                Message::Binary(frame) => match send_data(&mut self.party, frame) {
                    Ok(None) => {}
                    Ok(Some(payload)) => {
                        relayed += 1;
                        relayed_bytes += payload;
                    }
                    Err((code, message)) => break Poll::Ready(Step::Refused(code, message)),
                },
                Message::Text(text) => match control(&text) {
                    Control::Ack(seq) => self.party.ack(seq),
                    Control::Leave => break Poll::Ready(Step::Exit(Exit::Leave)),
                    Control::Bad => {
                        break Poll::Ready(Step::Refused(
                            "bad_control",
                            "text frames must be {\"type\":\"ack\",\"seq\":N} or {\"type\":\"leave\"}"
                                .to_owned(),
                        ));
                    }
                },
                Message::Close(_) => break Poll::Ready(Step::Exit(Exit::Dropped)),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        };
        if arrived {
            self.state.frames_arrived();
        }
        if relayed > 0 {
            self.meter.add(relayed, relayed_bytes as u64, 0);
            self.state.metrics().messages_relayed(WsKind::Room, relayed, relayed_bytes);
        }
        polled
    }
}

/// The WebSocket task of one party: welcome, then events out and frames in until the
/// room closes, the party leaves, the socket drops or the server shuts down.
async fn run_party(mut ws: WsStream, party: Party, state: AppState, _guard: DrainGuard, meter: UsageMeter) {
    let config = state.config();
    let _open = state.metrics().websocket_opened(WsKind::Room);
    let welcome = welcome_json(&party);
    if ws.send(Message::text(welcome)).await.is_err() {
        return;
    }
    let mut shutdown = std::pin::pin!(state.shutting_down());
    let ping_every = config.ws_ping_interval;
    let now = Instant::now();
    let mut c = PartyConn {
        state: state.clone(),
        ws,
        party,
        meter,
        message_rate: state.rate_limiter().message_rate(now),
        ping: tokio::time::interval_at(now + ping_every, ping_every),
        last_seen: now,
    };
    let exit = loop {
        match std::future::poll_fn(|cx| c.poll_step(cx, shutdown.as_mut())).await {
            Step::Exit(exit) => break exit,
            Step::Event(event) => {
                let torn = std::sync::atomic::AtomicBool::new(false);
                let max = config.limits.send_queue_frames;
                let write = write_events(&mut c.ws, &mut c.party, event, max, &torn);
                let mut write = std::pin::pin!(write);
                // The usual case, a socket with room, finishes at once and arms no timer.
                let written = match write.as_mut().now_or_never() {
                    Some(written) => Ok(written),
                    None => tokio::time::timeout(config.ws_idle_timeout, write.as_mut()).await,
                };
                if written.is_err() && torn.load(std::sync::atomic::Ordering::Relaxed) {
                    // Part of a frame is on the wire: the close may only follow it whole.
                    // Give the peer a moment to take the rest, else just drop.
                    let rest = tokio::time::timeout(config.shutdown_grace, write.as_mut()).await;
                    if !matches!(rest, Ok(Ok(_))) {
                        break Exit::Dropped;
                    }
                }
                match written {
                    Ok(Ok(None)) => c.state.frames_written(),
                    Ok(Ok(Some(reason))) => break Exit::Close(reason.code(), reason.text()),
                    Ok(Err(_)) => break Exit::Dropped,
                    Err(_) => break Exit::Close(close::TRY_AGAIN_LATER, "slow consumer"),
                }
            }
            Step::Refused(code, message) => {
                let event = serde_json::json!({"type": "error", "code": code, "message": message});
                if c.ws.send(Message::text(event.to_string())).await.is_err() {
                    break Exit::Dropped;
                }
            }
            Step::Ping => {
                if c.last_seen.elapsed() >= config.ws_idle_timeout {
                    break Exit::Close(close::POLICY, "idle timeout");
                }
                if c.ws.send(Message::Ping(Bytes::new())).await.is_err() {
                    break Exit::Dropped;
                }
            }
        }
    };
    let PartyConn { mut ws, party, .. } = c;
    match exit {
        Exit::Dropped => drop(party),
        Exit::Leave => {
            party.leave();
            finish(&mut ws, close::NORMAL, "left", config.shutdown_grace).await;
        }
        Exit::Close(code, reason) => {
            // Free the slot first: a closed socket is a dropped connection (slot held).
            drop(party);
            finish(&mut ws, code, reason, config.shutdown_grace).await;
        }
    }
}

/// Sends a client data frame `[to u16 LE][payload]`, waking its receivers after the
/// burst; returns its payload size (`None` when the party's connection is already
/// over), or the error event to answer with when it is refused.
fn send_data(party: &mut Party, frame: Bytes) -> Result<Option<usize>, (&'static str, String)> {
    let Some((to, payload)) = parse_data_frame(&frame) else {
        return Err(("malformed_frame", "a data frame starts with a 2-byte destination slot".to_owned()));
    };
    let len = payload.len();
    match party.send_deferred(to, payload) {
        Ok(()) => Ok(Some(len)),
        Err(CoreError::PartyClosed) => Ok(None),
        Err(e) => Err((core_error(&e).code, e.to_string())),
    }
}

/// Splits a client data frame `[to u16 LE][payload]` into its destination and payload
/// (sharing `frame`'s buffer); `None` when it is shorter than the 2-byte header. Public
/// (hidden) only so the fuzz targets reach the exact parser the server runs.
#[doc(hidden)]
pub fn parse_data_frame(frame: &Bytes) -> Option<(Destination, Bytes)> {
    let header = frame.get(..CLIENT_HEADER)?;
    let to = u16::from_le_bytes([header[0], header[1]]);
    let to = if to == BROADCAST_SLOT { Destination::Broadcast } else { Destination::To(to) };
    Some((to, frame.slice(CLIENT_HEADER..)))
}

/// A client control message (a text frame of a room connection).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// `{"type":"ack","seq":N}`.
    Ack(u64),
    /// `{"type":"leave"}`.
    Leave,
    /// Anything else: answered with an `error` event.
    Bad,
}

/// Reads a room control text frame. Public (hidden) only for the fuzz targets.
#[doc(hidden)]
pub fn control(text: &str) -> Control {
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
        seq: Option<u64>,
    }
    match serde_json::from_str::<Raw<'_>>(text) {
        Ok(Raw { kind, seq: Some(seq) }) if kind == "ack" => Control::Ack(seq),
        Ok(Raw { kind, .. }) if kind == "leave" => Control::Leave,
        _ => Control::Bad,
    }
}

/// Writes `first` and every further event ready now (at most `max_batch`), then
/// flushes once. Data events go out as one vectored write per run of them (their
/// payloads are not copied); control events as text frames, in order. Returns the close
/// reason if the party's connection is over.
async fn write_events(
    ws: &mut WsStream,
    party: &mut Party,
    first: PartyEvent,
    max_batch: usize,
    torn: &std::sync::atomic::AtomicBool,
) -> Result<Option<CloseReason>, WsError> {
    // (relay header, payload) of the data events not yet written.
    let mut data: Vec<([u8; RELAY_HEADER], Bytes)> = Vec::new();
    let mut next = Some(first);
    let mut taken = 0usize;
    let mut closed = None;
    while let Some(event) = next.take() {
        match event {
            PartyEvent::Data(d) => data.push((relay_header(d.seq, d.from, d.broadcast), d.payload)),
            PartyEvent::Closed(reason) => {
                closed = Some(reason);
                break;
            }
            PartyEvent::Joined(slot) => {
                write_control(ws, &mut data, torn, serde_json::json!({"type": "joined", "slot": slot}))
                    .await?;
            }
            PartyEvent::Left(slot) => {
                write_control(ws, &mut data, torn, serde_json::json!({"type": "left", "slot": slot})).await?;
            }
            PartyEvent::Ready { room_size } => {
                let ready = serde_json::json!({"type": "ready", "room_size": room_size});
                write_control(ws, &mut data, torn, ready).await?;
            }
        }
        taken += 1;
        if taken < max_batch {
            next = party.try_next_event();
        }
    }
    write_data(ws, &mut data, torn).await?;
    ws.flush().await?;
    Ok(closed)
}

/// Writes the data events in `data` with one vectored write (after whatever tungstenite
/// holds), and empties it.
async fn write_data(
    ws: &mut WsStream,
    data: &mut Vec<([u8; RELAY_HEADER], Bytes)>,
    torn: &std::sync::atomic::AtomicBool,
) -> Result<(), WsError> {
    if data.is_empty() {
        return Ok(());
    }
    let parts: Vec<[&[u8]; 2]> = data.iter().map(|(h, p)| [&h[..], &p[..]]).collect();
    crate::ws::write_binary_vectored(ws, parts.iter().map(|p| &p[..]), torn).await?;
    data.clear();
    Ok(())
}

/// Feeds a control event as a text frame, after the data events before it.
async fn write_control(
    ws: &mut WsStream,
    data: &mut Vec<([u8; RELAY_HEADER], Bytes)>,
    torn: &std::sync::atomic::AtomicBool,
    event: serde_json::Value,
) -> Result<(), WsError> {
    write_data(ws, data, torn).await?;
    ws.feed(Message::text(event.to_string())).await
}

/// The header of a relay data frame: `[seq u64 LE][from u16 LE][flags u16 LE]`.
fn relay_header(seq: u64, from: u16, broadcast: bool) -> [u8; RELAY_HEADER] {
    let mut h = [0u8; RELAY_HEADER];
    h[..8].copy_from_slice(&seq.to_le_bytes());
    h[8..10].copy_from_slice(&from.to_le_bytes());
    h[10..].copy_from_slice(&(if broadcast { FLAG_BROADCAST } else { 0 }).to_le_bytes());
    h
}

fn welcome_json(party: &Party) -> String {
    let w = party.welcome();
    serde_json::json!({
        "type": "welcome",
        "room_uuid": w.room_id,
        "slot": w.slot,
        "room_size": w.room_size,
        "resume_token": w.resume_token,
        "expires_at": w.expires_at,
        "present": w.present,
        "resumed": w.resumed,
        "next_seq": w.next_seq,
    })
    .to_string()
}

/// Sends `closing` and the close frame, then waits (at most `wait`) for the client's
/// close so the frames are read before the TCP connection goes.
async fn finish(ws: &mut WsStream, code: u16, reason: &str, wait: Duration) {
    let closing = serde_json::json!({"type": "closing", "code": code, "reason": reason}).to_string();
    let _ = tokio::time::timeout(wait, async {
        ws.feed(Message::text(closing)).await?;
        ws.send(close_message(code, reason)).await?;
        while let Some(Ok(_)) = ws.next().await {}
        Ok::<(), WsError>(())
    })
    .await;
}
