//! Group commit: concurrent publishes on one replica share one transaction.
//!
//! One task owns the write path. It takes every request waiting (up to [`MAX_GROUP_EVENTS`]),
//! locks the head row (which serializes publishers across all replicas, so seqs commit in order),
//! resolves idempotency keys, inserts the new events with one statement (its trigger sends the
//! NOTIFY), advances the head and commits. Each request is answered only after the commit. A
//! request whose key conflicts is refused alone; the others in the group proceed. A group without
//! keys takes one round trip to the database, a group with keys two (see [`transaction`]).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use deadpool_postgres::Client;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_postgres::types::{ToSql, Type};
use tokio_util::sync::CancellationToken;

use super::SharedError;
use crate::db::{column, Db, DbError};
use crate::event::{StoredEvent, Target};
use crate::log::idempotency::{self, Known, Plan};
use crate::log::{AppendRequest, Appended, LogError};

/// Most events committed in one transaction (a request is never split).
pub const MAX_GROUP_EVENTS: usize = 10_000;
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Appended, LogError>>;
type Answers = Vec<Result<Appended, LogError>>;

/// Where a replica's own commits go before its bridge reads them back (see
/// [`PgLog::deliver_commits_to`](super::PgLog::deliver_commits_to)); the replica's broadcaster
/// (`replica::open`).
pub trait CommitSink: Send + Sync {
    /// Whether it would take the commit of seqs `first..=last` now (checked before the events
    /// are framed: a commit it cannot take is the bridge's to deliver, so framing it is waste).
    fn wants(&self, first: u64, last: u64) -> bool;
    /// Takes the commit's events.
    fn take(&self, events: &[Arc<StoredEvent>]);
}

/// The sink, once the replica sets it.
pub type SinkSlot = Arc<OnceLock<Arc<dyn CommitSink>>>;

struct Job {
    req: AppendRequest,
    reply: Reply,
}

pub struct Writer {
    tx: mpsc::Sender<Job>,
}

/// The task that commits what [`Writer::append`] queues. It must be running for publishes to
/// complete; it may be restarted (the queue outlives it; requests it was committing when it
/// failed get an error).
#[derive(Clone)]
pub struct WriterTask {
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    db: Db,
    schema: String,
    epoch: String,
    sink: SinkSlot,
}

impl WriterTask {
    /// Commits queued requests until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut rx = self.rx.lock().await;
        let sql = WriterSql::new(&self.schema, self.db.timeout());
        // Bound the whole transaction, not just each statement.
        let db = self.db.within(self.db.timeout().saturating_mul(3));
        let committed = Local {
            epoch: &self.epoch,
            sink: &self.sink,
        };
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                job = rx.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
            };
            commit_queued(first, &mut rx, &db, &sql, &committed).await;
        }
    }
}

impl Writer {
    /// The writer and the task that commits for it (the caller runs it); what it commits also
    /// goes to `sink` once one is set.
    pub fn new(db: Db, schema: String, epoch: String, sink: SinkSlot) -> (Writer, WriterTask) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = WriterTask {
            rx: Arc::new(Mutex::new(rx)),
            db,
            schema,
            epoch,
            sink,
        };
        (Writer { tx }, task)
    }

    pub async fn append(&self, req: AppendRequest) -> Result<Appended, LogError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { req, reply })
            .await
            .map_err(|_| LogError::Internal(Box::new(WriterGone::Stopped)))?;
        answer
            .await
            .map_err(|_| LogError::Internal(Box::new(WriterGone::DroppedRequest)))?
    }
}

/// A publish found no writer to answer it.
#[derive(Debug, thiserror::Error)]
enum WriterGone {
    #[error("the writer stopped")]
    Stopped,
    #[error("the writer dropped a request")]
    DroppedRequest,
}

/// Where the writer hands what it committed: the log's epoch and the sink, once set.
struct Local<'a> {
    epoch: &'a str,
    sink: &'a OnceLock<Arc<dyn CommitSink>>,
}

impl Local<'_> {
    /// The group's new events, to this replica's subscribers.
    fn deliver(&self, committed: &Committed) {
        let Some(sink) = self.sink.get() else {
            return;
        };
        let Some((first, last)) = committed.seq_range() else {
            return;
        };
        if sink.wants(first, last) {
            sink.take(&committed.events(self.epoch, SystemTime::now()));
        }
    }
}

/// Commits `first` with every request waiting behind it (up to [`MAX_GROUP_EVENTS`]).
async fn commit_queued(
    first: Job,
    rx: &mut mpsc::Receiver<Job>,
    db: &Db,
    sql: &WriterSql,
    local: &Local<'_>,
) {
    let mut events = first.req.events.len();
    let mut group = vec![first];
    while events < MAX_GROUP_EVENTS {
        match rx.try_recv() {
            Ok(job) => {
                events += job.req.events.len();
                group.push(job);
            }
            Err(_) => break,
        }
    }
    let outcome = db
        .with_client(|client| commit_group(client, sql, &group))
        .await;
    match outcome {
        Ok((answers, committed)) => {
            for (job, answer) in group.into_iter().zip(answers) {
                let _ = job.reply.send(answer);
            }
            if let Some(committed) = committed.filter(|c| !c.rows.seqs.is_empty()) {
                // The publishers' tasks run before the streams the delivery wakes (each woken
                // task would take the worker's next-to-run slot from the one woken before it),
                // so a publish is not answered after this replica's whole fan-out.
                tokio::task::yield_now().await;
                local.deliver(&committed);
            }
        }
        Err(error) => {
            tracing::warn!(%error, requests = group.len(), "publish transaction failed");
            let transient = error.is_transient();
            let shared = SharedError(Arc::new(error));
            for job in group {
                let cause = Box::new(shared.clone());
                let e = if transient {
                    LogError::Unavailable(cause)
                } else {
                    LogError::Internal(cause)
                };
                let _ = job.reply.send(Err(e));
            }
        }
    }
}

/// The group commit's statements, schema-qualified once per run of the task.
struct WriterSql {
    begin: String,
    lock_head: String,
    append: String,
    keys: String,
    insert_events: String,
    insert_keys: String,
    set_head: String,
}

impl WriterSql {
    fn new(s: &str, timeout: Duration) -> WriterSql {
        let ms = timeout.as_millis();
        WriterSql {
            begin: format!(
                "BEGIN; SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}"
            ),
            lock_head: format!("SELECT seq FROM {s}.head FOR UPDATE"),
            // Advances the head (taking its row lock) and inserts the rows numbered after the old
            // head: `rel` is each row's seq relative to it (migration 007).
            append: format!("SELECT {s}.append_events($1, $2, $3, $4, $5, $6)"),
            keys: format!("SELECT key, fingerprint, seqs FROM {s}.idempotency WHERE key = ANY($1)"),
            insert_events: format!(
                "INSERT INTO {s}.events (seq, method, params, tenant, session) \
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])"
            ),
            insert_keys: format!(
                "INSERT INTO {s}.idempotency (key, fingerprint, seqs, max_seq) \
                 SELECT k, f, string_to_array(q, ',')::bigint[], m \
                 FROM unnest($1::text[], $2::bytea[], $3::text[], $4::bigint[]) AS t(k, f, q, m)"
            ),
            set_head: format!("UPDATE {s}.head SET seq = $1"),
        }
    }
}

/// Rows to insert for the whole group.
#[derive(Default)]
struct Rows {
    seqs: Vec<i64>,
    methods: Vec<String>,
    params: Vec<Option<String>>,
    tenants: Vec<Option<String>>,
    sessions: Vec<Option<String>>,
    keys: Vec<String>,
    fingerprints: Vec<Vec<u8>>,
    key_seqs: Vec<String>,
    key_max: Vec<i64>,
}

/// The rows a group committed: event `i` has seq `offset + rows.seqs[i]`.
struct Committed {
    offset: i64,
    rows: Rows,
}

impl Committed {
    /// The first and last seq committed (the rows are numbered consecutively, in order).
    fn seq_range(&self) -> Option<(u64, u64)> {
        let seq = |rel: &i64| u64::try_from(self.offset + rel).ok();
        Some((seq(self.rows.seqs.first()?)?, seq(self.rows.seqs.last()?)?))
    }

    fn events(&self, epoch: &str, committed_at: SystemTime) -> Vec<Arc<StoredEvent>> {
        let r = &self.rows;
        (0..r.seqs.len())
            .map(|i| {
                Arc::new(StoredEvent::new(
                    epoch,
                    u64::try_from(self.offset + r.seqs[i]).unwrap_or(0),
                    &r.methods[i],
                    r.params[i].as_deref(),
                    Target {
                        tenant: r.tenants[i].clone(),
                        session: r.sessions[i].clone(),
                    },
                    committed_at,
                ))
            })
            .collect()
    }
}

async fn commit_group(
    client: Client,
    sql: &WriterSql,
    group: &[Job],
) -> Result<(Answers, Option<Committed>), DbError> {
    match transaction(&client, sql, group).await {
        Ok(done) => Ok(done),
        Err(error) => {
            // The transaction may still be open on this connection (or the connection broken):
            // it never goes back to the pool.
            drop(deadpool_postgres::Object::take(client));
            Err(error)
        }
    }
}

/// The group's transaction. Statements are pipelined (sent together, run in order); if any
/// fails, the transaction is aborted, so the pipelined `COMMIT` rolls back: nothing is
/// half-written. A group that names no idempotency key takes one round trip (its seqs do not
/// depend on anything the database holds but the head); otherwise two (the keys are read first).
async fn transaction(
    client: &Client,
    sql: &WriterSql,
    group: &[Job],
) -> Result<(Answers, Option<Committed>), DbError> {
    let wanted: Vec<String> = group
        .iter()
        .flat_map(|j| idempotency::keys_of(&j.req))
        .collect();
    if wanted.is_empty() {
        let events = group.iter().map(|j| j.req.events.len()).sum();
        return keyless(client, sql, group, events).await;
    }
    // 1: open with bounded statements, lock the head row (serializing publishers), read the
    // idempotency keys the group names (stable while the lock is held).
    let key_params: [(&(dyn ToSql + Sync), Type); 1] = [(&wanted, Type::TEXT_ARRAY)];
    let ((), head_rows, key_rows) = futures::try_join!(
        client.batch_execute(&sql.begin),
        client.query_typed(&sql.lock_head, &[]),
        client.query_typed(&sql.keys, &key_params),
    )
    .map_err(DbError::Query)?;
    let head: i64 = match head_rows.first() {
        Some(r) => column(r, 0)?,
        None => return Err(DbError::MissingHead),
    };
    let mut known: HashMap<String, Known> = HashMap::with_capacity(key_rows.len());
    for r in &key_rows {
        let seqs: Vec<i64> = column(r, 2)?;
        known.insert(
            column(r, 0)?,
            Known {
                fingerprint: column(r, 1)?,
                seqs: seqs.into_iter().map(|s| s as u64).collect(),
            },
        );
    }

    let mut next = head;
    let mut rows = Rows::default();
    let answers = group
        .iter()
        .map(|job| plan(&job.req, &mut known, &mut next, &mut rows))
        .collect();

    // 2: the rows, the keys, the new head, and the commit (only the commit when every request
    // was a retry or a conflict).
    if next == head {
        client
            .batch_execute("COMMIT")
            .await
            .map_err(DbError::Query)?;
        return Ok((answers, None));
    }
    let event_params: [(&(dyn ToSql + Sync), Type); 5] = [
        (&rows.seqs, Type::INT8_ARRAY),
        (&rows.methods, Type::TEXT_ARRAY),
        (&rows.params, Type::TEXT_ARRAY),
        (&rows.tenants, Type::TEXT_ARRAY),
        (&rows.sessions, Type::TEXT_ARRAY),
    ];
    let head_params: [(&(dyn ToSql + Sync), Type); 1] = [(&next, Type::INT8)];
    let insert_events = client.execute_typed(&sql.insert_events, &event_params);
    let insert_keys = async {
        if rows.keys.is_empty() {
            return Ok(0);
        }
        client
            .execute_typed(
                &sql.insert_keys,
                &[
                    (&rows.keys, Type::TEXT_ARRAY),
                    (&rows.fingerprints, Type::BYTEA_ARRAY),
                    (&rows.key_seqs, Type::TEXT_ARRAY),
                    (&rows.key_max, Type::INT8_ARRAY),
                ],
            )
            .await
    };
    let set_head = client.execute_typed(&sql.set_head, &head_params);
    futures::try_join!(
        insert_events,
        insert_keys,
        set_head,
        client.batch_execute("COMMIT"),
    )
    .map_err(DbError::Query)?;
    Ok((answers, Some(Committed { offset: 0, rows })))
}

/// A group without idempotency keys in one round trip: open, advance the head by the group's
/// events (which locks its row, serializing publishers as in the two-trip transaction) and insert
/// the events numbered after the old head — one call of `append_events`, whose statements the
/// server plans once per connection — commit. Every request is accepted (only keys can
/// refuse one); its seqs are the new head's last `events`, in order.
async fn keyless(
    client: &Client,
    sql: &WriterSql,
    group: &[Job],
    events: usize,
) -> Result<(Answers, Option<Committed>), DbError> {
    let mut known = HashMap::new();
    // Seqs relative to the old head: 1..=events.
    let mut next = 0i64;
    let mut rows = Rows::default();
    let answers: Vec<Result<Appended, LogError>> = group
        .iter()
        .map(|job| plan(&job.req, &mut known, &mut next, &mut rows))
        .collect();
    let count = i64::try_from(events).unwrap_or(i64::MAX);
    let event_params: [(&(dyn ToSql + Sync), Type); 6] = [
        (&count, Type::INT8),
        (&rows.seqs, Type::INT8_ARRAY),
        (&rows.methods, Type::TEXT_ARRAY),
        (&rows.params, Type::TEXT_ARRAY),
        (&rows.tenants, Type::TEXT_ARRAY),
        (&rows.sessions, Type::TEXT_ARRAY),
    ];
    let ((), head_rows, ()) = futures::try_join!(
        client.batch_execute(&sql.begin),
        client.query_typed(&sql.append, &event_params),
        client.batch_execute("COMMIT"),
    )
    .map_err(DbError::Query)?;
    let head: i64 = match head_rows.first().map(|r| column::<Option<i64>>(r, 0)) {
        Some(Ok(Some(head))) => head,
        Some(Err(error)) => return Err(error),
        Some(Ok(None)) | None => return Err(DbError::MissingHead),
    };
    let offset = head - count;
    let start = u64::try_from(offset).unwrap_or(0);
    let answers = answers
        .into_iter()
        .map(|a| {
            a.map(|mut a| {
                for seq in &mut a.seqs {
                    *seq += start;
                }
                a
            })
        })
        .collect();
    Ok((answers, Some(Committed { offset, rows })))
}

/// Decides one request inside the group and adds its rows: its original seqs (a retry), a
/// conflict, or new rows. All or nothing: rows are added only if the whole request is accepted.
fn plan(
    req: &AppendRequest,
    known: &mut HashMap<String, Known>,
    next: &mut i64,
    rows: &mut Rows,
) -> Result<Appended, LogError> {
    let Plan {
        answer,
        fresh,
        keys,
        head,
    } = idempotency::plan(req, known, *next as u64)?;
    for (seq, ev) in fresh {
        rows.seqs.push(seq as i64);
        rows.methods.push(ev.method.clone());
        rows.params.push(ev.params.clone());
        rows.tenants.push(ev.target.tenant.clone());
        rows.sessions.push(ev.target.session.clone());
    }
    for record in keys {
        rows.keys.push(record.key.clone());
        rows.fingerprints.push(record.known.fingerprint.clone());
        rows.key_seqs.push(
            record
                .known
                .seqs
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        rows.key_max.push(record.max_seq as i64);
        known.insert(record.key, record.known);
    }
    *next = head as i64;
    Ok(answer)
}
