//! The connection workers (`server::workers`): connections are handed out in turn, each runs on
//! its worker's own thread, and a worker's thread finds its own upstream pool.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use mcp_fanout::server::workers;

#[test]
fn connections_go_to_the_workers_in_turn_and_each_finds_its_own_pool() {
    assert_eq!(workers::pools(), 1, "before the workers start: one pool");
    workers::start(2).expect("workers start");
    assert_eq!(workers::count(), 2);
    assert_eq!(
        workers::pools(),
        3,
        "one per worker and one for other threads"
    );
    assert_eq!(workers::pool_index(), 2, "this thread is no worker");

    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..6 {
        let tx = tx.clone();
        workers::spawn(async move {
            // Runs on a worker's runtime: its timers work there.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let thread = std::thread::current().name().map(str::to_owned);
            tx.send((thread, workers::current(), workers::pool_index()))
                .expect("send");
        });
    }
    let mut per_worker: BTreeMap<usize, usize> = BTreeMap::new();
    for _ in 0..6 {
        let (thread, current, pool) = rx.recv_timeout(Duration::from_secs(10)).expect("ran");
        let w = current.expect("on a worker");
        assert_eq!(thread.as_deref(), Some(format!("conn-worker-{w}").as_str()));
        assert_eq!(pool, w, "a worker's thread takes its own pool");
        *per_worker.entry(w).or_default() += 1;
    }
    assert_eq!(per_worker, BTreeMap::from([(0, 3), (1, 3)]));
}
