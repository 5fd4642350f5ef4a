//! The cluster view (SPEC §4.2): every replica heartbeats its address, subscriber count and last
//! delivered id into `<schema>.replicas`; `GET /admin/cluster` lists those heard from within the
//! stale limit. A replica removes its row on a clean shutdown; a killed one ages out. Each row also
//! carries the subscribers by kind and the LISTEN state, for the operator console.

use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

use crate::event::EventId;
use crate::log::postgres::{timed, DbError};
use crate::metrics::{KindLabel, Metrics};
use crate::state::AppState;

/// How often a replica heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

pub struct PgCluster {
    pub pool: Pool,
    pub schema: String,
    pub timeout: Duration,
    /// A replica not heard from for this long is not listed.
    pub stale_after: Duration,
}

/// The subscriber kinds counted separately (`mcp_fanout_subscribers{kind}`).
pub const KINDS: [&str; 3] = ["sse", "poll", "listen"];

/// Current subscribers of one kind on this replica.
pub fn subscribers_of(metrics: &Metrics, kind: &'static str) -> i32 {
    let n = metrics.subscribers.get_or_create(&KindLabel { kind }).get();
    i32::try_from(n.max(0)).unwrap_or(i32::MAX)
}

/// This replica's LISTEN state: `None` in memory mode (there is no LISTEN connection).
fn listen_state(st: &AppState) -> Option<bool> {
    st.cluster
        .as_ref()
        .map(|_| st.metrics.listen_connected.get() == 1)
}

/// This replica, as listed.
pub fn me(st: &AppState) -> Value {
    let epoch = st.log.epoch();
    let by_kind: serde_json::Map<String, Value> = KINDS
        .iter()
        .map(|&k| (k.to_owned(), subscribers_of(&st.metrics, k).into()))
        .collect();
    json!({
        "id": st.replica_id,
        "address": advertised(st),
        "subscribers": st.broadcaster.subscriber_count(),
        "subscribers_by_kind": by_kind,
        "listen_connected": listen_state(st),
        "last_delivered_id": EventId { epoch, seq: st.broadcaster.head() }.to_string(),
        "last_heartbeat": unix_now(),
        "heartbeat_age_secs": 0.0,
    })
}

fn advertised(st: &AppState) -> Option<String> {
    st.config
        .advertise_addr
        .clone()
        .or_else(|| st.public_addr.get().map(ToString::to_string))
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The view: from the database in Postgres mode, this replica alone in memory mode.
pub async fn view(st: &AppState) -> Result<Value, DbError> {
    let Some(c) = &st.cluster else {
        return Ok(json!({ "replicas": [me(st)] }));
    };
    let s = &c.schema;
    let stale = c.stale_after.as_secs_f64();
    let rows = timed(c.timeout, async {
        let client = c.pool.get().await.map_err(DbError::Checkout)?;
        client
            .query_typed(
                &format!(
                    "SELECT id, address, subscribers, last_delivered, extract(epoch FROM last_heartbeat)::float8, \
                     subscribers_sse, subscribers_poll, subscribers_listen, listen_connected, \
                     extract(epoch FROM clock_timestamp() - last_heartbeat)::float8 \
                     FROM {s}.replicas WHERE last_heartbeat > clock_timestamp() - make_interval(secs => $1) ORDER BY id"
                ),
                &[(&stale, Type::FLOAT8)],
            )
            .await
            .map_err(DbError::Query)
    })
    .await?;
    let epoch = st.log.epoch();
    let replicas: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<_, String>(0),
                "address": r.get::<_, Option<String>>(1),
                "subscribers": r.get::<_, i32>(2),
                "subscribers_by_kind": {
                    "sse": r.get::<_, i32>(5),
                    "poll": r.get::<_, i32>(6),
                    "listen": r.get::<_, i32>(7),
                },
                "listen_connected": r.get::<_, Option<bool>>(8),
                "last_delivered_id": EventId { epoch, seq: r.get::<_, i64>(3) as u64 }.to_string(),
                "last_heartbeat": r.get::<_, f64>(4),
                "heartbeat_age_secs": r.get::<_, f64>(9),
            })
        })
        .collect();
    Ok(json!({ "replicas": replicas }))
}

/// Heartbeats until `stop`, then removes this replica's row.
pub async fn heartbeat(st: AppState, stop: CancellationToken) {
    let Some(c) = &st.cluster else { return };
    let s = &c.schema;
    let upsert = format!(
        "INSERT INTO {s}.replicas (id, address, subscribers, last_delivered, subscribers_sse, \
         subscribers_poll, subscribers_listen, listen_connected) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, subscribers = EXCLUDED.subscribers, \
         last_delivered = EXCLUDED.last_delivered, subscribers_sse = EXCLUDED.subscribers_sse, \
         subscribers_poll = EXCLUDED.subscribers_poll, subscribers_listen = EXCLUDED.subscribers_listen, \
         listen_connected = EXCLUDED.listen_connected, last_heartbeat = clock_timestamp()"
    );
    // Rows of replicas gone for long are deleted by whichever replica heartbeats.
    let forget = format!(
        "DELETE FROM {s}.replicas WHERE last_heartbeat < clock_timestamp() - interval '1 hour'"
    );
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let address = advertised(&st);
        let subscribers = i32::try_from(st.broadcaster.subscriber_count()).unwrap_or(i32::MAX);
        let head = i64::try_from(st.broadcaster.head()).unwrap_or(i64::MAX);
        let [sse, poll, listen] = KINDS.map(|k| subscribers_of(&st.metrics, k));
        let listening = listen_state(&st);
        let result = timed(c.timeout, async {
            let client = c.pool.get().await.map_err(DbError::Checkout)?;
            client
                .query_typed(
                    &upsert,
                    &[
                        (&st.replica_id, Type::TEXT),
                        (&address, Type::TEXT),
                        (&subscribers, Type::INT4),
                        (&head, Type::INT8),
                        (&sse, Type::INT4),
                        (&poll, Type::INT4),
                        (&listen, Type::INT4),
                        (&listening, Type::BOOL),
                    ],
                )
                .await
                .map_err(DbError::Query)?;
            client
                .query_typed(&forget, &[])
                .await
                .map_err(DbError::Query)
        })
        .await;
        if let Err(error) = result {
            tracing::debug!(%error, "cluster heartbeat failed");
        }
    }
    let bye = timed(c.timeout, async {
        let client = c.pool.get().await.map_err(DbError::Checkout)?;
        client
            .query_typed(
                &format!("DELETE FROM {s}.replicas WHERE id = $1"),
                &[(&st.replica_id, Type::TEXT)],
            )
            .await
            .map_err(DbError::Query)
    })
    .await;
    if let Err(error) = bye {
        tracing::debug!(%error, "cannot remove this replica from the cluster view");
    }
}
