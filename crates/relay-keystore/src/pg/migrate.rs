//! The key store's PostgreSQL schema: versioned migrations embedded in the binary and
//! applied at start, recorded in `relay_keystore_migrations` (discovery keeps its own
//! table, so the two never see each other's versions).
//!
//! All pending migrations run in one transaction that first takes a transaction-level
//! advisory lock ([`LOCK_ID`]): two instances starting at once apply them once, the
//! second waits and then finds nothing to do; a crash mid-way leaves nothing half
//! applied. A database migrated by a newer relay (a version this binary does not know)
//! is refused rather than used.
//!
//! A small runner rather than refinery: refinery takes no lock of its own (the advisory
//! lock would wrap it anyway), and its macros, TOML and file-walking dependencies would
//! add a dozen crates to build for two embedded SQL files.

use tokio_postgres::Client;

/// The advisory lock key held while migrating: "relaykey" in ASCII.
pub(crate) const LOCK_ID: i64 = 0x7265_6c61_796b_6579;

/// The table that records applied versions.
pub(crate) const TABLE: &str = "relay_keystore_migrations";

/// Every migration, in order: (version, name, SQL).
pub(crate) const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "keys_usage_meta", include_str!("../../migrations/0001_keys_usage_meta.sql"))];

/// What migrating found.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MigrateError {
    /// A query failed.
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    /// The database was migrated by a newer relay.
    #[error(
        "the database has key store schema version {found}, newer than this relay's {known}; upgrade the relay"
    )]
    Newer {
        /// The highest version recorded.
        found: i32,
        /// The highest version this binary has.
        known: i32,
    },
}

/// Applies the migrations `client`'s database lacks; returns the versions applied.
pub(crate) async fn migrate(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_ID]).await?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (
             version     INTEGER PRIMARY KEY,
             name        TEXT NOT NULL,
             applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
         )"
    ))
    .await?;
    let row = tx.query_one(&format!("SELECT COALESCE(MAX(version), 0) FROM {TABLE}"), &[]).await?;
    let current: i32 = row.get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(MigrateError::Newer { found: current, known });
    }
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql).await?;
        tx.execute(&format!("INSERT INTO {TABLE} (version, name) VALUES ($1, $2)"), &[&version, &name])
            .await?;
        applied.push(version);
    }
    tx.commit().await?;
    Ok(applied)
}
