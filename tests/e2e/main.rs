//! End-to-end tests of Relay: the real `relay-server` binary started on 127.0.0.1 port 0
//! (or the router served in-process), driven over real sockets. One test binary, one
//! module per area, helpers in `support`.
//!
//! The test is declared by the `relay-server` package (`bins/relay-server/Cargo.toml`,
//! `[[test]] e2e`), so cargo builds the binary before the tests and passes its path in
//! `CARGO_BIN_EXE_relay-server`. Run one area with
//! `cargo nextest run -p relay-server -E 'binary(e2e) & test(/^rooms::/)'`.

mod support;

mod authz;
mod bench_smoke;
mod binary;
mod client;
mod config;
mod console;
mod cors;
mod crash;
mod deadlines;
mod discovery;
mod discovery_binary;
mod discovery_tenants;
mod hostile;
mod keys;
mod mailbox;
mod metrics;
mod nginx;
mod openapi;
mod proxy;
mod ratelimit;
mod redis_mailbox;
mod revocation;
mod rooms;
mod scaleout_discovery;
mod scaleout_keys;
mod startup_checks;
mod tenants;
mod timeouts;
mod tls;
mod turn;
