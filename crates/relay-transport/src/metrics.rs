//! Prometheus metrics (`GET /metrics`), readiness (`GET /readyz`) and the counters the
//! routes bump.
//!
//! Hand-written rather than a client crate: every label set is small and known when the
//! code is written (two WebSocket kinds, a fixed list of route templates and statuses),
//! so each series is one `AtomicU64` in a fixed array, bumped with a relaxed add: no
//! lock, no map lookup, no allocation on the message path. A client crate's labelled
//! families take a lock and hash the labels on every increment. The few labels that
//! other modules choose (`reason`, `what`) go into a small table of `&'static str`
//! slots, claimed once and then found by a short scan; they are bumped only on a
//! refusal, never per relayed message. Gauges of what the core holds (rooms, mailbox
//! entries) are read from the core at scrape time, so they cannot drift.
//!
//! Route labels are path templates (`/v1/rooms/{room_id}`), never raw paths: paths
//! carry room IDs, group IDs and, on the admin routes, tokens.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hyper::StatusCode;

use crate::state::AppState;

/// The content type of the Prometheus text exposition format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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

/// The `route` label of `relay_http_requests_total`: the template a path matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    Rooms,
    CreateRoom,
    Room,
    MsgRelay,
    RoomMsgRelay,
    Group,
    V1Group,
    Groups,
    V1Groups,
    GroupById,
    V1GroupById,
    Relays,
    /// The Sodot admin paths, which carry the admin token: one label for all three.
    AdminSodot,
    /// The REST admin API under `/v1/admin/`.
    Admin,
    /// `GET /v1/key`.
    Key,
    /// A path no route serves (its raw text is never a label).
    Unmatched,
}

impl Route {
    const ALL: [Route; 20] = [
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::OpenApi,
        Route::Rooms,
        Route::CreateRoom,
        Route::Room,
        Route::MsgRelay,
        Route::RoomMsgRelay,
        Route::Group,
        Route::V1Group,
        Route::Groups,
        Route::V1Groups,
        Route::GroupById,
        Route::V1GroupById,
        Route::Relays,
        Route::AdminSodot,
        Route::Admin,
        Route::Key,
        Route::Unmatched,
    ];

    /// The route of a path template the router matched (`/v1/rooms/{room_id}`), or
    /// `Unmatched`.
    pub(crate) fn of_template(template: &str) -> Route {
        let segments: Vec<&str> = template.trim_start_matches('/').split('/').collect();
        Route::of(&segments)
    }

    /// The route template for a path's segments (as the router splits them).
    pub(crate) fn of(segments: &[&str]) -> Route {
        match segments {
            ["healthz"] => Route::Healthz,
            ["readyz"] => Route::Readyz,
            ["metrics"] => Route::Metrics,
            ["openapi.json"] => Route::OpenApi,
            ["v1", "rooms"] => Route::Rooms,
            ["create-room"] => Route::CreateRoom,
            ["v1", "rooms", _] => Route::Room,
            ["v1", "msg-relay"] => Route::MsgRelay,
            ["v1", "rooms", _, "msg-relay"] => Route::RoomMsgRelay,
            ["group"] => Route::Group,
            ["v1", "group"] => Route::V1Group,
            ["groups"] => Route::Groups,
            ["v1", "groups"] => Route::V1Groups,
            ["groups", _] => Route::GroupById,
            ["v1", "groups", _] => Route::V1GroupById,
            ["v1", "relays"] => Route::Relays,
            ["createkey", _, _, _] | ["rooms", _] | ["revokekey", _, _] => Route::AdminSodot,
            ["v1", "admin", ..] => Route::Admin,
            ["v1", "key"] => Route::Key,
            _ => Route::Unmatched,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.json",
            Route::Rooms => "/v1/rooms",
            Route::CreateRoom => "/create-room",
            Route::Room => "/v1/rooms/{room_id}",
            Route::MsgRelay => "/v1/msg-relay",
            Route::RoomMsgRelay => "/v1/rooms/{room_id}/msg-relay",
            Route::Group => "/group",
            Route::V1Group => "/v1/group",
            Route::Groups => "/groups",
            Route::V1Groups => "/v1/groups",
            Route::GroupById => "/groups/{ID}",
            Route::V1GroupById => "/v1/groups/{ID}",
            Route::Relays => "/v1/relays",
            Route::AdminSodot => "admin (sodot paths)",
            Route::Admin => "/v1/admin",
            Route::Key => "/v1/key",
            Route::Unmatched => "unmatched",
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
/// Index of the `other` status column.
const OTHER_STATUS: usize = STATUSES.len();

/// Error codes counted as `relay_auth_failures_total{reason}`: a request refused for
/// its credentials. The reason is the JSON error code the client saw.
const AUTH_FAILURE_CODES: [&str; 8] = [
    "missing_api_key",
    "unknown_api_key",
    "revoked_api_key",
    "expired_api_key",
    "unauthorized",
    "bad_registry_token",
    "not_owner",
    "bad_resume_token",
];

/// Distinct `what` (rate limits) or `reason` (auth failures) labels kept; past that a
/// new label is counted as `other`, so a bug cannot grow the scrape without end.
const LABEL_SLOTS: usize = 16;

/// Per-key usage as the key store counts it, reported at scrape time. See
/// [`AppState::set_key_usage_source`].
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

/// A function that reads every key's usage; called once per scrape.
type KeyUsageSource = Box<dyn Fn() -> Vec<KeyUsage> + Send + Sync>;

/// The server's counters. One per [`AppState`]; every method takes `&self`.
pub(crate) struct Metrics {
    connections_total: AtomicU64,
    connections_refused_total: AtomicU64,
    websockets_open: [AtomicU64; 2],
    rooms_created_total: AtomicU64,
    messages_relayed: [AtomicU64; 2],
    bytes_relayed: [AtomicU64; 2],
    /// `[route][status]`, `status` indexed as in [`STATUSES`] plus `other`.
    http_requests: [[AtomicU64; STATUSES.len() + 1]; Route::ALL.len()],
    auth_failures: LabelCounters,
    rate_limited: LabelCounters,
    /// Set once by whoever owns the key store; `None` serves no per-key series.
    key_usage: OnceLock<KeyUsageSource>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            connections_total: AtomicU64::new(0),
            connections_refused_total: AtomicU64::new(0),
            websockets_open: Default::default(),
            rooms_created_total: AtomicU64::new(0),
            messages_relayed: Default::default(),
            bytes_relayed: Default::default(),
            http_requests: Default::default(),
            auth_failures: LabelCounters::with_labels(&AUTH_FAILURE_CODES),
            rate_limited: LabelCounters::default(),
            key_usage: OnceLock::new(),
        }
    }
}

impl Metrics {
    /// A connection was accepted (it got a connection slot).
    pub(crate) fn connection_accepted(&self) {
        self.connections_total.fetch_add(1, Relaxed);
    }

    /// A connection was closed at once because `max_connections` were open.
    pub(crate) fn connection_refused(&self) {
        self.connections_refused_total.fetch_add(1, Relaxed);
    }

    /// A WebSocket of `kind` is open until the returned guard drops.
    pub(crate) fn websocket_opened(&self, kind: WsKind) -> WebSocketOpen<'_> {
        let gauge = &self.websockets_open[kind as usize];
        gauge.fetch_add(1, Relaxed);
        WebSocketOpen { gauge }
    }

    /// A room was created.
    pub(crate) fn room_created(&self) {
        self.rooms_created_total.fetch_add(1, Relaxed);
    }

    /// `count` messages of `payload_bytes` in all were accepted for relaying (room data
    /// frames, or mailbox publishes): a burst is counted once.
    pub(crate) fn messages_relayed(&self, kind: WsKind, count: u64, payload_bytes: usize) {
        self.messages_relayed[kind as usize].fetch_add(count, Relaxed);
        self.bytes_relayed[kind as usize].fetch_add(payload_bytes as u64, Relaxed);
    }

    /// A request was refused by a rate limit; `what` names the limit (`"connection"`,
    /// `"request"`, `"message"`...). Keep the set of names small and fixed: each
    /// distinct name is a series, and past a few the rest count as `other`.
    pub(crate) fn rate_limited(&self, what: &'static str) {
        self.rate_limited.add(what);
    }

    /// Counts one answered request and, when it was refused for its credentials, an
    /// auth failure under its error code.
    pub(crate) fn http_request(&self, route: Route, status: StatusCode, error_code: Option<&'static str>) {
        let column = STATUSES.iter().position(|(s, _)| *s == status.as_u16()).unwrap_or(OTHER_STATUS);
        self.http_requests[route as usize][column].fetch_add(1, Relaxed);
        if let Some(code) = error_code.filter(|c| AUTH_FAILURE_CODES.contains(c)) {
            self.auth_failures.add(code);
        }
    }

    /// A request answered: by the route template the router matched (or `unmatched`).
    pub(crate) fn http_request_at(
        &self,
        route: &str,
        _method: &hyper::Method,
        status: StatusCode,
        error_code: Option<&'static str>,
        _elapsed: std::time::Duration,
    ) {
        self.http_request(Route::of_template(route), status, error_code);
    }

    /// Installs the per-key usage source; only the first call has an effect.
    pub(crate) fn set_key_usage_source(&self, source: KeyUsageSource) -> bool {
        self.key_usage.set(source).is_ok()
    }
}

/// Keeps a WebSocket counted in `relay_websockets_open` while alive.
pub(crate) struct WebSocketOpen<'a> {
    gauge: &'a AtomicU64,
}

impl Drop for WebSocketOpen<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(1, Relaxed);
    }
}

/// Counters keyed by a `&'static str` label, claimed on first use in a fixed table.
struct LabelCounters {
    labels: [OnceLock<&'static str>; LABEL_SLOTS],
    counts: [AtomicU64; LABEL_SLOTS],
    other: AtomicU64,
}

impl Default for LabelCounters {
    fn default() -> LabelCounters {
        LabelCounters {
            labels: std::array::from_fn(|_| OnceLock::new()),
            counts: Default::default(),
            other: AtomicU64::new(0),
        }
    }
}

impl LabelCounters {
    /// A table with `labels` claimed up front, so they are scraped as 0 before the
    /// first event (a counter that appears late hides its first increase from `rate`).
    fn with_labels(labels: &[&'static str]) -> LabelCounters {
        let table = LabelCounters::default();
        for label in labels {
            table.slot(label);
        }
        table
    }

    fn add(&self, label: &'static str) {
        match self.slot(label) {
            Some(i) => self.counts[i].fetch_add(1, Relaxed),
            None => self.other.fetch_add(1, Relaxed),
        };
    }

    /// The slot of `label`, claiming the first free one if it has none. Slots fill in
    /// order and never change, so a label never lands in two of them.
    fn slot(&self, label: &'static str) -> Option<usize> {
        (0..LABEL_SLOTS).find(|&i| *self.labels[i].get_or_init(|| label) == label)
    }

    fn write(&self, out: &mut String, name: &str, label_name: &str) {
        for (label, count) in self.labels.iter().zip(&self.counts) {
            if let Some(label) = label.get() {
                sample(out, name, &[(label_name, label)], count.load(Relaxed));
            }
        }
        let other = self.other.load(Relaxed);
        if other > 0 {
            sample(out, name, &[(label_name, "other")], other);
        }
    }
}

/// The scrape body.
pub(crate) fn render(state: &AppState) -> String {
    let m = state.metrics();
    let mut out = String::with_capacity(8 << 10);

    header(
        &mut out,
        "relay_connections_open",
        "gauge",
        "Open TCP connections, all listeners (TLS handshakes and WebSockets included).",
    );
    sample(&mut out, "relay_connections_open", &[], state.open_connections() as u64);
    header(&mut out, "relay_connections_total", "counter", "Connections accepted since start.");
    sample(&mut out, "relay_connections_total", &[], m.connections_total.load(Relaxed));
    header(
        &mut out,
        "relay_connections_refused_total",
        "counter",
        "Connections closed at once because max_connections were open.",
    );
    sample(&mut out, "relay_connections_refused_total", &[], m.connections_refused_total.load(Relaxed));

    header(&mut out, "relay_websockets_open", "gauge", "Open WebSockets by kind.");
    for kind in WsKind::ALL {
        let n = m.websockets_open[kind as usize].load(Relaxed);
        sample(&mut out, "relay_websockets_open", &[("kind", kind.label())], n);
    }

    header(&mut out, "relay_rooms_open", "gauge", "Rooms alive (created, not yet expired or closed).");
    sample(&mut out, "relay_rooms_open", &[], state.rooms().len() as u64);
    header(&mut out, "relay_rooms_created_total", "counter", "Rooms created since start.");
    sample(&mut out, "relay_rooms_created_total", &[], m.rooms_created_total.load(Relaxed));

    let mb = state.mailbox().stats();
    header(
        &mut out,
        "relay_mailbox_namespaces",
        "gauge",
        "Mailbox namespaces alive (with a connection or a stored message).",
    );
    sample(&mut out, "relay_mailbox_namespaces", &[], mb.namespaces as u64);
    header(&mut out, "relay_mailbox_entries", "gauge", "Messages stored in the mailbox.");
    sample(&mut out, "relay_mailbox_entries", &[], mb.entries as u64);
    header(&mut out, "relay_mailbox_bytes", "gauge", "Bytes of stored mailbox frames, headers included.");
    sample(&mut out, "relay_mailbox_bytes", &[], mb.bytes as u64);
    header(&mut out, "relay_mailbox_pending_asks", "gauge", "Mailbox asks waiting for a message.");
    sample(&mut out, "relay_mailbox_pending_asks", &[], mb.pending_asks as u64);

    header(
        &mut out,
        "relay_messages_relayed_total",
        "counter",
        "Messages accepted for relaying: room data frames and mailbox publishes.",
    );
    for kind in WsKind::ALL {
        let n = m.messages_relayed[kind as usize].load(Relaxed);
        sample(&mut out, "relay_messages_relayed_total", &[("kind", kind.label())], n);
    }
    header(
        &mut out,
        "relay_bytes_relayed_total",
        "counter",
        "Payload bytes of the messages accepted for relaying (frame headers excluded).",
    );
    for kind in WsKind::ALL {
        let n = m.bytes_relayed[kind as usize].load(Relaxed);
        sample(&mut out, "relay_bytes_relayed_total", &[("kind", kind.label())], n);
    }

    header(
        &mut out,
        "relay_http_requests_total",
        "counter",
        "HTTP requests answered, by route template and status (101 for a WebSocket upgrade).",
    );
    for route in Route::ALL {
        for (column, count) in m.http_requests[route as usize].iter().enumerate() {
            let n = count.load(Relaxed);
            if n == 0 {
                continue;
            }
            let status = STATUSES.get(column).map_or("other", |(_, label)| label);
            sample(&mut out, "relay_http_requests_total", &[("route", route.label()), ("status", status)], n);
        }
    }

    header(
        &mut out,
        "relay_auth_failures_total",
        "counter",
        "Requests refused for their credentials, by the JSON error code sent.",
    );
    m.auth_failures.write(&mut out, "relay_auth_failures_total", "reason");
    header(
        &mut out,
        "relay_rate_limited_total",
        "counter",
        "Requests, connections or messages refused by a rate limit, by limit.",
    );
    m.rate_limited.write(&mut out, "relay_rate_limited_total", "what");

    if let Some(micros) = state.busy_polled_micros() {
        header(
            &mut out,
            "relay_busy_poll_seconds_total",
            "counter",
            "Time a worker spent busy polling (--busy-poll-us), added as each spell ends.",
        );
        let _ =
            writeln!(out, "relay_busy_poll_seconds_total {}.{:06}", micros / 1_000_000, micros % 1_000_000);
        header(
            &mut out,
            "relay_busy_poll_backoffs_total",
            "counter",
            "Busy-poll spells cut short because other threads wanted the CPU.",
        );
        let _ = writeln!(out, "relay_busy_poll_backoffs_total {}", state.busy_poll_backoffs());
    }

    if let Some(source) = m.key_usage.get() {
        let keys = source();
        for (name, help, read) in KEY_METRICS {
            header(&mut out, name, "counter", help);
            for key in &keys {
                sample(&mut out, name, &[("key", &key.name)], read(key));
            }
        }
    }
    out
}

/// The per-key series: name, help, and which counter of [`KeyUsage`] it reports.
type KeyMetric = (&'static str, &'static str, fn(&KeyUsage) -> u64);
const KEY_METRICS: [KeyMetric; 3] = [
    ("relay_key_messages_total", "Messages sent with each API key (since the key was created).", |k| {
        k.messages
    }),
    ("relay_key_bytes_total", "Payload bytes sent with each API key (since the key was created).", |k| {
        k.bytes
    }),
    ("relay_key_rooms_created_total", "Rooms created with each API key (since the key was created).", |k| {
        k.rooms
    }),
];

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample line: `name{label="value",...} value`.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, value);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values escape `\`, `"` and newline (text format 0.0.4).
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_claim_one_slot_each_and_overflow_to_other() {
        let table = LabelCounters::with_labels(&["a"]);
        table.add("b");
        table.add("a");
        table.add("b");
        let names: Vec<String> = (0..LABEL_SLOTS).map(|i| i.to_string()).collect();
        for name in &names {
            // The table holds `&'static str`: leak the test's few names.
            let name: &'static str = Box::leak(name.clone().into_boxed_str());
            table.add(name);
        }
        let mut out = String::new();
        table.write(&mut out, "t_total", "what");
        assert!(out.contains("t_total{what=\"a\"} 1\n"), "{out}");
        assert!(out.contains("t_total{what=\"b\"} 2\n"), "{out}");
        // 2 slots held a and b, so 14 of the 16 new labels fit and 2 overflow.
        assert!(out.contains("t_total{what=\"other\"} 2\n"), "{out}");
        assert_eq!(out.lines().count(), LABEL_SLOTS + 1);
    }

    #[test]
    fn rate_limits_are_counted_by_what() {
        let m = Metrics::default();
        m.rate_limited("connection");
        m.rate_limited("connection");
        m.rate_limited("message");
        let mut out = String::new();
        m.rate_limited.write(&mut out, "relay_rate_limited_total", "what");
        assert_eq!(
            out,
            "relay_rate_limited_total{what=\"connection\"} 2\nrelay_rate_limited_total{what=\"message\"} 1\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", &[("key", "a\"b\\c\nd")], 3);
        assert_eq!(out, "m{key=\"a\\\"b\\\\c\\nd\"} 3\n");
    }

    #[test]
    fn raw_paths_map_to_templates() {
        assert_eq!(Route::of(&["v1", "rooms", "abc"]), Route::Room);
        assert_eq!(Route::of(&["v1", "rooms", "abc", "msg-relay"]), Route::RoomMsgRelay);
        assert_eq!(Route::of(&["createkey", "n", "0", "secret"]), Route::AdminSodot);
        assert_eq!(Route::of(&["v1", "admin", "keys", "n"]), Route::Admin);
        assert_eq!(Route::of(&["no", "such"]), Route::Unmatched);
        assert_eq!(Route::Room.label(), "/v1/rooms/{room_id}");
    }
}
