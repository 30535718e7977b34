//! Scale-out behind real nginx: two `relay-server` binaries, each with its own
//! `--room-id-prefix`, behind nginx running `contrib/nginx.conf` itself (its upstream
//! addresses pointed at the two instances, its TLS lines swapped for a plain listener on
//! a port chosen here). Rooms created through nginx land on both instances; every party
//! of a room, joining through nginx, reaches the instance that created it (a join on
//! the other instance gets 404, which the test checks directly) and the parties
//! exchange messages; the room-scoped mailbox is routed with its room.
//!
//! `contrib/nginx-shared-state.conf` runs the same way in front of two instances
//! sharing the mailbox through Redis: the unscoped mailbox from any instance, rooms
//! still by prefix.
//!
//! Also: the allow-list `location`s of `/console`, the admin paths and `/metrics` let
//! 127.0.0.1 through as shipped, and refuse them (403) once that address is off the
//! list; the access log holds no admin token, API key or resume token, whether sent in
//! a Sodot admin path or a query string; and the relays, trusting nginx's address, count
//! each client by the address nginx forwards.
//!
//! Needs the `nginx` binary (Debian: `apt-get install nginx`; `.ci/run` installs it).
//! Without it the test prints why and passes without checking anything, unless
//! `RELAY_REQUIRE_SERVICES=1`: then a missing nginx fails it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

/// Where `contrib/nginx.conf` writes its access log; the test points it into its own
/// directory.
const ACCESS_LOG: &str = "/var/log/nginx/relay-access.log";

/// The instances' prefixes and the addresses `contrib/nginx.conf` gives them.
const INSTANCES: [(&str, &str); 2] = [("1a2b3c4d", "10.0.0.11:8080"), ("5e6f7a8b", "10.0.0.12:8080")];
/// Rooms created through nginx; round robin over two instances gives each half.
const ROOMS: usize = 6;
/// Parties per room.
const ROOM_SIZE: u16 = 3;
/// Destination slot meaning "every other party".
const BROADCAST: u16 = 0xFFFF;

/// Where nginx lives on Debian when `/usr/sbin` is not on the PATH.
fn nginx_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into(), "/usr/local/nginx/sbin".into()])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
}

/// `contrib/nginx.conf` made runnable here: upstreams pointed at `relays`, the port-80
/// redirect dropped, and the TLS listener replaced by plain HTTP on `listen`. Fails if
/// a line it rewrites is no longer in the file, so the test never silently runs
/// something other than what ships.
fn contrib_config_for(relays: &[SocketAddr], listen: SocketAddr) -> anyhow::Result<String> {
    contrib_file_for("contrib/nginx.conf", relays, listen)
}

/// As [`contrib_config_for`], for the contrib nginx file `file` (same shape).
fn contrib_file_for(file: &str, relays: &[SocketAddr], listen: SocketAddr) -> anyhow::Result<String> {
    let path = repo_file(file);
    let mut conf = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    for ((_, placeholder), relay) in INSTANCES.iter().zip(relays) {
        ensure!(conf.contains(placeholder), "{file} no longer names {placeholder}");
        conf = conf.replace(placeholder, &relay.to_string());
    }
    let redirect_start = conf.find("server {\n    listen 80;").context("the port-80 server block")?;
    let redirect_len = conf[redirect_start..].find("\n}\n").context("end of the port-80 block")? + 3;
    conf.replace_range(redirect_start..redirect_start + redirect_len, "");

    let mut out = String::new();
    let (mut tls_listen, mut dropped) = (false, 0);
    for line in conf.lines() {
        let t = line.trim_start();
        if t == "listen 443 ssl;" {
            out.push_str(&format!("    listen {listen};\n"));
            tls_listen = true;
        } else if t.starts_with("listen [::]:") || t.starts_with("ssl_") || t == "http2 on;" {
            dropped += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    ensure!(tls_listen && dropped >= 3, "{file}'s TLS server block changed shape");
    Ok(out)
}

/// nginx in the foreground with everything (pid, temp files) in its own directory and
/// its log on stderr. Killed on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    /// The access log `contrib/nginx.conf` writes, moved into the temp directory.
    access_log: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(binary: &Path, relays: &[SocketAddr]) -> anyhow::Result<Nginx> {
        Nginx::start_edited(binary, relays, Ok).await
    }

    /// As [`Nginx::start`], running the contrib nginx file `file` instead.
    async fn start_file(binary: &Path, file: &'static str, relays: &[SocketAddr]) -> anyhow::Result<Nginx> {
        Nginx::start_config(binary, file, move |listen| contrib_file_for(file, relays, listen)).await
    }

    /// As [`Nginx::start`], with the runnable contrib config passed through `edit` first.
    async fn start_edited(
        binary: &Path,
        relays: &[SocketAddr],
        edit: impl FnOnce(String) -> anyhow::Result<String>,
    ) -> anyhow::Result<Nginx> {
        Nginx::start_config(binary, "contrib/nginx.conf", |listen| edit(contrib_config_for(relays, listen)?))
            .await
    }

    /// nginx running the config `config` makes for its listen address (from the contrib
    /// file `file`, whose access log is moved into the temp directory).
    async fn start_config(
        binary: &Path,
        file: &str,
        config: impl FnOnce(SocketAddr) -> anyhow::Result<String>,
    ) -> anyhow::Result<Nginx> {
        let dir = tempfile::tempdir()?;
        // Run as root, nginx's workers switch to an unprivileged user and must still
        // reach their temp directories in here.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let addr = free_port()?;
        let d = dir.path().display();
        let access_log = dir.path().join("access.log");
        let conf = config(addr)?;
        ensure!(conf.contains(ACCESS_LOG), "{file} no longer logs to {ACCESS_LOG}");
        let conf = conf.replace(ACCESS_LOG, &access_log.display().to_string());
        std::fs::write(dir.path().join("relay.conf"), conf)?;
        let main = format!(
            "daemon off;\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log stderr notice;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   client_body_temp_path {d}/client_body;\n\
             \x20   proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/uwsgi;\n\
             \x20   scgi_temp_path {d}/scgi;\n\
             \x20   include {d}/relay.conf;\n\
             }}\n"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, main)?;
        let mut child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .args(["-e", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawn nginx")?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let nginx = Nginx { child, addr, access_log, stderr, _dir: dir };
        nginx.wait_ready().await?;
        Ok(nginx)
    }

    /// Waits until `/healthz` answers 200 through nginx.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            if let Ok(resp) = http_request(self.addr, "GET", "/healthz", &[], b"").await
                && resp.status == StatusCode::OK
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("nginx did not serve /healthz within {STEP_TIMEOUT:?}: {}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn output(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

/// A port on 127.0.0.1 that was free a moment ago, for nginx to listen on.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// The next frame that is not a ping or pong.
async fn recv(ws: &mut Ws) -> anyhow::Result<Message> {
    loop {
        let msg = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .context("no frame within the step timeout")?
            .context("stream ended")??;
        if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
            return Ok(msg);
        }
    }
}

/// The next data frame as (from, payload), skipping joined/left/ready events.
async fn recv_data(ws: &mut Ws) -> anyhow::Result<(u16, Vec<u8>)> {
    loop {
        match recv(ws).await? {
            Message::Binary(b) => {
                ensure!(b.len() >= 12, "data frame of {} bytes", b.len());
                return Ok((u16::from_le_bytes([b[8], b[9]]), b[12..].to_vec()));
            }
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                ensure!(
                    matches!(v["type"].as_str(), Some("joined" | "left" | "ready")),
                    "expected data, got {v}"
                );
            }
            other => bail!("expected data, got {other:?}"),
        }
    }
}

/// Creates a room of [`ROOM_SIZE`] through `addr`; returns its ID.
async fn create_room(addr: SocketAddr) -> anyhow::Result<String> {
    let resp = post_json(addr, "/v1/rooms", &[], &serde_json::json!({"room_size": ROOM_SIZE})).await?;
    ensure!(resp.status == StatusCode::CREATED, "create answered {}: {}", resp.status, resp.text());
    Ok(resp.json()["room_uuid"].as_str().context("room_uuid")?.to_owned())
}

/// Joins every slot of `room` through `addr`, has each party broadcast one message,
/// and checks that every party gets the others' messages.
async fn run_room(addr: SocketAddr, room: &str) -> anyhow::Result<()> {
    let mut parties = Vec::new();
    for slot in 0..ROOM_SIZE {
        let mut ws =
            tokio::time::timeout(STEP_TIMEOUT, ws_connect(addr, &format!("/v1/rooms/{room}?slot={slot}")))
                .await
                .context("join timed out")?
                .with_context(|| format!("join slot {slot} of {room} through nginx"))?;
        let welcome = match recv(&mut ws).await? {
            Message::Text(t) => serde_json::from_str::<Value>(t.as_str())?,
            other => bail!("expected welcome, got {other:?}"),
        };
        ensure!(welcome["type"] == "welcome" && welcome["room_uuid"] == room, "{welcome}");
        parties.push(ws);
    }
    for (slot, ws) in parties.iter_mut().enumerate() {
        let mut frame = BROADCAST.to_le_bytes().to_vec();
        frame.extend_from_slice(format!("{room}:{slot}").as_bytes());
        tokio::time::timeout(STEP_TIMEOUT, ws.send(Message::binary(frame))).await??;
    }
    for (slot, ws) in parties.iter_mut().enumerate() {
        let mut heard = BTreeSet::new();
        for _ in 1..ROOM_SIZE {
            let (from, payload) = recv_data(ws).await?;
            ensure!(
                payload == format!("{room}:{from}").into_bytes(),
                "slot {slot} got {payload:?} from {from}"
            );
            heard.insert(from);
        }
        let others: BTreeSet<u16> = (0..ROOM_SIZE).filter(|s| usize::from(*s) != slot).collect();
        ensure!(heard == others, "slot {slot} heard from {heard:?}");
    }
    Ok(())
}

/// Publishes and asks one message on `room`'s mailbox through `addr`.
async fn room_mailbox_round_trip(addr: SocketAddr, room: &str) -> anyhow::Result<()> {
    let path = format!("/v1/rooms/{room}/msg-relay");
    let mut asker = ws_connect(addr, &path).await?;
    let mut publisher = ws_connect(addr, &path).await?;
    // `[0..32)` id, ttl u16 LE, flags u16 LE, payload.
    let mut ask = vec![0x42u8; 32];
    ask.extend_from_slice(&[30, 0, 0, 0]);
    let mut publish = ask.clone();
    publish.extend_from_slice(room.as_bytes());
    asker.send(Message::binary(ask)).await?;
    publisher.send(Message::binary(publish.clone())).await?;
    match recv(&mut asker).await? {
        Message::Binary(b) => ensure!(b[..] == publish[..], "mailbox frame changed on the way"),
        other => bail!("expected the published frame, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn nginx_spreads_room_creation_and_routes_every_party_to_the_room_s_instance() {
    let Some(binary) = nginx_binary() else {
        return skip_without("nginx", "apt-get install nginx; .ci/run installs it");
    };
    let mut relays = Vec::new();
    for (prefix, _) in INSTANCES {
        let relay = RelayProcess::start(&["--insecure-api-keys-not-enforced", "--room-id-prefix", prefix])
            .await
            .unwrap();
        relays.push(relay);
    }
    let addrs: Vec<SocketAddr> = relays.iter().map(|r| r.addr).collect();
    let nginx = Nginx::start(&binary, &addrs).await.unwrap();

    let mut rooms = Vec::new();
    for _ in 0..ROOMS {
        rooms.push(create_room(nginx.addr).await.unwrap());
    }
    let prefixes: BTreeSet<&str> = rooms.iter().map(|r| &r[..8]).collect();
    let expected: BTreeSet<&str> = INSTANCES.iter().map(|(p, _)| *p).collect();
    assert_eq!(prefixes, expected, "creation through nginx reaches both instances: {rooms:?}");

    for room in &rooms {
        run_room(nginx.addr, room).await.unwrap_or_else(|e| panic!("room {room}: {e:#}\n{}", nginx.output()));
        room_mailbox_round_trip(nginx.addr, room)
            .await
            .unwrap_or_else(|e| panic!("mailbox of {room}: {e:#}"));

        // Routing is what made that work: the other instance does not know the room.
        let owner = INSTANCES.iter().position(|(p, _)| room.starts_with(p)).unwrap();
        let other = &relays[1 - owner];
        let err = ws_connect(other.addr, &format!("/v1/rooms/{room}?slot=0")).await.unwrap_err();
        assert_eq!(refusal_status(&err), Some(StatusCode::NOT_FOUND), "{room} on the wrong instance");
    }

    let mut nginx = nginx;
    nginx.child.kill().await.unwrap();
}

#[tokio::test]
async fn console_and_admin_paths_are_served_only_to_the_allow_list() {
    let Some(binary) = nginx_binary() else {
        return skip_without("nginx", "apt-get install nginx; .ci/run installs it");
    };
    const TOKEN: &str = "nginx-admin-token-0123456789abcdefghij";
    let mut relays = Vec::new();
    for (prefix, _) in INSTANCES {
        relays
            .push(RelayProcess::start(&["--secret-auth", TOKEN, "--room-id-prefix", prefix]).await.unwrap());
    }
    let addrs: Vec<SocketAddr> = relays.iter().map(|r| r.addr).collect();
    let bearer = format!("Bearer {TOKEN}");
    let admin_paths =
        ["/console", "/console/js/app.js", "/v1/admin/stats", "/rooms/x", "/createkey/a/0/x", "/metrics"];

    // As shipped, 127.0.0.1 is on the allow-list: the console and admin API answer.
    let allowed = Nginx::start(&binary, &addrs).await.unwrap();
    let page = http_request(allowed.addr, "GET", "/console", &[], b"").await.unwrap();
    assert_eq!(page.status, StatusCode::OK, "{}", allowed.output());
    assert_eq!(page.headers["x-frame-options"], "DENY");
    let stats = http_request(allowed.addr, "GET", "/v1/admin/stats", &[("authorization", &bearer)], b"")
        .await
        .unwrap();
    assert_eq!(stats.status, StatusCode::OK);
    let metrics = http_request(allowed.addr, "GET", "/metrics", &[], b"").await.unwrap();
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.text().contains("relay_connections_total"), "{}", metrics.text());
    drop(allowed);

    // Off the allow-list, nginx refuses every admin path itself; the rest still passes.
    let denied = Nginx::start_edited(&binary, &addrs, |conf| {
        ensure!(conf.contains("        allow 127.0.0.1;\n"), "contrib/nginx.conf no longer allows 127.0.0.1");
        Ok(conf.replace("        allow 127.0.0.1;\n", ""))
    })
    .await
    .unwrap();
    for path in admin_paths {
        let resp = http_request(denied.addr, "GET", path, &[("authorization", &bearer)], b"").await.unwrap();
        assert_eq!(resp.status, StatusCode::FORBIDDEN, "{path}");
    }
    let health = http_request(denied.addr, "GET", "/healthz", &[], b"").await.unwrap();
    assert_eq!(health.status, StatusCode::OK);
    let create =
        post_json(denied.addr, "/v1/rooms", &[], &serde_json::json!({"room_size": 2})).await.unwrap();
    assert_eq!(create.status, StatusCode::UNAUTHORIZED, "reaches the relay, which wants a key");
}

/// The access log's lines once it holds at least `lines` (nginx writes each entry when
/// its request ends), within the step timeout.
async fn access_log_lines(nginx: &Nginx, lines: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let log = std::fs::read_to_string(&nginx.access_log).unwrap_or_default();
        let got: Vec<String> = log.lines().map(str::to_owned).collect();
        if got.len() >= lines || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_access_log_holds_no_admin_token_key_or_resume_token() {
    let Some(binary) = nginx_binary() else {
        return skip_without("nginx", "apt-get install nginx; .ci/run installs it");
    };
    const TOKEN: &str = "nginx-log-admin-token-0123456789abcdef";
    const KEY: &str = "QUERYKEYqueryKEY0123456789abcdef";
    const RESUME: &str = "RESUMEtokenRESUME0123456789";
    let mut relays = Vec::new();
    for (prefix, _) in INSTANCES {
        relays
            .push(RelayProcess::start(&["--secret-auth", TOKEN, "--room-id-prefix", prefix]).await.unwrap());
    }
    let addrs: Vec<SocketAddr> = relays.iter().map(|r| r.addr).collect();
    let nginx = Nginx::start(&binary, &addrs).await.unwrap();
    let ready_lines = access_log_lines(&nginx, 1).await.len();

    let requests = [
        format!("/createkey/logtest/0/{TOKEN}"),
        format!("/revokekey/logtest/{TOKEN}"),
        format!("/rooms/{TOKEN}"),
        format!("/v1/msg-relay?api_key={KEY}"),
        format!("/v1/rooms/1a2b3c4d-0000?slot=0&resume_token={RESUME}"),
    ];
    for path in &requests {
        // The answers do not matter here (the key is unknown); what is logged does.
        http_request(nginx.addr, "GET", path, &[], b"").await.unwrap();
    }
    let log = access_log_lines(&nginx, ready_lines + requests.len()).await;
    assert!(log.len() >= ready_lines + requests.len(), "every request logged: {log:#?}");
    let text = log.join("\n");
    for secret in [TOKEN, KEY, RESUME] {
        assert!(!text.contains(secret), "{secret} reached the access log:\n{text}");
    }
    // The entries are there, with what is safe to keep.
    for kept in [
        "/createkey/(redacted)",
        "/revokekey/(redacted)",
        "/rooms/(redacted)",
        "/v1/msg-relay ",
        "/v1/rooms/1a2b3c4d-0000 ",
    ] {
        assert!(text.contains(kept), "{kept} missing from the access log:\n{text}");
    }
}

/// A connection to `addr` from `source` (another loopback address is another host).
async fn connect_from(source: &str, addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    tokio::time::timeout(STEP_TIMEOUT, socket.connect(addr)).await.unwrap().unwrap()
}

#[tokio::test]
async fn relays_trusting_nginx_count_each_client_by_its_forwarded_address() {
    let Some(binary) = nginx_binary() else {
        return skip_without("nginx", "apt-get install nginx; .ci/run installs it");
    };
    let mut relays = Vec::new();
    for (prefix, _) in INSTANCES {
        let args = [
            "--insecure-api-keys-not-enforced",
            "--room-id-prefix",
            prefix,
            "--trusted-proxies",
            "127.0.0.1",
            "--rate-limit-requests-per-ip",
            "1",
            "--rate-limit-requests-per-ip-burst",
            "4",
        ];
        relays.push(RelayProcess::start(&args).await.unwrap());
    }
    let addrs: Vec<SocketAddr> = relays.iter().map(|r| r.addr).collect();
    let nginx = Nginx::start(&binary, &addrs).await.unwrap();
    // The readiness probe came from 127.0.0.1. Client 127.0.0.2 uses up its burst on
    // both instances (round robin) and is refused; it also forges X-Forwarded-For,
    // which nginx appends to and the relay reads from the right.
    let get = |source: &'static str| async move {
        let stream = connect_from(source, nginx.addr).await;
        let mut conn = Http1Conn::handshake(stream).await.unwrap();
        conn.get_with("/healthz", &[("x-forwarded-for", "192.0.2.1")]).await.unwrap().status
    };
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(get("127.0.0.2").await);
    }
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "127.0.0.2 limited: {statuses:?}");
    // Client 127.0.0.3, through the same nginx, has its own count.
    assert_eq!(get("127.0.0.3").await, StatusCode::OK);
}

/// `contrib/nginx-shared-state.conf` in front of two instances sharing the mailbox
/// through Redis: the unscoped mailbox reaches either instance (round robin) and every
/// message still reaches its asker; rooms are still routed by prefix.
#[tokio::test]
async fn nginx_shared_state_serves_the_mailbox_from_any_instance_and_rooms_by_prefix() {
    let Some(binary) = nginx_binary() else {
        return skip_without("nginx", "apt-get install nginx; .ci/run installs it");
    };
    let Some(redis) = crate::support::services::TestRedis::create().await else { return };
    let mut relays = Vec::new();
    for (prefix, _) in INSTANCES {
        let args = [
            "--insecure-api-keys-not-enforced",
            "--room-id-prefix",
            prefix,
            "--redis-url",
            &redis.url,
            "--redis-prefix",
            &redis.prefix,
        ];
        relays.push(RelayProcess::start(&args).await.expect("start relay"));
    }
    let addrs: Vec<SocketAddr> = relays.iter().map(|r| r.addr).collect();
    let nginx =
        Nginx::start_file(&binary, "contrib/nginx-shared-state.conf", &addrs).await.expect("start nginx");

    // An asker on each instance directly; publishers through nginx, one connection
    // each, spread round robin: both askers get every message.
    let mut askers = Vec::new();
    for relay in &relays {
        askers.push(ws_connect(relay.addr, "/v1/msg-relay").await.expect("asker"));
    }
    const MESSAGES: u8 = 6;
    let id = |n: u8| [n; 32];
    for asker in &mut askers {
        for n in 0..MESSAGES {
            let mut ask = id(n).to_vec();
            ask.extend_from_slice(&[30, 0, 0, 0]);
            asker.send(Message::binary(ask)).await.expect("ask");
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sent = Vec::new();
    for n in 0..MESSAGES {
        let mut publisher = ws_connect(nginx.addr, "/v1/msg-relay").await.expect("publisher through nginx");
        let mut publish = id(n).to_vec();
        publish.extend_from_slice(&[30, 0, 0, 0]);
        publish.extend_from_slice(format!("message {n}").as_bytes());
        publisher.send(Message::binary(publish.clone())).await.expect("publish");
        sent.push(publish);
    }
    for (i, asker) in askers.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..MESSAGES {
            match recv(asker).await.expect("a message") {
                Message::Binary(b) => got.push(b.to_vec()),
                other => panic!("asker {i}: expected a frame, got {other:?}"),
            }
        }
        got.sort();
        assert_eq!(got, sent, "asker on instance {i} got every message, whichever instance took it");
    }
    // Every instance took some of the publishes (its askers publish nothing): nginx
    // spread the publishers over both.
    for relay in &relays {
        let metrics = http_request(relay.addr, "GET", "/metrics", &[], b"").await.expect("metrics").text();
        let published: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("relay_messages_relayed_total{") && l.contains("mailbox"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(published >= 1.0, "each instance took some publishes: {published}\n{metrics}");
    }

    // Rooms: created through nginx on both instances, every party routed to the owner.
    let mut prefixes = BTreeSet::new();
    for _ in 0..4 {
        let room = create_room(nginx.addr).await.expect("create room");
        prefixes.insert(room[..8].to_owned());
        run_room(nginx.addr, &room).await.expect("room through nginx");
    }
    assert_eq!(prefixes.len(), 2, "rooms landed on both instances: {prefixes:?}");
}
