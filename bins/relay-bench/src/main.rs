//! `relay-bench`: drives a relay over real WebSockets on loopback and prints one table
//! per workload: the relay's figures, the peer's (when `--peer` is given) from the same
//! session, their ratio, and the project's target. Every workload is bounded in count
//! and time and stops by itself. See `relay-bench --help` and docs/BENCHMARKS.md.

mod mailbox;
mod report;
mod rooms;
mod util;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use crate::report::{Better, Goal, Metric, medians, table};
use crate::util::Target;

/// Load generator and benchmark for Relay and the peer relays it is measured against.
///
/// Workloads (each bounded in count and time, loopback only):
///
///   push-latency   one party asks for an ID, another publishes it (256 B); p50/p99/max us, pipelined (asks
///                  sent 64 messages ahead; each publish leaves as soon as the previous message arrived; the
///                  target) and after an idle pause of about 1 ms (reported: adds waking idle threads and CPUs).
///   throughput     P pairs (default 8), receivers ask ahead within a window, senders publish 256 B; msg/s, MB/s.
///   throughput-64k the same with 64 KiB payloads and 4 pairs; MB/s.
///   scaling        P pairs (default 16) of 256 B as in throughput, all in one namespace (/v1/msg-relay), and
///                  each in a room-scoped namespace of its own (/v1/rooms/{id}/msg-relay), in phases taking turns
///                  (--scaling-phases); msg/s of both and the median over turns of the ratio one/separate
///                  (target >= 0.95x). Relay only (the peer has no rooms).
///   fanout         a room of N (default 16), every party broadcasts M messages; deliveries/s, p99. Relay only.
///   p2p-latency    a 2-party room, one message at a time, pipelined and after idle; p50/p99 us. Relay only.
///   handshakes     WebSocket upgrades per second over plain HTTP.
///   joins          rooms of 2 created and joined per second. Relay only.
///   idle           C idle connections (default 10,000); RSS growth per connection (needs --pid).
///   stalled        a receiver stops reading while a sender publishes 64 KiB frames; peak RSS growth and
///                  whether the relay closed the receiver (needs --pid).
///   cross-push     push latency with the publisher on --target and the asker on --second, two instances
///                  sharing the mailbox through Redis (--redis-url), beside the local figure (both on
///                  --target): flags 0, and the one-receiver flag. Relay only; needs --second.
///
/// With --peer, every mailbox workload also runs against the peer in the same session, interleaved
/// run by run, and the table shows the ratio relay/peer. Figures are medians of --runs runs.
///
/// With --pid (and --peer-pid), the message workloads (push-latency, throughput, throughput-64k, scaling)
/// and handshakes also report the process's CPU time (utime + stime from /proc/PID/stat, read before and
/// after each run) per message, or per handshake: microseconds of CPU, beside the wall-clock figures.
#[derive(Debug, Parser)]
#[command(name = "relay-bench", version, verbatim_doc_comment)]
struct Args {
    /// The relay under test (host:port of its plain-HTTP listener).
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// The relay's pid, for the idle and stalled workloads and CPU per message.
    #[arg(long)]
    pid: Option<u32>,
    /// API key for the relay (sent as Authorization: Bearer, or ?api_key= on WebSockets).
    #[arg(long, env = "RELAY_BENCH_API_KEY")]
    api_key: Option<String>,
    /// The peer relay to compare with (host:port), e.g. the seed Silence Labs relay.
    #[arg(long)]
    peer: Option<SocketAddr>,
    /// The peer's pid, for the idle and stalled workloads and CPU per message.
    #[arg(long)]
    peer_pid: Option<u32>,
    /// A second instance sharing the relay's mailbox through Redis, for `cross-push`.
    #[arg(long)]
    second: Option<SocketAddr>,
    /// Workloads to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "push-latency,throughput,throughput-64k,scaling,fanout,p2p-latency,handshakes,joins"
    )]
    workloads: Vec<Workload>,
    /// Runs per workload; figures are medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Tiny counts everywhere: a smoke run that checks every workload works, in seconds.
    #[arg(long)]
    smoke: bool,
    /// Iterations of the latency workloads (pipelined; a tenth as many again after idle).
    #[arg(long, default_value_t = 10_000)]
    latency_iterations: u64,
    /// Sender/receiver pairs for `throughput`.
    #[arg(long, default_value_t = 8)]
    pairs: u64,
    /// Messages per pair for `throughput`.
    #[arg(long, default_value_t = 25_000)]
    messages_per_pair: u64,
    /// Pairs for `throughput-64k`.
    #[arg(long, default_value_t = 4)]
    big_pairs: u64,
    /// Messages per pair for `throughput-64k`.
    #[arg(long, default_value_t = 1500)]
    big_messages_per_pair: u64,
    /// One-pair clients in `scaling`.
    #[arg(long, default_value_t = 16)]
    scaling_pairs: u64,
    /// Messages per pair in `scaling` (each layout; enough for a run of a second or more,
    /// so the CPU reading's 10 ms ticks do not matter).
    #[arg(long, default_value_t = 50_000)]
    scaling_messages_per_pair: u64,
    /// Phases each layout's messages are split into in `scaling`, the two layouts taking
    /// turns, so that both meet the same moments of a machine whose speed drifts.
    #[arg(long, default_value_t = 5)]
    scaling_phases: u64,
    /// Asks a receiver keeps outstanding.
    #[arg(long, default_value_t = 256)]
    window: u64,
    /// Parties in the `fanout` room.
    #[arg(long, default_value_t = 16)]
    room_size: u16,
    /// Broadcasts per party in `fanout`.
    #[arg(long, default_value_t = 500)]
    fanout_messages: u64,
    /// Handshakes in `handshakes`.
    #[arg(long, default_value_t = 10_000)]
    handshakes: u64,
    /// Concurrent connectors in `handshakes` and `joins`.
    #[arg(long, default_value_t = 32)]
    concurrency: u64,
    /// Rooms in `joins`.
    #[arg(long, default_value_t = 1000)]
    join_rooms: u64,
    /// Connections in `idle`.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: u64,
    /// Messages published to the stalled receiver.
    #[arg(long, default_value_t = 2000)]
    stalled_messages: u64,
}

/// One workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    PushLatency,
    Throughput,
    #[value(name = "throughput-64k")]
    Throughput64k,
    Scaling,
    Fanout,
    P2pLatency,
    Handshakes,
    Joins,
    Idle,
    Stalled,
    CrossPush,
}

impl Workload {
    /// Whether the peer speaks it (the seed relay has only the mailbox).
    fn peer_speaks(self) -> bool {
        !matches!(
            self,
            Workload::Scaling
                | Workload::Fanout
                | Workload::P2pLatency
                | Workload::Joins
                | Workload::CrossPush
        )
    }

    /// What one unit of the workload is and how many it relays, for CPU per unit; `None`
    /// for workloads that measure something else (or, like `scaling`, do it themselves).
    fn units(self, a: &Args) -> Option<(&'static str, u64)> {
        match self {
            // Warm-up, pipelined and after-idle messages.
            Workload::PushLatency => {
                let n = a.latency_iterations;
                Some(("message", n + n / 10 + (n / 10).max(1)))
            }
            Workload::Throughput => Some(("message", a.pairs * a.messages_per_pair)),
            Workload::Throughput64k => Some(("message", a.big_pairs * a.big_messages_per_pair)),
            Workload::Handshakes => Some(("handshake", a.handshakes)),
            _ => None,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.runs = 1;
        args.latency_iterations = 50;
        args.pairs = 2;
        args.messages_per_pair = 200;
        args.big_pairs = 2;
        args.big_messages_per_pair = 20;
        args.scaling_pairs = 2;
        args.scaling_messages_per_pair = 100;
        args.scaling_phases = 2;
        args.window = 16;
        args.room_size = 4;
        args.fanout_messages = 20;
        args.handshakes = 50;
        args.concurrency = 4;
        args.join_rooms = 10;
        args.idle_connections = 50;
        args.stalled_messages = 50;
    }
    // Thousands of connections need file descriptors; raise the soft limit to the hard one.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let relay = Target { label: "relay", addr: args.target, pid: args.pid, api_key: args.api_key.clone() };
    let peer = args.peer.map(|addr| Target { label: "peer", addr, pid: args.peer_pid, api_key: None });
    println!(
        "relay-bench: relay {}{} runs={}{}",
        relay.addr,
        peer.as_ref().map(|p| format!(", peer {}", p.addr)).unwrap_or_default(),
        args.runs,
        if args.smoke { " (smoke)" } else { "" }
    );
    let mut push_p50 = None;
    let mut p2p_p50 = None;
    for &w in &args.workloads {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..args.runs {
            ours.push(run_one(w, &relay, &args).await.with_context(|| format!("{w:?} against the relay"))?);
            if let Some(p) = peer.as_ref().filter(|_| w.peer_speaks()) {
                theirs.push(run_one(w, p, &args).await.with_context(|| format!("{w:?} against the peer"))?);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ours = medians(&ours);
        let theirs = (!theirs.is_empty()).then(|| medians(&theirs));
        match w {
            Workload::PushLatency => push_p50 = ours.first().map(|m| m.value),
            Workload::P2pLatency => p2p_p50 = ours.first().map(|m| m.value),
            _ => {}
        }
        print!("{}", table(&format!("{w:?}"), args.runs, &ours, theirs.as_deref()));
    }
    if let (Some(push), Some(p2p)) = (push_p50, p2p_p50) {
        let ratio = p2p / push;
        println!(
            "== room p2p p50 / mailbox push p50 = {ratio:.2}x (target <= 1.2x: {})",
            if ratio <= 1.2 { "met" } else { "MISSED" }
        );
    }
    Ok(())
}

/// Runs `w` once against `t`; with its pid, adds the CPU it used per unit relayed.
async fn run_one(w: Workload, t: &Target, a: &Args) -> anyhow::Result<Vec<Metric>> {
    let units = w.units(a);
    let cpu_before = t.pid.filter(|_| units.is_some()).map(util::cpu_secs).transpose()?;
    let mut metrics = run_workload(w, t, a).await?;
    if let (Some(before), Some(pid), Some((unit, count))) = (cpu_before, t.pid, units) {
        let per_unit = (util::cpu_secs(pid)? - before) * 1e6 / count as f64;
        metrics.push(Metric::new(format!("CPU per {unit} (us)"), per_unit, Better::Lower, cpu_goal(w)));
    }
    Ok(metrics)
}

/// Issue 16's targets for CPU per message, relay/peer.
fn cpu_goal(w: Workload) -> Goal {
    match w {
        Workload::Throughput => Goal::Ratio(0.45),
        Workload::Throughput64k => Goal::Ratio(0.55),
        _ => Goal::None,
    }
}

async fn run_workload(w: Workload, t: &Target, a: &Args) -> anyhow::Result<Vec<Metric>> {
    let _ = t.label;
    match w {
        Workload::PushLatency => {
            let (t, n) = (t.clone(), a.latency_iterations);
            on_one_thread(move || async move { mailbox::push_latency(&t, n, 256).await }).await
        }
        Workload::Throughput => {
            mailbox::throughput(t, a.pairs, a.messages_per_pair, 256, a.window, Goal::Ratio(2.0)).await
        }
        Workload::Throughput64k => {
            mailbox::throughput(
                t,
                a.big_pairs,
                a.big_messages_per_pair,
                64 << 10,
                a.window.min(64),
                Goal::Ratio(1.5),
            )
            .await
        }
        Workload::Scaling => {
            mailbox::scaling(t, a.scaling_pairs, a.scaling_messages_per_pair, a.window, a.scaling_phases)
                .await
        }
        Workload::Fanout => rooms::fanout(t, a.room_size, a.fanout_messages, 256).await,
        Workload::P2pLatency => {
            let (t, n) = (t.clone(), a.latency_iterations);
            on_one_thread(move || async move { rooms::p2p_latency(&t, n, 256).await }).await
        }
        Workload::Handshakes => mailbox::handshakes(t, a.handshakes, a.concurrency).await,
        Workload::Joins => rooms::joins(t, a.join_rooms, a.concurrency).await,
        Workload::Idle => mailbox::idle(t, a.idle_connections).await,
        Workload::Stalled => mailbox::stalled(t, a.stalled_messages, 64 << 10).await,
        Workload::CrossPush => {
            let second = a.second.context("cross-push needs --second (an instance sharing the mailbox)")?;
            let b = Target { label: "second", addr: second, pid: None, api_key: t.api_key.clone() };
            let (t, n) = (t.clone(), a.latency_iterations);
            on_one_thread(move || async move { mailbox::cross_push(&t, &b, n, 256).await }).await
        }
    }
}

/// Runs a latency workload on a runtime of its own with one thread, which polls the
/// sockets and runs the workload: no wake-up crosses threads on the client's side, so
/// the figure is the relay's path and the kernel's, not the load generator's scheduling.
async fn on_one_thread<F, Fut>(workload: F) -> anyhow::Result<Vec<Metric>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Vec<Metric>>>,
{
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(workload())
    })
    .await?
}
