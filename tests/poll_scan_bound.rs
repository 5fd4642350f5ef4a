//! Contract §3.4: one `/poll` answer passes over at most 16,384 log positions, visible to the
//! caller or not. A cursor behind many events the caller may not see (another tenant's) gets an
//! answer at once with no events, `more: true` and the position scanned to as `cursor`, even with
//! a `timeout`; polling on from there reaches the caller's event. One such poll used to read the
//! whole log for an empty answer (~200 pages and ~200 MB in the probe that found it), and
//! long-polls repeated it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use mcp_fanout_testkit::{body, Deployment};
use serde_json::Value;

const HIDDEN: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_behind_many_invisible_events_answers_where_its_scan_got() {
    let pg = Deployment::fresh("scanbound").await.with_admin();
    let r = pg.replica("scanbound", &[]).await;
    // 20,000 events for tenant acme (nobody sees them in `none` mode), then one for everyone.
    pg.client()
        .await
        .batch_execute(&format!(
            "SELECT {s}.publish('notifications/tools/list_changed', NULL, 'acme', NULL) \
             FROM generate_series(1, {HIDDEN})",
            s = pg.schema
        ))
        .await
        .expect("publish the hidden events");
    let visible = r
        .publish_ok(&body("for-everyone", 1))
        .await
        .expect("publish");
    let epoch = pg.server.epoch(&pg.db, &pg.schema).await.expect("epoch");
    let seq_of = |id: &str| -> u64 {
        id.rsplit('-')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("an event id")
    };
    assert_eq!(seq_of(&visible), HIDDEN + 1);

    let mut after = format!("{epoch}-0");
    let mut answers = Vec::new();
    loop {
        let resp = r
            .poll(&format!("after={after}&timeout=30"))
            .await
            .expect("poll");
        assert_eq!(resp.status, 200, "{}", resp.text());
        let v: Value = serde_json::from_slice(&resp.body).expect("json");
        let events = v["events"].as_array().expect("events").clone();
        let more = v["more"].as_bool().expect("more");
        after = v["cursor"].as_str().expect("cursor").to_owned();
        answers.push((events.len(), more, seq_of(&after)));
        if !events.is_empty() {
            assert_eq!(events.len(), 1, "only the visible event: {v}");
            assert_eq!(events[0]["id"], visible.as_str());
            break;
        }
        assert!(more, "an empty answer before the head says more: {v}");
        assert!(answers.len() < 10, "polling on makes progress: {answers:?}");
    }
    let (first_events, first_more, first_cursor) = answers[0];
    assert!(
        first_events == 0 && first_more && (16_384..=HIDDEN).contains(&first_cursor),
        "the first answer stops where its scan got, at once: {answers:?}"
    );
    assert!(answers.len() >= 2, "{answers:?}");
}
