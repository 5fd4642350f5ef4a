//! Contract §1, §7.2: while events are published continuously (HTTP through
//! both replicas, retried with their Idempotency-Key when a publish fails; and SQL), every LISTEN
//! backend is terminated with `pg_terminate_backend`, repeatedly — then, in a second round, every
//! client backend of the database (pool, LISTEN, the SQL publisher). Every subscriber on every
//! replica stays connected and receives exactly the log: zero loss, zero duplicates, order intact.
//! Runs on a cluster of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::sync::Arc;
use std::time::Duration;

use mcp_fanout_testkit::{
    expect_exactly, follow_all, interesting_logs,
    load::{check_load_against_log, Load},
    Deployment, PgCluster, Replica, SOON,
};

const LISTEN_KILLS: usize = 4;
const ALL_CLIENT_KILLS: usize = 2;

async fn wait_listening(replicas: &[Arc<Replica>]) {
    for r in replicas {
        r.wait_listen(true, SOON)
            .await
            .unwrap_or_else(|e| panic!("{}: LISTEN connected again: {e}", r.label()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminating_listen_and_client_backends_loses_and_doubles_nothing() {
    let cluster = PgCluster::start().await.expect("own Postgres cluster");
    let db = cluster.fresh_database().await.expect("database");
    let pg = Deployment::on(cluster.server(), &db, "drop");
    let replicas = pg
        .replicas("drop-", 2, &[("FANOUT_DB_TIMEOUT_MS", "1500")])
        .await;
    let refs: Vec<&Replica> = replicas.iter().collect();
    let followers = follow_all(&refs, 2).await;
    let replicas: Vec<Arc<Replica>> = replicas.into_iter().map(Arc::new).collect();
    wait_listening(&replicas).await;

    let load = Load::start(&replicas, 2, "drop", Some(&pg), Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Round 1: every LISTEN backend, repeatedly (each time once all are back).
    for round in 0..LISTEN_KILLS {
        wait_listening(&replicas).await;
        let killed = pg
            .server
            .terminate_app(&pg.db, "mcp-fanout-listen")
            .await
            .expect("terminate LISTEN backends");
        assert!(
            killed >= replicas.len(),
            "round {round}: {killed} LISTEN backends terminated; one per replica expected (application_name mcp-fanout-listen)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Round 2: every client backend of the database (pool, LISTEN, the SQL publisher).
    for round in 0..ALL_CLIENT_KILLS {
        wait_listening(&replicas).await;
        let killed = pg
            .server
            .terminate_all_clients(&pg.db)
            .await
            .expect("terminate every client backend");
        assert!(
            killed > replicas.len(),
            "round {round}: pool and LISTEN backends terminated (got {killed})"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.stop().await;

    wait_listening(&replicas).await;
    for r in &replicas {
        let reconnects = r
            .metric("mcp_fanout_listen_reconnects_total")
            .await
            .expect("metrics")
            .unwrap_or(0.0);
        assert!(
            reconnects >= (LISTEN_KILLS + ALL_CLIENT_KILLS) as f64,
            "{}: mcp_fanout_listen_reconnects_total = {reconnects}, expected at least {} (one per kill)",
            r.label(),
            LISTEN_KILLS + ALL_CLIENT_KILLS
        );
    }
    // A last event through each replica: the pools work again, and it closes the run.
    for r in &replicas {
        r.publish_ok(&mcp_fanout_testkit::note(
            "notifications/test/final",
            "drop",
            0,
        ))
        .await
        .unwrap_or_else(|e| panic!("{}: publish after the faults: {e}", r.label()));
    }

    check_load_against_log(&pg, &report).await;
    let non_503: Vec<_> = report
        .failures
        .iter()
        .filter(|f| !(f.status == 503 && f.code == "database_unavailable"))
        .collect();
    assert!(
        non_503.is_empty(),
        "a publish that failed because its backend was terminated answers 503 database_unavailable, got: {non_503:?}"
    );
    let log = pg.log_ids().await;
    assert!(
        report.ok.len() > 100,
        "the load kept publishing through the faults ({} HTTP publishes answered 200, {} failed attempts, {} SQL)",
        report.ok.len(),
        report.failures.len(),
        report.sql_ok.len()
    );
    eprintln!(
        "no_loss_on_listen_drop: {} events in the log, {} HTTP ok, {} failed attempts retried, {} SQL ok, {} SQL errors",
        log.len(),
        report.ok.len(),
        report.failures.len(),
        report.sql_ok.len(),
        report.sql_errors.len()
    );
    let refs: Vec<&Replica> = replicas.iter().map(|r| r.as_ref()).collect();
    let logs = interesting_logs(&refs);
    let seen = tokio::spawn({
        let log = log.clone();
        async move { expect_exactly(followers, &log, Duration::from_secs(20), true).await }
    })
    .await;
    if let Err(e) = seen {
        panic!("{e}\nreplica log lines about LISTEN, warnings and errors:\n{logs}");
    }
}
