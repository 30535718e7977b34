//! STUN and TURN (docs/turn.md) against the real binary, with coturn's own clients as
//! the third party: `turnutils_stunclient` for a Binding, `turnutils_uclient` relaying
//! through our server to `turnutils_peer` with credentials from
//! `GET /v1/turn/credentials`. Everything runs on 127.0.0.1, on ports chosen free by the
//! test; peers are on loopback, so the servers that must relay to them run with
//! `--turn-allow-loopback-peers`. Without coturn's tools these tests skip (and fail
//! under `RELAY_REQUIRE_SERVICES=1`); .ci/run installs Debian's `coturn` for them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use hyper::StatusCode;
use tokio::net::{TcpListener, UdpSocket};
use tokio::process::{Child, Command};

use crate::support::{RelayProcess, http_request, skip_without};

const KEY: &str = "ABEiM0RVZneImaq7zN3u/w==";
const KEY_NAME: &str = "backend";
const ADMIN_TOKEN: &str = "turn-e2e-admin-token-0123456789abcdef";
/// Packets uclient sends per run.
const PACKETS: u32 = 20;
/// A coturn client run may take this long before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(40);

/// coturn's three client programs, when installed.
struct Tools {
    stunclient: PathBuf,
    uclient: PathBuf,
    peer: PathBuf,
}

fn tools() -> Option<Tools> {
    let find = |name: &str| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).chain(["/usr/bin".into()]).map(|d| d.join(name)).find(|p| p.is_file())
    };
    Some(Tools {
        stunclient: find("turnutils_stunclient")?,
        uclient: find("turnutils_uclient")?,
        peer: find("turnutils_peer")?,
    })
}

const INSTALL: &str = "apt-get install coturn, for its turnutils_* clients; .ci/run installs it";

/// A port free on 127.0.0.1 for both UDP and TCP right now.
async fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).await.is_ok() {
            return port;
        }
    }
}

/// A relay with keys enforced, the key `backend`, and TURN on a free loopback port.
/// The port is free when chosen but may be taken before the relay binds it (tests run in
/// parallel, and relayed sockets come from the ephemeral range): a relay that could not
/// bind it is started again on another port, a few times at most.
async fn relay_with_turn(extra: &[&str]) -> (RelayProcess, SocketAddr) {
    let key = format!("{KEY},{KEY_NAME}");
    let mut failures = Vec::new();
    for _ in 0..5 {
        let turn: SocketAddr = ([127, 0, 0, 1], free_port().await).into();
        let listen = turn.to_string();
        let mut args = vec!["--api-key", &key, "--secret-auth", ADMIN_TOKEN, "--turn-listen", &listen];
        args.extend_from_slice(extra);
        match RelayProcess::start(&args).await {
            Ok(relay) if relay.output().contains(&format!("STUN/TURN on {turn}")) => return (relay, turn),
            Ok(relay) => failures.push(relay.output()),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    panic!("no relay with TURN started in 5 tries: {failures:#?}");
}

/// Credentials for `KEY` from the relay's REST API.
async fn credentials(relay: &RelayProcess) -> (String, String) {
    let auth = format!("Bearer {KEY}");
    let resp = http_request(relay.addr, "GET", "/v1/turn/credentials", &[("authorization", &auth)], b"")
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let body = resp.json();
    (body["username"].as_str().unwrap().to_owned(), body["password"].as_str().unwrap().to_owned())
}

/// `turnutils_peer` echoing UDP on a free loopback port. Killed on drop.
fn start_peer(tools: &Tools, port: u16) -> Child {
    Command::new(&tools.peer)
        .args(["-L", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn turnutils_peer")
}

/// What a uclient run reported.
#[derive(Debug)]
struct UclientRun {
    success: bool,
    sent: Option<u32>,
    received: Option<u32>,
    lost: Option<u32>,
    output: String,
}

/// Runs `turnutils_uclient` through `turn` to the peer on `peer_port`, `PACKETS`
/// packets of 120 bytes, one client without RTCP; `tcp` for TURN over TCP.
async fn uclient(
    tools: &Tools,
    turn: SocketAddr,
    user: &str,
    pass: &str,
    peer_port: u16,
    tcp: bool,
) -> UclientRun {
    uclient_with(
        tools,
        turn,
        (user, pass),
        peer_port,
        Traffic { tcp, clients: 1, packets: PACKETS, interval_ms: 20 },
    )
    .await
}

/// What a uclient run sends.
#[derive(Debug, Clone, Copy)]
struct Traffic {
    /// TURN over TCP rather than UDP.
    tcp: bool,
    /// Clients, each with its own allocation.
    clients: u32,
    packets: u32,
    /// Milliseconds between packets.
    interval_ms: u32,
}

/// As [`uclient`], with the traffic given.
async fn uclient_with(
    tools: &Tools,
    turn: SocketAddr,
    (user, pass): (&str, &str),
    peer_port: u16,
    Traffic { tcp, clients, packets, interval_ms }: Traffic,
) -> UclientRun {
    let mut cmd = Command::new(&tools.uclient);
    if tcp {
        cmd.arg("-t");
    }
    cmd.args(["-u", user, "-w", pass, "-p", &turn.port().to_string()])
        .args(["-e", "127.0.0.1", "-r", &peer_port.to_string()])
        // One client, no RTCP companion session (-c): exactly PACKETS packets.
        .args(["-n", &packets.to_string(), "-m", &clients.to_string(), "-l", "120", "-c"])
        .args(["-z", &interval_ms.to_string()])
        .arg("127.0.0.1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(CLIENT_TIMEOUT, cmd.output())
        .await
        .expect("turnutils_uclient did not finish in time")
        .expect("run turnutils_uclient");
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // "start_mclient: tot_send_msgs=20, tot_recv_msgs=20" and "Total lost packets 0 (0.000000%)".
    let number_after = |marker: &str| -> Option<u32> {
        let line = output.lines().rev().find(|l| l.contains(marker))?;
        let rest = &line[line.find(marker)? + marker.len()..];
        rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    UclientRun {
        success: out.status.success(),
        sent: number_after("tot_send_msgs="),
        received: number_after("tot_recv_msgs="),
        lost: number_after("Total lost packets"),
        output,
    }
}

/// The value of an unlabelled (or exactly labelled) series on `/metrics`.
async fn metric(relay: &RelayProcess, series: &str) -> u64 {
    let resp = http_request(relay.addr, "GET", "/metrics", &[], b"").await.unwrap();
    let text = resp.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not on /metrics:\n{text}"))
}

#[tokio::test]
async fn stunclient_learns_its_reflexive_address() {
    let Some(tools) = tools() else { return skip_without("coturn", INSTALL) };
    let (_relay, turn) = relay_with_turn(&[]).await;
    let out = tokio::time::timeout(
        CLIENT_TIMEOUT,
        Command::new(&tools.stunclient)
            .args(["-p", &turn.port().to_string(), "127.0.0.1"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("turnutils_stunclient did not finish in time")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("UDP reflexive addr: 127.0.0.1:"), "{text}");
}

#[tokio::test]
async fn uclient_relays_every_packet_to_a_peer_over_udp_and_tcp_with_rest_credentials() {
    let Some(tools) = tools() else { return skip_without("coturn", INSTALL) };
    let (relay, turn) = relay_with_turn(&["--turn-allow-loopback-peers"]).await;
    let peer_port = free_port().await;
    let _peer = start_peer(&tools, peer_port);
    let (user, pass) = credentials(&relay).await;
    assert!(user.ends_with(":backend"), "{user}");

    for tcp in [false, true] {
        let run = uclient(&tools, turn, &user, &pass, peer_port, tcp).await;
        let label = if tcp { "tcp" } else { "udp" };
        assert!(run.success, "{label}: {}", run.output);
        assert_eq!(run.sent, Some(PACKETS), "{label}: {}", run.output);
        assert_eq!(run.received, Some(PACKETS), "{label}: every packet came back: {}", run.output);
        assert_eq!(run.lost, Some(0), "{label}: {}", run.output);
    }
    // Relayed bytes are on /metrics and count as the key's usage.
    assert!(metric(&relay, "relay_turn_relayed_bytes_total").await >= u64::from(2 * 2 * PACKETS * 120));
    assert!(
        metric(&relay, "relay_key_bytes_total{key=\"backend\"}").await >= u64::from(2 * 2 * PACKETS * 120)
    );
    assert!(metric(&relay, "relay_turn_allocations_total").await >= 2);
    assert_eq!(metric(&relay, "relay_turn_peers_refused_total").await, 0);
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let Some(tools) = tools() else { return skip_without("coturn", INSTALL) };
    let (relay, turn) = relay_with_turn(&["--turn-allow-loopback-peers"]).await;
    let peer_port = free_port().await;
    let _peer = start_peer(&tools, peer_port);
    let (user, _) = credentials(&relay).await;
    let run = uclient(&tools, turn, &user, "not-the-password", peer_port, false).await;
    assert!(!run.success, "{}", run.output);
    assert!(run.received.unwrap_or(0) == 0, "{}", run.output);
    assert_eq!(metric(&relay, "relay_turn_allocations_total").await, 0);
}

#[tokio::test]
async fn a_revoked_key_s_credentials_are_refused() {
    let Some(tools) = tools() else { return skip_without("coturn", INSTALL) };
    let (relay, turn) = relay_with_turn(&["--turn-allow-loopback-peers"]).await;
    let peer_port = free_port().await;
    let _peer = start_peer(&tools, peer_port);
    let (user, pass) = credentials(&relay).await;
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let resp =
        http_request(relay.addr, "DELETE", "/v1/admin/keys/backend", &[("authorization", &admin)], b"")
            .await
            .unwrap();
    assert!(resp.status.is_success(), "{} {}", resp.status, resp.text());

    let run = uclient(&tools, turn, &user, &pass, peer_port, false).await;
    assert!(!run.success, "{}", run.output);
    assert!(run.received.unwrap_or(0) == 0, "{}", run.output);
    assert_eq!(metric(&relay, "relay_turn_allocations_total").await, 0);
    assert!(metric(&relay, "relay_turn_auth_refused_total").await >= 1);
}

#[tokio::test]
async fn revoking_a_key_ends_its_live_allocation_within_seconds() {
    let Some(tools) = tools() else { return skip_without("coturn", INSTALL) };
    let (relay, turn) =
        relay_with_turn(&["--turn-allow-loopback-peers", "--turn-key-check-interval", "1s"]).await;
    let peer_port = free_port().await;
    let _peer = start_peer(&tools, peer_port);
    let (user, pass) = credentials(&relay).await;
    // 250 packets 20 ms apart: five seconds of traffic; the key is revoked as soon as
    // the first relayed bytes show on /metrics.
    let traffic = Traffic { tcp: false, clients: 1, packets: 250, interval_ms: 20 };
    let run = uclient_with(&tools, turn, (&user, &pass), peer_port, traffic);
    let revoke = async {
        let flowing = async {
            while metric(&relay, "relay_turn_relayed_bytes_total").await == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(CLIENT_TIMEOUT, flowing).await.expect("no traffic through TURN");
        let admin = format!("Bearer {ADMIN_TOKEN}");
        let resp =
            http_request(relay.addr, "DELETE", "/v1/admin/keys/backend", &[("authorization", &admin)], b"")
                .await
                .unwrap();
        assert!(resp.status.is_success(), "{} {}", resp.status, resp.text());
    };
    let (run, ()) = tokio::join!(run, revoke);
    let received = run.received.unwrap_or(0);
    eprintln!("after revocation mid-run: {received} of 250 packets came back");
    // Some packets made it before the revocation; those sent more than the key check
    // interval (1 s, 50 packets) after it did not.
    assert!(received > 0, "{}", run.output);
    assert!(received < 200, "the allocation outlived its key: {received} of 250 came back\n{}", run.output);
}

#[tokio::test]
async fn a_key_over_its_allocations_is_refused() {
    let Some(tools) = tools() else { return skip_without("coturn", INSTALL) };
    let (relay, turn) =
        relay_with_turn(&["--turn-allow-loopback-peers", "--turn-max-allocations-per-key", "1"]).await;
    let peer_port = free_port().await;
    let _peer = start_peer(&tools, peer_port);
    let (user, pass) = credentials(&relay).await;
    // Two clients at once, each wanting an allocation: the key may hold one.
    let traffic = Traffic { tcp: false, clients: 2, packets: 5, interval_ms: 20 };
    let run = uclient_with(&tools, turn, (&user, &pass), peer_port, traffic).await;
    assert!(!run.success, "{}", run.output);
    // uclient may try again after a 508: each try is refused.
    assert!(metric(&relay, "relay_turn_allocations_refused_total").await >= 1, "{}", run.output);
    assert!(run.output.contains("error 508"), "{}", run.output);
    // (uclient may release its allocation after the refusal and make another: the
    // limit is on allocations held at once, which the unit tests of turn::relay pin.)
    assert!(metric(&relay, "relay_turn_allocations_total").await >= 1, "{}", run.output);
}

#[tokio::test]
async fn disco_s_static_user_relays() {
    let Some(tools) = tools() else { return skip_without("coturn", INSTALL) };
    let (_relay, turn) = relay_with_turn(&[
        "--turn-allow-loopback-peers",
        "--ice-username",
        "babble",
        "--ice-password",
        "static-pass",
    ])
    .await;
    let peer_port = free_port().await;
    let _peer = start_peer(&tools, peer_port);
    let run = uclient(&tools, turn, "babble", "static-pass", peer_port, false).await;
    assert_eq!(run.received, Some(PACKETS), "{}", run.output);
    assert_eq!(run.lost, Some(0), "{}", run.output);
    let run = uclient(&tools, turn, "babble", "wrong", peer_port, false).await;
    assert!(!run.success && run.received.unwrap_or(0) == 0, "{}", run.output);
}

#[tokio::test]
async fn disco_s_flags_are_accepted_as_aliases() {
    let out = crate::support::run_binary(&[
        "--ice-port",
        "3478",
        "--address",
        "203.0.113.7",
        "--realm",
        "main",
        "--ttl",
        "10m",
        "--ttl-hearbeat",
        "30s",
        "--ice-username",
        "test",
        "--ice-password",
        "test",
        "--print-config",
    ])
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let table: toml::Table = stdout.parse().unwrap();
    assert_eq!(table["turn_listen"].as_str(), Some("3478"));
    assert_eq!(table["turn_public_ip"].as_str(), Some("203.0.113.7"));
    assert_eq!(table["turn_realm"].as_str(), Some("main"));
    assert_eq!(table["group_ttl"].as_str(), Some("10m"));
    assert_eq!(table["group_ttl_heartbeat"].as_str(), Some("30s"));
    assert_eq!(table["ice_password"].as_str(), Some("***"));
}

#[tokio::test]
async fn a_loopback_peer_is_refused_without_the_flag() {
    let Some(tools) = tools() else { return skip_without("coturn", INSTALL) };
    let (relay, turn) = relay_with_turn(&[]).await;
    let peer_port = free_port().await;
    let _peer = start_peer(&tools, peer_port);
    let (user, pass) = credentials(&relay).await;
    let run = uclient(&tools, turn, &user, &pass, peer_port, false).await;
    // The allocation works; nothing reaches the peer, so nothing comes back.
    assert_eq!(run.received, Some(0), "{}", run.output);
    assert!(metric(&relay, "relay_turn_peers_refused_total").await >= u64::from(PACKETS), "{}", run.output);
    assert_eq!(metric(&relay, "relay_turn_relayed_bytes_total").await, 0);
}

#[tokio::test]
async fn credentials_without_turn_are_404_turn_disabled() {
    let key = format!("{KEY},{KEY_NAME}");
    let relay = RelayProcess::start(&["--api-key", &key]).await.unwrap();
    let auth = format!("Bearer {KEY}");
    let resp = http_request(relay.addr, "GET", "/v1/turn/credentials", &[("authorization", &auth)], b"")
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(resp.json()["error"]["code"], "turn_disabled");
    // And like every keyed route, no key is 401.
    let resp = http_request(relay.addr, "GET", "/v1/turn/credentials", &[], b"").await.unwrap();
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn credentials_follow_the_turn_rest_scheme() {
    let secret = "e2e-shared-secret";
    let (relay, turn) = relay_with_turn(&["--turn-secret", secret, "--turn-credential-ttl", "1h"]).await;
    let auth = format!("Bearer {KEY}");
    let resp = http_request(relay.addr, "GET", "/v1/turn/credentials", &[("authorization", &auth)], b"")
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    let body = resp.json();
    assert_eq!(body["ttl"], 3600);
    let user = body["username"].as_str().unwrap();
    let (expiry, name) = user.split_once(':').unwrap();
    assert_eq!(name, KEY_NAME);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!((now + 3590..=now + 3610).contains(&expiry), "{expiry} vs {now}");
    let uris: Vec<&str> = body["uris"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    assert_eq!(
        uris,
        [
            format!("turn:127.0.0.1:{}?transport=udp", turn.port()),
            format!("turn:127.0.0.1:{}?transport=tcp", turn.port()),
            format!("stun:127.0.0.1:{}", turn.port()),
        ]
    );
    // The secret stays the operator's: it is masked by --print-config, never echoed.
    assert!(!relay.output().contains(secret));
}

#[tokio::test]
async fn sigterm_stops_turn_and_frees_its_ports() {
    let (mut relay, turn) = relay_with_turn(&[]).await;
    relay.signal(15);
    let status = relay.wait_exit(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{status:?}: {}", relay.output());
    UdpSocket::bind(turn).await.expect("TURN's UDP port is free after exit");
    TcpListener::bind(turn).await.expect("TURN's TCP port is free after exit");
}

#[tokio::test]
async fn sigterm_with_a_live_allocation_exits_promptly() {
    let Some(tools) = tools() else { return skip_without("coturn", INSTALL) };
    let (mut relay, turn) = relay_with_turn(&["--turn-allow-loopback-peers"]).await;
    let peer_port = free_port().await;
    let _peer = start_peer(&tools, peer_port);
    let (user, pass) = credentials(&relay).await;
    let traffic = Traffic { tcp: true, clients: 1, packets: 250, interval_ms: 20 };
    let run = uclient_with(&tools, turn, (&user, &pass), peer_port, traffic);
    let stop = async {
        let flowing = async {
            while metric(&relay, "relay_turn_relayed_bytes_total").await == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(CLIENT_TIMEOUT, flowing).await.expect("no traffic through TURN");
        relay.signal(15);
        let started = std::time::Instant::now();
        let status = relay.wait_exit(Duration::from_secs(15)).await.unwrap();
        (status, started.elapsed())
    };
    // The client outlives the server (it waits for answers that never come): once the
    // server has exited, the client is dropped, which kills it.
    let (status, took) = tokio::select! {
        run = run => panic!("uclient finished before the server stopped: {}", run.output),
        stopped = stop => stopped,
    };
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    UdpSocket::bind(turn).await.expect("TURN's UDP port is free after exit");
    TcpListener::bind(turn).await.expect("TURN's TCP port is free after exit");
}

#[tokio::test]
async fn a_silent_or_half_sent_turn_tcp_connection_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_relay, turn) = relay_with_turn(&["--turn-tcp-idle-timeout", "1s"]).await;
    for first_bytes in [&b""[..], &[0x00, 0x01][..], &[0x00, 0x01, 0x00, 0x08, 0x21][..]] {
        let mut stream = tokio::net::TcpStream::connect(turn).await.unwrap();
        stream.write_all(first_bytes).await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("not closed after {first_bytes:?}"));
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "closed after {:?}", started.elapsed());
    }
}
