//! The transport's configuration: what the binary hands to [`crate::serve`].

use std::path::PathBuf;
use std::time::Duration;

use relay_core::{Limits, RoomIdPrefix};

use crate::net::proxy::TrustedProxies;
use crate::net::tls::TlsHandle;
use crate::ratelimit::RateLimits;
use crate::stats::StatsConfig;
use crate::turn::TurnConfig;
use relay_discovery::DiscoveryConfig;

/// Everything the server needs besides a listener. Build it from the CLI or in a test.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Room and mailbox limits enforced by relay-core.
    pub limits: Limits,
    /// When set, every room ID issued here starts with this prefix.
    pub room_id_prefix: Option<RoomIdPrefix>,
    /// When false, no API key is checked anywhere (development only).
    pub api_keys_enforced: bool,
    /// Largest REST request body, in bytes (default 64 KiB); over it, 413.
    pub max_body_bytes: usize,
    /// A REST request (reading its body included) must be answered within this long,
    /// else 408 `request_timeout` (default 30 s). WebSocket connections are not bound
    /// by it: their handshake is answered at once.
    pub request_timeout: Duration,
    /// Origins allowed to call the REST API from a browser (CORS), e.g.
    /// `https://app.example`. Empty (the default) sends no CORS headers.
    pub cors_allowed_origins: Vec<String>,
    /// WebSocket read buffer per connection. tungstenite's 128 KiB default costs about
    /// 140 KiB per idle connection; 4 KiB keeps idle connections cheap (default 4 KiB).
    pub ws_read_buffer_bytes: usize,
    /// Largest single socket read on a busy WebSocket (`ws::read::FrameReader`). The
    /// bytes beyond the small read buffer live in a buffer that is freed as soon as the
    /// socket goes quiet, so this costs nothing per idle connection (default 64 KiB).
    /// Binary frames larger than `ws_read_buffer_bytes` bypass it: they are read
    /// straight into a buffer of their own length.
    pub ws_burst_read_bytes: usize,
    /// WebSocket write buffer per connection, flushed past this size (default 4 KiB).
    pub ws_write_buffer_bytes: usize,
    /// Interval between pings on an otherwise silent WebSocket (default 20 s).
    pub ws_ping_interval: Duration,
    /// A WebSocket that sends nothing (not even a pong) for this long is closed, and a
    /// write to it that stays blocked this long (a peer that stopped reading) closes it
    /// with 1013 `slow consumer`; a room party's slot is kept for a resume
    /// (`--ws-idle-timeout-secs`, default 60 s).
    pub ws_idle_timeout: Duration,
    /// How often a WebSocket checks what it was opened on: its API key (revoked or
    /// expired: closed with 1008 `api key revoked` / `api key expired`) or, for a
    /// room-scoped mailbox, its room (closed: 1001 `room closed`). A read lock on the
    /// key store per connection per interval, never per frame (default 1 s; a socket
    /// ends within this long of the revocation or expiry, plus a second of clock
    /// granularity for expiry).
    pub lease_check_interval: Duration,
    /// On shutdown, how long open connections get to close before the server gives up
    /// on them (default 5 s).
    pub shutdown_grace: Duration,
    /// Directory for persistent state (groups in `discovery/`); `None` keeps everything
    /// in memory (tests, embedding).
    pub data_dir: Option<PathBuf>,
    /// Group TTLs and the relay registry.
    pub discovery: DiscoveryConfig,
    /// TLS certificate and key served to every new connection; `None` serves plain
    /// HTTP (for a TLS-terminating proxy in front). Reload it through the handle.
    pub tls: Option<TlsHandle>,
    /// A connection's first request must have arrived whole (its HTTP/1 head, or an
    /// HTTP/2 request's headers) within this long of the TCP accept, TLS handshake and
    /// PROXY header included; otherwise the connection is closed without an answer. A
    /// client that sends one byte, or only the HTTP/2 preface, and then nothing is cut
    /// off at this deadline. On an HTTP/1 keep-alive connection each later request head
    /// gets the same time, counted from when the server starts waiting for it
    /// (default 10 s).
    pub header_read_timeout: Duration,
    /// A request body (a REST POST or PATCH) must arrive whole within this long of the
    /// handler starting to read it, else 408 `request_timeout` and the connection is
    /// closed (default 10 s). Credentials are checked before any body is read.
    pub body_read_timeout: Duration,
    /// HTTP/2: interval between the server's keep-alive pings (default 20 s).
    pub http2_keep_alive_interval: Duration,
    /// HTTP/2: a connection whose peer does not answer a keep-alive ping within this
    /// long is closed (default 20 s).
    pub http2_keep_alive_timeout: Duration,
    /// A connection with no request in flight for this long is closed. It matters for
    /// HTTP/2, whose idle connections are otherwise kept up by ping answers; an idle
    /// HTTP/1 keep-alive connection meets `header_read_timeout` first, and a WebSocket
    /// has its own idle timeout (default 60 s).
    pub http2_idle_timeout: Duration,
    /// HTTP/2: streams (requests) one connection may have open at once; more are
    /// refused by the HTTP/2 layer with `REFUSED_STREAM` (default 100).
    pub http2_max_concurrent_streams: u32,
    /// Peers whose forwarding information is believed: from an address in these
    /// ranges the client address is taken from `X-Forwarded-For` (the right-most entry
    /// not itself trusted), else `X-Real-IP`, or from the PROXY header when
    /// `proxy_protocol` is on. Per-address request rates and logs then use the client's
    /// address; a trusted proxy's own connections are exempt from the per-address
    /// connection cap and rate (they carry many clients), unless `proxy_protocol`
    /// names the client at accept. Empty (the default) trusts no one, and these
    /// headers are ignored from everyone.
    pub trusted_proxies: TrustedProxies,
    /// Every connection must start with a PROXY protocol v2 header (HAProxy's
    /// `send-proxy-v2`, AWS NLB, ...) from a peer in `trusted_proxies`; a connection
    /// from another peer, or without a valid header within `header_read_timeout`, is
    /// closed without an answer. The header's source address is the client's, from the
    /// accept on: connection cap and rate per address included (default off).
    pub proxy_protocol: bool,
    /// A TLS handshake must finish within this long after the TCP accept (default 10 s).
    pub tls_handshake_timeout: Duration,
    /// Connections served at once, across all listeners and counting those still in
    /// the TLS handshake and upgraded WebSockets. Past it, a new connection is accepted
    /// and closed at once without a response (default 10,000).
    pub max_connections: usize,
    /// Connections one client address (IPv6: one /64) may hold open at once, counted
    /// like `max_connections` (from the accept to the socket's close, WebSockets
    /// included). Past it, a new connection from that address is accepted and closed at
    /// once, counted in `relay_connections_refused_total` (default 256).
    pub max_connections_per_ip: usize,
    /// Rate limits per client address, per API key and per WebSocket (see
    /// [`RateLimits`] for each limit, its default and what happens over it).
    pub rate_limits: RateLimits,
    /// Busy polling: once frames flow, every runtime worker keeps polling for I/O
    /// instead of sleeping until no frame has arrived for this long, so the next frame
    /// is handled without a wake-up. Lowers latency at the cost of CPU spinning while
    /// traffic flows (and one window after it); spinners yield their CPU to other
    /// threads and back off when it is wanted (docs/operations.md, "Busy polling").
    /// Zero (the default) turns it off; capped at [`crate::MAX_BUSY_POLL`].
    pub busy_poll: Duration,
    /// Whether `/console` (the operator console) is served (default true). Its data
    /// calls need the admin token either way.
    pub console: bool,
    /// How often `GET /v1/admin/stats` samples the counters and how many it keeps.
    pub stats: StatsConfig,
    /// The embedded STUN/TURN server (docs/turn.md); off unless `turn.listen` is set.
    pub turn: TurnConfig,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            limits: Limits::default(),
            room_id_prefix: None,
            api_keys_enforced: true,
            max_body_bytes: 64 << 10,
            request_timeout: Duration::from_secs(30),
            cors_allowed_origins: Vec::new(),
            ws_read_buffer_bytes: 4 << 10,
            ws_burst_read_bytes: 64 << 10,
            ws_write_buffer_bytes: 4 << 10,
            ws_ping_interval: Duration::from_secs(20),
            ws_idle_timeout: Duration::from_secs(60),
            lease_check_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(5),
            data_dir: None,
            discovery: DiscoveryConfig::default(),
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            http2_keep_alive_interval: Duration::from_secs(20),
            http2_keep_alive_timeout: Duration::from_secs(20),
            http2_idle_timeout: Duration::from_secs(60),
            http2_max_concurrent_streams: 100,
            trusted_proxies: TrustedProxies::default(),
            proxy_protocol: false,
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            rate_limits: RateLimits::default(),
            busy_poll: Duration::ZERO,
            console: true,
            stats: StatsConfig::default(),
            turn: TurnConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ServerConfig;

    #[test]
    fn per_address_bursts_are_well_below_the_connection_cap() {
        let config = ServerConfig::default();
        let limits = &config.rate_limits;
        // One address must not be able to take the whole cap, or most of it, at once.
        assert!(limits.connections_per_ip.burst as usize * 5 <= config.max_connections, "{limits:?}");
        assert!(config.max_connections_per_ip * 5 <= config.max_connections);
        assert!(limits.requests_per_ip.burst as usize * 5 <= config.max_connections, "{limits:?}");
    }
}
