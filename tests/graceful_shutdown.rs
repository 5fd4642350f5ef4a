//! Contract §5, §3.2: on SIGTERM with open streams, `/readyz` answers 503 at once while the
//! streams keep flowing for `FANOUT_DRAIN_SECS` (a publish still reaches them, a new GET is shed with
//! `200` + `retry:` + clean end), then every stream ends cleanly with a `retry:` hint, and the process
//! exits 0 within `FANOUT_SHUTDOWN_GRACE_SECS`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::{
    expect_shed, note, start, wait_until, Frame, SseConn, SseRequest, StreamEnd, SOON,
};
use reqwest::StatusCode;
use tokio::time::Instant;

const DRAIN_SECS: u64 = 2;
const GRACE_SECS: u64 = 6;
const RETRY_MS: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_ends_streams_with_retry_and_exits_zero_within_the_grace() {
    let drain = DRAIN_SECS.to_string();
    let grace = GRACE_SECS.to_string();
    let retry = RETRY_MS.to_string();
    let mut r = start(
        "shutdown",
        &[
            ("FANOUT_DRAIN_SECS", drain.as_str()),
            ("FANOUT_SHUTDOWN_GRACE_SECS", grace.as_str()),
            ("FANOUT_RETRY_MS", retry.as_str()),
            ("FANOUT_KEEPALIVE_SECS", "60"),
        ],
    )
    .await;

    let mut streams: Vec<(String, SseConn)> = Vec::new();
    for protocol in [None, Some("2025-06-18"), Some("2025-11-25")] {
        let req = match protocol {
            Some(p) => SseRequest::mcp().protocol(p),
            None => SseRequest::mcp(),
        };
        let mut c = r.subscribe(&req).await.expect("subscribe");
        assert_eq!(c.status(), 200);
        if protocol == Some("2025-11-25") {
            let p = c.next_event(SOON).await.expect("priming").expect("open");
            assert!(p.is_priming(), "{:?}", p.text());
        }
        streams.push((format!("stream {protocol:?}"), c));
    }
    r.wait_subscribers(3, SOON).await.expect("3 subscribers");
    let before = r
        .publish_ok(&note("notifications/test/before", "shutdown", 0))
        .await
        .expect("publish before SIGTERM");
    for (who, c) in &mut streams {
        let f = c.next_event(SOON).await.expect("event").expect("open");
        assert_eq!(f.id.as_deref(), Some(before.as_str()), "{who}");
    }

    let t0 = Instant::now();
    r.sigterm().expect("SIGTERM");

    // Readiness fails at once.
    wait_until(
        "/readyz 503 after SIGTERM",
        Duration::from_secs(1),
        || async { matches!(r.readyz().await, Ok(StatusCode::SERVICE_UNAVAILABLE)) },
    )
    .await
    .expect("/readyz answers 503 within a second of SIGTERM");

    // During the drain the streams still flow.
    let during = r
        .publish_ok(&note("notifications/test/during", "shutdown", 1))
        .await
        .expect("publish during the drain");
    for (who, c) in &mut streams {
        let f = c
            .next_event(SOON)
            .await
            .expect("event during the drain")
            .expect("stream still open during the drain");
        assert_eq!(f.id.as_deref(), Some(during.as_str()), "{who}");
    }
    assert_eq!(
        r.readyz().await.expect("readyz"),
        StatusCode::SERVICE_UNAVAILABLE,
        "/readyz stays 503 during the drain"
    );

    // A new GET while draining is shed: 200, retry in [R, 2R], clean end, no events.
    expect_shed(&r, SseRequest::mcp(), RETRY_MS, "GET during the drain").await;
    let drain_checks_done = t0.elapsed();
    assert!(
        drain_checks_done < Duration::from_secs(DRAIN_SECS),
        "the checks during the drain ran within it ({drain_checks_done:?})"
    );

    // Then every stream ends cleanly with a retry: hint, not before the drain is over.
    let mut enders = Vec::new();
    for (who, mut c) in streams {
        enders.push(tokio::spawn(async move {
            let frames = c
                .read_to_end(Duration::from_secs(GRACE_SECS + 2))
                .await
                .unwrap_or_else(|e| panic!("{who}: the stream ends cleanly: {e}"));
            (who, frames, c.last_retry(), c.end().cloned(), t0.elapsed())
        }));
    }
    for e in enders {
        let (who, frames, retry, end, at) = e.await.expect("reader task");
        assert_eq!(end, Some(StreamEnd::Clean), "{who}");
        assert!(
            frames.iter().all(|f| f.data.is_none()),
            "{who}: nothing but the end after the drain: {:?}",
            frames.iter().map(Frame::text).collect::<Vec<_>>()
        );
        let last = frames.last().map(Frame::text).unwrap_or_default();
        assert!(
            frames.last().is_some_and(|f| f.retry.is_some()),
            "{who}: the clean end is preceded by a retry: block, last frame {last:?}"
        );
        assert!(retry.is_some_and(|ms| ms > 0), "{who}: retry {retry:?}");
        assert!(
            at >= Duration::from_millis(DRAIN_SECS * 1000 - 250),
            "{who}: ended after {at:?}, before the {DRAIN_SECS}s drain was over"
        );
    }

    let status = r
        .wait_exit(Duration::from_secs(GRACE_SECS + 2))
        .await
        .expect("the process exits");
    assert!(status.success(), "exit status {status}");
    assert!(
        t0.elapsed() <= Duration::from_secs(GRACE_SECS + 1),
        "exited within the grace ({:?})",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_or_sigint_without_streams_exits_zero_promptly() {
    for name in ["SIGTERM", "SIGINT"] {
        let mut r = start(
            &format!("idle-{name}"),
            &[
                ("FANOUT_DRAIN_SECS", "1"),
                ("FANOUT_SHUTDOWN_GRACE_SECS", "4"),
            ],
        )
        .await;
        let t0 = Instant::now();
        if name == "SIGTERM" {
            r.sigterm().expect("SIGTERM");
        } else {
            r.sigint().expect("SIGINT");
        }
        let status = r
            .wait_exit(Duration::from_secs(6))
            .await
            .unwrap_or_else(|e| panic!("{name}: the process exits: {e}"));
        assert!(status.success(), "{name}: exit status {status}");
        assert!(
            t0.elapsed() <= Duration::from_secs(5),
            "{name}: exited within the grace ({:?})",
            t0.elapsed()
        );
    }
}
