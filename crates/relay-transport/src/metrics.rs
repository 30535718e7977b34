//! Prometheus metrics (`GET /metrics`) and the counters and histograms the routes and
//! connections update.
//!
//! Built on the Prometheus project's `prometheus-client`: one [`Registry`] per server,
//! encoded in the Prometheus text format 0.0.4 at each scrape. Every label set that is
//! known when the code is written (the two WebSocket kinds, the auth-failure codes, the
//! rate limits) is looked up in its `Family` once, when [`Metrics`] is built, and the
//! child's handle (an `Arc`'d atomic) is kept in a field: the message path is still one
//! relaxed atomic add per counter, with no label hashing and no lock. Only the HTTP
//! families, whose `route` label comes from the router, are looked up per request.
//!
//! The histograms are [`AtomicHistogram`]s, a fixed set of buckets in atomics encoded
//! through prometheus-client's histogram encoder: its own `Histogram` takes a mutex per
//! observation, which every connection of a kind would contend for on each message.
//!
//! Gauges of what the server holds (connections, rooms, mailbox entries, busy polling)
//! and the per-key usage are read at scrape time by collectors built from closures the
//! state hands in ([`LiveSources`], [`Metrics::set_key_usage_source`]), so they cannot
//! drift and this module knows nothing of `AppState`. Room lifetimes and mailbox ask
//! waits come from the core's hooks ([`Metrics::room_close_observer`],
//! [`Metrics::ask_observer`]).
//!
//! Route labels are path templates (`/v1/rooms/{room_id}`), never raw paths: paths
//! carry room IDs, group IDs and, on the admin routes, tokens.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use relay_core::mailbox::{AskEnd, MailboxStats};

use crate::dependency::Dependencies;
use relay_core::rooms::CloseReason;
use relay_proto::ErrorCode;

/// The content type of the Prometheus text exposition format (0.0.4).
pub(crate) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// What a WebSocket carries: the `kind` label of the WebSocket and relay metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WsKind {
    /// A room party (`/v1/rooms/{room_id}`).
    Room,
    /// A mailbox connection (`/v1/msg-relay` or a room-scoped mailbox).
    Mailbox,
}

impl WsKind {
    const ALL: [WsKind; 2] = [WsKind::Room, WsKind::Mailbox];

    fn label(self) -> &'static str {
        match self {
            WsKind::Room => "room",
            WsKind::Mailbox => "mailbox",
        }
    }
}

/// The statuses the relay sends, each its own `status` label; any other is `other`.
const STATUSES: [(u16, &str); 15] = [
    (101, "101"),
    (200, "200"),
    (201, "201"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (409, "409"),
    (413, "413"),
    (426, "426"),
    (429, "429"),
    (500, "500"),
    (501, "501"),
    (503, "503"),
];

/// The methods that are their own `method` label; any other is `other`.
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// Distinct `route` labels kept; past that a new route is counted as `other`, so a
/// router that ever passed a raw path could not grow the scrape without end.
const MAX_ROUTES: usize = 64;

/// The rate limits, the `what` label of `relay_rate_limited_total`: listed (at 0) from
/// the first scrape. A name not listed here is counted as `other`.
const RATE_LIMITS: [&str; 4] = ["connection", "request", "key", "ws_message"];

/// `relay_http_request_duration_seconds` buckets, in seconds: from a sub-millisecond
/// `/healthz` to a request stuck behind a slow store.
const HTTP_DURATION_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// `relay_websocket_message_bytes` buckets, in payload bytes: powers of 4 from 16 B to
/// 16 MiB (the default `max_message_bytes` is 1 MiB; operators may raise it).
const MESSAGE_BYTES_BUCKETS: [f64; 11] =
    [16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262_144.0, 1_048_576.0, 4_194_304.0, 16_777_216.0];

/// `relay_room_lifetime_seconds` buckets: from a signing round of a second to the
/// longest room TTL (a day).
const ROOM_LIFETIME_BUCKETS: [f64; 13] =
    [1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21_600.0, 86_400.0];

/// `relay_mailbox_ask_wait_seconds` buckets: asks answered from storage observe 0 and
/// land in the first; the last is the default `max_mailbox_ttl` (an hour).
const ASK_WAIT_BUCKETS: [f64; 14] =
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0];

/// Per-key usage as the key store counts it, reported at scrape time. See
/// [`crate::AppState::set_key_usage_source`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUsage {
    /// The key's name (never the key).
    pub name: String,
    /// Mailbox and room messages sent with the key.
    pub messages: u64,
    /// Payload bytes of those messages.
    pub bytes: u64,
    /// Rooms created with the key.
    pub rooms: u64,
}

/// Server-wide totals since start, summed over labels (see [`Metrics::totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Connections accepted.
    pub(crate) connections: u64,
    /// WebSockets open now, both kinds.
    pub(crate) websockets_open: u64,
    /// Rooms created.
    pub(crate) rooms_created: u64,
    /// Messages relayed, both kinds.
    pub(crate) messages: u64,
    /// Payload bytes relayed, both kinds.
    pub(crate) bytes: u64,
    /// Requests refused for their credentials.
    pub(crate) auth_failures: u64,
    /// Refusals by any rate limit.
    pub(crate) rate_limited: u64,
}

/// A function that reads every key's usage; called once per scrape.
pub(crate) type KeyUsageSource = Box<dyn Fn() -> Vec<KeyUsage> + Send + Sync>;

/// What `/metrics` reads from the live server at each scrape, handed in by whoever owns
/// the state (so this module does not know it).
pub(crate) struct LiveSources {
    /// Open TCP connections, all listeners.
    pub(crate) connections_open: Box<dyn Fn() -> usize + Send + Sync>,
    /// Rooms alive.
    pub(crate) rooms_open: Box<dyn Fn() -> usize + Send + Sync>,
    /// Bytes held for clients against `--max-held-bytes` (rooms, mailbox, send queues),
    /// and that bound.
    pub(crate) held_bytes: Box<dyn Fn() -> (usize, usize) + Send + Sync>,
    /// What the mailbox holds; walks every namespace, so called once per scrape.
    pub(crate) mailbox: Box<dyn Fn() -> MailboxStats + Send + Sync>,
    /// Busy-poll totals; `None` when busy polling is off (its series are then absent).
    pub(crate) busy_poll: Option<Box<dyn Fn() -> BusyPollTotals + Send + Sync>>,
    /// The external engines (PostgreSQL, Redis) and whether each is reachable.
    pub(crate) dependencies: Dependencies,
}

/// What busy polling has spent since start.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BusyPollTotals {
    /// Microseconds the workers spent spinning, summed over workers.
    pub(crate) micros: u64,
    /// Spells cut short because other threads wanted the CPU.
    pub(crate) backoffs: u64,
}

/// Labels of `relay_http_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: &'static str,
}

/// Labels of `relay_http_request_duration_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteMethodStatus {
    route: String,
    method: &'static str,
    status: &'static str,
}

/// A one-label set with a fixed name and value (`kind`, `reason`, `what`).
type OneLabel = [(&'static str, &'static str); 1];

/// The server's metrics. One per server state; every method takes `&self`.
pub(crate) struct Metrics {
    registry: Registry,
    connections_total: Counter,
    connections_refused_total: Counter,
    /// Indexed by [`WsKind`], like the other per-kind arrays.
    websockets_open: [Gauge; 2],
    rooms_created_total: Counter,
    messages_relayed: [Counter; 2],
    bytes_relayed: [Counter; 2],
    message_bytes: [AtomicHistogram; 2],
    http_requests: Family<RouteStatus, Counter>,
    http_request_duration: Family<RouteMethodStatus, AtomicHistogram, fn() -> AtomicHistogram>,
    /// The `route` labels handed out so far, at most [`MAX_ROUTES`].
    routes: RwLock<HashSet<String>>,
    /// `relay_auth_failures_total{reason}`, one series per code relay-proto marks an
    /// authentication failure (`ErrorCode::is_auth_failure`): a request refused for its
    /// credentials, labelled with the JSON error code the client saw.
    auth_failures: Vec<(ErrorCode, Counter)>,
    rate_limited: Family<OneLabel, Counter>,
    /// Indexed like [`RATE_LIMITS`].
    rate_limits: [Counter; RATE_LIMITS.len()],
    room_lifetime: AtomicHistogram,
    ask_wait: AtomicHistogram,
    asks_expired: Counter,
    /// Set once by whoever owns the key store; unset, no per-key series are served.
    key_usage: Arc<OnceLock<KeyUsageSource>>,
    /// The TURN server's counters, handed to its relayed sockets.
    turn: TurnCounters,
}

/// The TURN server's counters (`relay_turn_*`), registered once; clones share them.
#[derive(Clone, Debug, Default)]
pub(crate) struct TurnCounters {
    /// Bytes relayed between TURN clients and their peers, both ways.
    pub(crate) relayed_bytes: Counter,
    /// Allocations (relayed addresses) created.
    pub(crate) allocations: Counter,
    /// Allocations refused because their key held `max_allocations_per_key`.
    pub(crate) allocations_refused: Counter,
    /// Datagrams dropped because their peer address is in a refused range.
    pub(crate) peers_refused: Counter,
    /// Datagrams dropped because their allocation was over its bandwidth.
    pub(crate) over_bandwidth: Counter,
    /// TURN requests whose username was refused (unknown, expired, revoked key).
    pub(crate) auth_refused: Counter,
}

impl TurnCounters {
    fn register(registry: &mut Registry) -> TurnCounters {
        let turn = TurnCounters::default();
        for (name, help, counter) in [
            (
                "relay_turn_relayed_bytes",
                "Bytes relayed by TURN between clients and peers",
                &turn.relayed_bytes,
            ),
            ("relay_turn_allocations", "TURN allocations created", &turn.allocations),
            (
                "relay_turn_allocations_refused",
                "TURN allocations refused because the key held max_allocations_per_key",
                &turn.allocations_refused,
            ),
            (
                "relay_turn_peers_refused",
                "TURN datagrams dropped because the peer is on a refused (loopback, private) range",
                &turn.peers_refused,
            ),
            (
                "relay_turn_over_bandwidth",
                "TURN datagrams dropped because the allocation was over its bandwidth",
                &turn.over_bandwidth,
            ),
            (
                "relay_turn_auth_refused",
                "TURN requests refused for their username (unknown, expired or revoked key)",
                &turn.auth_refused,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        turn
    }
}

impl Metrics {
    /// Registers every metric, with `live` read at each scrape. Help texts registered
    /// here end without a period: the registry adds one (collectors write theirs whole).
    pub(crate) fn new(live: LiveSources) -> Metrics {
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let connections_total = counter("relay_connections", "Connections accepted since start");
        let connections_refused_total = counter(
            "relay_connections_refused",
            "Connections closed at once because max_connections were open",
        );
        let rooms_created_total = counter("relay_rooms_created", "Rooms created since start");
        let asks_expired =
            counter("relay_mailbox_asks_expired", "Mailbox asks whose TTL passed before any message came");

        let websockets_open = Family::<OneLabel, Gauge>::default();
        registry.register("relay_websockets_open", "Open WebSockets by kind", websockets_open.clone());
        let messages_relayed = Family::<OneLabel, Counter>::default();
        registry.register(
            "relay_messages_relayed",
            "Messages accepted for relaying: room data frames and mailbox publishes",
            messages_relayed.clone(),
        );
        let bytes_relayed = Family::<OneLabel, Counter>::default();
        registry.register(
            "relay_bytes_relayed",
            "Payload bytes of the messages accepted for relaying (frame headers excluded)",
            bytes_relayed.clone(),
        );
        let message_bytes = Family::<OneLabel, AtomicHistogram, _>::new_with_constructor(|| {
            AtomicHistogram::new(&MESSAGE_BYTES_BUCKETS, 1.0)
        });
        registry.register(
            "relay_websocket_message_bytes",
            "Payload bytes of each message accepted for relaying, by WebSocket kind",
            message_bytes.clone(),
        );
        let by_kind = |kind: WsKind| [("kind", kind.label())];

        let http_requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "relay_http_requests",
            "HTTP requests answered, by route template and status (101 for a WebSocket upgrade)",
            Listed(http_requests.clone()),
        );
        let http_request_duration =
            Family::<RouteMethodStatus, AtomicHistogram, fn() -> AtomicHistogram>::new_with_constructor(
                || AtomicHistogram::new(&HTTP_DURATION_BUCKETS, MICROS),
            );
        registry.register(
            "relay_http_request_duration_seconds",
            "HTTP request duration, from routing to the response (the upgrade, for a WebSocket)",
            Listed(http_request_duration.clone()),
        );
        let auth_failures = Family::<OneLabel, Counter>::default();
        registry.register(
            "relay_auth_failures",
            "Requests refused for their credentials, by the JSON error code sent",
            auth_failures.clone(),
        );
        let rate_limited = Family::<OneLabel, Counter>::default();
        registry.register(
            "relay_rate_limited",
            "Requests, connections or messages refused by a rate limit, by limit",
            Listed(rate_limited.clone()),
        );

        let room_lifetime = AtomicHistogram::new(&ROOM_LIFETIME_BUCKETS, MICROS);
        registry.register(
            "relay_room_lifetime_seconds",
            "Time from a room's creation to its close, for any reason",
            room_lifetime.clone(),
        );
        let ask_wait = AtomicHistogram::new(&ASK_WAIT_BUCKETS, MICROS);
        registry.register(
            "relay_mailbox_ask_wait_seconds",
            "Time from a mailbox ask to its message (0 when it was stored already)",
            ask_wait.clone(),
        );

        let turn = TurnCounters::register(&mut registry);
        registry.register_collector(Box::new(LiveCollector(live)));
        let key_usage = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(KeyUsageCollector(key_usage.clone())));

        Metrics {
            connections_total,
            connections_refused_total,
            websockets_open: WsKind::ALL.map(|k| websockets_open.get_or_create_owned(&by_kind(k))),
            rooms_created_total,
            messages_relayed: WsKind::ALL.map(|k| messages_relayed.get_or_create_owned(&by_kind(k))),
            bytes_relayed: WsKind::ALL.map(|k| bytes_relayed.get_or_create_owned(&by_kind(k))),
            message_bytes: WsKind::ALL.map(|k| message_bytes.get_or_create_owned(&by_kind(k))),
            http_requests,
            http_request_duration,
            routes: RwLock::default(),
            auth_failures: ErrorCode::ALL
                .iter()
                .filter(|c| c.is_auth_failure())
                .map(|&c| (c, auth_failures.get_or_create_owned(&[("reason", c.as_str())])))
                .collect(),
            rate_limits: RATE_LIMITS.map(|w| rate_limited.get_or_create_owned(&[("what", w)])),
            rate_limited,
            room_lifetime,
            ask_wait,
            asks_expired,
            key_usage,
            turn,
            registry,
        }
    }

    /// The TURN server's counters.
    pub(crate) fn turn(&self) -> &TurnCounters {
        &self.turn
    }

    /// The scrape body, in the Prometheus text format 0.0.4.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            // Writing to a String cannot fail, nor can the collectors: never reached.
            tracing::error!("cannot encode the metrics: {e}");
        }
        out
    }

    /// The server-wide counters and WebSocket gauges now, summed over their labels, for
    /// the stats sampler ([`crate::stats`]).
    pub(crate) fn totals(&self) -> Totals {
        let sum = |counters: &[Counter]| counters.iter().map(Counter::get).fold(0u64, u64::saturating_add);
        Totals {
            connections: self.connections_total.get(),
            websockets_open: self.websockets_open.iter().map(|g| g.get().max(0).unsigned_abs()).sum(),
            rooms_created: self.rooms_created_total.get(),
            messages: sum(&self.messages_relayed),
            bytes: sum(&self.bytes_relayed),
            auth_failures: self.auth_failures.iter().map(|(_, c)| c.get()).fold(0u64, u64::saturating_add),
            rate_limited: self.rate_limited_total(),
        }
    }

    /// Every rate-limit refusal, the `other` limit included.
    fn rate_limited_total(&self) -> u64 {
        let listed = self.rate_limits.iter().map(Counter::get).fold(0u64, u64::saturating_add);
        // `get`, not `get_or_create`: reading must not list an `other` series at 0.
        let other = self.rate_limited.get(&[("what", "other")]).map_or(0, |c| c.get());
        listed.saturating_add(other)
    }

    /// A connection was accepted (it got a connection slot).
    pub(crate) fn connection_accepted(&self) {
        self.connections_total.inc();
    }

    /// A connection was closed at once because `max_connections` were open.
    pub(crate) fn connection_refused(&self) {
        self.connections_refused_total.inc();
    }

    /// A WebSocket of `kind` is open until the returned guard drops.
    pub(crate) fn websocket_opened(&self, kind: WsKind) -> WebSocketOpen<'_> {
        let gauge = &self.websockets_open[kind as usize];
        gauge.inc();
        WebSocketOpen { gauge }
    }

    /// A room was created.
    pub(crate) fn room_created(&self) {
        self.rooms_created_total.inc();
    }

    /// `count` messages of `payload_bytes` in all were accepted for relaying (room data
    /// frames, or mailbox publishes): a burst is counted once.
    pub(crate) fn messages_relayed(&self, kind: WsKind, count: u64, payload_bytes: usize) {
        self.messages_relayed[kind as usize].inc_by(count);
        self.bytes_relayed[kind as usize].inc_by(payload_bytes as u64);
    }

    /// One message of `payload_bytes` was accepted for relaying: its size goes into
    /// `relay_websocket_message_bytes` (a bucket search and two relaxed adds).
    pub(crate) fn message_size(&self, kind: WsKind, payload_bytes: usize) {
        self.message_bytes[kind as usize].observe(payload_bytes as u64);
    }

    /// A request was refused by a rate limit; `what` names the limit, one of
    /// [`RATE_LIMITS`] (add a new limit there; any other name is counted as `other`).
    pub(crate) fn rate_limited(&self, what: &'static str) {
        match RATE_LIMITS.iter().position(|w| *w == what) {
            Some(i) => self.rate_limits[i].inc(),
            None => self.rate_limited.get_or_create(&[("what", "other")]).inc(),
        };
    }

    /// Counts one answered request under its route template (the router's matched path,
    /// e.g. `/v1/rooms/{room_id}`, or `"unmatched"`; never a raw path), observes how
    /// long it took and, when it was refused for its credentials, counts an auth failure
    /// under its error code.
    pub(crate) fn http_request(
        &self,
        route: &str,
        method: &Method,
        status: StatusCode,
        error_code: Option<ErrorCode>,
        elapsed: Duration,
    ) {
        let route = self.route_label(route);
        let status = STATUSES.iter().find(|(s, _)| *s == status.as_u16()).map_or("other", |(_, label)| label);
        let method = METHODS.into_iter().find(|m| *m == method.as_str()).unwrap_or("other");
        let duration = RouteMethodStatus { route, method, status };
        self.http_request_duration.get_or_create(&duration).observe_duration(elapsed);
        self.http_requests.get_or_create(&RouteStatus { route: duration.route, status }).inc();
        if let Some((_, failures)) = self.auth_failures.iter().find(|(c, _)| Some(*c) == error_code) {
            failures.inc();
        }
    }

    /// `route` as a label: itself if seen before or while fewer than [`MAX_ROUTES`] were
    /// seen, else `other`. A route seen before costs a read lock, never the write lock.
    fn route_label(&self, route: &str) -> String {
        let seen = self.routes.read().unwrap_or_else(PoisonError::into_inner).contains(route);
        if !seen {
            let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
            if routes.len() >= MAX_ROUTES && !routes.contains(route) {
                return "other".to_owned();
            }
            routes.insert(route.to_owned());
        }
        route.to_owned()
    }

    /// The hook for [`relay_core::rooms::Rooms::set_on_close`]: observes each room's
    /// lifetime in `relay_room_lifetime_seconds`.
    pub(crate) fn room_close_observer(&self) -> impl Fn(Duration, CloseReason) + Send + Sync + 'static {
        let lifetime = self.room_lifetime.clone();
        move |lived, _reason| lifetime.observe_duration(lived)
    }

    /// The hook for [`relay_core::Mailbox::set_on_ask`]: observes how long each answered
    /// ask waited, and counts the asks that expired.
    pub(crate) fn ask_observer(&self) -> impl Fn(AskEnd) + Send + Sync + 'static {
        let (wait, expired) = (self.ask_wait.clone(), self.asks_expired.clone());
        move |end| match end {
            AskEnd::Answered { waited } => wait.observe_duration(waited),
            AskEnd::Expired => {
                expired.inc();
            }
        }
    }

    /// Installs the per-key usage source; only the first call has an effect.
    pub(crate) fn set_key_usage_source(&self, source: KeyUsageSource) -> bool {
        self.key_usage.set(source).is_ok()
    }
}

/// Keeps a WebSocket counted in `relay_websockets_open` while alive.
pub(crate) struct WebSocketOpen<'a> {
    gauge: &'a Gauge,
}

impl Drop for WebSocketOpen<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// [`AtomicHistogram`] units of a duration: microseconds, exported as seconds.
const MICROS: f64 = 1e-6;

/// Most stripes an [`AtomicHistogram`] is split into.
const MAX_STRIPES: usize = 16;

/// Stripes per [`AtomicHistogram`]: one per core the process may use, at most
/// [`MAX_STRIPES`].
fn stripes() -> usize {
    static STRIPES: OnceLock<usize> = OnceLock::new();
    *STRIPES.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get).clamp(1, MAX_STRIPES)
    })
}

/// The stripe this thread observes into: threads take turns, once each, so the runtime's
/// workers (started together) get different ones.
fn thread_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Relaxed);
    }
    STRIPE.with(|stripe| *stripe)
}

/// A histogram with fixed buckets kept in atomics: an observation is a binary search of
/// the bounds and two relaxed adds, with no lock. The counts are striped, one stripe per
/// core, each thread adding to its own and a scrape summing them: two histograms are
/// observed for every relayed mailbox message, and with one set of counts for every
/// core their cache lines moved between cores on every message (3.8 % of the relay's
/// CPU at 256 B). Values are whole units (bytes, microseconds), so the sum is an atomic
/// integer too; `scale` converts a unit to the exported one. Cheap to clone: clones
/// share the counts.
#[derive(Clone)]
pub(crate) struct AtomicHistogram(Arc<HistogramInner>);

struct HistogramInner {
    /// Upper bounds as exported (`le`), ascending.
    le: Box<[f64]>,
    /// The same bounds in units.
    bounds: Box<[u64]>,
    /// `stride` cells per stripe: the sum of the observations (in units), then the
    /// observations per bucket (not cumulative; the last is above every bound, `+Inf`),
    /// then at least a cache line of padding, so no two stripes share a line.
    cells: Box<[AtomicU64]>,
    /// Cells per stripe.
    stride: usize,
    /// Exported value of one unit.
    scale: f64,
}

impl AtomicHistogram {
    /// A histogram with upper bounds `le` (ascending, in the exported unit), observing
    /// whole units worth `scale` each.
    fn new(le: &[f64], scale: f64) -> AtomicHistogram {
        // Bounds are small round numbers of units; the cast saturates on nonsense.
        let bounds = le.iter().map(|b| (b / scale).round() as u64).collect();
        // The sum and a count per bucket and for +Inf, then 64 bytes of padding.
        let stride = le.len() + 2 + 8;
        AtomicHistogram(Arc::new(HistogramInner {
            le: le.into(),
            bounds,
            cells: (0..stride * stripes()).map(|_| AtomicU64::new(0)).collect(),
            stride,
            scale,
        }))
    }

    /// Counts one observation of `units`.
    fn observe(&self, units: u64) {
        let h = &*self.0;
        let stripe = thread_stripe() % (h.cells.len() / h.stride) * h.stride;
        h.cells[stripe + 1 + h.bounds.partition_point(|&b| b < units)].fetch_add(1, Relaxed);
        h.cells[stripe].fetch_add(units, Relaxed);
    }

    /// The sum (in units) and the count per bucket, over every stripe.
    fn totals(&self) -> (u64, Vec<u64>) {
        let h = &*self.0;
        let mut counts = vec![0u64; h.le.len() + 1];
        let mut sum = 0u64;
        for stripe in h.cells.chunks_exact(h.stride) {
            sum = sum.wrapping_add(stripe[0].load(Relaxed));
            for (total, cell) in counts.iter_mut().zip(&stripe[1..]) {
                *total += cell.load(Relaxed);
            }
        }
        (sum, counts)
    }

    /// Counts one duration (for a histogram of [`MICROS`]).
    fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }
}

impl fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtomicHistogram").field("le", &self.0.le).finish_non_exhaustive()
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let h = &*self.0;
        let (sum, counts) = self.totals();
        let buckets: Vec<(f64, u64)> = h.le.iter().copied().chain([f64::INFINITY]).zip(counts).collect();
        // The count is the buckets' total, so it always equals the `+Inf` bucket.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = sum as f64 * h.scale;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A family listed (HELP and TYPE) even before its first series, as every metric of the
/// relay is: prometheus-client leaves empty families out.
#[derive(Debug)]
struct Listed<M>(M);

impl<M: EncodeMetric> EncodeMetric for Listed<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// Reads the gauges of the live server at each scrape.
struct LiveCollector(LiveSources);

impl fmt::Debug for LiveCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveCollector").finish_non_exhaustive()
    }
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let live = &self.0;
        let mut gauge = |name: &str, help: &str, value: usize| {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        };
        gauge(
            "relay_connections_open",
            "Open TCP connections, all listeners (TLS handshakes and WebSockets included).",
            (live.connections_open)(),
        )?;
        gauge("relay_rooms_open", "Rooms alive (created, not yet expired or closed).", (live.rooms_open)())?;
        let (held, max_held) = (live.held_bytes)();
        gauge(
            "relay_held_bytes",
            "Bytes held for clients (room messages, stored mailbox messages, send queues, each with its per-entry overhead), against --max-held-bytes.",
            held,
        )?;
        gauge("relay_held_bytes_max", "The --max-held-bytes bound.", max_held)?;
        let mb = (live.mailbox)();
        gauge(
            "relay_mailbox_namespaces",
            "Mailbox namespaces alive (with a connection or a stored message).",
            mb.namespaces,
        )?;
        gauge("relay_mailbox_entries", "Messages stored in the mailbox.", mb.entries)?;
        gauge("relay_mailbox_bytes", "Bytes of stored mailbox frames, headers included.", mb.bytes)?;
        gauge("relay_mailbox_pending_asks", "Mailbox asks waiting for a message.", mb.pending_asks)?;
        let dependencies = live.dependencies.statuses();
        let mut up = encoder.encode_descriptor(
            "relay_dependency_up",
            "Whether each external engine (postgres, redis) was reachable at its last use: 1 or 0.",
            None,
            MetricType::Gauge,
        )?;
        for dep in &dependencies {
            ConstGauge::new(i64::from(dep.up)).encode(up.encode_family(&[("dependency", dep.name)])?)?;
        }
        let mut failures = encoder.encode_descriptor(
            "relay_dependency_failures",
            "Times each external engine went from reachable to unreachable since start.",
            None,
            MetricType::Counter,
        )?;
        for dep in &dependencies {
            ConstCounter::new(dep.failures).encode(failures.encode_family(&[("dependency", dep.name)])?)?;
        }
        if let Some(busy_poll) = &live.busy_poll {
            let totals = busy_poll();
            let seconds = ConstCounter::new(totals.micros as f64 * MICROS);
            seconds.encode(encoder.encode_descriptor(
                "relay_busy_poll_seconds",
                "Time a worker spent busy polling (--busy-poll-us), added as each spell ends.",
                None,
                seconds.metric_type(),
            )?)?;
            let backoffs = ConstCounter::new(totals.backoffs);
            backoffs.encode(encoder.encode_descriptor(
                "relay_busy_poll_backoffs",
                "Busy-poll spells cut short because other threads wanted the CPU.",
                None,
                backoffs.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Serves the per-key usage counters from the installed source, at each scrape.
struct KeyUsageCollector(Arc<OnceLock<KeyUsageSource>>);

impl fmt::Debug for KeyUsageCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyUsageCollector").field("installed", &self.0.get().is_some()).finish()
    }
}

/// The per-key series: name (without `_total`), help, and which counter of
/// [`KeyUsage`] it reports.
type KeyMetric = (&'static str, &'static str, fn(&KeyUsage) -> u64);
const KEY_METRICS: [KeyMetric; 3] = [
    ("relay_key_messages", "Messages sent with each API key (since the key was created).", |k| k.messages),
    ("relay_key_bytes", "Payload bytes sent with each API key (since the key was created).", |k| k.bytes),
    ("relay_key_rooms_created", "Rooms created with each API key (since the key was created).", |k| k.rooms),
];

impl Collector for KeyUsageCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(source) = self.0.get() else { return Ok(()) };
        let keys = source();
        for (name, help, read) in KEY_METRICS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for key in &keys {
                let labels = [("key", key.name.as_str())];
                ConstCounter::new(read(key)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(LiveSources {
            connections_open: Box::new(|| 3),
            rooms_open: Box::new(|| 2),
            held_bytes: Box::new(|| (1234, 1 << 30)),
            mailbox: Box::new(|| MailboxStats {
                namespaces: 1,
                entries: 4,
                bytes: 43,
                pending_asks: 5,
                connections: 2,
            }),
            busy_poll: Some(Box::new(|| BusyPollTotals { micros: 1_500_000, backoffs: 7 })),
            dependencies: Dependencies::default(),
        })
    }

    /// The lines of `out` that start with `prefix`.
    fn lines<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
        out.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn counters_keep_their_total_names_and_start_at_zero() {
        let out = metrics().render();
        for line in [
            "# TYPE relay_connections_total counter",
            "relay_connections_total 0",
            "relay_connections_refused_total 0",
            "relay_rooms_created_total 0",
            "relay_mailbox_asks_expired_total 0",
            "relay_messages_relayed_total{kind=\"room\"} 0",
            "relay_bytes_relayed_total{kind=\"mailbox\"} 0",
            "relay_auth_failures_total{reason=\"bad_resume_token\"} 0",
            "relay_rate_limited_total{what=\"ws_message\"} 0",
            "# TYPE relay_http_requests_total counter",
            "# TYPE relay_http_request_duration_seconds histogram",
            "# TYPE relay_websockets_open gauge",
            "relay_websockets_open{kind=\"mailbox\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
        }
        assert!(lines(&out, "relay_http_requests_total").is_empty(), "only requests seen are listed");
        assert!(!out.contains("_total_total") && !out.contains("# EOF") && !out.contains("# UNIT"), "{out}");
    }

    #[test]
    fn live_gauges_are_read_at_scrape_time() {
        let out = metrics().render();
        for line in [
            "relay_connections_open 3",
            "relay_rooms_open 2",
            "relay_held_bytes 1234",
            "relay_held_bytes_max 1073741824",
            "relay_mailbox_namespaces 1",
            "relay_mailbox_entries 4",
            "relay_mailbox_bytes 43",
            "relay_mailbox_pending_asks 5",
            "# TYPE relay_busy_poll_seconds_total counter",
            "relay_busy_poll_seconds_total 1.5",
            "relay_busy_poll_backoffs_total 7",
        ] {
            assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
        }
    }

    #[test]
    fn requests_are_counted_and_timed_by_template_method_and_status() {
        let m = metrics();
        let ms = Duration::from_millis;
        m.http_request("/v1/rooms", &Method::POST, StatusCode::CREATED, None, ms(3));
        m.http_request(
            "/v1/rooms",
            &Method::POST,
            StatusCode::UNAUTHORIZED,
            Some(ErrorCode::MissingApiKey),
            ms(1),
        );
        m.http_request(
            "unmatched",
            &Method::from_bytes(b"BREW").unwrap(),
            StatusCode::IM_A_TEAPOT,
            None,
            ms(0),
        );
        let out = m.render();
        for line in [
            "relay_http_requests_total{route=\"/v1/rooms\",status=\"201\"} 1",
            "relay_http_requests_total{route=\"/v1/rooms\",status=\"401\"} 1",
            "relay_http_requests_total{route=\"unmatched\",status=\"other\"} 1",
            "relay_auth_failures_total{reason=\"missing_api_key\"} 1",
            "relay_http_request_duration_seconds_bucket{route=\"/v1/rooms\",method=\"POST\",status=\"201\",le=\"0.0025\"} 0",
            "relay_http_request_duration_seconds_bucket{route=\"/v1/rooms\",method=\"POST\",status=\"201\",le=\"0.005\"} 1",
            "relay_http_request_duration_seconds_bucket{route=\"/v1/rooms\",method=\"POST\",status=\"201\",le=\"+Inf\"} 1",
            "relay_http_request_duration_seconds_sum{route=\"/v1/rooms\",method=\"POST\",status=\"201\"} 0.003",
            "relay_http_request_duration_seconds_count{route=\"/v1/rooms\",method=\"POST\",status=\"201\"} 1",
            "relay_http_request_duration_seconds_count{route=\"unmatched\",method=\"other\",status=\"other\"} 1",
        ] {
            assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
        }
    }

    #[test]
    fn route_labels_are_bounded() {
        let m = metrics();
        for i in 0..MAX_ROUTES + 5 {
            m.http_request(&format!("/r{i}"), &Method::GET, StatusCode::OK, None, Duration::ZERO);
        }
        let out = m.render();
        assert_eq!(lines(&out, "relay_http_requests_total{").len(), MAX_ROUTES + 1, "{out}");
        assert!(out.contains("relay_http_requests_total{route=\"other\",status=\"200\"} 5\n"), "{out}");
    }

    #[test]
    fn rate_limits_are_counted_by_what() {
        let m = metrics();
        m.rate_limited("connection");
        m.rate_limited("connection");
        m.rate_limited("ws_message");
        m.rate_limited("no_such_limit");
        let out = m.render();
        let mut got = lines(&out, "relay_rate_limited_total{");
        got.sort_unstable();
        assert_eq!(
            got,
            [
                "relay_rate_limited_total{what=\"connection\"} 2",
                "relay_rate_limited_total{what=\"key\"} 0",
                "relay_rate_limited_total{what=\"other\"} 1",
                "relay_rate_limited_total{what=\"request\"} 0",
                "relay_rate_limited_total{what=\"ws_message\"} 1",
            ]
        );
    }

    #[test]
    fn a_histogram_observed_from_many_threads_counts_every_observation_once() {
        let h = AtomicHistogram::new(&[10.0, 100.0], 1.0);
        std::thread::scope(|scope| {
            for t in 0..8u64 {
                let h = h.clone();
                scope.spawn(move || {
                    for i in 0..1000u64 {
                        h.observe(if i % 2 == 0 { 5 + t } else { 50 + t });
                    }
                });
            }
        });
        // 5 + t is at most 10 for t up to 5; every 50 + t is at most 100.
        let (sum, counts) = h.totals();
        assert_eq!(counts, [6 * 500, 2 * 500 + 8 * 500, 0]);
        assert_eq!(sum, (0..8).map(|t| 500 * (5 + t) + 500 * (50 + t)).sum::<u64>());
        // Stripes are a cache line apart at least, whatever the allocation's alignment.
        assert!(h.0.stride - (h.0.le.len() + 2) >= 8);
        // Eight threads took eight turns: with more than one stripe, more than one holds
        // observations (threads of other tests in the process may take turns between).
        let used = h.0.cells.chunks_exact(h.0.stride).filter(|s| s[0].load(Relaxed) > 0).count();
        assert!(used >= stripes().min(2), "stripes used: {used} of {}", stripes());
    }

    #[test]
    fn message_sizes_fill_the_buckets_at_or_above_them() {
        let m = metrics();
        m.messages_relayed(WsKind::Room, 3, 16 + 17 + 5000);
        for size in [16, 17, 5000] {
            m.message_size(WsKind::Room, size);
        }
        let out = m.render();
        for line in [
            "# TYPE relay_websocket_message_bytes histogram",
            "relay_websocket_message_bytes_bucket{kind=\"room\",le=\"16\"} 1",
            "relay_websocket_message_bytes_bucket{kind=\"room\",le=\"64\"} 2",
            "relay_websocket_message_bytes_bucket{kind=\"room\",le=\"4096\"} 2",
            "relay_websocket_message_bytes_bucket{kind=\"room\",le=\"16384\"} 3",
            "relay_websocket_message_bytes_bucket{kind=\"room\",le=\"+Inf\"} 3",
            "relay_websocket_message_bytes_sum{kind=\"room\"} 5033.0",
            "relay_websocket_message_bytes_count{kind=\"room\"} 3",
            "relay_websocket_message_bytes_count{kind=\"mailbox\"} 0",
            "relay_bytes_relayed_total{kind=\"room\"} 5033",
        ] {
            assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
        }
    }

    #[test]
    fn core_hooks_feed_room_lifetimes_and_ask_waits() {
        let m = metrics();
        m.room_close_observer()(Duration::from_secs(45), CloseReason::AllLeft);
        let ask = m.ask_observer();
        ask(AskEnd::Answered { waited: Duration::ZERO });
        ask(AskEnd::Answered { waited: Duration::from_millis(20) });
        ask(AskEnd::Expired);
        let out = m.render();
        for line in [
            "# TYPE relay_room_lifetime_seconds histogram",
            "relay_room_lifetime_seconds_bucket{le=\"30\"} 0",
            "relay_room_lifetime_seconds_bucket{le=\"60\"} 1",
            "relay_room_lifetime_seconds_sum 45.0",
            "relay_room_lifetime_seconds_count 1",
            "relay_mailbox_ask_wait_seconds_bucket{le=\"0.001\"} 1",
            "relay_mailbox_ask_wait_seconds_bucket{le=\"0.025\"} 2",
            "relay_mailbox_ask_wait_seconds_count 2",
            "relay_mailbox_asks_expired_total 1",
        ] {
            assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
        }
    }

    #[test]
    fn key_usage_is_served_once_a_source_is_installed_and_label_values_are_escaped() {
        let m = metrics();
        assert!(!m.render().contains("relay_key_"));
        let usage = KeyUsage { name: "a\"b\\c\nd".to_owned(), messages: 3, bytes: 120, rooms: 1 };
        assert!(m.set_key_usage_source(Box::new(move || vec![usage.clone()])));
        assert!(!m.set_key_usage_source(Box::new(Vec::new)), "only the first source is kept");
        let out = m.render();
        for line in [
            "# TYPE relay_key_messages_total counter",
            "relay_key_messages_total{key=\"a\\\"b\\\\c\\nd\"} 3",
            "relay_key_bytes_total{key=\"a\\\"b\\\\c\\nd\"} 120",
            "relay_key_rooms_created_total{key=\"a\\\"b\\\\c\\nd\"} 1",
        ] {
            assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
        }
    }
}
