//! Contract §6, §7.1: a replica delivers its own commits to its subscribers straight from its
//! writer, without waiting for the NOTIFY and its bridge's read of the log, and only when that
//! keeps its ring gapless; the bridge delivers the rest. Replicas A and B on one database, two
//! subscribers each; 30 events published one by one on A, interleaved with publishes from SQL
//! (which only the bridges can deliver): every subscriber gets the whole log once, in order.
//! B's bridge read every event; A's read fewer than A published (the rest went out from A's
//! writer).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use mcp_fanout_testkit::{body, expect_exactly, follow_all, Deployment, SOON};

const BRIDGE_EVENTS: &str = "mcp_fanout_bridge_events_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_commits_go_out_from_the_writer_and_the_log_order_holds() {
    let pg = Deployment::fresh("own_commits").await.with_admin();
    let replicas = pg.replicas("own-", 2, &[]).await;
    let (a, b) = (&replicas[0], &replicas[1]);
    let followers = follow_all(&[a, b], 2).await;
    let sql = pg.client().await;
    let mut from_a = 0;
    for i in 0..30 {
        a.publish_ok(&body("own", i)).await.expect("publish on A");
        from_a += 1;
        if i % 5 == 4 {
            let params = serde_json::json!({ "tag": "sql", "n": i });
            pg.sql_publish(&sql, "notifications/test/targeted", &params)
                .await;
        }
    }
    let log = pg.log_ids().await;
    assert_eq!(log.len(), from_a + 6);
    expect_exactly(followers, &log, SOON, true).await;

    let total = log.len() as f64;
    let read_by_b = b
        .wait_metric(BRIDGE_EVENTS, SOON, |v| v >= total)
        .await
        .expect("B's bridge read the whole log");
    assert_eq!(read_by_b, total, "B delivers everything through its bridge");
    let read_by_a = a
        .metric(BRIDGE_EVENTS)
        .await
        .expect("A's metrics")
        .unwrap_or(0.0);
    assert!(
        read_by_a < total,
        "A delivered some of its own commits from its writer (its bridge read {read_by_a} of {total})"
    );
}
