//! `GET /admin/stats`, what the operator console shows: the cluster view, the log's extent and
//! retention, this replica's time series, and the most recent events (read from the broadcaster's
//! ring when asked: nothing is kept per event for it).

use std::time::UNIX_EPOCH;

use serde_json::{json, Value};

use crate::cluster::unix_now;
use crate::event::EventId;
use crate::metrics::DropReason;
use crate::state::AppState;

/// Most recent events listed.
pub const RECENT: usize = 50;

/// The whole console view. A database outage does not fail it: the cluster view falls back to
/// this replica alone, the log's extent to this replica's head, and `database` says why.
pub async fn view(st: &AppState) -> Value {
    let epoch = st.log.epoch();
    let mut database = "ok";
    let replicas = match crate::cluster::view(&st.cluster).await {
        Ok(v) => json!(v.replicas),
        Err(error) => {
            tracing::warn!(%error, "console: cannot read the cluster view");
            database = "unavailable";
            json!([st.cluster.me()])
        }
    };
    let (head, pruned) = match st.log.bounds().await {
        Ok(b) => (b.head, Some(b.pruned)),
        Err(error) => {
            tracing::warn!(%error, "console: cannot read the log's bounds");
            database = "unavailable";
            (st.broadcaster.head(), None)
        }
    };
    let id = |seq: u64| EventId { epoch, seq }.to_string();
    let memory = st.cluster.db.is_none();
    let drops: serde_json::Map<String, Value> = DropReason::ALL
        .iter()
        .map(|&reason| (reason.as_str().to_owned(), st.metrics.drops(reason).into()))
        .collect();
    json!({
        "replica": st.cluster.replica_id,
        "mode": if memory { "memory" } else { "postgres" },
        "database": database,
        "now": unix_now(),
        "heartbeat_secs": (!memory).then_some(st.config.heartbeat_secs),
        "replicas": replicas,
        "log": {
            "epoch": epoch,
            "head": head,
            "head_id": id(head),
            "pruned": pruned,
            "pruned_id": pruned.filter(|&p| p > 0).map(id),
            "retention_secs": (!memory).then_some(st.config.retention_secs),
            "retention_max_events": st.config.retention_max_events,
        },
        "published_total": st.metrics.events_published.get(),
        "delivered_total": st.metrics.events_delivered.get(),
        "dropped_total": drops,
        "series": st.series.to_json(),
        "recent": recent(st),
    })
}

/// The newest events this replica holds, newest first.
fn recent(st: &AppState) -> Vec<Value> {
    st.broadcaster
        .recent(RECENT)
        .iter()
        .map(|ev| {
            json!({
                "id": ev.id(),
                "method": ev.method,
                "tenant": ev.target.tenant,
                "session": ev.target.session,
                "bytes": ev.message().len(),
                "committed_at": ev.committed_at.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            })
        })
        .collect()
}
