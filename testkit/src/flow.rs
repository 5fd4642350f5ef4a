//! The multi-replica flow (also run through PgBouncer): subscribers on
//! every replica, HTTP and SQL publishers at once, then every subscriber got exactly the log.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::delivery::{assert_identical_frames, expect_exactly, follow_all};
use crate::deployment::Deployment;
use crate::follow::Followed;
use crate::postgres;
use crate::replica::Replica;
use crate::tally::seq_of;

/// One event of the flow: its origin, a number and text that needs escaping.
fn flow_body(origin: &str, n: usize) -> Value {
    json!({
        "method": "notifications/test/cross",
        "params": { "origin": origin, "n": n, "text": "ünïcödé \"q\" \\ \n" }
    })
}

/// One publisher task of [`multi_replica_flow`]: 15 singles and two batches of 5.
async fn flow_publisher(r: Arc<Replica>, task: usize) -> Vec<String> {
    let origin = format!("{}#{task}", r.label());
    let mut ids = Vec::new();
    for i in 0..15 {
        ids.push(
            r.publish_ok(&flow_body(&origin, i))
                .await
                .unwrap_or_else(|e| panic!("{origin}: publish {i}: {e}")),
        );
        if i == 3 || i == 10 {
            let batch: Vec<Value> = (0..5).map(|k| flow_body(&origin, 1000 * i + k)).collect();
            let got = r
                .publish_batch_ok(&batch)
                .await
                .unwrap_or_else(|e| panic!("{origin}: batch: {e}"));
            assert!(
                got.windows(2).all(|w| seq_of(&w[0]) < seq_of(&w[1])),
                "{origin}: a batch's ids increase: {got:?}"
            );
            ids.extend(got);
        }
    }
    ids
}

/// The multi-replica flow (also run through PgBouncer): two subscribers on every replica; three
/// publisher tasks per replica and a SQL publisher (autocommit, plus one transaction of five) at
/// the same time; then every answered id is in the log, the log holds nothing else, and every
/// subscriber got exactly the log, in order, with identical bytes everywhere.
pub async fn multi_replica_flow(pg: &Deployment, replicas: Vec<Replica>) -> Vec<Followed> {
    let refs: Vec<&Replica> = replicas.iter().collect();
    let followers = follow_all(&refs, 2).await;
    assert_eq!(
        pg.log_ids().await,
        Vec::<String>::new(),
        "a fresh schema starts with an empty log"
    );

    let replicas: Vec<Arc<Replica>> = replicas.into_iter().map(Arc::new).collect();
    let mut tasks = Vec::new();
    for r in &replicas {
        for t in 0..3 {
            tasks.push(tokio::spawn(flow_publisher(Arc::clone(r), t)));
        }
    }
    let sql = {
        let pg = pg.clone();
        tokio::spawn(async move {
            let mut client = pg.client().await;
            let mut ids = Vec::new();
            for i in 0..20 {
                ids.push(
                    pg.sql_publish(
                        &client,
                        "notifications/test/sql",
                        &json!({ "origin": "sql", "n": i }),
                    )
                    .await,
                );
                if i == 10 {
                    let tx = client.transaction().await.expect("BEGIN");
                    for k in 0..5 {
                        ids.push(
                            postgres::sql_publish(
                                &tx,
                                &pg.schema,
                                "notifications/test/sql_tx",
                                Some(&json!({ "origin": "sql-tx", "n": k })),
                                None,
                                None,
                            )
                            .await
                            .expect("publish inside a transaction"),
                        );
                    }
                    tx.commit().await.expect("COMMIT");
                }
            }
            ids
        })
    };

    let mut published: Vec<String> = Vec::new();
    for t in tasks {
        published.extend(t.await.expect("publisher task"));
    }
    published.extend(sql.await.expect("SQL publisher task"));

    // What the publishers were told is exactly what the log holds.
    let log = pg.log_ids().await;
    let distinct: HashSet<&String> = published.iter().collect();
    assert_eq!(
        distinct.len(),
        published.len(),
        "every publish answered a different id"
    );
    let in_log: HashSet<&String> = log.iter().collect();
    let unknown: Vec<&&String> = distinct.difference(&in_log).collect();
    assert!(
        unknown.is_empty(),
        "ids answered to publishers but absent from the log: {unknown:?}"
    );
    assert_eq!(
        log.len(),
        published.len(),
        "the log holds exactly the published events"
    );
    let expected_total = replicas.len() * 3 * (15 + 10) + 25;
    assert_eq!(published.len(), expected_total, "events published");

    let seen = expect_exactly(followers, &log, Duration::from_secs(20), true).await;
    assert_eq!(seen.len(), 2 * replicas.len());
    assert_identical_frames(&seen);
    let epoch = pg
        .server
        .epoch(&pg.db, &pg.schema)
        .await
        .expect("read the epoch");
    for id in &log {
        assert!(
            id.starts_with(&format!("{epoch}-")),
            "{id} has epoch {epoch}"
        );
    }
    seen
}
