//! Contract §3.5: a subscriber behind many events it may not see (another tenant's) is sent its
//! own, each once and in order — and the replica reads from the log what it sends, not what it
//! passes over. A resume at the start of a log of 20,000 events, 20 of them for everyone and the
//! rest for tenant `acme` (invisible in `none` mode), on a replica whose ring holds the last
//! 50: the stream and the long-poll both get the 20 and a
//! live event after them; `mcp_fanout_log_read_events_total` grows by one shared page (1,000) per
//! stream or poll answer and the visible events, where it grew by all 20,000 before (each page
//! read was filtered in the replica).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use mcp_fanout_testkit::{body, Deployment, Replica, SseRequest, SOON};
use serde_json::Value;

const TOTAL: u64 = 20_000;
const EVERY: u64 = 1_000;
/// The first log page is read shared (unfiltered) before the feed turns to filtered reads.
const ONE_PAGE: f64 = 1_000.0;

async fn log_reads(r: &Replica) -> f64 {
    r.metric("mcp_fanout_log_read_events_total")
        .await
        .expect("metrics")
        .expect("the counter is exported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_behind_others_events_reads_only_its_own() {
    let pg = Deployment::fresh("visread").await.with_admin();
    // A ring of 50 events: a resume at the start reads the log.
    let r = pg
        .replica("visread", &[("FANOUT_MEMORY_EVENTS", "50")])
        .await;
    pg.client()
        .await
        .batch_execute(&format!(
            "SELECT {s}.publish('notifications/tools/list_changed', NULL, \
                 CASE WHEN i % {EVERY} = 0 THEN NULL ELSE 'acme' END, NULL) \
             FROM generate_series(1, {TOTAL}) i",
            s = pg.schema
        ))
        .await
        .expect("publish the log");
    let epoch = pg.server.epoch(&pg.db, &pg.schema).await.expect("epoch");
    let visible: Vec<String> = (1..=TOTAL / EVERY)
        .map(|i| format!("{epoch}-{}", i * EVERY))
        .collect();

    // The stream.
    let before = log_reads(&r).await;
    let mut conn = r
        .subscribe(&SseRequest::mcp().last_event_id(&format!("{epoch}-0")))
        .await
        .expect("subscribe");
    let frames = conn.events(visible.len(), SOON).await.expect("the events");
    let ids: Vec<&str> = frames.iter().filter_map(|f| f.id.as_deref()).collect();
    assert_eq!(ids, visible, "each visible event once, in order");
    let live = r.publish_ok(&body("live", 1)).await.expect("publish");
    let next = conn
        .next_event(SOON)
        .await
        .expect("read")
        .expect("the live event");
    assert_eq!(
        next.id.as_deref(),
        Some(live.as_str()),
        "then live, nothing between"
    );
    let streamed = log_reads(&r).await - before;
    assert!(
        streamed <= ONE_PAGE + visible.len() as f64,
        "the stream read {streamed} events from the log to send {}",
        visible.len()
    );

    // The long-poll, from the same place to the head.
    let before = log_reads(&r).await;
    let mut after = format!("{epoch}-0");
    let mut polled = Vec::new();
    let mut answers = 0;
    for _ in 0..10 {
        answers += 1;
        let resp = r.poll(&format!("after={after}")).await.expect("poll");
        assert_eq!(resp.status, 200, "{}", resp.text());
        let v: Value = serde_json::from_slice(&resp.body).expect("json");
        for e in v["events"].as_array().expect("events") {
            polled.push(e["id"].as_str().expect("id").to_owned());
        }
        after = v["cursor"].as_str().expect("cursor").to_owned();
        if !v["more"].as_bool().expect("more") {
            break;
        }
    }
    let mut want = visible.clone();
    want.push(live);
    assert_eq!(polled, want, "each visible event once, in order");
    let read = log_reads(&r).await - before;
    assert!(
        read <= answers as f64 * ONE_PAGE + want.len() as f64,
        "{answers} polls read {read} events from the log to answer {}",
        want.len()
    );
}
