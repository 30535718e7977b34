//! The mailbox (Silence Labs message-relay wire format): publish a message under a
//! 32-byte ID, ask for an ID and get it when it exists.
//!
//! [`MailboxClient`] runs one background task per connection that demultiplexes
//! incoming frames by ID to the waiting [`MailboxClient::ask`] futures, so any number
//! of asks can be in flight. [`RawMailbox`] is the bare connection, a `Stream` and
//! `Sink` of whole frames, for libraries that already speak the format.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use relay_proto::mailbox::MailboxHeader;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::config::{ClientConfig, percent_encode};
use crate::error::{Error, Result};
use crate::net::{Endpoint, Stream as NetStream};

/// Length of a mailbox message ID.
pub const MAILBOX_ID_LEN: usize = std::mem::size_of::<MailboxId>();
/// Length of the frame header (id, ttl, flags); a frame of exactly this length is an ASK.
pub const MAILBOX_HEADER_LEN: usize = relay_proto::mailbox::HEADER_LEN;
/// Flag: the message is removed after its first delivery (relay-proto's).
pub use relay_proto::mailbox::FLAG_ONE_RECEIVER;

/// A mailbox message ID.
pub type MailboxId = relay_proto::mailbox::MessageId;

/// One mailbox frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxFrame {
    /// The message ID.
    pub id: MailboxId,
    /// Time to live in seconds (of the message for a PUB, of the wait for an ASK).
    pub ttl: u16,
    /// Flags; [`FLAG_ONE_RECEIVER`] is the one the relay knows.
    pub flags: u16,
    /// The payload; empty for an ASK.
    pub payload: Bytes,
}

impl MailboxFrame {
    /// An ASK for `id`, waiting up to `ttl` seconds.
    pub fn ask(id: MailboxId, ttl: u16) -> MailboxFrame {
        MailboxFrame { id, ttl, flags: 0, payload: Bytes::new() }
    }

    /// A PUB of `payload` under `id` for `ttl` seconds.
    pub fn publish(id: MailboxId, ttl: u16, flags: u16, payload: impl Into<Bytes>) -> MailboxFrame {
        MailboxFrame { id, ttl, flags, payload: payload.into() }
    }

    /// Whether this frame is an ASK (no payload).
    pub fn is_ask(&self) -> bool {
        self.payload.is_empty()
    }

    /// The wire bytes: id, ttl u16 LE, flags u16 LE, payload.
    pub fn encode(&self) -> Vec<u8> {
        relay_proto::mailbox::publish_frame(&self.id, self.ttl, self.flags, &self.payload)
    }

    /// Parses wire bytes; shorter than 36 bytes is an error.
    pub fn decode(frame: impl Into<Bytes>) -> Result<MailboxFrame> {
        let frame: Bytes = frame.into();
        let Some(header) = MailboxHeader::parse(&frame) else {
            return Err(Error::Protocol(format!(
                "mailbox frame of {} bytes, shorter than {MAILBOX_HEADER_LEN}",
                frame.len()
            )));
        };
        Ok(MailboxFrame {
            id: header.id,
            ttl: header.ttl_secs,
            flags: header.flags,
            payload: frame.slice(MAILBOX_HEADER_LEN..),
        })
    }
}

/// The mailbox WebSocket for `url`: a bare relay address gets `/v1/msg-relay`; a URL
/// already ending in `msg-relay` is used as is.
async fn open(url: &str, config: &ClientConfig) -> Result<WebSocketStream<NetStream>> {
    let endpoint = Endpoint::parse(url)?;
    let path = if endpoint.prefix().ends_with("msg-relay") { "" } else { "/v1/msg-relay" };
    endpoint.websocket(path, config, true).await
}

/// The room-scoped mailbox of `room_id` (no API key needed).
async fn open_room(
    base_url: &str,
    room_id: &str,
    config: &ClientConfig,
) -> Result<WebSocketStream<NetStream>> {
    let endpoint = Endpoint::parse(base_url)?;
    endpoint.websocket(&format!("/v1/rooms/{}/msg-relay", percent_encode(room_id)), config, false).await
}

/// What the application asks the mailbox task to do.
enum Command {
    Publish { frame: Vec<u8>, done: oneshot::Sender<Result<()>> },
    Ask { id: MailboxId, ttl: u16, reply: oneshot::Sender<Result<Bytes>> },
}

/// A mailbox connection with publish and concurrent asks. Cheap to clone; the
/// connection closes when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct MailboxClient {
    tx: mpsc::UnboundedSender<Command>,
    /// Extra wait past an ask's TTL before its future gives up, for the relay's answer
    /// to travel (default 500 ms).
    ask_grace: Duration,
}

impl MailboxClient {
    /// Connects to `/v1/msg-relay` (the API key's namespace). `url` is the relay's
    /// address (`ws(s)://` or `http(s)://`) or the full endpoint URL.
    pub async fn connect(url: &str, config: &ClientConfig) -> Result<MailboxClient> {
        Ok(Self::spawn(open(url, config).await?))
    }

    /// Connects to `/v1/rooms/{room_id}/msg-relay` (the room's namespace).
    pub async fn connect_room(base_url: &str, room_id: &str, config: &ClientConfig) -> Result<MailboxClient> {
        Ok(Self::spawn(open_room(base_url, room_id, config).await?))
    }

    fn spawn(ws: WebSocketStream<NetStream>) -> MailboxClient {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(MailboxTask { waiting: HashMap::new(), commands: rx }.run(ws));
        MailboxClient { tx, ask_grace: Duration::from_millis(500) }
    }

    /// Publishes `payload` under `id` for `ttl` seconds; returns once it is written to
    /// the socket. The first PUB of an ID wins; the relay says nothing either way.
    pub async fn publish(&self, id: MailboxId, ttl: u16, payload: impl Into<Bytes>) -> Result<()> {
        self.publish_frame(MailboxFrame::publish(id, ttl, 0, payload)).await
    }

    /// As [`MailboxClient::publish`], with flag 0x8000: removed after its first delivery.
    pub async fn publish_once(&self, id: MailboxId, ttl: u16, payload: impl Into<Bytes>) -> Result<()> {
        self.publish_frame(MailboxFrame::publish(id, ttl, FLAG_ONE_RECEIVER, payload)).await
    }

    async fn publish_frame(&self, frame: MailboxFrame) -> Result<()> {
        if frame.payload.is_empty() {
            return Err(Error::InvalidArgument("an empty payload would be an ASK, not a PUB".into()));
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Publish { frame: frame.encode(), done })
            .map_err(|_| Error::ConnectionClosed)?;
        rx.await.map_err(|_| Error::ConnectionClosed)?
    }

    /// Asks for `id`, waiting up to `ttl` seconds; resolves to the payload. The ASK is
    /// queued when this is called, so many asks can be in flight before any is awaited.
    /// Concurrent asks for one ID share one ASK frame and all get the message.
    pub fn ask(&self, id: MailboxId, ttl: u16) -> impl Future<Output = Result<Bytes>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let queued = self.tx.send(Command::Ask { id, ttl, reply }).is_ok();
        let limit = Duration::from_secs(ttl.into()) + self.ask_grace;
        async move {
            if !queued {
                return Err(Error::ConnectionClosed);
            }
            match tokio::time::timeout(limit, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(Error::ConnectionClosed),
                Err(_) => Err(Error::AskExpired(limit)),
            }
        }
    }
}

/// The background task of a [`MailboxClient`].
struct MailboxTask {
    /// Asks waiting for each ID. A closed sender is an ask whose future gave up.
    waiting: HashMap<MailboxId, Vec<oneshot::Sender<Result<Bytes>>>>,
    commands: mpsc::UnboundedReceiver<Command>,
}

impl MailboxTask {
    async fn run(mut self, mut ws: WebSocketStream<NetStream>) {
        let err = self.serve(&mut ws).await;
        for (_, waiters) in self.waiting.drain() {
            for w in waiters {
                let _ = w.send(Err(err.duplicate()));
            }
        }
        // Fail publishes and asks queued after the end, too.
        self.commands.close();
        while let Some(cmd) = self.commands.recv().await {
            match cmd {
                Command::Publish { done, .. } => {
                    let _ = done.send(Err(err.duplicate()));
                }
                Command::Ask { reply, .. } => {
                    let _ = reply.send(Err(err.duplicate()));
                }
            }
        }
    }

    /// Runs the connection; returns why it ended.
    async fn serve(&mut self, ws: &mut WebSocketStream<NetStream>) -> Error {
        let mut sweep = tokio::time::interval(Duration::from_secs(5));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Binary(b))) => self.deliver(b),
                    Some(Ok(Message::Close(f))) => {
                        let (code, reason) = f.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((crate::error::NO_CLOSE_CODE, String::new()));
                        return Error::from_close(code, &reason);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Error::from_ws(e),
                    None => return Error::Disconnected("the relay closed the connection".into()),
                },
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Publish { frame, done }) => {
                        let res = ws.send(Message::Binary(frame.into())).await.map_err(Error::from_ws);
                        let failed = res.as_ref().err().map(Error::duplicate);
                        let _ = done.send(res);
                        if let Some(e) = failed {
                            return e;
                        }
                    }
                    Some(Command::Ask { id, ttl, reply }) => {
                        let waiters = self.waiting.entry(id).or_default();
                        waiters.retain(|w| !w.is_closed());
                        let first = waiters.is_empty();
                        waiters.push(reply);
                        if first {
                            let frame = MailboxFrame::ask(id, ttl).encode();
                            if let Err(e) = ws.send(Message::Binary(frame.into())).await {
                                return Error::from_ws(e);
                            }
                        }
                    }
                    None => {
                        let _ = ws.close(None).await;
                        return Error::ConnectionClosed;
                    }
                },
                _ = sweep.tick() => self.waiting.retain(|_, ws| {
                    ws.retain(|w| !w.is_closed());
                    !ws.is_empty()
                }),
            }
        }
    }

    /// Hands a stored frame to every ask waiting for its ID.
    fn deliver(&mut self, frame: Bytes) {
        let Ok(frame) = MailboxFrame::decode(frame) else {
            tracing::debug!("ignoring a mailbox frame shorter than 36 bytes");
            return;
        };
        match self.waiting.remove(&frame.id) {
            Some(waiters) => {
                for w in waiters {
                    let _ = w.send(Ok(frame.payload.clone()));
                }
            }
            None => tracing::debug!("a mailbox message nobody waits for"),
        }
    }
}

/// A bare mailbox connection: a `Stream` of whole frames received (binary frames
/// only, as the relay sends) and a `Sink` of whole frames to send. The stream ends when
/// the connection does; [`RawMailbox::close_error`] then says why.
#[derive(Debug)]
pub struct RawMailbox {
    ws: WebSocketStream<NetStream>,
    ended: Option<Error>,
}

impl RawMailbox {
    /// Connects to `/v1/msg-relay` (see [`MailboxClient::connect`]).
    pub async fn connect(url: &str, config: &ClientConfig) -> Result<RawMailbox> {
        Ok(RawMailbox { ws: open(url, config).await?, ended: None })
    }

    /// Connects to `/v1/rooms/{room_id}/msg-relay`.
    pub async fn connect_room(base_url: &str, room_id: &str, config: &ClientConfig) -> Result<RawMailbox> {
        Ok(RawMailbox { ws: open_room(base_url, room_id, config).await?, ended: None })
    }

    /// Why the stream ended: a close code (e.g. [`Error::Malformed`] for 1007) or a
    /// network error. `None` while it runs.
    pub fn close_error(&self) -> Option<&Error> {
        self.ended.as_ref()
    }
}

impl Stream for RawMailbox {
    type Item = Vec<u8>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        loop {
            match ready!(self.ws.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(b))) => return Poll::Ready(Some(b.to_vec())),
                Some(Ok(Message::Close(f))) => {
                    let (code, reason) = f
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((crate::error::NO_CLOSE_CODE, String::new()));
                    self.ended = Some(Error::from_close(code, &reason));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if self.ended.is_none() {
                        self.ended = Some(Error::from_ws(e));
                    }
                    return Poll::Ready(None);
                }
                None => {
                    if self.ended.is_none() {
                        self.ended = Some(Error::Disconnected("the relay closed the connection".into()));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl Sink<Vec<u8>> for RawMailbox {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.ws.poll_ready_unpin(cx).map_err(Error::from_ws)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Vec<u8>) -> Result<()> {
        self.ws.start_send_unpin(Message::Binary(item.into())).map_err(Error::from_ws)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.ws.poll_flush_unpin(cx).map_err(Error::from_ws)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.ws.poll_close_unpin(cx).map_err(Error::from_ws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_little_endian_header() {
        let f = MailboxFrame::publish([7; 32], 0x0102, FLAG_ONE_RECEIVER, &b"hello"[..]);
        let wire = f.encode();
        assert_eq!(wire.len(), 41);
        assert_eq!(&wire[32..36], &[0x02, 0x01, 0x00, 0x80]);
        assert_eq!(MailboxFrame::decode(wire).unwrap(), f);
        let ask = MailboxFrame::ask([1; 32], 60).encode();
        assert_eq!(ask.len(), MAILBOX_HEADER_LEN);
        assert!(MailboxFrame::decode(ask).unwrap().is_ask());
        assert!(MailboxFrame::decode(vec![0; 35]).is_err());
    }
}
