//! The Postgres log: the durable, commit-ordered event table of contract §6.
//!
//! Appends go through one group-commit [`writer`] per replica; reads (`read_after`, `bounds`) use
//! the pool with unnamed statements (PgBouncer transaction mode works). Concurrent reads of the
//! same page (many lagging cursors at one position) share one query (`shared_reads`), concurrent
//! reads of the bounds share the next query to start (`fresh_reads`); a viewer's
//! read of what it may see is filtered in the database (`read_visible_after`). The bridge
//! reads on its own LISTEN connection, a direct session, with the page read prepared there
//! ([`PageReader`]).

mod fresh_reads;
pub mod migrate;
pub mod retention;
mod shared_reads;
pub mod writer;

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio_postgres::types::Type;

use super::{AppendRequest, Appended, Bounds, EventLog, LogError, VisiblePage};
use crate::db::{column, timed, Db, DbError};
use crate::event::{StoredEvent, Target, Viewer};
use shared_reads::{Key, View};

impl From<DbError> for LogError {
    fn from(e: DbError) -> LogError {
        if e.is_transient() {
            LogError::Unavailable(Box::new(e))
        } else {
            LogError::Internal(Box::new(e))
        }
    }
}

pub struct PgLog {
    inner: Arc<Inner>,
    /// Where the writer hands this replica's own commits (set once the broadcaster exists).
    commits: writer::SinkSlot,
    writer: writer::Writer,
    writer_task: writer::WriterTask,
    reads: shared_reads::SharedReads,
    bounds_reads: fresh_reads::FreshReads<Bounds>,
}

struct Inner {
    epoch: String,
    schema: String,
    db: Db,
    sql: LogSql,
}

/// The log's reads, schema-qualified once.
struct LogSql {
    set_payload_limit: String,
    epoch: String,
    page_after: String,
    visible_after: String,
    bounds: String,
}

impl LogSql {
    fn new(schema: &str) -> LogSql {
        LogSql {
            set_payload_limit: format!(
                "UPDATE {schema}.meta SET max_payload_bytes = $1 WHERE max_payload_bytes <> $1"
            ),
            epoch: format!("SELECT epoch FROM {schema}.meta"),
            page_after: format!(
                "SELECT m.pruned, e.seq, e.method, e.params, e.tenant, e.session, e.committed_at \
                 FROM {schema}.meta m LEFT JOIN LATERAL ( \
                     SELECT * FROM {schema}.events WHERE seq > $1 ORDER BY seq LIMIT $2) e ON true"
            ),
            // The same columns, then the head, all in one snapshot: every event up to the head
            // is committed and visible in it (seqs are given under the head row's lock). The
            // filter is `Target::visible_to` in SQL, a prefilter: the feed applies the rule too.
            visible_after: format!(
                "SELECT m.pruned, e.seq, e.method, e.params, e.tenant, e.session, e.committed_at, \
                 h.seq FROM {schema}.meta m CROSS JOIN {schema}.head h LEFT JOIN LATERAL ( \
                     SELECT * FROM {schema}.events WHERE seq > $1 AND seq <= $2 \
                     AND (tenant IS NULL OR tenant = $3) AND (session IS NULL OR session = $4) \
                     ORDER BY seq LIMIT $5) e ON true"
            ),
            bounds: format!("SELECT h.seq, m.pruned FROM {schema}.head h, {schema}.meta m"),
        }
    }
}

type Page = Arc<VisiblePage>;

/// A read every waiter shares (`shared_reads`, `fresh_reads`).
type SharedRead<T> = Shared<BoxFuture<'static, Result<T, ReadError>>>;

/// Runs `read` to its end in a task of its own, whoever still waits for it (a future nobody
/// polls would keep its pooled connection checked out for ever), and shares its result.
fn spawn_shared<T, F>(read: F) -> SharedRead<T>
where
    T: Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<T, ReadError>> + Send + 'static,
{
    let task = tokio::spawn(read);
    async move {
        task.await
            .unwrap_or_else(|failed| Err(ReadError::Internal(SharedError(Arc::new(failed)))))
    }
    .boxed()
    .shared()
}

/// The reads' tables are left consistent by every holder: a poisoned lock is still usable.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A clonable read error, so one failed shared read answers every waiter.
#[derive(Debug, Clone)]
enum ReadError {
    Pruned { after: u64, pruned: u64 },
    Unavailable(SharedError),
    Internal(SharedError),
}

/// One error answering several waiters (a shared read, a commit group): it reads as the error
/// itself, with its causes.
#[derive(Debug, Clone)]
struct SharedError(Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<ReadError> for LogError {
    fn from(e: ReadError) -> LogError {
        match e {
            ReadError::Pruned { after, pruned } => LogError::CursorPruned { after, pruned },
            ReadError::Unavailable(shared) => LogError::Unavailable(Box::new(shared)),
            ReadError::Internal(shared) => LogError::Internal(Box::new(shared)),
        }
    }
}

impl From<LogError> for ReadError {
    fn from(e: LogError) -> ReadError {
        match e {
            LogError::CursorPruned { after, pruned } => ReadError::Pruned { after, pruned },
            LogError::Unavailable(cause) => ReadError::Unavailable(SharedError(Arc::from(cause))),
            LogError::Internal(cause) => ReadError::Internal(SharedError(Arc::from(cause))),
            other => ReadError::Internal(SharedError(Arc::new(other))),
        }
    }
}

impl PgLog {
    /// Opens the log in `schema` (migrations must be applied): reads on `db`, publishes on
    /// `writer_db` (a pool of its own, so no read waits in front of a publish). Publishes complete
    /// once its writer runs ([`PgLog::writer_task`]).
    pub async fn open(
        db: Db,
        writer_db: Db,
        schema: &str,
        max_payload_bytes: u64,
    ) -> Result<PgLog, DbError> {
        let sql = LogSql::new(schema);
        let q = &sql;
        let epoch = db
            .with_client(|client| async move {
                // The payload limit lives in the schema, so SQL publishes are held to the same limit.
                let limit = i32::try_from(max_payload_bytes).unwrap_or(i32::MAX);
                client
                    .query_typed(&q.set_payload_limit, &[(&limit, Type::INT4)])
                    .await
                    .map_err(DbError::Query)?;
                let row = client
                    .query_typed(&q.epoch, &[])
                    .await
                    .map_err(DbError::Query)?;
                row.first()
                    .map(|r| column::<String>(r, 0))
                    .transpose()
                    .map(Option::unwrap_or_default)
            })
            .await?;
        let inner = Arc::new(Inner {
            epoch,
            schema: schema.to_owned(),
            db: db.clone(),
            sql,
        });
        let commits = Arc::new(OnceLock::new());
        let (writer, writer_task) = writer::Writer::new(
            writer_db,
            schema.to_owned(),
            inner.epoch.clone(),
            commits.clone(),
        );
        Ok(PgLog {
            commits,
            writer,
            writer_task,
            inner,
            reads: shared_reads::SharedReads::default(),
            bounds_reads: fresh_reads::FreshReads::default(),
        })
    }

    /// What this replica's writer commits also goes to `sink` (the local broadcaster), right
    /// after the commit (and its answers): its own subscribers get it without
    /// waiting for the NOTIFY and the bridge's read of it. The sink must keep the ring gapless
    /// ([`Broadcaster::push_if_next`](crate::broadcast::Broadcaster::push_if_next)): the bridge
    /// still reads everything, and delivers what the sink did not take. Set once; later calls
    /// are ignored.
    pub fn deliver_commits_to(&self, sink: Arc<dyn writer::CommitSink>) {
        let _ = self.commits.set(sink);
    }

    /// The task that commits publishes (run it, and run it again if it fails).
    pub fn writer_task(&self) -> writer::WriterTask {
        self.writer_task.clone()
    }

    pub fn pool(&self) -> &Pool {
        self.inner.db.pool()
    }

    pub fn schema(&self) -> &str {
        &self.inner.schema
    }
}

impl Inner {
    async fn fetch_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        let (after_i, limit_i) = page_params(after, limit);
        let rows = self
            .db
            .query(
                &self.sql.page_after,
                &[(&after_i, Type::INT8), (&limit_i, Type::INT8)],
            )
            .await?;
        self.decode_page(after, &rows)
    }

    async fn fetch_bounds(&self) -> Result<Bounds, LogError> {
        let row = self.db.query(&self.sql.bounds, &[]).await?;
        let r = row
            .first()
            .ok_or_else(|| LogError::Internal(Box::new(DbError::MissingHead)))?;
        Ok(Bounds {
            head: column::<i64>(r, 0)? as u64,
            pruned: column::<i64>(r, 1)? as u64,
        })
    }

    /// What `view` may see after `after` up to `view.upto`, at most `limit` events.
    async fn fetch_visible(
        &self,
        after: u64,
        limit: usize,
        view: &View,
    ) -> Result<VisiblePage, LogError> {
        let (after_i, limit_i) = page_params(after, limit);
        let upto_i = i64::try_from(view.upto).unwrap_or(i64::MAX);
        let rows = self
            .db
            .query(
                &self.sql.visible_after,
                &[
                    (&after_i, Type::INT8),
                    (&upto_i, Type::INT8),
                    (&view.tenant, Type::TEXT),
                    (&view.session, Type::TEXT),
                    (&limit_i, Type::INT8),
                ],
            )
            .await?;
        let events = self.decode_page(after, &rows)?;
        let scanned_to = match events.last() {
            Some(last) if events.len() >= limit => last.seq,
            _ => {
                let head = match rows.first() {
                    Some(r) => column::<i64>(r, 7)? as u64,
                    None => after,
                };
                view.upto.min(head).max(after)
            }
        };
        Ok(VisiblePage { events, scanned_to })
    }

    /// A page's rows as events; refused when the cursor is below the pruned watermark.
    fn decode_page(
        &self,
        after: u64,
        rows: &[tokio_postgres::Row],
    ) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        let pruned = match rows.first() {
            Some(r) => column::<i64>(r, 0)? as u64,
            None => 0,
        };
        if after < pruned {
            return Err(LogError::CursorPruned { after, pruned });
        }
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let Some(seq) = column::<Option<i64>>(r, 1)? else {
                continue;
            };
            let method: String = column(r, 2)?;
            let params: Option<String> = column(r, 3)?;
            let committed_at: SystemTime = column(r, 6)?;
            out.push(Arc::new(StoredEvent::new(
                &self.epoch,
                seq as u64,
                &method,
                params.as_deref(),
                Target {
                    tenant: column(r, 4)?,
                    session: column(r, 5)?,
                },
                committed_at,
            )));
        }
        Ok(out)
    }
}

fn page_params(after: u64, limit: usize) -> (i64, i64) {
    (
        i64::try_from(after).unwrap_or(i64::MAX),
        i64::try_from(limit).unwrap_or(i64::MAX),
    )
}

/// The bridge's page read, prepared on a connection of its own (the LISTEN connection, always a
/// direct session: `FANOUT_LISTEN_DATABASE_URL`), so the server plans it once per connection
/// rather than on every wake-up — a named statement, which the pool's connections cannot use
/// (PgBouncer's transaction mode). Valid for that connection's life only. When that connection's
/// role cannot read the log (a role granted only `CONNECT`, enough for `LISTEN`), the reads go
/// through the pool as before.
pub struct PageReader {
    log: Arc<Inner>,
    statement: Option<tokio_postgres::Statement>,
}

impl PageReader {
    /// Reads the page after `after` on `client`, the connection this reader was prepared on (or
    /// through the pool).
    pub async fn fetch_after(
        &self,
        client: &tokio_postgres::Client,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        let Some(statement) = &self.statement else {
            return self.log.fetch_after(after, limit).await;
        };
        let (after_i, limit_i) = page_params(after, limit);
        let rows = timed(self.log.db.timeout(), async {
            client
                .query(statement, &[&after_i, &limit_i])
                .await
                .map_err(DbError::Query)
        })
        .await?;
        self.log.decode_page(after, &rows)
    }
}

impl PgLog {
    /// Prepares the page read on `client` (see [`PageReader`]); a connection problem is an error,
    /// a statement the server refuses there (the role's privileges) falls back to the pool.
    pub async fn page_reader(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<PageReader, LogError> {
        let prepared = timed(self.inner.db.timeout(), async {
            client
                .prepare_typed(&self.inner.sql.page_after, &[Type::INT8, Type::INT8])
                .await
                .map_err(DbError::Query)
        })
        .await;
        let statement = match prepared {
            Ok(statement) => Some(statement),
            Err(error) if error.is_transient() => return Err(error.into()),
            Err(error) => {
                tracing::warn!(
                    %error,
                    "the LISTEN connection cannot read the log (its role's privileges?): the bridge reads it through the pool"
                );
                None
            }
        };
        Ok(PageReader {
            log: self.inner.clone(),
            statement,
        })
    }
}

#[async_trait]
impl EventLog for PgLog {
    fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    async fn append(&self, req: AppendRequest) -> Result<Appended, LogError> {
        self.writer.append(req).await
    }

    async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        let inner = self.inner.clone();
        let fetch = async move {
            let events = inner.fetch_after(after, limit).await?;
            let scanned_to = events.last().map_or(after, |e| e.seq);
            Ok(Arc::new(VisiblePage { events, scanned_to }))
        };
        Ok(self
            .reads
            .read(Key::page(after, limit), fetch)
            .await?
            .events
            .clone())
    }

    async fn read_visible_after(
        &self,
        after: u64,
        scan: usize,
        limit: usize,
        viewer: &Viewer,
    ) -> Result<VisiblePage, LogError> {
        let view = View {
            upto: after.saturating_add(u64::try_from(scan).unwrap_or(u64::MAX)),
            tenant: viewer.tenant.clone(),
            session: viewer.session.clone(),
        };
        let key = Key {
            after,
            limit,
            view: Some(view.clone()),
        };
        let inner = self.inner.clone();
        let fetch = async move {
            let page = inner.fetch_visible(after, limit, &view).await?;
            Ok(Arc::new(page))
        };
        Ok(self.reads.read(key, fetch).await?.as_ref().clone())
    }

    async fn bounds(&self) -> Result<Bounds, LogError> {
        let inner = self.inner.clone();
        let fetch = move || async move { inner.fetch_bounds().await.map_err(ReadError::from) };
        Ok(self.bounds_reads.read(fetch).await?)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;

    /// Waits (yielding, up to 5 s) until `cond` holds; panics naming `what` if it never does.
    pub(in crate::log::postgres) async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !cond() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}"));
    }

    /// A shared read's failure answers each waiter with the error itself: its text and its causes.
    #[test]
    fn a_shared_failure_keeps_the_error_and_its_causes() {
        let error = DbError::Checkout(deadpool_postgres::PoolError::Closed);
        let text = error.to_string();
        let shared = ReadError::from(LogError::Unavailable(Box::new(error)));
        for answer in [shared.clone(), shared] {
            let LogError::Unavailable(cause) = LogError::from(answer) else {
                panic!("still unavailable");
            };
            assert_eq!(cause.to_string(), text);
            assert!(cause.source().is_some(), "the pool's error is kept");
        }
    }

    /// An internal failure shared with several waiters reads as itself once, not wrapped again
    /// (it used to say "internal log error: internal log error: …"), and keeps its cause.
    #[test]
    fn a_shared_internal_failure_keeps_its_cause_and_reads_once() {
        let shared = ReadError::from(LogError::Internal(Box::new(DbError::MissingHead)));
        for answer in [shared.clone(), shared] {
            let error = LogError::from(answer);
            let LogError::Internal(cause) = &error else {
                panic!("still internal");
            };
            assert_eq!(cause.to_string(), DbError::MissingHead.to_string());
            assert_eq!(
                error.to_string(),
                format!("internal log error: {}", DbError::MissingHead)
            );
        }
    }
}
