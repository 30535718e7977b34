//! The PostgreSQL backend: keys, usage totals and the admin token in one database that
//! every instance of a deployment shares (`--database-url`).
//!
//! - Writes go through a small connection pool (deadpool-postgres) and commit before
//!   they return. Each key change also sends `NOTIFY relay_keys, 'k:<name>'` (admin
//!   token: `'admin'`) in the same transaction, so it is announced only once committed.
//! - One extra connection per instance LISTENs ([`listen`]): every instance applies
//!   every other's changes to its in-memory keys within milliseconds, and after a lost
//!   connection it LISTENs again and reloads everything (it may have missed some).
//! - Usage is added, never overwritten: `messages = messages + $delta` per key, so
//!   instances' counts sum; each write reads every key's totals back.
//!
//! Tables (see `migrations/`): `relay_keys`, `relay_key_usage`, `relay_keystore_meta`,
//! and `relay_keystore_migrations` for the schema version ([`migrate`]).

pub(crate) mod listen;
pub(crate) mod migrate;

use std::str::FromStr as _;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{Config, NoTls, Row};

use crate::error::KeystoreError;
use crate::record::{KeyOrigin, KeyRecord, Usage};
use crate::secret::KeyDigest;
use crate::storage::{Loaded, StoredKey, UsageWrite};

/// The NOTIFY channel of key changes.
pub(crate) const CHANNEL: &str = "relay_keys";
/// The meta row holding the admin token's SHA-256.
const ADMIN_DIGEST_KEY: &str = "admin_token_sha256";
/// How long a new connection may take before it counts as unreachable.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write waits for a pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// Longest a write (pool wait, connect and queries included) may take.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pooled connections per instance: writes are rare (admin calls, a usage batch every
/// few seconds), verification never queries.
const POOL_SIZE: usize = 4;

/// Told of every change in PostgreSQL's reachability: `(up, detail)`. The relay server
/// forwards it to its dependency health (`/readyz`, `relay_dependency_up`).
pub type HealthObserver = Box<dyn Fn(bool, &str) + Send + Sync>;

/// Where health reports go; empty until the server sets an observer.
#[derive(Default)]
pub(crate) struct Health {
    observer: RwLock<Option<HealthObserver>>,
}

impl Health {
    pub(crate) fn set(&self, observer: HealthObserver) {
        *self.observer.write().unwrap_or_else(PoisonError::into_inner) = Some(observer);
    }

    pub(crate) fn report(&self, up: bool, detail: &str) {
        if let Some(observer) = self.observer.read().unwrap_or_else(PoisonError::into_inner).as_ref() {
            observer(up, detail);
        }
    }
}

/// The PostgreSQL side of a key store.
pub(crate) struct PgStore {
    pool: Pool,
    /// `host:port` (never credentials), for messages.
    location: String,
    /// This store's tag in its notifications (`Target::instance`).
    instance: String,
    pub(crate) health: Arc<Health>,
}

/// A parsed `--database-url`: the driver's config and where it points.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) config: Config,
    pub(crate) location: String,
    /// A random tag naming this store in the key notifications it sends
    /// (`k:<instance>:<name>`), so its own listener can tell its writes (already applied
    /// by the writer) from other instances' and tell the revocation observer only of
    /// the latter, whichever arrives first.
    pub(crate) instance: String,
}

impl Target {
    /// Parses a `postgres://` URL (or key=value string). The error never repeats the
    /// URL, which may hold a password.
    pub(crate) fn parse(url: &str) -> Result<Target, KeystoreError> {
        let mut config = Config::from_str(url).map_err(|e| KeystoreError::DatabaseUrl(e.to_string()))?;
        if config.get_hosts().is_empty() {
            return Err(KeystoreError::DatabaseUrl("no host given".to_owned()));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("relay-server");
        }
        let location = location_of(&config);
        let mut tag = [0u8; 8];
        getrandom::fill(&mut tag)?;
        let instance = tag.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Target { config, location, instance })
    }

    /// Opens a dedicated (unpooled) connection, driven by a task of its own.
    pub(crate) async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
        ),
        KeystoreError,
    > {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.config.connect(NoTls)).await {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(e)) => Err(self.unreachable(&e)),
            Err(_) => Err(KeystoreError::DatabaseUnreachable {
                location: self.location.clone(),
                reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
            }),
        }
    }

    fn unreachable(&self, e: &tokio_postgres::Error) -> KeystoreError {
        KeystoreError::DatabaseUnreachable { location: self.location.clone(), reason: error_text(e) }
    }
}

/// `host:port[,host:port]` of a config; never the user or password.
fn location_of(config: &Config) -> String {
    let ports = config.get_ports();
    config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or_else(|| ports.first()).copied().unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
                tokio_postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The driver's message with its cause (the bare message is often just "db error").
pub(crate) fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

impl PgStore {
    /// Connects to `url`, applies the migrations, starts LISTENing and reads every key.
    /// Fails with [`KeystoreError::DatabaseUnreachable`] when no connection can be made.
    pub(crate) async fn open(
        url: &str,
    ) -> Result<(PgStore, Loaded, listen::Listener, Target), KeystoreError> {
        let target = Target::parse(url)?;
        let mut listener = listen::Listener::connect(&target).await?;
        let applied = migrate::migrate(listener.client_mut()).await.map_err(|e| {
            let (location, reason) = (target.location.clone(), e.to_string());
            match e {
                migrate::MigrateError::Newer { .. } => KeystoreError::SchemaNewer { location, reason },
                migrate::MigrateError::Db(_) => KeystoreError::Database { location, reason },
            }
        })?;
        if !applied.is_empty() {
            tracing::info!(location = %target.location, versions = ?applied, "key store schema migrated");
        }
        listener.listen().await.map_err(|e| target.unreachable(&e))?;
        let loaded = load_all(listener.client(), &target.location).await?;
        let manager = Manager::from_config(
            target.config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| KeystoreError::Database {
                location: target.location.clone(),
                reason: e.to_string(),
            })?;
        let store = PgStore {
            pool,
            location: target.location.clone(),
            instance: target.instance.clone(),
            health: Arc::new(Health::default()),
        };
        Ok((store, loaded, listener, target))
    }

    /// `host:port` of the database.
    pub(crate) fn location(&self) -> &str {
        &self.location
    }

    /// Stores a new key; `false` when the name is taken.
    async fn insert_new_untimed(&self, name: &str, record: &KeyRecord) -> Result<bool, KeystoreError> {
        let mut client = self.client().await?;
        let result = async {
            let tx = client.transaction().await?;
            let inserted = tx
                .execute(
                    "INSERT INTO relay_keys (name, sha256, tenant, created_at, expires_at, revoked_at, origin)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
                    &[
                        &name,
                        &record.sha256,
                        &record.tenant,
                        &to_i64(record.created_at),
                        &to_i64(record.expires_at),
                        &record.revoked_at.map(to_i64),
                        &origin_text(record.origin),
                    ],
                )
                .await?;
            if inserted == 0 {
                return Ok(false);
            }
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &format!("k:{}:{name}", self.instance)])
                .await?;
            tx.commit().await?;
            Ok(true)
        }
        .await;
        self.checked(result)
    }

    /// Writes preconfigured keys' records (a replaced digest for a known name).
    async fn put_records_untimed(&self, records: &[(String, KeyRecord)]) -> Result<(), KeystoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let result = async {
            let tx = client.transaction().await?;
            for (name, record) in records {
                tx.execute(
                    "INSERT INTO relay_keys (name, sha256, tenant, created_at, expires_at, revoked_at, origin)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (name) DO UPDATE SET sha256 = EXCLUDED.sha256
                     WHERE relay_keys.revoked_at IS NULL AND relay_keys.origin = 'preconfigured'",
                    &[
                        name,
                        &record.sha256,
                        &record.tenant,
                        &to_i64(record.created_at),
                        &to_i64(record.expires_at),
                        &record.revoked_at.map(to_i64),
                        &origin_text(record.origin),
                    ],
                )
                .await?;
                tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &format!("k:{}:{name}", self.instance)])
                    .await?;
            }
            tx.commit().await
        }
        .await;
        self.checked(result)
    }

    /// Marks key `name` revoked at `now` unless it already is; the record after.
    async fn revoke_untimed(&self, name: &str, now: u64) -> Result<Option<KeyRecord>, KeystoreError> {
        let mut client = self.client().await?;
        let result = async {
            let tx = client.transaction().await?;
            let row = tx
                .query_opt(
                    "UPDATE relay_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE name = $1
                     RETURNING name, sha256, tenant, created_at, expires_at, revoked_at, origin",
                    &[&name, &to_i64(now)],
                )
                .await?;
            if row.is_some() {
                tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &format!("k:{}:{name}", self.instance)])
                    .await?;
            }
            tx.commit().await?;
            Ok(row)
        }
        .await;
        match self.checked(result)? {
            Some(row) => Ok(Some(key_from_row(&row, &self.location)?.record)),
            None => Ok(None),
        }
    }

    /// Stores the admin token's digest (unless `only_if_absent` and one is stored);
    /// returns the digest stored after the call.
    async fn set_admin_digest_untimed(
        &self,
        digest: KeyDigest,
        only_if_absent: bool,
    ) -> Result<KeyDigest, KeystoreError> {
        let mut client = self.client().await?;
        let sql = if only_if_absent {
            "INSERT INTO relay_keystore_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING"
        } else {
            "INSERT INTO relay_keystore_meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        };
        let result = async {
            let tx = client.transaction().await?;
            tx.execute(sql, &[&ADMIN_DIGEST_KEY, &&digest.0[..]]).await?;
            let row = tx
                .query_one("SELECT value FROM relay_keystore_meta WHERE key = $1", &[&ADMIN_DIGEST_KEY])
                .await?;
            tx.execute("SELECT pg_notify($1, 'admin')", &[&CHANNEL]).await?;
            tx.commit().await?;
            Ok(row.get::<_, Vec<u8>>(0))
        }
        .await;
        let stored = self.checked(result)?;
        admin_digest_from(&stored, &self.location)
    }

    /// Adds every delta to the shared totals, then reads all totals back.
    async fn write_usage_untimed(
        &self,
        writes: &[UsageWrite],
    ) -> Result<Vec<(String, Usage)>, KeystoreError> {
        let mut client = self.client().await?;
        let result = async {
            let tx = client.transaction().await?;
            for w in writes {
                // numeric, then capped: a total at the top of BIGINT stays there.
                tx.execute(
                    "INSERT INTO relay_key_usage (name, messages, bytes, rooms) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (name) DO UPDATE SET
                       messages = LEAST(relay_key_usage.messages::numeric + EXCLUDED.messages, 9223372036854775807)::bigint,
                       bytes = LEAST(relay_key_usage.bytes::numeric + EXCLUDED.bytes, 9223372036854775807)::bigint,
                       rooms = LEAST(relay_key_usage.rooms::numeric + EXCLUDED.rooms, 9223372036854775807)::bigint",
                    &[&w.name, &to_i64(w.delta.messages), &to_i64(w.delta.bytes), &to_i64(w.delta.rooms)],
                )
                .await?;
            }
            let rows = tx.query("SELECT name, messages, bytes, rooms FROM relay_key_usage", &[]).await?;
            tx.commit().await?;
            Ok(rows)
        }
        .await;
        let rows = self.checked(result)?;
        Ok(rows.iter().map(|row| (row.get::<_, String>(0), usage_from(row, 1))).collect())
    }

    /// Stores a new key; `false` when the name is taken. Bounded by [`QUERY_TIMEOUT`].
    pub(crate) async fn insert_new(&self, name: &str, record: &KeyRecord) -> Result<bool, KeystoreError> {
        self.timed(self.insert_new_untimed(name, record)).await
    }

    /// Writes preconfigured keys' records (a replaced digest for a known name). Bounded by [`QUERY_TIMEOUT`].
    pub(crate) async fn put_records(&self, records: &[(String, KeyRecord)]) -> Result<(), KeystoreError> {
        self.timed(self.put_records_untimed(records)).await
    }

    /// Marks key `name` revoked at `now` unless it already is; the record after. Bounded by [`QUERY_TIMEOUT`].
    pub(crate) async fn revoke(&self, name: &str, now: u64) -> Result<Option<KeyRecord>, KeystoreError> {
        self.timed(self.revoke_untimed(name, now)).await
    }

    /// Stores the admin token's digest (unless `only_if_absent` and one is stored);
    /// returns the digest stored after the call. Bounded by [`QUERY_TIMEOUT`].
    pub(crate) async fn set_admin_digest(
        &self,
        digest: KeyDigest,
        only_if_absent: bool,
    ) -> Result<KeyDigest, KeystoreError> {
        self.timed(self.set_admin_digest_untimed(digest, only_if_absent)).await
    }

    /// Adds every delta to the shared totals, then reads all totals back. Bounded by [`QUERY_TIMEOUT`].
    pub(crate) async fn write_usage(
        &self,
        writes: &[UsageWrite],
    ) -> Result<Vec<(String, Usage)>, KeystoreError> {
        self.timed(self.write_usage_untimed(writes)).await
    }

    /// Fails `op` with [`KeystoreError::Database`] (and reports PostgreSQL down) when it
    /// takes longer than [`QUERY_TIMEOUT`]: a connection that stalls without closing
    /// must not hold the key store's write lock for ever.
    async fn timed<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, KeystoreError>>,
    ) -> Result<T, KeystoreError> {
        match tokio::time::timeout(QUERY_TIMEOUT, op).await {
            Ok(result) => result,
            Err(_) => {
                let reason = format!("no answer within {QUERY_TIMEOUT:?}");
                self.health.report(false, &reason);
                Err(KeystoreError::Database { location: self.location.clone(), reason })
            }
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, KeystoreError> {
        self.pool.get().await.map_err(|e| {
            let reason = match &e {
                deadpool_postgres::PoolError::Backend(e) => error_text(e),
                other => other.to_string(),
            };
            self.health.report(false, &reason);
            KeystoreError::Database { location: self.location.clone(), reason }
        })
    }

    /// Maps a query's failure, reporting a lost connection to the health observer.
    fn checked<T>(&self, result: Result<T, tokio_postgres::Error>) -> Result<T, KeystoreError> {
        result.map_err(|e| {
            let reason = error_text(&e);
            if is_connection_error(&e) {
                self.health.report(false, &reason);
            }
            KeystoreError::Database { location: self.location.clone(), reason }
        })
    }
}

/// Whether a failure means the connection (not the statement) is at fault.
pub(crate) fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        // 08: connection exception; 57P0x: the server is shutting down or restarting.
        Some(code) => code.code().starts_with("08") || code.code().starts_with("57P"),
    }
}

/// Reads every key (with its usage) and the admin digest.
pub(crate) async fn load_all(
    client: &tokio_postgres::Client,
    location: &str,
) -> Result<Loaded, KeystoreError> {
    let db = |e: tokio_postgres::Error| KeystoreError::Database {
        location: location.to_owned(),
        reason: error_text(&e),
    };
    let rows = client
        .query(
            "SELECT k.name, k.sha256, k.tenant, k.created_at, k.expires_at, k.revoked_at, k.origin,
                    COALESCE(u.messages, 0), COALESCE(u.bytes, 0), COALESCE(u.rooms, 0)
             FROM relay_keys k LEFT JOIN relay_key_usage u ON u.name = k.name",
            &[],
        )
        .await
        .map_err(db)?;
    let mut keys = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut key = key_from_row(row, location)?;
        key.usage = usage_from(row, 7);
        keys.push(key);
    }
    let admin = client
        .query_opt("SELECT value FROM relay_keystore_meta WHERE key = $1", &[&ADMIN_DIGEST_KEY])
        .await
        .map_err(db)?
        .map(|row| admin_digest_from(&row.get::<_, Vec<u8>>(0), location))
        .transpose()?;
    Ok(Loaded { keys, admin })
}

/// Reads one key (without usage); `None` if it is not there.
pub(crate) async fn load_one(
    client: &tokio_postgres::Client,
    name: &str,
    location: &str,
) -> Result<Option<StoredKey>, KeystoreError> {
    let row = client
        .query_opt(
            "SELECT name, sha256, tenant, created_at, expires_at, revoked_at, origin FROM relay_keys WHERE name = $1",
            &[&name],
        )
        .await
        .map_err(|e| KeystoreError::Database { location: location.to_owned(), reason: error_text(&e) })?;
    row.map(|row| key_from_row(&row, location)).transpose()
}

/// Reads the admin digest; `None` if none is stored.
pub(crate) async fn load_admin(
    client: &tokio_postgres::Client,
    location: &str,
) -> Result<Option<KeyDigest>, KeystoreError> {
    client
        .query_opt("SELECT value FROM relay_keystore_meta WHERE key = $1", &[&ADMIN_DIGEST_KEY])
        .await
        .map_err(|e| KeystoreError::Database { location: location.to_owned(), reason: error_text(&e) })?
        .map(|row| admin_digest_from(&row.get::<_, Vec<u8>>(0), location))
        .transpose()
}

/// A key from the first seven columns (name, sha256, tenant, created_at, expires_at,
/// revoked_at, origin); usage zero.
fn key_from_row(row: &Row, location: &str) -> Result<StoredKey, KeystoreError> {
    let name: String = row.get(0);
    let corrupt = |reason: &str| KeystoreError::Corrupt {
        record: format!("relay_keys/{name} at {location}"),
        reason: reason.to_owned(),
    };
    let origin = match row.get::<_, &str>(6) {
        "created" => KeyOrigin::Created,
        "preconfigured" => KeyOrigin::Preconfigured,
        _ => return Err(corrupt("origin is neither created nor preconfigured")),
    };
    let record = KeyRecord {
        sha256: row.get(1),
        tenant: row.get(2),
        created_at: from_i64(row.get(3)),
        expires_at: from_i64(row.get(4)),
        revoked_at: row.get::<_, Option<i64>>(5).map(from_i64),
        origin,
    };
    let digest = record.digest().ok_or_else(|| corrupt("sha256 is not 64 hex digits"))?;
    Ok(StoredKey { name, digest, record, usage: Usage::default() })
}

fn usage_from(row: &Row, first: usize) -> Usage {
    Usage {
        messages: from_i64(row.get(first)),
        bytes: from_i64(row.get(first + 1)),
        rooms: from_i64(row.get(first + 2)),
    }
}

fn admin_digest_from(bytes: &[u8], location: &str) -> Result<KeyDigest, KeystoreError> {
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeystoreError::Corrupt {
        record: format!("relay_keystore_meta/{ADMIN_DIGEST_KEY} at {location}"),
        reason: format!("{} bytes, expected 32", bytes.len()),
    })?;
    Ok(KeyDigest(bytes))
}

fn origin_text(origin: KeyOrigin) -> &'static str {
    match origin {
        KeyOrigin::Created => "created",
        KeyOrigin::Preconfigured => "preconfigured",
    }
}

/// Unix seconds and counters as BIGINT: capped at its top (never reached in practice).
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_i64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_location_names_host_and_port_never_the_password() {
        let target = Target::parse("postgres://relay:s3cret@db.example:6543/relay").expect("parse");
        assert_eq!(target.location, "db.example:6543");
        let target = Target::parse("postgres://relay@10.0.0.1/relay").expect("parse");
        assert_eq!(target.location, "10.0.0.1:5432");
        let err = Target::parse("postgres://relay:s3cret@db.example:notaport/relay").err().expect("bad port");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
