//! The state every connection shares: the configuration, the core's rooms and mailbox,
//! discovery, the key store, connection slots, rate limiters, metrics and the shutdown
//! signal; and what the routes ask of it (usage meters, room owners, drain guards).

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use relay_core::RoomId;
use relay_core::rooms::Rooms;
use relay_discovery::Discovery;
use relay_keystore::KeyStore;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::caller::{Caller, Lease, UsageMeter};
use crate::config::ServerConfig;
use crate::dependency::{Dependencies, DependencyHealth};
use crate::error::TransportError;
use crate::metrics::{BusyPollTotals, KeyUsage, LiveSources, Metrics};
#[cfg(feature = "busy-poll")]
use crate::net::busy_poll::BusyPoll;
use crate::ratelimit::RateLimiter;
use crate::redis_mailbox::{RedisMailbox, RedisMailboxError};
use crate::stats::StatsRing;

/// How often discovery's PostgreSQL is checked while it answers.
pub(crate) const STORAGE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// First retry delay once discovery's PostgreSQL stopped answering.
const STORAGE_RETRY_MIN: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest retry delay while discovery's PostgreSQL does not answer.
pub(crate) const STORAGE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

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
    /// One permit per open connection, `max_connections` in all, shared by every
    /// listener. A connection's permit lives inside its I/O object, so it is held
    /// through the TLS handshake and after a WebSocket upgrade, until the socket closes.
    connection_slots: Arc<Semaphore>,
    /// Open connections per client address (IPv6: per /64), against
    /// `config.max_connections_per_ip`; each [`ConnectionSlot`] gives its count back.
    per_ip_connections: Arc<Mutex<std::collections::HashMap<IpAddr, usize>>>,
    /// The rate limits' buckets: per client address, per API key.
    rate_limiter: RateLimiter,
    /// Counters for `/metrics`, bumped with relaxed atomics by the routes.
    metrics: Metrics,
    /// The busy-poll spinners, when `config.busy_poll` is set.
    #[cfg(feature = "busy-poll")]
    pub(crate) busy_poll: Option<Arc<BusyPoll>>,
    /// Recent samples of the counters, for `GET /v1/admin/stats` (the console).
    stats: StatsRing,
    /// The external engines (PostgreSQL, Redis) and whether each is reachable now.
    dependencies: Dependencies,
    /// PostgreSQL's health as discovery sees it, when discovery's state is there.
    discovery_health: Option<DependencyHealth>,
    /// The mailbox shared across instances through Redis, once connected
    /// ([`AppState::connect_redis`]); unset, the mailbox is this process's alone.
    redis_mailbox: std::sync::OnceLock<RedisMailbox>,
}

/// One open connection's place, under `max_connections` and its address's
/// `max_connections_per_ip`; both are given back when it drops.
pub(crate) struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    per_ip: Arc<Mutex<std::collections::HashMap<IpAddr, usize>>>,
    /// The address (IPv6: the /64) it counts against; `None` for a trusted proxy's
    /// connection whose client is not known at accept.
    key: Option<IpAddr>,
    max_per_ip: usize,
}

impl ConnectionSlot {
    /// Counts this slot against `client`'s `max_connections_per_ip` (for a slot taken
    /// by [`AppState::proxy_connection_slot`], once the PROXY header named the client).
    pub(crate) fn count_against(&mut self, client: IpAddr) -> Result<(), SlotRefused> {
        if self.key.is_some() {
            return Ok(());
        }
        let key = crate::ratelimit::client_key(client);
        let mut open = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.max_per_ip {
            return Err(SlotRefused::PerIp);
        }
        *count += 1;
        self.key = Some(key);
        Ok(())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut open = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Forgotten at zero: the map holds only addresses with open connections.
                open.remove(&key);
            }
        }
    }
}

/// Why a new connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotRefused {
    /// `max_connections` are open.
    Full,
    /// Its address holds `max_connections_per_ip`.
    PerIp,
}

/// Held by a live WebSocket task; shutdown waits for every guard to drop.
pub(crate) struct DrainGuard {
    _tx: mpsc::Sender<()>,
}

impl AppState {
    /// Builds the shared state for `config`, opening the stores in `config.data_dir`,
    /// without a key store: enough for a server with keys not enforced. With keys
    /// enforced, every key is refused as unknown (401) and the admin routes answer 503;
    /// give a store with [`AppState::with_keystore`]. Must run inside a tokio runtime
    /// (the mailbox starts its sweeper task); fails if a store cannot be opened.
    pub fn new(config: ServerConfig) -> Result<AppState, TransportError> {
        AppState::build(config, None, None)
    }

    /// As [`AppState::new`], with the key store that verifies API keys, serves the
    /// admin routes and counts usage.
    pub fn with_keystore(config: ServerConfig, keystore: Arc<KeyStore>) -> Result<AppState, TransportError> {
        AppState::build(config, Some(keystore), None)
    }

    /// As [`AppState::new`] or [`AppState::with_keystore`], with discovery already
    /// opened, e.g. on PostgreSQL ([`Discovery::open_postgres`]) instead of the sled or
    /// memory store `config.data_dir` selects. A discovery on PostgreSQL registers
    /// `postgres` with [`AppState::dependencies`]; spawn
    /// [`AppState::discovery_storage_monitor`] to follow it.
    pub fn with_discovery(
        config: ServerConfig,
        keystore: Option<Arc<KeyStore>>,
        discovery: Discovery,
    ) -> Result<AppState, TransportError> {
        AppState::build(config, keystore, Some(discovery))
    }

    /// The key store, if the server has one.
    pub fn keystore(&self) -> Option<&Arc<KeyStore>> {
        self.inner.keystore.as_ref()
    }

    fn build(
        mut config: ServerConfig,
        keystore: Option<Arc<KeyStore>>,
        discovery: Option<Discovery>,
    ) -> Result<AppState, TransportError> {
        if config.turn.listen.is_some() && config.turn.secret.is_none() {
            // Documented in docs/turn.md: without --turn-secret, credentials last one run.
            let secret = crate::turn::credentials::generate_secret()
                .map_err(|_| TransportError::Config("cannot generate a TURN secret".to_owned()))?;
            config.turn.secret = Some(secret);
        }
        if cfg!(not(feature = "busy-poll")) && !config.busy_poll.is_zero() {
            return Err(TransportError::Config(format!(
                "busy polling ({:?}) needs relay-transport built with its `busy-poll` cargo feature",
                config.busy_poll
            )));
        }
        let discovery = match discovery {
            Some(discovery) => discovery,
            None => Discovery::open(&config.discovery, config.data_dir.as_deref()).map_err(|e| {
                let dir =
                    config.data_dir.as_deref().unwrap_or(std::path::Path::new("")).display().to_string();
                TransportError::Config(format!("cannot open the discovery store in {dir}: {e}"))
            })?,
        };
        let (shutdown_tx, _) = watch::channel(false);
        let (drain_tx, drain_rx) = mpsc::channel(1);
        let connection_slots = Arc::new(Semaphore::new(config.max_connections.min(Semaphore::MAX_PERMITS)));
        let rate_limiter = RateLimiter::new(&config.rate_limits);
        // One budget of held bytes for every room and the mailbox (--max-held-bytes).
        let budget = relay_core::HeldBytes::new(config.limits.max_held_bytes);
        let rooms = Rooms::with_budget(config.limits.clone(), config.room_id_prefix, budget.clone());
        let mailbox = relay_core::Mailbox::start_with_budget(config.limits.clone(), budget)
            .map_err(|e| TransportError::Config(format!("cannot start the mailbox: {e}")))?;
        #[cfg(feature = "busy-poll")]
        let busy_poll = BusyPoll::new(config.busy_poll);
        #[cfg(feature = "busy-poll")]
        let busy_poll_totals = busy_poll.clone().map(|b| -> Box<dyn Fn() -> BusyPollTotals + Send + Sync> {
            Box::new(move || BusyPollTotals { micros: b.spun_micros(), backoffs: b.backoffs() })
        });
        #[cfg(not(feature = "busy-poll"))]
        let busy_poll_totals = None;
        let dependencies = Dependencies::default();
        let discovery_health =
            discovery.shared_location().map(|location| dependencies.register("postgres", location));
        let metrics = Metrics::new(live_sources(
            &config,
            &connection_slots,
            &rooms,
            &mailbox,
            busy_poll_totals,
            &dependencies,
        ));
        let stats = StatsRing::new(config.stats.clone(), relay_keystore::unix_now());
        rooms.set_on_close(metrics.room_close_observer());
        mailbox.set_on_ask(metrics.ask_observer());
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
        let state = AppState {
            inner: Arc::new(Inner {
                rooms,
                #[cfg(feature = "busy-poll")]
                busy_poll,
                mailbox,
                config,
                discovery,
                shutdown_tx,
                drain_tx: Mutex::new(Some(drain_tx)),
                drain_rx: tokio::sync::Mutex::new(drain_rx),
                keystore,
                connection_slots,
                per_ip_connections: Arc::default(),
                rate_limiter,
                metrics,
                stats,
                dependencies,
                discovery_health,
                redis_mailbox: std::sync::OnceLock::new(),
            }),
        };
        if let Some(store) = &state.inner.keystore {
            tokio::spawn(close_rooms_of_lapsed_keys(Arc::downgrade(&state.inner)));
            // A key revoked on another instance sharing the database: close the rooms it
            // created here, as a revocation through this instance does. Weak: the store
            // must not keep the state alive.
            let weak = Arc::downgrade(&state.inner);
            store.set_revocation_observer(Box::new(move |name| {
                if let Some(inner) = weak.upgrade() {
                    let closed = AppState { inner }.close_rooms_of_key(name);
                    tracing::info!(
                        key = name,
                        rooms_closed = closed,
                        "key revoked on another instance: its rooms closed"
                    );
                }
            }));
        }
        Ok(state)
    }

    /// Shares the mailbox with every instance using the Redis at `url` under `prefix`
    /// (`--redis-url`, `--redis-prefix`): registers the `redis` dependency and starts
    /// its tasks. Call once, before serving; fails when Redis does not answer (or was
    /// connected already).
    pub async fn connect_redis(&self, url: &str, prefix: &str) -> Result<(), RedisMailboxError> {
        let shared =
            RedisMailbox::connect(url, prefix, self.inner.mailbox.clone(), &self.inner.dependencies).await?;
        self.inner.redis_mailbox.set(shared).map_err(|_| RedisMailboxError::Unreachable {
            location: crate::dependency::redacted_location(url),
            reason: "the mailbox is shared through Redis already".to_string(),
        })
    }

    /// The mailbox's Redis side, when the mailbox is shared across instances.
    pub fn redis_mailbox(&self) -> Option<&RedisMailbox> {
        self.inner.redis_mailbox.get()
    }

    /// The external engines (PostgreSQL, Redis): a component that uses one registers it
    /// here and reports what it sees; `/readyz` and `/metrics` read it.
    pub fn dependencies(&self) -> &Dependencies {
        &self.inner.dependencies
    }

    /// Discovery's storage failed as unreachable (PostgreSQL): marks `postgres` down
    /// for `/readyz` until [`AppState::discovery_storage_monitor`] sees it back.
    pub(crate) fn discovery_storage_failed(&self, detail: &str) {
        if let Some(health) = &self.inner.discovery_health {
            health.set_up(false, &detail);
        }
    }

    /// Follows discovery's PostgreSQL: a `SELECT 1` every [`STORAGE_CHECK_INTERVAL`]
    /// while it answers; once it does not (or a request found it unreachable), again
    /// with a backoff from 1 s doubling to [`STORAGE_RETRY_MAX`] until it answers, then
    /// `postgres` is up again (`/readyz`, `relay_dependency_up`, one log line each way;
    /// the pool opens fresh connections by itself). Returns at once for local storage.
    /// Spawn it once.
    pub fn discovery_storage_monitor(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let state = self.clone();
        async move {
            let Some(health) = state.inner.discovery_health.clone() else { return };
            let mut retry = STORAGE_RETRY_MIN;
            loop {
                let wait = if health.is_up() { STORAGE_CHECK_INTERVAL } else { retry };
                tokio::time::sleep(wait).await;
                match state.discovery().check_storage().await {
                    Ok(()) => {
                        retry = STORAGE_RETRY_MIN;
                        health.set_up(true, &"a check query answered");
                    }
                    Err(e) => {
                        if !health.is_up() {
                            retry = (retry * 2).min(STORAGE_RETRY_MAX);
                        }
                        health.set_up(false, &e);
                    }
                }
            }
        }
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
    #[inline]
    pub(crate) fn frames_arrived(&self) {
        #[cfg(feature = "busy-poll")]
        if let Some(busy_poll) = &self.inner.busy_poll {
            busy_poll.frames_arrived();
        }
    }

    /// A WebSocket wrote frames out: with busy polling on, starts (or keeps) the
    /// workers polling for the next frame. A no-op otherwise.
    #[inline]
    pub(crate) fn frames_written(&self) {
        #[cfg(feature = "busy-poll")]
        if let Some(busy_poll) = &self.inner.busy_poll {
            busy_poll.frames_written();
        }
    }

    /// Recent samples of the counters (`GET /v1/admin/stats`).
    pub(crate) fn stats(&self) -> &StatsRing {
        &self.inner.stats
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

    /// A slot for a new connection from `peer`, or why there is none: `max_connections`
    /// are open, or `max_connections_per_ip` from `peer`'s address (IPv6: its /64).
    pub(crate) fn connection_slot(&self, peer: IpAddr) -> Result<ConnectionSlot, SlotRefused> {
        let mut slot = self.proxy_connection_slot()?;
        slot.count_against(peer)?;
        Ok(slot)
    }

    /// A connection slot under `max_connections` only, for a trusted proxy's connection:
    /// it carries many clients, so its address's cap does not apply. With the PROXY
    /// protocol, [`ConnectionSlot::count_against`] adds the client's once it is known.
    pub(crate) fn proxy_connection_slot(&self) -> Result<ConnectionSlot, SlotRefused> {
        let permit =
            self.inner.connection_slots.clone().try_acquire_owned().map_err(|_| SlotRefused::Full)?;
        Ok(ConnectionSlot {
            _permit: permit,
            per_ip: self.inner.per_ip_connections.clone(),
            key: None,
            max_per_ip: self.inner.config.max_connections_per_ip,
        })
    }

    /// The rate limiters shared by every connection.
    pub(crate) fn rate_limiter(&self) -> &RateLimiter {
        &self.inner.rate_limiter
    }

    /// The per-key rate limit for one keyed operation (room creation, a mailbox open):
    /// 429 `rate_limited` when `caller`'s key is over it, counted on `/metrics`.
    pub(crate) fn check_key_rate(&self, caller: &Caller) -> Result<(), crate::error::ApiError> {
        let Err(limited) = self.inner.rate_limiter.key(caller, tokio::time::Instant::now()) else {
            return Ok(());
        };
        self.inner.metrics.rate_limited("key");
        Err(limited.error())
    }

    /// Waits until every WebSocket task has ended (after [`AppState::begin_shutdown`]).
    pub async fn websockets_closed(&self) {
        let mut rx = self.inner.drain_rx.lock().await;
        while rx.recv().await.is_some() {}
    }
}

impl AppState {
    /// Adds to the usage of `caller`'s key (in memory; written by the periodic flush).
    /// Does nothing for callers without a key (keys not enforced).
    pub(crate) fn record_usage(&self, caller: &Caller, messages: u64, bytes: u64, rooms: u64) {
        self.usage_meter(caller).add(messages, bytes, rooms);
    }

    /// A meter that counts one connection's messages against `caller`'s key.
    pub(crate) fn usage_meter(&self, caller: &Caller) -> UsageMeter {
        UsageMeter(self.keystore().cloned().zip(caller.key_name.clone()))
    }

    /// A meter that counts a room party's messages against the key that created the
    /// room (its owner in the room registry; parties join with the room ID alone).
    pub(crate) fn room_usage_meter(&self, room: &RoomId) -> UsageMeter {
        let owner = self.rooms().owner(room).map(|o| o.to_string());
        UsageMeter(self.keystore().cloned().zip(owner))
    }

    /// Why a connection holding `lease` must end now, if it must: its key revoked or
    /// expired (1008), its room closed. A read lock on the key store, no allocation.
    pub(crate) fn lease_lapsed(&self, lease: &Lease) -> Option<(relay_proto::CloseCode, &'static str)> {
        use relay_keystore::KeyStatus;
        use relay_proto::CloseCode;
        match lease {
            Lease::Unbound => None,
            Lease::Key(name) => {
                let store = self.keystore()?;
                match store.status(name, relay_keystore::unix_now()) {
                    Some(KeyStatus::Active) => None,
                    Some(KeyStatus::Expired) => Some((CloseCode::Policy, "api key expired")),
                    // Revoked, disabled (its --api-key flag dropped) or unknown.
                    _ => Some((CloseCode::Policy, "api key revoked")),
                }
            }
            Lease::Room(room) => {
                self.rooms().info(room).is_none().then_some((CloseCode::GoingAway, "room closed"))
            }
        }
    }

    /// Closes every live room key `name` created (its key was revoked): their parties
    /// get 1008 `api key revoked`, their room-scoped mailboxes end. Returns how many
    /// rooms it closed.
    pub(crate) fn close_rooms_of_key(&self, name: &str) -> usize {
        self.rooms().close_owned_by(name, relay_core::rooms::CloseReason::KeyRevoked)
    }
}

/// Every `lease_check_interval`, closes the rooms of owners whose key is no longer
/// active: expired (1008 `api key expired`), or revoked or removed (1008 `api key
/// revoked`; a revocation through the admin API closes them at once already). One read
/// of the key store per owner with live rooms per interval, never per message. Ends
/// when the state is dropped.
async fn close_rooms_of_lapsed_keys(state: std::sync::Weak<Inner>) {
    use relay_core::rooms::CloseReason;
    use relay_keystore::KeyStatus;
    let Some(period) = state.upgrade().map(|s| s.config.lease_check_interval) else { return };
    let mut tick = tokio::time::interval(period.max(std::time::Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = state.upgrade() else { return };
        let Some(store) = &inner.keystore else { return };
        let now = relay_keystore::unix_now();
        for owner in inner.rooms.owners() {
            let reason = match store.status(&owner, now) {
                Some(KeyStatus::Active) => continue,
                Some(KeyStatus::Expired) => CloseReason::KeyExpired,
                _ => CloseReason::KeyRevoked,
            };
            let closed = inner.rooms.close_owned_by(&owner, reason);
            tracing::info!(
                key = &*owner,
                rooms_closed = closed,
                reason = reason.text(),
                "rooms of a lapsed key closed"
            );
        }
    }
}

/// What `/metrics` reads at each scrape: clones of the shared handles (not the state
/// itself, which holds the metrics).
fn live_sources(
    config: &ServerConfig,
    connection_slots: &Arc<Semaphore>,
    rooms: &Rooms,
    mailbox: &relay_core::Mailbox,
    busy_poll: Option<Box<dyn Fn() -> BusyPollTotals + Send + Sync>>,
    dependencies: &Dependencies,
) -> LiveSources {
    let max = config.max_connections.min(Semaphore::MAX_PERMITS);
    let (slots, rooms, mailbox) = (connection_slots.clone(), rooms.clone(), mailbox.clone());
    LiveSources {
        connections_open: Box::new(move || max.saturating_sub(slots.available_permits())),
        held_bytes: Box::new({
            let budget = rooms.budget().clone();
            move || (budget.held(), budget.max())
        }),
        rooms_open: Box::new(move || rooms.len()),
        mailbox: Box::new(move || mailbox.stats()),
        busy_poll,
        dependencies: dependencies.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the `busy-poll` feature a nonzero window is refused at start, naming the
    /// feature; with it, the spinners are made.
    #[tokio::test]
    async fn busy_polling_needs_the_busy_poll_feature() {
        let config =
            ServerConfig { busy_poll: std::time::Duration::from_micros(200), ..ServerConfig::default() };
        let built = AppState::new(config);
        if cfg!(feature = "busy-poll") {
            assert!(built.is_ok());
        } else {
            let Err(TransportError::Config(message)) = built else { panic!("busy polling was not refused") };
            assert!(message.contains("`busy-poll` cargo feature"), "{message}");
        }
    }
}
