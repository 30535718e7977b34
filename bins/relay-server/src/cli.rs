//! The command line: every flag, its environment variable and its default, turned into
//! a validated [`relay_transport::ServerConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use relay_core::{Limits, RoomIdPrefix};
use relay_transport::{Rate, RateLimits, ServerConfig, TrustedProxies};

/// Relay: a self-hosted relay for MPC and peer-to-peer apps (rooms, mailbox, discovery).
#[derive(Debug, Parser)]
#[command(name = "relay-server", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Address to listen on; repeat for several. The environment variable LISTEN takes
    /// a space-separated list, as in the Silence Labs relay.
    #[arg(long = "listen", env = "LISTEN", value_delimiter = ' ', default_value = "0.0.0.0:8080")]
    pub(crate) listen: Vec<SocketAddr>,

    /// Every room ID issued starts with this prefix: exactly 8 lowercase hex characters.
    /// Lets a load balancer route all parties of a room to this instance.
    #[arg(long, env = "RELAY_ROOM_ID_PREFIX", value_parser = parse_prefix)]
    pub(crate) room_id_prefix: Option<RoomIdPrefix>,

    /// Disable every API key check. For development only: anyone can create rooms and
    /// use the mailbox.
    #[arg(long, env = "RELAY_INSECURE_API_KEYS_NOT_ENFORCED")]
    pub(crate) insecure_api_keys_not_enforced: bool,

    /// Log format on stderr.
    #[arg(long, env = "RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,

    #[command(flatten)]
    pub(crate) limits: LimitArgs,

    #[command(flatten)]
    pub(crate) keys: KeyArgs,

    #[command(flatten)]
    pub(crate) discovery: crate::discovery::DiscoveryArgs,

    #[command(flatten)]
    pub(crate) ops: OpsArgs,

    #[command(flatten)]
    pub(crate) rate_limits: RateLimitArgs,

    #[command(flatten)]
    pub(crate) turn: crate::turn::TurnArgs,

    #[command(flatten)]
    pub(crate) redis: crate::redis_args::RedisArgs,

    /// Manage API keys offline (the server must be stopped); without a subcommand the
    /// server runs.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// API keys and the admin token. They are kept in `<--data-dir>/keys` (the flag is
/// shared with discovery).
#[derive(Debug, clap::Args)]
pub(crate) struct KeyArgs {
    /// A preconfigured API key, KEY,NAME with KEY standard base64 of 16 bytes; repeat for
    /// several. Never expires, can be revoked (and stays revoked). The environment
    /// variable takes several values separated by spaces.
    #[arg(
        long = "api-key",
        value_name = "KEY,NAME",
        env = "RELAY_API_KEYS",
        value_delimiter = ' ',
        hide_env_values = true
    )]
    pub(crate) api_keys: Vec<String>,

    /// The admin token for the admin API, at least 32 characters (shorter: exit 2).
    /// Without it, one is generated at first start and printed once; only its hash is
    /// kept.
    #[arg(
        long = "secret-auth",
        alias = "secret_auth",
        value_name = "TOKEN",
        env = "RELAY_SECRET_AUTH",
        hide_env_values = true
    )]
    pub(crate) secret_auth: Option<String>,

    /// Write the admin token generated at first start to this new file (mode 0600)
    /// instead of printing it. An existing file is never overwritten: the relay exits 2
    /// when it would have to. Later starts, with a token already kept, and starts with
    /// --secret-auth (nothing generated) leave it alone.
    #[arg(long, env = "RELAY_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub(crate) admin_token_file: Option<PathBuf>,

    /// PostgreSQL for state shared by every instance of a deployment
    /// (`postgres://user:password@host:5432/db`, no TLS): API keys, the admin token and
    /// usage totals, discovery groups and the relay registry live there instead of under
    /// --data-dir. Unreachable at start: exit 2 naming it. Unset: the embedded stores
    /// under --data-dir.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub(crate) database_url: Option<String>,
}

/// Subcommands: offline tools that run instead of the server.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create, list or revoke API keys in --data-dir while the server is stopped (or,
    /// with --database-url, in PostgreSQL, also while servers run).
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// `relay-server keys ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a key and print it (as JSON) once; only its hash is kept.
    Create {
        /// Unique name: 1 to 64 characters of A-Z a-z 0-9 . _ -
        name: String,
        /// Expiry in unix seconds; 0 means never.
        #[arg(long, default_value_t = 0)]
        expires_at: u64,
        /// Mailbox namespace; keys of one tenant see each other's mailbox messages.
        /// Defaults to the key's name.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List every key (never the key itself) as JSON.
    List,
    /// Revoke a key; it stays revoked across restarts.
    Revoke {
        /// The key's name.
        name: String,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The limits of relay-core, one flag each. Defaults are [`Limits::default`]'s.
#[derive(Debug, clap::Args)]
pub(crate) struct LimitArgs {
    /// Largest number of parties in a room.
    #[arg(long, env = "RELAY_MAX_ROOM_SIZE", default_value_t = Limits::default().max_room_size,
          value_parser = clap::value_parser!(u16).range(2..))]
    pub(crate) max_room_size: u16,
    /// Largest number of live rooms.
    #[arg(long, env = "RELAY_MAX_ROOMS", default_value_t = Limits::default().max_rooms)]
    pub(crate) max_rooms: usize,
    /// Largest message (room data frame or mailbox frame), in bytes.
    #[arg(long, env = "RELAY_MAX_MESSAGE_BYTES", default_value_t = Limits::default().max_message_bytes)]
    pub(crate) max_message_bytes: usize,
    /// Bytes one room may hold (undelivered plus delivered-but-unacked).
    #[arg(long, env = "RELAY_MAX_ROOM_HELD_BYTES", default_value_t = Limits::default().max_room_held_bytes)]
    pub(crate) max_room_held_bytes: usize,
    /// Bytes of stored messages one mailbox namespace may hold.
    #[arg(long, env = "RELAY_MAX_NAMESPACE_HELD_BYTES", default_value_t = Limits::default().max_namespace_held_bytes)]
    pub(crate) max_namespace_held_bytes: usize,
    /// Shards of one mailbox namespace, each with its own lock, chosen by message ID
    /// (at least 1).
    #[arg(long, env = "RELAY_MAILBOX_NAMESPACE_SHARDS",
          default_value_t = Limits::default().mailbox_namespace_shards,
          value_parser = parse_shards)]
    pub(crate) mailbox_namespace_shards: usize,
    /// Asks one mailbox connection may have waiting at once.
    #[arg(long, env = "RELAY_MAX_PENDING_ASKS", default_value_t = Limits::default().max_pending_asks)]
    pub(crate) max_pending_asks: usize,
    /// Cap on a mailbox message's TTL, in seconds.
    #[arg(long, env = "RELAY_MAX_MAILBOX_TTL_SECS", default_value_t = Limits::default().max_mailbox_ttl.as_secs(),
          value_parser = clap::value_parser!(u64).range(..=MAX_DURATION_SECS))]
    pub(crate) max_mailbox_ttl_secs: u64,
    /// Room lifetime when the creator gives none, in seconds.
    #[arg(long, env = "RELAY_ROOM_TTL_SECS", default_value_t = Limits::default().room_ttl_default.as_secs(),
          value_parser = clap::value_parser!(u64).range(..=MAX_DURATION_SECS))]
    pub(crate) room_ttl_secs: u64,
    /// Longest room lifetime a creator may ask for, in seconds.
    #[arg(long, env = "RELAY_MAX_ROOM_TTL_SECS", default_value_t = Limits::default().room_ttl_max.as_secs(),
          value_parser = clap::value_parser!(u64).range(..=MAX_DURATION_SECS))]
    pub(crate) max_room_ttl_secs: u64,
    /// How long a room waits for a reconnect after its last party dropped, in seconds.
    #[arg(long, env = "RELAY_RECONNECT_GRACE_SECS", default_value_t = Limits::default().reconnect_grace.as_secs(),
          value_parser = clap::value_parser!(u64).range(..=MAX_DURATION_SECS))]
    pub(crate) reconnect_grace_secs: u64,
    /// Frames queued towards one connection before it is closed as a slow consumer;
    /// with `--redis-url`, also a mailbox connection's frames waiting for Redis before
    /// its socket is read more slowly.
    #[arg(long, env = "RELAY_SEND_QUEUE_FRAMES", default_value_t = Limits::default().send_queue_frames)]
    pub(crate) send_queue_frames: usize,
    /// Bytes queued towards one mailbox connection before it is closed as a slow
    /// consumer.
    #[arg(long, env = "RELAY_SEND_QUEUE_BYTES", default_value_t = Limits::default().send_queue_bytes)]
    pub(crate) send_queue_bytes: usize,
    /// Bytes the whole relay may hold for clients: room messages, stored mailbox
    /// messages and send queues, each with its per-entry overhead. Past it room messages
    /// and mailbox publishes are refused and room creation answers 503.
    #[arg(long, env = "RELAY_MAX_HELD_BYTES", default_value_t = Limits::default().max_held_bytes)]
    pub(crate) max_held_bytes: usize,
    /// Live rooms one API key may have created at once (429 `too_many_rooms_for_key`
    /// past it).
    #[arg(long, env = "RELAY_MAX_ROOMS_PER_KEY", default_value_t = Limits::default().max_rooms_per_key)]
    pub(crate) max_rooms_per_key: usize,
    /// A room nobody joined this many seconds after its creation closes (0: never).
    #[arg(long, env = "RELAY_ROOM_JOIN_TIMEOUT_SECS",
          default_value_t = Limits::default().room_join_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(..=MAX_DURATION_SECS))]
    pub(crate) room_join_timeout_secs: u64,
}

fn parse_shards(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("a namespace needs at least one shard".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Longest TTL, lifetime or grace any flag accepts, in seconds (ten years): far past
/// any use, and far from overflowing the clock arithmetic that adds it to now. Over it
/// the relay exits 2 naming the flag.
pub(crate) const MAX_DURATION_SECS: u64 = 10 * 365 * 24 * 60 * 60;

fn parse_prefix(s: &str) -> Result<RoomIdPrefix, String> {
    s.parse().map_err(|e: relay_core::id::RoomIdError| e.to_string())
}

impl LimitArgs {
    fn to_limits(&self) -> Limits {
        Limits {
            max_room_size: self.max_room_size,
            max_rooms: self.max_rooms,
            max_message_bytes: self.max_message_bytes,
            max_room_held_bytes: self.max_room_held_bytes,
            max_namespace_held_bytes: self.max_namespace_held_bytes,
            mailbox_namespace_shards: self.mailbox_namespace_shards,
            max_pending_asks: self.max_pending_asks,
            max_mailbox_ttl: Duration::from_secs(self.max_mailbox_ttl_secs),
            room_ttl_default: Duration::from_secs(self.room_ttl_secs),
            room_ttl_max: Duration::from_secs(self.max_room_ttl_secs),
            reconnect_grace: Duration::from_secs(self.reconnect_grace_secs),
            send_queue_frames: self.send_queue_frames,
            send_queue_bytes: self.send_queue_bytes,
            max_held_bytes: self.max_held_bytes,
            max_rooms_per_key: self.max_rooms_per_key,
            room_join_timeout: Duration::from_secs(self.room_join_timeout_secs),
        }
    }
}

impl Cli {
    /// The server configuration these flags describe.
    pub(crate) fn server_config(&self) -> anyhow::Result<ServerConfig> {
        Ok(ServerConfig {
            limits: self.limits.to_limits(),
            room_id_prefix: self.room_id_prefix,
            api_keys_enforced: !self.insecure_api_keys_not_enforced,
            data_dir: Some(self.discovery.data_dir.clone()),
            discovery: self.discovery.config()?,
            header_read_timeout: Duration::from_secs(self.ops.header_read_timeout_secs),
            body_read_timeout: Duration::from_secs(self.ops.body_read_timeout_secs),
            http2_keep_alive_interval: Duration::from_secs(self.ops.http2_keepalive_interval_secs),
            http2_keep_alive_timeout: Duration::from_secs(self.ops.http2_keepalive_timeout_secs),
            http2_idle_timeout: Duration::from_secs(self.ops.http2_idle_timeout_secs),
            http2_max_concurrent_streams: self.ops.http2_max_concurrent_streams,
            trusted_proxies: TrustedProxies::parse(&self.ops.trusted_proxies.join(","))?,
            proxy_protocol: self.ops.proxy_protocol,
            tls_handshake_timeout: Duration::from_secs(self.ops.tls_handshake_timeout_secs),
            request_timeout: Duration::from_secs(self.ops.request_timeout_secs),
            max_body_bytes: self.ops.max_body_bytes,
            max_connections: self.ops.max_connections,
            max_connections_per_ip: self.ops.max_connections_per_ip,
            busy_poll: Duration::from_micros(self.ops.busy_poll_us),
            lease_check_interval: Duration::from_millis(self.ops.lease_check_interval_ms),
            ws_idle_timeout: Duration::from_secs(self.ops.ws_idle_timeout_secs),
            console: self.ops.console,
            cors_allowed_origins: self.ops.cors_allowed_origins.clone(),
            rate_limits: self.rate_limits.to_rate_limits(),
            turn: self.turn.config()?,
            ..ServerConfig::default()
        })
    }
}

/// Production operations: the config file, TLS, and protection of the accept path.
/// Defaults are [`ServerConfig::default`]'s.
#[derive(Debug, clap::Args)]
pub(crate) struct OpsArgs {
    /// TOML config file. Its keys are the long flag names in snake_case
    /// (`max_room_size = 16`, `listen = ["0.0.0.0:8080"]`); flags and environment
    /// variables win over it.
    #[arg(long, env = "RELAY_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Print the effective configuration (flags, environment, file, defaults) as TOML,
    /// with secrets masked, and exit.
    #[arg(long)]
    pub(crate) print_config: bool,

    /// PEM certificate chain, end-entity certificate first (e.g. Let's Encrypt's
    /// fullchain.pem). With --key-path, serve HTTPS/WSS; SIGHUP reloads both files.
    #[arg(
        long,
        env = "RELAY_CHAIN_PATH",
        value_name = "FILE",
        requires = "key_path",
        visible_alias = "cert-file"
    )]
    pub(crate) chain_path: Option<PathBuf>,

    /// PEM private key matching the first certificate of --chain-path (PKCS#8,
    /// PKCS#1 or SEC1).
    #[arg(
        long,
        env = "RELAY_KEY_PATH",
        value_name = "FILE",
        requires = "chain_path",
        visible_alias = "key-file"
    )]
    pub(crate) key_path: Option<PathBuf>,

    /// Seconds from a connection's accept until its first request must have arrived
    /// whole (TLS handshake, PROXY header, HTTP/1 head or HTTP/2 request headers), and
    /// for each later HTTP/1 request head; past it the connection is closed unanswered.
    #[arg(long, env = "RELAY_HEADER_READ_TIMEOUT_SECS",
          default_value_t = ServerConfig::default().header_read_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) header_read_timeout_secs: u64,

    /// Seconds a REST request body may take to arrive once its handler reads it (after
    /// the credentials are checked); past it, 408 request_timeout and the connection is
    /// closed.
    #[arg(long, env = "RELAY_BODY_READ_TIMEOUT_SECS",
          default_value_t = ServerConfig::default().body_read_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) body_read_timeout_secs: u64,

    /// Seconds between HTTP/2 keep-alive pings.
    #[arg(long, env = "RELAY_HTTP2_KEEPALIVE_INTERVAL_SECS",
          default_value_t = ServerConfig::default().http2_keep_alive_interval.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) http2_keepalive_interval_secs: u64,

    /// Seconds an HTTP/2 peer has to answer a keep-alive ping before its connection is
    /// closed.
    #[arg(long, env = "RELAY_HTTP2_KEEPALIVE_TIMEOUT_SECS",
          default_value_t = ServerConfig::default().http2_keep_alive_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) http2_keepalive_timeout_secs: u64,

    /// Seconds a connection with no request in flight is kept (HTTP/2; an idle HTTP/1
    /// connection meets the header read timeout first, WebSockets have their own).
    #[arg(long, env = "RELAY_HTTP2_IDLE_TIMEOUT_SECS",
          default_value_t = ServerConfig::default().http2_idle_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) http2_idle_timeout_secs: u64,

    /// HTTP/2 streams (requests) one connection may have open at once.
    #[arg(long, env = "RELAY_HTTP2_MAX_CONCURRENT_STREAMS",
          default_value_t = ServerConfig::default().http2_max_concurrent_streams,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) http2_max_concurrent_streams: u32,

    /// Proxies whose forwarding headers are believed (CIDR ranges or addresses,
    /// comma-separated or repeated). From them the client address comes from
    /// X-Forwarded-For (the right-most entry not itself trusted) or X-Real-IP; per-address
    /// limits and logs use it. Empty (the default): the headers are ignored.
    #[arg(long, env = "RELAY_TRUSTED_PROXIES", value_name = "CIDR", value_delimiter = ',',
          value_parser = parse_trusted_proxy)]
    pub(crate) trusted_proxies: Vec<String>,

    /// Every connection starts with a PROXY protocol v2 header (HAProxy's
    /// send-proxy-v2) naming the client; only peers in --trusted-proxies may connect,
    /// and a connection without a valid header is closed.
    #[arg(long, env = "RELAY_PROXY_PROTOCOL", requires = "trusted_proxies")]
    pub(crate) proxy_protocol: bool,

    /// Seconds a REST request may take, reading its body included, before it is answered
    /// 408 request_timeout. WebSockets are not bound by it.
    #[arg(long, env = "RELAY_REQUEST_TIMEOUT_SECS",
          default_value_t = ServerConfig::default().request_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) request_timeout_secs: u64,

    /// Largest REST request body in bytes; over it, 413 body_too_large.
    #[arg(long, env = "RELAY_MAX_BODY_BYTES",
          default_value_t = ServerConfig::default().max_body_bytes,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) max_body_bytes: usize,

    /// Seconds a client has to complete the TLS handshake after connecting.
    #[arg(long, env = "RELAY_TLS_HANDSHAKE_TIMEOUT_SECS",
          default_value_t = ServerConfig::default().tls_handshake_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) tls_handshake_timeout_secs: u64,

    /// Connections open at once, across all listeners (WebSockets included). Past it,
    /// new connections are accepted and closed at once. Keep it below the open-file
    /// limit (ulimit -n / LimitNOFILE).
    #[arg(long, env = "RELAY_MAX_CONNECTIONS",
          default_value_t = ServerConfig::default().max_connections,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) max_connections: usize,

    /// Connections one client address (IPv6: one /64) may hold open at once,
    /// WebSockets included. Past it, a new connection from that address is accepted
    /// and closed at once, while other addresses are served.
    #[arg(long, env = "RELAY_MAX_CONNECTIONS_PER_IP",
          default_value_t = ServerConfig::default().max_connections_per_ip,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) max_connections_per_ip: usize,

    /// Milliseconds between a WebSocket's checks of its API key (revoked or expired:
    /// closed with 1008) and, for a room's mailbox, of its room (closed: the socket
    /// ends). From 50 to 4000, so a revocation reaches live sockets within 5 s.
    #[arg(long, env = "RELAY_LEASE_CHECK_INTERVAL_MS",
          default_value_t = ServerConfig::default().lease_check_interval.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(50..=4000))]
    pub(crate) lease_check_interval_ms: u64,

    /// Seconds a WebSocket may go without sending anything (not even a pong) before it
    /// is closed, and that a write to it may stay blocked on a peer that stopped
    /// reading before it is closed as a slow consumer (1013; a room party's slot is
    /// kept for a resume). From 1 to 3600.
    #[arg(long, env = "RELAY_WS_IDLE_TIMEOUT_SECS",
          default_value_t = ServerConfig::default().ws_idle_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) ws_idle_timeout_secs: u64,

    /// Microseconds the runtime's workers keep polling for the next WebSocket frame,
    /// after one arrives, instead of sleeping (busy polling). Lowers message latency by
    /// a thread wake-up, at the cost of CPU spinning while traffic flows; a spinner
    /// yields its CPU to any other thread that wants it. 0 (the default) turns it off;
    /// at most 10000. See docs/operations.md, "Busy polling".
    #[arg(long, env = "RELAY_BUSY_POLL_US", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=relay_transport::MAX_BUSY_POLL.as_micros() as u64))]
    pub(crate) busy_poll_us: u64,

    /// Serve the operator console at /console (docs/console.md): keys, live rooms,
    /// usage, discovery and health, signed in with the admin token, which every data
    /// call needs. `--console false` turns it off (the paths answer 404).
    #[arg(long, env = "RELAY_CONSOLE", value_name = "BOOL", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub(crate) console: bool,
    /// Origins (scheme://host[:port]) whose browser pages may use this relay: the REST
    /// API answers them CORS headers, and browser WebSocket handshakes from any other
    /// Origin are refused with 403 origin_not_allowed. Comma-separated or repeated; `*`
    /// allows every origin. Empty (the default): no CORS headers, and WebSockets from
    /// any origin are accepted.
    #[arg(long, env = "RELAY_CORS_ALLOWED_ORIGINS", value_name = "ORIGIN", value_delimiter = ',',
          value_parser = parse_origin)]
    pub(crate) cors_allowed_origins: Vec<String>,
}

/// An origin as browsers send it in `Origin`: `scheme://host[:port]`, no path; or `*`.
/// One `--trusted-proxies` entry, checked: a CIDR range or an address.
fn parse_trusted_proxy(s: &str) -> Result<String, String> {
    TrustedProxies::parse(s).map(|_| s.trim().to_owned()).map_err(|e| e.to_string())
}

fn parse_origin(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    if s == "*" {
        return Ok(s.to_owned());
    }
    let host = s
        .split_once("://")
        .filter(|(scheme, _)| {
            !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        })
        .map(|(_, rest)| rest)
        .ok_or_else(|| {
            format!("{s:?} is not an origin: expected scheme://host[:port], e.g. https://app.example")
        })?;
    if host.is_empty() || host.contains(['/', '?', '#', ' ', ',']) || !s.is_ascii() {
        return Err(format!("{s:?} is not an origin: expected scheme://host[:port] without a path"));
    }
    Ok(s.to_owned())
}

/// Rate limits (docs/operations.md, "Rate limits"): a sustained rate per second and a
/// burst for each. A rate of 0 turns that limit off. Defaults are
/// [`RateLimits::default`]'s.
#[derive(Debug, clap::Args)]
pub(crate) struct RateLimitArgs {
    /// New connections per second from one client address (IPv6: per /64). Over it, a
    /// connection is closed at once without a response. 0 disables.
    #[arg(long, env = "RELAY_RATE_LIMIT_CONNECTIONS_PER_IP",
          default_value_t = RateLimits::default().connections_per_ip.per_second)]
    pub(crate) rate_limit_connections_per_ip: u32,
    /// New connections one client address may open at once after a quiet period.
    #[arg(long, env = "RELAY_RATE_LIMIT_CONNECTIONS_PER_IP_BURST",
          default_value_t = RateLimits::default().connections_per_ip.burst,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) rate_limit_connections_per_ip_burst: u32,
    /// HTTP requests (WebSocket handshakes included) per second from one client
    /// address. Over it: 429 with Retry-After. 0 disables.
    #[arg(long, env = "RELAY_RATE_LIMIT_REQUESTS_PER_IP",
          default_value_t = RateLimits::default().requests_per_ip.per_second)]
    pub(crate) rate_limit_requests_per_ip: u32,
    /// HTTP requests one client address may make at once after a quiet period.
    #[arg(long, env = "RELAY_RATE_LIMIT_REQUESTS_PER_IP_BURST",
          default_value_t = RateLimits::default().requests_per_ip.burst,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) rate_limit_requests_per_ip_burst: u32,
    /// Room creations and keyed mailbox WebSocket opens per second per API key (when
    /// keys are enforced). Over it: 429 with Retry-After. 0 disables.
    #[arg(long, env = "RELAY_RATE_LIMIT_PER_KEY",
          default_value_t = RateLimits::default().per_key.per_second)]
    pub(crate) rate_limit_per_key: u32,
    /// Room creations and keyed WebSocket opens one API key may make at once.
    #[arg(long, env = "RELAY_RATE_LIMIT_PER_KEY_BURST",
          default_value_t = RateLimits::default().per_key.burst,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) rate_limit_per_key_burst: u32,
    /// Messages per second one WebSocket may send (any frame). Over it, the WebSocket
    /// is closed with 1013. 0 disables.
    #[arg(long, env = "RELAY_RATE_LIMIT_WS_MESSAGES",
          default_value_t = RateLimits::default().ws_messages.per_second)]
    pub(crate) rate_limit_ws_messages: u32,
    /// Messages one WebSocket may send at once.
    #[arg(long, env = "RELAY_RATE_LIMIT_WS_MESSAGES_BURST",
          default_value_t = RateLimits::default().ws_messages.burst,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) rate_limit_ws_messages_burst: u32,
    /// Client addresses (and, separately, API keys) tracked at most; bounds the
    /// limiters' memory. Idle entries are dropped first when the table is full.
    #[arg(long, env = "RELAY_RATE_LIMIT_TRACKED",
          default_value_t = RateLimits::default().max_tracked,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) rate_limit_tracked: usize,
}

impl RateLimitArgs {
    fn to_rate_limits(&self) -> RateLimits {
        RateLimits {
            connections_per_ip: Rate::new(
                self.rate_limit_connections_per_ip,
                self.rate_limit_connections_per_ip_burst,
            ),
            requests_per_ip: Rate::new(
                self.rate_limit_requests_per_ip,
                self.rate_limit_requests_per_ip_burst,
            ),
            per_key: Rate::new(self.rate_limit_per_key, self.rate_limit_per_key_burst),
            ws_messages: Rate::new(self.rate_limit_ws_messages, self.rate_limit_ws_messages_burst),
            max_tracked: self.rate_limit_tracked,
        }
    }
}
