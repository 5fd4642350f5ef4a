//! Database plumbing every Postgres-backed module shares: [`Db`] (a statement on a pooled
//! connection, checkout and all bounded by the timeout), the one error type, bounded waits,
//! decoding a column, and connecting ([`connect`]: the pool, the LISTEN connection settings, TLS).

pub mod connect;

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

/// What went wrong talking to the database; each variant keeps its cause as its `source`.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("cannot create the pool: {0}")]
    Pool(#[source] deadpool_postgres::BuildError),
    #[error("cannot get a database connection: {}", with_causes(.0))]
    Checkout(#[source] deadpool_postgres::PoolError),
    #[error("database error: {}", describe(.0))]
    Query(#[source] tokio_postgres::Error),
    #[error("migration {version} failed: {source}")]
    Migration {
        version: i32,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("migrations {0:?} are not applied and FANOUT_MIGRATE=skip (run `mcp-fanout migrate`)")]
    NotMigrated(Vec<i32>),
    #[error("TLS setup: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the event log's head row is missing (the schema was changed outside mcp-fanout)")]
    MissingHead,
    #[error("cannot read column `{column}` of a row from the database: {}", with_causes(.source))]
    Decode {
        column: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl DbError {
    /// Whether trying again later may succeed: the database unreachable, overloaded, shutting down
    /// or slow — not a statement it refused for what it says, nor a row that does not decode.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Query(q) => !is_sql_error(q),
            DbError::Decode { .. } | DbError::MissingHead => false,
            _ => true,
        }
    }
}

/// Column `idx` of a row the database returned, decoded as `T`, or an error naming the column
/// (a column whose type is not the one this version expects fails here, never panics).
pub fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    idx: usize,
) -> Result<T, DbError> {
    row.try_get(idx).map_err(|source| DbError::Decode {
        column: row
            .columns()
            .get(idx)
            .map_or_else(|| idx.to_string(), |c| c.name().to_owned()),
        source,
    })
}

/// A Postgres error with the server's own words (`tokio_postgres::Error`'s Display says only
/// "db error" for those).
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}: {})", e, db.code().code(), db.message()),
        None => with_causes(e),
    }
}

/// An error and its causes, `: `-separated (a TLS failure says why: unknown issuer, wrong name…).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// A statement the database refused for what it says (not for being unreachable, overloaded or
/// shutting down).
fn is_sql_error(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        let class = &db.code().code()[..2];
        !matches!(class, "08" | "53" | "57" | "58" | "55" | "40")
    })
}

/// Bounds `fut` by `limit`.
pub async fn timed<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(DbError::Timeout(limit)))
}

/// Parameters of a typed, unnamed statement (`query_typed`: PgBouncer's transaction mode works).
pub type Params<'a> = [(&'a (dyn ToSql + Sync), Type)];

/// The pool and the bound on every wait: each call checks a connection out, runs, and gives up
/// after `timeout` (checkout included), with a typed error.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    timeout: Duration,
}

impl Db {
    pub fn new(pool: Pool, timeout: Duration) -> Db {
        Db { pool, timeout }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The bound on one statement (and on checking a connection out).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The same pool with every wait bounded by `limit` instead (several statements, a
    /// transaction).
    pub fn within(&self, limit: Duration) -> Db {
        Db {
            pool: self.pool.clone(),
            timeout: limit,
        }
    }

    /// Runs `f` on a connection of the pool, checkout and all bounded by the timeout. The
    /// connection goes back to the pool when `f` drops it.
    pub async fn with_client<T, F, Fut>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(deadpool_postgres::Client) -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        timed(self.timeout, async {
            let client = self.pool.get().await.map_err(DbError::Checkout)?;
            f(client).await
        })
        .await
    }

    /// The rows of one statement.
    pub async fn query(&self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>, DbError> {
        self.with_client(|client| async move {
            client
                .query_typed(sql, params)
                .await
                .map_err(DbError::Query)
        })
        .await
    }

    /// The first row of one statement, if any.
    pub async fn query_first(
        &self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// Runs one statement for its effect (its rows, if any, are not read).
    pub async fn execute(&self, sql: &str, params: &Params<'_>) -> Result<(), DbError> {
        self.query(sql, params).await.map(drop)
    }
}
