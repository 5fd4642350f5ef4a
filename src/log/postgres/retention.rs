//! Retention: prunes the log by age and count, oldest first, in batches, one replica at a time
//! (a transaction-scoped advisory try-lock; PgBouncer-safe), and advances the pruned watermark.
//! Each pass also forgets sessions idle longer than the log's age, and past
//! `FANOUT_MAX_SESSIONS` rows the least recently used beyond it (any client can present new
//! session ids: without a bound a flood of them grows the table for the whole retention).

use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

use crate::db::{column, Db, DbError};

/// Rows deleted per transaction.
const BATCH: i64 = 10_000;

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_events: u64,
    pub every: Duration,
    /// Most session rows kept across the deployment (trimmed each pass).
    pub max_sessions: u64,
    /// Rows a stream marked this recently are never trimmed (they hold an open stream).
    pub session_lease: Duration,
}

/// Retention's statements, schema-qualified once.
pub struct RetentionSql {
    forget_sessions: String,
    sessions_lock: String,
    trim_sessions: String,
    bound: String,
    lock: String,
    cut: String,
    delete_events: String,
    set_pruned: String,
    delete_keys: String,
}

impl RetentionSql {
    /// `timeout` bounds each statement of a batch.
    pub fn new(s: &str, timeout: Duration) -> RetentionSql {
        RetentionSql {
            forget_sessions: format!(
                "DELETE FROM {s}.sessions WHERE session IN (SELECT session FROM {s}.sessions \
                 WHERE last_seen < clock_timestamp() - make_interval(secs => $1) LIMIT 10000)"
            ),
            sessions_lock: format!(
                "SELECT pg_try_advisory_xact_lock(hashtext('mcp-fanout sessions {s}'))"
            ),
            // The rows past the bound in fair-share order — each owner's most recently used
            // first, then each owner's second, and so on — but not those an open stream holds
            // (marked within the lease): a principal flooding new session ids pushes out its
            // own, not another's session, which whoever presented it next would bind. Only when
            // the table is past the bound (the index on last_seen says) is it ranked.
            trim_sessions: format!(
                "WITH d AS (DELETE FROM {s}.sessions WHERE session IN (SELECT p.session FROM \
                 (SELECT session, streamed_at FROM {s}.sessions \
                 WHERE EXISTS (SELECT 1 FROM {s}.sessions ORDER BY last_seen DESC OFFSET $1 LIMIT 1) \
                 ORDER BY row_number() OVER (PARTITION BY coalesce(owner, principal) \
                 ORDER BY last_seen DESC), last_seen DESC \
                 OFFSET $1 LIMIT $2) p WHERE p.streamed_at IS NULL \
                 OR p.streamed_at < clock_timestamp() - make_interval(secs => $3)) RETURNING 1) \
                 SELECT count(*) FROM d"
            ),
            bound: format!("SET LOCAL statement_timeout = {}", timeout.as_millis()),
            lock: format!("SELECT pg_try_advisory_xact_lock(hashtext('mcp-fanout retention {s}'))"),
            cut: format!(
                "SELECT max(p.seq) FROM (SELECT seq, committed_at FROM {s}.events ORDER BY seq LIMIT $1) p \
                 WHERE p.seq <= (SELECT seq FROM {s}.head) - $2 \
                    OR p.committed_at < clock_timestamp() - make_interval(secs => $3)"
            ),
            delete_events: format!("DELETE FROM {s}.events WHERE seq <= $1"),
            set_pruned: format!("UPDATE {s}.meta SET pruned = greatest(pruned, $1)"),
            delete_keys: format!("DELETE FROM {s}.idempotency WHERE max_seq <= $1"),
        }
    }
}

pub async fn run(db: Db, schema: String, policy: Retention, stop: CancellationToken) {
    let sql = RetentionSql::new(&schema, db.timeout());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(policy.every) => {}
        }
        // Forget sessions idle longer than the retention (a reconnect binds them again).
        let age = policy.max_age.as_secs_f64();
        let gc = db
            .execute(&sql.forget_sessions, &[(&age, Type::FLOAT8)])
            .await;
        if let Err(error) = gc {
            tracing::warn!(%error, "session cleanup failed");
        }
        trim_sessions(&db, &sql, policy.max_sessions, policy.session_lease).await;
        // Prune in batches until nothing is left to prune (or another replica holds the lock).
        loop {
            match prune_batch(&db, &sql, policy).await {
                Ok(Some(watermark)) => tracing::debug!(watermark, "log pruned"),
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "retention failed");
                    break;
                }
            }
        }
    }
}

/// Forgets the least recently used sessions past `max` that no open stream holds (none marked
/// within `lease`), a batch per transaction, one replica at a time; says how many at `warn` (the
/// memory store says the same when it reaches its bound).
async fn trim_sessions(db: &Db, sql: &RetentionSql, max: u64, lease: Duration) {
    let max_i = i64::try_from(max).unwrap_or(i64::MAX);
    let lease_secs = lease.as_secs_f64();
    let mut forgotten = 0i64;
    loop {
        let batch = db
            .within(db.timeout().saturating_mul(2))
            .with_client(|client| trim_sessions_on(client, sql, max_i, lease_secs))
            .await;
        match batch {
            Ok(n) => {
                forgotten += n;
                if n < BATCH {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "session trim failed");
                break;
            }
        }
    }
    if forgotten > 0 {
        tracing::warn!(
            max_sessions = max,
            forgotten,
            "session table full: the least recently used sessions are forgotten"
        );
    }
}

/// Bounds each statement of `tx` by the timeout and takes the transaction-scoped try-lock `lock`:
/// whether this replica holds it (another replica is at the same work otherwise).
async fn bound_and_locked(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &RetentionSql,
    lock: &str,
) -> Result<bool, DbError> {
    tx.batch_execute(&sql.bound).await.map_err(DbError::Query)?;
    Ok(tx
        .query_typed(lock, &[])
        .await
        .map_err(DbError::Query)?
        .first()
        .map(|r| column(r, 0))
        .transpose()?
        .unwrap_or(false))
}

async fn trim_sessions_on(
    mut client: deadpool_postgres::Client,
    sql: &RetentionSql,
    max: i64,
    lease_secs: f64,
) -> Result<i64, DbError> {
    let tx = client.transaction().await.map_err(DbError::Query)?;
    if !bound_and_locked(&tx, sql, &sql.sessions_lock).await? {
        return Ok(0);
    }
    let n: i64 = tx
        .query_typed(
            &sql.trim_sessions,
            &[
                (&max, Type::INT8),
                (&BATCH, Type::INT8),
                (&lease_secs, Type::FLOAT8),
            ],
        )
        .await
        .map_err(DbError::Query)?
        .first()
        .map(|r| column(r, 0))
        .transpose()?
        .unwrap_or(0);
    tx.commit().await.map_err(DbError::Query)?;
    Ok(n)
}

/// Deletes one batch of the oldest events beyond the policy; returns the new watermark, or `None`
/// when there was nothing to do or another replica is pruning. The batch's statements are bounded
/// by the timeout each, the whole batch by twice it.
pub async fn prune_batch(
    db: &Db,
    sql: &RetentionSql,
    policy: Retention,
) -> Result<Option<i64>, DbError> {
    db.within(db.timeout().saturating_mul(2))
        .with_client(|client| prune_batch_on(client, sql, policy))
        .await
}

async fn prune_batch_on(
    mut client: deadpool_postgres::Client,
    sql: &RetentionSql,
    policy: Retention,
) -> Result<Option<i64>, DbError> {
    let tx = client.transaction().await.map_err(DbError::Query)?;
    if !bound_and_locked(&tx, sql, &sql.lock).await? {
        return Ok(None);
    }
    let max_events = i64::try_from(policy.max_events).unwrap_or(i64::MAX);
    let age_secs = policy.max_age.as_secs_f64();
    // The cut: the highest seq among the oldest batch that is too old or beyond the count.
    let cut: Option<i64> = tx
        .query_typed(
            &sql.cut,
            &[
                (&BATCH, Type::INT8),
                (&max_events, Type::INT8),
                (&age_secs, Type::FLOAT8),
            ],
        )
        .await
        .map_err(DbError::Query)?
        .first()
        .map(|r| column::<Option<i64>>(r, 0))
        .transpose()?
        .flatten();
    let Some(cut) = cut else {
        return Ok(None);
    };
    tx.query_typed(&sql.delete_events, &[(&cut, Type::INT8)])
        .await
        .map_err(DbError::Query)?;
    tx.query_typed(&sql.set_pruned, &[(&cut, Type::INT8)])
        .await
        .map_err(DbError::Query)?;
    tx.query_typed(&sql.delete_keys, &[(&cut, Type::INT8)])
        .await
        .map_err(DbError::Query)?;
    tx.commit().await.map_err(DbError::Query)?;
    Ok(Some(cut))
}
