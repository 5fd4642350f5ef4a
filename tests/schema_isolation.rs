//! Contract §2, §6: two deployments with different `FANOUT_SCHEMA` on one
//! database — their own tables, epoch, seq numbering and NOTIFY channel — publishing at the same
//! time over HTTP and SQL: each subscriber sees exactly its own deployment's log and nothing of
//! the other's; a cursor from the other deployment is a resync, never the other's events.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::{
    expect_exactly, follow_all, poll_answer, publish_n, seq_of, Deployment, SOON,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schemas_on_one_database_never_see_each_others_events() {
    let a = Deployment::fresh("iso_a").await;
    let b = a.with_schema(&mcp_fanout_testkit::postgres::unique_name("iso_b"));
    let ra = a.replicas("iso-a", 2, &[]).await;
    let rb = b.replicas("iso-b", 1, &[]).await;
    let fa = follow_all(&ra.iter().collect::<Vec<_>>(), 1).await;
    let fb = follow_all(&rb.iter().collect::<Vec<_>>(), 2).await;

    let client = a.client().await;
    let (pa0, pa1, pb, sql) = tokio::join!(
        publish_n(&ra[0], "notifications/test/iso", "a0", 10),
        publish_n(&ra[1], "notifications/test/iso", "a1", 10),
        publish_n(&rb[0], "notifications/test/iso", "b", 10),
        async {
            let mut ids = (Vec::new(), Vec::new());
            for i in 0..5 {
                ids.0.push(
                    a.sql_publish(&client, "notifications/test/iso_sql_a", &json!({ "n": i }))
                        .await,
                );
                ids.1.push(
                    b.sql_publish(&client, "notifications/test/iso_sql_b", &json!({ "n": i }))
                        .await,
                );
            }
            ids
        }
    );

    let log_a = a.log_ids().await;
    let log_b = b.log_ids().await;
    assert_eq!(
        log_a.len(),
        pa0.len() + pa1.len() + sql.0.len(),
        "{}.events",
        a.schema
    );
    assert_eq!(log_b.len(), pb.len() + sql.1.len(), "{}.events", b.schema);
    for id in pa0.iter().chain(&pa1).chain(&sql.0) {
        assert!(
            log_a.contains(id),
            "{id} published to {} is in its log",
            a.schema
        );
    }
    for id in pb.iter().chain(&sql.1) {
        assert!(
            log_b.contains(id),
            "{id} published to {} is in its log",
            b.schema
        );
    }
    let epoch_a = a.server.epoch(&a.db, &a.schema).await.expect("epoch a");
    let epoch_b = b.server.epoch(&b.db, &b.schema).await.expect("epoch b");
    assert_ne!(epoch_a, epoch_b, "each schema has its own epoch");
    assert_eq!(seq_of(&log_a[0]), 1, "deployment a numbers its own log");
    assert_eq!(seq_of(&log_b[0]), 1, "deployment b numbers its own log");

    // (Kept alive: the streams stay open until the end of the test.)
    let _seen_a = expect_exactly(fa, &log_a, Duration::from_secs(15), true).await;
    let _seen_b = expect_exactly(fb, &log_b, Duration::from_secs(15), true).await;

    // A cursor of deployment a given to deployment b is another epoch: a resync, not a's events.
    let answer = poll_answer(&rb[0], &format!("after={}&timeout=0", log_a[0])).await;
    assert!(
        answer.events.iter().all(|e| e.id.is_none()),
        "only resync notifications (id null), never a's events: {:?}",
        answer.events
    );
    assert_eq!(answer.cursor, log_b[log_b.len() - 1], "cursor at b's head");
    for r in ra.iter().chain(&rb) {
        r.wait_subscribers(if r.label().starts_with("iso-b") { 2 } else { 1 }, SOON)
            .await
            .expect("subscribers still connected");
    }
}
