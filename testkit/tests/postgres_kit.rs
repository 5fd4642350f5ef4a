//! Self-tests of the kit's throwaway Postgres: a cluster starts, serves SQL, stops and starts
//! again on the same port with its data, is gone (process and directory) after drop; the shared
//! server hands out isolated databases; PgBouncer in transaction mode forwards to a cluster.

use std::time::Duration;

use mcp_fanout_testkit::postgres::{self, PgBouncer, PgCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_starts_stops_restarts_and_cleans_up() {
    let cluster = PgCluster::start().await.expect("cluster starts");
    let db = cluster.fresh_database().await.expect("create database");
    cluster
        .psql(&db, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")
        .await
        .expect("create table");
    assert_eq!(
        cluster
            .psql(&db, "SELECT x, 'a' FROM t ORDER BY x")
            .await
            .expect("select"),
        "1|a\n2|a"
    );
    let user = cluster
        .psql("postgres", "SELECT current_user")
        .await
        .expect("whoami");
    assert_eq!(user, "postgres");

    let port = cluster.port();
    cluster.stop().await.expect("fast shutdown");
    assert!(!cluster.is_running());
    assert!(
        cluster.server().connect(&db).await.is_err(),
        "a stopped cluster refuses connections"
    );
    cluster.start_again().await.expect("start again");
    assert_eq!(cluster.port(), port, "same port after a restart");
    assert_eq!(
        cluster
            .psql(&db, "SELECT count(*) FROM t")
            .await
            .expect("data survives"),
        "2"
    );

    // Terminating backends by application name spares the kit's own connections.
    let n = cluster
        .server()
        .terminate_app(&db, "nobody")
        .await
        .expect("terminate");
    assert_eq!(n, 0);

    let pid = cluster.pid().expect("running");
    let dir = cluster.dir().to_path_buf();
    drop(cluster);
    assert!(!dir.exists(), "the cluster's directory is removed on drop");
    // SAFETY: kill(2) with signal 0 only checks whether the process exists.
    let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    assert!(!alive, "the postmaster is gone after drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_server_hands_out_separate_databases() {
    let (server, a) = postgres::shared_database().await.expect("db a");
    let (server2, b) = postgres::shared_database().await.expect("db b");
    assert!(std::ptr::eq(server, server2), "one server per process");
    assert_ne!(a, b);
    server
        .psql(&a, "CREATE TABLE only_in_a (x int)")
        .await
        .expect("create");
    let in_b = server
        .psql(&b, "SELECT to_regclass('only_in_a') IS NULL")
        .await
        .expect("query b");
    assert_eq!(in_b, "t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_forwards_in_transaction_mode() {
    let cluster = PgCluster::start().await.expect("cluster");
    let db = cluster.fresh_database().await.expect("db");
    let bouncer = PgBouncer::start(&cluster).await.expect("pgbouncer starts");
    let via = bouncer
        .server()
        .psql(&db, "SELECT current_database(), inet_server_port()")
        .await
        .expect("query through pgbouncer");
    assert_eq!(via, format!("{db}|{}", cluster.port()));
    let pools = bouncer.show("POOLS").await.expect("SHOW POOLS");
    assert!(
        pools
            .iter()
            .any(|r| r.first().cloned().flatten().as_deref() == Some(db.as_str())),
        "a pool for {db}: {pools:?}"
    );
    let config = bouncer.show("CONFIG").await.expect("SHOW CONFIG");
    assert!(
        config.iter().any(
            |r| r.first().cloned().flatten().as_deref() == Some("pool_mode")
                && r.get(1).cloned().flatten().as_deref() == Some("transaction")
        ),
        "pool_mode = transaction"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}
