//! What every workload needs: WebSocket and HTTP clients over plain TCP on loopback,
//! latency histograms, and the RSS of a process read from /proc.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::report::{Better, Goal, Metric};

/// A client WebSocket.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// A relay under test: where it listens and, optionally, its pid for RSS readings.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Label printed in the results ("relay", "peer").
    pub(crate) label: &'static str,
    /// `host:port` of its plain-HTTP listener.
    pub(crate) addr: SocketAddr,
    /// Its pid, to read RSS from /proc.
    pub(crate) pid: Option<u32>,
    /// API key to present, if it enforces keys.
    pub(crate) api_key: Option<String>,
}

impl Target {
    /// The mailbox path with the API key in the query when there is one.
    pub(crate) fn mailbox_path(&self) -> String {
        self.with_key("/v1/msg-relay")
    }

    /// The room-scoped mailbox of `room`, with the API key in the query when there is one.
    pub(crate) fn room_mailbox_path(&self, room: &str) -> String {
        self.with_key(&format!("/v1/rooms/{room}/msg-relay"))
    }

    fn with_key(&self, path: &str) -> String {
        match &self.api_key {
            Some(k) => format!("{path}?api_key={}", percent_encode(k)),
            None => path.to_owned(),
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Opens a WebSocket to `ws://addr{path}` with TCP_NODELAY and small buffers.
pub(crate) async fn ws_connect(addr: SocketAddr, path: &str) -> anyhow::Result<Ws> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(64 << 10)
        .write_buffer_size(256 << 10)
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20));
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(format!("ws://{addr}{path}"), stream, Some(config))
            .await
            .with_context(|| format!("websocket handshake with {addr}{path}"))?;
    Ok(ws)
}

/// Next binary frame, skipping pings and text; fails on close or after `timeout`.
pub(crate) async fn next_binary(ws: &mut Ws, timeout: Duration) -> anyhow::Result<Bytes> {
    loop {
        let msg = tokio::time::timeout(timeout, ws.next()).await.context("timed out waiting for a frame")?;
        match msg {
            Some(Ok(Message::Binary(b))) => return Ok(b),
            Some(Ok(Message::Close(c))) => bail!("connection closed: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("websocket error: {e}"),
            None => bail!("connection ended"),
        }
    }
}

/// Next text frame parsed as JSON, skipping binary frames only if `skip_binary`.
pub(crate) async fn next_json(ws: &mut Ws, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    loop {
        let msg = tokio::time::timeout(timeout, ws.next()).await.context("timed out waiting for an event")?;
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(Message::Close(c))) => bail!("connection closed: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("websocket error: {e}"),
            None => bail!("connection ended"),
        }
    }
}

/// Sends one binary frame and flushes.
pub(crate) async fn send_binary(ws: &mut Ws, frame: Vec<u8>) -> anyhow::Result<()> {
    ws.send(Message::binary(frame)).await?;
    Ok(())
}

/// POSTs JSON and returns (status, body as JSON).
pub(crate) async fn post_json(
    target: &Target,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let stream = TcpStream::connect(target.addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::post(path)
        .header("host", target.addr.to_string())
        .header("content-type", "application/json");
    if let Some(k) = &target.api_key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = sender.send_request(req.body(Full::new(Bytes::from(body.to_string())))?).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)))
}

/// A mailbox frame: `[id 32][ttl u16 LE][flags u16 LE][payload]`; an empty payload
/// makes an ASK.
pub(crate) fn mailbox_frame(id: &[u8; 32], ttl: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    relay_proto::mailbox::publish_frame(id, ttl, flags, payload)
}

/// A 32-byte message ID from a run tag, a stream number and a sequence number, so
/// concurrent runs and pairs never collide.
pub(crate) fn message_id(run: u64, stream: u64, seq: u64) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&run.to_le_bytes());
    id[8..16].copy_from_slice(&stream.to_le_bytes());
    id[16..24].copy_from_slice(&seq.to_le_bytes());
    id[24..].copy_from_slice(b"relaybch");
    id
}

/// A tag unique to this process and moment, for message IDs.
pub(crate) fn run_tag() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (nanos.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40)
}

/// Resident set size of `pid` in KiB, from /proc/PID/status.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// CPU time (user plus system) `pid` has used so far, in seconds, from the utime and
/// stime fields of /proc/PID/stat (in USER_HZ ticks, 100 per second on Linux: a
/// reading is good to 10 ms, so a run should last seconds).
pub(crate) fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    const USER_HZ: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).context("no command name in stat")?;
    // Fields from the state (field 3) on; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields.get(i).and_then(|f| f.parse().ok()).context("malformed /proc stat")
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / USER_HZ)
}

/// A microsecond histogram (1 µs .. 60 s, 3 significant figures).
/// Runs `job` `total` times, `concurrency` jobs at a time (each on its own task, taking
/// the next turn when done); returns how long they all took.
pub(crate) async fn run_concurrently<F, Fut>(total: u64, concurrency: u64, job: F) -> anyhow::Result<Duration>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let turns = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (turns, job) = (turns.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            while turns.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                job().await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed())
}

/// The rows every latency workload reports, named after `what` ("push", "p2p"): p50
/// (against `p50_goal`) and p99 pipelined, then p50 and p99 after idle.
pub(crate) fn latency_metrics(
    what: &str,
    payload: usize,
    warm: &Histogram<u64>,
    cold: &Histogram<u64>,
    p50_goal: Goal,
) -> Vec<Metric> {
    let row = |name: String, h: &Histogram<u64>, q: f64, goal| {
        Metric::new(name, h.value_at_quantile(q) as f64, Better::Lower, goal)
    };
    vec![
        row(format!("{what} p50 (us), {payload} B, pipelined"), warm, 0.5, p50_goal),
        row(format!("{what} p99 (us), pipelined"), warm, 0.99, Goal::None),
        row(format!("{what} p50 (us), after idle"), cold, 0.5, Goal::None),
        row(format!("{what} p99 (us), after idle"), cold, 0.99, Goal::None),
    ]
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Records the time since `start` in microseconds.
pub(crate) fn record(h: &mut Histogram<u64>, start: Instant) {
    let us = start.elapsed().as_micros().clamp(1, 60_000_000) as u64;
    let _ = h.record(us);
}
