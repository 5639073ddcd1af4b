//! The app's database: SQLite (the embedded default) or MySQL / MariaDB, through sqlx's `Any`
//! driver so that one set of queries serves both; the few spots where their SQL differs go
//! through [`Dialect`].
//!
//! Architecture invariant: only this module writes SQL. Money stays exact: prices, quantities
//! and values are integer ten-thousandths in the database ([`crate::money`]), and sums run on
//! integers in SQL.

use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::{AssertSqlSafe, Row};

pub mod market;
pub mod portfolio;

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database could not be reached or opened.
    #[error("cannot connect to the database at {url}")]
    Connect {
        /// The URL, password masked.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("cannot migrate the database")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A statement failed.
    #[error("database query failed: {what}")]
    Query {
        /// What it was for.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A stored number does not fit (a sum over `i64`, say).
    #[error("value out of range: {0}")]
    Range(String),
}

/// Database result.
pub type DbResult<T> = std::result::Result<T, DbError>;

/// Tag a driver error with what the statement was for.
pub(crate) fn query_failed(what: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |source| DbError::Query { what, source }
}

/// Which SQL the database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3.
    Sqlite,
    /// MySQL 8 or MariaDB 10.5+.
    MySql,
}

impl Dialect {
    /// `INSERT` that skips rows whose key exists.
    pub(crate) fn insert_ignore(self) -> &'static str {
        match self {
            Dialect::Sqlite => "INSERT OR IGNORE",
            Dialect::MySql => "INSERT IGNORE",
        }
    }

    /// The tail of an `INSERT` that updates `columns` from the new row when the key of
    /// `conflict` exists.
    pub(crate) fn upsert(self, conflict: &str, columns: &[&str]) -> String {
        match self {
            Dialect::Sqlite => {
                let sets: Vec<String> = columns
                    .iter()
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect();
                format!("ON CONFLICT ({conflict}) DO UPDATE SET {}", sets.join(", "))
            }
            Dialect::MySql => {
                let sets: Vec<String> = columns
                    .iter()
                    .map(|c| format!("{c} = VALUES({c})"))
                    .collect();
                format!("ON DUPLICATE KEY UPDATE {}", sets.join(", "))
            }
        }
    }

    /// The exact sum of an integer expression over the group, as decimal text: MySQL sums in
    /// `DECIMAL` (which the `Any` driver cannot read, and which `CAST .. AS SIGNED` would clamp
    /// without an error), SQLite in 64 bits (failing on overflow). Each term is widened first
    /// so that one large product cannot overflow on MySQL either.
    pub(crate) fn exact_sum(self, expression: &str) -> String {
        match self {
            Dialect::Sqlite => format!("CAST(COALESCE(SUM({expression}), 0) AS TEXT)"),
            Dialect::MySql => {
                format!("CAST(COALESCE(SUM(CAST({expression} AS DECIMAL(38, 0))), 0) AS CHAR)")
            }
        }
    }

    /// A count readable as `i64`: MySQL's `SUM` gives `DECIMAL`, which the `Any` driver cannot
    /// read.
    pub(crate) fn int(self, expression: &str) -> String {
        match self {
            Dialect::Sqlite => expression.to_owned(),
            Dialect::MySql => format!("CAST({expression} AS SIGNED)"),
        }
    }
}

/// A pool of connections to the app's database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    dialect: Dialect,
}

impl Db {
    /// Connect to `url` (`sqlite://...` or `mysql://...`); a SQLite file's folder is created.
    pub async fn connect(url: &str) -> DbResult<Db> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("mysql:") {
            Dialect::MySql
        } else {
            Dialect::Sqlite
        };
        let redacted = crate::redact::url(url);
        if dialect == Dialect::Sqlite
            && let Some(folder) = sqlite_folder(url)
        {
            std::fs::create_dir_all(&folder).map_err(|err| DbError::Connect {
                url: redacted.clone(),
                source: sqlx::Error::Io(err),
            })?;
        }
        let pool = AnyPoolOptions::new()
            // SQLite takes one writer at a time; a few connections let reads go on beside it.
            .max_connections(match dialect {
                Dialect::Sqlite => 4,
                Dialect::MySql => 10,
            })
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|source| DbError::Connect {
                url: redacted,
                source,
            })?;
        Ok(Db { pool, dialect })
    }

    /// Bring the schema up to date (the migrations are compiled into the binary).
    pub async fn migrate(&self) -> DbResult<()> {
        let migrator = match self.dialect {
            Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Dialect::MySql => sqlx::migrate!("./migrations/mysql"),
        };
        migrator.run(&self.pool).await.map_err(DbError::Migrate)
    }

    /// Which SQL the database speaks.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The connection pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Close every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Open an alert for `key` unless it is open already; true when it was just opened (so the
    /// caller sends the alert once per incident).
    pub async fn open_alert(&self, key: &str, now_ms: i64, detail: &str) -> DbResult<bool> {
        let sql = format!(
            "{} INTO alert_state (alert_key, since_ms, detail) VALUES (?, ?, ?)",
            self.dialect.insert_ignore()
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(key)
            .bind(now_ms)
            .bind(detail)
            .execute(&self.pool)
            .await
            .map_err(query_failed("open an alert"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Close the alert of `key`; the open one's start and detail when there was one.
    pub async fn close_alert(&self, key: &str) -> DbResult<Option<(i64, String)>> {
        let open = sqlx::query("SELECT since_ms, detail FROM alert_state WHERE alert_key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_failed("read an alert"))?;
        let Some(open) = open else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM alert_state WHERE alert_key = ?")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(query_failed("close an alert"))?;
        Ok(Some((
            open.try_get(0).map_err(query_failed("read an alert"))?,
            open.try_get(1).map_err(query_failed("read an alert"))?,
        )))
    }

    /// The keys of the open alerts.
    pub async fn open_alerts(&self) -> DbResult<Vec<String>> {
        let rows = sqlx::query("SELECT alert_key FROM alert_state ORDER BY alert_key")
            .fetch_all(&self.pool)
            .await
            .map_err(query_failed("list alerts"))?;
        rows.iter()
            .map(|row| row.try_get(0).map_err(query_failed("list alerts")))
            .collect()
    }

    /// Store a reading of the health monitor, returning the previous one (value, at_ms).
    pub async fn swap_reading(
        &self,
        name: &str,
        value: i64,
        now_ms: i64,
    ) -> DbResult<Option<(i64, i64)>> {
        let previous = sqlx::query("SELECT value, at_ms FROM monitor_state WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_failed("read a monitor reading"))?
            .map(|row| -> DbResult<(i64, i64)> {
                Ok((
                    get(&row, 0, "read a monitor reading")?,
                    get(&row, 1, "read a monitor reading")?,
                ))
            })
            .transpose()?;
        let sql = format!(
            "INSERT INTO monitor_state (name, value, at_ms) VALUES (?, ?, ?) {}",
            self.dialect.upsert("name", &["value", "at_ms"])
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .bind(value)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(query_failed("store a monitor reading"))?;
        Ok(previous)
    }

    /// Delete the rows of `table` whose `column` (Unix ms) is before `cutoff_ms`; how many.
    pub(crate) async fn delete_before(
        &self,
        table: &'static str,
        column: &'static str,
        cutoff_ms: i64,
    ) -> DbResult<u64> {
        // Both names are compile-time constants of this crate, never input.
        let sql = format!("DELETE FROM {table} WHERE {column} < ?");
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(cutoff_ms)
            .execute(&self.pool)
            .await
            .map_err(query_failed("delete old rows"))?;
        Ok(done.rows_affected())
    }
}

/// The folder of a `sqlite://path/file.db?...` URL, if it names one.
fn sqlite_folder(url: &str) -> Option<std::path::PathBuf> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next()?;
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    let parent = std::path::Path::new(path).parent()?;
    (!parent.as_os_str().is_empty()).then(|| parent.to_path_buf())
}

/// Read column `index` of `row`, tagging errors with `what`.
pub(crate) fn get<'r, T>(
    row: &'r sqlx::any::AnyRow,
    index: usize,
    what: &'static str,
) -> DbResult<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(index).map_err(query_failed(what))
}
