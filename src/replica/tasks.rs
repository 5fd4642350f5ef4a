//! The replica's background tasks, each supervised (restarted with backoff after a failure, a
//! panic or an unexpected exit; see [`crate::supervise`]) and stopped by the supervisor's token.

use tokio::task::JoinHandle;

use super::open::DbTasks;
use crate::config::ServeConfig;
use crate::log::postgres::retention;
use crate::metrics::Task;
use crate::state::AppState;
use crate::supervise::{Supervisor, TaskError};

/// Starts every background task of `st` (and the Postgres ones, when `db` is given). Returns the
/// replica heartbeat's handle (Postgres mode): the drain waits for it to leave the cluster view.
pub fn start(
    sup: &Supervisor,
    st: &AppState,
    config: &ServeConfig,
    db: Option<DbTasks>,
) -> Option<JoinHandle<()>> {
    if let Some(db) = db {
        start_db_tasks(sup, st, config, db);
    }
    let (broadcaster, sessions) = (st.broadcaster.clone(), st.sessions.clone());
    sup.spawn(Task::SessionKeepAlive, move |stop| {
        let (b, s) = (broadcaster.clone(), sessions.clone());
        until_stopped(crate::session::keep_alive(b, s, stop))
    });
    let (metrics, series) = (st.metrics.clone(), st.series.clone());
    sup.spawn(Task::StatsSampler, move |stop| {
        let (m, s) = (metrics.clone(), series.clone());
        until_stopped(crate::stats::series::run(m, s, stop))
    });
    let tokens = st.admin_tokens.clone();
    sup.spawn(Task::AdminTokenWatch, move |stop| {
        until_stopped(crate::auth::admin_tokens::watch(tokens.clone(), stop))
    });
    // Memory mode has no cluster view to heartbeat into.
    let cluster = st.cluster.clone();
    cluster.db.is_some().then(|| {
        sup.spawn(Task::ReplicaHeartbeat, move |stop| {
            until_stopped(crate::cluster::heartbeat(cluster.clone(), stop))
        })
    })
}

/// A future that runs until the replica stops, as a supervised task (returning before is an
/// unexpected exit).
async fn until_stopped(task: impl std::future::Future<Output = ()>) -> Result<(), TaskError> {
    task.await;
    Ok(())
}

/// The bridge (readiness and the LISTEN gauge go down whenever it fails), the publish writer and
/// retention.
fn start_db_tasks(sup: &Supervisor, st: &AppState, config: &ServeConfig, db: DbTasks) {
    let (lifecycle, listening) = (st.lifecycle.clone(), st.cluster.listening.clone());
    let bridge = db.bridge;
    sup.spawn_with(
        Task::Bridge,
        move |stop| {
            let b = bridge.clone();
            async move { b.run(stop).await.map_err(TaskError::from) }
        },
        move || {
            listening.set(false);
            lifecycle.set_bridge_failed(true);
        },
    );
    let writer = db.writer;
    sup.spawn(Task::PublishWriter, move |stop| {
        until_stopped(writer.clone().run(stop))
    });
    let (pg, schema, policy) = (db.db, config.schema.clone(), db.retention);
    sup.spawn(Task::Retention, move |stop| {
        until_stopped(retention::run(pg.clone(), schema.clone(), policy, stop))
    });
}
