//! Behind a real load balancer, as deployments run it (nginx: HTTP/1.1 to the replicas, no
//! buffering, round robin): streams spread over the replicas; one replica is SIGKILLed while its
//! streams are open; their clients reconnect through the balancer with `Last-Event-ID`, land on the
//! live replica, and every client ends with every event exactly once, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::net::SocketAddr;
use std::time::Duration;

use mcp_fanout_testkit::{
    publish_n, wait_until, Deployment, Nginx, Replica, SseConn, SseRequest, Tally, SOON,
};
use tokio::sync::watch;
use tokio::time::Instant;

const METHOD: &str = "notifications/test/lb";
const CLIENTS: usize = 8;

/// Reads events through the balancer until it has seen `last` (once known), reconnecting with
/// `Last-Event-ID` whenever its stream ends or is cut. Returns the event ids seen, in order, and
/// how many times it reconnected.
async fn client(
    lb: SocketAddr,
    label: String,
    from: String,
    mut last: watch::Receiver<Option<String>>,
) -> (Vec<String>, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen: Vec<String> = Vec::new();
    let mut reconnects = 0;
    let mut conn: Option<SseConn> = None;
    loop {
        let done = last.borrow_and_update().clone();
        if done.is_some() && seen.last() == done.as_ref() {
            return (seen, reconnects);
        }
        assert!(
            Instant::now() < deadline,
            "{label}: gave up; saw {seen:?}, waiting for {done:?}"
        );
        let Some(c) = conn.as_mut() else {
            let cursor = seen.last().unwrap_or(&from).clone();
            match SseConn::connect(lb, &SseRequest::mcp().last_event_id(&cursor), SOON).await {
                Ok(c) if c.status() == 200 => conn = Some(c),
                // The balancer may answer 502 while it finds the dead replica out.
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        };
        match c.next_event(Duration::from_millis(300)).await {
            Ok(Some(f)) if f.data.as_deref().is_some_and(|d| !d.is_empty()) => {
                if let Some(id) = f.id {
                    seen.push(id);
                }
            }
            Ok(Some(_)) => {}
            Err(e) if e.is_timeout() => {}
            // Ended cleanly or cut (the replica died): resume through the balancer.
            Ok(None) | Err(_) => {
                conn = None;
                reconnects += 1;
            }
        }
    }
}

async fn sse_count(r: &Replica) -> f64 {
    r.metric("mcp_fanout_subscribers{kind=\"sse\"}")
        .await
        .ok()
        .flatten()
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_behind_the_balancer_loses_no_event_for_anyone() {
    let pg = Deployment::fresh("lb").await;
    let mut replicas = pg.replicas("lb-", 2, &[]).await;
    let lb = Nginx::balancing(&[replicas[0].public_addr(), replicas[1].public_addr()]).await;

    let from = publish_n(&replicas[1], METHOD, "marker", 1).await.remove(0);
    let (last_tx, last_rx) = watch::channel(None);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(client(
                lb.addr,
                format!("client-{i}"),
                from.clone(),
                last_rx.clone(),
            ))
        })
        .collect();
    // Round robin puts streams on both replicas.
    wait_until("streams on both replicas", SOON, || async {
        let (a, b) = (sse_count(&replicas[0]).await, sse_count(&replicas[1]).await);
        a >= 1.0 && b >= 1.0 && a + b >= CLIENTS as f64
    })
    .await
    .expect("the balancer spreads the streams");

    let mut expected = publish_n(&replicas[0], METHOD, "before-a", 10).await;
    expected.extend(publish_n(&replicas[1], METHOD, "before-b", 10).await);
    replicas[0].kill().expect("SIGKILL replica 0");
    expected.extend(publish_n(&replicas[1], METHOD, "after", 20).await);
    last_tx
        .send(expected.last().cloned())
        .expect("clients listening");

    let mut reconnects = 0;
    for (i, c) in clients.into_iter().enumerate() {
        let (seen, r) = c.await.expect("client task");
        reconnects += r;
        let mut tally = Tally::new(&format!("client-{i}"), expected.iter().cloned());
        for id in &seen {
            tally.observe(id);
        }
        tally.assert_exact();
    }
    assert!(
        reconnects >= 1,
        "the streams on the killed replica were cut and resumed"
    );
}
