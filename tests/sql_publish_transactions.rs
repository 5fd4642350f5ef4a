//! Contract §6: `SELECT <schema>.publish(...)` inside the publisher's own
//! transaction — the event exists, and is delivered, exactly when that transaction commits.
//! Rolled back (explicitly, after an error, to a savepoint, or by the session dying): never
//! delivered, on any replica. Committed: delivered once, and not before the commit. Checked up to a
//! later marker event, against the log table.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::{
    expect_exactly, follow_all, note, postgres::sql_publish, Deployment, Replica, QUIET,
};
use serde_json::json;

const GONE: &str = "notifications/test/rolled_back";
const KEPT: &str = "notifications/test/committed";
const MARKER: &str = "notifications/test/marker";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolled_back_publishes_are_never_delivered_and_committed_ones_once() {
    let pg = Deployment::fresh("sqltx").await;
    let replicas = pg.replicas("sqltx-", 2, &[]).await;
    let refs: Vec<&Replica> = replicas.iter().collect();
    let followers = follow_all(&refs, 1).await;
    let s = pg.schema.clone();
    let mut client = pg.client().await;

    // 1. Explicit ROLLBACK.
    {
        let tx = client.transaction().await.expect("BEGIN");
        sql_publish(
            &tx,
            &s,
            GONE,
            Some(&json!({"case": "rollback"})),
            None,
            None,
        )
        .await
        .expect("publish in a transaction");
        tx.rollback().await.expect("ROLLBACK");
    }
    // 2. The transaction fails after the publish.
    {
        let tx = client.transaction().await.expect("BEGIN");
        sql_publish(&tx, &s, GONE, Some(&json!({"case": "error"})), None, None)
            .await
            .expect("publish in a transaction");
        assert!(
            tx.batch_execute("SELECT 1/0").await.is_err(),
            "division by zero aborts the transaction"
        );
        // COMMIT of an aborted transaction is a ROLLBACK (Postgres answers with that tag).
        let _ = tx.commit().await;
    }
    // 3. ROLLBACK TO SAVEPOINT, then a publish that commits.
    let kept_savepoint = {
        let mut tx = client.transaction().await.expect("BEGIN");
        {
            let sp = tx.savepoint("sp").await.expect("SAVEPOINT");
            sql_publish(
                &sp,
                &s,
                GONE,
                Some(&json!({"case": "savepoint"})),
                None,
                None,
            )
            .await
            .expect("publish in a savepoint");
            sp.rollback().await.expect("ROLLBACK TO SAVEPOINT");
        }
        let id = sql_publish(
            &tx,
            &s,
            KEPT,
            Some(&json!({"case": "after savepoint"})),
            None,
            None,
        )
        .await
        .expect("publish after the savepoint");
        tx.commit().await.expect("COMMIT");
        id
    };
    // 4. The session dies inside the transaction (the server rolls it back).
    {
        let doomed = pg.client().await;
        doomed.batch_execute("BEGIN").await.expect("BEGIN");
        sql_publish(
            &doomed,
            &s,
            GONE,
            Some(&json!({"case": "session died"})),
            None,
            None,
        )
        .await
        .expect("publish in a transaction");
        drop(doomed);
    }
    // 5. Committed, but only after a pause: nothing may be delivered before the COMMIT.
    let kept_late = {
        let tx = client.transaction().await.expect("BEGIN");
        let id = sql_publish(
            &tx,
            &s,
            KEPT,
            Some(&json!({"case": "late commit"})),
            None,
            None,
        )
        .await
        .expect("publish in a transaction");
        tokio::time::sleep(QUIET + Duration::from_millis(600)).await;
        for f in &followers {
            assert!(
                f.max_seq() < mcp_fanout_testkit::seq_of(&id),
                "`{}` received {id} (or later) before its transaction committed",
                f.label()
            );
        }
        tx.commit().await.expect("COMMIT");
        id
    };
    // A later event published over HTTP: every stream is read up to it.
    let marker = replicas[0]
        .publish_ok(&note(MARKER, "sqltx", 0))
        .await
        .expect("marker publish");

    let log = pg
        .server
        .log_events_after(&pg.db, &pg.schema, 0)
        .await
        .expect("read the log");
    let log_ids: Vec<String> = log.iter().map(|r| r.id.clone()).collect();
    assert_eq!(
        log_ids,
        vec![kept_savepoint.clone(), kept_late.clone(), marker.clone()],
        "the log holds exactly the committed events: {log:?}"
    );
    assert!(
        log.iter().all(|r| r.method != GONE),
        "no rolled-back event in the log: {log:?}"
    );

    let seen = expect_exactly(followers, &log_ids, Duration::from_secs(15), true).await;
    for f in &seen {
        let got: Vec<(String, String)> = f
            .events()
            .iter()
            .map(|e| {
                let msg = e.json().expect("event data is JSON");
                (
                    msg["method"].as_str().unwrap_or_default().to_string(),
                    msg["params"]["case"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (KEPT.to_string(), "after savepoint".to_string()),
                (KEPT.to_string(), "late commit".to_string()),
                (MARKER.to_string(), String::new()),
            ],
            "`{}`: only the committed events, once each, then the marker",
            f.label
        );
    }
}
