//! Rate limits: token buckets per client address (new connections, HTTP requests), per
//! API key (room creations and keyed WebSocket opens) and per WebSocket (messages).
//!
//! A bucket holds up to `burst` tokens and refills at `per_second`; every action takes
//! one, and an action that finds the bucket empty is refused with the time until the
//! next token. Buckets take `now` ([`tokio::time::Instant`]) instead of reading a clock,
//! so the tests step time by hand instead of sleeping.
//!
//! Memory is bounded: each table (client addresses, keys) holds at most
//! [`RateLimits::max_tracked`] buckets. A bucket that has refilled to `burst` carries no
//! information (it equals a fresh one), so when a table is full those are dropped first;
//! if every bucket is still in use (more active sources than the table holds), half the
//! table is forgotten, so those sources get a fresh burst rather than the table
//! growing. The connection cap still bounds the server in that case.
//!
//! IPv6 clients are counted per /64, the block one subscriber usually gets, so a client
//! cannot escape its limit by rotating addresses inside its own block.

use relay_proto::ErrorCode;
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::caller::Caller;
use crate::error::ApiError;

/// At most one "rate limit reached" warning per limit per this interval; the warning
/// carries how many actions were refused since the previous one.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A rate: `per_second` actions sustained, up to `burst` at once. A `per_second` of 0
/// means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per second; 0 turns the limit off.
    pub per_second: u32,
    /// Most tokens a bucket holds: how many actions may come at once after a quiet
    /// period. Treated as at least 1.
    pub burst: u32,
}

impl Rate {
    /// No limit at all.
    pub const UNLIMITED: Rate = Rate { per_second: 0, burst: 0 };

    /// `per_second` sustained with bursts of `burst`.
    pub const fn new(per_second: u32, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    /// Whether this rate lets everything through.
    pub fn is_unlimited(&self) -> bool {
        self.per_second == 0
    }

    fn capacity(&self) -> f64 {
        f64::from(self.burst.max(1))
    }
}

/// Every rate limit of the server. The per-address defaults keep one address's burst a
/// tenth or less of the default `max_connections`, and never touch normal MPC use (a
/// room sees a handful of connections per round); a load test from one machine turns
/// them off. The per-key and per-WebSocket defaults stay high; lower them to fit your
/// traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// New TCP connections per client address (IPv6: per /64). Over it, a connection
    /// is accepted and closed at once, without a response (default 200/s, burst
    /// 1,000: a tenth of the default `max_connections`, so one address cannot take the
    /// whole cap in one burst). A trusted proxy's own connections are exempt; with the
    /// PROXY protocol the client's address counts instead.
    pub connections_per_ip: Rate,
    /// HTTP requests per client address (from a trusted proxy: the address it
    /// forwards), WebSocket handshakes included. Over it: 429 `rate_limited` with
    /// `Retry-After` (default 1,000/s, burst 2,000).
    pub requests_per_ip: Rate,
    /// Room creations and keyed WebSocket opens (`/v1/msg-relay`) per API key, when
    /// keys are enforced. Over it: 429 `rate_limited` with `Retry-After` (default
    /// 5,000/s, burst 50,000).
    pub per_key: Rate,
    /// Messages (any frame) one WebSocket may send. Over it, the relay closes the
    /// WebSocket with 1013 "message rate limit exceeded" (default 100,000/s, burst
    /// 100,000).
    pub ws_messages: Rate,
    /// Buckets each table (client addresses, API keys) holds at most (default 100,000).
    pub max_tracked: usize,
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        RateLimits {
            connections_per_ip: Rate::new(200, 1_000),
            requests_per_ip: Rate::new(1_000, 2_000),
            per_key: Rate::new(5_000, 50_000),
            ws_messages: Rate::new(100_000, 100_000),
            max_tracked: 100_000,
        }
    }
}

/// The address a request came from, for per-address limits; set by the accept loop as
/// a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientAddr(pub(crate) IpAddr);

/// An action refused by a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimited {
    /// Which limit: `connection`, `request` or `key`.
    pub(crate) limit: &'static str,
    /// How long until the limit lets one more action through.
    pub(crate) retry_after: Duration,
}

impl RateLimited {
    /// Whole seconds for `Retry-After`: the wait rounded up, at least 1.
    pub(crate) fn retry_after_secs(&self) -> u64 {
        (self.retry_after.as_secs_f64().ceil() as u64).max(1)
    }

    /// 429 `rate_limited`, answered with `Retry-After`.
    pub(crate) fn error(&self) -> ApiError {
        let secs = self.retry_after_secs();
        let what = match self.limit {
            "key" => "this API key",
            _ => "this client address",
        };
        let message = format!("too many requests from {what}: retry after {secs} s");
        ApiError { retry_after_secs: Some(secs), ..ApiError::new(ErrorCode::RateLimited, message) }
    }
}

/// The server's limiters, one per limit; shared by every connection.
pub(crate) struct RateLimiter {
    connections: KeyedBuckets<IpAddr>,
    requests: KeyedBuckets<IpAddr>,
    keys: KeyedBuckets<String>,
    ws_messages: Rate,
    connection_refusals: RefusalLog,
    request_refusals: RefusalLog,
    key_refusals: RefusalLog,
}

impl RateLimiter {
    /// Limiters for `limits`, every table empty.
    pub(crate) fn new(limits: &RateLimits) -> RateLimiter {
        RateLimiter {
            connections: KeyedBuckets::new(limits.connections_per_ip, limits.max_tracked),
            requests: KeyedBuckets::new(limits.requests_per_ip, limits.max_tracked),
            keys: KeyedBuckets::new(limits.per_key, limits.max_tracked),
            ws_messages: limits.ws_messages,
            connection_refusals: RefusalLog::default(),
            request_refusals: RefusalLog::default(),
            key_refusals: RefusalLog::default(),
        }
    }

    /// Takes a token for a new connection from `peer`.
    pub(crate) fn connection(&self, peer: IpAddr, now: Instant) -> Result<(), RateLimited> {
        self.connections.check(&client_key(peer), now).map_err(|retry_after| {
            self.connection_refusals.record("connection", now);
            RateLimited { limit: "connection", retry_after }
        })
    }

    /// Takes a token for an HTTP request from `peer`.
    pub(crate) fn request(&self, peer: IpAddr, now: Instant) -> Result<(), RateLimited> {
        self.requests.check(&client_key(peer), now).map_err(|retry_after| {
            self.request_refusals.record("request", now);
            RateLimited { limit: "request", retry_after }
        })
    }

    /// Takes a token from `caller`'s key; callers without a key (keys not enforced)
    /// are not limited here, only per address.
    pub(crate) fn key(&self, caller: &Caller, now: Instant) -> Result<(), RateLimited> {
        let Some(name) = caller.key_name.as_deref() else { return Ok(()) };
        self.keys.check(name, now).map_err(|retry_after| {
            self.key_refusals.record("key", now);
            RateLimited { limit: "key", retry_after }
        })
    }

    /// A fresh message-rate bucket for one WebSocket.
    pub(crate) fn message_rate(&self, now: Instant) -> MessageRate {
        MessageRate { rate: self.ws_messages, bucket: TokenBucket::full(self.ws_messages, now) }
    }
}

/// The message rate of one WebSocket; owned by its task, so no lock.
pub(crate) struct MessageRate {
    rate: Rate,
    bucket: TokenBucket,
}

impl MessageRate {
    /// Takes a token for one message received at `now`; false when over the rate.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        self.rate.is_unlimited() || self.bucket.try_take(self.rate, now).is_ok()
    }
}

/// One token bucket. The rate is passed in, so a table of buckets stores it once.
#[derive(Debug, Clone)]
struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    fn full(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket { tokens: rate.capacity(), updated: now }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate.per_second)).min(rate.capacity());
        self.updated = self.updated.max(now);
    }

    /// Takes one token, or says how long until one is there.
    fn try_take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        if rate.is_unlimited() {
            return Ok(());
        }
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / f64::from(rate.per_second)))
        }
    }

    /// Whether the bucket would be full at `now`, i.e. no different from a fresh one.
    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * f64::from(rate.per_second) >= rate.capacity()
    }
}

/// A bucket per key with one rate, at most `max_entries` buckets.
struct KeyedBuckets<K> {
    rate: Rate,
    max_entries: usize,
    table: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Hash + Eq> KeyedBuckets<K> {
    fn new(rate: Rate, max_entries: usize) -> KeyedBuckets<K> {
        KeyedBuckets { rate, max_entries: max_entries.max(1), table: Mutex::new(HashMap::new()) }
    }

    /// Takes a token from `key`'s bucket, or says how long until one is there.
    fn check<Q>(&self, key: &Q, now: Instant) -> Result<(), Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if self.rate.is_unlimited() {
            return Ok(());
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = table.get_mut(key) {
            return bucket.try_take(self.rate, now);
        }
        if table.len() >= self.max_entries {
            self.evict(&mut table, now);
        }
        let mut bucket = TokenBucket::full(self.rate, now);
        let taken = bucket.try_take(self.rate, now);
        table.insert(key.to_owned(), bucket);
        taken
    }

    /// Makes room in a full table: drops every bucket that has refilled, and if that
    /// is not enough, forgets arbitrary buckets down to half the cap (amortised O(1) per
    /// insert, so a flood of new sources cannot make every insert scan the table).
    fn evict(&self, table: &mut HashMap<K, TokenBucket>, now: Instant) {
        let rate = self.rate;
        table.retain(|_, bucket| !bucket.is_full(rate, now));
        if table.len() >= self.max_entries {
            let mut excess = table.len() - self.max_entries / 2;
            table.retain(|_, _| {
                let keep = excess == 0;
                excess = excess.saturating_sub(1);
                keep
            });
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().unwrap().len()
    }
}

/// Rate-limits the "rate limit reached" warning of one limit.
#[derive(Default)]
struct RefusalLog {
    refused_since: AtomicU64,
    last_logged: Mutex<Option<Instant>>,
}

impl RefusalLog {
    fn record(&self, limit: &'static str, now: Instant) {
        self.refused_since.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_logged.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| now.saturating_duration_since(t) >= REFUSAL_LOG_INTERVAL) {
            let refused = self.refused_since.swap(0, Ordering::Relaxed);
            tracing::warn!(limit, refused, "rate limit reached: refusing until the client slows down");
            *last = Some(now);
        }
    }
}

/// The key a client address is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6
/// by its /64.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use hyper::{StatusCode, header};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let rate = Rate::new(2, 3);
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(rate, t0);
        for _ in 0..3 {
            assert_eq!(bucket.try_take(rate, t0), Ok(()));
        }
        let wait = bucket.try_take(rate, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Half a token later: still refused, and the wait shrank.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(bucket.try_take(rate, t1), Err(Duration::from_millis(250)));
        let t2 = t0 + Duration::from_millis(500);
        assert_eq!(bucket.try_take(rate, t2), Ok(()));
        assert!(bucket.try_take(rate, t2).is_err());
        // A long quiet period refills to the burst, not beyond.
        let t3 = t2 + Duration::from_secs(60);
        assert!(bucket.is_full(rate, t3));
        for _ in 0..3 {
            assert_eq!(bucket.try_take(rate, t3), Ok(()));
        }
        assert!(bucket.try_take(rate, t3).is_err());
    }

    #[test]
    fn a_zero_rate_is_unlimited() {
        let limiter = RateLimiter::new(&RateLimits {
            connections_per_ip: Rate::UNLIMITED,
            requests_per_ip: Rate::UNLIMITED,
            per_key: Rate::UNLIMITED,
            ws_messages: Rate::UNLIMITED,
            max_tracked: 1,
        });
        let now = Instant::now();
        let caller = Caller { tenant: "t".into(), key_name: Some("k".into()) };
        let mut messages = limiter.message_rate(now);
        for _ in 0..10_000 {
            assert!(limiter.connection(ip("10.0.0.1"), now).is_ok());
            assert!(limiter.request(ip("10.0.0.1"), now).is_ok());
            assert!(limiter.key(&caller, now).is_ok());
            assert!(messages.allow(now));
        }
        assert_eq!(limiter.connections.len(), 0, "an unlimited limit tracks nothing");
    }

    #[test]
    fn addresses_have_separate_buckets_and_ipv6_counts_per_64() {
        let limiter =
            RateLimiter::new(&RateLimits { requests_per_ip: Rate::new(1, 2), ..RateLimits::default() });
        let now = Instant::now();
        for peer in ["10.0.0.1", "2001:db8:1:2::1"] {
            assert!(limiter.request(ip(peer), now).is_ok());
            assert!(limiter.request(ip(peer), now).is_ok());
        }
        // Another address is unaffected, and the same /64 shares its bucket.
        assert!(limiter.request(ip("10.0.0.2"), now).is_ok());
        assert!(limiter.request(ip("10.0.0.1"), now).is_err());
        let refused = limiter.request(ip("2001:db8:1:2:ffff::9"), now).unwrap_err();
        assert_eq!(refused, RateLimited { limit: "request", retry_after: Duration::from_secs(1) });
        assert!(limiter.request(ip("2001:db8:1:3::1"), now).is_ok(), "another /64");
        // IPv4-mapped IPv6 is the IPv4 address.
        assert!(limiter.request(ip("::ffff:10.0.0.1"), now).is_err());
    }

    #[test]
    fn api_keys_are_limited_by_name_and_keyless_callers_are_not() {
        let limiter = RateLimiter::new(&RateLimits { per_key: Rate::new(1, 1), ..RateLimits::default() });
        let now = Instant::now();
        let alice = Caller { tenant: "acme".into(), key_name: Some("alice".into()) };
        let bob = Caller { tenant: "acme".into(), key_name: Some("bob".into()) };
        let open = Caller { tenant: String::new(), key_name: None };
        assert!(limiter.key(&alice, now).is_ok());
        let refused = limiter.key(&alice, now).unwrap_err();
        assert_eq!(refused.limit, "key");
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(limiter.key(&bob, now).is_ok(), "another key of the same tenant has its own bucket");
        for _ in 0..10 {
            assert!(limiter.key(&open, now).is_ok());
        }
        assert!(limiter.key(&alice, now + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn the_address_table_stays_bounded_under_many_sources() {
        let limiter = RateLimiter::new(&RateLimits {
            connections_per_ip: Rate::new(1, 5),
            max_tracked: 100,
            ..RateLimits::default()
        });
        let now = Instant::now();
        // Every source keeps its bucket in use, so nothing is idle: the table forgets
        // some rather than growing.
        for i in 0..10_000u32 {
            let peer = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(limiter.connection(peer, now).is_ok());
            assert!(limiter.connections.len() <= 100);
        }
        // After a quiet period every bucket has refilled; new sources still find room.
        let later = now + Duration::from_secs(10);
        assert!(limiter.connection(ip("192.0.2.1"), later).is_ok());
        assert!(limiter.connections.len() <= 100);
        for i in 0..200u32 {
            let peer = IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + i));
            assert!(limiter.connection(peer, later + Duration::from_secs(10)).is_ok());
        }
        assert!(limiter.connections.len() <= 100);
    }

    #[test]
    fn eviction_keeps_sources_that_are_still_limited() {
        let limiter = RateLimiter::new(&RateLimits {
            connections_per_ip: Rate::new(1, 3),
            max_tracked: 3,
            ..RateLimits::default()
        });
        let now = Instant::now();
        let flooder = ip("203.0.113.7");
        assert!((0..3).all(|_| limiter.connection(flooder, now).is_ok()));
        assert!(limiter.connection(flooder, now).is_err());
        // Two quiet sources, then a second later a new source finds the table full: the
        // quiet ones have refilled and are swept, the flooder (one token back) is kept.
        assert!(limiter.connection(ip("198.51.100.1"), now).is_ok());
        assert!(limiter.connection(ip("198.51.100.2"), now).is_ok());
        let t = now + Duration::from_secs(1);
        assert!(limiter.connection(ip("198.51.100.3"), t).is_ok());
        assert_eq!(limiter.connections.len(), 2, "the two idle buckets went, the flooder stayed");
        assert!(limiter.connection(flooder, t).is_ok(), "one token refilled");
        assert!(limiter.connection(flooder, t).is_err(), "not a fresh burst: still limited");
    }

    #[test]
    fn a_websocket_over_its_message_rate_is_refused_until_it_refills() {
        let limiter =
            RateLimiter::new(&RateLimits { ws_messages: Rate::new(10, 10), ..RateLimits::default() });
        let t0 = Instant::now();
        let mut rate = limiter.message_rate(t0);
        assert!((0..10).all(|_| rate.allow(t0)));
        assert!(!rate.allow(t0));
        assert!(rate.allow(t0 + Duration::from_millis(100)));
        // Each WebSocket has its own bucket.
        assert!(limiter.message_rate(t0).allow(t0));
    }

    #[test]
    fn the_429_names_the_error_and_rounds_retry_after_up() {
        let limited = RateLimited { limit: "request", retry_after: Duration::from_millis(1200) };
        let resp = axum::response::IntoResponse::into_response(limited.error());
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let tiny = RateLimited { limit: "key", retry_after: Duration::from_micros(10) };
        assert_eq!(tiny.retry_after_secs(), 1);
    }
}
