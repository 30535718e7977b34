//! The connection driver: everything a WebSocket task does after the upgrade that does
//! not depend on what the socket carries, written once for both kinds (a room party,
//! `ws::room`; a mailbox connection, `ws::mailbox`).
//!
//! [`run`] owns the socket. It polls shutdown (1001), the socket, the session's
//! outgoing queue and the ping timer from one hand-written poll function
//! ([`Driver::poll_step`]), so a frame costs no future built and dropped per `select!`
//! round. Per burst of frames it charges the coop budget per frame
//! (`ws::poll_next_message`), applies the per-socket message rate (1013), maps read
//! errors to close codes (1009 too big, 1007 bad UTF-8, 1002 protocol), then lets the
//! session wake its receivers once ([`Session::after_burst`]) and counts usage and
//! metrics once. Before each frame it asks the session whether it can take one now
//! ([`Session::poll_ready`]): while it cannot (a shared mailbox connection with its
//! limit of frames waiting for Redis), the socket is not read, so TCP flow control
//! slows the peer down, and the session wakes the task when it can again. It writes
//! what the session has queued with a timeout (the idle
//! timeout: 1013 `slow consumer`), arming no timer when the write completes at once,
//! and never writes after part of a frame (a torn write gets [`Session::close_wait`]
//! to finish, else the socket is dropped). It pings, closes idle sockets, and ends with
//! the close handshake (close frame, then the peer's input drained, bounded in time and
//! bytes). It holds the `DrainGuard`, the websockets-open gauge and the busy-poll hooks
//! (`AppState::frames_arrived` after a burst is read, `frames_written` after a write).
//!
//! A [`Session`] plugs in what differs: how a binary or text frame is handled, its
//! outgoing queue and how a batch of it is written, and what the kind says when it
//! closes (a room's `closing` event, its idle-timeout close code). The driver is generic
//! over it (monomorphised: no `dyn` on the per-frame path).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::FusedFuture;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use relay_proto::CloseCode;

use crate::caller::{Lease, UsageMeter};
use crate::config::ServerConfig;
use crate::metrics::WsKind;
use crate::ratelimit::MessageRate;
use crate::state::{AppState, DrainGuard};
use crate::ws::{self, WsStream, close_message};

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The relay closes with this code and reason: the session's closing frame (if its
    /// kind has one), the close frame, then the peer's input drained.
    Close(CloseCode, &'static str),
    /// The peer closed or the socket failed: answer the peer's close if one is owed,
    /// nothing else.
    Gone,
    /// A write was cut off mid-frame: drop the socket without writing anything more.
    Torn,
}

/// What a session asks of the driver when a frame is not simply taken.
#[derive(Debug)]
pub(crate) enum Flow {
    /// Answer with this frame and go on (a room's `error` event for a refused frame).
    Reply(Message),
    /// End the connection.
    End(End),
}

/// What a connection kind plugs into the driver: its frame handling and its outgoing
/// queue. Called from the driver's task only; the per-frame methods must not block.
pub(crate) trait Session: Send + Sized {
    /// What [`Session::poll_outgoing`] hands to [`Session::write`].
    type Out: Send;

    /// The `kind` label of this connection's metrics.
    const KIND: WsKind;

    /// The close code of the idle timeout (docs/protocol.md gives one per kind).
    const IDLE_CLOSE: CloseCode;

    /// How long a torn write may take to finish its frame, and the close handshake to
    /// complete, before the socket is dropped.
    fn close_wait(config: &ServerConfig) -> Duration;

    /// The first frame, sent before anything else; the connection ends if it cannot be.
    fn greeting(&self) -> Option<Message> {
        None
    }

    /// Whether the session can take another frame now. `Pending` registers a wake-up
    /// for when it can; meanwhile the driver reads nothing from the socket (the peer is
    /// slowed by TCP flow control), but still writes, pings and watches the end. Any
    /// frame read after `Ready` must be taken. Rooms always can.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }

    /// Handles a binary frame received at `now`, deferring the wake-ups of whoever it
    /// is queued for to [`Session::after_burst`]. Returns the payload bytes it relays
    /// (`None` when it relays nothing, e.g. a mailbox ask).
    fn on_binary(&mut self, frame: Bytes, now: Instant) -> Result<Option<usize>, Flow>;

    /// Handles a text frame.
    fn on_text(&mut self, text: Utf8Bytes) -> Result<(), Flow>;

    /// Every frame the socket had ready is handled: wake the receivers, once per burst.
    fn after_burst(&mut self);

    /// Something to write, or the end of the connection, when either is ready.
    fn poll_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::Out, End>>;

    /// Writes `out` and whatever else is ready (one vectored write of the data frames),
    /// setting `torn` while part of a frame is on the wire (`ws::write_binary_vectored`).
    /// Returns the write, resolving to the end of the connection if what it took from
    /// the queue ends it, and a future that resolves when the session gives up on a
    /// consumer too slow to read (polled only while the write is blocked).
    fn write<'a>(
        &'a mut self,
        ws: &'a mut WsStream,
        out: Self::Out,
        torn: &'a AtomicBool,
    ) -> (impl Future<Output = Result<Option<End>, WsError>> + Send + 'a, impl Future<Output = End> + Send + 'a);

    /// The connection ends: release what the session holds (a room slot, a mailbox's
    /// asks). Called before the close handshake.
    fn end(self);

    /// A frame sent just before the close frame (a room's `closing` event).
    fn closing(_code: CloseCode, _reason: &'static str) -> Option<Message> {
        None
    }
}

/// Runs one WebSocket connection of `session`'s kind, from the upgrade to the close.
pub(crate) async fn run<S: Session>(
    state: AppState,
    mut ws: WsStream,
    session: S,
    _guard: DrainGuard,
    meter: UsageMeter,
    lease: Lease,
) {
    let config = state.config();
    let _open = state.metrics().websocket_opened(S::KIND);
    if let Some(greeting) = session.greeting()
        && ws.send(greeting).await.is_err()
    {
        return;
    }
    let mut shutdown = std::pin::pin!(state.shutting_down());
    let now = Instant::now();
    let mut ping = tokio::time::interval_at(now + config.ws_ping_interval, config.ws_ping_interval);
    // After a long write, one ping, not a burst of them.
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut d = Driver {
        state: state.clone(),
        ws,
        session,
        meter,
        message_rate: state.rate_limiter().message_rate(now),
        ping,
        last_seen: now,
        lease: (lease != Lease::Unbound).then(|| {
            let mut check =
                tokio::time::interval_at(now + config.lease_check_interval, config.lease_check_interval);
            check.set_missed_tick_behavior(MissedTickBehavior::Delay);
            Box::new((lease, check))
        }),
    };
    let end = loop {
        match std::future::poll_fn(|cx| d.poll_step(cx, shutdown.as_mut())).await {
            Step::End(end) => break end,
            Step::Write(out) => {
                if let Some(end) = d.write(out, config).await {
                    break end;
                }
            }
            Step::Reply(reply) => {
                let sent = tokio::time::timeout(config.ws_idle_timeout, d.ws.send(reply)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break End::Gone;
                }
            }
            Step::Ping => {
                if d.last_seen.elapsed() >= config.ws_idle_timeout {
                    break End::Close(S::IDLE_CLOSE, "idle timeout");
                }
                let ping = Message::Ping(Bytes::new());
                let sent = tokio::time::timeout(config.ws_idle_timeout, d.ws.send(ping)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break End::Gone;
                }
            }
        }
    };
    let Driver { ws, session, .. } = d;
    session.end();
    finish::<S>(ws, end, S::close_wait(config), config.limits.max_message_bytes.saturating_mul(2)).await;
}

/// What woke a connection's task, once it has handled every frame the socket had.
enum Step<O> {
    /// The session has something to write.
    Write(O),
    /// A frame to answer with (and go on).
    Reply(Message),
    /// The ping interval passed.
    Ping,
    /// The connection ends.
    End(End),
}

/// One connection's state between wake-ups.
struct Driver<S> {
    state: AppState,
    ws: WsStream,
    session: S,
    meter: UsageMeter,
    message_rate: MessageRate,
    ping: tokio::time::Interval,
    /// When a frame (of any kind, a pong too) last came from the peer: the idle timeout
    /// counts from it.
    last_seen: Instant,
    /// What the connection's right to stay open rests on, and the timer that checks it
    /// (`None` for an unbound one). Boxed: an idle connection's task stays small.
    lease: Option<Box<(Lease, tokio::time::Interval)>>,
}

impl<S: Session> Driver<S> {
    /// Handles every frame the socket has ready, lets the session wake the receivers
    /// they were queued for once, then reports what else is ready: the end, a reply,
    /// something to write, a ping tick. `Pending` when nothing is.
    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        shutdown: Pin<&mut impl FusedFuture<Output = bool>>,
    ) -> Poll<Step<S::Out>> {
        if let Poll::Ready(true) = shutdown.poll(cx) {
            return Poll::Ready(Step::End(End::Close(CloseCode::GoingAway, "server shutting down")));
        }
        let read = self.poll_frames(cx);
        // Once per burst, not once per frame: the receivers wake to the whole burst.
        self.session.after_burst();
        if let Poll::Ready(flow) = read {
            return Poll::Ready(match flow {
                Flow::Reply(reply) => Step::Reply(reply),
                Flow::End(end) => Step::End(end),
            });
        }
        match self.session.poll_outgoing(cx) {
            Poll::Ready(Ok(out)) => return Poll::Ready(Step::Write(out)),
            Poll::Ready(Err(end)) => return Poll::Ready(Step::End(end)),
            Poll::Pending => {}
        }
        if self.ping.poll_tick(cx).is_ready() {
            return Poll::Ready(Step::Ping);
        }
        // On a timer, not per frame: a key revoked or expired, a room closed. Polled
        // until `Pending`, so the timer's next tick is registered.
        if let Some(lease) = &mut self.lease {
            while lease.1.poll_tick(cx).is_ready() {
                if let Some((code, reason)) = self.state.lease_lapsed(&lease.0) {
                    return Poll::Ready(Step::End(End::Close(code, reason)));
                }
            }
        }
        Poll::Pending
    }

    /// Reads and handles frames until the socket has none ready, the coop budget is
    /// spent or the session can take no more for now (`Pending`, with a wake-up
    /// registered in each case), or one needs an answer or ends the connection
    /// (`Ready`).
    fn poll_frames(&mut self, cx: &mut Context<'_>) -> Poll<Flow> {
        let now = Instant::now();
        let (mut relayed, mut relayed_bytes) = (0u64, 0usize);
        let mut arrived = false;
        let polled = loop {
            if self.session.poll_ready(cx).is_pending() {
                break Poll::Pending;
            }
            let Poll::Ready(incoming) = ws::poll_next_message(&mut self.ws, cx) else {
                break Poll::Pending;
            };
            arrived = true;
            let msg = match incoming {
                Some(Ok(_)) if !self.message_rate.allow(now) => {
                    self.state.metrics().rate_limited("ws_message");
                    break Poll::Ready(Flow::End(End::Close(
                        CloseCode::TryAgainLater,
                        "message rate limit exceeded",
                    )));
                }
                Some(Ok(msg)) => msg,
                Some(Err(e)) => break Poll::Ready(Flow::End(read_error(&e))),
                None => break Poll::Ready(Flow::End(End::Gone)),
            };
            let handled = match msg {
                Message::Binary(frame) => match self.session.on_binary(frame, now) {
                    Ok(Some(payload)) => {
                        self.state.metrics().message_size(S::KIND, payload);
                        relayed += 1;
                        relayed_bytes += payload;
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(flow) => Err(flow),
                },
                Message::Text(text) => self.session.on_text(text),
                Message::Close(_) => Err(Flow::End(End::Gone)),
                // Pings are answered by tungstenite; pongs and raw frames only count as heard.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
            };
            if let Err(flow) = handled {
                break Poll::Ready(flow);
            }
        };
        if arrived {
            self.last_seen = now;
            self.state.frames_arrived();
        }
        if relayed > 0 {
            self.meter.add(relayed, relayed_bytes as u64, 0);
            self.state.metrics().messages_relayed(S::KIND, relayed, relayed_bytes);
        }
        polled
    }

    /// Writes `out` (see [`Session::write`]). Gives up when the session says the
    /// consumer is too slow, or when the write does not finish within the idle timeout
    /// (1013 `slow consumer`); a write cut off mid-frame gets [`Session::close_wait`]
    /// to finish its frame before the close, else the socket is dropped. A write that
    /// completes at once (the usual case: the socket has room) arms no timer.
    async fn write(&mut self, out: S::Out, config: &ServerConfig) -> Option<End> {
        let torn = AtomicBool::new(false);
        let (write, slow_consumer) = self.session.write(&mut self.ws, out, &torn);
        let mut write = std::pin::pin!(write);
        let written = match write.as_mut().now_or_never() {
            Some(written) => written,
            None => {
                let given_up = tokio::select! {
                    written = tokio::time::timeout(config.ws_idle_timeout, write.as_mut()) => match written {
                        Ok(written) => Ok(written),
                        Err(_) => Err(End::Close(CloseCode::TryAgainLater, "slow consumer")),
                    },
                    // Wins only while the write is blocked on a peer that stopped reading.
                    end = slow_consumer => Err(end),
                };
                match given_up {
                    Ok(written) => written,
                    Err(end) if !torn.load(Ordering::Relaxed) => return Some(end),
                    Err(end) => {
                        // Part of a frame is on the wire: the close frame may only follow
                        // it whole. Give the peer a moment to take the rest, else drop.
                        let rest = tokio::time::timeout(S::close_wait(config), write.as_mut()).await;
                        return Some(if matches!(rest, Ok(Ok(_))) { end } else { End::Torn });
                    }
                }
            }
        };
        match written {
            Ok(None) => {
                self.state.frames_written();
                None
            }
            Ok(Some(end)) => Some(end),
            Err(e) => {
                tracing::debug!("websocket write failed: {e}");
                // Never a close frame after part of a frame.
                Some(if torn.load(Ordering::Relaxed) { End::Torn } else { End::Gone })
            }
        }
    }
}

/// The close code and reason for an error reading the socket.
fn read_error(e: &WsError) -> End {
    match e {
        WsError::Capacity(_) => End::Close(CloseCode::TooBig, "message too big"),
        WsError::Utf8(_) => End::Close(CloseCode::Malformed, "invalid utf-8 in a text frame"),
        WsError::Protocol(_) => End::Close(CloseCode::Protocol, "protocol error"),
        WsError::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<ws::read::OutOfStep>()) => {
            tracing::error!("{e}");
            End::Close(CloseCode::Internal, "relay error reading frames")
        }
        e => {
            tracing::debug!("websocket read failed: {e}");
            End::Gone
        }
    }
}

/// Ends the connection as `end` says: for a close, the session's closing frame and the
/// close frame, then the peer's input read and dropped until its close arrives, so the
/// close frame is read before the socket goes away (dropping a socket with unread input
/// resets it, which could destroy the close frame in flight). At most `wait` in all,
/// and at most `max_drain` bytes read.
async fn finish<S: Session>(mut ws: WsStream, end: End, wait: Duration, max_drain: usize) {
    let (code, reason) = match end {
        End::Torn => return,
        End::Gone => {
            let _ = tokio::time::timeout(wait, ws.close(None)).await;
            return;
        }
        End::Close(code, reason) => (code, reason),
    };
    let _ = tokio::time::timeout(wait, async {
        if let Some(closing) = S::closing(code, reason) {
            ws.feed(closing).await?;
        }
        ws.send(close_message(code, reason)).await?;
        drain(&mut ws, max_drain).await;
        Ok::<(), WsError>(())
    })
    .await;
}

/// Reads and drops what the peer still sends after the relay's close frame, until its
/// close arrives or the socket ends, at most `max_bytes`. Input that is not a valid
/// frame is read raw, to the end.
async fn drain(ws: &mut WsStream, max_bytes: usize) {
    /// What a frame counts at least, so empty frames cannot keep the drain going.
    const FRAME_MIN: usize = 2;
    /// Bytes per raw read.
    const DRAIN_CHUNK: usize = 4096;
    let mut left = max_bytes;
    // Every byte read from here counts against `max_bytes`: none is lifted out unseen.
    ws.get_mut().pass_through();
    loop {
        match ws.next().await {
            Some(Ok(msg)) => {
                left = left.saturating_sub(msg.len() + FRAME_MIN);
                if left == 0 {
                    return;
                }
            }
            None => return,
            Some(Err(_)) => break,
        }
    }
    let io = ws.get_mut();
    // On the heap, once per close: in the task's future it would cost every idle
    // connection its size.
    let mut buf = vec![0u8; DRAIN_CHUNK];
    while left > 0 {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

#[cfg(test)]
mod tests {
    /// A connection's task is allocated for as long as its socket is open, idle or not,
    /// so no buffer may live in its future (an idle connection costs at most 16 KiB,
    /// docs/BENCHMARKS.md). The mailbox's 4 KiB drain buffer once did: its future was
    /// 6,416 bytes, then 3,488; 4,240 on 2026-12-06 (a room's 4,568), with the
    /// `ws::read::FrameReader` inside it. `ws::read` keeps its 4 KiB quiet-read buffer on
    /// the stack of `poll_read`, never in the future.
    #[test]
    fn a_connection_task_holds_no_buffer() {
        fn size<F>(_: &impl FnOnce() -> F) -> usize {
            std::mem::size_of::<F>()
        }
        #[allow(unreachable_code)]
        let room = size(&|| {
            crate::ws::room::run_party(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        });
        #[allow(unreachable_code)]
        let mailbox = size(&|| {
            crate::ws::mailbox::run(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        });
        const MAX: usize = 5 * 1024;
        assert!(room < MAX, "a room connection's future is {room} bytes");
        assert!(mailbox < MAX, "a mailbox connection's future is {mailbox} bytes");
    }
}
