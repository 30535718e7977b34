//! The key store in the binary: opening it at start (under --data-dir, or in
//! PostgreSQL with --database-url; preconfigured keys, the admin token printed once),
//! flushing usage every few seconds and at shutdown, and the offline
//! `relay-server keys ...` commands.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use relay_keystore::{AdminToken, CreateOptions, KeyStore, KeystoreError, PreconfiguredKey, unix_now};
use relay_transport::admin::{created_key_json, key_json};

use crate::cli::{KeyArgs, KeysCommand};

/// The key store's directory under `--data-dir` (discovery has its own beside it).
pub(crate) const KEYS_SUBDIR: &str = "keys";

/// How often counted usage is written while the server runs. With PostgreSQL each
/// write also reads back every instance's totals, so `/v1/admin/usage` and the per-key
/// `/metrics` series lag the deployment by at most about two of these (this instance's
/// and the other's last writes).
pub(crate) const USAGE_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Shortest admin token `--secret-auth` accepts: the token guards every key, and the
/// Sodot routes let anyone try it (a generated one has 43 characters).
pub(crate) const MIN_SECRET_AUTH_CHARS: usize = 32;

/// Why the key store could not be opened at start, and the exit code that says so.
#[derive(Debug)]
pub(crate) struct StartError {
    /// 2 for a bad flag value (as clap exits on usage errors), 1 otherwise.
    pub(crate) exit_code: u8,
    /// What to print; never a key or a token.
    pub(crate) message: String,
}

impl StartError {
    fn from_store(e: &KeystoreError) -> StartError {
        let bad_flag = matches!(
            e,
            KeystoreError::ApiKeyArg { .. }
                | KeystoreError::ApiKeyArgAt { .. }
                | KeystoreError::PreconfiguredNameConflict { .. }
                | KeystoreError::DuplicateKey { .. }
                | KeystoreError::InvalidAdminToken(_)
                | KeystoreError::SchemaNewer { .. }
        );
        match e {
            // Says which engine and where (never the password), and which setting.
            KeystoreError::DatabaseUnreachable { location, reason } => StartError {
                exit_code: 2,
                message: format!("cannot reach PostgreSQL at {location} (--database-url): {reason}"),
            },
            KeystoreError::DatabaseUrl(_) => {
                StartError { exit_code: 2, message: format!("--database-url: {e}") }
            }
            _ => StartError { exit_code: if bad_flag { 2 } else { 1 }, message: e.to_string() },
        }
    }
}

/// Opens the store `--database-url` selects: PostgreSQL when set, else the embedded
/// one under `data_dir`.
async fn open_store(database_url: Option<&str>, data_dir: &Path) -> Result<KeyStore, KeystoreError> {
    match database_url {
        Some(url) => KeyStore::open_postgres(url).await,
        None => KeyStore::open(&data_dir.join(KEYS_SUBDIR)),
    }
}

/// Opens the key store for the server: checks every `--api-key` value (before touching
/// the disk), opens `--data-dir` (or the `--database-url` database), records the
/// preconfigured keys and the admin token.
/// A token generated now is printed once on stdout. Opened also when keys are not
/// enforced, so the admin API and `relay-server keys` keep working in development.
pub(crate) async fn open_for_server(args: &KeyArgs, data_dir: &Path) -> Result<Arc<KeyStore>, StartError> {
    if let Some(token) = &args.secret_auth
        && token.chars().count() < MIN_SECRET_AUTH_CHARS
    {
        // Says how long it is, never what it is.
        return Err(StartError {
            exit_code: 2,
            message: format!(
                "--secret-auth must be at least {MIN_SECRET_AUTH_CHARS} characters (the one given has {}); \
                 leave it out to have a random one generated",
                token.chars().count()
            ),
        });
    }
    let preconfigured =
        PreconfiguredKey::parse_all(&args.api_keys).map_err(|e| StartError::from_store(&e))?;
    let admin_token = args.secret_auth.clone().map(AdminToken::new).transpose();
    let admin_token = admin_token.map_err(|e| StartError::from_store(&e))?;
    let store =
        open_store(args.database_url.as_deref(), data_dir).await.map_err(|e| StartError::from_store(&e))?;
    store.preconfigure(&preconfigured, unix_now()).await.map_err(|e| StartError::from_store(&e))?;
    if let Some(path) = &args.admin_token_file
        && admin_token.is_none()
        && !store.has_admin_token()
        && std::fs::symlink_metadata(path).is_ok()
    {
        // Checked before a token is generated: one is never lost to a refused write.
        return Err(StartError {
            exit_code: 2,
            message: format!(
                "--admin-token-file {}: the file already exists; the relay never overwrites it \
                 (remove it, or choose another path)",
                path.display()
            ),
        });
    }
    if let Some(token) =
        store.ensure_admin_token(admin_token.as_ref()).await.map_err(|e| StartError::from_store(&e))?
    {
        if let Some(path) = &args.admin_token_file {
            return write_admin_token_file(path, &token).map(|()| Arc::new(store));
        }
        let mut out = std::io::stdout().lock();
        let printed = writeln!(out, "admin token (shown once, only its hash is kept): {}", token.as_str())
            .and_then(|()| out.flush());
        if let Err(e) = printed {
            return Err(StartError {
                exit_code: 1,
                message: format!("cannot print the generated admin token: {e}"),
            });
        }
    }
    match store.database_location() {
        Some(location) => tracing::info!(location, keys = store.list().len(), "key store open on PostgreSQL"),
        None => tracing::info!(
            dir = %data_dir.join(KEYS_SUBDIR).display(),
            keys = store.list().len(),
            "key store open"
        ),
    }
    Ok(Arc::new(store))
}

/// Writes a generated admin token to `path` (`--admin-token-file`): a new file, mode
/// 0600 from its creation, the token and a newline. Never overwrites a file.
fn write_admin_token_file(path: &Path, token: &AdminToken) -> Result<(), StartError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let written = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).and_then(
        |mut file| {
            writeln!(file, "{}", token.as_str())?;
            file.sync_all()
        },
    );
    match written {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated admin token written (mode 0600)");
            Ok(())
        }
        Err(e) => Err(StartError {
            exit_code: 1,
            message: format!(
                "cannot write the generated admin token to --admin-token-file {}: {e}; \
                 its hash is stored, so set a new one with --secret-auth",
                path.display()
            ),
        }),
    }
}

/// Writes counted usage every [`USAGE_FLUSH_INTERVAL`] until the task is aborted. Failures are logged and the counters stay pending for the next round.
pub(crate) async fn flush_usage_periodically(store: Arc<KeyStore>) {
    let mut tick = tokio::time::interval(USAGE_FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        flush_usage(&store).await;
    }
}

/// Writes counted usage now (sled flushes on a blocking thread), logging a failure.
pub(crate) async fn flush_usage(store: &Arc<KeyStore>) {
    match store.flush_usage().await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(keys = n, "usage written"),
        Err(e) => tracing::warn!("usage not written, will retry: {e}"),
    }
}

/// Runs `relay-server keys ...` against `data_dir` (or the `--database-url` database)
/// and prints the result as JSON.
pub(crate) fn run_offline(command: &KeysCommand, database_url: Option<&str>, data_dir: &Path) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
        .and_then(|rt| rt.block_on(offline(command, database_url, data_dir)).map_err(|e| e.to_string()));
    match result {
        Ok(value) => {
            // A closed stdout (`| head`) is not worth a panic: report it and fail.
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{value:#}").and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write the result: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn offline(
    command: &KeysCommand,
    database_url: Option<&str>,
    data_dir: &Path,
) -> Result<serde_json::Value, KeystoreError> {
    let store = open_store(database_url, data_dir).await?;
    let now = unix_now();
    Ok(match command {
        KeysCommand::Create { name, expires_at, tenant } => {
            let options = CreateOptions { tenant: tenant.clone(), expires_at: *expires_at };
            let (key, info) = store.create(name, options, now).await?;
            created_key_json(&key, &info)
        }
        KeysCommand::List => {
            let keys: Vec<_> = store.list().iter().map(|k| key_json(k, now)).collect();
            serde_json::json!({ "keys": keys })
        }
        KeysCommand::Revoke { name } => key_json(&store.revoke(name, now).await?, now),
    })
}
