//! Unit tests of the mailbox with paused tokio time: no sockets, no sleeping.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, advance};

use super::*;

fn limits() -> Limits {
    Limits { max_mailbox_ttl: Duration::from_secs(100), ..Limits::default() }
}

fn ask_frame(id: &MessageId, ttl_secs: u16) -> Bytes {
    Bytes::from(relay_proto::mailbox::ask_frame(id, ttl_secs))
}

fn publish_frame(id: &MessageId, ttl_secs: u16, flags: u16, payload: &[u8]) -> Bytes {
    Bytes::from(relay_proto::mailbox::publish_frame(id, ttl_secs, flags, payload))
}

fn id(n: u8) -> MessageId {
    [n; 32]
}

/// Everything queued for `conn` right now.
fn drain(conn: &mut MailboxConn) -> Vec<Bytes> {
    let mut out = Vec::new();
    conn.try_recv_many(&mut out, usize::MAX).unwrap();
    out
}

#[tokio::test(start_paused = true)]
async fn publish_then_ask_sends_the_stored_frame_and_keeps_it() {
    let mb = Mailbox::start(limits()).unwrap();
    let publisher = mb.connect("ns");
    let mut a = mb.connect("ns");
    let mut b = mb.connect("ns");
    let msg = publish_frame(&id(1), 10, 0, b"payload");
    publisher.handle_frame(msg.clone()).unwrap();
    a.handle_frame(ask_frame(&id(1), 10)).unwrap();
    b.handle_frame(ask_frame(&id(1), 10)).unwrap();
    assert_eq!(a.recv().await.unwrap(), msg);
    assert_eq!(b.recv().await.unwrap(), msg);
    assert_eq!(mb.stats().entries, 1);
}

#[tokio::test(start_paused = true)]
async fn ask_then_publish_delivers_to_every_waiter() {
    let mb = Mailbox::start(limits()).unwrap();
    let mut a = mb.connect("ns");
    let mut b = mb.connect("ns");
    let publisher = mb.connect("ns");
    a.handle_frame(ask_frame(&id(2), 10)).unwrap();
    b.handle_frame(ask_frame(&id(2), 10)).unwrap();
    assert_eq!(mb.stats().pending_asks, 2);
    let msg = publish_frame(&id(2), 10, 0, b"x");
    publisher.handle_frame(msg.clone()).unwrap();
    assert_eq!(drain(&mut a), vec![msg.clone()]);
    assert_eq!(drain(&mut b), vec![msg]);
    assert_eq!(mb.stats().pending_asks, 0);
}

#[tokio::test(start_paused = true)]
async fn first_publish_wins_while_it_lives() {
    let mb = Mailbox::start(limits()).unwrap();
    let mut c = mb.connect("ns");
    let first = publish_frame(&id(3), 5, 0, b"first");
    c.handle_frame(first.clone()).unwrap();
    c.handle_frame(publish_frame(&id(3), 5, 0, b"second")).unwrap();
    c.handle_frame(ask_frame(&id(3), 5)).unwrap();
    assert_eq!(drain(&mut c), vec![first]);

    // Once the first has expired, a new publish of the same ID is stored.
    advance(Duration::from_secs(5)).await;
    let third = publish_frame(&id(3), 5, 0, b"third");
    c.handle_frame(third.clone()).unwrap();
    c.handle_frame(ask_frame(&id(3), 5)).unwrap();
    assert_eq!(drain(&mut c), vec![third]);
}

#[tokio::test(start_paused = true)]
async fn messages_expire_at_their_ttl() {
    let mb = Mailbox::start(limits()).unwrap();
    let mut c = mb.connect("ns");
    c.handle_frame(publish_frame(&id(4), 2, 0, b"short-lived")).unwrap();
    advance(Duration::from_millis(1999)).await;
    c.handle_frame(ask_frame(&id(4), 0)).unwrap();
    assert_eq!(drain(&mut c).len(), 1, "still stored just before its ttl");
    advance(Duration::from_millis(1)).await;
    c.handle_frame(ask_frame(&id(4), 0)).unwrap();
    assert!(drain(&mut c).is_empty(), "gone at its ttl");
    assert_eq!(mb.stats().entries, 0);
    assert_eq!(mb.stats().bytes, 0);
}

#[tokio::test(start_paused = true)]
async fn unanswered_asks_expire_and_are_not_answered_later() {
    let mb = Mailbox::start(limits()).unwrap();
    let mut asker = mb.connect("ns");
    let publisher = mb.connect("ns");
    asker.handle_frame(ask_frame(&id(5), 1)).unwrap();
    assert_eq!(mb.stats().pending_asks, 1);
    advance(Duration::from_secs(1)).await;
    mb.sweep(Instant::now());
    assert_eq!(mb.stats().pending_asks, 0);
    publisher.handle_frame(publish_frame(&id(5), 10, 0, b"late")).unwrap();
    assert!(drain(&mut asker).is_empty());
}

#[tokio::test(start_paused = true)]
async fn ttls_are_capped_by_the_server() {
    let mb = Mailbox::start(limits()).unwrap();
    let mut c = mb.connect("ns");
    c.handle_frame(publish_frame(&id(6), u16::MAX, 0, b"capped")).unwrap();
    advance(limits().max_mailbox_ttl).await;
    c.handle_frame(ask_frame(&id(6), 0)).unwrap();
    assert!(drain(&mut c).is_empty());
}

#[tokio::test(start_paused = true)]
async fn one_receiver_messages_go_to_exactly_one_asker() {
    let mb = Mailbox::start(limits()).unwrap();
    let publisher = mb.connect("ns");
    let mut a = mb.connect("ns");
    let mut b = mb.connect("ns");
    // Stored, then asked twice: only the first asker gets it.
    let msg = publish_frame(&id(7), 10, FLAG_ONE_RECEIVER, b"once");
    publisher.handle_frame(msg.clone()).unwrap();
    a.handle_frame(ask_frame(&id(7), 10)).unwrap();
    assert_eq!(drain(&mut a), vec![msg]);
    assert_eq!(mb.stats().entries, 0);
    b.handle_frame(ask_frame(&id(7), 10)).unwrap();
    assert!(drain(&mut b).is_empty());

    // Two waiting, then published: one gets it and the other keeps waiting.
    a.handle_frame(ask_frame(&id(8), 10)).unwrap();
    b.handle_frame(ask_frame(&id(8), 10)).unwrap();
    publisher.handle_frame(publish_frame(&id(8), 10, FLAG_ONE_RECEIVER, b"once")).unwrap();
    assert_eq!(drain(&mut a).len() + drain(&mut b).len(), 1);
    // b still waits for id 7 (taken by a), and one of them still waits for id 8.
    assert_eq!(mb.stats().pending_asks, 2);
    assert_eq!(mb.stats().entries, 0);
}

#[tokio::test(start_paused = true)]
async fn namespaces_never_meet() {
    let mb = Mailbox::start(limits()).unwrap();
    let mut a = mb.connect(Namespace::tenant("a"));
    let b = mb.connect(Namespace::tenant("b"));
    a.handle_frame(ask_frame(&id(9), 10)).unwrap();
    b.handle_frame(publish_frame(&id(9), 10, 0, b"other tenant")).unwrap();
    assert!(drain(&mut a).is_empty());
    assert_eq!(mb.stats().namespaces, 2);
    assert_ne!(Namespace::tenant("x"), Namespace::from("x"));
}

#[tokio::test(start_paused = true)]
async fn a_repeated_ask_is_answered_once() {
    let mb = Mailbox::start(limits()).unwrap();
    let mut a = mb.connect("ns");
    a.handle_frame(ask_frame(&id(10), 10)).unwrap();
    a.handle_frame(ask_frame(&id(10), 10)).unwrap();
    assert_eq!(mb.stats().pending_asks, 1);
    a.handle_frame(publish_frame(&id(10), 10, 0, b"self")).unwrap();
    assert_eq!(drain(&mut a).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn zero_ttl_publish_reaches_waiters_but_is_not_stored() {
    let mb = Mailbox::start(limits()).unwrap();
    let mut a = mb.connect("ns");
    let b = mb.connect("ns");
    a.handle_frame(ask_frame(&id(11), 10)).unwrap();
    b.handle_frame(publish_frame(&id(11), 0, 0, b"now or never")).unwrap();
    assert_eq!(drain(&mut a).len(), 1);
    assert_eq!(mb.stats().entries, 0);
}

#[tokio::test(start_paused = true)]
async fn malformed_and_oversized_frames_are_refused() {
    let mb = Mailbox::start(Limits { max_message_bytes: 100, ..limits() }).unwrap();
    let c = mb.connect("ns");
    assert_eq!(c.handle_frame(Bytes::from(vec![0u8; 35])), Err(MailboxError::FrameTooShort { len: 35 }));
    assert_eq!(c.handle_frame(Bytes::new()), Err(MailboxError::FrameTooShort { len: 0 }));
    assert_eq!(
        c.handle_frame(Bytes::from(vec![0u8; 101])),
        Err(MailboxError::FrameTooBig { len: 101, max: 100 })
    );
    assert_eq!(c.handle_frame(Bytes::from(vec![0u8; 100])), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn namespace_storage_is_bounded() {
    let mb = Mailbox::start(Limits { max_namespace_held_bytes: 100, ..limits() }).unwrap();
    let c = mb.connect("ns");
    c.handle_frame(publish_frame(&id(1), 10, 0, &[0; 64])).unwrap(); // 100 bytes
    assert_eq!(
        c.handle_frame(publish_frame(&id(2), 10, 0, &[0; 1])),
        Err(MailboxError::NamespaceFull { max: 100 })
    );
    // Another namespace has its own budget.
    let other = mb.connect("other");
    other.handle_frame(publish_frame(&id(2), 10, 0, &[0; 64])).unwrap();
    // Expiry frees the space.
    advance(Duration::from_secs(10)).await;
    c.handle_frame(publish_frame(&id(2), 10, 0, &[0; 64])).unwrap();
}

#[tokio::test(start_paused = true)]
async fn pending_asks_per_connection_are_bounded() {
    let mb = Mailbox::start(Limits { max_pending_asks: 3, ..limits() }).unwrap();
    let a = mb.connect("ns");
    for n in 0..3 {
        a.handle_frame(ask_frame(&id(n), 10)).unwrap();
    }
    assert_eq!(a.handle_frame(ask_frame(&id(3), 10)), Err(MailboxError::TooManyAsks { max: 3 }));
    // Another connection has its own budget; answered asks free it.
    let b = mb.connect("ns");
    b.handle_frame(publish_frame(&id(0), 10, 0, b"x")).unwrap();
    a.handle_frame(ask_frame(&id(3), 10)).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_full_send_queue_makes_a_slow_consumer() {
    let mb = Mailbox::start(Limits { send_queue_frames: 2, ..limits() }).unwrap();
    let mut reader = mb.connect("ns");
    let writer = mb.connect("ns");
    for n in 0..3 {
        reader.handle_frame(ask_frame(&id(n), 10)).unwrap();
    }
    let stalled_writer = {
        let reader = &reader;
        async move { reader.slow_consumer().await }
    };
    for n in 0..2 {
        writer.handle_frame(publish_frame(&id(n), 10, 0, b"x")).unwrap();
    }
    assert!(!reader.member.queue.is_slow(), "two frames fit");
    // The waiter is polled first, so it is woken by the overflow rather than finding it.
    let ((), ()) = tokio::join!(
        async { tokio::time::timeout(Duration::from_secs(1), stalled_writer).await.unwrap() },
        async { writer.handle_frame(publish_frame(&id(2), 10, 0, b"x")).unwrap() },
    );
    assert_eq!(reader.recv().await, Err(MailboxError::SlowConsumer));
    assert_eq!(reader.handle_frame(ask_frame(&id(0), 10)), Err(MailboxError::SlowConsumer));
    // The writer is unaffected.
    assert_eq!(writer.handle_frame(ask_frame(&id(0), 10)), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn recv_waits_for_a_later_publish() {
    let mb = Mailbox::start(limits()).unwrap();
    let mut a = mb.connect("ns");
    let b = mb.connect("ns");
    a.handle_frame(ask_frame(&id(12), 30)).unwrap();
    let msg = publish_frame(&id(12), 30, 0, b"later");
    let expected = msg.clone();
    let waiter = tokio::spawn(async move { a.recv().await });
    tokio::task::yield_now().await;
    advance(Duration::from_secs(5)).await;
    b.handle_frame(msg).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
    assert_eq!(got, Ok(expected));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_connection_withdraws_its_asks_and_idle_namespaces_go() {
    let mb = Mailbox::start(limits()).unwrap();
    let a = mb.connect("ns");
    a.handle_frame(ask_frame(&id(1), 10)).unwrap();
    a.handle_frame(publish_frame(&id(2), 5, 0, b"outlives its publisher")).unwrap();
    drop(a);
    let stats = mb.stats();
    assert_eq!((stats.pending_asks, stats.connections, stats.namespaces), (0, 0, 1));
    // A later party still gets the stored message.
    let mut b = mb.connect("ns");
    b.handle_frame(ask_frame(&id(2), 5)).unwrap();
    assert_eq!(drain(&mut b).len(), 1);
    drop(b);
    advance(Duration::from_secs(5)).await;
    mb.sweep(Instant::now());
    assert_eq!(mb.stats(), MailboxStats::default());

    // An empty namespace goes as soon as its last connection does.
    drop(mb.connect("empty"));
    assert_eq!(mb.stats().namespaces, 0);
}

#[tokio::test(start_paused = true)]
async fn the_background_sweeper_forgets_idle_namespaces() {
    let mb = Mailbox::start(limits()).unwrap();
    mb.connect("ns").handle_frame(publish_frame(&id(1), 2, 0, b"x")).unwrap();
    assert_eq!(mb.stats().namespaces, 1);
    tokio::time::sleep(Duration::from_secs(2) + SWEEP_INTERVAL * 2).await;
    assert_eq!(mb.stats(), MailboxStats::default());
}

#[tokio::test(start_paused = true)]
async fn the_deadline_entries_stay_proportional_to_what_lives() {
    let mb = Mailbox::start(limits()).unwrap();
    let mut a = mb.connect("ns");
    let b = mb.connect("ns");
    // Unique one-receiver messages taken at once leave stale deadlines behind.
    for n in 0..10_000u32 {
        let mut mid = [0u8; 32];
        mid[..4].copy_from_slice(&n.to_le_bytes());
        b.handle_frame(publish_frame(&mid, 100, FLAG_ONE_RECEIVER, b"x")).unwrap();
        a.handle_frame(ask_frame(&mid, 100)).unwrap();
        drain(&mut a);
    }
    let lens = a.space.deadline_lens();
    assert!(lens.iter().all(|&len| len <= 2 * 64 + 2), "{lens:?}");
}

/// Two IDs the namespace keeps in different shards.
fn ids_in_two_shards(conn: &MailboxConn) -> (MessageId, MessageId) {
    let first = id(1);
    let other =
        (2..=255).map(id).find(|other| conn.space.shard_index(other) != conn.space.shard_index(&first));
    (first, other.expect("a namespace has more than one shard by default"))
}

#[tokio::test(start_paused = true)]
async fn the_byte_budget_holds_across_shards() {
    let mb = Mailbox::start(Limits { max_namespace_held_bytes: 300, ..limits() }).unwrap();
    let c = mb.connect("ns");
    // 100-byte frames: three fit in the namespace whatever shards their IDs land in.
    for n in 0..3 {
        let flags = if n == 0 { FLAG_ONE_RECEIVER } else { 0 };
        c.handle_frame(publish_frame(&id(n), 10, flags, &[0; 64])).unwrap();
    }
    for n in 3..40 {
        assert_eq!(
            c.handle_frame(publish_frame(&id(n), 10, 0, &[0; 64])),
            Err(MailboxError::NamespaceFull { max: 300 }),
            "id {n} went over the namespace's budget"
        );
    }
    assert_eq!((mb.stats().entries, mb.stats().bytes), (3, 300));
    // The one-receiver message, once taken, frees its bytes for any shard.
    let mut taker = mb.connect("ns");
    taker.handle_frame(ask_frame(&id(0), 10)).unwrap();
    c.handle_frame(publish_frame(&id(50), 10, FLAG_ONE_RECEIVER, &[0; 64])).unwrap();
    taker.handle_frame(ask_frame(&id(50), 10)).unwrap();
    assert_eq!(drain(&mut taker).len(), 2);
    // Expired messages in other shards are forgotten to make room, without a sweep.
    advance(Duration::from_secs(10)).await;
    for n in 100..103 {
        c.handle_frame(publish_frame(&id(n), 10, 0, &[0; 64])).unwrap();
    }
    assert_eq!((mb.stats().entries, mb.stats().bytes), (3, 300));
}

#[tokio::test(start_paused = true)]
async fn expired_asks_in_other_shards_do_not_count_against_the_limit() {
    let mb = Mailbox::start(Limits { max_pending_asks: 1, ..limits() }).unwrap();
    let a = mb.connect("ns");
    let (x, y) = ids_in_two_shards(&a);
    a.handle_frame(ask_frame(&x, 1)).unwrap();
    assert_eq!(a.handle_frame(ask_frame(&y, 10)), Err(MailboxError::TooManyAsks { max: 1 }));
    // x's ask is due but its shard was not touched since: y's shard asks anyway.
    advance(Duration::from_secs(1)).await;
    a.handle_frame(ask_frame(&y, 10)).unwrap();
    assert_eq!(mb.stats().pending_asks, 1);
}

#[tokio::test(start_paused = true)]
async fn ids_in_different_shards_do_not_interfere() {
    let mb = Mailbox::start(limits()).unwrap();
    let mut a = mb.connect("ns");
    let mut b = mb.connect("ns");
    let publisher = mb.connect("ns");
    let (x, y) = ids_in_two_shards(&a);
    a.handle_frame(ask_frame(&x, 10)).unwrap();
    b.handle_frame(ask_frame(&y, 10)).unwrap();
    let to_b = publish_frame(&y, 10, FLAG_ONE_RECEIVER, b"for b");
    publisher.handle_frame(to_b.clone()).unwrap();
    assert!(drain(&mut a).is_empty(), "a waits for another shard's ID");
    assert_eq!(drain(&mut b), vec![to_b]);
    assert_eq!(mb.stats().pending_asks, 1);
    // Disconnecting b touches no other shard's asks; expiry of x leaves y's storage.
    drop(b);
    let stored = publish_frame(&y, 50, 0, b"stored");
    publisher.handle_frame(stored.clone()).unwrap();
    advance(Duration::from_secs(10)).await;
    mb.sweep(Instant::now());
    assert_eq!(mb.stats().pending_asks, 0);
    let to_a = publish_frame(&x, 10, 0, b"late for a");
    publisher.handle_frame(to_a).unwrap();
    assert!(drain(&mut a).is_empty(), "a's ask expired");
    a.handle_frame(ask_frame(&y, 10)).unwrap();
    assert_eq!(drain(&mut a), vec![stored]);
}

#[test]
fn many_threads_on_one_namespace_each_get_every_message_once() {
    const THREADS: usize = 8;
    const PER_THREAD: u32 = 500;
    let mb = Mailbox::with_manual_sweep(limits());
    let now = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let mb = &mb;
            scope.spawn(move || {
                // Each thread is a pair: the asker asks for every message before or after
                // its publisher publishes it, half and half, and one-receiver every third.
                let asker = mb.connect("ns");
                let publisher = mb.connect("ns");
                let mut got = Vec::new();
                for n in 0..PER_THREAD {
                    let mut mid = [0u8; 32];
                    mid[..4].copy_from_slice(&n.to_le_bytes());
                    mid[4] = t as u8;
                    mid[8..12].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_le_bytes());
                    let flags = if n % 3 == 0 { FLAG_ONE_RECEIVER } else { 0 };
                    let msg = publish_frame(&mid, 30, flags, &n.to_le_bytes());
                    if n % 2 == 0 {
                        asker.handle_frame_at(ask_frame(&mid, 30), now).unwrap();
                        publisher.handle_frame_at(msg, now).unwrap();
                    } else {
                        publisher.handle_frame_at(msg, now).unwrap();
                        asker.handle_frame_at(ask_frame(&mid, 30), now).unwrap();
                    }
                    if n % 64 == 63 {
                        asker.try_recv_many(&mut got, usize::MAX).unwrap();
                    }
                }
                asker.try_recv_many(&mut got, usize::MAX).unwrap();
                let mut seen: Vec<u32> = got
                    .iter()
                    .map(|frame| u32::from_le_bytes(frame[HEADER_LEN..].try_into().unwrap()))
                    .collect();
                seen.sort_unstable();
                assert_eq!(seen, (0..PER_THREAD).collect::<Vec<_>>(), "thread {t}");
            });
        }
    });
    let stats = mb.stats();
    assert_eq!(stats.pending_asks, 0);
    let one_receiver = (0..PER_THREAD).filter(|n| n % 3 == 0).count();
    assert_eq!(stats.entries, THREADS * (PER_THREAD as usize - one_receiver));
}

/// A waker that counts its wake-ups.
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn counting_waker() -> (std::sync::Arc<CountingWaker>, std::task::Waker) {
    let count = std::sync::Arc::new(CountingWaker(std::sync::atomic::AtomicUsize::new(0)));
    (count.clone(), std::task::Waker::from(count))
}

fn woken(count: &CountingWaker) -> usize {
    count.0.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test(start_paused = true)]
async fn deferred_frames_wake_each_receiver_once_after_the_burst() {
    let mb = Mailbox::start(limits()).unwrap();
    let a = mb.connect("ns");
    let mut publisher = mb.connect("ns");
    let (count, waker) = counting_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut out = Vec::new();
    for n in 0..3 {
        a.handle_frame(ask_frame(&id(n), 10)).unwrap();
    }
    // The receiver waits: nothing queued, its waker registered.
    assert!(a.poll_recv_many(&mut cx, &mut out, 64).is_pending());

    for n in 0..3 {
        publisher.handle_frame_deferred(publish_frame(&id(n), 10, 0, b"m"), Instant::now()).unwrap();
    }
    assert_eq!(woken(&count), 0, "no wake-up before the burst ends");
    publisher.wake_receivers();
    assert_eq!(woken(&count), 1, "one wake-up for the whole burst");
    assert_eq!(a.poll_recv_many(&mut cx, &mut out, 64), std::task::Poll::Ready(Ok(3)));
    assert_eq!(out.len(), 3);
    publisher.wake_receivers();
    assert_eq!(woken(&count), 1, "nothing more is owed");
}

#[tokio::test(start_paused = true)]
async fn an_immediate_frame_wakes_its_receiver_at_once_and_a_dropped_publisher_pays_its_debts() {
    let mb = Mailbox::start(limits()).unwrap();
    let a = mb.connect("ns");
    let (count, waker) = counting_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut out = Vec::new();
    a.handle_frame(ask_frame(&id(1), 10)).unwrap();
    a.handle_frame(ask_frame(&id(2), 10)).unwrap();
    assert!(a.poll_recv_many(&mut cx, &mut out, 64).is_pending());
    mb.connect("ns").handle_frame(publish_frame(&id(1), 10, 0, b"now")).unwrap();
    assert_eq!(woken(&count), 1);

    assert_eq!(a.poll_recv_many(&mut cx, &mut out, 64), std::task::Poll::Ready(Ok(1)));
    assert!(a.poll_recv_many(&mut cx, &mut out, 64).is_pending());
    let mut publisher = mb.connect("ns");
    publisher.handle_frame_deferred(publish_frame(&id(2), 10, 0, b"later"), Instant::now()).unwrap();
    assert_eq!(woken(&count), 1);
    drop(publisher);
    assert_eq!(woken(&count), 2, "dropping the publisher wakes what it deferred");
}

#[test]
fn starting_a_mailbox_outside_a_runtime_is_an_error_and_manual_sweep_works() {
    assert!(matches!(Mailbox::start(limits()), Err(CoreError::NoRuntime)));
    let mb = Mailbox::with_manual_sweep(limits());
    let conn = mb.connect("ns");
    conn.handle_frame_at(publish_frame(&id(9), 5, 0, b"x"), Instant::now()).unwrap();
    assert_eq!(mb.stats().entries, 1);
    drop(conn);
    mb.sweep(Instant::now() + Duration::from_secs(6));
    assert_eq!(mb.stats().entries, 0);
}

#[tokio::test(start_paused = true)]
async fn the_ask_hook_hears_how_long_each_ask_waited_and_which_expired() {
    let mb = Mailbox::start(limits()).unwrap();
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = heard.clone();
    assert!(mb.set_on_ask(move |end| sink.lock().unwrap().push(end)));
    assert!(!mb.set_on_ask(|_| {}), "only the first hook is kept");
    let asker = mb.connect("ns");
    let publisher = mb.connect("ns");
    let t0 = Instant::now();

    asker.handle_frame_at(ask_frame(&id(1), 10), t0).unwrap();
    asker.handle_frame_at(ask_frame(&id(2), 10), t0).unwrap();
    publisher.handle_frame_at(publish_frame(&id(1), 10, 0, b"late"), t0 + Duration::from_secs(3)).unwrap();
    // Stored already: answered at once. Then id 2's ask passes its TTL unanswered.
    asker.handle_frame_at(ask_frame(&id(1), 10), t0 + Duration::from_secs(4)).unwrap();
    mb.sweep(t0 + Duration::from_secs(11));
    assert_eq!(
        *heard.lock().unwrap(),
        [
            AskEnd::Answered { waited: Duration::from_secs(3) },
            AskEnd::Answered { waited: Duration::ZERO },
            AskEnd::Expired,
        ]
    );
}

/// Stored messages and queued frames are charged to the process-wide budget with their
/// overheads; a PUB that does not fit is refused with `HeldBytesFull` (and others'
/// stored messages stay); the budget is back at zero once everything is taken, expired
/// or dropped with its connection.
#[tokio::test(start_paused = true)]
async fn the_held_bytes_budget_covers_stored_and_queued_frames_and_returns_to_zero() {
    let first = publish_frame(&id(1), 10, 0, &[1u8; 64]);
    let stored = first.len() + STORED_MESSAGE_OVERHEAD;
    let budget = HeldBytes::new(stored + stored / 2);
    let mb = Mailbox::start_with_budget(limits(), budget.clone()).unwrap();
    let publisher = mb.connect("ns");
    publisher.handle_frame(first.clone()).unwrap();
    assert_eq!(budget.held(), stored);
    let second = publish_frame(&id(2), 10, 0, &[2u8; 64]);
    assert_eq!(
        mb.connect("other").handle_frame(second.clone()),
        Err(MailboxError::HeldBytesFull { max: budget.max() })
    );
    assert_eq!(mb.stats().entries, 1, "the refused PUB stored nothing");
    // The stored message is still served; while queued it is charged again.
    let mut asker = mb.connect("ns");
    asker.handle_frame(ask_frame(&id(1), 10)).unwrap();
    // Charged in a step: one small frame takes a whole step.
    assert_eq!(budget.held(), stored + CHARGE_STEP_BYTES.max(first.len() + QUEUED_FRAME_OVERHEAD));
    assert_eq!(drain(&mut asker), vec![first.clone()]);
    assert_eq!(budget.held(), stored);
    // Expiry gives the stored message back.
    advance(Duration::from_secs(11)).await;
    mb.sweep(Instant::now());
    assert_eq!(budget.held(), 0);
    // A frame queued for a connection that goes away is given back with it.
    let waiter = mb.connect("ns");
    waiter.handle_frame(ask_frame(&id(3), 10)).unwrap();
    publisher.handle_frame(publish_frame(&id(3), 0, 0, b"now")).unwrap();
    assert!(budget.held() > 0);
    drop(waiter);
    assert_eq!(budget.held(), 0);
    drop(asker);
}

/// A connection's send queue is bounded in bytes as well as frames: past
/// `send_queue_bytes` it is a slow consumer, and what it held is given back.
#[tokio::test(start_paused = true)]
async fn a_send_queue_over_its_bytes_is_a_slow_consumer() {
    let frame = publish_frame(&id(0), 0, 0, &[0u8; 1000]);
    let budget = HeldBytes::new(1 << 30);
    let limits = Limits { send_queue_bytes: 2 * frame.len(), ..limits() };
    let mb = Mailbox::start_with_budget(limits, budget.clone()).unwrap();
    let publisher = mb.connect("ns");
    let reader = mb.connect("ns");
    for n in 1..=3 {
        reader.handle_frame(ask_frame(&id(n), 10)).unwrap();
    }
    publisher.handle_frame(publish_frame(&id(1), 0, 0, &[0u8; 1000])).unwrap();
    publisher.handle_frame(publish_frame(&id(2), 0, 0, &[0u8; 1000])).unwrap();
    // Both frames fit in the first step of the queue's charge.
    assert_eq!(budget.held(), CHARGE_STEP_BYTES.max(2 * (frame.len() + QUEUED_FRAME_OVERHEAD)));
    publisher.handle_frame(publish_frame(&id(3), 0, 0, &[0u8; 1000])).unwrap();
    assert_eq!(reader.try_recv_many(&mut Vec::new(), 10), Err(MailboxError::SlowConsumer));
    assert_eq!(budget.held(), 0);
}

#[tokio::test(start_paused = true)]
async fn deliver_reaches_waiters_without_storing() {
    let mb = Mailbox::start(limits()).unwrap();
    let ns = Namespace::from("ns");
    let mut a = mb.connect(ns.clone());
    let mut b = mb.connect(ns.clone());
    let msg = publish_frame(&id(7), 10, 0, b"from elsewhere");
    assert!(!mb.deliver(&ns, msg.clone(), Instant::now()), "nobody waits yet");
    assert!(!mb.is_waiting(&ns, &id(7)));
    a.handle_frame(ask_frame(&id(7), 10)).unwrap();
    b.handle_frame(ask_frame(&id(7), 10)).unwrap();
    assert!(mb.is_waiting(&ns, &id(7)));
    assert!(mb.deliver(&ns, msg.clone(), Instant::now()));
    assert_eq!(drain(&mut a), vec![msg.clone()]);
    assert_eq!(drain(&mut b), vec![msg]);
    assert_eq!(mb.stats().entries, 0, "a delivered frame is not stored");
    assert!(!a.holds(&id(7)));
    assert!(!mb.is_waiting(&ns, &id(7)));
    assert!(!mb.deliver(&Namespace::from("other"), publish_frame(&id(7), 10, 0, b"x"), Instant::now()));
}

#[tokio::test(start_paused = true)]
async fn deliver_of_a_one_receiver_message_reaches_one_waiter() {
    let mb = Mailbox::start(limits()).unwrap();
    let ns = Namespace::from("ns");
    let mut a = mb.connect(ns.clone());
    let mut b = mb.connect(ns.clone());
    a.handle_frame(ask_frame(&id(8), 10)).unwrap();
    b.handle_frame(ask_frame(&id(8), 10)).unwrap();
    let msg = publish_frame(&id(8), 10, FLAG_ONE_RECEIVER, b"once");
    assert!(mb.deliver(&ns, msg.clone(), Instant::now()));
    assert_eq!(drain(&mut a).len() + drain(&mut b).len(), 1);
    assert!(mb.is_waiting(&ns, &id(8)), "the other asker still waits");
    // A stored message of the same ID wins over a delivered one.
    let local = publish_frame(&id(9), 10, 0, b"local");
    a.handle_frame(local.clone()).unwrap();
    assert!(a.holds(&id(9)));
    assert!(!mb.deliver(&ns, publish_frame(&id(9), 10, 0, b"remote"), Instant::now()));
}

/// A queue charges the held-bytes budget in steps: never less than what it holds, never
/// more than that plus one step, and nothing once it is empty.
#[tokio::test(start_paused = true)]
async fn a_send_queue_charges_the_budget_in_steps_and_gives_everything_back_when_empty() {
    let budget = HeldBytes::new(1 << 30);
    let mb = Mailbox::start_with_budget(limits(), budget.clone()).unwrap();
    let publisher = mb.connect("ns");
    let reader = mb.connect("ns");
    let frames: Vec<Bytes> = (0..200u8).map(|n| publish_frame(&id(n), 0, 0, &[n; 300])).collect();
    let mut queued = 0;
    for (n, frame) in frames.iter().enumerate() {
        reader.handle_frame(ask_frame(&id(n as u8), 10)).unwrap();
        publisher.handle_frame(frame.clone()).unwrap();
        queued += frame.len() + QUEUED_FRAME_OVERHEAD;
        let held = budget.held();
        assert!(held >= queued && held <= queued + CHARGE_STEP_BYTES, "{held} for {queued} queued");
    }
    let mut out = Vec::new();
    reader.try_recv_many(&mut out, 150).unwrap();
    let rest: usize = frames[150..].iter().map(|f| f.len() + QUEUED_FRAME_OVERHEAD).sum();
    let held = budget.held();
    assert!(held >= rest && held <= rest + CHARGE_STEP_BYTES, "{held} for {rest} still queued");
    reader.try_recv_many(&mut out, 100).unwrap();
    assert_eq!(out.len(), 200);
    assert_eq!(budget.held(), 0, "an empty queue holds no charge");
}

/// Shards take the namespace's bytes in steps, never over its bound, and give them all
/// back once they store nothing.
#[tokio::test(start_paused = true)]
async fn shards_take_the_namespace_bytes_in_steps_and_give_them_back_when_empty() {
    let mb = Mailbox::start(limits()).unwrap();
    let publisher = mb.connect("ns");
    let mut taker = mb.connect("ns");
    let frames: Vec<Bytes> =
        (0..50u8).map(|n| publish_frame(&id(n), 10, FLAG_ONE_RECEIVER, &[n; 300])).collect();
    for frame in &frames {
        publisher.handle_frame(frame.clone()).unwrap();
    }
    let stored: usize = frames.iter().map(Bytes::len).sum();
    let counted = publisher.space.counted_bytes();
    let shards = limits().mailbox_namespace_shards;
    assert!(
        counted >= stored && counted <= stored + shards * 2 * NAMESPACE_STEP_BYTES,
        "{counted} for {stored}"
    );
    assert_eq!(mb.stats().bytes, stored, "the stats count what is stored, not the allowances");
    for n in 0..50u8 {
        taker.handle_frame(ask_frame(&id(n), 10)).unwrap();
    }
    assert_eq!(drain(&mut taker).len(), 50);
    assert_eq!(publisher.space.counted_bytes(), 0, "every shard gave its allowance back");
}

#[tokio::test(start_paused = true)]
async fn an_ask_repeated_while_its_answer_is_queued_waits_again_and_goes_with_its_connection() {
    let mb = Mailbox::start(limits()).unwrap();
    let a = mb.connect("ns");
    let publisher = mb.connect("ns");
    a.handle_frame(ask_frame(&id(1), 10)).unwrap();
    publisher.handle_frame(publish_frame(&id(1), 10, FLAG_ONE_RECEIVER, b"first")).unwrap();
    // The answer is still queued (not taken); the same ID asked again waits for a
    // second message.
    a.handle_frame(ask_frame(&id(1), 10)).unwrap();
    assert_eq!(mb.stats().pending_asks, 1);
    drop(a);
    let stats = mb.stats();
    assert_eq!((stats.pending_asks, stats.entries), (0, 0));
    // Nobody waits now: a second one-receiver message is stored for a later asker.
    publisher.handle_frame(publish_frame(&id(1), 10, FLAG_ONE_RECEIVER, b"second")).unwrap();
    assert_eq!(mb.stats().entries, 1);
}

#[tokio::test(start_paused = true)]
async fn a_closing_connection_is_passed_over_for_a_one_receiver_message() {
    let mb = Mailbox::start(limits()).unwrap();
    let mut a = mb.connect("ns");
    let mut b = mb.connect("ns");
    a.handle_frame(ask_frame(&id(3), 10)).unwrap();
    b.handle_frame(ask_frame(&id(3), 10)).unwrap();
    // The moment between closing a's queue and withdrawing its asks, as when `a` is
    // dropped on one thread while `publisher` publishes on another.
    let withdrawn = a.member.queue.close();
    assert_eq!(withdrawn.len(), 1);
    let publisher = mb.connect("ns");
    publisher.handle_frame(publish_frame(&id(3), 10, FLAG_ONE_RECEIVER, b"once")).unwrap();
    assert!(drain(&mut a).is_empty());
    assert_eq!(drain(&mut b).len(), 1);
    assert_eq!(mb.stats().pending_asks, 0);
    drop(a);
    assert_eq!(mb.stats().pending_asks, 0);
}

#[tokio::test(start_paused = true)]
async fn a_queue_keeps_its_connections_asks_one_per_id_and_at_most_the_limit() {
    let mb = Mailbox::start(limits()).unwrap();
    let conn = mb.connect("ns");
    let queue = &conn.member.queue;
    assert_eq!(queue.add_ask(&id(1), 2), Ok(true));
    assert_eq!(queue.add_ask(&id(1), 2), Ok(false));
    assert_eq!(queue.add_ask(&id(2), 2), Ok(true));
    assert_eq!(queue.add_ask(&id(3), 2), Err(MailboxError::TooManyAsks { max: 2 }));
    // An answer and an expiry each free a place.
    assert!(matches!(queue.answer(&id(1), Bytes::from_static(b"x")), queue::Pushed::Queued(_)));
    queue.forget_ask(&id(2));
    assert_eq!(queue.add_ask(&id(3), 2), Ok(true));
    assert_eq!(queue.add_ask(&id(4), 2), Ok(true));
    // Closed: every ask handed over, every later frame refused.
    assert_eq!(queue.close().len(), 2);
    assert!(matches!(queue.answer(&id(3), Bytes::from_static(b"y")), queue::Pushed::Closed));
}
