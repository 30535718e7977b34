//! Clients behind a proxy: which peers are trusted proxies (`--trusted-proxies`), the
//! client address a trusted proxy names in `X-Forwarded-For` or `X-Real-IP`, and the
//! PROXY protocol v2 header (`--proxy-protocol`) that a proxy sends before anything
//! else on a connection.
//!
//! A header is believed only from a trusted peer; from anyone else it is ignored, so a
//! client cannot choose the address its per-address limits count it under. In
//! `X-Forwarded-For` the client is the right-most address that is not itself a trusted
//! proxy: every proxy appends the address it saw, so the entries left of the last
//! untrusted one were written by the client and prove nothing.
//!
//! PROXY protocol v2 headers are parsed by the `ppp` crate; this module only reads the
//! header's bytes off the socket (its fixed 16 bytes, then exactly the length they
//! announce, so no byte of the request behind it is consumed) within a size bound.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use hyper::HeaderMap;
use ipnet::IpNet;
use ppp::v2;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The fixed part of a PROXY v2 header: 12-byte signature, version and command,
/// family and protocol, and the 2-byte length of what follows.
const V2_FIXED_LEN: usize = 16;

/// Largest address-and-TLV part of a PROXY v2 header accepted. Addresses take at most
/// 216 bytes (two UNIX paths); the rest is TLVs (HAProxy's, AWS's and GCP's are each a
/// few dozen bytes). A longer header closes the connection.
pub(crate) const MAX_PROXY_HEADER_TAIL: usize = 4096;

/// The networks whose peers are trusted proxies (`ServerConfig::trusted_proxies`).
/// Empty, the default, trusts no peer: forwarding headers are ignored from everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// A `--trusted-proxies` entry that is neither an address nor a CIDR range.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is neither an IP address nor a CIDR range such as 10.0.0.0/8 or fd00::/8")]
pub struct TrustedProxiesError(String);

impl TrustedProxies {
    /// Parses a comma-separated list of CIDR ranges and bare addresses (a bare address
    /// is its own /32 or /128). Blank entries are skipped, so an empty string is the
    /// empty list.
    pub fn parse(list: &str) -> Result<TrustedProxies, TrustedProxiesError> {
        let mut nets = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let net = match IpNet::from_str(entry) {
                Ok(net) => net.trunc(),
                Err(_) => IpAddr::from_str(entry)
                    .map(IpNet::from)
                    .map_err(|_| TrustedProxiesError(entry.to_owned()))?,
            };
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }

    /// Whether no peer is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ranges, as given (host bits cleared).
    pub fn ranges(&self) -> &[IpNet] {
        &self.0
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 address) is in one
    /// of the trusted ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request that arrived from `peer`: `peer` itself unless
    /// it is trusted; from a trusted peer, the right-most `X-Forwarded-For` entry that
    /// is not trusted (the left-most if all are), else `X-Real-IP`, else `peer`. An
    /// entry that is not an address stops the walk at the last address before it, so
    /// a malformed header cannot lift a client out of its proxy's count.
    pub(crate) fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let mut forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(str::trim)
            .peekable();
        if forwarded.peek().is_some() {
            let entries: Vec<&str> = forwarded.collect();
            let mut client = peer;
            for entry in entries.iter().rev() {
                let Some(ip) = parse_forwarded_addr(entry) else { return client };
                client = ip;
                if !self.contains(ip) {
                    return ip;
                }
            }
            return client;
        }
        headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_forwarded_addr(v.trim()))
            .unwrap_or(peer)
    }
}

/// An address as proxies write it: bare (`203.0.113.7`, `2001:db8::1`), with a port
/// (`203.0.113.7:4711`, `[2001:db8::1]:4711`), or bracketed without one.
fn parse_forwarded_addr(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(entry) {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = SocketAddr::from_str(entry) {
        return Some(sa.ip().to_canonical());
    }
    let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
    IpAddr::from_str(inner).ok().map(|ip| ip.to_canonical())
}

/// Why a connection's PROXY protocol header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The socket failed or closed before the header was complete.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a PROXY protocol v2 header.
    #[error("not a PROXY protocol v2 header: {0}")]
    Invalid(#[from] v2::ParseError),
    /// The header announces more than [`MAX_PROXY_HEADER_TAIL`] bytes.
    #[error("PROXY header of {0} bytes is over the {MAX_PROXY_HEADER_TAIL}-byte limit")]
    TooLong(usize),
}

/// Reads one PROXY protocol v2 header from the start of `io`, consuming exactly its
/// bytes. Returns the client's address for a `PROXY` command over IPv4 or IPv6, and
/// `None` for a `LOCAL` command (the proxy's own health check) or an address family
/// without an IP (UNIX, unspecified): the connection then counts as the proxy's.
/// The caller bounds the time it may take.
pub(crate) async fn read_proxy_v2<IO: AsyncRead + Unpin>(
    io: &mut IO,
) -> Result<Option<IpAddr>, ProxyHeaderError> {
    let mut header = vec![0u8; V2_FIXED_LEN];
    io.read_exact(&mut header).await?;
    // Validate the signature and fixed fields before trusting the length they carry.
    match v2::Header::try_from(header.as_slice()) {
        Ok(_) | Err(v2::ParseError::Partial(..)) => {}
        Err(e) => return Err(e.into()),
    }
    let tail = usize::from(u16::from_be_bytes([header[14], header[15]]));
    if tail > MAX_PROXY_HEADER_TAIL {
        return Err(ProxyHeaderError::TooLong(V2_FIXED_LEN + tail));
    }
    header.resize(V2_FIXED_LEN + tail, 0);
    io.read_exact(&mut header[V2_FIXED_LEN..]).await?;
    let parsed = v2::Header::try_from(header.as_slice())?;
    if parsed.command == v2::Command::Local {
        return Ok(None);
    }
    Ok(match parsed.addresses {
        v2::Addresses::IPv4(a) => Some(IpAddr::V4(a.source_address)),
        v2::Addresses::IPv6(a) => Some(IpAddr::V6(a.source_address).to_canonical()),
        v2::Addresses::Unix(_) | v2::Addresses::Unspecified => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_ranges_and_bare_addresses() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.0.2.1,fd00::/8,").unwrap();
        assert_eq!(trusted.ranges().len(), 3);
        assert!(trusted.contains(ip("10.1.2.3")));
        assert!(trusted.contains(ip("192.0.2.1")));
        assert!(!trusted.contains(ip("192.0.2.2")));
        assert!(trusted.contains(ip("fd00::1")));
        assert!(trusted.contains(ip("::ffff:10.0.0.1")), "IPv4-mapped counts as IPv4");
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        let err = TrustedProxies::parse("10.0.0.0/8,nginx").unwrap_err();
        assert!(err.to_string().contains("\"nginx\""), "{err}");
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_peers() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let xff = headers(&[("x-forwarded-for", "198.51.100.9")]);
        assert_eq!(trusted.client_addr(ip("203.0.113.5"), &xff), ip("203.0.113.5"), "untrusted peer");
        assert_eq!(trusted.client_addr(ip("10.0.0.2"), &xff), ip("198.51.100.9"));
        let none = HeaderMap::new();
        assert_eq!(trusted.client_addr(ip("10.0.0.2"), &none), ip("10.0.0.2"));
    }

    #[test]
    fn the_rightmost_untrusted_forwarded_address_is_the_client() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        // The client forged the first entry; the second proxy appended the first's.
        let xff = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.9"), ("x-forwarded-for", "10.0.0.7")]);
        assert_eq!(trusted.client_addr(ip("10.0.0.2"), &xff), ip("198.51.100.9"));
        // Every entry trusted: the left-most.
        let all = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.7")]);
        assert_eq!(trusted.client_addr(ip("10.0.0.2"), &all), ip("10.9.9.9"));
        // Ports and brackets as proxies write them.
        let ports = headers(&[("x-forwarded-for", "[2001:db8::1]:4711")]);
        assert_eq!(trusted.client_addr(ip("10.0.0.2"), &ports), ip("2001:db8::1"));
        // Garbage stops the walk at the last address before it.
        let junk = headers(&[("x-forwarded-for", "198.51.100.9, junk")]);
        assert_eq!(trusted.client_addr(ip("10.0.0.2"), &junk), ip("10.0.0.2"));
    }

    #[test]
    fn x_real_ip_when_there_is_no_x_forwarded_for() {
        let trusted = TrustedProxies::parse("127.0.0.1").unwrap();
        let real = headers(&[("x-real-ip", "198.51.100.9")]);
        assert_eq!(trusted.client_addr(ip("127.0.0.1"), &real), ip("198.51.100.9"));
        let bad = headers(&[("x-real-ip", "somewhere")]);
        assert_eq!(trusted.client_addr(ip("127.0.0.1"), &bad), ip("127.0.0.1"));
    }

    fn v2_header(command: v2::Command, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
        v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, (source, destination))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn reads_exactly_the_proxy_header() {
        let src: SocketAddr = "198.51.100.9:4711".parse().unwrap();
        let dst: SocketAddr = "10.0.0.2:443".parse().unwrap();
        let mut bytes = v2_header(v2::Command::Proxy, src, dst);
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut reader = bytes.as_slice();
        assert_eq!(read_proxy_v2(&mut reader).await.unwrap(), Some(src.ip()));
        assert_eq!(reader, b"GET / HTTP/1.1\r\n", "the request behind it is left unread");

        let local = v2_header(v2::Command::Local, src, dst);
        assert_eq!(read_proxy_v2(&mut local.as_slice()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_v2_header() {
        let err = read_proxy_v2(&mut &b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"[..]).await.unwrap_err();
        assert!(matches!(err, ProxyHeaderError::Invalid(_)), "{err}");
        let err = read_proxy_v2(&mut &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"[..]).await.unwrap_err();
        assert!(matches!(err, ProxyHeaderError::Invalid(_)), "v1 is refused: {err}");
        let mut long =
            v2_header(v2::Command::Proxy, "198.51.100.9:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
        long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        let err = read_proxy_v2(&mut long.as_slice()).await.unwrap_err();
        assert!(matches!(err, ProxyHeaderError::TooLong(_)), "{err}");
        let short =
            &v2_header(v2::Command::Proxy, "198.51.100.9:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap())
                [..20];
        let err = read_proxy_v2(&mut &short[..]).await.unwrap_err();
        assert!(matches!(err, ProxyHeaderError::Io(_)), "{err}");
    }
}
