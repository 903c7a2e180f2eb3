//! MySQL/MariaDB connection pool and schema migrations.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection};

/// The embedded migrations of `coupon-core/migrations`, applied in order and recorded in
/// `_sqlx_migrations`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Creates the URL's database when it is missing. The name must be a plain identifier
/// (letters, digits, `_`), since it is spliced into `CREATE DATABASE`.
///
/// # Errors
/// The URL does not parse, names no database or an unsafe one, or the server refuses.
pub async fn create_database_if_missing(url: &str) -> anyhow::Result<()> {
    let options = MySqlConnectOptions::from_str(url).context("parsing DATABASE_URL")?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        bail!("DATABASE_URL names no database");
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("database name `{name}` must be letters, digits and underscores");
    }
    let mut conn = options
        .database("")
        .connect()
        .await
        .context("connecting to MySQL without a database")?;
    sqlx::query(&format!(
        "CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    ))
    .execute(&mut conn)
    .await
    .with_context(|| format!("creating database `{name}`"))?;
    conn.close().await.ok();
    Ok(())
}

/// Opens a pool of at most `max_connections` whose acquisition gives up after 3 s, so a
/// saturated or unreachable database fails requests instead of queueing them forever.
///
/// # Errors
/// The URL does not parse or the first connection fails.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<MySqlPool> {
    let options = MySqlConnectOptions::from_str(url)
        .context("parsing DATABASE_URL")?
        .log_statements(tracing::log::LevelFilter::Trace);
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await
        .context("connecting to MySQL")
}

/// Creates the database when missing, connects, and applies pending migrations: what both
/// services do on start-up and what `coupon-api migrate` does alone.
///
/// Several processes may start at once (coupon-api and coupon-consumer, or many replicas), so
/// the migrations run under a named MySQL lock (`GET_LOCK`) held on the migrating connection;
/// the others wait for it and then find nothing left to apply.
///
/// # Errors
/// Any of the steps fails, or the lock is not granted within 60 s; the error says which.
pub async fn prepare(url: &str, max_connections: u32) -> anyhow::Result<MySqlPool> {
    create_database_if_missing(url).await?;
    let pool = connect(url, max_connections).await?;
    let mut conn = pool
        .acquire()
        .await
        .context("acquiring a connection to migrate")?;
    let granted: Option<i64> =
        sqlx::query_scalar("SELECT GET_LOCK(CONCAT('couponrush_migrate:', DATABASE()), 60)")
            .fetch_one(&mut *conn)
            .await
            .context("taking the migration lock")?;
    if granted != Some(1) {
        bail!("another process held the migration lock for 60 s");
    }
    let migrated = MIGRATOR
        .run(&mut *conn)
        .await
        .context("applying migrations");
    sqlx::query("SELECT RELEASE_LOCK(CONCAT('couponrush_migrate:', DATABASE()))")
        .execute(&mut *conn)
        .await
        .context("releasing the migration lock")?;
    migrated?;
    drop(conn);
    Ok(pool)
}

/// Checks that every migration of this build was applied to the database of `pool`, for a
/// service started without `MIGRATE_ON_START` (its user may lack DDL rights).
///
/// # Errors
/// The migration table cannot be read (never migrated), or migrations are missing or failed:
/// the error names them and says to run `coupon-api migrate`.
pub async fn check_migrated(pool: &MySqlPool) -> anyhow::Result<()> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = 1")
            .fetch_all(pool)
            .await
            .context(
                "reading _sqlx_migrations: the database was never migrated; run `coupon-api \
                 migrate` with a user allowed DDL, or set MIGRATE_ON_START=true",
            )?;
    let missing: Vec<String> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the database lacks {} migration(s) of this build ({}): run `coupon-api migrate` \
             with a user allowed DDL, or set MIGRATE_ON_START=true",
            missing.len(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// A UTC instant as a MySQL `DATETIME` query parameter: `datetime(t)` for a
/// `DateTime<Utc>`, or for an `Option<DateTime<Utc>>` (NULL stays NULL).
///
/// Every time bound into a query goes through this. sqlx sends a `DateTime<Utc>` typed as
/// `TIMESTAMP`, and MariaDB converts a `TIMESTAMP` parameter outside that type's range
/// (1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC, per the MariaDB `TIMESTAMP` docs) to NULL
/// before storing it in a `DATETIME(6)` column, which holds the years 1000 to 9999: a
/// policy starting in 1969 failed as "cannot be null" and a `valid_until` in 2100 was lost.
/// A `NaiveDateTime` is sent typed as `DATETIME`. The session time zone is UTC (sqlx sets
/// `time_zone = '+00:00'`), so the naive value is the UTC wall time and reads back as the
/// same instant.
pub fn datetime<T: DatetimeParam>(t: T) -> T::Param {
    t.into_param()
}

/// What [`datetime`] accepts: a UTC instant, or an optional one.
pub trait DatetimeParam {
    /// The parameter sent: `NaiveDateTime` (UTC wall time), or an `Option` of it.
    type Param;
    /// The UTC wall time of `self`.
    fn into_param(self) -> Self::Param;
}

impl DatetimeParam for chrono::DateTime<chrono::Utc> {
    type Param = chrono::NaiveDateTime;
    fn into_param(self) -> chrono::NaiveDateTime {
        self.naive_utc()
    }
}

impl DatetimeParam for Option<chrono::DateTime<chrono::Utc>> {
    type Param = Option<chrono::NaiveDateTime>;
    fn into_param(self) -> Option<chrono::NaiveDateTime> {
        self.map(|t| t.naive_utc())
    }
}

/// Reads a text column with a binary collation (`order_id`, `utf8mb4_bin`): MySQL flags such
/// a column `BINARY`, and sqlx then refuses to decode it as a `String`
/// (<https://github.com/launchbadge/sqlx/issues/3387>), so it is read as bytes and checked
/// to be UTF-8 here.
///
/// # Errors
/// The column is missing, or its bytes are not UTF-8 ([`sqlx::Error::ColumnDecode`]).
pub fn binary_text(
    row: &sqlx::mysql::MySqlRow,
    column: &str,
) -> Result<Option<String>, sqlx::Error> {
    use sqlx::Row;
    row.try_get::<Option<Vec<u8>>, _>(column)?
        .map(|bytes| {
            String::from_utf8(bytes).map_err(|e| sqlx::Error::ColumnDecode {
                index: column.to_owned(),
                source: Box::new(e),
            })
        })
        .transpose()
}

/// A `coupons.stock_shards` value as the domain's [`ShardCount`].
///
/// # Errors
/// [`sqlx::Error::ColumnDecode`] when the stored count is not 1 to 64 (the table's `CHECK`
/// refuses such a row).
pub fn shard_count(stored: u16) -> Result<crate::domain::ShardCount, sqlx::Error> {
    crate::domain::ShardCount::parse(stored).map_err(|err| sqlx::Error::ColumnDecode {
        index: "stock_shards".to_owned(),
        source: Box::new(err),
    })
}
