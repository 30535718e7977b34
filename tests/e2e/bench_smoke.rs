//! A smoke run of `relay-bench` against the real binary: every workload, tiny counts.
//! It asserts that each workload runs to completion and prints its table, never a
//! timing: the figures themselves live in docs/BENCHMARKS.md.

use std::time::Duration;

use crate::support::{RelayProcess, bench_binary_path};

#[tokio::test]
async fn every_workload_runs_with_tiny_counts() {
    let relay = RelayProcess::start(&["--insecure-api-keys-not-enforced"]).await.expect("start relay");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(bench_binary_path())
            .args(["--smoke", "--target", &relay.addr.to_string(), "--pid", &relay.pid().to_string()])
            .args([
                "--workloads",
                "push-latency,throughput,throughput-64k,scaling,fanout,p2p-latency,handshakes,joins,idle,stalled",
            ])
            .output(),
    )
    .await
    .expect("relay-bench finished in time")
    .expect("run relay-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "relay-bench failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for table in [
        "== PushLatency",
        "== Throughput ",
        "== Throughput64k",
        "== Scaling",
        "one / separate namespaces",
        "CPU per message (us)",
        "== Fanout",
        "== P2pLatency",
        "== Handshakes",
        "== Joins",
        "== Idle",
        "== Stalled",
        "room p2p p50 / mailbox push p50",
    ] {
        assert!(stdout.contains(table), "no {table:?} in:\n{stdout}");
    }
    // The relay served the whole run and is still up.
    let health =
        crate::support::http_request(relay.addr, "GET", "/healthz", &[], b"").await.expect("healthz");
    assert_eq!(health.status, 200);
}
