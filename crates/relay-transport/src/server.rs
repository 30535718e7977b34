//! The accept loop: one hyper connection per TCP connection (HTTP/1.1 with upgrades, or
//! HTTP/2), TCP_NODELAY on, and a graceful shutdown that closes WebSockets with 1001.
//!
//! Protection on the accept path: a cap on concurrent connections (over it, a new
//! connection is accepted and closed at once), a TLS handshake timeout, an HTTP/1
//! header read timeout, and the same deadline on the first bytes of any connection so
//! a silent client cannot hold a slot while hyper sniffs the HTTP version. Before any
//! of that, a per-address rate of new connections (over it, the connection is closed
//! at once, like over the cap); each request then carries its client address for the
//! per-address request rate in the router.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::error::TransportError;
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
    builder.http2().timer(TokioTimer::new());
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
        if state.rate_limiter().connection(peer.ip(), tokio::time::Instant::now()).is_err() {
            // Over this address's connection rate: close at once, as over the cap, and
            // for the same reason (no TLS handshake or buffer spent on it). The limiter
            // logs the refusals, at most once per 10 s.
            state.metrics().rate_limited("connection");
            drop(stream);
            continue;
        }
        let slot = match state.connection_slot(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                // Over the cap, or over this address's share of it: close at once.
                // Accepting (rather than leaving it in the backlog) tells the client
                // right away, and each turn of the loop consumes one pending
                // connection, so this never spins.
                drop(stream);
                state.metrics().connection_refused();
                match refused {
                    SlotRefused::Full => refusals.record(config.max_connections),
                    SlotRefused::PerIp => tracing::debug!(
                        peer = %peer.ip(),
                        max = config.max_connections_per_ip,
                        "connection refused: its address holds max_connections_per_ip"
                    ),
                }
                continue;
            }
        };
        state.metrics().connection_accepted();
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            peer,
            slot,
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

/// One connection: the TLS handshake (bounded by the handshake timeout, abandoned if
/// shutdown starts), then hyper until the client or the graceful shutdown ends it.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
    state: AppState,
    router: axum::Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
) {
    let config = state.config();
    let header_read_timeout = config.header_read_timeout;
    match &config.tls {
        None => {
            let io = ConnIo::new(stream, slot, header_read_timeout);
            serve_http(io, peer, router, &builder, watcher).await;
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
                _ = stop.wait_for(|s| *s) => return,
            };
            let io = ConnIo::new(tls_stream, slot, header_read_timeout);
            serve_http(io, peer, router, &builder, watcher).await;
        }
    }
}

async fn serve_http<IO>(
    io: ConnIo<IO>,
    peer: SocketAddr,
    router: axum::Router,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ClientAddr(peer.ip()));
        router.clone().oneshot(req)
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!("connection ended with error: {e}");
    }
}

/// A connection's byte stream (TCP or TLS) with its connection slot, which it releases
/// when dropped, and a deadline for the first bytes from the client.
struct ConnIo<IO> {
    io: IO,
    /// Fires if the client sends nothing at all within the header read timeout; cleared
    /// by the first byte read. Hyper's own header timeout starts only once it has seen
    /// enough bytes to pick HTTP/1 over HTTP/2.
    first_read_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    _slot: ConnectionSlot,
}

impl<IO> ConnIo<IO> {
    fn new(io: IO, slot: ConnectionSlot, first_read_timeout: Duration) -> ConnIo<IO> {
        ConnIo {
            io,
            first_read_deadline: Some(Box::pin(tokio::time::sleep(first_read_timeout))),
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
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(res) => {
                if res.is_ok() && buf.filled().len() > before {
                    this.first_read_deadline = None;
                }
                Poll::Ready(res)
            }
            Poll::Pending => {
                let expired =
                    this.first_read_deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client sent nothing within the header read timeout",
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
