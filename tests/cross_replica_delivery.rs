//! Contract §1, §6, §7.1: three replica processes on one database, two
//! subscribers on each; events published concurrently through all three replicas (singles and
//! batches, several requests in flight per replica so group commit shares transactions) and by
//! `SELECT <schema>.publish(...)` from SQL (autocommit and a multi-event transaction) reach every
//! subscriber; every subscriber sees exactly the `<schema>.events` table, in seq order, nothing
//! missing or doubled, with identical bytes on every replica. (The flow is shared with the
//! PgBouncer test: `mcp_fanout_testkit::flow::multi_replica_flow`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use mcp_fanout_testkit::{flow::multi_replica_flow, Deployment};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_from_every_replica_and_sql_reach_every_subscriber_in_log_order() {
    // The default schema name, on a database of its own.
    let pg = Deployment::fresh("cross").await.with_schema("mcp_fanout");
    let replicas = pg.replicas("cross-", 3, &[]).await;
    multi_replica_flow(&pg, replicas).await;
}
