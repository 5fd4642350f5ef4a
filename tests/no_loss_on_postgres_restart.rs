//! Contract §5, §7.2, §7.5: Postgres is stopped and started again while
//! subscribers stay connected and publishers keep publishing. While it is down: publish answers
//! `503` `database_unavailable` within the DB timeout, `/readyz` stays `200`, the LISTEN gauge
//! drops, and every open stream keeps getting keep-alive comments. After the restart: a publish
//! retried with its Idempotency-Key — one that got the `503`, one whose answer was "lost" before
//! the outage, single or batch — is not doubled; everything committed is delivered to every
//! subscriber exactly once, in order, on the same connection. Runs on a cluster of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::sync::Arc;
use std::time::Duration;

use mcp_fanout_testkit::{
    error_code, expect_exactly, follow_all,
    load::{check_load_against_log, Load},
    Deployment, PgCluster, PublishOptions, Replica, SOON,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::time::Instant;

const DB_TIMEOUT_MS: u64 = 1000;
/// How fast a publish must fail while the database is down: the DB timeout plus scheduling slack.
const FAIL_FAST: Duration = Duration::from_millis(2 * DB_TIMEOUT_MS);
/// How long Postgres stays down.
const OUTAGE: Duration = Duration::from_millis(3500);

fn keyed(key: &str) -> PublishOptions {
    PublishOptions {
        idempotency_key: Some(key.to_string()),
        ..PublishOptions::default()
    }
}

async fn publish_timed(r: &Replica, body: &Value, key: &str) -> (StatusCode, Value, Duration) {
    let started = Instant::now();
    let (status, v) = r
        .publish_with(body, &keyed(key))
        .await
        .unwrap_or_else(|e| panic!("{}: publish with key {key}: {e}", r.label()));
    (status, v, started.elapsed())
}

fn id_of(v: &Value) -> String {
    v.get("id")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

fn ids_of(v: &Value) -> Vec<String> {
    v.get("ids")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no ids in {v}"))
        .iter()
        .map(|i| i.as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_restart_fails_fast_keeps_streams_and_loses_or_doubles_nothing() {
    let cluster = PgCluster::start().await.expect("own Postgres cluster");
    let db = cluster.fresh_database().await.expect("database");
    let pg = Deployment::on(cluster.server(), &db, "restart");
    let timeout = DB_TIMEOUT_MS.to_string();
    let replicas = pg
        .replicas(
            "restart-",
            2,
            &[
                ("FANOUT_DB_TIMEOUT_MS", timeout.as_str()),
                ("FANOUT_KEEPALIVE_SECS", "1"),
            ],
        )
        .await;
    let refs: Vec<&Replica> = replicas.iter().collect();
    let followers = follow_all(&refs, 2).await;
    let r0 = &replicas[0];

    // Published before the outage; the client "never saw" the answer and will retry after it.
    let lost_body = json!({"method": "notifications/test/lost_answer", "params": {"k": "lost"}});
    let (status, v, _) = publish_timed(r0, &lost_body, "lost-answer").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let lost_id = id_of(&v);

    // Background load through both replicas; it runs across the outage and retries with its keys.
    let replicas: Vec<Arc<Replica>> = replicas.into_iter().map(Arc::new).collect();
    let (r0, r1) = (Arc::clone(&replicas[0]), Arc::clone(&replicas[1]));
    let load = Load::start(&replicas, 1, "restart", Some(&pg), Duration::from_secs(40));
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.stop().await.expect("stop Postgres (fast shutdown)");
    let down_at = Instant::now();

    // Publish while down: a fast 503 database_unavailable, single and batch.
    let down_single =
        json!({"method": "notifications/test/during_outage", "params": {"k": "single"}});
    let down_batch = json!([
        {"method": "notifications/test/during_outage", "params": {"k": "batch", "i": 0}},
        {"method": "notifications/test/during_outage", "params": {"k": "batch", "i": 1}},
        {"method": "notifications/test/during_outage", "params": {"k": "batch", "i": 2}}
    ]);
    for (r, body, key) in [
        (&r0, &down_single, "down-single"),
        (&r1, &down_batch, "down-batch"),
    ] {
        let (status, v, took) = publish_timed(r, body, key).await;
        assert_eq!(
            (status, error_code(&v)),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("database_unavailable")
            ),
            "{}: publish while Postgres is down: {v}",
            r.label()
        );
        assert!(
            took <= FAIL_FAST,
            "{}: the 503 took {took:?}, more than {FAIL_FAST:?} (FANOUT_DB_TIMEOUT_MS={DB_TIMEOUT_MS})",
            r.label()
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("nothing was published")),
            "{}: a refused publish says nothing was published (a retry is safe): {v}",
            r.label()
        );
    }
    // A poll is refused alike, without claiming a publish it never attempted.
    let poll = r0.poll("timeout=0").await.expect("poll while down");
    let v: Value = serde_json::from_slice(&poll.body).unwrap_or(Value::Null);
    assert_eq!(
        (poll.status.as_u16(), error_code(&v)),
        (503, Some("database_unavailable")),
        "a poll while Postgres is down: {v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unavailable") && !m.contains("published")),
        "a poll's refusal speaks of the database, not of a publish: {v}"
    );
    for r in &replicas {
        assert_eq!(
            r.readyz().await.expect("/readyz"),
            StatusCode::OK,
            "{}: a database outage does not make /readyz fail",
            r.label()
        );
        r.wait_listen(false, SOON)
            .await
            .unwrap_or_else(|e| panic!("{}: LISTEN gauge drops during the outage: {e}", r.label()));
    }
    let elapsed = down_at.elapsed();
    if elapsed < OUTAGE {
        tokio::time::sleep(OUTAGE - elapsed).await;
    }
    let up_at = Instant::now();
    cluster.start_again().await.expect("start Postgres again");

    for r in &replicas {
        r.wait_listen(true, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{}: LISTEN reconnects after the restart: {e}", r.label()));
    }

    // Retries with the same keys: published once, the same ids every time.
    let single_id = {
        let (status, v, _) = wait_ok(&r0, &down_single, "down-single").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let id = id_of(&v);
        let (status, again, _) = publish_timed(&r1, &down_single, "down-single").await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!(
            id_of(&again),
            id,
            "a second retry (other replica) returns the same id"
        );
        id
    };
    let batch_ids = {
        let (status, v, _) = wait_ok(&r1, &down_batch, "down-batch").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let ids = ids_of(&v);
        let (_, again, _) = publish_timed(&r0, &down_batch, "down-batch").await;
        assert_eq!(ids_of(&again), ids, "a retried batch returns the same ids");
        ids
    };
    let (status, v, _) = publish_timed(&r1, &lost_body, "lost-answer").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        id_of(&v),
        lost_id,
        "a publish whose answer was lost, retried after the restart, is not doubled"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;
    let last = r0
        .publish_ok(&mcp_fanout_testkit::note(
            "notifications/test/final",
            "restart",
            0,
        ))
        .await
        .expect("final publish");

    check_load_against_log(&pg, &report).await;
    let bad: Vec<_> = report
        .failures
        .iter()
        .filter(|f| !(f.status == 503 && f.code == "database_unavailable") || f.took > FAIL_FAST)
        .collect();
    assert!(
        bad.is_empty(),
        "while Postgres was down every publish must answer 503 database_unavailable within {FAIL_FAST:?}; these did not: {bad:?}"
    );
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.at >= down_at && f.at <= up_at),
        "the background load saw the outage (failures: {})",
        report.failures.len()
    );

    let rows = pg
        .server
        .log_events_after(&pg.db, &pg.schema, 0)
        .await
        .expect("read the log");
    let count = |k: &str| {
        rows.iter()
            .filter(|r| {
                r.params
                    .as_deref()
                    .is_some_and(|p| p.contains(&format!("\"k\":\"{k}\"")))
            })
            .count()
    };
    assert_eq!(
        count("single"),
        1,
        "the retried single publish is in the log once"
    );
    assert_eq!(count("batch"), 3, "the retried batch is in the log once");
    assert_eq!(
        count("lost"),
        1,
        "the publish whose answer was lost is in the log once"
    );
    let log: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    for id in batch_ids.iter().chain([&single_id, &lost_id, &last]) {
        assert!(log.contains(id), "{id} answered but not in the log");
    }

    let seen = expect_exactly(followers, &log, Duration::from_secs(20), true).await;
    for f in &seen {
        let keepalives = f.keepalives_between(down_at, up_at);
        assert!(
            keepalives >= 2,
            "`{}`: {keepalives} keep-alive comments during the {:?} outage (FANOUT_KEEPALIVE_SECS=1); the stream must stay open with keep-alives",
            f.label,
            up_at - down_at
        );
    }
}

/// Retries a publish with its key until it is answered (the pool may need a moment after the
/// restart); any answer other than 503 is returned at once.
async fn wait_ok(r: &Replica, body: &Value, key: &str) -> (StatusCode, Value, Duration) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, v, took) = publish_timed(r, body, key).await;
        if status != StatusCode::SERVICE_UNAVAILABLE || Instant::now() >= deadline {
            return (status, v, took);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
