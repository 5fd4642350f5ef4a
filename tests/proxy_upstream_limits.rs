//! Proxy mode in front of a misbehaving upstream MCP server: a silent upstream gets a JSON-RPC
//! error after `FANOUT_UPSTREAM_TIMEOUT_SECS`; with `FANOUT_ADVERTISE_LIST_CHANGED=true` an
//! `initialize` answer too large to rewrite (a huge JSON body, an event that never ends) is
//! relayed unmodified with the replica's memory bounded; when the client leaves, the upstream
//! connection is closed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::hostile::{
    drain_response, response_on, send_head_and_part, with_peak_rss, BadUpstream, Drained,
    Misbehaviour,
};
use mcp_fanout_testkit::{start_memory, wait_until, RawRequest, Replica, SOON};
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// What the replica may hold, beyond its memory before, while relaying an answer of any size.
const RSS_SLACK: u64 = 64 * 1024 * 1024;
/// The rewrite bound the tests run with.
const REWRITE_MAX: &str = "262144";

async fn proxy_for(up: &BadUpstream, label: &str) -> Replica {
    start_memory(
        label,
        &[
            ("FANOUT_UPSTREAM", &up.url()),
            ("FANOUT_ADVERTISE_LIST_CHANGED", "true"),
            ("FANOUT_UPSTREAM_TIMEOUT_SECS", "2"),
            ("FANOUT_UPSTREAM_REWRITE_MAX_BYTES", REWRITE_MAX),
        ],
    )
    .await
}

fn initialize() -> RawRequest {
    RawRequest::new("POST", "/mcp")
        .header("Accept", "application/json, text/event-stream")
        .header("Connection", "keep-alive")
        .json(&json!({
            "jsonrpc": "2.0",
            "id": 7,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": { "name": "hostile-test", "version": "1" }
            }
        }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_gets_a_json_rpc_error_after_the_timeout() {
    let up = BadUpstream::start(Misbehaviour::Silent)
        .await
        .expect("upstream");
    let r = proxy_for(&up, "silent-upstream").await;
    let resp = initialize()
        .send(r.public_addr(), SOON)
        .await
        .expect("the client is answered though the upstream says nothing");
    assert_eq!(resp.status(), 504, "{}", resp.text());
    let body: Value = resp.json().expect("json");
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    assert_eq!(body["id"], 7, "the error answers the request: {body}");
    assert!(body["error"]["code"].is_i64(), "{body}");
    // The proxy gave up on the upstream request: its connection is closed.
    wait_until("the upstream connection to close", SOON, || async {
        up.ended() >= 1
    })
    .await
    .expect("the proxy closes the silent upstream's connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_body_over_its_limit_is_refused_before_it_is_read() {
    let up = BadUpstream::start(Misbehaviour::Silent)
        .await
        .expect("upstream");
    let r = start_memory(
        "proxy-body-limit",
        &[
            ("FANOUT_UPSTREAM", &up.url()),
            ("FANOUT_MAX_PROXY_REQUEST_BYTES", "65536"),
        ],
    )
    .await;
    let mut conn = send_head_and_part(
        r.public_addr(),
        &RawRequest::new("POST", "/mcp")
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .header("Content-Length", "1048576")
            .header("Connection", "keep-alive"),
        &[b' '; 4096],
    )
    .await
    .expect("send");
    let resp = response_on(&mut conn, "POST", SOON)
        .await
        .expect("answered before the body is sent");
    assert_eq!(resp.status(), 413, "{}", resp.text());
    let body: Value = resp.json().expect("json");
    assert_eq!(body["jsonrpc"], "2.0", "a JSON-RPC error: {body}");
    assert_eq!(up.accepted(), 0, "nothing reached the upstream");
}

/// What a client got for its `initialize` through a proxy in front of a misbehaving upstream.
struct Relayed {
    up: BadUpstream,
    /// Kept open: the client is still there.
    conn: TcpStream,
    drained: Drained,
    rss_before: u64,
    rss_peak: u64,
    _replica: Replica,
}

/// Sends `initialize` through a proxy in front of an upstream that answers `how`, and reads the
/// answer (up to `max_body` bytes of its body), sampling the replica's memory meanwhile.
async fn initialize_through(how: Misbehaviour, label: &str, max_body: u64) -> Relayed {
    let up = BadUpstream::start(how).await.expect("upstream");
    let r = proxy_for(&up, label).await;
    let rss_before = r.rss_bytes().expect("rss");
    let ((conn, drained), rss_peak) = with_peak_rss(r.pid(), async {
        let mut conn = send_head_and_part(r.public_addr(), &initialize(), b"")
            .await
            .expect("send");
        let drained = drain_response(&mut conn, "POST", max_body, Duration::from_secs(120))
            .await
            .expect("the answer is relayed as it comes");
        (conn, drained)
    })
    .await;
    Relayed {
        up,
        conn,
        drained,
        rss_before,
        rss_peak,
        _replica: r,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_initialize_answer_is_relayed_unmodified_in_bounded_memory() {
    const HUGE: u64 = 128 * 1024 * 1024;
    let Relayed {
        drained,
        rss_before: before,
        rss_peak: peak,
        ..
    } = initialize_through(
        Misbehaviour::HugeJson { bytes: HUGE },
        "huge-upstream",
        u64::MAX,
    )
    .await;
    assert_eq!(drained.head.status, 200);
    assert!(
        peak <= before + RSS_SLACK,
        "RSS went from {before} to {peak} bytes relaying a {HUGE}-byte answer"
    );
    assert!(drained.ended, "the answer ends");
    assert_eq!(drained.body_bytes, HUGE, "relayed whole, unmodified");
    assert!(
        drained
            .first
            .starts_with(br#"{"jsonrpc":"2.0","id":1,"result":"#),
        "unmodified: {}",
        String::from_utf8_lossy(&drained.first)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_never_ends_is_relayed_and_the_upstream_closed_when_the_client_leaves() {
    const READ: u64 = 16 * 1024 * 1024;
    let Relayed {
        up,
        conn,
        drained,
        rss_before: before,
        rss_peak: peak,
        _replica,
    } = initialize_through(Misbehaviour::EndlessEvent, "endless-upstream", READ).await;
    assert_eq!(drained.head.status, 200);
    assert_eq!(
        drained.head.header("content-type"),
        Some("text/event-stream")
    );
    assert!(drained.body_bytes >= READ);
    assert!(
        drained.first.starts_with(b"event: message\ndata: xxxx"),
        "{}",
        String::from_utf8_lossy(&drained.first)
    );
    assert!(
        peak <= before + RSS_SLACK,
        "RSS went from {before} to {peak} bytes relaying an endless event"
    );

    // The client leaves: the proxy stops reading and closes the upstream connection.
    drop(conn);
    wait_until("the upstream connection to close", SOON, || async {
        up.ended() >= 1
    })
    .await
    .expect("the proxy closes the upstream connection after the client left");
    let written = up.written();
    assert!(written >= READ);
}
