//! Contract §1: with an in-memory ring of 50 events per replica, bursts of 10×
//! the ring reach every healthy subscriber on the connection it already has — nobody is
//! disconnected, nothing lost, doubled or reordered. Two bursts: 500 events committed in one SQL
//! transaction while LISTEN is up (one wake-up, 500 events to read), then 600 events committed
//! during a real LISTEN outage (the LISTEN role is made `NOLOGIN` and its backends terminated, so
//! the bridge cannot reconnect until it is allowed again) and read by the catch-up after the
//! reconnect. The LISTEN role has no privilege on the schema (enough for `LISTEN`), so the bridge
//! cannot prepare its read there: it says so and reads the log through the pool, on every
//! connection. Runs on a cluster of its own (it changes a role's login right).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::postgres::sql_publish;
use mcp_fanout_testkit::{expect_exactly, follow_all, Deployment, PgCluster, Replica, SOON};
use serde_json::json;

const RING: usize = 50;
const PER_REPLICA: usize = 2;

async fn publish_in_transactions(pg: &Deployment, tag: &str, transactions: usize, per_tx: usize) {
    let mut client = pg.client().await;
    for t in 0..transactions {
        let tx = client.transaction().await.expect("BEGIN");
        for i in 0..per_tx {
            sql_publish(
                &tx,
                &pg.schema,
                "notifications/test/burst",
                Some(&json!({ "tag": tag, "tx": t, "i": i, "pad": "x".repeat(200) })),
                None,
                None,
            )
            .await
            .expect("publish in the burst");
        }
        tx.commit().await.expect("COMMIT the burst");
    }
}

async fn metric(r: &Replica, name: &str) -> f64 {
    r.metric(name)
        .await
        .unwrap_or_else(|e| panic!("{}: metrics: {e}", r.label()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bursts_of_ten_rings_reach_every_subscriber_without_a_disconnect() {
    let cluster = PgCluster::start().await.expect("own Postgres cluster");
    let db = cluster.fresh_database().await.expect("database");
    let pg = Deployment::on(cluster.server(), &db, "ring");
    // LISTEN as a role of its own, so the test can lock it out.
    let listener = pg
        .server
        .create_login_role("listener")
        .await
        .expect("create the LISTEN role");
    let listen_url = pg.server.url_as(&listener, &pg.db);
    let ring = RING.to_string();
    let replicas = pg
        .replicas(
            "ring-",
            2,
            &[
                ("FANOUT_MEMORY_EVENTS", ring.as_str()),
                ("FANOUT_LISTEN_DATABASE_URL", listen_url.as_str()),
                ("FANOUT_DB_TIMEOUT_MS", "2000"),
            ],
        )
        .await;
    let refs: Vec<&Replica> = replicas.iter().collect();
    for r in &refs {
        r.wait_for_log("the bridge reads through the pool", SOON, |v| {
            v.pointer("/fields/message")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|m| m.contains("the bridge reads it through the pool"))
        })
        .await
        .expect(
            "a LISTEN role that cannot read the log: the replica says it reads through the pool",
        );
    }
    let followers = follow_all(&refs, PER_REPLICA).await;

    // Burst 1: 10× the ring in one transaction, LISTEN up.
    publish_in_transactions(&pg, "one-tx", 1, 10 * RING).await;

    // Burst 2: 12× the ring while no LISTEN connection can exist.
    pg.psql(&format!("ALTER ROLE {listener} NOLOGIN")).await;
    let killed = pg
        .server
        .terminate_app(&pg.db, "mcp-fanout-listen")
        .await
        .expect("terminate LISTEN");
    assert_eq!(killed, replicas.len(), "one LISTEN backend per replica");
    for r in &replicas {
        r.wait_listen(false, SOON)
            .await
            .unwrap_or_else(|e| panic!("{}: LISTEN is down: {e}", r.label()));
    }
    let mut catch_up_before = Vec::new();
    for r in &replicas {
        catch_up_before.push(metric(r, "mcp_fanout_catch_up_events_total").await);
    }
    // Committed (each COMMIT awaited) while LISTEN is down: nothing else to wait for.
    publish_in_transactions(&pg, "outage", 12, RING).await;
    pg.psql(&format!("ALTER ROLE {listener} LOGIN")).await;
    for r in &replicas {
        r.wait_listen(true, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{}: LISTEN reconnects once allowed: {e}", r.label()));
    }

    let log = pg.log_ids().await;
    assert_eq!(log.len(), 22 * RING, "both bursts are in the log");
    let seen = expect_exactly(followers, &log, Duration::from_secs(25), true).await;
    assert_eq!(seen.len(), replicas.len() * PER_REPLICA);

    for (r, before) in replicas.iter().zip(catch_up_before) {
        let after = metric(r, "mcp_fanout_catch_up_events_total").await;
        assert!(
            after - before >= (12 * RING) as f64,
            "{}: the reconnect caught up {} events (mcp_fanout_catch_up_events_total {before} → {after}); expected the {} committed during the outage",
            r.label(),
            after - before,
            12 * RING
        );
        let dropped = metric(r, "mcp_fanout_subscribers_dropped_total").await;
        assert_eq!(
            dropped,
            0.0,
            "{}: no subscriber was dropped for a burst larger than the ring",
            r.label()
        );
        r.wait_subscribers(PER_REPLICA as u64, SOON)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{}: the same subscribers are still connected: {e}",
                    r.label()
                )
            });
    }
    drop(seen);
}
