//! Contract §6: the multi-replica flow with `DATABASE_URL`
//! through PgBouncer in transaction pooling mode (migrations under a transaction-scoped advisory
//! lock, group-commit publishes, log reads, SQL publishes in and out of a transaction — all through
//! PgBouncer) and `FANOUT_LISTEN_DATABASE_URL` straight to Postgres. Runs on a cluster of its own.
//! Fails with a clear message when PgBouncer is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use mcp_fanout_testkit::{flow::multi_replica_flow, Deployment, PgBouncer, PgCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_multi_replica_flow_works_through_pgbouncer_in_transaction_mode() {
    let cluster = PgCluster::start().await.expect("own Postgres cluster");
    let db = cluster.fresh_database().await.expect("database");
    let bouncer = PgBouncer::start(&cluster).await.unwrap_or_else(|e| {
        panic!("PgBouncer is required for this acceptance test and could not start: {e}")
    });
    let config = bouncer.show("CONFIG").await.expect("SHOW CONFIG");
    assert!(
        config.iter().any(|r| {
            r.first().cloned().flatten().as_deref() == Some("pool_mode")
                && r.get(1).cloned().flatten().as_deref() == Some("transaction")
        }),
        "PgBouncer runs in transaction mode"
    );

    // Everything the test does in SQL goes through PgBouncer too.
    let pg = Deployment::on(bouncer.server(), &db, "bouncer");
    let direct = cluster.url(&db);
    let replicas = pg
        .replicas(
            "bouncer-",
            3,
            &[("FANOUT_LISTEN_DATABASE_URL", direct.as_str())],
        )
        .await;

    // The pools really are PgBouncer's clients; LISTEN is straight to Postgres.
    let clients = bouncer.show("CLIENTS").await.expect("SHOW CLIENTS");
    let pool_clients = clients
        .iter()
        .filter(|r| r.get(2).cloned().flatten().as_deref() == Some(db.as_str()))
        .count();
    assert!(
        pool_clients >= replicas.len(),
        "each replica's pool connects through PgBouncer ({pool_clients} clients on {db}: {clients:?})"
    );
    let listeners = cluster
        .server()
        .backends(&db, "mcp-fanout-listen")
        .await
        .expect("pg_stat_activity");
    assert_eq!(
        listeners,
        replicas.len(),
        "one direct LISTEN connection per replica"
    );

    multi_replica_flow(&pg, replicas).await;
}
