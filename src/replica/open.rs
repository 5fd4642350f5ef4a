//! Building the replica's state: in memory at once, or on Postgres once the database is reachable
//! and migrated, with the tasks Postgres mode runs.

use std::sync::Arc;
use std::time::Duration;

use super::ServeError;
use crate::auth::SubscriberAuth;
use crate::bridge::backoff::Backoff;
use crate::bridge::Bridge;
use crate::broadcast::Broadcaster;
use crate::cluster::PgCluster;
use crate::config::{self, MigrateMode, ServeConfig};
use crate::db::{connect, with_causes, Db, DbError};
use crate::event::StoredEvent;
use crate::log::postgres::retention::Retention;
use crate::log::postgres::writer::CommitSink;
use crate::log::postgres::writer::WriterTask;
use crate::log::postgres::{migrate, PgLog};
use crate::log::{EventLog, LogError};
use crate::session::postgres::PgSessions;
use crate::state::{AppState, State, StateError};

/// The Postgres-mode tasks, started (and supervised) once the state is built.
pub struct DbTasks {
    pub bridge: Arc<Bridge>,
    pub writer: WriterTask,
    pub db: Db,
    pub retention: Retention,
}

/// The replica's state: in memory, or on Postgres once the database is reachable and migrated
/// (retrying with backoff meanwhile; `/readyz` answers 503 until then), with the tasks Postgres
/// mode runs.
pub async fn build_state(
    config: &ServeConfig,
    open_files: u64,
) -> Result<(AppState, Option<DbTasks>), ServeError> {
    let auth = SubscriberAuth::from_config(config).await?;
    let Some(url) = config.database_url.as_deref() else {
        tracing::warn!(
            "DATABASE_URL is not set: running as a single replica with an in-memory log (events are lost on restart; do not scale this out)"
        );
        let st = State::memory(config.clone(), auth, open_files)?;
        st.lifecycle.set_ready();
        return Ok((st, None));
    };
    if config.heartbeat_secs >= config.replica_stale_secs {
        return Err(StateError::HeartbeatNotBelowStale {
            heartbeat: config.heartbeat_secs,
            stale: config.replica_stale_secs,
        }
        .into());
    }
    let timeout = config.db_timeout();
    let tls = connect::tls(config.db_ca_file.as_deref())?;
    let pool = connect::pool(
        url,
        connect::POOL_APP_NAME,
        timeout,
        config::to_usize(config.db_pool_size),
        tls.clone(),
    )?;
    let db = Db::new(pool, timeout);
    // Publishes commit on a connection of their own: a flood of reads (polls, resumes, session
    // checks) waits for the pool, never in front of a publish.
    let writer_db = Db::new(
        connect::pool(url, connect::WRITER_APP_NAME, timeout, 1, tls.clone())?,
        timeout,
    );
    let listen_url = config.listen_database_url.as_deref().unwrap_or(url);
    let listen_config = connect::pg_config(listen_url, connect::LISTEN_APP_NAME, timeout)?;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let (log, head) = loop {
        match open_log(&db, &writer_db, config).await {
            Ok(ready) => break ready,
            Err(error) => {
                tracing::warn!(%error, "the database is not ready; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    };
    let st = State::postgres(
        config.clone(),
        auth,
        open_files,
        log.clone(),
        Arc::new(PgSessions::new(db.clone(), &config.schema)),
        PgCluster::new(
            db.clone(),
            &config.schema,
            Duration::from_secs(config.replica_stale_secs),
            Duration::from_secs(config.heartbeat_secs),
        ),
        head,
    )?;
    log.deliver_commits_to(Arc::new(st.broadcaster.clone()));
    let bridge = Arc::new(Bridge {
        broadcaster: st.broadcaster.clone(),
        metrics: st.metrics.clone(),
        lifecycle: st.lifecycle.clone(),
        listening: st.cluster.listening.clone(),
        replica_id: st.cluster.replica_id.clone(),
        log: log.clone(),
        listen_config,
        tls,
        heartbeat_every: Duration::from_secs(2),
        heartbeat_timeout: timeout.max(Duration::from_secs(4)),
        timeout,
    });
    let tasks = DbTasks {
        bridge,
        writer: log.writer_task(),
        db,
        retention: Retention {
            max_age: Duration::from_secs(config.retention_secs),
            max_events: config.retention_max_events,
            every: Duration::from_secs(config.retention_interval_secs),
            max_sessions: config.max_sessions,
            session_lease: crate::session::STREAM_LEASE,
        },
    };
    Ok((st, Some(tasks)))
}

/// Why the log is not open yet (the replica retries).
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot read the log's head: {}", with_causes(.0))]
    Head(#[source] LogError),
}

async fn open_log(
    db: &Db,
    writer_db: &Db,
    config: &ServeConfig,
) -> Result<(Arc<PgLog>, u64), OpenError> {
    let schema = &config.schema;
    db.within(db.timeout().saturating_mul(4))
        .with_client(|mut client| async move {
            match config.migrate {
                MigrateMode::Auto => {
                    let applied = migrate::apply(&mut client, schema).await?;
                    if !applied.is_empty() {
                        tracing::info!(schema, ?applied, "migrations applied");
                    }
                }
                MigrateMode::Skip => {
                    let pending = migrate::pending(&client, schema).await?;
                    if !pending.is_empty() {
                        return Err(DbError::NotMigrated(pending));
                    }
                }
            }
            Ok(())
        })
        .await?;
    let log = PgLog::open(
        db.clone(),
        writer_db.clone(),
        schema,
        config.max_payload_bytes,
    )
    .await?;
    let head = log.bounds().await.map_err(OpenError::Head)?.head;
    tracing::info!(schema, epoch = log.epoch(), head, "event log open");
    Ok((Arc::new(log), head))
}

/// The replica's own commits go straight to its broadcaster, kept gapless: it takes a commit
/// only when it continues the ring's head (else the bridge delivers it, in order).
impl CommitSink for Broadcaster {
    fn wants(&self, first: u64, last: u64) -> bool {
        self.would_continue(first, last)
    }

    fn take(&self, events: &[Arc<StoredEvent>]) {
        self.push_if_next(events);
    }
}
