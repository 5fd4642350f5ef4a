//! The LISTEN bridge fails for real — the log table's `committed_at` column is changed to `text` in
//! the test's own database, so the rows the bridge reads no longer decode — while a subscriber is
//! connected and events are published from SQL (which only the bridge delivers: the replica's own
//! HTTP publishes would reach its subscriber from its writer, without a read). The failure is logged with its cause and counted
//! (`mcp_fanout_task_restarts_total{task="bridge"}`), the bridge is restarted with backoff (and
//! fails again while the column stays wrong), `/readyz` answers `503` and the LISTEN gauge is 0
//! meanwhile; the replica keeps serving. Once the column is restored the bridge recovers: `/readyz`
//! is `200` again and the subscriber receives every event — before, during and after the fault —
//! exactly once, in order, on its one connection.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::{wait_until, Deployment, EventId, Follower, SseRequest, SOON};
use reqwest::StatusCode;
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(60);
const RESTARTS: &str = "mcp_fanout_task_restarts_total{task=\"bridge\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_whose_rows_stop_decoding_is_restarted_counted_unready_and_recovers_exactly() {
    let pg = Deployment::fresh("supervise").await.with_admin();
    let r = pg
        .replica("supervised", &[("FANOUT_KEEPALIVE_SECS", "1")])
        .await;
    let s = &pg.schema;

    let conn = r
        .subscribe(&SseRequest::mcp().session("supervised-sub"))
        .await
        .expect("the subscriber connects");
    assert_eq!(conn.status(), 200);
    let follower = Follower::spawn("subscriber", conn);
    r.wait_subscribers(1, SOON).await.expect("1 subscriber");
    for i in 0..3 {
        r.publish_ok(&json!({ "method": "notifications/test/before", "params": { "i": i } }))
            .await
            .expect("publish before the fault");
    }
    assert_eq!(
        r.metric(RESTARTS).await.expect("metrics").unwrap_or(0.0),
        0.0,
        "no restarts before the fault"
    );

    // The fault: rows of the log no longer decode as this version expects.
    pg.psql(&format!(
        "ALTER TABLE {s}.events ALTER COLUMN committed_at TYPE text USING committed_at::text"
    ))
    .await;
    let sql = pg.client().await;
    for i in 0..5 {
        pg.sql_publish(&sql, "notifications/test/during", &json!({ "i": i }))
            .await;
    }
    wait_until("/readyz 503 while the bridge fails", PATIENCE, || async {
        matches!(r.readyz().await, Ok(StatusCode::SERVICE_UNAVAILABLE))
    })
    .await
    .expect("/readyz answers 503 while the bridge is down");
    let line = r
        .wait_for_log("the bridge's failure, with its cause", PATIENCE, |v| {
            let text = v.to_string();
            text.contains("\"task\":\"bridge\"") && text.contains("committed_at")
        })
        .await
        .expect("the failure is logged with the task and its cause");
    assert_eq!(line["level"], "ERROR", "{line}");
    r.wait_metric(RESTARTS, PATIENCE, |v| v >= 1.0)
        .await
        .expect("the failure is counted");
    r.wait_listen(false, SOON)
        .await
        .expect("the LISTEN gauge says the bridge is down");
    // Still failing while the column stays wrong: restarted again (with backoff), still unready.
    r.wait_metric(RESTARTS, PATIENCE, |v| v >= 2.0)
        .await
        .expect("the bridge is restarted and fails again");
    assert_eq!(
        r.readyz().await.expect("/readyz"),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        r.get("/healthz").await.expect("/healthz").status,
        StatusCode::OK,
        "the process keeps serving"
    );

    // The repair.
    pg.psql(&format!(
        "ALTER TABLE {s}.events ALTER COLUMN committed_at DROP DEFAULT, \
         ALTER COLUMN committed_at TYPE timestamptz USING committed_at::timestamptz, \
         ALTER COLUMN committed_at SET DEFAULT clock_timestamp()"
    ))
    .await;
    r.wait_ready(PATIENCE)
        .await
        .expect("/readyz 200 once the bridge works again");
    r.wait_listen(true, SOON)
        .await
        .expect("the LISTEN gauge is back");
    let last = r
        .publish_ok(&json!({ "method": "notifications/test/after" }))
        .await
        .expect("publish after the repair");

    let followed = follower
        .finish(last.parse::<EventId>().expect("an event id").seq, PATIENCE)
        .await
        .expect("follower");
    assert!(followed.reached, "{}", followed.summary());
    assert!(followed.end.is_none(), "{}", followed.summary());
    followed.tally(pg.log_ids().await).assert_exact();
}
