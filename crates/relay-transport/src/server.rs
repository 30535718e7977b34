//! The accept loop: one hyper connection per TCP connection (HTTP/1.1 with upgrades, or
//! HTTP/2), TCP_NODELAY on, and a graceful shutdown that closes WebSockets with 1001.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use relay_core::rooms::Rooms;
use relay_keystore::KeyStore;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::ServerConfig;
use crate::discovery::Discovery;
use crate::error::TransportError;
use crate::router;

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
    /// The API keys and admin token; `None` only when keys are not enforced and no
    /// data directory was given (then the admin routes answer 503).
    pub(crate) keystore: Option<Arc<KeyStore>>,
    /// The key that created each room, so the room's messages count against it.
    pub(crate) room_owners: Mutex<std::collections::HashMap<relay_core::RoomId, String>>,
}

/// Held by a live WebSocket task; shutdown waits for every guard to drop.
pub(crate) struct DrainGuard {
    _tx: mpsc::Sender<()>,
}

impl AppState {
    /// Builds the shared state for `config`, without a key store: enough for a server
    /// with keys not enforced. With keys enforced, every key-gated request is refused
    /// (503) until a store is given with [`AppState::try_with_keystore`].
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
        Ok(AppState {
            inner: Arc::new(Inner {
                rooms: Rooms::new(config.limits.clone(), config.room_id_prefix),
                mailbox: crate::mailbox::new_hub(&config),
                config,
                discovery,
                shutdown_tx,
                drain_tx: Mutex::new(Some(drain_tx)),
                drain_rx: tokio::sync::Mutex::new(drain_rx),
                keystore,
                room_owners: Mutex::default(),
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

    /// A guard for a new WebSocket task, or `None` while shutting down.
    pub(crate) fn drain_guard(&self) -> Option<DrainGuard> {
        let tx = self.inner.drain_tx.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        Some(DrainGuard { _tx: tx })
    }

    /// Waits until every WebSocket task has ended (after [`AppState::begin_shutdown`]).
    pub async fn websockets_closed(&self) {
        let mut rx = self.inner.drain_rx.lock().await;
        while rx.recv().await.is_some() {}
    }
}

/// Serves HTTP and WebSockets on `listener` until `shutdown` resolves, then stops
/// accepting, closes WebSockets with 1001 and waits up to the configured grace for open
/// connections to finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TransportError> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut stop = state.shutdown_watch();
    tokio::pin!(shutdown);

    loop {
        let (stream, _peer) = tokio::select! {
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
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(router::route(state, req).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended with error: {e}");
            }
        });
    }

    drop(listener);
    state.begin_shutdown();
    let grace = state.config().shutdown_grace;
    let drained = async {
        graceful.shutdown().await;
        state.websockets_closed().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("shutdown grace of {grace:?} passed with connections still open");
    }
    Ok(())
}

/// Errors that come from one bad connection or a full fd table, not a dead listener.
fn is_transient_accept_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
        || matches!(e.raw_os_error(), Some(23 | 24))
}
