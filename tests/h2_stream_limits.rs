//! HTTP/2 streams whose client never opens their flow-control window (never a `WINDOW_UPDATE`)
//! while events are published are each reset after the write-stall deadline, the drop counted as a
//! write stall; while they last they hold little (the replica's RSS stays bounded); a healthy
//! HTTP/2 stream on the same connection and a healthy HTTP/1.1 subscriber receive every event, in
//! order, without a break. An HTTP/2 connection may have `FANOUT_HTTP2_MAX_STREAMS` streams open,
//! as the server's SETTINGS say, and opens another when one ends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::h2c::{H2Conn, H2End, H2Stream, Reason};
use mcp_fanout_testkit::{start_memory, EventId, Follower, Replica, SseRequest, Tally, SOON};
use serde_json::{json, Value};

/// Streams per connection (`FANOUT_HTTP2_MAX_STREAMS` defaults to 200).
const PER_CONN: usize = 100;
/// The write-stall deadline the replica runs with.
const STALL_SECS: u64 = 3;
/// Events of 16 KB, published 16 per request (256 KB, one full write per stream).
const EVENT_BYTES: usize = 16 * 1024;
const BATCH: usize = 16;
const BATCHES: usize = 5;
/// What the stuck streams together may add to the replica's RSS. Holding a write or two each (as
/// hyper does with a body it is handed whole), 199 streams would add about 100 MB.
const RSS_BOUND: u64 = 48 << 20;
const PATIENCE: Duration = Duration::from_secs(60);
/// hyper's default initial window: the stuck streams take what it lets out, then nothing.
const STREAM_WINDOW: u32 = 65_535;

async fn open_streams(conn: &mut H2Conn, n: usize) -> Vec<H2Stream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let s = conn.get_mcp().await.expect("an HTTP/2 stream opens");
        assert_eq!(s.status(), 200);
        streams.push(s);
    }
    streams
}

/// Reads `stream` until the event with seq `last`; returns the event ids in order, and the stream.
fn read_until(mut stream: H2Stream, last: u64) -> tokio::task::JoinHandle<(Vec<String>, H2Stream)> {
    tokio::spawn(async move {
        let mut ids = Vec::new();
        loop {
            let frame = stream
                .next_frame(PATIENCE)
                .await
                .unwrap_or_else(|e| panic!("the healthy HTTP/2 stream after {ids:?}: {e}"))
                .unwrap_or_else(|| panic!("the healthy HTTP/2 stream ended after {ids:?}"));
            let Some(id) = frame.id.filter(|_| frame.data.is_some()) else {
                continue;
            };
            let seq = id.parse::<EventId>().expect("an event id").seq;
            ids.push(id);
            if seq >= last {
                return (ids, stream);
            }
        }
    })
}

async fn publish(r: &Replica, batch: usize) -> Vec<String> {
    let events: Vec<Value> = (0..BATCH)
        .map(|i| {
            json!({
                "method": "notifications/test/h2",
                "params": { "batch": batch, "i": i, "blob": "x".repeat(EVENT_BYTES) }
            })
        })
        .collect();
    r.publish_batch_ok(&events).await.expect("publish a batch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_http2_streams_are_reset_after_the_deadline_and_the_healthy_ones_get_everything() {
    let stall = STALL_SECS.to_string();
    let r = start_memory("h2-stuck", &[("FANOUT_WRITE_STALL_SECS", stall.as_str())]).await;

    let h1 = r
        .subscribe(&SseRequest::mcp().session("h1-healthy"))
        .await
        .expect("the HTTP/1.1 subscriber connects");
    assert_eq!(h1.status(), 200);
    let h1 = Follower::spawn("healthy HTTP/1.1 subscriber", h1);

    let mut a = H2Conn::connect(r.public_addr(), STREAM_WINDOW)
        .await
        .expect("HTTP/2 connection a");
    let mut b = H2Conn::connect(r.public_addr(), STREAM_WINDOW)
        .await
        .expect("HTTP/2 connection b");
    let healthy = a.get_mcp().await.expect("the healthy HTTP/2 stream");
    assert_eq!(healthy.status(), 200);
    // `FANOUT_HTTP2_MAX_STREAMS`'s default, advertised in the server's SETTINGS.
    assert_eq!(a.max_send_streams(), 200);
    let mut stuck = open_streams(&mut a, PER_CONN - 1).await;
    stuck.extend(open_streams(&mut b, PER_CONN).await);
    let subscribers = 2 + stuck.len() as u64;
    r.wait_subscribers(subscribers, SOON)
        .await
        .expect("every stream is subscribed");
    let rss_before = r.rss_bytes().expect("RSS");

    let mut published = Vec::new();
    for batch in 0..BATCHES {
        published.extend(publish(&r, batch).await);
    }
    let last = published
        .last()
        .and_then(|id| id.parse::<EventId>().ok())
        .expect("the last id")
        .seq;
    let healthy = read_until(healthy, last);

    // While the stuck streams are held (until the drops are counted), the replica's RSS stays
    // within the bound.
    let mut peak = rss_before;
    let dropped = "mcp_fanout_subscribers_dropped_total{reason=\"write_stall\"}";
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        peak = peak.max(r.rss_bytes().expect("RSS"));
        let n = r.metric(dropped).await.expect("metrics").unwrap_or(0.0);
        if n >= stuck.len() as f64 {
            assert_eq!(n, stuck.len() as f64, "only the stuck streams are dropped");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {n} of {} stuck streams were ended within {PATIENCE:?}",
            stuck.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grew = peak.saturating_sub(rss_before);
    assert!(
        grew < RSS_BOUND,
        "{} stuck streams grew the RSS by {} KB",
        stuck.len(),
        grew / 1024
    );
    r.wait_subscribers(2, SOON)
        .await
        .expect("only the healthy subscribers remain");
    for (i, s) in stuck.iter_mut().enumerate() {
        let end = s.ended(SOON).await.expect("a stuck stream ends");
        assert_eq!(
            end,
            H2End::Reset(Reason::CANCEL),
            "stuck stream {i} is reset"
        );
    }

    // The healthy ones carry on: a last event after the resets, and everything arrived in order.
    let sentinel = r
        .publish_ok(&json!({ "method": "notifications/test/h2/done" }))
        .await
        .expect("the last publish");
    published.push(sentinel.clone());
    let sentinel_seq = sentinel.parse::<EventId>().expect("an event id").seq;
    let (mut h2_ids, healthy) = tokio::time::timeout(PATIENCE, healthy)
        .await
        .expect("the healthy HTTP/2 stream got the burst")
        .expect("reader");
    let (rest, _healthy) = tokio::time::timeout(PATIENCE, read_until(healthy, sentinel_seq))
        .await
        .expect("the healthy HTTP/2 stream got the last event")
        .expect("reader");
    h2_ids.extend(rest);
    let mut tally = Tally::new("the healthy HTTP/2 stream", published.clone());
    for id in &h2_ids {
        tally.observe(id);
    }
    tally.assert_exact();

    let followed = h1.finish(sentinel_seq, PATIENCE).await.expect("follower");
    assert!(followed.reached, "{}", followed.summary());
    assert!(followed.end.is_none(), "{}", followed.summary());
    followed.tally(published).assert_exact();
    assert_eq!(
        r.metric("mcp_fanout_subscribers_dropped_total{reason=\"lagging\"}")
            .await
            .expect("metrics")
            .unwrap_or(0.0),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_may_open_the_streams_the_setting_allows_and_no_more() {
    let r = start_memory("h2-max-streams", &[("FANOUT_HTTP2_MAX_STREAMS", "3")]).await;
    let mut conn = H2Conn::connect(r.public_addr(), STREAM_WINDOW)
        .await
        .expect("an HTTP/2 connection");
    let mut open = open_streams(&mut conn, 3).await;
    // The server says so in its SETTINGS (h2 refuses a stream past it with REFUSED_STREAM; a
    // client waits for one of its streams to end instead of opening another).
    assert_eq!(conn.max_send_streams(), 3);
    r.wait_subscribers(3, SOON)
        .await
        .expect("three streams subscribed");
    // One ends (the client cancels it: its RST_STREAM goes out with the connection's next frame,
    // the next stream's HEADERS, so the server frees the slot before it sees the new stream); the
    // next stream opens in its place and is served.
    drop(open.pop());
    let next = tokio::time::timeout(SOON, conn.get_mcp())
        .await
        .expect("a stream opens once one has ended")
        .expect("the next stream");
    assert_eq!(next.status(), 200);
    r.wait_subscribers(3, SOON)
        .await
        .expect("the next stream subscribed");
    // Another connection has streams of its own.
    let mut other = H2Conn::connect(r.public_addr(), STREAM_WINDOW)
        .await
        .expect("another HTTP/2 connection");
    let _more = open_streams(&mut other, 3).await;
    r.wait_subscribers(6, SOON)
        .await
        .expect("the other connection's streams subscribed");
}
