//! `relay-server`: parses the command line into a validated config, starts logging,
//! binds the listeners and runs [`relay_transport::serve`] until SIGTERM or SIGINT.

mod cli;
mod discovery;
mod keys;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use relay_keystore::KeyStore;
use relay_transport::{AppState, serve};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    if let Some(Command::Keys(command)) = &cli.command {
        return keys::run_offline(command, &cli.discovery.data_dir);
    }
    let keystore = match keys::open_for_server(&cli.keys, &cli.discovery.data_dir) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("error: {}", e.message);
            return ExitCode::from(e.exit_code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, keystore)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, keystore: Arc<KeyStore>) -> anyhow::Result<()> {
    let config = cli.server_config()?;
    let announcer = cli.discovery.announcer(config.room_id_prefix.map(|p| p.to_string()))?;
    if !config.api_keys_enforced {
        tracing::warn!(
            "API keys are NOT enforced (--insecure-api-keys-not-enforced): anyone can use this relay"
        );
        eprintln!(
            "WARNING: API keys are NOT enforced (--insecure-api-keys-not-enforced): anyone can use this relay"
        );
    }

    let state = AppState::try_with_keystore(config, keystore.clone())?;

    // Before "listening" is printed: a SIGTERM right after start must shut down cleanly
    // (and flush usage), not kill the process.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;

    let mut listeners = Vec::new();
    for addr in &cli.listen {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(listener);
    }
    let addrs: Vec<String> =
        listeners.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.to_string()).collect();
    eprintln!("relay-server listening on {}", addrs.join(", "));
    tracing::info!(listen = %addrs.join(" "), "listening");

    tokio::spawn(state.discovery().sweeper());
    if let Some(announcer) = announcer {
        tokio::spawn(announcer.run());
    }
    let usage_flusher = tokio::spawn(keys::flush_usage_periodically(keystore.clone()));
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        let state = state.clone();
        let stop = state.clone();
        servers.spawn(async move {
            let mut signal = stop.shutdown_watch();
            serve(listener, state, async move {
                let _stopped = signal.wait_for(|s| *s).await.is_ok();
            })
            .await
        });
    }

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
        Some(res) = servers.join_next() => {
            res.context("server task panicked")?.context("server stopped")?;
        }
    }
    state.begin_shutdown();
    while let Some(res) = servers.join_next().await {
        res.context("server task panicked")?.context("server stopped with an error")?;
    }
    usage_flusher.abort();
    keys::flush_usage(&keystore).await;
    tracing::info!("stopped");
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
