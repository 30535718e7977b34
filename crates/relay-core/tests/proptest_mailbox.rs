//! Property tests of the mailbox on explicit `now` (no runtime, no sleeping):
//! namespaces never meet, stored bytes and waiting asks stay within their limits, and
//! every expired message and ask is gone after a sweep, against a model of what must
//! still be stored.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use relay_core::mailbox::{FLAG_ONE_RECEIVER, HEADER_LEN, Mailbox, MailboxConn, MessageId};
use relay_core::{Limits, Namespace};
use tokio::time::Instant;

fn ask_frame(id: &MessageId, ttl_secs: u16) -> Bytes {
    Bytes::from(relay_proto::mailbox::ask_frame(id, ttl_secs))
}

fn publish_frame(id: &MessageId, ttl_secs: u16, flags: u16, payload: &[u8]) -> Bytes {
    Bytes::from(relay_proto::mailbox::publish_frame(id, ttl_secs, flags, payload))
}

/// One client action against the mailbox.
#[derive(Debug, Clone)]
enum Op {
    /// Connection `conn` publishes `len` bytes under ID `id` for `ttl` seconds.
    Publish { conn: usize, id: u8, ttl: u16, one_receiver: bool, len: usize },
    /// Connection `conn` asks for ID `id`, waiting `ttl` seconds.
    Ask { conn: usize, id: u8, ttl: u16 },
    /// Connection `conn` reads what is queued for it.
    Drain { conn: usize },
    /// Connection `conn` drops and reconnects to the same namespace.
    Reconnect { conn: usize },
    /// The clock moves on.
    Advance { secs: u16 },
}

const CONNS: usize = 6;
const NAMESPACES: usize = 3;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..CONNS, 0u8..6, 0u16..50, any::<bool>(), 1usize..300)
            .prop_map(|(conn, id, ttl, one_receiver, len)| Op::Publish { conn, id, ttl, one_receiver, len }),
        4 => (0..CONNS, 0u8..6, 0u16..50).prop_map(|(conn, id, ttl)| Op::Ask { conn, id, ttl }),
        3 => (0..CONNS).prop_map(|conn| Op::Drain { conn }),
        1 => (0..CONNS).prop_map(|conn| Op::Reconnect { conn }),
        2 => (0u16..30).prop_map(|secs| Op::Advance { secs }),
    ]
}

/// Connection `c` lives in namespace `c % NAMESPACES`; its payloads start with that
/// namespace's number, so a frame delivered across namespaces is caught.
fn namespace(c: usize) -> Namespace {
    Namespace::tenant(&format!("tenant-{}", c % NAMESPACES))
}

fn limits(max_held: usize, max_asks: usize) -> Limits {
    Limits {
        max_namespace_held_bytes: max_held,
        max_pending_asks: max_asks,
        max_mailbox_ttl: Duration::from_secs(40),
        send_queue_frames: 64,
        ..Limits::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Three namespaces share IDs; whatever is delivered was published in the
    /// receiver's namespace, stored bytes never pass the bound, and waiting asks never
    /// pass `max_pending_asks` per connection.
    #[test]
    fn namespaces_never_meet_and_bounds_hold(
        max_held in 400usize..3000,
        max_asks in 1usize..4,
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        let mailbox = Mailbox::with_manual_sweep(limits(max_held, max_asks));
        let mut conns: Vec<Option<MailboxConn>> = (0..CONNS).map(|c| Some(mailbox.connect(namespace(c)))).collect();
        let mut now = Instant::now();
        let mut out = Vec::new();
        for op in ops {
            match op {
                Op::Publish { conn, id, ttl, one_receiver, len } => {
                    let mut payload = vec![(conn % NAMESPACES) as u8; len];
                    payload[0] = (conn % NAMESPACES) as u8;
                    let flags = if one_receiver { FLAG_ONE_RECEIVER } else { 0 };
                    let frame = publish_frame(&[id; 32], ttl, flags, &payload);
                    if let Some(c) = &conns[conn] && c.handle_frame_at(frame, now).is_err() {
                        // Refused (namespace full or slow): the transport closes it.
                        conns[conn] = None;
                    }
                }
                Op::Ask { conn, id, ttl } => {
                    if let Some(c) = &conns[conn] && c.handle_frame_at(ask_frame(&[id; 32], ttl), now).is_err() {
                        conns[conn] = None;
                    }
                }
                Op::Drain { conn } => {
                    if let Some(c) = &conns[conn] {
                        out.clear();
                        if c.try_recv_many(&mut out, usize::MAX).is_ok() {
                            for frame in &out {
                                prop_assert!(frame.len() > HEADER_LEN);
                                prop_assert_eq!(
                                    usize::from(frame[HEADER_LEN]), conn % NAMESPACES,
                                    "connection {} got a frame of another namespace", conn
                                );
                            }
                        }
                    }
                }
                Op::Reconnect { conn } => {
                    conns[conn] = None;
                    conns[conn] = Some(mailbox.connect(namespace(conn)));
                }
                Op::Advance { secs } => now += Duration::from_secs(u64::from(secs)),
            }
            let stats = mailbox.stats();
            prop_assert!(stats.bytes <= NAMESPACES * max_held, "{} bytes stored", stats.bytes);
            prop_assert!(stats.pending_asks <= CONNS * max_asks, "{} asks waiting", stats.pending_asks);
        }
    }

    /// One namespace: the held bytes never pass the bound, and a publish is refused
    /// exactly when storing it would pass it.
    #[test]
    fn one_namespace_holds_at_most_its_bound(
        max_held in 200usize..2000,
        pubs in proptest::collection::vec((0u8..20, 1u16..40, 1usize..400), 1..60),
    ) {
        let mailbox = Mailbox::with_manual_sweep(limits(max_held, 10));
        let now = Instant::now();
        let mut held = 0usize;
        let mut stored: std::collections::HashSet<u8> = std::collections::HashSet::new();
        for (id, ttl, len) in pubs {
            let conn = mailbox.connect("one");
            let frame = publish_frame(&[id; 32], ttl, 0, &vec![0u8; len]);
            let frame_len = frame.len();
            let got = conn.handle_frame_at(frame, now);
            if stored.contains(&id) {
                prop_assert!(got.is_ok(), "a second publish of a live ID is ignored, not refused");
            } else if held + frame_len > max_held {
                prop_assert!(got.is_err(), "publish over the bound was accepted");
            } else {
                prop_assert!(got.is_ok());
                held += frame_len;
                stored.insert(id);
            }
            prop_assert_eq!(mailbox.stats().bytes, held);
            prop_assert!(held <= max_held);
        }
    }

    /// Publishes with random TTLs (capped by the server) and random clock moves: after
    /// each sweep exactly the messages whose deadline is still ahead are stored, and
    /// asks that waited past their TTL are gone even though their connections live.
    #[test]
    fn every_expired_entry_is_gone_after_the_sweep(
        steps in proptest::collection::vec((0u8..12, 0u16..120, 0u16..80, any::<bool>()), 1..80),
    ) {
        let lim = limits(1 << 20, 100);
        let max_ttl = lim.max_mailbox_ttl;
        let mailbox = Mailbox::with_manual_sweep(lim);
        let publisher = mailbox.connect("ttl");
        let asker = mailbox.connect("ttl");
        let start = Instant::now();
        let mut now = start;
        // id -> deadline of the stored message; asks: id+100 -> deadline.
        let mut expected: HashMap<u8, Instant> = HashMap::new();
        let mut asks: HashMap<u8, Instant> = HashMap::new();
        for (id, ttl, advance, ask) in steps {
            // Whatever is due at `now` goes first, as the mailbox does on every frame.
            expected.retain(|_, at| *at > now);
            asks.retain(|_, at| *at > now);
            let ttl_d = Duration::from_secs(u64::from(ttl)).min(max_ttl);
            if ask {
                // An ask for an ID nobody publishes (IDs 100+) waits until its TTL.
                let ask_id = id + 100;
                asker.handle_frame_at(ask_frame(&[ask_id; 32], ttl), now).unwrap();
                if !ttl_d.is_zero() && !asks.contains_key(&ask_id) {
                    asks.insert(ask_id, now + ttl_d);
                }
            } else {
                publisher.handle_frame_at(publish_frame(&[id; 32], ttl, 0, b"x"), now).unwrap();
                if !ttl_d.is_zero() && !expected.contains_key(&id) {
                    expected.insert(id, now + ttl_d);
                }
            }
            now += Duration::from_secs(u64::from(advance));
            mailbox.sweep(now);
            expected.retain(|_, at| *at > now);
            asks.retain(|_, at| *at > now);
            let stats = mailbox.stats();
            prop_assert_eq!(stats.entries, expected.len(), "stored messages at +{:?}", now - start);
            prop_assert_eq!(stats.pending_asks, asks.len(), "waiting asks at +{:?}", now - start);
        }
        mailbox.sweep(now + max_ttl);
        let stats = mailbox.stats();
        prop_assert_eq!((stats.entries, stats.bytes, stats.pending_asks), (0, 0, 0));
        drop((publisher, asker));
        prop_assert_eq!(mailbox.stats().namespaces, 0, "an idle namespace is forgotten");
    }
}
