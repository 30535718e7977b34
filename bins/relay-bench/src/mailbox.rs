//! Mailbox workloads: push latency, throughput, scaling across namespaces, handshakes,
//! idle connections and a stalled consumer. All but `scaling` speak only the Silence
//! Labs wire format at `/v1/msg-relay`, so they run unchanged against the seed relay;
//! `scaling` also uses Relay's room-scoped mailboxes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::report::{Better, Goal, Metric};
use crate::util::{
    Target, cpu_secs, histogram, latency_metrics, mailbox_frame, message_id, next_binary, record, rss_kib,
    run_concurrently, run_tag, send_binary, ws_connect,
};

const WAIT: Duration = Duration::from_secs(10);
/// The mailbox flag for "one receiver": the relay may drop the message once delivered.
const ONE_RECEIVER: u16 = relay_proto::mailbox::FLAG_ONE_RECEIVER;
/// Bytes of a mailbox frame before its payload.
const HEADER_LEN: usize = relay_proto::mailbox::HEADER_LEN;

/// Workload 1: one party asks for an ID, then another publishes it; the time from the
/// publish leaving the publisher to the message reaching the asker.
///
/// Measured two ways. *Pipelined* (the target figure): the asker keeps 64 to 128 asks
/// outstanding, sent 64 at a time, and the publisher publishes the next ID as soon as
/// the previous message arrived, so every ask was sent at least 64 messages before its
/// publish and no ask arrives just before a publish; neither process sleeps between
/// messages: the figure is the relay's path plus loopback TCP.
/// *After idle*: each publish follows its ask after a pause of about a millisecond in
/// which both processes sleep, so the figure adds the cost of waking idle threads and
/// CPUs (mostly the kernel's and the machine's, not the relay's).
pub(crate) async fn push_latency(t: &Target, iterations: u64, payload: usize) -> anyhow::Result<Vec<Metric>> {
    push_latency_between(t, t, iterations, payload, ONE_RECEIVER, "push", Goal::Ratio(0.8)).await
}

/// Workload `cross-push`: push latency with the publisher on `a` and the asker on `b`,
/// two instances sharing the mailbox through Redis, beside the same figure with both
/// on `a` (local, one receiver), in one run: with flags 0 (the whole frame travels in
/// the Redis notice) and with the one-receiver flag (stored in Redis, then taken by `b`).
pub(crate) async fn cross_push(
    a: &Target,
    b: &Target,
    iterations: u64,
    payload: usize,
) -> anyhow::Result<Vec<Metric>> {
    // One receiver, as `push-latency`: taken at once by the local asker, it never goes
    // to Redis. With flags 0 a local publisher outruns Redis (every publish is also
    // stored there) and is slowed down to Redis' pace once `send_queue_frames` wait
    // for it, which would measure Redis, not the local path.
    let local = push_latency_between(a, a, iterations, payload, ONE_RECEIVER, "local push", Goal::None);
    let mut metrics = local.await.context("local push")?;
    let cross = push_latency_between(a, b, iterations, payload, 0, "cross push", Goal::None);
    metrics.extend(cross.await.context("cross push")?);
    let once = push_latency_between(a, b, iterations, payload, ONE_RECEIVER, "cross push 1-recv", Goal::None);
    metrics.extend(once.await.context("cross push, one receiver")?);
    Ok(metrics)
}

/// Push latency with the publisher on `publish_to` and the asker on `ask_at`, publishes
/// carrying `flags`; rows named `what`.
async fn push_latency_between(
    publish_to: &Target,
    ask_at: &Target,
    iterations: u64,
    payload: usize,
    flags: u16,
    what: &str,
    p50_goal: Goal,
) -> anyhow::Result<Vec<Metric>> {
    let mut asker = ws_connect(ask_at.addr, &ask_at.mailbox_path()).await?;
    let mut publisher = ws_connect(publish_to.addr, &publish_to.mailbox_path()).await?;
    let run = run_tag();
    let body = vec![0x5a; payload];
    let check = |got: &Bytes, id: &[u8; 32]| {
        let same_id = relay_proto::mailbox::MailboxHeader::parse(got).is_some_and(|h| h.id == *id);
        if got.len() != HEADER_LEN + payload || !same_id {
            bail!("push latency: got a frame for another id or of the wrong size ({} bytes)", got.len());
        }
        Ok(())
    };

    // Pipelined. Asks go out 64 at a time, at least 64 messages ahead of their publish,
    // so a publish does not follow its ask by a few microseconds (which would find the
    // relay already awake from handling the ask, unlike a room message).
    let mut warm = histogram();
    let warmup = iterations / 10;
    let total = iterations + warmup;
    const ASK_BATCH: u64 = 64;
    const AHEAD: u64 = 2 * ASK_BATCH;
    ask_range(&mut asker, run, 0..AHEAD.min(total)).await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    for i in 0..total {
        let id = message_id(run, 0, i);
        let start = Instant::now();
        send_binary(&mut publisher, mailbox_frame(&id, 30, flags, &body)).await?;
        let got = next_binary(&mut asker, WAIT).await.with_context(|| format!("pipelined message {i}"))?;
        if i >= warmup {
            record(&mut warm, start);
        }
        check(&got, &id)?;
        if (i + 1) % ASK_BATCH == 0 && i + 1 + ASK_BATCH < total {
            ask_range(&mut asker, run, (i + 1 + ASK_BATCH)..(i + 1 + AHEAD).min(total)).await?;
        }
    }

    // After idle.
    let mut cold = histogram();
    for i in 0..(iterations / 10).max(1) {
        let id = message_id(run, 1, i);
        send_binary(&mut asker, mailbox_frame(&id, 30, 0, &[])).await?;
        // Let the ask land before the publish, so this measures a push to a waiter.
        tokio::time::sleep(Duration::from_micros(300)).await;
        let start = Instant::now();
        send_binary(&mut publisher, mailbox_frame(&id, 30, flags, &body)).await?;
        let got = next_binary(&mut asker, WAIT).await.with_context(|| format!("message {i} after idle"))?;
        record(&mut cold, start);
        check(&got, &id)?;
    }
    let mut metrics = latency_metrics(what, payload, &warm, &cold, p50_goal);
    let max =
        Metric::new(format!("{what} max (us), pipelined"), warm.max() as f64, Better::Lower, Goal::None);
    metrics.insert(2, max);
    Ok(metrics)
}

/// Asks for the IDs `range` of stream 0 of `run`, with one flush.
async fn ask_range(asker: &mut crate::util::Ws, run: u64, range: std::ops::Range<u64>) -> anyhow::Result<()> {
    for s in range {
        asker.feed(Message::binary(mailbox_frame(&message_id(run, 0, s), 30, 0, &[]))).await?;
    }
    asker.flush().await?;
    Ok(())
}

/// Workload 2: `pairs` sender/receiver pairs; each receiver keeps `window` asks
/// outstanding, each sender publishes `per_pair` messages of `payload` bytes but never
/// runs more than two windows ahead of its receiver (so neither relay has to store an
/// unbounded backlog). Reports messages/s and MB/s over all pairs.
pub(crate) async fn throughput(
    t: &Target,
    pairs: u64,
    per_pair: u64,
    payload: usize,
    window: u64,
    goal: Goal,
) -> anyhow::Result<Vec<Metric>> {
    let paths = vec![t.mailbox_path(); pairs as usize];
    let elapsed = pairs_relay(t, &paths, per_pair, payload, window).await?;
    let msgs = (pairs * per_pair) as f64;
    let per_sec = msgs / elapsed;
    let mbps = msgs * payload as f64 / elapsed / 1e6;
    let (msg_goal, mb_goal) = if payload >= 4096 { (Goal::None, goal) } else { (goal, Goal::None) };
    Ok(vec![
        Metric::new(format!("messages/s, {pairs} pairs x {payload} B"), per_sec, Better::Higher, msg_goal),
        Metric::new(format!("MB/s, {pairs} pairs x {payload} B"), mbps, Better::Higher, mb_goal),
    ])
}

/// Workload 2b: `pairs` one-pair clients (256 B, as `throughput`) all in one namespace
/// (`/v1/msg-relay`, the open tenant of a relay that does not enforce keys), then the
/// same pairs each in a room-scoped namespace of its own (`/v1/rooms/{id}/msg-relay`,
/// rooms created with `POST /v1/rooms`). The `per_pair` messages of each layout are
/// split into `phases` phases, the layouts taking turns (the first of each turn
/// alternating too), so that both meet the same machine: on a shared host whose speed
/// drifts over seconds, one long phase of each compared a fast moment with a slow one.
/// Reports both rates over all phases, the median over turns of the ratio one/separate
/// (target at least 0.95x) and, with the pid, the relay's CPU per message in each.
pub(crate) async fn scaling(
    t: &Target,
    pairs: u64,
    per_pair: u64,
    window: u64,
    phases: u64,
) -> anyhow::Result<Vec<Metric>> {
    const PAYLOAD: usize = 256;
    let one = vec![t.mailbox_path(); pairs as usize];
    let mut separate = Vec::with_capacity(pairs as usize);
    for _ in 0..pairs {
        separate.push(t.room_mailbox_path(&crate::rooms::create_room(t, 2).await?));
    }
    let phases = phases.clamp(1, per_pair.max(1));
    let per_phase = (per_pair / phases).max(1);
    let layouts = [("one namespace", &one), ("separate namespaces", &separate)];
    // Per layout: seconds and CPU seconds over every phase.
    let mut elapsed = [0.0f64; 2];
    let mut cpu = [0.0f64; 2];
    let mut ratios = Vec::with_capacity(phases as usize);
    for turn in 0..phases {
        let mut rate = [0.0f64; 2];
        let order = if turn % 2 == 0 { [0, 1] } else { [1, 0] };
        for l in order {
            let cpu_before = t.pid.map(cpu_secs).transpose()?;
            let secs = pairs_relay(t, layouts[l].1, per_phase, PAYLOAD, window).await?;
            if let (Some(before), Some(pid)) = (cpu_before, t.pid) {
                cpu[l] += cpu_secs(pid)? - before;
            }
            elapsed[l] += secs;
            rate[l] = (pairs * per_phase) as f64 / secs;
        }
        ratios.push(rate[0] / rate[1]);
    }
    let msgs = (pairs * per_phase * phases) as f64;
    let mut metrics = Vec::new();
    for (l, (layout, _)) in layouts.iter().enumerate() {
        metrics.push(Metric::new(
            format!("messages/s, {layout}, {pairs} pairs"),
            msgs / elapsed[l],
            Better::Higher,
            Goal::None,
        ));
        if t.pid.is_some() {
            metrics.push(Metric::new(
                format!("CPU per message (us), {layout}"),
                cpu[l] * 1e6 / msgs,
                Better::Lower,
                Goal::None,
            ));
        }
    }
    metrics.push(Metric::new(
        format!("one / separate namespaces, median of {phases} turns"),
        crate::report::median(&mut ratios),
        Better::Higher,
        Goal::Absolute(0.95),
    ));
    Ok(metrics)
}

/// Runs one sender/receiver pair per entry of `paths` (both ends of pair `p` on
/// `paths[p]`); each receiver keeps `window` asks outstanding and each sender publishes
/// `per_pair` messages of `payload` bytes, never more than two windows ahead of its
/// receiver. Returns the seconds from the start until every receiver had everything.
async fn pairs_relay(
    t: &Target,
    paths: &[String],
    per_pair: u64,
    payload: usize,
    window: u64,
) -> anyhow::Result<f64> {
    let run = run_tag();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    let start_gate = Arc::new(tokio::sync::Barrier::new(2 * paths.len() + 1));
    for (p, path) in (0u64..).zip(paths) {
        let progress = Arc::new((AtomicU64::new(0), Notify::new()));
        let mut rx = ws_connect(t.addr, path).await?;
        let mut tx = ws_connect(t.addr, path).await?;
        let gate = start_gate.clone();
        let prog = progress.clone();
        receivers.push(tokio::spawn(async move {
            gate.wait().await;
            let first = window.min(per_pair);
            for s in 0..first {
                rx.feed(Message::binary(mailbox_frame(&message_id(run, p, s), 30, 0, &[]))).await?;
            }
            rx.flush().await?;
            let mut next_ask = first;
            let mut received = 0;
            while received < per_pair {
                // Take every frame already here, then answer them with one batch of asks:
                // one write per batch keeps the client from being what is measured.
                let mut batch = vec![next_binary(&mut rx, WAIT).await.context("receiver")?];
                while let Some(more) = rx.next().now_or_never() {
                    match more {
                        Some(Ok(Message::Binary(b))) => batch.push(b),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => bail!("receiver: {e}"),
                        None => bail!("receiver: connection ended"),
                    }
                }
                for frame in &batch {
                    if frame.len() != HEADER_LEN + payload {
                        bail!(
                            "throughput: frame of {} bytes, expected {}",
                            frame.len(),
                            HEADER_LEN + payload
                        );
                    }
                }
                received += batch.len() as u64;
                prog.0.fetch_add(batch.len() as u64, Ordering::Release);
                prog.1.notify_one();
                let mut asked = false;
                for _ in 0..batch.len() {
                    if next_ask < per_pair {
                        rx.feed(Message::binary(mailbox_frame(&message_id(run, p, next_ask), 30, 0, &[])))
                            .await?;
                        next_ask += 1;
                        asked = true;
                    }
                }
                if asked {
                    rx.flush().await?;
                }
            }
            anyhow::Ok(())
        }));
        let gate = start_gate.clone();
        senders.push(tokio::spawn(async move {
            let body = vec![0xa5u8; payload];
            gate.wait().await;
            let mut s = 0;
            while s < per_pair {
                let received = progress.0.load(Ordering::Acquire);
                let allowed = (received + 2 * window).min(per_pair);
                if s >= allowed {
                    progress.1.notified().await;
                    continue;
                }
                while s < allowed {
                    tx.feed(Message::binary(mailbox_frame(&message_id(run, p, s), 30, ONE_RECEIVER, &body)))
                        .await?;
                    s += 1;
                }
                tx.flush().await?;
            }
            // Keep the connection open until the receiver is done.
            anyhow::Ok(tx)
        }));
    }
    start_gate.wait().await;
    let start = Instant::now();
    for r in receivers {
        r.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    for s in senders {
        drop(s.await??);
    }
    Ok(elapsed)
}

/// Workload 5a: WebSocket handshakes per second over plain HTTP, `concurrency` at a time.
pub(crate) async fn handshakes(t: &Target, total: u64, concurrency: u64) -> anyhow::Result<Vec<Metric>> {
    let t = t.clone();
    let elapsed = run_concurrently(total, concurrency, move || {
        let t = t.clone();
        async move {
            let mut ws = ws_connect(t.addr, &t.mailbox_path()).await?;
            let _ = ws.close(None).await;
            Ok(())
        }
    })
    .await?;
    let rate = total as f64 / elapsed.as_secs_f64();
    Ok(vec![Metric::new("websocket handshakes/s", rate, Better::Higher, Goal::Absolute(5000.0))])
}

/// Workload 6: opens `count` idle mailbox connections and reports the relay's RSS growth
/// per connection, read from /proc of its pid.
pub(crate) async fn idle(t: &Target, count: u64) -> anyhow::Result<Vec<Metric>> {
    let pid = t.pid.context("the idle workload needs the relay's pid (--pid / --peer-pid)")?;
    // Warm the server up so allocator arenas and thread stacks are not counted.
    let mut warm = Vec::new();
    for _ in 0..64 {
        warm.push(ws_connect(t.addr, &t.mailbox_path()).await?);
    }
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let mut conns = Vec::with_capacity(count as usize);
    let path = t.mailbox_path();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    for _ in 0..count {
        pending.push(ws_connect(t.addr, &path));
        if pending.len() >= 64
            && let Some(c) = pending.next().await
        {
            conns.push(c?);
        }
    }
    while let Some(c) = pending.next().await {
        conns.push(c?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid)?;
    let per_conn = (after.saturating_sub(before)) as f64 / count as f64;
    drop(conns);
    Ok(vec![
        Metric::new(
            format!("RSS per idle connection (KiB), {count} conns"),
            per_conn,
            Better::Lower,
            Goal::Absolute(16.0),
        ),
        Metric::new(
            "RSS growth total (MiB)",
            after.saturating_sub(before) as f64 / 1024.0,
            Better::Lower,
            Goal::None,
        ),
    ])
}

/// Workload 7: a receiver asks for `count` IDs and then stops reading; a sender
/// publishes them, `payload` bytes each. Reports the relay's peak RSS growth and
/// whether the relay closed the stalled receiver.
pub(crate) async fn stalled(t: &Target, count: u64, payload: usize) -> anyhow::Result<Vec<Metric>> {
    let pid = t.pid.context("the stalled workload needs the relay's pid (--pid / --peer-pid)")?;
    let run = run_tag();
    let mut rx = ws_connect(t.addr, &t.mailbox_path()).await?;
    let mut tx = ws_connect(t.addr, &t.mailbox_path()).await?;
    for s in 0..count {
        rx.feed(Message::binary(mailbox_frame(&message_id(run, 7, s), 60, 0, &[]))).await?;
    }
    rx.flush().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid)?;
    let mut peak = before;
    let body = vec![0x77u8; payload];
    let start = Instant::now();
    for s in 0..count {
        let sent = tokio::time::timeout(
            WAIT,
            tx.send(Message::binary(mailbox_frame(&message_id(run, 7, s), 60, ONE_RECEIVER, &body))),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            break;
        }
        if s % 32 == 0 {
            peak = peak.max(rss_kib(pid)?);
        }
    }
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_kib(pid)?);
    }
    let publish_secs = start.elapsed().as_secs_f64();
    // Now read: did the relay close the stalled receiver, and with which code?
    let mut closed_with = 0.0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(2), rx.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                closed_with = f64::from(u16::from(frame.code));
                break;
            }
            Ok(Some(Ok(_))) => continue,
            // Dropped without a close frame the stalled reader could still read: 1006.
            Ok(Some(Err(_)) | None) => {
                closed_with = 1006.0;
                break;
            }
            Err(_) => break,
        }
    }
    let sent_mib = (count as usize * (payload + HEADER_LEN)) as f64 / (1 << 20) as f64;
    Ok(vec![
        Metric::new(
            format!("peak RSS growth (MiB), {sent_mib:.0} MiB sent"),
            peak.saturating_sub(before) as f64 / 1024.0,
            Better::Lower,
            Goal::None,
        ),
        Metric::new(
            "receiver closed with (0 = still open, 1006 = dropped)",
            closed_with,
            Better::Higher,
            Goal::None,
        ),
        Metric::new("publish phase (s)", publish_secs, Better::Lower, Goal::None),
    ])
}
