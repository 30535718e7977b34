//! Shared helpers for the end-to-end tests: start the real `relay-server` binary on
//! 127.0.0.1 port 0 (or serve the router in-process), make HTTP requests, open
//! WebSockets. Every wait is bounded, so a broken server fails a test instead of
//! hanging it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

pub(crate) use relay_transport::{AppState, ServerConfig};

pub(crate) mod services;

/// A WebSocket client stream as the tests use it.
pub(crate) type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// How long any single wait in a test may take before it fails.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The path of the `relay-server` binary cargo built for this test run. This test is
/// declared by the `relay-server` package, so cargo builds the binary first and names
/// it here; no test builds anything.
pub(crate) fn binary_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_relay-server"))
}

/// `rel`, a path from the root of the repository (`contrib/nginx.conf`).
pub(crate) fn repo_file(rel: &str) -> PathBuf {
    // The test belongs to bins/relay-server; the repository root is two levels up.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

/// For a test that cannot find `missing` (a program it runs, such as nginx): prints that
/// it skips and why, naming what is missing and `install`, how to get it. When
/// `RELAY_REQUIRE_SERVICES=1` nothing may skip, and it fails the test instead. The caller
/// returns right after: `let Some(x) = find() else { return skip_without(..) };`.
pub(crate) fn skip_without(missing: &str, install: &str) {
    let required = std::env::var_os("RELAY_REQUIRE_SERVICES").is_some_and(|v| v == "1");
    assert!(
        !required,
        "{missing} is not installed ({install}) and RELAY_REQUIRE_SERVICES=1 forbids skipping"
    );
    eprintln!(
        "SKIPPED: {missing} is not installed ({install}); RELAY_REQUIRE_SERVICES=1 makes this a failure"
    );
}

/// A running `relay-server` process. Killed on drop.
pub(crate) struct RelayProcess {
    child: Child,
    /// The first address it listens on.
    pub(crate) addr: SocketAddr,
    /// Every line it wrote to stderr so far.
    pub(crate) stderr: Arc<Mutex<Vec<String>>>,
    /// A fresh data dir when the caller gave none: the store locks its directory, so
    /// binaries started in parallel from one working directory must not share one.
    _data_dir: Option<tempfile::TempDir>,
}

impl RelayProcess {
    /// Starts the binary with `args`, adding `--listen 127.0.0.1:0` unless a listen
    /// address is given and `--data-dir <fresh temp dir>` unless a data dir is given,
    /// and waits for its "listening on" line.
    pub(crate) async fn start(args: &[&str]) -> anyhow::Result<RelayProcess> {
        Self::start_with_env(args, &[]).await
    }

    /// As [`RelayProcess::start`], with extra environment variables.
    pub(crate) async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<RelayProcess> {
        let mut cmd = Command::new(binary_path());
        if !args.iter().any(|a| a.starts_with("--listen")) {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let gives_data_dir = args.iter().any(|a| a.starts_with("--data-dir"))
            || env.iter().any(|(k, _)| *k == "RELAY_DATA_DIR");
        let data_dir =
            if gives_data_dir { None } else { Some(tempfile::tempdir().context("temp data dir")?) };
        if let Some(dir) = &data_dir {
            cmd.arg("--data-dir").arg(dir.path());
        }
        cmd.args(args)
            .env_remove("LISTEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawn relay-server")?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("listening on ").nth(1)
                    && let Some(tx) = addr_tx.take()
                {
                    let first = rest.split([',', ' ']).next().unwrap_or_default().to_owned();
                    let _ = tx.send(first);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let out_sink = stderr.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                out_sink.lock().unwrap().push(line);
            }
        });
        let addr = match tokio::time::timeout(STEP_TIMEOUT, addr_rx).await {
            Ok(Ok(a)) => a.parse().with_context(|| format!("parse listen address {a:?}"))?,
            _ => {
                let status = child.try_wait()?;
                bail!(
                    "relay-server did not report its address (exit: {status:?}); output: {:?}",
                    stderr.lock().unwrap()
                );
            }
        };
        Ok(RelayProcess { child, addr, stderr, _data_dir: data_dir })
    }

    /// Sends a Unix signal by number (15 = SIGTERM, 9 = SIGKILL, 1 = SIGHUP).
    pub(crate) fn signal(&self, sig: i32) {
        if let Some(pid) = self.child.id() {
            // `unsafe` is forbidden in the workspace, so libc::kill is out: use kill(1).
            let _ = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Waits for the process to exit, failing after `timeout`.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .context("relay-server did not exit in time")?
            .context("wait")
    }

    /// Everything it printed so far, one string.
    pub(crate) fn output(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// `http://addr{path}`.
    pub(crate) fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://addr{path}`.
    pub(crate) fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

/// Runs the binary to completion with `args` (for flag-validation tests).
pub(crate) async fn run_binary(args: &[&str]) -> anyhow::Result<std::process::Output> {
    let out = tokio::time::timeout(
        STEP_TIMEOUT,
        Command::new(binary_path()).args(args).env_remove("LISTEN").stdin(Stdio::null()).output(),
    )
    .await
    .context("relay-server did not exit")??;
    Ok(out)
}

/// Serves the router in-process on 127.0.0.1:0 with `config`; returns its address and
/// state. The server stops when the state's shutdown begins.
pub(crate) async fn serve_in_process(config: ServerConfig) -> anyhow::Result<(SocketAddr, AppState)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = AppState::new(config)?;
    let serve_state = state.clone();
    let mut stop = state.shutdown_watch();
    tokio::spawn(async move {
        let _ = relay_transport::serve(listener, serve_state, async move {
            let _stopped = stop.wait_for(|s| *s).await.is_ok();
        })
        .await;
    });
    Ok((addr, state))
}

/// A config for tests: keys not enforced, everything else default.
pub(crate) fn open_config() -> ServerConfig {
    ServerConfig { api_keys_enforced: false, ..ServerConfig::default() }
}

/// An HTTP response as the tests look at it.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    /// The status.
    pub(crate) status: StatusCode,
    /// The headers.
    pub(crate) headers: http::HeaderMap,
    /// The raw body.
    pub(crate) body: Bytes,
}

impl HttpResponse {
    /// The body parsed as JSON (Null when it is not JSON).
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request to `addr`; `headers` are (name, value) pairs.
pub(crate) async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<HttpResponse> {
    let stream = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await??;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body)))?;
    let resp = tokio::time::timeout(STEP_TIMEOUT, sender.send_request(req)).await??;
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(STEP_TIMEOUT, body.collect()).await??.to_bytes();
    Ok(HttpResponse { status: parts.status, headers: parts.headers, body })
}

/// POST `value` as JSON to `addr{path}`.
pub(crate) async fn post_json(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    value: &serde_json::Value,
) -> anyhow::Result<HttpResponse> {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    http_request(addr, "POST", path, &all, value.to_string().as_bytes()).await
}

/// Opens a WebSocket to `ws://addr{path}`. On refusal, the error carries the HTTP status.
/// The mailbox message ID a DKLs-shaped test run uses for the message of `round` from
/// party `from` to party `to` (`to` may be a broadcast tag): the session's 16 bytes,
/// then round, from and to, then zeros.
pub(crate) fn dkls_message_id(session: &relay_core::RoomId, round: u8, from: u8, to: u8) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(session.as_bytes());
    id[16] = round;
    id[17] = from;
    id[18] = to;
    id
}

/// Waits (at most `within`) for the relay's close frame, skipping other messages;
/// returns its code and reason. A socket that ends without one is an error.
pub(crate) async fn close_of(ws: &mut Ws, within: Duration) -> anyhow::Result<(u16, String)> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Ok((u16::from(frame.code), frame.reason.to_string()));
                }
                Some(Ok(Message::Close(None))) | None => bail!("closed without a close frame"),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("socket failed before a close frame: {e}"),
            }
        }
    })
    .await
    .context("no close frame in time")?
}

pub(crate) async fn ws_connect(
    addr: SocketAddr,
    path: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let stream = TcpStream::connect(addr).await.map_err(tokio_tungstenite::tungstenite::Error::Io)?;
    stream.set_nodelay(true).ok();
    let url = format!("ws://{addr}{path}");
    let (ws, _resp) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(ws)
}

/// The HTTP status a refused WebSocket handshake answered with, if that is the error.
pub(crate) fn refusal_status(err: &tokio_tungstenite::tungstenite::Error) -> Option<StatusCode> {
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => Some(resp.status()),
        _ => None,
    }
}

// ---- Operations helpers: TLS clients, generated certificates, raw connections ----

/// A certificate generated for a test: self-signed for `localhost`, with its key.
pub(crate) struct TestCert {
    /// The certificate, PEM.
    pub(crate) cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub(crate) key_pem: String,
    /// The certificate, DER, to trust it and to recognise it on the wire.
    pub(crate) der: rustls_pki_types::CertificateDer<'static>,
}

impl TestCert {
    /// A fresh certificate for `localhost` and 127.0.0.1 with a new key pair; `name`
    /// becomes its subject common name.
    pub(crate) fn generate(name: &str) -> TestCert {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("key pair");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }

    /// Writes `chain.pem` and `key.pem` into `dir`, replacing what is there; returns
    /// their paths.
    pub(crate) fn write_to(&self, dir: &std::path::Path) -> (PathBuf, PathBuf) {
        let chain = dir.join("chain.pem");
        let key = dir.join("key.pem");
        std::fs::write(&chain, &self.cert_pem).expect("write chain");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (chain, key)
    }
}

/// A rustls client config (ring provider) that trusts exactly `trusted` and offers the
/// ALPN protocols `alpn`.
pub(crate) fn tls_client_config(trusted: &[&TestCert], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.der.clone()).expect("add root");
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS client stream as the tests use it.
pub(crate) type TlsClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects to `addr` and completes a TLS handshake for `localhost` with `config`.
pub(crate) async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<TlsClientStream> {
    let tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await??;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let tls = tokio::time::timeout(STEP_TIMEOUT, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
        .await
        .context("TLS handshake timed out")??;
    Ok(tls)
}

/// The end-entity certificate the server presented on `stream`.
pub(crate) fn peer_certificate(
    stream: &TlsClientStream,
) -> Option<rustls_pki_types::CertificateDer<'static>> {
    stream.get_ref().1.peer_certificates()?.first().map(|c| c.clone().into_owned())
}

/// An open HTTP/1.1 connection that can carry several requests (keep-alive).
pub(crate) struct Http1Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Http1Conn {
    /// HTTP/1.1 over an already connected stream (TCP or TLS).
    pub(crate) async fn handshake<S>(stream: S) -> anyhow::Result<Http1Conn>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Http1Conn { sender })
    }

    /// Plain HTTP/1.1 to `addr`.
    pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<Http1Conn> {
        let stream = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await??;
        Http1Conn::handshake(stream).await
    }

    /// `GET path` on this connection.
    pub(crate) async fn get(&mut self, path: &str) -> anyhow::Result<HttpResponse> {
        self.get_with(path, &[]).await
    }

    /// `GET path` with extra `headers` on this connection.
    pub(crate) async fn get_with(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<HttpResponse> {
        tokio::time::timeout(STEP_TIMEOUT, self.sender.ready()).await??;
        let mut req = Request::get(path).header("host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new()))?;
        let resp = tokio::time::timeout(STEP_TIMEOUT, self.sender.send_request(req)).await??;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(STEP_TIMEOUT, body.collect()).await??.to_bytes();
        Ok(HttpResponse { status: parts.status, headers: parts.headers, body })
    }
}

/// Reads from `stream` until the peer closes it (EOF or reset), failing if it is
/// still open after `within`. Returns the bytes received before the close.
pub(crate) async fn read_until_closed<S>(stream: &mut S, within: Duration) -> anyhow::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all).await.context("the server kept the connection open")?;
    Ok(received)
}

/// Runs the binary to completion with `args` and extra environment variables.
pub(crate) async fn run_binary_with_env(
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<std::process::Output> {
    let out = tokio::time::timeout(
        STEP_TIMEOUT,
        Command::new(binary_path())
            .args(args)
            .env_remove("LISTEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .context("relay-server did not exit")??;
    Ok(out)
}

impl RelayProcess {
    /// Waits until a line containing `needle` appears in its output, failing after
    /// [`STEP_TIMEOUT`].
    pub(crate) async fn wait_for_output(&self, needle: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        while !self.output().contains(needle) {
            if tokio::time::Instant::now() >= deadline {
                bail!("no {needle:?} in the output: {}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// A TCP proxy on 127.0.0.1 in front of `target`, for network faults: it forwards bytes
/// both ways; [`CuttableProxy::freeze`] stops forwarding (what is sent meanwhile piles
/// up in the proxy's socket buffers, as on a stalled link), and
/// [`CuttableProxy::cut_all`] drops every connection it carries with `SO_LINGER` 0 (a
/// reset, no WebSocket close frame; whatever the proxy held is lost), as a dead network
/// would. While paused it accepts and drops new connections at once, so reconnects fail.
pub(crate) struct CuttableProxy {
    /// Where clients connect.
    pub(crate) addr: SocketAddr,
    inner: Arc<ProxyInner>,
    accept_task: tokio::task::JoinHandle<()>,
}

struct ProxyInner {
    target: SocketAddr,
    conns: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    paused: std::sync::atomic::AtomicBool,
    frozen: tokio::sync::watch::Sender<bool>,
    forwarded: std::sync::atomic::AtomicUsize,
    refused: std::sync::atomic::AtomicUsize,
}

impl CuttableProxy {
    /// Listens on 127.0.0.1:0 and forwards every connection to `target`.
    pub(crate) async fn start(target: SocketAddr) -> anyhow::Result<CuttableProxy> {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(ProxyInner {
            target,
            conns: Mutex::new(Vec::new()),
            paused: Default::default(),
            frozen: tokio::sync::watch::Sender::new(false),
            forwarded: Default::default(),
            refused: Default::default(),
        });
        let state = inner.clone();
        let accept_task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                client.set_zero_linger().ok();
                if state.paused.load(Ordering::SeqCst) {
                    state.refused.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(state.target).await else { continue };
                upstream.set_zero_linger().ok();
                client.set_nodelay(true).ok();
                upstream.set_nodelay(true).ok();
                state.forwarded.fetch_add(1, Ordering::SeqCst);
                let (client_r, client_w) = client.into_split();
                let (up_r, up_w) = upstream.into_split();
                let up = forward(client_r, up_w, state.frozen.subscribe());
                let down = forward(up_r, client_w, state.frozen.subscribe());
                let task = tokio::spawn(async move {
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
                state.conns.lock().unwrap().push(task);
            }
        });
        Ok(CuttableProxy { addr, inner, accept_task })
    }

    /// Resets every connection carried now; returns how many there were once their
    /// sockets are closed.
    pub(crate) async fn cut_all(&self) -> usize {
        let tasks: Vec<_> = std::mem::take(&mut *self.inner.conns.lock().unwrap());
        let n = tasks.len();
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = tokio::time::timeout(STEP_TIMEOUT, t).await;
        }
        n
    }

    /// Stops (or resumes) forwarding bytes on every connection, new ones included.
    pub(crate) fn freeze(&self, frozen: bool) {
        self.inner.frozen.send_replace(frozen);
    }

    /// While paused, new connections are accepted and dropped at once.
    pub(crate) fn set_paused(&self, paused: bool) {
        self.inner.paused.store(paused, std::sync::atomic::Ordering::SeqCst);
    }

    /// Connections forwarded so far.
    pub(crate) fn forwarded(&self) -> usize {
        self.inner.forwarded.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections refused while paused so far.
    pub(crate) fn refused(&self) -> usize {
        self.inner.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `ws://addr`.
    pub(crate) fn ws_base(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

/// Copies `from` to `to` until EOF or an error, never reading while frozen.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 << 10];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        for t in self.inner.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// The path of the `relay-bench` binary: beside `relay-server` in the same target
/// directory. Cargo sets `CARGO_BIN_EXE_*` only for the binaries of the package that owns
/// the test, and this test belongs to `relay-server`, so `relay-bench` is found as a
/// sibling. `cargo nextest run --workspace` builds every workspace binary before any test
/// runs; a narrower run may not have built it, and then the test says so.
pub(crate) fn bench_binary_path() -> PathBuf {
    let bin = binary_path().with_file_name(format!("relay-bench{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "relay-bench is not built beside relay-server ({} is missing): run the tests with \
         `cargo nextest run --workspace`, or `cargo build -p relay-bench` first",
        bin.display()
    );
    bin
}
