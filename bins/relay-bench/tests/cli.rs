//! The command line of `relay-bench`, run as a user runs it. (Being an integration test
//! of this package also makes cargo build the `relay-bench` binary for every
//! `cargo nextest run --workspace`, which the e2e `bench_smoke` test runs against a
//! real relay.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_relay-bench");

#[test]
fn help_lists_every_workload() {
    let out = Command::new(BIN).arg("--help").output().expect("run relay-bench --help");
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).expect("utf-8 help");
    for workload in [
        "push-latency",
        "throughput",
        "throughput-64k",
        "fanout",
        "p2p-latency",
        "handshakes",
        "joins",
        "idle",
        "stalled",
    ] {
        assert!(help.contains(workload), "--help does not describe {workload}");
    }
}

#[test]
fn an_unknown_workload_is_refused_naming_the_valid_ones() {
    let out = Command::new(BIN).args(["--workloads", "nope"]).output().expect("run relay-bench");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope") && err.contains("push-latency"), "{err}");
}
