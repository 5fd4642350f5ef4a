//! A subscriber that stops reading is dropped promptly — once its socket has accepted nothing for
//! the write-stall deadline; meanwhile `FANOUT_MAX_LAG_BYTES` only paces what the server queues for
//! it (writes wait past the bound, they do not end the stream) — while tens of MB are published;
//! the others keep receiving everything, in order; the drop is counted with its reason; and
//! reconnecting with its last received id gives it everything after that id, once, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::path::Path;
use std::time::Duration;

use mcp_fanout_testkit::{EventId, Follower, Replica, SseConn, SseRequest, Tally};
use serde_json::{json, Value};
use tokio::time::Instant;

const SENTINEL: &str = "notifications/test/done";
/// Params of about 60 KB (the default payload bound is 64 KiB).
const BLOB: usize = 60 * 1024;
/// Events per publish request (about 1 MB).
const BATCH: usize = 16;
const SOON: Duration = Duration::from_secs(10);
/// Generous: the machine is shared and noisy; the assertions are about what happens, not speed.
const PATIENCE: Duration = Duration::from_secs(60);

async fn start(label: &str, envs: &[(&str, &str)]) -> Replica {
    let mut all = vec![
        ("FANOUT_MEMORY_EVENTS", "100000"),
        ("FANOUT_MEMORY_BYTES", "1073741824"),
        // Only the bound under test may end the slow subscriber.
        ("FANOUT_MAX_LAG_SECS", "600"),
    ];
    all.extend_from_slice(envs);
    Replica::start(Path::new(env!("CARGO_BIN_EXE_mcp-fanout")), label, &all)
        .await
        .unwrap_or_else(|e| panic!("replica `{label}` should start: {e}"))
}

fn big(n: usize) -> Value {
    json!({ "method": "notifications/test/big", "params": { "n": n, "blob": "x".repeat(BLOB) } })
}

async fn dropped(r: &Replica, reason: &str) -> f64 {
    let sel = format!("mcp_fanout_subscribers_dropped_total{{reason=\"{reason}\"}}");
    r.metric(&sel).await.expect("metrics").unwrap_or(0.0)
}

/// A subscriber with a tiny receive buffer, so the server's writes pile up in its own socket once
/// it stops reading.
async fn slow_subscriber(r: &Replica, session: &str) -> SseConn {
    let slow = r
        .subscribe(&SseRequest::mcp().session(session).recv_buffer(4096))
        .await
        .expect("the slow subscriber connects");
    assert_eq!(slow.status(), 200);
    slow
}

/// Publishes the one event the slow subscriber reads (so it has an id to resume from); from then on
/// it reads nothing until it has been dropped. Returns the event's id.
async fn first_event(r: &Replica, slow: &mut SseConn) -> String {
    let first = r
        .publish_ok(&json!({ "method": "notifications/test/first" }))
        .await
        .expect("first publish");
    let f = slow
        .next_event(SOON)
        .await
        .expect("the slow subscriber reads the first event")
        .expect("stream open");
    assert_eq!(f.id.as_deref(), Some(first.as_str()));
    first
}

/// Publishes `batches` batches of big events; returns their ids.
async fn publish_big(r: &Replica, batches: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for b in 0..batches {
        let batch: Vec<Value> = (0..BATCH).map(|i| big(b * BATCH + i)).collect();
        ids.extend(r.publish_batch_ok(&batch).await.expect("big batch publish"));
    }
    ids
}

/// The slow subscriber's connection after its drop: whatever complete events made it, then an end
/// (clean, with a `retry:`, or cut when the socket was full). Then reconnecting with its last
/// received id (as EventSource does, again after each server-side end) gives everything after it,
/// once, in order. A replay of tens of MB to a reader slower than the server writes may pass the
/// byte bound again: each connection must then have made progress.
async fn resumes_exactly(r: &Replica, slow: &mut SseConn, session: &str, published: &[String]) {
    let (ids, _) = slow
        .drain_dropped(PATIENCE)
        .await
        .expect("the dropped stream ends (it does not hang)");
    let mut seen = vec![published[0].clone()];
    seen.extend(ids);
    assert!(
        seen.len() < published.len(),
        "the slow subscriber really missed events (saw {} of {})",
        seen.len(),
        published.len()
    );
    let mut tally = Tally::new(
        &format!("slow subscriber `{session}` (every connection)"),
        published.to_vec(),
    );
    for id in &seen {
        tally.observe(id);
    }
    let sentinel = published
        .last()
        .and_then(|id| id.parse::<EventId>().ok())
        .expect("the sentinel's id")
        .seq;
    let mut cursor = slow
        .last_event_id()
        .map(ToString::to_string)
        .unwrap_or_else(|| published[0].clone());
    for connection in 2.. {
        assert!(connection <= 60, "still not caught up after 60 connections");
        let again = r
            .subscribe(
                &SseRequest::mcp()
                    .session(session)
                    .last_event_id(&cursor)
                    .recv_buffer(4 << 20),
            )
            .await
            .expect("reconnect");
        assert_eq!(again.status(), 200);
        let followed = Follower::spawn(&format!("`{session}`, connection {connection}"), again)
            .finish(sentinel, PATIENCE)
            .await
            .expect("follower");
        let ids = followed.event_ids();
        for id in &ids {
            tally.observe(id);
        }
        if followed.reached {
            break;
        }
        assert!(followed.end.is_some(), "{}", followed.summary());
        cursor = ids
            .last()
            .unwrap_or_else(|| panic!("no progress: {}", followed.summary()))
            .clone();
    }
    tally.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_held_at_the_byte_bound_is_ended_by_the_stall_deadline_and_resumes_exactly() {
    const SESSION: &str = "slow-bytes-4b1d";
    let r = start(
        "slow-bytes",
        &[
            // The byte bound paces the slow subscriber's writes; the (short) write-stall deadline
            // is what ends it.
            ("FANOUT_MAX_LAG_BYTES", "1048576"),
            ("FANOUT_WRITE_STALL_SECS", "3"),
        ],
    )
    .await;
    let mut healthy = Vec::new();
    for i in 0..2 {
        let c = r
            .subscribe(
                &SseRequest::mcp()
                    .session(&format!("healthy-{i}"))
                    // Room for a busy test process to fall behind without the server's
                    // backlog for it passing the bound.
                    .recv_buffer(4 << 20),
            )
            .await
            .expect("a healthy subscriber connects");
        assert_eq!(c.status(), 200);
        healthy.push(Follower::spawn(&format!("healthy subscriber {i}"), c));
    }
    let mut slow = slow_subscriber(&r, SESSION).await;
    r.wait_subscribers(3, SOON).await.expect("3 subscribers");
    let mut published = vec![first_event(&r, &mut slow).await];

    // About 24 MB while the slow subscriber reads nothing.
    published.extend(publish_big(&r, 24).await);
    r.wait_metric(
        "mcp_fanout_subscribers_dropped_total{reason=\"write_stall\"}",
        PATIENCE,
        |v| v == 1.0,
    )
    .await
    .expect("the slow subscriber is ended for its stalled socket");
    r.wait_subscribers(2, SOON)
        .await
        .expect("the dropped subscriber no longer counts");
    for reason in ["lagging"] {
        assert_eq!(
            dropped(&r, reason).await,
            0.0,
            "nobody dropped for {reason}"
        );
    }

    let sentinel = r
        .publish_ok(&json!({ "method": SENTINEL }))
        .await
        .expect("sentinel publish");
    published.push(sentinel.clone());

    // The healthy subscribers got everything, in order, on their first connection.
    for f in healthy {
        let followed = f
            .finish(
                sentinel.parse::<EventId>().expect("an event id").seq,
                PATIENCE,
            )
            .await
            .expect("follower");
        assert!(followed.reached, "{}", followed.summary());
        assert!(followed.end.is_none(), "{}", followed.summary());
        followed.tally(published.clone()).assert_exact();
    }

    resumes_exactly(&r, &mut slow, SESSION, &published).await;
    r.wait_for_log("the drop, with its session and reason", SOON, |v| {
        let line = v.to_string();
        line.contains(SESSION) && line.contains("write_stall")
    })
    .await
    .expect("the drop is logged with its session id and reason");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_ended_by_the_default_write_stall_deadline() {
    const SESSION: &str = "slow-stall-9c2e";
    // The default write-stall deadline; no byte bound in the way.
    let r = start("slow-stall", &[("FANOUT_MAX_LAG_BYTES", "1073741824")]).await;
    let mut slow = slow_subscriber(&r, SESSION).await;
    r.wait_subscribers(1, SOON).await.expect("1 subscriber");
    let mut published = vec![first_event(&r, &mut slow).await];

    // About 10 MB: more than the socket buffers on both sides hold, so the socket stops
    // accepting anything — some time after this instant.
    let started = Instant::now();
    published.extend(publish_big(&r, 10).await);
    r.wait_metric(
        "mcp_fanout_subscribers_dropped_total{reason=\"write_stall\"}",
        PATIENCE,
        |v| v == 1.0,
    )
    .await
    .expect("the slow subscriber is ended for its stalled socket");
    // The socket cannot have stalled before `started`: with the old 30 s default the drop came
    // 30 s or more after it. The default now is 10 s (slack for publishing and a noisy machine).
    let after = started.elapsed();
    assert!(
        after < Duration::from_secs(28),
        "ended {after:?} after publishing began; the default deadline is 10 s"
    );
    published.push(
        r.publish_ok(&json!({ "method": SENTINEL }))
            .await
            .expect("sentinel publish"),
    );
    resumes_exactly(&r, &mut slow, SESSION, &published).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_stream_left_with_hyper_is_paced_and_ended_by_the_stall_deadline_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = start(
        "slow-bytes-http10",
        &[
            ("FANOUT_MAX_LAG_BYTES", "1048576"),
            ("FANOUT_WRITE_STALL_SECS", "3"),
        ],
    )
    .await;
    let addr = r.public_addr();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut conn = socket.connect(addr).await.expect("connect");
    conn.write_all(
        format!("GET /mcp HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write the request");
    r.wait_subscribers(1, SOON).await.expect("1 subscriber");

    // About 10 MB that this client never reads.
    publish_big(&r, 10).await;
    r.wait_metric(
        "mcp_fanout_subscribers_dropped_total{reason=\"write_stall\"}",
        PATIENCE,
        |v| v == 1.0,
    )
    .await
    .expect("the HTTP/1.0 stream is ended for its stalled socket");
    r.wait_subscribers(0, SOON)
        .await
        .expect("the dropped subscriber no longer counts");
    // And its connection ends: what the server had written, then the end.
    let mut got = Vec::new();
    let read = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "the connection never ended ({} bytes read)",
        got.len()
    );
    assert!(
        got.starts_with(b"HTTP/1.0 200") || got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );
}
