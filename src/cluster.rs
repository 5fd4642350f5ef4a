//! The cluster view (contract §4.2): every replica heartbeats its address, subscriber count and last
//! delivered id into `<schema>.replicas`; `GET /admin/cluster` lists those heard from within the
//! stale limit. A replica removes its row on a clean shutdown; a killed one ages out. Each row also
//! carries the subscribers by kind and the LISTEN state, for the operator console.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

use crate::bridge::ListenState;
use crate::broadcast::Broadcaster;
use crate::db::{column, Db, DbError};
use crate::event::EventId;
use crate::metrics::{Metrics, SubscriberKind};

pub struct PgCluster {
    db: Db,
    sql: ClusterSql,
    /// A replica not heard from for this long is not listed.
    stale_after: Duration,
    /// How often this replica writes its row (`FANOUT_HEARTBEAT_SECS`); a change of its LISTEN
    /// state writes it at once.
    heartbeat_every: Duration,
}

impl PgCluster {
    pub fn new(
        db: Db,
        schema: &str,
        stale_after: Duration,
        heartbeat_every: Duration,
    ) -> PgCluster {
        PgCluster {
            db,
            sql: ClusterSql::new(schema),
            stale_after,
            heartbeat_every,
        }
    }
}

/// The cluster view's statements, schema-qualified once.
struct ClusterSql {
    view: String,
    upsert: String,
    forget_gone: String,
    leave: String,
}

impl ClusterSql {
    fn new(s: &str) -> ClusterSql {
        ClusterSql {
            view: format!(
                "SELECT id, address, subscribers, last_delivered, extract(epoch FROM last_heartbeat)::float8, \
                 subscribers_sse, subscribers_poll, subscribers_listen, listen_connected, \
                 extract(epoch FROM clock_timestamp() - last_heartbeat)::float8 \
                 FROM {s}.replicas WHERE last_heartbeat > clock_timestamp() - make_interval(secs => $1) ORDER BY id"
            ),
            upsert: format!(
                "INSERT INTO {s}.replicas (id, address, subscribers, last_delivered, subscribers_sse, \
                 subscribers_poll, subscribers_listen, listen_connected) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, subscribers = EXCLUDED.subscribers, \
                 last_delivered = EXCLUDED.last_delivered, subscribers_sse = EXCLUDED.subscribers_sse, \
                 subscribers_poll = EXCLUDED.subscribers_poll, subscribers_listen = EXCLUDED.subscribers_listen, \
                 listen_connected = EXCLUDED.listen_connected, last_heartbeat = clock_timestamp()"
            ),
            // Rows of replicas gone for long are deleted by whichever replica heartbeats.
            forget_gone: format!(
                "DELETE FROM {s}.replicas WHERE last_heartbeat < clock_timestamp() - interval '1 hour'"
            ),
            leave: format!("DELETE FROM {s}.replicas WHERE id = $1"),
        }
    }
}

/// Current subscribers of one kind on this replica.
pub fn subscribers_of(metrics: &Metrics, kind: SubscriberKind) -> i32 {
    let n = metrics.subscribers_of(kind);
    i32::try_from(n.max(0)).unwrap_or(i32::MAX)
}

/// `GET /admin/cluster`: every live replica.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    pub replicas: Vec<ReplicaView>,
}

/// One replica as listed: this one as it is now, or a row of `<schema>.replicas`.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaView {
    pub id: String,
    pub address: Option<String>,
    pub subscribers: i64,
    /// Keyed by [`SubscriberKind::as_str`], in [`SubscriberKind::ALL`]'s order.
    pub subscribers_by_kind: Map<String, Value>,
    /// `None` in memory mode, and in rows of a release before the column.
    pub listen_connected: Option<bool>,
    pub last_delivered_id: String,
    /// Unix seconds.
    pub last_heartbeat: f64,
    /// Measured by the database clock (0 for this replica as it is now).
    pub heartbeat_age_secs: f64,
}

/// The by-kind object from counts in [`SubscriberKind::ALL`]'s order.
fn by_kind(counts: [i32; SubscriberKind::ALL.len()]) -> Map<String, Value> {
    SubscriberKind::ALL
        .iter()
        .zip(counts)
        .map(|(k, n)| (k.as_str().to_owned(), n.into()))
        .collect()
}

/// This replica as the cluster sees it, and the database view of the others (Postgres mode).
pub struct Cluster {
    /// Random per process; names this replica in `/admin/cluster` and logs.
    pub replica_id: String,
    /// `FANOUT_ADVERTISE_ADDR`; when unset, the public address actually bound.
    pub advertise_addr: Option<String>,
    /// The public address actually bound (port 0 resolved), set once the listener is up.
    pub public_addr: OnceLock<SocketAddr>,
    /// The log's epoch, for the last delivered id.
    pub epoch: String,
    pub broadcaster: Broadcaster,
    pub metrics: Arc<Metrics>,
    /// This replica's LISTEN state (set by the bridge; never up in memory mode).
    pub listening: Arc<ListenState>,
    pub db: Option<PgCluster>,
}

impl Cluster {
    /// This replica, as listed.
    pub fn me(&self) -> ReplicaView {
        ReplicaView {
            id: self.replica_id.clone(),
            address: self.advertised(),
            subscribers: i64::try_from(self.broadcaster.subscriber_count()).unwrap_or(i64::MAX),
            subscribers_by_kind: by_kind(
                SubscriberKind::ALL.map(|k| subscribers_of(&self.metrics, k)),
            ),
            listen_connected: self.listen_state(),
            last_delivered_id: self.last_delivered_id(self.broadcaster.head()),
            last_heartbeat: unix_now(),
            heartbeat_age_secs: 0.0,
        }
    }

    /// This replica's LISTEN state: `None` in memory mode (there is no LISTEN connection).
    fn listen_state(&self) -> Option<bool> {
        self.db.as_ref().map(|_| self.listening.is_connected())
    }

    fn advertised(&self) -> Option<String> {
        self.advertise_addr
            .clone()
            .or_else(|| self.public_addr.get().map(ToString::to_string))
    }

    fn last_delivered_id(&self, seq: u64) -> String {
        EventId {
            epoch: &self.epoch,
            seq,
        }
        .to_string()
    }
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The view: from the database in Postgres mode, this replica alone in memory mode.
pub async fn view(cluster: &Cluster) -> Result<ClusterView, DbError> {
    let Some(c) = &cluster.db else {
        return Ok(ClusterView {
            replicas: vec![cluster.me()],
        });
    };
    let stale = c.stale_after.as_secs_f64();
    let rows = c.db.query(&c.sql.view, &[(&stale, Type::FLOAT8)]).await?;
    let replicas = rows
        .iter()
        .map(|r| {
            Ok(ReplicaView {
                id: column(r, 0)?,
                address: column(r, 1)?,
                subscribers: column::<i32>(r, 2)?.into(),
                // subscribers_sse, subscribers_poll, subscribers_listen: SubscriberKind::ALL's order.
                subscribers_by_kind: by_kind([column(r, 5)?, column(r, 6)?, column(r, 7)?]),
                listen_connected: column(r, 8)?,
                last_delivered_id: cluster.last_delivered_id(column::<i64>(r, 3)? as u64),
                last_heartbeat: column(r, 4)?,
                heartbeat_age_secs: column(r, 9)?,
            })
        })
        .collect::<Result<Vec<ReplicaView>, DbError>>()?;
    Ok(ClusterView { replicas })
}

/// Heartbeats until `stop`, then removes this replica's row. A change of the LISTEN state is
/// written at once, so the view does not show a replica's LISTEN down (or up) for a heartbeat
/// after it came up (or went down): at start, the first heartbeat goes out before the LISTEN
/// connection is up.
pub async fn heartbeat(cluster: Arc<Cluster>, stop: CancellationToken) {
    let Some(c) = &cluster.db else { return };
    let mut tick = tokio::time::interval(c.heartbeat_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listen_changes = cluster.listening.changes();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
            Ok(()) = listen_changes.changed() => tick.reset(),
        }
        let address = cluster.advertised();
        let subscribers = i32::try_from(cluster.broadcaster.subscriber_count()).unwrap_or(i32::MAX);
        let head = i64::try_from(cluster.broadcaster.head()).unwrap_or(i64::MAX);
        let [sse, poll, listen] = SubscriberKind::ALL.map(|k| subscribers_of(&cluster.metrics, k));
        let listening = cluster.listen_state();
        let (upsert, forget, id) = (&c.sql.upsert, &c.sql.forget_gone, &cluster.replica_id);
        let result =
            c.db.with_client(|client| async move {
                client
                    .query_typed(
                        upsert,
                        &[
                            (id, Type::TEXT),
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
                    .query_typed(forget, &[])
                    .await
                    .map_err(DbError::Query)
            })
            .await;
        if let Err(error) = result {
            tracing::debug!(%error, "cluster heartbeat failed");
        }
    }
    let bye =
        c.db.execute(&c.sql.leave, &[(&cluster.replica_id, Type::TEXT)])
            .await;
    if let Err(error) = bye {
        tracing::debug!(%error, "cannot remove this replica from the cluster view");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape `GET /admin/cluster` and the console have always served, key order included.
    #[test]
    fn a_replica_is_listed_in_the_documented_shape() {
        let r = ReplicaView {
            id: "r1".into(),
            address: None,
            subscribers: 3,
            subscribers_by_kind: by_kind([1, 0, 2]),
            listen_connected: Some(true),
            last_delivered_id: "ep-7".into(),
            last_heartbeat: 1.5,
            heartbeat_age_secs: 0.0,
        };
        let text = serde_json::to_string(&ClusterView { replicas: vec![r] }).expect("json");
        assert_eq!(
            text,
            r#"{"replicas":[{"id":"r1","address":null,"subscribers":3,"subscribers_by_kind":{"sse":1,"poll":0,"listen":2},"listen_connected":true,"last_delivered_id":"ep-7","last_heartbeat":1.5,"heartbeat_age_secs":0.0}]}"#
        );
    }
}
