//! `FANOUT_SESSION_CLAIMS_PER_MIN`: a client reconnecting in a loop with its session cannot make
//! the replica write to the database as fast as it connects. Each stream for a session claims it
//! (a durable write and a NOTIFY every replica reads); past a burst of 10, a session's owner gets
//! its claims at the set rate, and a stream past it is shed (`200`, `retry:`, a clean end) before
//! the database is asked anything. Other sessions are untouched, and the session is served again
//! as its allowance refills.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::{expect_shed, open_stream_with, wait_until, Deployment, SseRequest};

const RETRY_MS: u64 = 200;
const T: Duration = Duration::from_secs(20);

/// A GET for `session` as a 2025-11-25 client makes it: a served stream starts with a priming
/// frame (an id), a shed one with a bare `retry:` block.
fn get(session: &str) -> SseRequest {
    SseRequest::mcp().protocol("2025-11-25").session(session)
}

/// Whether a GET for `session` is served (its first frame carries an id).
async fn served(r: &mcp_fanout_testkit::Replica, session: &str) -> bool {
    let mut conn = open_stream_with(r, get(session), "a GET").await;
    let first = conn.next_frame(T).await.expect("a first frame");
    first.is_some_and(|f| f.id.is_some())
}

/// Claims the database has made so far: every claim draws from the schema's generation sequence.
async fn claims_made(pg: &Deployment) -> i64 {
    let client = pg.client().await;
    let row = client
        .query_one(
            &format!("SELECT last_value FROM {}.session_generation", pg.schema),
            &[],
        )
        .await
        .expect("the generation sequence");
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_claimed_in_a_loop_is_shed_before_the_database_is_written() {
    let pg = Deployment::fresh("claim_rate").await.with_admin();
    let retry = RETRY_MS.to_string();
    let r = pg
        .replica(
            "claim-rate",
            &[
                ("FANOUT_SESSION_CLAIMS_PER_MIN", "60"),
                ("FANOUT_RETRY_MS", &retry),
            ],
        )
        .await;
    let looping = "sess-reconnecting-in-a-loop";
    // The burst: ten streams in a row, each served (each ends the one before).
    for i in 0..10 {
        assert!(
            served(&r, looping).await,
            "stream {i} of the burst is served"
        );
    }
    // The burst is spent: the next stream is shed, and the database saw no claim for it.
    let before = claims_made(&pg).await;
    expect_shed(&r, get(looping), RETRY_MS, "a stream past the burst").await;
    assert_eq!(
        claims_made(&pg).await,
        before,
        "a shed stream's session is not claimed"
    );
    let shed = r
        .count(r#"mcp_fanout_subscribers_shed_total{reason="claim_rate"}"#)
        .await
        .expect("metrics");
    assert!(shed >= 1.0, "counted as claim_rate: {shed}");
    // Another session is served at once.
    assert!(
        served(&r, "sess-someone-else").await,
        "another session is untouched"
    );
    // One claim a second refills: the looping session is served again.
    wait_until("the looping session is served again", T, || {
        served(&r, looping)
    })
    .await
    .expect("served again as the allowance refills");
}
