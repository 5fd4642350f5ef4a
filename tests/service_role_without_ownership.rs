//! Contract §2 (the chart's `database.migrationUrl`, `FANOUT_MIGRATE=skip`): the schema is made by
//! one role and the replicas run as another that owns nothing, granted only what docs/postgres.md
//! lists (`USAGE` on the schema, `SELECT, INSERT, UPDATE, DELETE` on its tables). Every write path
//! works under that role: the keyless group commit (`append_events`, which keeps `EXECUTE` for
//! `PUBLIC` because it grants nothing), publishes with idempotency keys (a retry answered with the
//! original ids), SQL publishes beside them; every subscriber on both replicas gets exactly the log.
//! Sessions too: a stream's claim and a poll's bind draw their generation from the schema's
//! sequence (`USAGE` for `PUBLIC`, as `append_events`' `EXECUTE`), and a claim on the other replica
//! ends the first stream.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::identity::{open_stream, poll_ok, Who};
use mcp_fanout_testkit::{flow::multi_replica_flow, Deployment, PublishOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_run_as_a_role_granted_the_tables_of_a_schema_another_role_made() {
    let pg = Deployment::fresh("svcrole").await;
    // The owner (the kit's superuser) makes the schema, as the migration hook does.
    drop(pg.replica("svcrole-owner", &[]).await);

    let role = pg
        .server
        .create_login_role("fanout_svc")
        .await
        .expect("create the service role");
    let s = &pg.schema;
    pg.client()
        .await
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {s} TO {role}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {role};"
        ))
        .await
        .expect("grant the documented privileges");
    let url = pg.server.url_as(&role, &pg.db);
    let as_service = [("DATABASE_URL", url.as_str()), ("FANOUT_MIGRATE", "skip")];
    let replicas = pg.replicas("svcrole-", 2, &as_service).await;

    // Keyed publishes first (the two-trip transaction), then the shared flow (keyless singles and
    // batches on every replica, SQL publishes beside them; every subscriber gets exactly the log).
    let keyed = PublishOptions {
        idempotency_key: Some("svc-key".to_string()),
        ..PublishOptions::default()
    };
    let body = json!({ "method": "notifications/test/keyed", "params": { "n": 1 } });
    let (status, first) = replicas[0]
        .publish_with(&body, &keyed)
        .await
        .expect("keyed publish");
    assert_eq!(status, 200, "a keyed publish as the service role: {first}");
    let (status, retry) = replicas[1]
        .publish_with(&body, &keyed)
        .await
        .expect("keyed retry");
    assert_eq!(status, 200, "its retry on the other replica: {retry}");
    assert_eq!(
        retry["id"], first["id"],
        "the retry answers the original id"
    );
    // Sessions: a claim on each replica (the second ends the first stream), a poll's bind.
    let who = Who::header_mode("a session's client", None, Some("svc-session"));
    let mut first = open_stream(&replicas[0], &who).await;
    let second = open_stream(&replicas[1], &who).await;
    first
        .read_to_end(Duration::from_secs(15))
        .await
        .expect("the claim on the other replica ends the first stream");
    drop(second);
    poll_ok(
        &replicas[1],
        &Who::header_mode("a poll", None, Some("svc-polled")),
        "timeout=0",
    )
    .await;
    for r in &replicas {
        r.wait_subscribers(0, Duration::from_secs(15))
            .await
            .expect("no stream left for the flow");
    }
    // The flow starts from an empty log: take the keyed event out again (as the owner).
    pg.client()
        .await
        .batch_execute(&format!(
            "DELETE FROM {s}.events; DELETE FROM {s}.idempotency;"
        ))
        .await
        .expect("empty the log for the flow");

    multi_replica_flow(&pg, replicas).await;
}
