//! A mailbox connection's WebSocket, after the upgrade.

use crate::caller::UsageMeter;
use crate::metrics::WsKind;
use crate::state::{AppState, DrainGuard};
use crate::ws::{self, WsStream, close, close_message};
use bytes::Bytes;
use futures_util::future::FusedFuture;
use futures_util::{FutureExt, SinkExt};
use relay_core::mailbox::{HEADER_LEN, MailboxConn, MailboxError};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
/// Frames taken from the connection's queue per write: one vectored write each, and at
/// most this many frames in flight beyond the queue's own bound.
const OUT_BATCH: usize = 64;

/// After sending a close frame, how long the peer gets to read it and answer before the
/// socket is dropped (dropping with unread input would reset the connection and could
/// destroy the close frame in flight).
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How a connection ends.
enum End {
    /// Send this close code and reason.
    Close(u16, &'static str),
    /// The peer closed or the socket failed: answer a close if one is owed, nothing else.
    Gone,
    /// A write was cut off mid-frame: drop the socket without writing anything more.
    Torn,
}

/// What woke a connection's task, once it has handled every frame the socket had.
enum Step {
    /// Frames are queued for the client (already moved into the batch).
    Write,
    /// The ping interval passed.
    Ping,
    /// The connection ends.
    End(End),
}

/// One mailbox connection's state between wake-ups. Its task polls everything it waits
/// for (shutdown, the socket, its queue, the ping timer) from one hand-written poll
/// function, so a frame costs no future built and dropped per `select!` round.
struct Conn {
    state: AppState,
    conn: MailboxConn,
    socket: WsStream,
    meter: UsageMeter,
    message_rate: crate::ratelimit::MessageRate,
    ping: tokio::time::Interval,
    /// Something was heard since the last ping tick.
    heard: bool,
    /// Frames taken from the queue, to write.
    batch: Vec<Bytes>,
}

impl Conn {
    /// Handles every frame the socket has ready (each costs one unit of the task's coop
    /// budget), wakes the receivers they were queued for once, then reports what else is
    /// ready: the end, frames to write, a ping tick. `Pending` when nothing is.
    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        shutdown: Pin<&mut impl FusedFuture<Output = bool>>,
    ) -> Poll<Step> {
        if let Poll::Ready(true) = shutdown.poll(cx) {
            return Poll::Ready(Step::End(End::Close(close::GOING_AWAY, "server shutting down")));
        }
        let read = self.poll_frames(cx);
        // Once per burst, not once per frame: the receivers wake to the whole burst.
        self.conn.wake_receivers();
        if let Poll::Ready(end) = read {
            return Poll::Ready(Step::End(end));
        }
        match self.conn.poll_recv_many(cx, &mut self.batch, OUT_BATCH) {
            Poll::Ready(Ok(_)) => return Poll::Ready(Step::Write),
            Poll::Ready(Err(e)) => return Poll::Ready(Step::End(close_for(&e))),
            Poll::Pending => {}
        }
        if self.ping.poll_tick(cx).is_ready() {
            return Poll::Ready(Step::Ping);
        }
        Poll::Pending
    }

    /// Reads and handles frames until the socket has none ready or the coop budget is
    /// spent (`Pending`, with a wake-up registered either way), or the connection must
    /// end (`Ready`).
    fn poll_frames(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let now = Instant::now();
        let (mut relayed, mut relayed_bytes) = (0u64, 0usize);
        let mut arrived = false;
        let polled = loop {
            let Poll::Ready(incoming) = ws::poll_next_message(&mut self.socket, cx) else {
                break Poll::Pending;
            };
            self.heard = true;
            arrived = true;
            match incoming {
                Some(Ok(_)) if !self.message_rate.allow(now) => {
                    self.state.metrics().rate_limited("ws_message");
                    break Poll::Ready(End::Close(close::TRY_AGAIN_LATER, "message rate limit exceeded"));
                }
                Some(Ok(Message::Binary(frame))) => {
                    // A publish (longer than an ask) is a relayed message of its payload;
                    // an ask is not.
                    let payload = frame.len().checked_sub(HEADER_LEN).filter(|&n| n > 0);
                    if let Err(e) = self.conn.handle_frame_deferred(frame, now) {
                        break Poll::Ready(close_for(&e));
                    }
                    if let Some(bytes) = payload {
                        self.state.metrics().message_size(WsKind::Mailbox, bytes);
                        relayed += 1;
                        relayed_bytes += bytes;
                    }
                }
                Some(Ok(Message::Text(_))) => {
                    break Poll::Ready(End::Close(
                        close::MALFORMED,
                        "text frames are not accepted: send binary frames",
                    ));
                }
                Some(Ok(Message::Close(_))) | None => break Poll::Ready(End::Gone),
                Some(Ok(_)) => {} // ping (answered by tungstenite), pong, raw frame
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                    break Poll::Ready(End::Close(close::TOO_BIG, "message too big"));
                }
                Some(Err(WsError::Utf8(_))) => {
                    break Poll::Ready(End::Close(close::MALFORMED, "invalid utf-8 in a text frame"));
                }
                Some(Err(WsError::Protocol(_))) => {
                    break Poll::Ready(End::Close(close::PROTOCOL, "protocol error"));
                }
                Some(Err(e)) => {
                    tracing::debug!("mailbox socket error: {e}");
                    break Poll::Ready(End::Gone);
                }
            }
        };
        if arrived {
            self.state.frames_arrived();
        }
        if relayed > 0 {
            self.meter.add(relayed, relayed_bytes as u64, 0);
            self.state.metrics().messages_relayed(WsKind::Mailbox, relayed, relayed_bytes);
        }
        polled
    }
}

/// One mailbox connection, from upgrade to close.
pub(crate) async fn run(
    state: AppState,
    conn: MailboxConn,
    socket: WsStream,
    _guard: DrainGuard,
    meter: UsageMeter,
) {
    let config = state.config();
    let _open = state.metrics().websocket_opened(WsKind::Mailbox);
    let mut shutdown = std::pin::pin!(state.shutting_down());
    let mut ping =
        tokio::time::interval_at(Instant::now() + config.ws_ping_interval, config.ws_ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let message_rate = state.rate_limiter().message_rate(Instant::now());
    let mut c = Conn {
        state: state.clone(),
        conn,
        socket,
        meter,
        message_rate,
        ping,
        heard: false,
        batch: Vec::with_capacity(OUT_BATCH),
    };
    let mut last_heard = Instant::now();

    let end = loop {
        match std::future::poll_fn(|cx| c.poll_step(cx, shutdown.as_mut())).await {
            Step::End(end) => break end,
            Step::Write => {
                if let Some(end) =
                    write_batch(&mut c.socket, &c.conn, &mut c.batch, config.ws_idle_timeout).await
                {
                    break end;
                }
                c.state.frames_written();
            }
            Step::Ping => {
                let now = Instant::now();
                if c.heard {
                    c.heard = false;
                    last_heard = now;
                } else if now.duration_since(last_heard) >= config.ws_idle_timeout {
                    break End::Close(close::GOING_AWAY, "idle timeout");
                }
                let sent =
                    tokio::time::timeout(config.ws_idle_timeout, c.socket.send(Message::Ping(Bytes::new())))
                        .await;
                if !matches!(sent, Ok(Ok(()))) {
                    break End::Gone;
                }
            }
        }
    };
    let Conn { conn, socket, .. } = c;
    drop(conn); // withdraw this connection's asks before the close handshake
    finish(socket, end, config.limits.max_message_bytes).await;
}

/// Writes `batch`, topped up with whatever else is ready (at most [`OUT_BATCH`] frames
/// in all), with one vectored write. Gives up when the connection turns slow or the
/// write does not finish within `timeout`. A write that completes at once (the usual
/// case: the socket has room) arms no timer.
async fn write_batch(
    socket: &mut WsStream,
    conn: &MailboxConn,
    batch: &mut Vec<Bytes>,
    timeout: Duration,
) -> Option<End> {
    let torn = std::sync::atomic::AtomicBool::new(false);
    let write = async {
        if batch.len() < OUT_BATCH && conn.try_recv_many(batch, OUT_BATCH - batch.len()).is_err() {
            return Ok(false);
        }
        let parts: Vec<[&[u8]; 1]> = batch.iter().map(|f| [&f[..]]).collect();
        crate::ws::write::write_binary_vectored(socket, parts.iter().map(|p| &p[..]), &torn).await?;
        batch.clear();
        Ok::<bool, std::io::Error>(true)
    };
    let mut write = std::pin::pin!(write);
    let written = match write.as_mut().now_or_never() {
        Some(written) => written,
        None => {
            let given_up = tokio::select! {
                written = tokio::time::timeout(timeout, write.as_mut()) => match written {
                    Ok(written) => Ok(written),
                    Err(_) => Err(End::Close(close::TRY_AGAIN_LATER, "slow consumer")),
                },
                // Wins only while the write is blocked on a peer that stopped reading.
                () = conn.slow_consumer() => Err(close_for(&MailboxError::SlowConsumer)),
            };
            match given_up {
                Ok(written) => written,
                Err(end) if !torn.load(std::sync::atomic::Ordering::Relaxed) => return Some(end),
                Err(end) => {
                    // Part of a frame is on the wire: the close frame may only follow it
                    // whole. Give the peer a moment to take the rest, else just drop.
                    return match tokio::time::timeout(CLOSE_WAIT, write.as_mut()).await {
                        Ok(Ok(_)) => Some(end),
                        Ok(Err(_)) | Err(_) => Some(End::Torn),
                    };
                }
            }
        }
    };
    match written {
        Ok(true) => None,
        Ok(false) => Some(close_for(&MailboxError::SlowConsumer)),
        Err(e) => {
            tracing::debug!("mailbox write failed: {e}");
            Some(End::Gone)
        }
    }
}

/// The close code and reason for a refusal from the core.
fn close_for(err: &MailboxError) -> End {
    match err {
        MailboxError::FrameTooShort { .. } => End::Close(close::MALFORMED, "frame shorter than 36 bytes"),
        MailboxError::FrameTooBig { .. } => End::Close(close::TOO_BIG, "message too big"),
        MailboxError::NamespaceFull { .. } => End::Close(close::TRY_AGAIN_LATER, "namespace storage full"),
        MailboxError::TooManyAsks { .. } => End::Close(close::TRY_AGAIN_LATER, "too many pending asks"),
        MailboxError::SlowConsumer => End::Close(close::TRY_AGAIN_LATER, "slow consumer"),
    }
}

/// Sends the close frame (or answers the peer's), then reads and drops what the peer
/// still sends, bounded in time and bytes, so the close frame is read before the socket
/// goes away.
async fn finish(mut socket: WsStream, end: End, max_message_bytes: usize) {
    match end {
        End::Close(code, reason) => {
            let _ = tokio::time::timeout(CLOSE_WAIT, socket.send(close_message(code, reason))).await;
        }
        End::Gone => {
            let _ = tokio::time::timeout(CLOSE_WAIT, socket.close(None)).await;
            return;
        }
        End::Torn => return,
    }
    let io = socket.get_mut();
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left = max_message_bytes.saturating_mul(2);
        while left > 0 {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
}
