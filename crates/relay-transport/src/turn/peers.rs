//! Which peer addresses a TURN allocation may reach. A TURN server relays to any address
//! its clients name, so without a filter it is a proxy into the operator's own network:
//! loopback, private (RFC 1918, unique-local, carrier-grade NAT) and link-local peers are
//! refused unless the operator allows them. Unspecified, multicast and broadcast
//! addresses are always refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The peer ranges an operator allows beyond the public internet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Allow 127.0.0.0/8 and ::1 (`--turn-allow-loopback-peers`; tests, one-host setups).
    pub allow_loopback: bool,
    /// Allow 10/8, 172.16/12, 192.168/16, 100.64/10, 169.254/16, fc00::/7, fe80::/10
    /// (`--turn-allow-private-peers`; a relay inside a private network).
    pub allow_private: bool,
}

/// The kind of range an address is in, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerRange {
    /// Reachable on the internet.
    Public,
    /// This host.
    Loopback,
    /// A private or link-local network.
    Private,
    /// Never a peer: unspecified, multicast, broadcast.
    Never,
}

impl PeerPolicy {
    /// Whether a relayed socket may send to, or take datagrams from, `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        match classify(ip) {
            PeerRange::Public => true,
            PeerRange::Loopback => self.allow_loopback,
            PeerRange::Private => self.allow_private,
            PeerRange::Never => false,
        }
    }
}

/// The range `ip` is in (an IPv4-mapped IPv6 address is judged as its IPv4 address).
pub(crate) fn classify(ip: IpAddr) -> PeerRange {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> PeerRange {
    let [a, b, ..] = ip.octets();
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || a == 0 {
        PeerRange::Never
    } else if ip.is_loopback() {
        PeerRange::Loopback
    } else if ip.is_private() || ip.is_link_local() || (a == 100 && (64..128).contains(&b)) {
        PeerRange::Private
    } else {
        PeerRange::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> PeerRange {
    let first = ip.segments()[0];
    if ip.is_unspecified() || ip.is_multicast() {
        PeerRange::Never
    } else if ip.is_loopback() {
        PeerRange::Loopback
    } else if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 {
        PeerRange::Private
    } else {
        PeerRange::Public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_are_classified() {
        for (addr, range) in [
            ("8.8.8.8", PeerRange::Public),
            ("2001:4860::8888", PeerRange::Public),
            ("127.0.0.1", PeerRange::Loopback),
            ("127.9.9.9", PeerRange::Loopback),
            ("::1", PeerRange::Loopback),
            ("::ffff:127.0.0.1", PeerRange::Loopback),
            ("10.1.2.3", PeerRange::Private),
            ("172.16.0.1", PeerRange::Private),
            ("172.31.255.255", PeerRange::Private),
            ("192.168.1.1", PeerRange::Private),
            ("100.64.0.1", PeerRange::Private),
            ("169.254.169.254", PeerRange::Private),
            ("fd00::1", PeerRange::Private),
            ("fe80::1", PeerRange::Private),
            ("::ffff:10.0.0.1", PeerRange::Private),
            ("172.32.0.1", PeerRange::Public),
            ("0.0.0.0", PeerRange::Never),
            ("::", PeerRange::Never),
            ("224.0.0.1", PeerRange::Never),
            ("255.255.255.255", PeerRange::Never),
        ] {
            assert_eq!(classify(ip(addr)), range, "{addr}");
        }
    }

    #[test]
    fn the_policy_refuses_internal_peers_unless_allowed() {
        let strict = PeerPolicy::default();
        assert!(strict.allows(ip("8.8.8.8")));
        assert!(!strict.allows(ip("127.0.0.1")));
        assert!(!strict.allows(ip("10.0.0.1")));
        assert!(!strict.allows(ip("169.254.169.254")));
        let loopback = PeerPolicy { allow_loopback: true, allow_private: false };
        assert!(loopback.allows(ip("127.0.0.1")));
        assert!(!loopback.allows(ip("192.168.0.1")));
        let private = PeerPolicy { allow_loopback: false, allow_private: true };
        assert!(private.allows(ip("192.168.0.1")));
        assert!(!private.allows(ip("::1")));
        let all = PeerPolicy { allow_loopback: true, allow_private: true };
        assert!(!all.allows(ip("0.0.0.0")));
        assert!(!all.allows(ip("224.0.0.1")));
    }
}
