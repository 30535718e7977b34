//! A mailbox connection's WebSocket, after the upgrade: the mailbox's side of the
//! connection driver (`ws::driver`). Binary frames only (an ask or a publish, handled
//! by `relay_core::mailbox::MailboxConn`); a text frame closes with 1007. Frames queued
//! for the connection go out in batches of at most [`OUT_BATCH`], one vectored write
//! each; a queue over its bound closes the consumer as slow (1013). The connection's
//! asks are withdrawn before the close handshake.
//!
//! When the mailbox is shared across instances (`crate::redis_mailbox`), each frame is
//! still handled by the local core first (a local asker is answered at once); a
//! publish is then also stored in Redis for the other instances, and an ask the local
//! store cannot answer is looked up there. A one-receiver publish nobody here waits for
//! goes to Redis only, so exactly one asker anywhere gets it. A refusal from Redis or
//! Redis lost closes the connection with 1013 and a reason. While `send_queue_frames`
//! frames of the connection wait for Redis, its socket is not read
//! ([`Session::poll_ready`]): a client sending faster than Redis stores is slowed down
//! by TCP flow control, not closed, and memory stays bounded.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use relay_core::mailbox::{FrameKind, HEADER_LEN, MailboxConn, MailboxError, MailboxHeader};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Utf8Bytes};

use relay_proto::CloseCode;

use crate::caller::{Lease, UsageMeter};
use crate::config::ServerConfig;
use crate::metrics::WsKind;
use crate::redis_mailbox::{Link, RedisMailbox};
use crate::state::{AppState, DrainGuard};
use crate::ws::WsStream;
use crate::ws::driver::{self, End, Flow, Session};

/// Frames taken from the connection's queue per write: one vectored write each, and at
/// most this many frames in flight beyond the queue's own bound.
const OUT_BATCH: usize = 64;

/// How long a torn write gets to finish its frame, and the close handshake to complete,
/// before the socket is dropped (docs/protocol.md: "within a second").
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A mailbox connection's side of its WebSocket.
struct MailboxSession {
    conn: MailboxConn,
    /// Frames taken from the queue, to write.
    batch: Vec<Bytes>,
    /// The mailbox's Redis side and this connection's tie to it, when shared.
    shared: Option<(RedisMailbox, Link)>,
}

impl MailboxSession {
    /// Handles a frame of a mailbox shared across instances: locally first, then Redis.
    /// The driver reads a frame only when [`Session::poll_ready`] allowed one more to
    /// wait for Redis.
    fn handle_shared(&mut self, frame: Bytes, now: Instant) -> Result<(), End> {
        let Some((redis, link)) = &self.shared else {
            return self.conn.handle_frame_deferred(frame, now).map_err(|e| close_for(&e));
        };
        let local = |e: MailboxError| close_for(&e);
        let max = redis.mailbox().limits().max_message_bytes;
        let header = match MailboxHeader::parse(&frame) {
            // Malformed or too big: the core names the refusal.
            Some(header) if frame.len() <= max => header,
            _ => return self.conn.handle_frame_deferred(frame, now).map_err(local),
        };
        let namespace = &self.conn.namespace().clone();
        match header.kind {
            FrameKind::Ask => {
                let held = self.conn.holds(&header.id);
                self.conn.handle_frame_deferred(frame, now).map_err(local)?;
                if !held && header.ttl_secs != 0 {
                    redis.ask(link, namespace, &header.id);
                }
            }
            FrameKind::Publish if header.one_receiver() => {
                if redis.mailbox().is_waiting(namespace, &header.id) {
                    // Taken at once by a local asker: nobody else may get it.
                    self.conn.handle_frame_deferred(frame, now).map_err(local)?;
                } else {
                    redis.publish(link, namespace, frame, &header);
                }
            }
            FrameKind::Publish => {
                self.conn.handle_frame_deferred(frame.clone(), now).map_err(local)?;
                redis.publish(link, namespace, frame, &header);
            }
        }
        Ok(())
    }
}

impl Session for MailboxSession {
    /// The frames are moved into `batch`.
    type Out = ();
    const KIND: WsKind = WsKind::Mailbox;
    const IDLE_CLOSE: CloseCode = CloseCode::GoingAway;

    fn close_wait(_config: &ServerConfig) -> Duration {
        CLOSE_WAIT
    }

    /// Unshared, always; shared, while fewer than `send_queue_frames` of the
    /// connection's frames wait for Redis.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &self.shared {
            Some((_, link)) => link.poll_ready(cx),
            None => Poll::Ready(()),
        }
    }

    fn on_binary(&mut self, frame: Bytes, now: Instant) -> Result<Option<usize>, Flow> {
        // A publish (longer than an ask) is a relayed message of its payload; an ask is not.
        let payload = frame.len().checked_sub(HEADER_LEN).filter(|&n| n > 0);
        match self.handle_shared(frame, now) {
            Ok(()) => Ok(payload),
            Err(end) => Err(Flow::End(end)),
        }
    }

    fn on_text(&mut self, _text: Utf8Bytes) -> Result<(), Flow> {
        Err(Flow::End(End::Close(CloseCode::Malformed, "text frames are not accepted: send binary frames")))
    }

    fn after_burst(&mut self) {
        self.conn.wake_receivers();
    }

    fn poll_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        if let Some((_, link)) = &mut self.shared
            && let Poll::Ready(reason) = link.poll_error(cx)
        {
            return Poll::Ready(Err(End::Close(CloseCode::TryAgainLater, reason)));
        }
        match self.conn.poll_recv_many(cx, &mut self.batch, OUT_BATCH) {
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(close_for(&e))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes the batch, topped up with whatever else is ready (at most [`OUT_BATCH`]
    /// frames in all), with one vectored write.
    fn write<'a>(
        &'a mut self,
        ws: &'a mut WsStream,
        (): (),
        torn: &'a AtomicBool,
    ) -> (impl Future<Output = Result<Option<End>, WsError>> + Send + 'a, impl Future<Output = End> + Send + 'a)
    {
        let MailboxSession { conn, batch, .. } = self;
        let conn: &'a MailboxConn = conn;
        let write = async move {
            if batch.len() < OUT_BATCH && conn.try_recv_many(batch, OUT_BATCH - batch.len()).is_err() {
                return Ok(Some(close_for(&MailboxError::SlowConsumer)));
            }
            let parts: Vec<[&[u8]; 1]> = batch.iter().map(|f| [&f[..]]).collect();
            crate::ws::write::write_binary_vectored(ws, parts.iter().map(|p| &p[..]), torn).await?;
            batch.clear();
            Ok(None)
        };
        let slow_consumer = async move {
            conn.slow_consumer().await;
            close_for(&MailboxError::SlowConsumer)
        };
        (write, slow_consumer)
    }

    fn end(self) {
        // Dropping the connection withdraws its asks, before the close handshake.
    }
}

/// One mailbox connection, from upgrade to close; it ends when `lease` lapses.
pub(crate) async fn run(
    state: AppState,
    conn: MailboxConn,
    socket: WsStream,
    guard: DrainGuard,
    meter: UsageMeter,
    lease: Lease,
) {
    let shared = state.redis_mailbox().map(|redis| (redis.clone(), redis.link()));
    let session = MailboxSession { conn, batch: Vec::with_capacity(OUT_BATCH), shared };
    driver::run(state, socket, session, guard, meter, lease).await;
}

/// The close code and reason for a refusal from the core.
fn close_for(err: &MailboxError) -> End {
    match err {
        MailboxError::FrameTooShort { .. } => End::Close(CloseCode::Malformed, "frame shorter than 36 bytes"),
        MailboxError::FrameTooBig { .. } => End::Close(CloseCode::TooBig, "message too big"),
        MailboxError::NamespaceFull { .. } => End::Close(CloseCode::TryAgainLater, "namespace storage full"),
        MailboxError::HeldBytesFull { .. } => {
            End::Close(CloseCode::TryAgainLater, "relay memory budget full")
        }
        MailboxError::TooManyAsks { .. } => End::Close(CloseCode::TryAgainLater, "too many pending asks"),
        MailboxError::SlowConsumer => End::Close(CloseCode::TryAgainLater, "slow consumer"),
    }
}
