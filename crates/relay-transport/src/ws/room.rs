//! A room party's WebSocket, after the upgrade.

use crate::caller::UsageMeter;
use crate::error::core_error;
use crate::metrics::WsKind;
use crate::state::{AppState, DrainGuard};
use crate::ws::{WsStream, close, close_message};
use bytes::Bytes;
use futures_util::future::FusedFuture;
use futures_util::{FutureExt, SinkExt, StreamExt};
use relay_core::CoreError;
use relay_core::rooms::{CloseReason, Destination, Party, PartyEvent};
use serde::Deserialize;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
/// Destination slot meaning "every other party" in a client data frame.
const BROADCAST_SLOT: u16 = 0xFFFF;
/// Bytes before the payload in a client data frame: `[to u16]`.
const CLIENT_HEADER: usize = 2;
/// Bytes before the payload in a relay data frame: `[seq u64][from u16][flags u16]`.
const RELAY_HEADER: usize = 12;
/// Flag bit of a relay data frame: the message was a broadcast.
const FLAG_BROADCAST: u16 = 0x0001;
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
                        self.state.metrics().message_size(WsKind::Room, payload);
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
pub(crate) async fn run_party(
    mut ws: WsStream,
    party: Party,
    state: AppState,
    _guard: DrainGuard,
    meter: UsageMeter,
) {
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
        Err(e) => Err((core_error(&e).code.as_str(), e.to_string())),
    }
}

/// Splits a client data frame `[to u16 LE][payload]` into its destination and payload
/// (sharing `frame`'s buffer); `None` when it is shorter than the 2-byte header. Public
/// (hidden) only so the fuzz targets reach the exact parser the server runs.
#[doc(hidden)]
pub fn parse_data_frame(frame: &Bytes) -> Option<(Destination, Bytes)> {
    let header = frame.get(..CLIENT_HEADER)?;
    let to = u16::from_le_bytes([header[0], header[1]]);
    let to = if to == BROADCAST_SLOT { Destination::Broadcast } else { Destination::Slot(to) };
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
    crate::ws::write::write_binary_vectored(ws, parts.iter().map(|p| &p[..]), torn).await?;
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
