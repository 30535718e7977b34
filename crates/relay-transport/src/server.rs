//! The accept loop: one hyper connection per TCP connection (HTTP/1.1 with upgrades, or
//! HTTP/2), TCP_NODELAY on, and a graceful shutdown that closes WebSockets with 1001.
//!
//! Protection on the accept path, in order:
//! 1. a per-address rate of new connections and a per-address cap on open ones (over
//!    either, the connection is closed at once), then a cap on concurrent connections
//!    (over it, likewise). A trusted proxy's connections carry many clients, so they
//!    skip the per-address checks, unless the PROXY protocol names the client: then
//!    both are applied to the client's address as soon as the header is read;
//! 2. a deadline from the accept until the connection's first request has arrived
//!    whole (`header_read_timeout`): TLS handshake (also bounded by its own timeout),
//!    PROXY header, HTTP version detection and request head all fall under it, so a
//!    client that sends one byte, or only the HTTP/2 preface, and then nothing, is cut
//!    off. Later HTTP/1 request heads are bounded by hyper's header read timer;
//! 3. HTTP/2 keep-alive pings, a cap on concurrent streams, and an idle timeout for
//!    any connection with no request in flight.
//!
//! Each request then carries its client address ([`ClientAddr`]: the TCP peer, or from
//! a trusted proxy the address it forwards) for the per-address request rate and logs.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::config::ServerConfig;
use crate::error::TransportError;
use crate::net::proxy::read_proxy_v2;
use crate::ratelimit::ClientAddr;
use crate::router;
use crate::state::{AppState, ConnectionSlot, SlotRefused};
use tower::ServiceExt;

/// At most one "connection cap reached" warning per listener per this interval; the
/// warning carries how many connections were refused since the previous one.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Serves HTTP and WebSockets on `listener` (over TLS when the config has a
/// [`crate::TlsHandle`]) until `shutdown` resolves, then stops accepting, closes
/// WebSockets with 1001 and waits up to the configured grace for open connections to
/// finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TransportError> {
    let config = state.config();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true).header_read_timeout(config.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(config.http2_keep_alive_interval))
        .keep_alive_timeout(config.http2_keep_alive_timeout)
        .max_concurrent_streams(config.http2_max_concurrent_streams);
    let builder = Arc::new(builder);
    let router = router::router(&state);
    let graceful = GracefulShutdown::new();
    #[cfg(feature = "busy-poll")]
    if let Some(busy_poll) = &state.inner.busy_poll {
        let stop = state.clone();
        busy_poll.start(|| stop.shutting_down());
    }
    crate::stats::start_sampler(&state);
    let mut stop = state.shutdown_watch();
    let mut refusals = RefusalLog::default();
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) if is_transient_accept_error(&e) => {
                    tracing::warn!("accept failed, continuing: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(TransportError::Listener(e)),
            },
            () = &mut shutdown => break,
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => break,
        };
        let accepted_at = tokio::time::Instant::now();
        let from_proxy = config.trusted_proxies.contains(peer.ip());
        if config.proxy_protocol && !from_proxy {
            // Only a trusted proxy may speak first with a PROXY header; anyone else
            // could name any address.
            tracing::debug!(peer = %peer.ip(), "connection refused: not a trusted proxy (--proxy-protocol)");
            state.metrics().connection_refused();
            drop(stream);
            continue;
        }
        if !from_proxy && !connection_rate_allows(&state, peer.ip()) {
            drop(stream);
            continue;
        }
        let slot = if from_proxy { state.proxy_connection_slot() } else { state.connection_slot(peer.ip()) };
        let slot = match slot {
            Ok(slot) => slot,
            Err(refused) => {
                // Over the cap, or over this address's share of it: close at once.
                // Accepting (rather than leaving it in the backlog) tells the client
                // right away, and each turn of the loop consumes one pending
                // connection, so this never spins.
                drop(stream);
                state.metrics().connection_refused();
                refused_slot(&mut refusals, refused, peer.ip(), config);
                continue;
            }
        };
        state.metrics().connection_accepted();
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            Accepted { stream, peer, accepted_at, slot },
            state.clone(),
            router.clone(),
            builder.clone(),
            graceful.watcher(),
        ));
    }

    drop(listener);
    state.begin_shutdown();
    let grace = state.config().shutdown_grace;
    // WebSockets first: while they drain, connections already open keep serving, so a
    // load balancer's keep-alive probe sees `/readyz` answer 503 instead of a reset.
    // Then HTTP connections finish their requests and close.
    let drained = async {
        state.websockets_closed().await;
        graceful.shutdown().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("shutdown grace of {grace:?} passed with connections still open");
    }
    Ok(())
}

/// Whether `client` may open one more connection under its connection rate. Over it,
/// the caller closes the connection at once, as over the cap, and for the same reason
/// (no TLS handshake or buffer spent on it). The limiter logs the refusals, at most
/// once per 10 s.
fn connection_rate_allows(state: &AppState, client: IpAddr) -> bool {
    if state.rate_limiter().connection(client, tokio::time::Instant::now()).is_err() {
        state.metrics().rate_limited("connection");
        return false;
    }
    true
}

/// Logs a refused slot: the cap's warning rate-limited, the per-address refusal at debug.
fn refused_slot(refusals: &mut RefusalLog, refused: SlotRefused, client: IpAddr, config: &ServerConfig) {
    match refused {
        SlotRefused::Full => refusals.record(config.max_connections),
        SlotRefused::PerIp => tracing::debug!(
            peer = %client,
            max = config.max_connections_per_ip,
            "connection refused: its address holds max_connections_per_ip"
        ),
    }
}

/// A connection the accept loop let in.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    accepted_at: tokio::time::Instant,
    slot: ConnectionSlot,
}

/// One connection: the PROXY header (with `--proxy-protocol`), the TLS handshake
/// (bounded by the handshake timeout, abandoned if shutdown starts), then hyper until
/// the client or the graceful shutdown ends it. Everything before the first request is
/// also under the header deadline counted from the accept.
async fn serve_connection(
    accepted: Accepted,
    state: AppState,
    router: axum::Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
) {
    let Accepted { mut stream, peer, accepted_at, mut slot } = accepted;
    let config = state.config();
    let head_deadline = accepted_at + config.header_read_timeout;
    let mut client = peer.ip();
    if config.proxy_protocol {
        let header = tokio::time::timeout_at(head_deadline, read_proxy_v2(&mut stream)).await;
        match header {
            Ok(Ok(Some(source))) => {
                // The client is known from the accept on: its address's connection
                // rate and cap apply, as to a direct client.
                client = source;
                if !connection_rate_allows(&state, client) {
                    return;
                }
                if let Err(refused) = slot.count_against(client) {
                    state.metrics().connection_refused();
                    refused_slot(&mut RefusalLog::default(), refused, client, config);
                    return;
                }
            }
            // LOCAL (the proxy's health check) or no IP: the proxy's own connection.
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer.ip(), "connection closed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %peer.ip(), "connection closed: no PROXY header within the header read timeout");
                return;
            }
        }
    }
    let conn = ConnContext { client, activity: Arc::new(Activity::default()), head_deadline };
    match &config.tls {
        None => {
            let io = ConnIo::new(stream, slot, &conn);
            serve_http(io, conn, &state, router, &builder, watcher).await;
        }
        Some(tls) => {
            let handshake = tokio::time::timeout(config.tls_handshake_timeout, tls.acceptor().accept(stream));
            let mut stop = state.shutdown_watch();
            let tls_stream = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!("TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out after {:?}", config.tls_handshake_timeout);
                        return;
                    }
                },
                () = tokio::time::sleep_until(head_deadline) => {
                    tracing::debug!("no request within the header read timeout (in the TLS handshake)");
                    return;
                }
                _ = stop.wait_for(|s| *s) => return,
            };
            let io = ConnIo::new(tls_stream, slot, &conn);
            serve_http(io, conn, &state, router, &builder, watcher).await;
        }
    }
}

/// What the HTTP layer of one connection needs to know about it.
struct ConnContext {
    /// The client's address: the TCP peer, or the PROXY header's source.
    client: IpAddr,
    /// Requests seen and in flight, shared by the I/O wrapper and the service.
    activity: Arc<Activity>,
    /// When the first request must have arrived whole.
    head_deadline: tokio::time::Instant,
}

async fn serve_http<IO>(
    io: ConnIo<IO>,
    conn: ConnContext,
    state: &AppState,
    router: axum::Router,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ConnContext { client, activity, .. } = conn;
    let proxies = state.config().trusted_proxies.clone();
    let idle_timeout = state.config().http2_idle_timeout;
    let service_activity = activity.clone();
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let in_flight = service_activity.begin();
        let client = proxies.client_addr(client, req.headers());
        req.extensions_mut().insert(ClientAddr(client));
        let response = router.clone().oneshot(req);
        async move {
            let response = response.await?;
            // The request stays in flight until its response body is sent.
            Ok::<_, std::convert::Infallible>(
                response.map(|body| axum::body::Body::new(InFlightBody { body, _in_flight: in_flight })),
            )
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::select! {
        done = watcher.watch(conn.into_owned()) => if let Err(e) = done {
            tracing::debug!(client = %client, "connection ended with error: {e}");
        },
        () = activity.idle_for(idle_timeout) => {
            tracing::debug!(client = %client, "connection closed: no request for {idle_timeout:?}");
        }
    }
}

/// Requests on one connection: whether one has arrived (which lifts the deadline from
/// the accept), how many are in flight, and since when none has been.
#[derive(Default)]
struct Activity {
    request_seen: AtomicBool,
    in_flight: AtomicUsize,
    idle_since: Mutex<Option<tokio::time::Instant>>,
    changed: Notify,
}

impl Activity {
    /// A request arrived: in flight until the returned guard drops.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.request_seen.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        InFlight(self.clone())
    }

    fn request_seen(&self) -> bool {
        self.request_seen.load(Ordering::Acquire)
    }

    /// Resolves once no request has been in flight for `timeout` (counted from the
    /// last one's end, or from now if none came yet).
    async fn idle_for(&self, timeout: Duration) {
        {
            let mut since = self.idle_since.lock().unwrap_or_else(PoisonError::into_inner);
            since.get_or_insert_with(tokio::time::Instant::now);
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            let since = *self.idle_since.lock().unwrap_or_else(PoisonError::into_inner);
            let deadline = since.unwrap_or_else(tokio::time::Instant::now) + timeout;
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    if self.in_flight.load(Ordering::Acquire) == 0 {
                        let since = *self.idle_since.lock().unwrap_or_else(PoisonError::into_inner);
                        if since.is_none_or(|s| s + timeout <= tokio::time::Instant::now()) {
                            return;
                        }
                    }
                }
                () = &mut changed => {}
            }
        }
    }
}

/// One request in flight; its drop marks the connection idle if it was the last.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(tokio::time::Instant::now());
        }
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
struct InFlightBody {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for InFlightBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's byte stream (TCP or TLS) with its connection slot, which it releases
/// when dropped, and the deadline for its first request.
struct ConnIo<IO> {
    io: IO,
    /// Fires if no request has arrived whole by the header deadline (counted from the
    /// accept). Hyper's own header timer starts only once it has seen enough bytes to
    /// pick HTTP/1 over HTTP/2, and HTTP/2 has none, so this one covers a client that
    /// sends a byte, or the HTTP/2 preface, and then nothing. Dropped once a request
    /// has reached the service.
    head_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    activity: Arc<Activity>,
    _slot: ConnectionSlot,
}

impl<IO> ConnIo<IO> {
    fn new(io: IO, slot: ConnectionSlot, conn: &ConnContext) -> ConnIo<IO> {
        ConnIo {
            io,
            head_deadline: Some(Box::pin(tokio::time::sleep_until(conn.head_deadline))),
            activity: conn.activity.clone(),
            _slot: slot,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ConnIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(res) => Poll::Ready(res),
            Poll::Pending => {
                if this.head_deadline.is_some() && this.activity.request_seen() {
                    this.head_deadline = None;
                }
                let expired = this.head_deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request within the header read timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ConnIo<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Rate-limits the "connection cap reached" warning of one listener.
#[derive(Default)]
struct RefusalLog {
    last_logged: Option<Instant>,
    refused_since: u64,
}

impl RefusalLog {
    fn record(&mut self, max_connections: usize) {
        self.refused_since += 1;
        let now = Instant::now();
        if self.last_logged.is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL) {
            tracing::warn!(
                refused = self.refused_since,
                max_connections,
                "connection cap reached: closing new connections until some end"
            );
            self.last_logged = Some(now);
            self.refused_since = 0;
        }
    }
}

/// Errors that come from one bad connection or a full fd table, not a dead listener.
fn is_transient_accept_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
        || matches!(e.raw_os_error(), Some(23 | 24))
}
