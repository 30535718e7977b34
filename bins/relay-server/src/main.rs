//! `relay-server`: parses the command line, environment and config file into a
//! validated config, starts logging, loads the TLS certificate, binds the listeners and
//! runs [`relay_transport::serve`] until SIGTERM or SIGINT. SIGHUP reloads the TLS
//! certificate and key.

mod announce;
mod cli;
mod config_file;
mod discovery;
mod keys;
mod notify;
mod redis_args;
mod turn;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use relay_keystore::KeyStore;
use relay_transport::{AppState, Discovery, TlsHandle, serve};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, LogFormat};
use crate::config_file::{ConfigError, Settings};

/// The process's allocator: jemalloc rather than the system's. Frame buffers of up to
/// 64 KiB are allocated and freed at a high rate; glibc's malloc hands freed pages back
/// to the kernel (heap trimming) and faults them in again for the next frames, while
/// jemalloc keeps them for reuse (its dirty pages decay over seconds). Measured A/B: a
/// fifth less relay CPU per message at 64 KiB and at 256 B, and less memory per idle
/// connection (docs/BENCHMARKS.md). Not on MSVC targets, which jemalloc does not support.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status for a configuration the server refuses to start with (as clap uses for
/// bad flags): bad file or environment value, missing or mismatched certificate.
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let settings = match Settings::parse(std::env::args_os().collect()) {
        Ok(settings) => settings,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(ConfigError::Invalid(message)) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if settings.cli.ops.print_config {
        print!("{}", settings.to_toml());
        return ExitCode::SUCCESS;
    }
    let cli = settings.cli;
    init_tracing(cli.log_format);
    if let Some(Command::Keys(command)) = &cli.command {
        return keys::run_offline(command, cli.keys.database_url.as_deref(), &cli.discovery.data_dir);
    }
    // Every connection is a file descriptor: raise the soft limit to the hard one (the
    // operator sets the hard one, e.g. LimitNOFILE in the systemd unit).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    // Every discovery duration and limit in range, before anything is opened.
    let discovery_config = match cli.discovery.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let tls = match (&cli.ops.chain_path, &cli.ops.key_path) {
        (Some(chain), Some(key)) => match TlsHandle::load(chain, key) {
            Ok(tls) => Some(tls),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        },
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // After the certificate check, so a bad path exits 2 without touching the data dir.
    let keystore = match runtime.block_on(keys::open_for_server(&cli.keys, &cli.discovery.data_dir)) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("error: {}", e.message);
            return ExitCode::from(e.exit_code);
        }
    };
    // Discovery on PostgreSQL when --database-url is set: unreachable, exit 2 naming it.
    let discovery = match cli.keys.database_url.as_deref() {
        Some(url) => match runtime.block_on(Discovery::open_postgres(&discovery_config, url)) {
            Ok(discovery) => {
                let location = discovery.shared_location().unwrap_or_default().to_owned();
                tracing::info!(location, "discovery groups and the relay registry are in PostgreSQL");
                Some(discovery)
            }
            Err(e) => {
                eprintln!("error: --database-url: {e}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        },
        None => None,
    };
    match runtime.block_on(run(cli, keystore, tls, discovery)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Unreachable>().is_some() => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// An external engine (Redis) unreachable at start: exit 2, as for a bad configuration.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unreachable(String);

async fn run(
    cli: Cli,
    keystore: Arc<KeyStore>,
    tls: Option<TlsHandle>,
    discovery: Option<Discovery>,
) -> anyhow::Result<()> {
    let mut config = cli.server_config()?;
    config.tls = tls.clone();
    let announcer = cli.discovery.announcer(config.room_id_prefix.map(|p| p.to_string()))?;
    if !config.api_keys_enforced {
        tracing::warn!(
            "API keys are NOT enforced (--insecure-api-keys-not-enforced): anyone can use this relay"
        );
        eprintln!(
            "WARNING: API keys are NOT enforced (--insecure-api-keys-not-enforced): anyone can use this relay"
        );
    }

    let state = match discovery {
        Some(discovery) => AppState::with_discovery(config, Some(keystore.clone()), discovery)?,
        None => AppState::with_keystore(config, keystore.clone())?,
    };
    if let Some(location) = keystore.database_location() {
        // /readyz answers 503 and relay_dependency_up{dependency="postgres"} is 0 while
        // the key store's PostgreSQL is unreachable.
        let health = state.dependencies().register("postgres", location.to_owned());
        keystore.set_health_observer(Box::new(move |up, detail| health.set_up(up, &detail)));
    }
    // Before listening: an instance that cannot share the mailbox must not serve it.
    cli.redis.connect(&state).await.map_err(Unreachable)?;

    // Before "listening" is printed: a SIGTERM right after start must shut down cleanly
    // (and flush usage), not kill the process.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;

    let mut listeners = Vec::new();
    for addr in &cli.listen {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(listener);
    }
    // STUN/TURN, when --turn-listen is set: bound before "listening" is printed.
    let turn = relay_transport::TurnServer::start(&state).await?;
    if let Some(turn) = &turn {
        eprintln!("relay-server STUN/TURN on {} (udp, tcp)", turn.local_addr());
    }
    let addrs: Vec<String> =
        listeners.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.to_string()).collect();
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("relay-server listening on {} ({scheme})", addrs.join(", "));
    tracing::info!(listen = %addrs.join(" "), scheme, "listening");

    tokio::spawn(state.discovery().sweeper());
    tokio::spawn(state.discovery_storage_monitor());
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

    notify::notify(notify::READY);

    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => reload_tls(tls.as_ref()),
            Some(res) = servers.join_next() => {
                res.context("server task panicked")?.context("server stopped")?;
            }
        }
    }
    notify::notify(notify::STOPPING);
    state.begin_shutdown();
    if let Some(turn) = turn {
        turn.close().await;
    }
    while let Some(res) = servers.join_next().await {
        res.context("server task panicked")?.context("server stopped with an error")?;
    }
    usage_flusher.abort();
    keys::flush_usage(&keystore).await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: reads the certificate chain and key again. New connections get the new pair,
/// open ones keep theirs; a broken pair is refused and the old one stays.
fn reload_tls(tls: Option<&TlsHandle>) {
    let Some(tls) = tls else {
        tracing::info!("SIGHUP: no TLS configured, nothing to reload");
        return;
    };
    match tls.reload() {
        Ok(()) => tracing::info!(chain = %tls.chain_path().display(), "SIGHUP: TLS certificate reloaded"),
        Err(e) => {
            tracing::error!("SIGHUP: TLS certificate NOT reloaded, still serving the previous one: {e}")
        }
    }
}

/// The log filter without `RUST_LOG`. webrtc-rs's TURN server logs every refused or
/// malformed datagram as an error, so anyone could flood the log with UDP packets: its
/// lines are off unless `RUST_LOG` asks for them (`RUST_LOG=info,turn=debug`); Relay's
/// own TURN lines (`relay_transport::turn`) and counters stay.
const DEFAULT_LOG_FILTER: &str = "info,turn=off";

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
