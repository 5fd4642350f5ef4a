//! A subscriber resuming a catch-up far larger than `FANOUT_MAX_LAG_BYTES` (800 retained events of
//! 20 KB, 16 MB, behind its `Last-Event-ID`) and reading as fast as it can gets all of it, in
//! order, on its one connection: past the byte bound the server pauses its writes until the socket
//! drains, it does not end the stream. In memory and on Postgres (where the catch-up is read from
//! the log). Nobody is dropped for any reason.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::{
    start_memory, Deployment, EventId, Follower, Replica, SseRequest, Tally, SOON,
};
use serde_json::{json, Value};

/// Events behind the cursor, and their size.
const EVENTS: usize = 800;
const EVENT_BYTES: usize = 20 * 1024;
/// Events per publish request.
const BATCH: usize = 50;
/// Generous: the machine is shared and noisy; the assertions are about what arrives, not speed.
const PATIENCE: Duration = Duration::from_secs(120);

/// The bound is the default (1 MiB); lag and stall limits are the defaults too.
const ENV: &[(&str, &str)] = &[
    ("FANOUT_MEMORY_EVENTS", "100000"),
    ("FANOUT_MEMORY_BYTES", "1073741824"),
];

/// Publishes the cursor event, then the catch-up; returns every id, the cursor's first.
async fn publish_catch_up(r: &Replica) -> Vec<String> {
    let mut ids = vec![r
        .publish_ok(&json!({ "method": "notifications/test/cursor" }))
        .await
        .expect("the cursor event")];
    for b in 0..EVENTS / BATCH {
        let batch: Vec<Value> = (0..BATCH)
            .map(|i| {
                json!({
                    "method": "notifications/test/catch_up",
                    "params": { "n": b * BATCH + i, "blob": "x".repeat(EVENT_BYTES) }
                })
            })
            .collect();
        ids.extend(r.publish_batch_ok(&batch).await.expect("catch-up batch"));
    }
    ids
}

async fn resumes_whole(r: &Replica) {
    let published = publish_catch_up(r).await;
    let (cursor, behind) = published.split_first().expect("published");
    let conn = r
        .subscribe(&SseRequest::mcp().session("catch-up").last_event_id(cursor))
        .await
        .expect("the resuming subscriber connects");
    assert_eq!(conn.status(), 200);
    let last = behind
        .last()
        .and_then(|id| id.parse::<EventId>().ok())
        .expect("the last id")
        .seq;
    let followed = Follower::spawn(&format!("{}: resuming reader", r.label()), conn)
        .finish(last, PATIENCE)
        .await
        .expect("follower");
    assert!(followed.reached, "{}", followed.summary());
    assert!(
        followed.end.is_none(),
        "the catch-up stream was ended: {}",
        followed.summary()
    );
    let mut tally = Tally::new("the resuming reader", behind.to_vec());
    for id in followed.event_ids() {
        tally.observe(&id);
    }
    tally.assert_exact();
    let text = r.metrics_text().await.expect("metrics");
    let drops: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("mcp_fanout_subscribers_dropped_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(drops.is_empty(), "nobody is dropped: {drops:?}");
    r.wait_subscribers(1, SOON)
        .await
        .expect("the reader is still subscribed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_larger_than_the_byte_bound_arrives_on_one_connection_in_memory() {
    let r = start_memory("paced-memory", ENV).await;
    resumes_whole(&r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_larger_than_the_byte_bound_arrives_on_one_connection_on_postgres() {
    let pg = Deployment::fresh("paced").await.with_admin();
    let r = pg.replica("paced-pg", ENV).await;
    resumes_whole(&r).await;
}
