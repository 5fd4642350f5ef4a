//! Event streams on HTTP/1.1 leave hyper after their head and are written by a writer of their
//! own (for memory: hyper's buffers go). What must still hold: every event arrives, the stream
//! ends cleanly, a hang-up frees the subscriber, a client that sends more after its GET changes
//! nothing, a `HEAD` holds no subscriber, and HTTP/1.0 and HTTP/2 streams (left with hyper) work.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::net::SocketAddr;

use futures::StreamExt;
use mcp_fanout_testkit::{note, start, Frame, SseRequest, StreamEnd, SOON};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const METHOD: &str = "notifications/test/handoff";

async fn raw_connect(addr: SocketAddr, request: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes())
        .await
        .expect("write request");
    s
}

/// Reads from `s` until `text` has been seen (or fails after `SOON`).
async fn read_until(s: &mut TcpStream, seen: &mut Vec<u8>, text: &str) {
    let found = tokio::time::timeout(SOON, async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(seen).contains(text) {
            let n = s.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed before {text:?}: {}",
                String::from_utf8_lossy(seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "{text:?} never came: {}",
        String::from_utf8_lossy(seen)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_off_stream_delivers_every_event_in_order_and_ends_cleanly() {
    let r = start(
        "handoff-end",
        &[("FANOUT_MAX_STREAM_SECS", "3"), ("FANOUT_RETRY_MS", "500")],
    )
    .await;
    let first = r.publish_ok(&note(METHOD, "end", 0)).await.expect("marker");
    let mut c = r
        .subscribe(&SseRequest::mcp().last_event_id(&first))
        .await
        .expect("subscribe");
    assert_eq!(c.status(), 200);
    assert_eq!(c.header("transfer-encoding"), Some("chunked"));
    assert_eq!(c.header("connection"), Some("close"));
    let mut ids = Vec::new();
    for n in 1..=50 {
        ids.push(
            r.publish_ok(&note(METHOD, "end", n))
                .await
                .expect("publish"),
        );
    }
    let (frames, end) = c.drain(SOON).await.expect("the stream ends at its max age");
    let got: Vec<String> = frames
        .iter()
        .filter(|f| f.is_event())
        .filter_map(|f| f.id.clone())
        .collect();
    assert_eq!(got, ids, "every event once, in order");
    assert_eq!(end, StreamEnd::Clean, "terminating chunk, then close");
    assert!(c.last_retry().is_some(), "ended with retry:");
    r.wait_subscribers(0, SOON).await.expect("slot freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_frees_the_subscriber_even_after_the_client_sent_more_than_its_get() {
    let r = start("handoff-hangup", &[]).await;
    let addr = r.public_addr();
    let get = format!(
        "GET /mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\
         MCP-Protocol-Version: 2025-11-25\r\n\r\n"
    );
    // A well-behaved client, and one that pipelines bytes after its GET.
    let mut plain = raw_connect(addr, &get).await;
    let mut chatty = raw_connect(addr, &format!("{get}GET /healthz HTTP/1.1\r\n\r\nnoise")).await;
    r.wait_subscribers(2, SOON).await.expect("both subscribed");
    // Both get every event, and keep getting them after sending more bytes mid-stream.
    for n in 1..=2 {
        let id = r
            .publish_ok(&note(METHOD, "hangup", n))
            .await
            .expect("publish");
        for s in [&mut plain, &mut chatty] {
            let mut seen = Vec::new();
            read_until(s, &mut seen, &format!("id: {id}\n")).await;
            s.write_all(b"more noise")
                .await
                .expect("write after the stream began");
        }
    }
    drop(plain);
    r.wait_subscribers(1, SOON)
        .await
        .expect("the first hang-up is seen");
    drop(chatty);
    r.wait_subscribers(0, SOON)
        .await
        .expect("the second hang-up is seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_holds_no_subscriber_and_takes_no_session() {
    let r = start("handoff-head", &[]).await;
    let addr = r.public_addr();
    let mut open = r
        .subscribe(&SseRequest::mcp().session("s-head"))
        .await
        .expect("subscribe");
    r.wait_subscribers(1, SOON).await.expect("subscribed");
    let mut s = raw_connect(
        addr,
        &format!(
            "HEAD /mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\
             Mcp-Session-Id: s-head\r\n\r\n"
        ),
    )
    .await;
    let mut seen = Vec::new();
    read_until(&mut s, &mut seen, "\r\n\r\n").await;
    assert!(
        String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    // The session's open stream was not taken over: it still gets events, and it is the only
    // subscriber.
    let id = r
        .publish_ok(&note(METHOD, "head", 1))
        .await
        .expect("publish");
    let got = open.next_event(SOON).await.expect("the open stream");
    assert_eq!(got.and_then(|f| f.id), Some(id));
    assert_eq!(
        r.metric("mcp_fanout_subscribers{kind=\"sse\"}")
            .await
            .expect("metrics"),
        Some(1.0)
    );
    assert_eq!(
        r.metric("mcp_fanout_subscribers_dropped_total{reason=\"taken_over\"}")
            .await
            .expect("metrics"),
        Some(0.0)
    );
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_and_http_2_streams_stay_with_hyper_and_get_their_events() {
    let r = start("handoff-versions", &[]).await;
    let addr = r.public_addr();
    let mut old = raw_connect(
        addr,
        &format!(
            "GET /mcp HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\
             MCP-Protocol-Version: 2025-11-25\r\n\r\n"
        ),
    )
    .await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let resp = h2
        .get(r.public_url("/mcp"))
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .expect("h2 GET");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    r.wait_subscribers(2, SOON).await.expect("both subscribed");

    let id = r
        .publish_ok(&note(METHOD, "versions", 1))
        .await
        .expect("publish");
    let mut seen = Vec::new();
    read_until(&mut old, &mut seen, &format!("id: {id}\n")).await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "HTTP/1.0 gets a close-delimited body: {text}"
    );

    let mut h2_text = String::new();
    tokio::time::timeout(SOON, async {
        while !h2_text.contains(&format!("id: {id}\n")) {
            let chunk = body
                .next()
                .await
                .expect("h2 stream open")
                .expect("h2 chunk");
            h2_text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the event never came over HTTP/2: {h2_text}"));
    let frame = h2_text
        .split("\n\n")
        .filter_map(|block| Frame::parse(format!("{block}\n\n").into()).ok())
        .find(|f| f.id.as_deref() == Some(id.as_str()))
        .expect("the event's frame");
    assert_eq!(frame.method().as_deref(), Some(METHOD));

    drop(old);
    drop(body);
    r.wait_subscribers(0, SOON).await.expect("both freed");
}
