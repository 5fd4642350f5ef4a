//! Contract §7 (a slow or vanishing client never hurts anyone): clients that go away while their
//! read of the log waits on Postgres give its pooled connection back. Reads below the memory ring
//! go to the log, shared by every client reading the same page; such a read used to stop where
//! its last client left it, and a future nobody polls kept its pooled connection checked out for
//! ever (its timeout runs only when polled): a few clients at random old cursors, gone while
//! Postgres was slow, exhausted the pool, and every publish failed until a restart (found probing
//! the release binary in Postgres mode). Here the log is held (a lock) while 20 clients read at
//! 20 cursors and then reset their connections; once it is released, a publish and a deep read are
//! answered.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use mcp_fanout_testkit::postgres::sql_publish;
use mcp_fanout_testkit::{body, wait_until, Deployment, Replica, SOON};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const CLIENTS: usize = 20;

/// Open file descriptors of process `pid` (its sockets among them).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(usize::MAX)
}

/// Holds `table` of the deployment's schema in ACCESS EXCLUSIVE mode until the transaction ends.
async fn hold<'a>(
    locker: &'a mut tokio_postgres::Client,
    pg: &Deployment,
    table: &str,
) -> tokio_postgres::Transaction<'a> {
    let held = locker.transaction().await.expect("begin");
    let lock = format!("LOCK TABLE {}.{table} IN ACCESS EXCLUSIVE MODE", pg.schema);
    held.batch_execute(&lock).await.expect("lock");
    held
}

/// `CLIENTS` connections, each sending `GET /poll?<query(i)>` and reading nothing.
async fn pollers(r: &Replica, query: impl Fn(usize) -> String) -> Vec<TcpStream> {
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut s = TcpStream::connect(r.public_addr()).await.expect("connect");
        let request = format!("GET /poll?{} HTTP/1.1\r\nHost: replica\r\n\r\n", query(i));
        s.write_all(request.as_bytes()).await.expect("send");
        clients.push(s);
    }
    clients
}

/// Waits until both connections of the pool (size 2) wait on a lock.
async fn pool_waits_on_the_lock(client: &tokio_postgres::Client, pg: &Deployment) {
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
         AND application_name = 'mcp-fanout' AND wait_event_type = 'Lock'",
        pg.db
    );
    wait_until("both pooled connections wait on the lock", SOON, || async {
        let n: i64 = client.query_one(&waiting, &[]).await.unwrap().get(0);
        n == 2
    })
    .await
    .expect("the polls take the pool's two connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_whose_clients_left_give_their_pooled_connections_back() {
    let pg = Deployment::fresh("abandon").await.with_admin();
    let r = pg
        .replica(
            "abandon",
            &[("FANOUT_MEMORY_EVENTS", "10"), ("FANOUT_DB_POOL_SIZE", "2")],
        )
        .await;
    let client = pg.client().await;
    for _ in 0..100 {
        let method = "notifications/tools/list_changed";
        sql_publish(&client, &pg.schema, method, None, None, None)
            .await
            .expect("publish in SQL");
    }
    let epoch = pg.server.epoch(&pg.db, &pg.schema).await.expect("epoch");

    // Hold the log: every read of it waits on the lock. Clients at cursors below the ring, each
    // its own page.
    let mut locker = pg.client().await;
    let held = hold(&mut locker, &pg, "events").await;
    let clients = pollers(&r, |i| format!("timeout=0&after={epoch}-{}", i * 4)).await;
    pool_waits_on_the_lock(&client, &pg).await;

    // Every client goes away at once, with a reset.
    let with_clients = open_fds(r.pid());
    for s in clients {
        s.set_zero_linger().expect("linger 0: a reset on close");
        drop(s);
    }
    wait_until("the replica closed the clients' sockets", SOON, || async {
        open_fds(r.pid()) <= with_clients - CLIENTS
    })
    .await
    .expect("the replica notices the resets and ends those requests");
    held.rollback().await.expect("release the log");

    // Both need a pooled connection.
    r.publish_ok(&body("after-the-abandoned-reads", 1))
        .await
        .expect("a publish after the abandoned reads is answered (the pool has its connections)");
    let resp = r
        .poll(&format!("timeout=0&after={epoch}-1"))
        .await
        .expect("poll");
    assert_eq!(resp.status, 200, "a read below the ring: {}", resp.text());
    assert!(
        resp.text().contains(&format!("\"{epoch}-2\"")),
        "the log's events come back: {}",
        resp.text()
    );
}

/// Publishes commit on a connection of their own: reads that fill the pool (here held by a lock
/// on the log's `meta` row, which every poll's bounds read and no publish touches) never make a
/// publish wait. It shared the pool with them: a flood of reads put publishes behind up to 185
/// queued reads (p50 130–245 ms), or past the pool's timeout (503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_never_waits_behind_reads_that_fill_the_pool() {
    let pg = Deployment::fresh("writerconn").await.with_admin();
    let r = pg
        .replica("writerconn", &[("FANOUT_DB_POOL_SIZE", "2")])
        .await;
    let client = pg.client().await;
    let mut locker = pg.client().await;
    let held = hold(&mut locker, &pg, "meta").await;
    let clients = pollers(&r, |_| "timeout=0".to_owned()).await;
    pool_waits_on_the_lock(&client, &pg).await;
    r.publish_ok(&body("while-the-pool-is-full", 1))
        .await
        .expect("a publish is answered while every pooled connection is taken");
    held.rollback().await.expect("release");
    drop(clients);
}
