//! The mailbox across instances on Redis: two real `relay-server` binaries sharing one
//! Redis (each test its own key prefix, `TestRedis`), driven over real sockets with
//! frames built by hand. The restart test runs a redis-server of its own on a free
//! port, so the shared one is never stopped.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use futures_util::SinkExt;
use http::StatusCode;
use relay_core::RoomId;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::mailbox::{
    ask, connect, expect_close, expect_nothing, frame, id_of, next_message, recv_binary, send,
};
use crate::support::services::TestRedis;
use crate::support::{
    RelayProcess, STEP_TIMEOUT, Ws, dkls_message_id, http_request, post_json, refusal_status, skip_without,
    ws_connect,
};

/// The one-receiver flag.
const ONCE: u16 = 0x8000;

/// Two relays sharing `url` under `prefix`.
async fn two_relays(url: &str, prefix: &str) -> (RelayProcess, RelayProcess) {
    let args = ["--insecure-api-keys-not-enforced", "--redis-url", url, "--redis-prefix", prefix];
    let a = RelayProcess::start(&args).await.expect("start relay A");
    let b = RelayProcess::start(&args).await.expect("start relay B");
    (a, b)
}

async fn mailbox(relay: &RelayProcess) -> Ws {
    connect(relay.addr, "/v1/msg-relay").await
}

#[tokio::test]
async fn a_message_published_on_a_reaches_an_asker_on_b() {
    let Some(redis) = TestRedis::create().await else { return };
    let (a, b) = two_relays(&redis.url, &redis.prefix).await;

    // Asker first: B waits, A publishes.
    let mut asker = mailbox(&b).await;
    let mut publisher = mailbox(&a).await;
    let first = frame(id_of("asker first"), 30, 0, b"from A to B");
    send(&mut asker, ask(id_of("asker first"), 30)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut publisher, first.clone()).await;
    assert_eq!(recv_binary(&mut asker).await, first, "byte for byte across instances");

    // Publisher first: A stores, B asks later (on a new connection).
    let second = frame(id_of("publisher first"), 30, 0, b"stored in Redis");
    send(&mut publisher, second.clone()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut late = mailbox(&b).await;
    send(&mut late, ask(id_of("publisher first"), 30)).await;
    assert_eq!(recv_binary(&mut late).await, second);
    // It stays for other askers, on either instance.
    send(&mut asker, ask(id_of("publisher first"), 30)).await;
    assert_eq!(recv_binary(&mut asker).await, second);
    let mut local = mailbox(&a).await;
    send(&mut local, ask(id_of("publisher first"), 30)).await;
    assert_eq!(recv_binary(&mut local).await, second);

    // The first publish wins across instances too.
    send(&mut late, frame(id_of("publisher first"), 30, 0, b"second publish from B")).await;
    let mut third = mailbox(&b).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut third, ask(id_of("publisher first"), 30)).await;
    assert_eq!(recv_binary(&mut third).await, second);
    assert!(redis.key_count().await > 0, "the messages live under the test's prefix");
}

#[tokio::test]
async fn the_one_receiver_flag_holds_across_instances() {
    let Some(redis) = TestRedis::create().await else { return };
    let (a, b) = two_relays(&redis.url, &redis.prefix).await;
    let mut publisher = mailbox(&a).await;

    // Askers waiting on both instances, none on the publisher's own: exactly one gets it.
    let mut waiting = vec![mailbox(&b).await, mailbox(&b).await, mailbox(&a).await];
    let id = id_of("once, waited for");
    for ws in &mut waiting[..2] {
        send(ws, ask(id, 30)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let msg = frame(id, 30, ONCE, b"only one of you");
    send(&mut publisher, msg.clone()).await;
    assert_eq!(received(&mut waiting, &msg).await, 1, "one asker of the two waiting on B");

    // Published first, asked for from both instances at once: exactly one gets it.
    let id = id_of("once, stored");
    let msg = frame(id, 30, ONCE, b"stored once");
    send(&mut publisher, msg.clone()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for ws in &mut waiting {
        send(ws, ask(id, 30)).await;
    }
    assert_eq!(received(&mut waiting, &msg).await, 1, "one asker across A and B");

    // An asker on the publisher's own instance takes it locally; B's asker gets nothing.
    let id = id_of("once, local");
    let msg = frame(id, 30, ONCE, b"taken on A");
    let mut on_a = mailbox(&a).await;
    let mut on_b = mailbox(&b).await;
    send(&mut on_a, ask(id, 30)).await;
    send(&mut on_b, ask(id, 30)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut publisher, msg.clone()).await;
    assert_eq!(recv_binary(&mut on_a).await, msg);
    expect_nothing(&mut on_b).await;
}

/// How many of `conns` receive `msg` within a quiet period (each at most once).
async fn received(conns: &mut [Ws], msg: &[u8]) -> usize {
    let mut count = 0;
    for ws in conns {
        if let Some(Message::Binary(b)) = next_message(ws, Duration::from_millis(800)).await {
            assert_eq!(&b[..], msg);
            count += 1;
        }
    }
    count
}

/// A DKLs23-shaped run with the parties split across the two instances: each round
/// every party broadcasts one message and sends one to each other party (P2P, one
/// receiver on even rounds), and asks for an abort tag that never comes.
#[tokio::test]
async fn a_dkls_shaped_run_with_parties_split_across_instances_completes() {
    let Some(redis) = TestRedis::create().await else { return };
    let (a, b) = two_relays(&redis.url, &redis.prefix).await;
    const PARTIES: u8 = 3;
    const ROUNDS: u8 = 5;
    const BROADCAST: u8 = 0xbb;
    let session = RoomId::generate(None);
    let derive = move |round: u8, from: u8, to: u8| dkls_message_id(&session, round, from, to);
    let payload = |round: u8, from: u8, to: u8| format!("round {round}: {from} -> {to}").into_bytes();
    let addrs: [SocketAddr; 2] = [a.addr, b.addr];
    let mut parties = Vec::new();
    for me in 0..PARTIES {
        // Parties 0 and 2 on A, party 1 on B.
        let mut ws = connect(addrs[usize::from(me % 2)], "/v1/msg-relay").await;
        parties.push(tokio::spawn(async move {
            send(&mut ws, ask(derive(0xff, 0xff, me), 60)).await;
            for round in 0..ROUNDS {
                let p2p_flags = if round % 2 == 0 { ONCE } else { 0 };
                send(&mut ws, frame(derive(round, me, BROADCAST), 60, 0, &payload(round, me, BROADCAST)))
                    .await;
                for other in (0..PARTIES).filter(|&p| p != me) {
                    send(&mut ws, frame(derive(round, me, other), 60, p2p_flags, &payload(round, me, other)))
                        .await;
                    send(&mut ws, ask(derive(round, other, BROADCAST), 60)).await;
                    send(&mut ws, ask(derive(round, other, me), 60)).await;
                }
                let mut got = HashSet::new();
                for _ in 0..2 * (PARTIES - 1) {
                    let f = recv_binary(&mut ws).await;
                    let (from, to) = (f[17], f[18]);
                    let flags = if to == BROADCAST { 0 } else { p2p_flags };
                    assert_eq!(f, frame(derive(round, from, to), 60, flags, &payload(round, from, to)));
                    assert!(got.insert((from, to)), "party {me} got ({from}, {to}) twice in round {round}");
                }
                assert_eq!(got.len(), 2 * usize::from(PARTIES - 1), "party {me} round {round}");
            }
            expect_nothing(&mut ws).await;
            ws.close(None).await.ok();
        }));
    }
    for party in parties {
        tokio::time::timeout(STEP_TIMEOUT * 3, party).await.expect("protocol finished").expect("party ok");
    }
}

#[tokio::test]
async fn redis_unreachable_at_start_exits_2_naming_redis_and_where_without_the_password() {
    let port = free_port().await;
    let url = format!("redis://:hunter2@127.0.0.1:{port}");
    let out = tokio::time::timeout(
        STEP_TIMEOUT * 2,
        crate::support::run_binary(&[
            "--listen",
            "127.0.0.1:0",
            "--insecure-api-keys-not-enforced",
            "--data-dir",
            tempfile::tempdir().expect("temp dir").path().to_str().expect("utf-8 path"),
            "--redis-url",
            &url,
        ]),
    )
    .await
    .expect("the relay gives up in time")
    .expect("run the binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(&format!("Redis at 127.0.0.1:{port}")), "stderr: {stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}

/// A redis-server of this test's own, on a free port, without persistence.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    async fn start(port: u16) -> Option<OwnRedis> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let Ok(child) = child else {
            skip_without("redis-server", "apt-get install redis-server");
            return None;
        };
        let own = OwnRedis { port, child: Some(child) };
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        while !own.answers().await {
            assert!(tokio::time::Instant::now() < deadline, "own redis-server on {port} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(own)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn answers(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else { return false };
        let ping = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        matches!(tokio::time::timeout(Duration::from_secs(1), ping).await, Ok(Ok(_)))
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill own redis-server");
        }
    }
}

async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

async fn readyz(relay: &RelayProcess) -> StatusCode {
    http_request(relay.addr, "GET", "/readyz", &[], b"").await.expect("GET /readyz").status
}

/// Waits until `/readyz` of `relay` answers `want`.
async fn wait_ready(relay: &RelayProcess, want: StatusCode) {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    while readyz(relay).await != want {
        assert!(tokio::time::Instant::now() < deadline, "/readyz never answered {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes on A and receives on B: the shared mailbox works.
async fn exchange(a: &RelayProcess, b: &RelayProcess, tag: &str) {
    let mut asker = mailbox(b).await;
    let mut publisher = mailbox(a).await;
    send(&mut asker, ask(id_of(tag), 30)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let msg = frame(id_of(tag), 30, 0, tag.as_bytes());
    send(&mut publisher, msg.clone()).await;
    assert_eq!(recv_binary(&mut asker).await, msg, "exchange {tag}");
}

#[tokio::test]
async fn redis_restarted_mid_run_gives_clear_errors_and_recovers() {
    let port = free_port().await;
    let Some(mut own) = OwnRedis::start(port).await else { return };
    let (a, b) = two_relays(&own.url(), "relay-restart-test:").await;
    exchange(&a, &b, "before the restart").await;
    let mut open = mailbox(&a).await;
    send(&mut open, ask(id_of("never comes"), 60)).await;

    own.kill().await;
    // The open connection is told why, readiness drops, new handshakes are refused.
    let (code, reason) =
        tokio::time::timeout(STEP_TIMEOUT, expect_close(&mut open)).await.expect("closed in time");
    assert_eq!(code, 1013);
    assert!(reason.contains("Redis"), "reason: {reason}");
    wait_ready(&a, StatusCode::SERVICE_UNAVAILABLE).await;
    wait_ready(&b, StatusCode::SERVICE_UNAVAILABLE).await;
    let body = http_request(a.addr, "GET", "/readyz", &[], b"").await.expect("readyz").body;
    assert!(String::from_utf8_lossy(&body).contains("redis"), "readyz names redis: {body:?}");
    let refused = ws_connect(b.addr, "/v1/msg-relay").await.expect_err("refused while Redis is down");
    assert_eq!(refusal_status(&refused), Some(StatusCode::SERVICE_UNAVAILABLE));
    // Rooms do not need Redis.
    let created =
        post_json(a.addr, "/v1/rooms", &[], &serde_json::json!({"room_size": 2})).await.expect("create");
    assert_eq!(created.status, StatusCode::CREATED, "rooms keep working");
    let metrics = http_request(a.addr, "GET", "/metrics", &[], b"").await.expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(metrics.contains("relay_dependency_up{dependency=\"redis\"} 0"), "metrics: {metrics}");

    // Back on the same port: both instances recover by themselves.
    let own = OwnRedis::start(port).await.expect("restart own redis-server");
    wait_ready(&a, StatusCode::OK).await;
    wait_ready(&b, StatusCode::OK).await;
    exchange(&a, &b, "after the restart").await;
    exchange(&b, &a, "after the restart, the other way").await;
    assert!(a.output().contains("unreachable"), "the loss is logged: {}", a.output());
    drop(own);
}

/// The namespace's byte budget counts what the namespace holds in Redis, whichever
/// instance stored it: one-receiver messages nobody waits for live only there.
#[tokio::test]
async fn the_namespace_budget_holds_across_instances() {
    let Some(redis) = TestRedis::create().await else { return };
    let args = [
        "--insecure-api-keys-not-enforced",
        "--redis-url",
        &redis.url,
        "--redis-prefix",
        &redis.prefix,
        "--max-namespace-held-bytes",
        "400",
    ];
    let a = RelayProcess::start(&args).await.expect("start relay A");
    let b = RelayProcess::start(&args).await.expect("start relay B");
    let payload = [0x77u8; 200]; // 236-byte frames: one fits in 400 bytes, two do not
    let mut on_a = mailbox(&a).await;
    let first = frame(id_of("budget 1"), 60, ONCE, &payload);
    send(&mut on_a, first.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut on_b = mailbox(&b).await;
    send(&mut on_b, frame(id_of("budget 2"), 60, ONCE, &payload)).await;
    let (code, reason) = expect_close(&mut on_b).await;
    assert_eq!((code, reason.as_str()), (1013, "namespace storage full"), "refused by A's message in Redis");

    // Taken from B, the first frees the budget: B's next publish is stored.
    let mut asker = mailbox(&b).await;
    send(&mut asker, ask(id_of("budget 1"), 30)).await;
    assert_eq!(recv_binary(&mut asker).await, first);
    let mut again = mailbox(&b).await;
    let third = frame(id_of("budget 3"), 60, ONCE, &payload);
    send(&mut again, third.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut on_a, ask(id_of("budget 3"), 30)).await;
    assert_eq!(recv_binary(&mut on_a).await, third, "stored once the budget was freed");
    expect_nothing(&mut again).await;
}

/// A client publishing far more than `--send-queue-frames` frames in one pipelined
/// burst, faster than Redis stores them, is slowed down (its socket read as Redis
/// answers), not closed: every message reaches the askers on the other instance, and
/// the publisher's connection still works afterwards. Half the publishes are kept
/// locally and stored in Redis, half (one receiver, nobody waiting on A) go to Redis
/// only.
#[tokio::test]
async fn a_burst_beyond_the_redis_backlog_is_slowed_down_not_closed() {
    let Some(redis) = TestRedis::create().await else { return };
    const QUEUE: usize = 8;
    const BURST: usize = 2_000;
    const ASKERS: usize = 4;
    let queue = QUEUE.to_string();
    let common =
        ["--insecure-api-keys-not-enforced", "--redis-url", &redis.url, "--redis-prefix", &redis.prefix];
    let a = RelayProcess::start(&[&common[..], &["--send-queue-frames", &queue]].concat())
        .await
        .expect("start relay A");
    let b = RelayProcess::start(&common).await.expect("start relay B");
    let id = |i: usize| id_of(&format!("burst {i}"));
    let msg = |i: usize| {
        frame(id(i), 60, if i.is_multiple_of(2) { 0 } else { ONCE }, format!("message {i}").as_bytes())
    };

    // Askers on B wait for every message, each for its share.
    let mut askers = Vec::new();
    for k in 0..ASKERS {
        let mut ws = mailbox(&b).await;
        for i in (k..BURST).step_by(ASKERS) {
            ws.feed(Message::Binary(ask(id(i), 60).into())).await.expect("queue an ask");
        }
        tokio::time::timeout(STEP_TIMEOUT, ws.flush()).await.expect("asks sent in time").expect("send asks");
        askers.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let receiving: Vec<_> = askers
        .into_iter()
        .enumerate()
        .map(|(k, mut ws)| {
            tokio::spawn(async move {
                let mut got = HashSet::new();
                for _ in (k..BURST).step_by(ASKERS) {
                    got.insert(recv_binary(&mut ws).await);
                }
                expect_nothing(&mut ws).await;
                got
            })
        })
        .collect();

    // One pipelined burst: every frame queued, one flush.
    let mut publisher = mailbox(&a).await;
    for i in 0..BURST {
        publisher.feed(Message::Binary(msg(i).into())).await.expect("queue a publish");
    }
    tokio::time::timeout(STEP_TIMEOUT * 3, publisher.flush())
        .await
        .expect("the burst is read in time")
        .expect("the publisher is not closed while sending");

    for (k, receiving) in receiving.into_iter().enumerate() {
        let got = tokio::time::timeout(STEP_TIMEOUT * 3, receiving)
            .await
            .expect("asker finished in time")
            .expect("asker ok");
        let want: HashSet<Vec<u8>> = (k..BURST).step_by(ASKERS).map(msg).collect();
        assert_eq!(got.len(), want.len(), "asker {k} got every one of its messages");
        assert!(got == want, "asker {k} got exactly its messages, byte for byte");
    }
    // The publisher is still connected, and its instance answers it.
    send(&mut publisher, ask(id(0), 60)).await;
    assert_eq!(recv_binary(&mut publisher).await, msg(0), "the publisher's connection still works");
}
