//! Mailbox frames from clients: relay-proto's `MailboxHeader::parse` on raw bytes, then a whole
//! sequence of frames through `MailboxConn::handle_frame_at` on several connections of
//! two namespaces, with small limits so the full, too-many-asks and slow-consumer paths
//! are reached. Checks: never a panic; parse agrees with the layout; the stored bytes
//! never pass the namespace bound; a connection never receives a frame whose ID another
//! namespace used (every frame delivered was sent in its own namespace).
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use relay_core::Limits;
use relay_core::mailbox::{Mailbox, MailboxConn};
use relay_proto::mailbox::{FrameKind, HEADER_LEN, MailboxHeader};
use tokio::time::Instant;

#[derive(Debug, Arbitrary)]
enum Op {
    /// Raw frame bytes from connection `conn`; the ID's first byte is `id` so that
    /// connections meet on a few IDs.
    Frame { conn: u8, id: u8, ttl: u16, flags: u16, payload_len: u8, raw_tail: bool },
    /// Raw bytes, header and all, as a client may send.
    Raw { conn: u8, bytes: Vec<u8> },
    /// Reads what is queued for `conn`.
    Drain { conn: u8 },
    /// Drops and reopens `conn`.
    Reconnect { conn: u8 },
    /// Moves the clock.
    Advance { secs: u8 },
    /// Runs the sweeper.
    Sweep,
}

const CONNS: usize = 4;

fuzz_target!(|input: (Vec<u8>, Vec<Op>)| {
    let (raw, ops) = input;
    if let Some(h) = MailboxHeader::parse(&raw) {
        assert!(raw.len() >= HEADER_LEN);
        assert_eq!(&h.id[..], &raw[..32]);
        assert_eq!(h.encode()[..], raw[..HEADER_LEN]);
        assert_eq!(h.kind == FrameKind::Ask, raw.len() == HEADER_LEN);
    } else {
        assert!(raw.len() < HEADER_LEN);
    }

    let limits = Limits {
        max_message_bytes: 200,
        max_namespace_held_bytes: 600,
        max_pending_asks: 3,
        send_queue_frames: 4,
        max_mailbox_ttl: Duration::from_secs(30),
        ..Limits::default()
    };
    let max_held = limits.max_namespace_held_bytes;
    // No runtime here: the `Sweep` op runs the sweeper's work by hand.
    let mailbox = Mailbox::with_manual_sweep(limits);
    // Connections 0 and 1 in namespace "a", 2 and 3 in "b". Payloads carry the
    // namespace's letter first, so a delivery from the other namespace is visible.
    let ns = |c: usize| if c < 2 { "a" } else { "b" };
    let mut conns: Vec<Option<MailboxConn>> = (0..CONNS).map(|c| Some(mailbox.connect(ns(c)))).collect();
    let mut now = Instant::now();
    let mut out = Vec::new();
    for op in ops.into_iter().take(256) {
        match op {
            Op::Frame { conn, id, ttl, flags, payload_len, raw_tail } => {
                let c = usize::from(conn) % CONNS;
                let mut frame = vec![id; 32];
                frame.extend_from_slice(&ttl.to_le_bytes());
                frame.extend_from_slice(&flags.to_le_bytes());
                if payload_len > 0 || raw_tail {
                    frame.push(ns(c).as_bytes()[0]);
                    frame.extend(std::iter::repeat_n(0xab, usize::from(payload_len)));
                }
                if let Some(conn) = &conns[c]
                    && conn.handle_frame_at(Bytes::from(frame), now).is_err()
                {
                    conns[c] = None;
                }
            }
            Op::Raw { conn, bytes } => {
                let c = usize::from(conn) % CONNS;
                // Raw bytes past the header must still carry the namespace mark.
                let mut frame = bytes;
                if frame.len() > HEADER_LEN {
                    frame[HEADER_LEN] = ns(c).as_bytes()[0];
                }
                if let Some(conn) = &conns[c]
                    && conn.handle_frame_at(Bytes::from(frame), now).is_err()
                {
                    conns[c] = None;
                }
            }
            Op::Drain { conn } => {
                let c = usize::from(conn) % CONNS;
                if let Some(conn) = &conns[c] {
                    out.clear();
                    match conn.try_recv_many(&mut out, usize::MAX) {
                        Ok(_) => {
                            for frame in &out {
                                assert!(frame.len() > HEADER_LEN, "only PUB frames are delivered");
                                assert_eq!(
                                    frame[HEADER_LEN],
                                    ns(c).as_bytes()[0],
                                    "cross-namespace delivery"
                                );
                            }
                        }
                        Err(_) => conns[c] = None,
                    }
                }
            }
            Op::Reconnect { conn } => {
                let c = usize::from(conn) % CONNS;
                conns[c] = None;
                conns[c] = Some(mailbox.connect(ns(c)));
            }
            Op::Advance { secs } => now += Duration::from_secs(u64::from(secs % 40)),
            Op::Sweep => mailbox.sweep(now),
        }
        let stats = mailbox.stats();
        assert!(stats.bytes <= 2 * max_held, "two namespaces hold {} bytes", stats.bytes);
    }
    drop(conns);
    mailbox.sweep(now + Duration::from_secs(3600));
    let stats = mailbox.stats();
    assert_eq!((stats.entries, stats.bytes, stats.pending_asks), (0, 0, 0), "all expired after the sweep");
});
