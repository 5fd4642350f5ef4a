//! The stream limits (contract §2, §3.2, §3.4): shedding at
//! `FANOUT_MAX_SUBSCRIBERS` (`200` + `retry:` in [R, 2R] + clean end, never 503; a waiting poll at
//! capacity answers at once with no events), `FANOUT_MAX_STREAM_SECS` (a clean, resumable end), and one
//! stream per session (a new GET for the session ends the older one).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::{
    expect_shed, note, start, Frame, PollAnswer, SseRequest, StreamEnd, Tally, SOON,
};
use tokio::time::Instant;

const RETRY_MS: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_capacity_a_get_is_shed_with_retry_and_a_poll_answers_empty_at_once() {
    let retry = RETRY_MS.to_string();
    let r = start(
        "capacity",
        &[
            ("FANOUT_MAX_SUBSCRIBERS", "2"),
            ("FANOUT_RETRY_MS", retry.as_str()),
            ("FANOUT_KEEPALIVE_SECS", "60"),
        ],
    )
    .await;
    let head = r
        .publish_ok(&note("notifications/test/cap", "cap", 0))
        .await
        .expect("publish");
    let mut kept = Vec::new();
    for _ in 0..2 {
        let c = r.subscribe(&SseRequest::mcp()).await.expect("subscribe");
        assert_eq!(c.status(), 200);
        kept.push(c);
    }
    r.wait_subscribers(2, SOON).await.expect("at capacity");

    for attempt in 0..3 {
        expect_shed(
            &r,
            SseRequest::mcp().session(&format!("shed-{attempt}")),
            RETRY_MS,
            &format!("GET {attempt} at capacity"),
        )
        .await;
    }

    let t = Instant::now();
    let resp = r
        .poll(&format!("after={head}&timeout=10"))
        .await
        .expect("poll at capacity");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "a poll at capacity answers at once, not after its timeout ({:?})",
        t.elapsed()
    );
    let a = PollAnswer::parse(&resp.body).expect("poll shape");
    assert!(a.events.is_empty(), "{a:?}");
    assert_eq!(a.cursor, head, "cursor = after");

    // The two admitted streams are unaffected.
    let id = r
        .publish_ok(&note("notifications/test/cap", "cap", 1))
        .await
        .expect("publish");
    for c in &mut kept {
        let f = c.next_event(SOON).await.expect("event").expect("open");
        assert_eq!(f.id.as_deref(), Some(id.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_its_max_age_ends_cleanly_and_resumes_without_loss() {
    let r = start(
        "max-age",
        &[
            ("FANOUT_MAX_STREAM_SECS", "2"),
            ("FANOUT_KEEPALIVE_SECS", "60"),
        ],
    )
    .await;
    let mut c = r.subscribe(&SseRequest::mcp()).await.expect("subscribe");
    assert_eq!(c.status(), 200);
    r.wait_subscribers(1, SOON).await.expect("registered");
    let first = r
        .publish_ok(&note("notifications/test/age", "age", 0))
        .await
        .expect("publish");
    let frames = c
        .read_to_end(Duration::from_secs(8))
        .await
        .expect("the stream ends cleanly within a few seconds of its max age");
    assert_eq!(c.end(), Some(&StreamEnd::Clean));
    let mut t = Tally::new("aged stream", vec![first.clone()]);
    t.observe_frames(&frames);
    t.assert_exact();
    assert!(
        frames.last().is_some_and(|f| f.retry.is_some()),
        "the end carries a retry: hint: {:?}",
        frames.iter().map(Frame::text).collect::<Vec<_>>()
    );
    r.wait_metric(
        "mcp_fanout_subscribers_dropped_total{reason=\"max_stream_age\"}",
        SOON,
        |v| v >= 1.0,
    )
    .await
    .expect("counted as max_stream_age");

    // Published while it was away: replayed on reconnect, once.
    let missed = r
        .publish_ok(&note("notifications/test/age", "age", 1))
        .await
        .expect("publish");
    let mut again = r
        .subscribe(&SseRequest::mcp().last_event_id(c.last_event_id().expect("an id")))
        .await
        .expect("reconnect");
    let f = again.next_event(SOON).await.expect("replay").expect("open");
    assert_eq!(f.id.as_deref(), Some(missed.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_for_a_session_ends_the_older_one() {
    let r = start("one-per-session", &[("FANOUT_KEEPALIVE_SECS", "60")]).await;
    let mut older = r
        .subscribe(&SseRequest::mcp().session("sess-dup"))
        .await
        .expect("first stream");
    assert_eq!(older.status(), 200);
    let mut other = r
        .subscribe(&SseRequest::mcp().session("sess-other"))
        .await
        .expect("unrelated stream");
    r.wait_subscribers(2, SOON).await.expect("registered");
    let mut newer = r
        .subscribe(&SseRequest::mcp().session("sess-dup"))
        .await
        .expect("second stream");
    assert_eq!(newer.status(), 200);
    let frames = older
        .read_to_end(SOON)
        .await
        .expect("the older stream of the session ends cleanly");
    assert!(
        frames.iter().all(|f| f.data.is_none()),
        "{:?}",
        frames.iter().map(Frame::text).collect::<Vec<_>>()
    );
    r.wait_subscribers(2, SOON)
        .await
        .expect("the newer stream and the unrelated one remain");
    let id = r
        .publish_ok(&note("notifications/test/sess", "sess", 0))
        .await
        .expect("publish");
    for (who, c) in [("newer", &mut newer), ("unrelated", &mut other)] {
        let f = c.next_event(SOON).await.expect("event").expect("open");
        assert_eq!(f.id.as_deref(), Some(id.as_str()), "{who}");
    }
}
