//! Contract §1, §7.4: a subscriber that stops reading is ended (write-stall deadline, or
//! cannot-keep-up) while the others keep receiving everything and publishes keep completing quickly;
//! when it reconnects with its `Last-Event-ID` it receives everything it missed, exactly once.
//! The same in proxy mode, where each stream's socket moves off its connection worker after the
//! head (`server::workers`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::upstream::{Canned, RecordingUpstream};
use mcp_fanout_testkit::{start, Replica, SseConn, SseRequest, Tally, SOON};
use serde_json::{json, Value};
use tokio::time::Instant;

const STALL_SECS: u64 = 2;
const SENTINEL: &str = "notifications/test/done";
const SLOW_SESSION: &str = "slow-subscriber-7f3a";
/// ~32 KB per event: a few hundred KB fill a socket whose reader has a tiny receive buffer.
const BLOB: usize = 32 * 1024;
/// Stop sending big events after this many (≈ 8 MB); from then on small ones keep publishes going.
const MAX_BIG_EVENTS: usize = 256;

fn big(n: usize) -> Value {
    json!({
        "method": "notifications/test/big",
        "params": { "n": n, "blob": "x".repeat(BLOB) }
    })
}

fn small(n: usize) -> Value {
    json!({ "method": "notifications/test/small", "params": { "n": n } })
}

/// Reads a healthy subscriber until the sentinel; returns the ids of every event it received.
fn spawn_reader(mut conn: SseConn, who: String) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut ids = Vec::new();
        loop {
            let f = conn
                .next_event(Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| panic!("{who}: {e} after {} events", ids.len()))
                .unwrap_or_else(|| panic!("{who}: stream ended after {} events", ids.len()));
            if let Some(id) = &f.id {
                ids.push(id.clone());
            }
            if f.method().as_deref() == Some(SENTINEL) {
                return ids;
            }
        }
    })
}

async fn dropped_for_stall_or_lag(r: &Replica) -> f64 {
    let mut total = 0.0;
    for reason in ["write_stall", "lagging"] {
        let sel = format!("mcp_fanout_subscribers_dropped_total{{reason=\"{reason}\"}}");
        total += r.metric(&sel).await.ok().flatten().unwrap_or(0.0);
    }
    total
}

/// The settings of both runs, plus `extra`.
async fn replica(label: &str, extra: &[(&str, &str)]) -> Replica {
    let stall = STALL_SECS.to_string();
    let mut env = vec![
        ("FANOUT_WRITE_STALL_SECS", stall.as_str()),
        // The byte bound has a test of its own (slow_subscriber_bounds.rs); here the stall
        // deadline (or the lag) ends the subscriber.
        ("FANOUT_MAX_LAG_BYTES", "1073741824"),
        ("FANOUT_MEMORY_EVENTS", "100000"),
        ("FANOUT_MEMORY_BYTES", "1073741824"),
    ];
    env.extend_from_slice(extra);
    start(label, &env).await
}

/// A GET stream, in session `session` when sessions are named.
fn stream(sessions: bool, session: &str) -> SseRequest {
    let req = SseRequest::mcp();
    if sessions {
        req.session(session)
    } else {
        req
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_ended_others_get_everything_and_it_resumes_without_loss() {
    let r = replica("slow", &[]).await;
    stalled_subscriber(&r, true).await;
}

/// Proxy mode serves its connections on connection workers (`server::workers`), and a stream's
/// socket moves from its worker to the main runtime once its head is written: the move keeps
/// the socket's deadlines and the stream's every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_in_proxy_mode_where_streams_move_off_the_connection_workers() {
    let up = RecordingUpstream::start(Canned::json(
        &json!({"jsonrpc": "2.0", "id": 1, "result": {}}),
    ))
    .await
    .expect("upstream");
    let url = up.url("/mcp");
    let r = replica(
        "slow-proxy",
        &[
            ("FANOUT_UPSTREAM", url.as_str()),
            ("FANOUT_CONNECTION_WORKERS", "2"),
        ],
    )
    .await;
    // A GET with a session id the proxy has not seen is refused (404): these streams have none.
    stalled_subscriber(&r, false).await;
}

async fn stalled_subscriber(r: &Replica, sessions: bool) {
    let mut slow = r
        .subscribe(&stream(sessions, SLOW_SESSION).recv_buffer(4096))
        .await
        .expect("slow subscriber connects");
    assert_eq!(slow.status(), 200);
    let mut fast = Vec::new();
    for i in 0..2 {
        let c = r
            .subscribe(&stream(sessions, &format!("fast-{i}")))
            .await
            .expect("fast subscriber connects");
        assert_eq!(c.status(), 200);
        fast.push(c);
    }
    r.wait_subscribers(3, SOON).await.expect("3 subscribers");

    // One event everybody reads, so the slow subscriber has a Last-Event-ID to resume from.
    let mut published = vec![r.publish_ok(&small(0)).await.expect("first publish")];
    let first = slow
        .next_event(SOON)
        .await
        .expect("slow subscriber reads the first event")
        .expect("stream open");
    assert_eq!(first.id.as_ref(), Some(&published[0]));
    let readers: Vec<_> = fast
        .into_iter()
        .enumerate()
        .map(|(i, c)| spawn_reader(c, format!("fast subscriber {i}")))
        .collect();

    // From here on the slow subscriber reads nothing. Publish until the server ends it.
    let started = Instant::now();
    let mut slowest_publish = Duration::ZERO;
    let mut big_sent = 0;
    let mut n = 1;
    loop {
        let t = Instant::now();
        if big_sent < MAX_BIG_EVENTS {
            let batch: Vec<Value> = (0..8).map(|i| big(n + i)).collect();
            published.extend(r.publish_batch_ok(&batch).await.expect("big batch publish"));
            big_sent += 8;
            n += 8;
        } else {
            published.push(r.publish_ok(&small(n)).await.expect("small publish"));
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        slowest_publish = slowest_publish.max(t.elapsed());
        if dropped_for_stall_or_lag(r).await >= 1.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(STALL_SECS + 20),
            "the stalled subscriber was not ended within {}s of publishing ({} events, {} big)",
            STALL_SECS + 20,
            published.len(),
            big_sent
        );
    }
    assert!(
        slowest_publish < Duration::from_secs(1),
        "publishes never wait for the blocked subscriber (slowest took {slowest_publish:?}, the \
         stall deadline is {STALL_SECS}s)"
    );
    r.wait_subscribers(2, SOON)
        .await
        .expect("the stalled subscriber no longer counts");

    // A few more events after the drop, then the sentinel.
    for _ in 0..5 {
        published.push(r.publish_ok(&small(n)).await.expect("publish after drop"));
        n += 1;
    }
    published.push(
        r.publish_ok(&json!({ "method": SENTINEL }))
            .await
            .expect("sentinel publish"),
    );

    for (i, reader) in readers.into_iter().enumerate() {
        let ids = reader.await.expect("fast reader task");
        let mut tally = Tally::new(&format!("fast subscriber {i}"), published.clone());
        // The first event was published before the readers were spawned but on their streams.
        for id in &ids {
            tally.observe(id);
        }
        tally.assert_exact();
    }

    // The slow subscriber's connection: whatever complete frames made it, then an end (clean with a
    // `retry:` or cut by the abort). It must end, not hang.
    let (ids, _) = slow
        .drain_dropped(Duration::from_secs(15))
        .await
        .expect("the stalled stream ends");
    let mut slow_ids = vec![published[0].clone()];
    slow_ids.extend(ids);
    let resume_from = slow
        .last_event_id()
        .map(ToString::to_string)
        .unwrap_or_else(|| published[0].clone());
    assert!(
        slow_ids.len() < published.len(),
        "the slow subscriber really missed events (saw {} of {})",
        slow_ids.len(),
        published.len()
    );

    // Reconnect with its Last-Event-ID: everything it missed, once, in order.
    let mut again = r
        .subscribe(&stream(sessions, SLOW_SESSION).last_event_id(&resume_from))
        .await
        .expect("reconnect");
    assert_eq!(again.status(), 200);
    let rest = again
        .collect_until(Duration::from_secs(30), |f| {
            f.method().as_deref() == Some(SENTINEL)
        })
        .await
        .expect("the resumed stream reaches the sentinel");
    let mut tally = Tally::new("slow subscriber (both connections)", published.clone());
    for id in &slow_ids {
        tally.observe(id);
    }
    tally.observe_frames(&rest);
    tally.assert_exact();

    // Counted (above) and logged with its session id.
    if !sessions {
        return;
    }
    r.wait_for_log(
        "the drop of the slow subscriber, with its session id",
        SOON,
        |v| {
            let line = v.to_string().to_ascii_lowercase();
            line.contains(&SLOW_SESSION.to_ascii_lowercase())
                && ["stall", "lag", "drop", "slow", "keep up", "abort"]
                    .iter()
                    .any(|w| line.contains(w))
        },
    )
    .await
    .expect("the dropped subscriber is logged with its session id");
}
