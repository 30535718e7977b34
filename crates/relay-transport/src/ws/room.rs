//! A room party's WebSocket, after the upgrade: the room's side of the connection
//! driver (`ws::driver`). It sends the welcome first; a binary frame is a data frame
//! for other parties (`[to u16][payload]`), a text frame an `ack` or `leave`; a refused
//! frame is answered with an `error` event and the connection goes on; events from the
//! room go out in batches (data frames with one vectored write); `closing` precedes
//! the close frame.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use relay_core::CoreError;
use relay_core::rooms::{CloseReason, Destination, Party, PartyEvent};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use relay_proto::room::{
    CLIENT_HEADER_LEN, ClientControl, RELAY_HEADER_LEN, RelayHeader, RoomStatus, ServerEvent, Welcome,
    parse_client_frame,
};
use relay_proto::{CloseCode, ErrorCode};

use crate::caller::{Lease, UsageMeter};
use crate::config::ServerConfig;
use crate::error::core_error;
use crate::metrics::WsKind;
use crate::state::{AppState, DrainGuard};
use crate::ws::WsStream;
use crate::ws::driver::{self, End, Flow, Session};

/// A room party's side of its connection: its slot in the room, and the data events
/// of the write in progress (kept between writes so a write allocates no new list).
struct PartySession {
    party: Party,
    /// Events taken from the party's queue per write: at most `send_queue_frames`.
    max_batch: usize,
    /// (relay header, payload) of the data events not yet written.
    data: Vec<([u8; RELAY_HEADER_LEN], Bytes)>,
    /// The party sent `leave`: leave the room when the connection ends, rather than
    /// hold the slot for a resume.
    left: bool,
}

impl Session for PartySession {
    type Out = PartyEvent;
    const KIND: WsKind = WsKind::Room;
    const IDLE_CLOSE: CloseCode = CloseCode::Policy;

    fn close_wait(config: &ServerConfig) -> Duration {
        config.shutdown_grace
    }

    fn greeting(&self) -> Option<Message> {
        Some(Message::text(welcome_json(&self.party)))
    }

    fn on_binary(&mut self, frame: Bytes, _now: Instant) -> Result<Option<usize>, Flow> {
        send_data(&mut self.party, frame).map_err(|(code, message, frame)| refused(code, &message, frame))
    }

    fn on_text(&mut self, text: Utf8Bytes) -> Result<(), Flow> {
        match ClientControl::parse(&text) {
            Some(ClientControl::Ack { seq }) => {
                self.party.ack(seq);
                Ok(())
            }
            Some(ClientControl::Leave) => {
                self.left = true;
                Err(Flow::End(End::Close(CloseCode::Normal, "left")))
            }
            Some(ClientControl::Abort { reason }) => {
                // The room's events take it from here: `Closed(Aborted)` ends this
                // connection (and every other) with 4002.
                self.party.abort(&reason);
                Ok(())
            }
            Some(ClientControl::Status) => Err(Flow::Reply(Message::text(status_json(&self.party)))),
            None => Err(refused(
                ErrorCode::BadControl,
                "text frames must be {\"type\":\"ack\",\"seq\":N}, {\"type\":\"leave\"}, \
                 {\"type\":\"abort\",\"reason\":\"...\"} or {\"type\":\"status\"}",
                None,
            )),
        }
    }

    fn after_burst(&mut self) {
        self.party.wake_receivers();
    }

    fn poll_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<Result<PartyEvent, End>> {
        self.party.poll_next_event(cx).map(Ok)
    }

    fn write<'a>(
        &'a mut self,
        ws: &'a mut WsStream,
        first: PartyEvent,
        torn: &'a AtomicBool,
    ) -> (impl Future<Output = Result<Option<End>, WsError>> + Send + 'a, impl Future<Output = End> + Send + 'a)
    {
        let write = async move {
            let closed =
                write_events(ws, &mut self.party, &mut self.data, first, self.max_batch, torn).await?;
            Ok(closed.map(|reason| End::Close(reason.close_code(), reason.text())))
        };
        // A room holds what a slow party has not read (bounded by the room's held
        // bytes); only the write timeout gives up on it.
        (write, std::future::pending())
    }

    fn end(self) {
        if self.left {
            self.party.leave();
        }
        // Else dropping the party frees the connection and holds the slot for a resume.
    }

    fn closing(code: CloseCode, reason: &'static str) -> Option<Message> {
        let closing = ServerEvent::Closing { code: code.code(), reason: reason.to_owned() };
        Some(Message::text(closing.to_json()))
    }
}

/// The `error` event answering a refused frame (a data frame by its number); the
/// connection goes on.
fn refused(code: ErrorCode, message: &str, frame: Option<u64>) -> Flow {
    let event = ServerEvent::Error { code, message: message.to_owned(), frame };
    Flow::Reply(Message::text(event.to_json()))
}

/// The WebSocket task of one party: welcome, then events out and frames in until the
/// room closes, the party leaves, the socket drops or the server shuts down.
pub(crate) async fn run_party(
    ws: WsStream,
    party: Party,
    state: AppState,
    guard: DrainGuard,
    meter: UsageMeter,
) {
    let max_batch = state.config().limits.send_queue_frames;
    let session = PartySession { party, max_batch, data: Vec::new(), left: false };
    driver::run(state, ws, session, guard, meter, Lease::Unbound).await;
}

/// Sends a client data frame `[to u16 LE][payload]`, waking its receivers after the
/// burst; returns its payload size (`None` when the party's connection is already
/// over), or the error event to answer with when it is refused (with the refused
/// frame's number, the party's own count of its data frames).
fn send_data(party: &mut Party, frame: Bytes) -> Result<Option<usize>, (ErrorCode, String, Option<u64>)> {
    let Some((to, payload)) = parse_data_frame(&frame) else {
        return Err((
            ErrorCode::MalformedFrame,
            "a data frame starts with a 2-byte destination slot".to_owned(),
            party.refuse_frame(),
        ));
    };
    let len = payload.len();
    match party.send_deferred(to, payload) {
        Ok(()) => Ok(Some(len)),
        Err(CoreError::PartyClosed) => Ok(None),
        Err(e) => Err((core_error(&e).code, e.to_string(), Some(party.last_frame()))),
    }
}

/// Splits a client data frame `[to u16 LE][payload]` into its destination and payload
/// (sharing `frame`'s buffer); `None` when it is shorter than the 2-byte header. Public
/// (hidden) only so the fuzz targets reach the exact parser the server runs.
#[doc(hidden)]
pub fn parse_data_frame(frame: &Bytes) -> Option<(Destination, Bytes)> {
    let (to, _) = parse_client_frame(frame)?;
    Some((to, frame.slice(CLIENT_HEADER_LEN..)))
}

/// Writes `first` and every further event ready now (at most `max_batch`), then
/// flushes once. Data events go out as one vectored write per run of them (their
/// payloads are not copied); control events as text frames, in order. Returns the close
/// reason if the party's connection is over.
async fn write_events(
    ws: &mut WsStream,
    party: &mut Party,
    data: &mut Vec<([u8; RELAY_HEADER_LEN], Bytes)>,
    first: PartyEvent,
    max_batch: usize,
    torn: &AtomicBool,
) -> Result<Option<CloseReason>, WsError> {
    data.clear();
    let mut next = Some(first);
    let mut taken = 0usize;
    let mut closed = None;
    while let Some(event) = next.take() {
        match event {
            PartyEvent::Data(d) => {
                let header = RelayHeader { seq: d.seq, from: d.from, broadcast: d.broadcast };
                data.push((header.encode(), d.payload));
            }
            PartyEvent::Closed(reason) => {
                closed = Some(reason);
                break;
            }
            PartyEvent::Joined(slot) => {
                write_control(ws, data, torn, ServerEvent::Joined { slot }).await?;
            }
            PartyEvent::Left(slot) => {
                write_control(ws, data, torn, ServerEvent::Left { slot }).await?;
            }
            PartyEvent::Ready { room_size } => {
                write_control(ws, data, torn, ServerEvent::Ready { room_size }).await?;
            }
            PartyEvent::Aborted { slot, reason } => {
                write_control(ws, data, torn, ServerEvent::Aborted { slot, reason }).await?;
            }
        }
        taken += 1;
        if taken < max_batch {
            next = party.try_next_event();
        }
    }
    write_data(ws, data, torn).await?;
    ws.flush().await?;
    Ok(closed)
}

/// Writes the data events in `data` with one vectored write (after whatever tungstenite
/// holds), and empties it.
async fn write_data(
    ws: &mut WsStream,
    data: &mut Vec<([u8; RELAY_HEADER_LEN], Bytes)>,
    torn: &AtomicBool,
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
    data: &mut Vec<([u8; RELAY_HEADER_LEN], Bytes)>,
    torn: &AtomicBool,
    event: ServerEvent,
) -> Result<(), WsError> {
    write_data(ws, data, torn).await?;
    ws.feed(Message::text(event.to_json())).await
}

fn welcome_json(party: &Party) -> String {
    let w = party.welcome();
    ServerEvent::Welcome(Welcome {
        room_uuid: w.room_id.to_string(),
        slot: w.slot,
        room_size: w.room_size,
        resume_token: w.resume_token.clone(),
        expires_at: w.expires_at,
        present: w.present.clone(),
        resumed: w.resumed,
        next_seq: w.next_seq,
        received: w.received,
    })
    .to_json()
}

/// The `status` event answering a party's `status` request.
fn status_json(party: &Party) -> String {
    let status = party.status();
    ServerEvent::Status(RoomStatus {
        present: status.present,
        sent: status.sent,
        idle_ms: status.idle.iter().map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).collect(),
    })
    .to_json()
}
