//! The mailbox across instances on Redis (`--redis-url`): a message published on one
//! instance reaches an asker on any other (docs/operations.md, "Scale-out").
//!
//! The in-memory mailbox (`relay_core::Mailbox`) stays the fast path: a publish is
//! handled locally first, so an asker on the same instance is answered without a round
//! trip, and every local asker waits in the core as before. Redis adds what spans
//! instances:
//!
//! - A publish is also stored in Redis by one Lua script (first publish wins, `PX` is
//!   the TTL, the namespace's byte budget is a counter beside a sorted set of what it
//!   holds, trimmed of what expired on every publish), then announced on one pub/sub
//!   channel per deployment (`<prefix>mailbox`). The notice carries the whole frame, so
//!   the other instances hand it to their waiting askers with no further round trip,
//!   and keep it in their own store for later askers.
//! - A one-receiver publish is never stored locally unless a local asker takes it at
//!   once: it goes to Redis only, its notice carries the header alone, and the instance
//!   whose askers want it takes it with an atomic get-and-delete script. Exactly one
//!   asker anywhere gets it.
//! - An ask that the local store cannot answer is looked up in Redis once (after its
//!   waiter is registered, so a publish landing in between still reaches it through
//!   the notice).
//!
//! Backpressure: each connection has at most `send_queue_frames` frames waiting for
//! Redis (a count and a waker, [`Link::poll_ready`]); at that limit its socket is not
//! read until Redis answers one (`ws::driver`, `Session::poll_ready`), so a client
//! faster than Redis is slowed down by TCP flow control, not closed.
//!
//! Failures: the connection manager reconnects with backoff; a health task pings every
//! [`HEALTH_INTERVAL`] and keeps the pub/sub connection subscribed. A lost or refused
//! connection, or [`PINGS_DOWN`] pings in a row without an answer, and the `redis`
//! dependency is down (`/readyz` 503, `relay_dependency_up`), every
//! mailbox connection is closed with 1013 and a reason, and new mailbox handshakes get
//! 503 `storage_unavailable`. Rooms never touch Redis.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::task::AtomicWaker;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use relay_core::Mailbox;
use relay_core::mailbox::{FLAG_ONE_RECEIVER, FrameKind, HEADER_LEN, MailboxHeader, MessageId, Namespace};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::dependency::{Dependencies, DependencyHealth, redacted_location};

/// How often the health task pings Redis.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Failed pings in a row (every [`HEALTH_INTERVAL`]) before Redis counts as down when
/// nothing else (a lost connection, a refused command) said so first.
pub const PINGS_DOWN: u32 = 2;

/// How long one connection attempt, and one command, may take before it counts as a
/// failure.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest wait between two attempts to reconnect the pub/sub connection.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The close reason of a mailbox connection cut off because Redis is unreachable.
pub(crate) const REASON_UNAVAILABLE: &str = "shared mailbox storage (Redis) unavailable, retry later";

/// The close reason of a publish the namespace's shared budget refused.
const REASON_FULL: &str = "namespace storage full";

/// Stores a publish: KEYS message, held set, held counter; ARGV frame, TTL ms, member,
/// length, budget, namespace key lifetime ms. Returns 1 stored, 0 an earlier publish
/// of the ID lives, -1 over the budget.
const PUBLISH_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #gone > 0 then
  local freed = 0
  for _, m in ipairs(gone) do freed = freed + tonumber(string.match(m, ':(%d+)$')) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  redis.call('DECRBY', KEYS[3], freed)
end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local len = tonumber(ARGV[4])
if redis.call('ZREM', KEYS[2], ARGV[3]) == 1 then redis.call('DECRBY', KEYS[3], len) end
local held = tonumber(redis.call('GET', KEYS[3]) or '0')
if held + len > tonumber(ARGV[5]) then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
redis.call('INCRBY', KEYS[3], len)
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return 1
";

/// Answers an ask: KEYS message, held set, held counter; ARGV the ID in hex. Returns
/// the frame (or nil); a one-receiver frame (high bit of the flags' second byte) is
/// deleted in the same step, so only one caller ever gets it.
const TAKE_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
if (string.byte(v, 36) or 0) >= 128 then
  redis.call('DEL', KEYS[1])
  if redis.call('ZREM', KEYS[2], ARGV[1] .. ':' .. #v) == 1 then redis.call('DECRBY', KEYS[3], #v) end
end
return v
";

/// Why the shared mailbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisMailboxError {
    /// The URL is not a Redis URL the client understands.
    #[error("invalid Redis URL ({location}): {reason}")]
    BadUrl {
        /// Host and port, without credentials.
        location: String,
        /// What the client said.
        reason: String,
    },
    /// Redis did not answer at start.
    #[error("Redis at {location} is unreachable: {reason}")]
    Unreachable {
        /// Host and port, without credentials.
        location: String,
        /// What failed.
        reason: String,
    },
}

/// The shared mailbox: the local core's companion on Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisMailbox {
    shared: Arc<Shared>,
}

struct Shared {
    manager: ConnectionManager,
    client: redis::Client,
    mailbox: Mailbox,
    health: DependencyHealth,
    /// `<prefix>`, before every key and the channel.
    prefix: String,
    /// `<prefix>mailbox`: the notices of publishes.
    channel: String,
    /// This process, so it skips its own notices.
    origin: [u8; 8],
    publish: redis::Script,
    take: redis::Script,
    /// Every open mailbox connection's error channel, closed all at once on failure.
    links: Mutex<HashMap<u64, mpsc::Sender<&'static str>>>,
    next_link: AtomicU64,
    /// The pub/sub connection is subscribed: without it, askers would miss notices.
    subscribed: AtomicBool,
}

/// One mailbox connection's tie to the shared mailbox: the errors meant for it (a
/// refused publish, Redis lost). Dropping it unregisters the connection.
pub(crate) struct Link {
    shared: Arc<Shared>,
    id: u64,
    tx: mpsc::Sender<&'static str>,
    rx: mpsc::Receiver<&'static str>,
    /// Frames of this connection waiting for Redis, at most `send_queue_frames`: a
    /// client sending faster than Redis answers is read more slowly
    /// ([`Link::poll_ready`]), not buffered without end.
    in_flight: Arc<InFlight>,
}

/// A connection's count of frames waiting for Redis, and the wake-up of its task when
/// one is answered. Lock-free: the connection's task adds, the background commands
/// take away.
struct InFlight {
    count: AtomicUsize,
    bound: usize,
    ready: AtomicWaker,
}

impl InFlight {
    /// `Ready` while fewer than `bound` frames wait; else `Pending`, woken by the next
    /// answer.
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.count.load(Ordering::Acquire) < self.bound {
            return Poll::Ready(());
        }
        self.ready.register(cx.waker());
        // An answer between the load and the registration woke nobody: look again.
        if self.count.load(Ordering::Acquire) < self.bound { Poll::Ready(()) } else { Poll::Pending }
    }

    /// Counts a frame sent to Redis; the guard counts it answered when dropped.
    fn start(self: &Arc<Self>) -> Answered {
        self.count.fetch_add(1, Ordering::AcqRel);
        Answered(self.clone())
    }
}

/// A frame of a connection waiting for Redis; dropping it (the command answered, or
/// failed) lets the connection read on.
struct Answered(Arc<InFlight>);

impl Drop for Answered {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.ready.wake();
    }
}

impl RedisMailbox {
    /// Connects to Redis at `url` (one command connection under a manager that
    /// reconnects with backoff, one pub/sub connection), registers the `redis`
    /// dependency in `dependencies`, and starts the tasks that deliver notices to
    /// `mailbox` and watch Redis' health. Fails when Redis does not answer a `PING`
    /// within a few seconds. Must run inside a tokio runtime.
    pub async fn connect(
        url: &str,
        prefix: &str,
        mailbox: Mailbox,
        dependencies: &Dependencies,
    ) -> Result<RedisMailbox, RedisMailboxError> {
        let location = redacted_location(url);
        let client = redis::Client::open(url)
            .map_err(|e| RedisMailboxError::BadUrl { location: location.clone(), reason: e.to_string() })?;
        let unreachable =
            |reason: String| RedisMailboxError::Unreachable { location: location.clone(), reason };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(IO_TIMEOUT))
            .set_response_timeout(Some(IO_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(MAX_BACKOFF);
        let connect = client.get_connection_manager_with_config(config);
        let mut manager = match tokio::time::timeout(3 * IO_TIMEOUT, connect).await {
            Ok(Ok(manager)) => manager,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable(format!("no answer in {:?}", 3 * IO_TIMEOUT))),
        };
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut manager).await;
        pong.map_err(|e| unreachable(e.to_string()))?;
        let pubsub = subscribe(&client, &format!("{prefix}mailbox")).await.map_err(unreachable)?;
        let mut origin = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut origin)
            .map_err(|_| unreachable("no randomness for the instance ID".to_string()))?;
        let shared = Arc::new(Shared {
            manager,
            client,
            mailbox,
            health: dependencies.register("redis", location.clone()),
            prefix: prefix.to_string(),
            channel: format!("{prefix}mailbox"),
            origin,
            publish: redis::Script::new(PUBLISH_SCRIPT),
            take: redis::Script::new(TAKE_SCRIPT),
            links: Mutex::new(HashMap::new()),
            next_link: AtomicU64::new(1),
            subscribed: AtomicBool::new(true),
        });
        tokio::spawn(listen(Arc::downgrade(&shared), Some(pubsub)));
        tokio::spawn(watch_health(Arc::downgrade(&shared)));
        tracing::info!(location = %location, prefix, "mailbox shared across instances through Redis");
        Ok(RedisMailbox { shared })
    }

    /// Whether Redis is reachable (and notices arrive) right now.
    pub fn is_up(&self) -> bool {
        self.shared.health.is_up()
    }

    /// Registers a new mailbox connection.
    pub(crate) fn link(&self) -> Link {
        let (tx, rx) = mpsc::channel(1);
        let id = self.shared.next_link.fetch_add(1, Ordering::Relaxed);
        self.shared.lock_links().insert(id, tx.clone());
        let bound = self.shared.mailbox.limits().send_queue_frames.max(1);
        let in_flight = Arc::new(InFlight { count: AtomicUsize::new(0), bound, ready: AtomicWaker::new() });
        Link { shared: self.shared.clone(), id, tx, rx, in_flight }
    }

    /// The local mailbox this one extends.
    pub(crate) fn mailbox(&self) -> &Mailbox {
        &self.shared.mailbox
    }

    /// Stores a publish of `link`'s connection in Redis and tells the other instances,
    /// in the background. A refusal or a failure reaches the connection through `link`.
    /// The frame counts as waiting for Redis until then: call only when
    /// [`Link::poll_ready`] said the connection may take one more.
    pub(crate) fn publish(&self, link: &Link, namespace: &Namespace, frame: Bytes, header: &MailboxHeader) {
        let permit = link.in_flight.start();
        let shared = self.shared.clone();
        let (namespace, header, tx) = (namespace.clone(), *header, link.tx.clone());
        tokio::spawn(async move {
            shared.store(&namespace, frame, &header, Some(&tx)).await;
            drop(permit);
        });
    }

    /// Looks an ask of `link`'s connection up in Redis, in the background; a message
    /// found goes to the namespace's local waiters (the asker among them). Counted as
    /// [`RedisMailbox::publish`] counts.
    pub(crate) fn ask(&self, link: &Link, namespace: &Namespace, id: &MessageId) {
        let permit = link.in_flight.start();
        let shared = self.shared.clone();
        let (namespace, id, tx) = (namespace.clone(), *id, link.tx.clone());
        tokio::spawn(async move {
            shared.take_and_deliver(&namespace, &id, Some(&tx)).await;
            drop(permit);
        });
    }
}

impl std::fmt::Debug for RedisMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMailbox")
            .field("prefix", &self.shared.prefix)
            .field("health", &self.shared.health)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Whether the connection may take one more frame that needs Redis: `Pending`, with
    /// a wake-up registered, while `send_queue_frames` of its frames wait for Redis
    /// (its socket is then not read: backpressure). Every frame takes at most one, so
    /// a frame read after `Ready` never finds the count full.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.in_flight.poll_ready(cx)
    }

    /// Resolves with the reason the connection must close (1013), if one came.
    pub(crate) fn poll_error(&mut self, cx: &mut Context<'_>) -> Poll<&'static str> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(reason)) => Poll::Ready(reason),
            // The sender half lives in `self`, so the channel never closes.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.lock_links().remove(&self.id);
    }
}

impl Shared {
    fn lock_links(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<&'static str>>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Redis' keys for one message: the message, its namespace's held set and counter.
    fn keys(&self, namespace: &Namespace, id: &MessageId) -> (String, String, String, String) {
        let ns = hex(namespace.as_bytes());
        let id = hex(id);
        let p = &self.prefix;
        (format!("{p}mb:{ns}:{id}"), format!("{p}mbz:{ns}"), format!("{p}mbh:{ns}"), id)
    }

    /// Marks Redis down (once) and closes every mailbox connection.
    fn down(&self, detail: &dyn std::fmt::Display) {
        let was_up = self.health.is_up();
        self.health.set_up(false, detail);
        if was_up {
            let links: Vec<_> = self.lock_links().values().cloned().collect();
            for tx in links {
                let _ = tx.try_send(REASON_UNAVAILABLE);
            }
        }
    }

    /// A command failed: the connection it was for is told (even one opened after the
    /// others were closed). A lost or refused connection means Redis is down; a command
    /// that only timed out (a busy Redis or machine) is left to the health task, which
    /// marks Redis down after [`PINGS_DOWN`] failed pings in a row.
    fn failed(&self, e: &redis::RedisError, tx: Option<&Sender>) {
        if e.is_timeout() {
            tracing::warn!("a Redis command timed out after {IO_TIMEOUT:?}: {e}");
        } else {
            self.down(e);
        }
        if let Some(tx) = tx {
            let _ = tx.try_send(REASON_UNAVAILABLE);
        }
    }

    async fn store(&self, namespace: &Namespace, frame: Bytes, header: &MailboxHeader, tx: Option<&Sender>) {
        let max_ttl = self.mailbox.limits().max_mailbox_ttl;
        let ttl = Duration::from_secs(u64::from(header.ttl_secs)).min(max_ttl);
        let one_receiver = header.one_receiver();
        if ttl.is_zero() {
            // Nothing is stored: only those waiting now get it (one-receiver: locally only).
            if !one_receiver {
                self.notify(namespace, &frame).await;
            }
            return;
        }
        let (key, set, counter, id) = self.keys(namespace, &header.id);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let keep_ms = u64::try_from(max_ttl.as_millis()).unwrap_or(u64::MAX).saturating_add(1000);
        let mut conn = self.manager.clone();
        let stored: redis::RedisResult<i64> = self
            .publish
            .key(&key)
            .key(&set)
            .key(&counter)
            .arg(&frame[..])
            .arg(ttl_ms)
            .arg(format!("{id}:{}", frame.len()))
            .arg(frame.len())
            .arg(self.mailbox.limits().max_namespace_held_bytes)
            .arg(keep_ms)
            .invoke_async(&mut conn)
            .await;
        match stored {
            Ok(1) if one_receiver => self.notify(namespace, &frame[..HEADER_LEN]).await,
            Ok(1) => self.notify(namespace, &frame).await,
            Ok(-1) => {
                if let Some(tx) = tx {
                    let _ = tx.try_send(REASON_FULL);
                }
            }
            Ok(_) => {} // an earlier publish of the ID lives: the first wins
            Err(e) => self.failed(&e, tx),
        }
    }

    /// Tells the other instances about a stored publish: `body` is the whole frame, or
    /// the header alone for a one-receiver message (to be taken from Redis).
    async fn notify(&self, namespace: &Namespace, body: &[u8]) {
        let ns = namespace.as_bytes();
        let Ok(ns_len) = u16::try_from(ns.len()) else { return };
        let mut notice = Vec::with_capacity(10 + ns.len() + body.len());
        notice.extend_from_slice(&self.origin);
        notice.extend_from_slice(&ns_len.to_le_bytes());
        notice.extend_from_slice(ns);
        notice.extend_from_slice(body);
        let mut conn = self.manager.clone();
        let sent: redis::RedisResult<i64> =
            redis::cmd("PUBLISH").arg(&self.channel).arg(notice).query_async(&mut conn).await;
        if let Err(e) = sent {
            self.down(&e);
        }
    }

    async fn take_and_deliver(&self, namespace: &Namespace, id: &MessageId, tx: Option<&Sender>) {
        let (key, set, counter, id_hex) = self.keys(namespace, id);
        let mut conn = self.manager.clone();
        let taken: redis::RedisResult<Option<Vec<u8>>> =
            self.take.key(&key).key(&set).key(&counter).arg(&id_hex).invoke_async(&mut conn).await;
        let frame = match taken {
            Ok(Some(frame)) => Bytes::from(frame),
            Ok(None) => return,
            Err(e) => {
                self.failed(&e, tx);
                return;
            }
        };
        let delivered = self.mailbox.deliver(namespace, frame.clone(), Instant::now());
        if let Some(header) = MailboxHeader::parse(&frame)
            && !delivered
            && header.one_receiver()
        {
            // Taken for an asker that left meanwhile: put it back for the next one.
            self.store(namespace, frame, &header, tx).await;
        }
    }

    /// A notice from the channel (this instance's own included: a one-receiver message
    /// may be wanted by an ask that came here while it was being stored): keep the frame
    /// and hand it to local waiters, or take a one-receiver message for them.
    fn on_notice(self: &Arc<Self>, payload: &[u8]) {
        let Some((origin, rest)) = payload.split_first_chunk::<8>() else { return };
        let own = *origin == self.origin;
        let Some((len, rest)) = rest.split_first_chunk::<2>() else { return };
        let len = usize::from(u16::from_le_bytes(*len));
        if rest.len() < len + HEADER_LEN {
            return;
        }
        let namespace = Namespace::new(Bytes::copy_from_slice(&rest[..len]));
        let body = &rest[len..];
        let Some(header) =
            MailboxHeader::parse(body).filter(|h| h.kind == FrameKind::Publish || body.len() == HEADER_LEN)
        else {
            return;
        };
        if body.len() > HEADER_LEN {
            if own {
                return; // stored here already, by the publisher's own connection
            }
            // Kept here too, so later askers on this instance are answered without a
            // round trip, and a later publish of the ID here loses as it does in Redis.
            // Over this instance's namespace budget it only reaches those waiting now.
            let frame = Bytes::copy_from_slice(body);
            let keeper = self.mailbox.connect(namespace.clone());
            if keeper.handle_frame(frame.clone()).is_err() {
                self.mailbox.deliver(&namespace, frame, Instant::now());
            }
        } else if header.flags & FLAG_ONE_RECEIVER != 0 && self.mailbox.is_waiting(&namespace, &header.id) {
            let shared = self.clone();
            tokio::spawn(async move { shared.take_and_deliver(&namespace, &header.id, None).await });
        }
    }
}

type Sender = mpsc::Sender<&'static str>;

/// A pub/sub connection subscribed to `channel`.
async fn subscribe(client: &redis::Client, channel: &str) -> Result<redis::aio::PubSub, String> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    match tokio::time::timeout(IO_TIMEOUT, connect).await {
        Ok(Ok(pubsub)) => Ok(pubsub),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer in {IO_TIMEOUT:?}")),
    }
}

/// Receives notices until the shared mailbox is dropped; resubscribes with backoff
/// whenever the pub/sub connection is lost.
async fn listen(shared: Weak<Shared>, mut first: Option<redis::aio::PubSub>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let pubsub = match first.take() {
            Some(pubsub) => pubsub,
            None => {
                let (client, channel) = match shared.upgrade() {
                    Some(s) => (s.client.clone(), s.channel.clone()),
                    None => return,
                };
                match subscribe(&client, &channel).await {
                    Ok(pubsub) => pubsub,
                    Err(e) => {
                        tracing::debug!("Redis pub/sub reconnect failed: {e}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
        };
        backoff = Duration::from_millis(100);
        let Some(s) = shared.upgrade() else { return };
        s.subscribed.store(true, Ordering::Release);
        drop(s);
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let Some(s) = shared.upgrade() else { return };
            s.on_notice(msg.get_payload_bytes());
        }
        let Some(s) = shared.upgrade() else { return };
        s.subscribed.store(false, Ordering::Release);
        s.down(&"the pub/sub connection was lost");
    }
}

/// Pings Redis every [`HEALTH_INTERVAL`]; up again once a ping answers and the
/// pub/sub connection is subscribed.
async fn watch_health(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed_in_a_row = 0;
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else { return };
        let mut conn = s.manager.clone();
        let ping =
            tokio::time::timeout(IO_TIMEOUT, redis::cmd("PING").query_async::<String>(&mut conn)).await;
        let failure = match ping {
            Ok(Ok(_)) if s.subscribed.load(Ordering::Acquire) => {
                failed_in_a_row = 0;
                s.health.set_up(true, &"ping answered");
                continue;
            }
            Ok(Ok(_)) => "the pub/sub connection is not subscribed".to_string(),
            Ok(Err(e)) if !e.is_timeout() => {
                s.down(&e);
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer to PING in {IO_TIMEOUT:?}"),
        };
        failed_in_a_row += 1;
        if failed_in_a_row >= PINGS_DOWN {
            s.down(&failure);
        }
    }
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    use futures_util::task::AtomicWaker;

    use super::InFlight;

    /// Counts its wake-ups.
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// At the bound the connection is not read until an answer comes, and that answer
    /// wakes it.
    #[test]
    fn a_full_backlog_waits_for_an_answer_and_is_woken_by_it() {
        let in_flight =
            Arc::new(InFlight { count: AtomicUsize::new(0), bound: 2, ready: AtomicWaker::new() });
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(in_flight.poll_ready(&mut cx), Poll::Ready(()));
        let first = in_flight.start();
        assert_eq!(in_flight.poll_ready(&mut cx), Poll::Ready(()));
        let second = in_flight.start();
        assert_eq!(in_flight.poll_ready(&mut cx), Poll::Pending, "two of two wait for Redis");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        drop(second);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the answer wakes the connection");
        assert_eq!(in_flight.poll_ready(&mut cx), Poll::Ready(()));
        drop(first);
        assert_eq!(in_flight.count.load(Ordering::SeqCst), 0);
    }
}
