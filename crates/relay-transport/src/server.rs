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

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use relay_core::rooms::Rooms;
use relay_keystore::KeyStore;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::auth::Caller;
use crate::busy_poll::BusyPoll;
use crate::config::ServerConfig;
use crate::discovery::Discovery;
use crate::error::TransportError;
use crate::metrics::{KeyUsage, Metrics};
use crate::ratelimit::{ClientAddr, RateLimiter};
use crate::router;

/// At most one "connection cap reached" warning per listener per this interval; the
/// warning carries how many connections were refused since the previous one.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The state every connection shares: configuration, the core's rooms and mailbox, and
/// the shutdown signal. Cheap to clone; one per server, shared by all its listeners.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: ServerConfig,
    /// The live rooms, shared by the create routes and every room WebSocket.
    rooms: Rooms,
    /// The mailbox hub shared by `/v1/msg-relay` and every room-scoped mailbox.
    mailbox: relay_core::Mailbox,
    /// Groups and the relay registry (sled in `config.data_dir`, or memory).
    discovery: Discovery,
    /// Flips to true once shutdown starts; WebSocket handlers watch it to close with 1001.
    shutdown_tx: watch::Sender<bool>,
    /// Every live WebSocket task holds a clone; shutdown waits until all are dropped.
    /// `None` once shutdown started, so no new guard is handed out.
    drain_tx: Mutex<Option<mpsc::Sender<()>>>,
    drain_rx: tokio::sync::Mutex<mpsc::Receiver<()>>,
    /// The API keys and admin token; `None` only in tests and embeddings built with
    /// [`AppState::new`] (then key-gated and admin routes answer 503 when enforced).
    pub(crate) keystore: Option<Arc<KeyStore>>,
    /// The key that created each room, so the room's messages count against it.
    pub(crate) room_owners: Mutex<std::collections::HashMap<relay_core::RoomId, String>>,
    /// One permit per open connection, `max_connections` in all, shared by every
    /// listener. A connection's permit lives inside its I/O object, so it is held
    /// through the TLS handshake and after a WebSocket upgrade, until the socket closes.
    connection_slots: Arc<Semaphore>,
    /// The rate limits' buckets: per client address, per API key.
    rate_limiter: RateLimiter,
    /// Counters for `/metrics`, bumped with relaxed atomics by the routes.
    metrics: Metrics,
    /// The busy-poll spinners, when `config.busy_poll` is set.
    busy_poll: Option<Arc<BusyPoll>>,
}

/// Held by a live WebSocket task; shutdown waits for every guard to drop.
pub(crate) struct DrainGuard {
    _tx: mpsc::Sender<()>,
}

impl AppState {
    /// Builds the shared state for `config`, without a key store: enough for a server
    /// with keys not enforced. With keys enforced, every key is refused as unknown (401)
    /// and the admin routes answer 503; give a store with [`AppState::try_with_keystore`].
    ///
    /// # Panics
    /// If `config.data_dir` is set and its store cannot be opened; use
    /// [`AppState::try_new`] to get that as an error. Without a data dir, never.
    pub fn new(config: ServerConfig) -> AppState {
        AppState::try_new(config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Builds the shared state for `config`, opening the stores in `config.data_dir`.
    pub fn try_new(config: ServerConfig) -> Result<AppState, TransportError> {
        AppState::build(config, None)
    }

    /// As [`AppState::try_new`], with the key store that verifies API keys, serves the
    /// admin routes and counts usage.
    pub fn try_with_keystore(
        config: ServerConfig,
        keystore: Arc<KeyStore>,
    ) -> Result<AppState, TransportError> {
        AppState::build(config, Some(keystore))
    }

    /// The key store, if the server has one.
    pub fn keystore(&self) -> Option<&Arc<KeyStore>> {
        self.inner.keystore.as_ref()
    }

    fn build(config: ServerConfig, keystore: Option<Arc<KeyStore>>) -> Result<AppState, TransportError> {
        let discovery = Discovery::open(&config.discovery, config.data_dir.as_deref()).map_err(|e| {
            let dir = config.data_dir.as_deref().unwrap_or(std::path::Path::new("")).display().to_string();
            TransportError::Config(format!("cannot open the discovery store in {dir}: {e}"))
        })?;
        let (shutdown_tx, _) = watch::channel(false);
        let (drain_tx, drain_rx) = mpsc::channel(1);
        let connection_slots = Arc::new(Semaphore::new(config.max_connections.min(Semaphore::MAX_PERMITS)));
        let rate_limiter = RateLimiter::new(&config.rate_limits);
        let metrics = Metrics::default();
        if let Some(store) = keystore.clone() {
            // Per-key series on /metrics come from the store's own counters, read at scrape time.
            let source = move || {
                store
                    .list()
                    .into_iter()
                    .map(|k| KeyUsage {
                        name: k.name,
                        messages: k.usage.messages,
                        bytes: k.usage.bytes,
                        rooms: k.usage.rooms,
                    })
                    .collect()
            };
            metrics.set_key_usage_source(Box::new(source));
        }
        Ok(AppState {
            inner: Arc::new(Inner {
                rooms: Rooms::new(config.limits.clone(), config.room_id_prefix),
                busy_poll: BusyPoll::new(config.busy_poll),
                mailbox: crate::mailbox::new_hub(&config),
                config,
                discovery,
                shutdown_tx,
                drain_tx: Mutex::new(Some(drain_tx)),
                drain_rx: tokio::sync::Mutex::new(drain_rx),
                keystore,
                room_owners: Mutex::default(),
                connection_slots,
                rate_limiter,
                metrics,
            }),
        })
    }

    /// Groups and the relay registry. Spawn [`Discovery::sweeper`] to purge expired groups.
    pub fn discovery(&self) -> &Discovery {
        &self.inner.discovery
    }

    /// The configuration this state was built with.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The room registry.
    pub fn rooms(&self) -> &Rooms {
        &self.inner.rooms
    }

    /// The mailbox hub: every mailbox namespace of this server.
    pub fn mailbox(&self) -> &relay_core::Mailbox {
        &self.inner.mailbox
    }

    /// Starts shutdown: new WebSockets are refused, open ones close with 1001.
    /// Idempotent.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown_tx.send_replace(true);
        self.inner.drain_tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown_tx.borrow()
    }

    /// A receiver that changes to true when shutdown starts.
    pub fn shutdown_watch(&self) -> watch::Receiver<bool> {
        self.inner.shutdown_tx.subscribe()
    }

    /// Resolves to true once shutdown starts (to false if the state goes away first).
    /// Fused, so a connection's poll loop can poll it on every turn, after it resolved
    /// too.
    pub(crate) fn shutting_down(
        &self,
    ) -> impl futures_util::future::FusedFuture<Output = bool> + Send + use<> {
        use futures_util::FutureExt;
        let mut stop = self.shutdown_watch();
        async move { stop.wait_for(|stopping| *stopping).await.is_ok() }.fuse()
    }

    /// A guard for a new WebSocket task, or `None` while shutting down.
    pub(crate) fn drain_guard(&self) -> Option<DrainGuard> {
        let tx = self.inner.drain_tx.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        Some(DrainGuard { _tx: tx })
    }

    /// How many connections are open right now, across all listeners (including those
    /// in the TLS handshake and upgraded WebSockets).
    pub fn open_connections(&self) -> usize {
        let max = self.inner.config.max_connections.min(Semaphore::MAX_PERMITS);
        max.saturating_sub(self.inner.connection_slots.available_permits())
    }

    /// A WebSocket handled a burst of frames: with busy polling on, keeps the workers
    /// polling for the next one. A no-op otherwise.
    pub(crate) fn frames_arrived(&self) {
        if let Some(busy_poll) = &self.inner.busy_poll {
            busy_poll.frames_arrived();
        }
    }

    /// A WebSocket wrote frames out: with busy polling on, starts (or keeps) the
    /// workers polling for the next frame. A no-op otherwise.
    pub(crate) fn frames_written(&self) {
        if let Some(busy_poll) = &self.inner.busy_poll {
            busy_poll.frames_written();
        }
    }

    /// Microseconds spent busy polling since start (`None` when it is off).
    pub(crate) fn busy_polled_micros(&self) -> Option<u64> {
        self.inner.busy_poll.as_ref().map(|b| b.spun_micros())
    }

    /// Busy-poll spells cut short since start because the CPU was wanted elsewhere.
    pub(crate) fn busy_poll_backoffs(&self) -> u64 {
        self.inner.busy_poll.as_ref().map_or(0, |b| b.backoffs())
    }

    /// The counters served at `/metrics`.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Serves per-key usage at `/metrics` (`relay_key_messages_total{key="name"}` and
    /// friends): `source` is called once per scrape and returns every key's totals, as
    /// the key store counts them. Only the first call has an effect; returns whether
    /// this one did.
    pub fn set_key_usage_source(&self, source: impl Fn() -> Vec<KeyUsage> + Send + Sync + 'static) -> bool {
        self.inner.metrics.set_key_usage_source(Box::new(source))
    }

    /// A slot for a new connection, or `None` when `max_connections` are open.
    fn connection_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.inner.connection_slots.clone().try_acquire_owned().ok()
    }

    /// The rate limiters shared by every connection.
    pub(crate) fn rate_limiter(&self) -> &RateLimiter {
        &self.inner.rate_limiter
    }

    /// The per-key rate limit for one keyed operation (room creation, a mailbox open):
    /// `Some(429 response)` when `caller`'s key is over it, counted on `/metrics`.
    pub(crate) fn key_rate_refusal(&self, caller: &Caller) -> Option<hyper::Response<crate::http::Body>> {
        let limited = self.inner.rate_limiter.key(caller, tokio::time::Instant::now()).err()?;
        self.inner.metrics.rate_limited("key");
        Some(limited.response())
    }

    /// Waits until every WebSocket task has ended (after [`AppState::begin_shutdown`]).
    pub async fn websockets_closed(&self) {
        let mut rx = self.inner.drain_rx.lock().await;
        while rx.recv().await.is_some() {}
    }
}

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
    let graceful = GracefulShutdown::new();
    if let Some(busy_poll) = &state.inner.busy_poll {
        let stop = state.clone();
        busy_poll.start(|| stop.shutting_down());
    }
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
        let Some(slot) = state.connection_slot() else {
            // Over the cap: close at once. Accepting (rather than leaving it in the
            // backlog) tells the client right away, and each turn of the loop consumes
            // one pending connection, so this never spins.
            drop(stream);
            state.metrics().connection_refused();
            refusals.record(config.max_connections);
            continue;
        };
        state.metrics().connection_accepted();
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            peer,
            slot,
            state.clone(),
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
    slot: OwnedSemaphorePermit,
    state: AppState,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
) {
    let config = state.config();
    let header_read_timeout = config.header_read_timeout;
    match &config.tls {
        None => {
            let io = ConnIo::new(stream, slot, header_read_timeout);
            serve_http(io, peer, state, &builder, watcher).await;
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
            serve_http(io, peer, state.clone(), &builder, watcher).await;
        }
    }
}

async fn serve_http<IO>(
    io: ConnIo<IO>,
    peer: SocketAddr,
    state: AppState,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ClientAddr(peer.ip()));
        let state = state.clone();
        async move { Ok::<_, Infallible>(router::route(state, req).await) }
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
    _slot: OwnedSemaphorePermit,
}

impl<IO> ConnIo<IO> {
    fn new(io: IO, slot: OwnedSemaphorePermit, first_read_timeout: Duration) -> ConnIo<IO> {
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
