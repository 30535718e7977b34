//! Room workloads (Relay's own protocol, so they run against the relay only): fan-out
//! in a room of N, point-to-point latency in a room of 2, and joins per second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use relay_proto::room::{self, ClientControl, Destination, RELAY_HEADER_LEN, RelayHeader};
use tokio_tungstenite::tungstenite::Message;

use crate::report::{Better, Goal, Metric};
use crate::util::{
    Target, Ws, histogram, latency_metrics, next_binary, next_json, post_json, run_concurrently, send_binary,
    ws_connect,
};

const WAIT: Duration = Duration::from_secs(10);
/// Broadcasts a fan-out party may send ahead of what it has received from the others.
const FANOUT_WINDOW: u64 = 32;

fn ack(seq: u64) -> Message {
    Message::text(ClientControl::Ack { seq }.to_json())
}

/// Creates a room of `size` and returns its ID.
pub(crate) async fn create_room(t: &Target, size: u16) -> anyhow::Result<String> {
    let (status, body) = post_json(t, "/v1/rooms", &serde_json::json!({"room_size": size})).await?;
    if status != 201 {
        bail!("creating a room answered {status}: {body}");
    }
    body["room_uuid"].as_str().map(str::to_owned).context("no room_uuid in the answer")
}

/// Joins `room` and reads the welcome; returns the socket and its slot.
async fn join(t: &Target, room: &str) -> anyhow::Result<(Ws, u16)> {
    let mut ws = ws_connect(t.addr, &format!("/v1/rooms/{room}")).await?;
    let welcome = next_json(&mut ws, WAIT).await?;
    if welcome["type"] != "welcome" {
        bail!("expected welcome, got {welcome}");
    }
    Ok((ws, welcome["slot"].as_u64().context("welcome without slot")? as u16))
}

/// Reads events until `ready`.
async fn wait_ready(ws: &mut Ws) -> anyhow::Result<()> {
    loop {
        if next_json(ws, WAIT).await?["type"] == "ready" {
            return Ok(());
        }
    }
}

/// A data frame to `to` whose payload (at least 8 bytes) starts with the send time.
fn data_frame(to: Destination, sent_at: Duration, size: usize) -> Vec<u8> {
    let header = room::client_header(to);
    let mut f = Vec::with_capacity(header.len() + size.max(16));
    f.extend_from_slice(&header);
    f.extend_from_slice(&(sent_at.as_nanos() as u64).to_le_bytes());
    f.resize(header.len() + size.max(8), 0x42);
    f
}

/// The send time carried in a delivered frame's payload.
fn sent_at(frame: &[u8]) -> Option<Duration> {
    let ts = frame.get(RELAY_HEADER_LEN..RELAY_HEADER_LEN + 8)?;
    Some(Duration::from_nanos(u64::from_le_bytes(ts.try_into().ok()?)))
}

fn seq_of(frame: &[u8]) -> u64 {
    RelayHeader::parse(frame).map_or(0, |(h, _)| h.seq)
}

/// Workload 3: a room of `size` where every party broadcasts `per_party` messages.
pub(crate) async fn fanout(
    t: &Target,
    size: u16,
    per_party: u64,
    payload: usize,
) -> anyhow::Result<Vec<Metric>> {
    let room = create_room(t, size).await?;
    let mut parties = Vec::new();
    for _ in 0..size {
        parties.push(join(t, &room).await?);
    }
    for (ws, _) in &mut parties {
        wait_ready(ws).await?;
    }
    let epoch = Instant::now();
    let others = u64::from(size) - 1;
    let expected = per_party * others;
    let mut tasks = Vec::new();
    for (ws, _slot) in parties {
        let (mut sink, mut stream) = ws.split();
        // Messages this party has received, so its sender stays within FANOUT_WINDOW
        // rounds of the others (as a real protocol would), and acks for the writer.
        let progress = Arc::new((AtomicU64::new(0), tokio::sync::Notify::new()));
        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let seen = progress.clone();
        let sender = tokio::spawn(async move {
            for i in 0..per_party {
                let needed = i.saturating_sub(FANOUT_WINDOW) * others;
                while seen.0.load(Ordering::Acquire) < needed {
                    sink.flush().await?;
                    let notified = seen.1.notified();
                    if seen.0.load(Ordering::Acquire) >= needed {
                        break;
                    }
                    tokio::time::timeout(WAIT, notified).await.context("fan-out sender starved")?;
                }
                while let Ok(seq) = ack_rx.try_recv() {
                    sink.feed(ack(seq)).await?;
                }
                sink.feed(Message::binary(data_frame(Destination::Broadcast, epoch.elapsed(), payload)))
                    .await?;
            }
            sink.flush().await?;
            // Keep acking until the receiver is done, so the room never fills.
            while let Some(seq) = ack_rx.recv().await {
                sink.send(ack(seq)).await?;
            }
            anyhow::Ok(sink)
        });
        let receiver = tokio::spawn(async move {
            let mut h = histogram();
            let mut got = 0;
            while got < expected {
                let msg =
                    tokio::time::timeout(WAIT, stream.next()).await.context("fan-out receive timed out")?;
                match msg {
                    Some(Ok(Message::Binary(frame))) => {
                        got += 1;
                        progress.0.store(got, Ordering::Release);
                        progress.1.notify_one();
                        if let Some(at) = sent_at(&frame) {
                            let us = epoch.elapsed().saturating_sub(at).as_micros().max(1) as u64;
                            let _ = h.record(us.min(60_000_000));
                        }
                        if got % 64 == 0 || got == expected {
                            let _ = ack_tx.send(seq_of(&frame));
                        }
                    }
                    Some(Ok(Message::Text(t))) if t.contains("\"error\"") => {
                        bail!("fan-out: relay error {t}")
                    }
                    Some(Ok(Message::Close(c))) => bail!("closed during fan-out: {c:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => bail!("fan-out: {e}"),
                    None => bail!("fan-out: connection ended"),
                }
            }
            drop(ack_tx);
            anyhow::Ok((h, stream))
        });
        tasks.push((sender, receiver));
    }
    let mut all = histogram();
    let mut keep = Vec::new();
    for (sender, receiver) in tasks {
        let sink = sender.await??;
        let (h, stream) = receiver.await??;
        all.add(&h).ok();
        keep.push((sink, stream));
    }
    let elapsed = epoch.elapsed().as_secs_f64();
    let deliveries = (expected * u64::from(size)) as f64;
    Ok(vec![
        Metric::new(
            format!("deliveries/s, room of {size}"),
            deliveries / elapsed,
            Better::Higher,
            Goal::None,
        ),
        Metric::new("fan-out latency p50 (us)", all.value_at_quantile(0.5) as f64, Better::Lower, Goal::None),
        Metric::new(
            "fan-out latency p99 (us)",
            all.value_at_quantile(0.99) as f64,
            Better::Lower,
            Goal::None,
        ),
    ])
}

/// Workload 4: point-to-point latency in a room of 2, measured like the mailbox push
/// latency: *pipelined* (the next message leaves as soon as the previous one arrived;
/// the figure compared with the push latency) and *after idle* (a pause of about a
/// millisecond before each message).
pub(crate) async fn p2p_latency(t: &Target, iterations: u64, payload: usize) -> anyhow::Result<Vec<Metric>> {
    let room = create_room(t, 2).await?;
    let (mut a, slot_a) = join(t, &room).await?;
    let (mut b, slot_b) = join(t, &room).await?;
    wait_ready(&mut a).await?;
    wait_ready(&mut b).await?;
    let epoch = Instant::now();
    // The parties take turns, as the rounds of a protocol do: a to b, then b to a, so
    // each connection carries messages both ways.
    let mut one = async |h: &mut hdrhistogram::Histogram<u64>, i: u64, record: bool| {
        let (from, to, to_slot) =
            if i.is_multiple_of(2) { (&mut a, &mut b, slot_b) } else { (&mut b, &mut a, slot_a) };
        let start = Instant::now();
        send_binary(from, data_frame(Destination::Slot(to_slot), epoch.elapsed(), payload)).await?;
        let frame = next_binary(to, WAIT).await?;
        if record {
            crate::util::record(h, start);
        }
        if i % 128 >= 126 {
            to.send(ack(seq_of(&frame))).await?;
        }
        anyhow::Ok(())
    };
    let mut warm = histogram();
    let warmup = iterations / 10;
    for i in 0..iterations + warmup {
        one(&mut warm, i, i >= warmup).await?;
    }
    let mut cold = histogram();
    for i in 0..(iterations / 10).max(1) {
        tokio::time::sleep(Duration::from_micros(300)).await;
        one(&mut cold, iterations + warmup + i, true).await?;
    }
    Ok(latency_metrics("p2p", payload, &warm, &cold, Goal::None))
}

/// Workload 5b: rooms of 2 created and joined by both parties, `concurrency` at a time;
/// joins per second.
pub(crate) async fn joins(t: &Target, rooms: u64, concurrency: u64) -> anyhow::Result<Vec<Metric>> {
    let t = t.clone();
    let elapsed = run_concurrently(rooms, concurrency, move || {
        let t = t.clone();
        async move {
            let room = create_room(&t, 2).await?;
            let (mut a, _) = join(&t, &room).await?;
            let (mut b, _) = join(&t, &room).await?;
            let _ = a.send(Message::text(r#"{"type":"leave"}"#)).await;
            let _ = b.send(Message::text(r#"{"type":"leave"}"#)).await;
            Ok(())
        }
    })
    .await?;
    let rate = (2 * rooms) as f64 / elapsed.as_secs_f64();
    Ok(vec![Metric::new("room joins/s (incl. creation)", rate, Better::Higher, Goal::None)])
}
