//! The embedded STUN/TURN server (RFC 5389, RFC 5766/8656), off by default: a browser
//! that finds its peers through Relay can also reach them through it when a direct
//! path fails, with short-lived credentials minted from an API key
//! (`GET /v1/turn/credentials`, see [`crate::api::turn`]).
//!
//! Built on webrtc-rs's `turn` crate (MIT/Apache-2.0, tokio), which does the STUN and
//! TURN message handling, nonces, allocations, permissions and channels. What Relay adds
//! around it, through the crate's two seams (the auth handler and the relayed-socket
//! generator):
//!
//! | module | what |
//! |---|---|
//! | `credentials` | the TURN REST scheme: username `<expiry>:<key>`, HMAC-SHA1 password |
//! | `auth` | who may use TURN: unexpired REST usernames of live keys, Disco's static user |
//! | `peers` | which peer addresses are refused (loopback, private, link-local) |
//! | `relay` | relayed sockets: port range, allocations per key, bandwidth, usage, metrics |
//! | `tcp` | TURN over TCP: frames from many TCP connections fed to one server loop |
//!
//! The server is started by [`TurnServer::start`] when [`TurnConfig::listen`] is set
//! and stopped by [`TurnServer::close`]; a task checks the keys of live allocations
//! every [`TurnConfig::key_check_interval`] and ends those whose key was revoked.

mod auth;
pub(crate) mod credentials;
mod peers;
mod relay;
mod tcp;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

pub use peers::PeerPolicy;

use crate::error::TransportError;
use crate::state::AppState;

/// The STUN/TURN server's configuration. Off unless `listen` is set.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// Where STUN/TURN listens, on UDP and TCP (`--turn-listen`, e.g. `0.0.0.0:3478`);
    /// `None` (the default) runs no TURN server.
    pub listen: Option<SocketAddr>,
    /// The address relayed sockets bind (`--turn-relay-ip`); default: the listen IP.
    pub relay_ip: Option<IpAddr>,
    /// The address told to clients, in relayed addresses and in the credentials' URIs,
    /// for a host behind NAT (`--turn-public-ip`); default: the relay IP. Required when
    /// the relay IP is unspecified (0.0.0.0).
    pub public_ip: Option<IpAddr>,
    /// Ports of relayed sockets (`--turn-ports`, default 49152-65535): open them, UDP,
    /// in the firewall.
    pub ports: RangeInclusive<u16>,
    /// The STUN realm (`--turn-realm`, default `relay`).
    pub realm: String,
    /// The shared secret of REST credentials (`--turn-secret`); `None` generates one at
    /// start, so credentials do not survive a restart and differ per instance: set it
    /// when several instances serve one app.
    pub secret: Option<String>,
    /// How long minted credentials are valid (default 86,400 s).
    pub credential_ttl: Duration,
    /// Disco's single static user (`--ice-username`, `--ice-password`), kept for Disco's
    /// clients; `None` (the default) has none.
    pub static_user: Option<(String, String)>,
    /// Live allocations one API key may hold at once (default 10); past it, Allocate
    /// answers 508. The static user counts as one key.
    pub max_allocations_per_key: usize,
    /// Bytes per second one allocation may relay, both ways together (default
    /// 1,000,000; 0 = unlimited); datagrams over it are dropped, as a congested link would.
    pub allocation_bytes_per_sec: u64,
    /// Peer ranges allowed beyond the public internet.
    pub peers: PeerPolicy,
    /// How often the keys of live allocations are checked; a revoked or expired key's
    /// allocations end within this long (default 2 s).
    pub key_check_interval: Duration,
    /// TURN-over-TCP connections served at once (default 1,000); past it, new ones are
    /// closed at once.
    pub max_tcp_connections: usize,
    /// A TURN-over-TCP connection that sends nothing for this long is closed (default
    /// 10 minutes, an allocation's default lifetime: a live client refreshes sooner).
    pub tcp_idle_timeout: Duration,
}

impl Default for TurnConfig {
    fn default() -> TurnConfig {
        TurnConfig {
            listen: None,
            relay_ip: None,
            public_ip: None,
            ports: 49152..=65535,
            realm: "relay".to_owned(),
            secret: None,
            credential_ttl: Duration::from_secs(86_400),
            static_user: None,
            max_allocations_per_key: 10,
            allocation_bytes_per_sec: 1_000_000,
            peers: PeerPolicy::default(),
            key_check_interval: Duration::from_secs(2),
            max_tcp_connections: 1_000,
            tcp_idle_timeout: Duration::from_secs(600),
        }
    }
}

impl TurnConfig {
    /// The IP relayed sockets bind.
    pub fn relay_ip(&self) -> Option<IpAddr> {
        self.relay_ip.or(self.listen.map(|l| l.ip()))
    }

    /// The IP clients are told, if one is known without the request's `Host`.
    pub fn advertised_ip(&self) -> Option<IpAddr> {
        self.public_ip.or(self.relay_ip().filter(|ip| !ip.is_unspecified()))
    }

    /// Refuses a configuration the server cannot run with.
    pub fn validate(&self) -> Result<(), TransportError> {
        let Some(_) = self.listen else { return Ok(()) };
        let bad = |m: String| Err(TransportError::Config(m));
        if self.ports.is_empty() || *self.ports.start() == 0 {
            return bad(format!(
                "--turn-ports {}-{}: need 1 <= low <= high <= 65535",
                self.ports.start(),
                self.ports.end()
            ));
        }
        if self.advertised_ip().is_none() {
            return bad("--turn-public-ip is required when TURN relays on an unspecified address \
                        (0.0.0.0 or ::): clients must be told a reachable one"
                .to_owned());
        }
        if self.realm.is_empty() {
            return bad("--turn-realm must not be empty".to_owned());
        }
        if let Some((user, pass)) = &self.static_user
            && (user.is_empty() || pass.is_empty())
        {
            return bad("--ice-username and --ice-password must both be set, non-empty".to_owned());
        }
        Ok(())
    }

    /// The STUN and TURN URIs for `host` (the advertised IP, or the request's host).
    pub(crate) fn uris(&self, host: &str) -> Vec<String> {
        let port = self.listen.map_or(3478, |l| l.port());
        vec![
            format!("turn:{host}:{port}?transport=udp"),
            format!("turn:{host}:{port}?transport=tcp"),
            format!("stun:{host}:{port}"),
        ]
    }
}

/// A running STUN/TURN server: one webrtc-rs server loop for UDP, one for TCP, and the
/// key check. Stop it with [`TurnServer::close`].
pub struct TurnServer {
    servers: Vec<Arc<::turn::server::Server>>,
    tcp: Arc<tcp::TcpMux>,
    key_check: JoinHandle<()>,
    local_addr: SocketAddr,
}

impl TurnServer {
    /// Starts the TURN server of `state`'s configuration, or returns `None` when it has
    /// no `turn.listen`. Binds UDP and TCP at once, so a taken port fails here.
    pub async fn start(state: &AppState) -> Result<Option<TurnServer>, TransportError> {
        let config = &state.config().turn;
        let Some(listen) = config.listen else { return Ok(None) };
        config.validate()?;
        let bind_err = |proto: &str, e: std::io::Error| {
            TransportError::Config(format!("cannot listen for TURN on {proto} {listen}: {e}"))
        };
        let udp = UdpSocket::bind(listen).await.map_err(|e| bind_err("udp", e))?;
        let local_addr = udp.local_addr().map_err(|e| bind_err("udp", e))?;
        let tcp_listener = TcpListener::bind(local_addr).await.map_err(|e| bind_err("tcp", e))?;
        let tcp = tcp::TcpMux::start(tcp_listener, config.max_tcp_connections, config.tcp_idle_timeout);
        let shared = relay::Shared::new(state);
        let mut servers = Vec::new();
        let conns: [Arc<dyn webrtc_util::Conn + Send + Sync>; 2] = [Arc::new(udp), tcp.clone()];
        for conn in conns {
            // One server per listener: the crate handles a listener's requests one at a
            // time, so the user its auth handler just accepted is the one whose
            // Allocate the generator serves (see `relay::Generator`).
            let last_user = Arc::new(std::sync::Mutex::new(None));
            let server = ::turn::server::Server::new(::turn::server::config::ServerConfig {
                conn_configs: vec![::turn::server::config::ConnConfig {
                    conn,
                    relay_addr_generator: Box::new(relay::Generator::new(&shared, last_user.clone())),
                }],
                realm: config.realm.clone(),
                auth_handler: Arc::new(auth::Auth::new(state, last_user)),
                channel_bind_timeout: Duration::ZERO,
                alloc_close_notify: None,
            })
            .await
            .map_err(|e| TransportError::Config(format!("cannot start the TURN server: {e}")))?;
            servers.push(Arc::new(server));
        }
        let key_check = tokio::spawn(check_keys(state.clone(), servers.clone()));
        tracing::info!(%local_addr, realm = config.realm.as_str(), "STUN/TURN listening (udp, tcp)");
        Ok(Some(TurnServer { servers, tcp, key_check, local_addr }))
    }

    /// The address STUN/TURN listens on (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the server: every allocation ends, the listeners close.
    pub async fn close(self) {
        self.key_check.abort();
        for server in &self.servers {
            if let Err(e) = server.close().await {
                tracing::debug!("closing the TURN server: {e}");
            }
        }
        self.tcp.shut();
    }
}

/// Every `key_check_interval`, ends the allocations whose username no longer passes
/// (its key revoked, expired or removed), so revoking a key ends its TURN use.
async fn check_keys(state: AppState, servers: Vec<Arc<::turn::server::Server>>) {
    let mut tick = tokio::time::interval(state.config().turn.key_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for server in &servers {
            let Ok(infos) = server.get_allocations_info(None).await else { return };
            let users: HashSet<String> = infos.into_values().map(|i| i.username).collect();
            for user in users {
                if !auth::key_still_allowed(&state, &user) {
                    tracing::info!("TURN: ending the allocations of a revoked or expired key");
                    let _ = server.delete_allocations_by_username(user).await;
                }
            }
        }
    }
}
