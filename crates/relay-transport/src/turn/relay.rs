//! Relayed sockets. When an Allocate passes, the webrtc-rs server asks the listener's
//! [`Generator`] for a UDP socket; it binds one in `--turn-ports` on the relay IP and
//! hands back a [`RelayedSocket`] around it, which is where Relay's rules apply to every
//! datagram between the allocation and its peers:
//! - peers in refused ranges ([`super::PeerPolicy`]) are never sent to, and their
//!   datagrams are dropped (the crate has no hook to refuse the CreatePermission itself);
//! - each allocation relays at most `allocation_bytes_per_sec` (a token bucket holding
//!   one second's worth); datagrams over it are dropped;
//! - relayed bytes count as the key's usage and on `/metrics`;
//! - a key holds at most `max_allocations_per_key` sockets at once: a slot is taken
//!   here and given back when the allocation drops its socket.
//!
//! The generator learns whose Allocate it serves from the auth handler of the same
//! listener ([`super::auth::LastUser`]): the crate handles one listener's requests one
//! at a time, authenticating an Allocate just before asking for its socket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use webrtc_util::Conn;

use super::auth::{LastUser, key_of};
use super::{PeerPolicy, TurnConfig};
use crate::caller::UsageMeter;
use crate::metrics::TurnCounters;
use crate::state::AppState;

/// How many random ports an Allocate tries before it answers 508.
const PORT_ATTEMPTS: usize = 16;

/// What every listener's generator shares: the allocation count of each key.
#[derive(Clone)]
pub(crate) struct Shared {
    state: AppState,
    allocations: Arc<Mutex<HashMap<String, usize>>>,
}

impl Shared {
    pub(crate) fn new(state: &AppState) -> Shared {
        Shared { state: state.clone(), allocations: Arc::default() }
    }

    fn config(&self) -> &TurnConfig {
        &self.state.config().turn
    }

    /// Takes one of `user`'s allocation slots (a key name, or the static user's name),
    /// or `None` when it holds its maximum.
    fn take_slot(&self, user: &str) -> Option<AllocationSlot> {
        let mut counts = self.allocations.lock().unwrap_or_else(PoisonError::into_inner);
        let held = counts.entry(user.to_owned()).or_default();
        if *held >= self.config().max_allocations_per_key {
            return None;
        }
        *held += 1;
        Some(AllocationSlot { counts: self.allocations.clone(), user: user.to_owned() })
    }
}

/// One of a key's allocation slots, given back on drop.
struct AllocationSlot {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Drop for AllocationSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = counts.get_mut(&self.user) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// The relayed-socket generator of one listener.
pub(crate) struct Generator {
    shared: Shared,
    last_user: LastUser,
}

impl Generator {
    pub(crate) fn new(shared: &Shared, last_user: LastUser) -> Generator {
        Generator { shared: shared.clone(), last_user }
    }

    /// Binds a UDP socket on a random port of the range (or `requested_port`).
    async fn bind(&self, ip: IpAddr, requested_port: u16) -> Result<UdpSocket, ::turn::Error> {
        if requested_port != 0 {
            return UdpSocket::bind((ip, requested_port)).await.map_err(io_error);
        }
        let ports = self.shared.config().ports.clone();
        let span = u32::from(*ports.end()) - u32::from(*ports.start()) + 1;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = *ports.start() + (rand_u32() % span) as u16;
            match UdpSocket::bind((ip, port)).await {
                Ok(socket) => return Ok(socket),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or(::turn::Error::ErrMaxRetriesExceeded, io_error))
    }
}

#[async_trait]
impl ::turn::relay::RelayAddressGenerator for Generator {
    fn validate(&self) -> Result<(), ::turn::Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), ::turn::Error> {
        let config = self.shared.config();
        let user = self.last_user.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default();
        let counters = self.shared.state.metrics().turn().clone();
        // Counted per key, not per username: minting new credentials does not buy more.
        let key = key_of(&user);
        let Some(slot) = self.shared.take_slot(key.as_deref().unwrap_or(&user)) else {
            counters.allocations_refused.inc();
            tracing::info!(
                max = config.max_allocations_per_key,
                "TURN: allocation refused, key at its maximum"
            );
            return Err(::turn::Error::Other("allocation quota reached".to_owned()));
        };
        let bind_ip = config.relay_ip().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        if bind_ip.is_ipv4() != use_ipv4 {
            return Err(::turn::Error::Other("address family not served".to_owned()));
        }
        let socket = self.bind(bind_ip, requested_port).await?;
        let mut relayed = socket.local_addr().map_err(io_error)?;
        if let Some(public) = config.advertised_ip() {
            relayed.set_ip(public);
        }
        let meter = UsageMeter(self.shared.state.keystore().cloned().zip(key));
        counters.allocations.inc();
        let rate = config.allocation_bytes_per_sec;
        let conn = RelayedSocket {
            socket,
            policy: config.peers,
            meter,
            counters,
            bucket: Mutex::new(Bucket { tokens: rate as f64, at: Instant::now() }),
            rate,
            _slot: slot,
        };
        Ok((Arc::new(conn), relayed))
    }
}

/// Bytes an allocation may still relay, refilled at `allocation_bytes_per_sec`.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A relayed socket with Relay's rules (see the module docs).
struct RelayedSocket {
    socket: UdpSocket,
    policy: PeerPolicy,
    meter: UsageMeter,
    counters: TurnCounters,
    bucket: Mutex<Bucket>,
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    _slot: AllocationSlot,
}

impl RelayedSocket {
    /// Whether a datagram of `len` bytes to or from `peer` may pass; counts it if so.
    fn admit(&self, peer: SocketAddr, len: usize) -> bool {
        if !self.policy.allows(peer.ip()) {
            self.counters.peers_refused.inc();
            return false;
        }
        if self.rate > 0 {
            let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let rate = self.rate as f64;
            let refill = now.duration_since(bucket.at).as_secs_f64() * rate;
            bucket.tokens = (bucket.tokens + refill).min(rate);
            bucket.at = now;
            if bucket.tokens < len as f64 {
                self.counters.over_bandwidth.inc();
                return false;
            }
            bucket.tokens -= len as f64;
        }
        self.counters.relayed_bytes.inc_by(len as u64);
        self.meter.add(0, len as u64, 0);
        true
    }
}

#[async_trait]
impl Conn for RelayedSocket {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, peer) = self.socket.recv_from(buf).await?;
            if self.admit(peer, n) {
                return Ok((n, peer));
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if !self.admit(target, buf.len()) {
            // Dropped, as the network would: the client learns nothing it could probe with.
            return Ok(buf.len());
        }
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

fn io_error(e: std::io::Error) -> ::turn::Error {
    ::turn::Error::Other(e.to_string())
}

/// A random number for picking ports (not a secret).
fn rand_u32() -> u32 {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 4];
    // The system RNG does not fail on the platforms we run on; a fixed port on failure
    // only makes the next attempt likelier to collide.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServerConfig;

    fn state(turn: TurnConfig) -> AppState {
        AppState::new(ServerConfig { turn, ..ServerConfig::default() }).unwrap()
    }

    #[tokio::test]
    async fn a_key_holds_at_most_its_allocations_and_gets_them_back() {
        let shared = Shared::new(&state(TurnConfig { max_allocations_per_key: 2, ..TurnConfig::default() }));
        let first = shared.take_slot("k").unwrap();
        let _second = shared.take_slot("k").unwrap();
        assert!(shared.take_slot("k").is_none());
        assert!(shared.take_slot("other").is_some(), "limits are per key");
        drop(first);
        assert!(shared.take_slot("k").is_some());
    }

    #[tokio::test]
    async fn datagrams_over_the_bandwidth_or_to_refused_peers_are_dropped() {
        let state = state(TurnConfig::default());
        let socket = RelayedSocket {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            policy: PeerPolicy::default(),
            meter: UsageMeter::default(),
            counters: state.metrics().turn().clone(),
            bucket: Mutex::new(Bucket { tokens: 1000.0, at: Instant::now() }),
            rate: 1000,
            _slot: Shared::new(&state).take_slot("1:k").unwrap(),
        };
        let public: SocketAddr = "8.8.8.8:5000".parse().unwrap();
        assert!(socket.admit(public, 600));
        assert!(!socket.admit(public, 600), "over 1000 bytes in the same second");
        assert!(!socket.admit("127.0.0.1:5000".parse().unwrap(), 1));
        assert!(!socket.admit("10.0.0.1:5000".parse().unwrap(), 1));
        let counters = state.metrics().turn();
        assert_eq!(counters.relayed_bytes.get(), 600);
        assert_eq!(counters.over_bandwidth.get(), 1);
        assert_eq!(counters.peers_refused.get(), 2);
    }
}
