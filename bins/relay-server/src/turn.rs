//! STUN/TURN flags (docs/turn.md): where the embedded server listens and relays, the
//! REST credentials' secret, Disco's static user, limits and the peer ranges allowed.
//! Defaults are [`TurnConfig::default`]'s. Disco's `--ice-port` (a bare port) is
//! accepted by `--turn-listen`, `--realm` and `--address` as aliases.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use anyhow::bail;
use relay_transport::{PeerPolicy, TurnConfig};

use crate::discovery::parse_duration;

/// STUN/TURN flags. TURN is off unless `--turn-listen` (or `--ice-port`) is given.
#[derive(Debug, clap::Args)]
pub(crate) struct TurnArgs {
    /// Run the embedded STUN/TURN server on this address, UDP and TCP (e.g.
    /// 0.0.0.0:3478). A bare port means 0.0.0.0:PORT (Disco's --ice-port). Off by default.
    #[arg(long, env = "RELAY_TURN_LISTEN", visible_alias = "ice-port", value_name = "ADDR",
          value_parser = parse_listen)]
    pub(crate) turn_listen: Option<SocketAddr>,

    /// The address relayed sockets bind. Default: the --turn-listen IP.
    #[arg(long, env = "RELAY_TURN_RELAY_IP", value_name = "IP")]
    pub(crate) turn_relay_ip: Option<IpAddr>,

    /// The address told to clients (relayed addresses, credential URIs), for a host
    /// behind NAT. Default: the relay IP; required when that is 0.0.0.0.
    #[arg(long, env = "RELAY_TURN_PUBLIC_IP", visible_alias = "address", value_name = "IP")]
    pub(crate) turn_public_ip: Option<IpAddr>,

    /// UDP ports of relayed sockets, LOW-HIGH. Open them in the firewall.
    #[arg(long, env = "RELAY_TURN_PORTS", value_name = "LOW-HIGH", default_value = "49152-65535",
          value_parser = parse_ports)]
    pub(crate) turn_ports: RangeInclusive<u16>,

    /// The STUN/TURN realm.
    #[arg(long, env = "RELAY_TURN_REALM", visible_alias = "realm",
          default_value_t = TurnConfig::default().realm)]
    pub(crate) turn_realm: String,

    /// Shared secret of the REST credentials (GET /v1/turn/credentials). Without it, a
    /// random one is generated at each start: credentials then end with the process and
    /// differ between instances. Set the same secret on every instance of an app.
    #[arg(long, env = "RELAY_TURN_SECRET", hide_env_values = true, value_name = "SECRET")]
    pub(crate) turn_secret: Option<String>,

    /// How long minted TURN credentials are valid (90s, 1h, 24h; a bare number is seconds).
    #[arg(long, env = "RELAY_TURN_CREDENTIAL_TTL", default_value = "24h", value_parser = parse_duration)]
    pub(crate) turn_credential_ttl: Duration,

    /// Disco's static TURN user: the only username besides REST credentials (with
    /// --ice-password).
    #[arg(long, env = "RELAY_ICE_USERNAME", requires = "ice_password")]
    pub(crate) ice_username: Option<String>,

    /// The static TURN user's password (with --ice-username).
    #[arg(long, env = "RELAY_ICE_PASSWORD", hide_env_values = true, requires = "ice_username")]
    pub(crate) ice_password: Option<String>,

    /// Live TURN allocations one API key may hold; past it, Allocate answers 508.
    #[arg(long, env = "RELAY_TURN_MAX_ALLOCATIONS_PER_KEY",
          default_value_t = TurnConfig::default().max_allocations_per_key,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) turn_max_allocations_per_key: usize,

    /// Bytes per second one TURN allocation may relay (both ways); datagrams over it are
    /// dropped. 0 = unlimited.
    #[arg(long, env = "RELAY_TURN_ALLOCATION_BYTES_PER_SEC",
          default_value_t = TurnConfig::default().allocation_bytes_per_sec)]
    pub(crate) turn_allocation_bytes_per_sec: u64,

    /// Let TURN relay to loopback peers (127.0.0.0/8, ::1). For tests and one-host setups.
    #[arg(long, env = "RELAY_TURN_ALLOW_LOOPBACK_PEERS")]
    pub(crate) turn_allow_loopback_peers: bool,

    /// Let TURN relay to private and link-local peers (10/8, 172.16/12, 192.168/16,
    /// 100.64/10, 169.254/16, fc00::/7, fe80::/10). Only for a relay inside a private network.
    #[arg(long, env = "RELAY_TURN_ALLOW_PRIVATE_PEERS")]
    pub(crate) turn_allow_private_peers: bool,

    /// How often the keys of live TURN allocations are checked; a revoked key's
    /// allocations end within this long.
    #[arg(long, env = "RELAY_TURN_KEY_CHECK_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub(crate) turn_key_check_interval: Duration,

    /// TURN-over-TCP connections served at once; past it, new ones are closed.
    #[arg(long, env = "RELAY_TURN_MAX_TCP_CONNECTIONS",
          default_value_t = TurnConfig::default().max_tcp_connections,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) turn_max_tcp_connections: usize,

    /// A TURN-over-TCP connection that sends nothing for this long is closed (a live
    /// client refreshes its allocation sooner).
    #[arg(long, env = "RELAY_TURN_TCP_IDLE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub(crate) turn_tcp_idle_timeout: Duration,
}

impl TurnArgs {
    /// The transport's TURN settings, checked.
    pub(crate) fn config(&self) -> anyhow::Result<TurnConfig> {
        if self.turn_key_check_interval.is_zero() {
            bail!("--turn-key-check-interval must be more than zero");
        }
        if self.turn_tcp_idle_timeout < Duration::from_secs(1) {
            bail!("--turn-tcp-idle-timeout must be at least 1s");
        }
        if self.turn_credential_ttl < Duration::from_secs(60) {
            bail!("--turn-credential-ttl must be at least 60s");
        }
        let config = TurnConfig {
            listen: self.turn_listen,
            relay_ip: self.turn_relay_ip,
            public_ip: self.turn_public_ip,
            ports: self.turn_ports.clone(),
            realm: self.turn_realm.clone(),
            secret: self.turn_secret.clone().filter(|s| !s.is_empty()),
            credential_ttl: self.turn_credential_ttl,
            static_user: self.ice_username.clone().zip(self.ice_password.clone()),
            max_allocations_per_key: self.turn_max_allocations_per_key,
            allocation_bytes_per_sec: self.turn_allocation_bytes_per_sec,
            peers: PeerPolicy {
                allow_loopback: self.turn_allow_loopback_peers,
                allow_private: self.turn_allow_private_peers,
            },
            key_check_interval: self.turn_key_check_interval,
            max_tcp_connections: self.turn_max_tcp_connections,
            tcp_idle_timeout: self.turn_tcp_idle_timeout,
        };
        config.validate()?;
        Ok(config)
    }
}

/// `ADDR`, or a bare port for 0.0.0.0:PORT (Disco's `--ice-port`).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    s.parse().map_err(|_| format!("{s:?} is not ADDR:PORT (e.g. 0.0.0.0:3478) or a port"))
}

/// `LOW-HIGH`, 1 <= LOW <= HIGH <= 65535.
fn parse_ports(s: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || format!("{s:?} is not a port range LOW-HIGH (e.g. 49152-65535)");
    let (low, high) = s.split_once('-').ok_or_else(bad)?;
    let (low, high) =
        (low.trim().parse::<u16>().map_err(|_| bad())?, high.trim().parse::<u16>().map_err(|_| bad())?);
    if low == 0 || low > high {
        return Err(bad());
    }
    Ok(low..=high)
}

#[cfg(test)]
mod tests {
    use super::{parse_listen, parse_ports};

    #[test]
    fn listen_takes_an_address_or_disco_s_bare_port() {
        assert_eq!(parse_listen("3478").unwrap().to_string(), "0.0.0.0:3478");
        assert_eq!(parse_listen("127.0.0.1:3479").unwrap().to_string(), "127.0.0.1:3479");
        assert!(parse_listen("nowhere").is_err());
    }

    #[test]
    fn port_ranges_are_checked() {
        assert_eq!(parse_ports("49152-65535").unwrap(), 49152..=65535);
        assert_eq!(parse_ports("5000-5000").unwrap(), 5000..=5000);
        for bad in ["0-10", "10-5", "10", "a-b", "1-70000"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
    }
}
