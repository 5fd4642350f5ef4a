//! `FANOUT_MAX_SUBSCRIBERS_PER_CLIENT`: one client holds at most so many of a replica's
//! subscribers, so it cannot take every slot and shed everyone else. Past its share a GET stream
//! is shed as at capacity (`200`, `retry:`, a clean end, counted as `client_limit`), a waiting poll
//! gets `429 too_many_subscribers`, a 2026 listen stream a `429` JSON-RPC error, and another client
//! is served; the client's streams keep
//! receiving every event, and a stream it ends frees its place. Behind a proxy listed in
//! `FANOUT_TRUSTED_PROXIES` the client is the one the proxy names, so clients behind one load
//! balancer each get their share.
//!
//! The replicas listen on 127.0.0.1; connections from 127.0.0.1, 127.0.0.2 and 127.0.0.3 play
//! different clients (127.0.0.2 also the listed proxy).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::net::IpAddr;
use std::time::Duration;

use mcp_fanout_testkit::error_shape::expect_http_error;
use mcp_fanout_testkit::requests::open_stream_with;
use mcp_fanout_testkit::shed::expect_shed;
use mcp_fanout_testkit::sse::SseRequest;
use mcp_fanout_testkit::{client_from, start_memory, HttpResponse, Replica};
use serde_json::json;

const T: Duration = Duration::from_secs(20);
const RETRY_MS: u64 = 800;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

async fn shed_count(r: &Replica) -> f64 {
    let shed = r#"mcp_fanout_subscribers_shed_total{reason="client_limit"}"#;
    r.count(shed).await.expect("metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_share_is_shed_and_others_are_served() {
    let retry = RETRY_MS.to_string();
    let r = start_memory(
        "per-client",
        &[
            ("FANOUT_MAX_SUBSCRIBERS_PER_CLIENT", "2"),
            ("FANOUT_RETRY_MS", &retry),
        ],
    )
    .await;
    let greedy = ip("127.0.0.1");
    let mut a = open_stream_with(&r, SseRequest::mcp().from_source(greedy), "a").await;
    let b = open_stream_with(&r, SseRequest::mcp().from_source(greedy), "b").await;
    r.wait_subscribers(2, T).await.expect("two subscribers");

    // A third stream from the same client is shed; a waiting poll is refused.
    expect_shed(&r, SseRequest::mcp().from_source(greedy), RETRY_MS, "third").await;
    assert_eq!(shed_count(&r).await, 1.0);
    let poll = client_from(greedy, T)
        .expect("client")
        .get(r.public_url("/poll?timeout=20"))
        .send()
        .await
        .expect("a waiting poll");
    let poll = HttpResponse::read(poll).await.expect("read");
    expect_http_error(
        "a waiting poll past the share",
        &poll,
        429,
        "too_many_subscribers",
    );
    assert_eq!(shed_count(&r).await, 2.0);
    // So is a 2026 listen stream: a JSON-RPC error with the request's id.
    let listen = client_from(greedy, T)
        .expect("client")
        .post(r.public_url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .json(&json!({
            "jsonrpc": "2.0", "id": 7, "method": "subscriptions/listen",
            "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}
        }))
        .send()
        .await
        .expect("a listen request");
    assert_eq!(listen.status(), 429);
    let listen: serde_json::Value = listen.json().await.expect("a JSON-RPC error");
    assert_eq!(listen["id"], 7, "{listen}");
    assert!(
        listen["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("FANOUT_MAX_SUBSCRIBERS_PER_CLIENT")),
        "{listen}"
    );
    assert_eq!(shed_count(&r).await, 3.0);

    // Another client is served.
    let mut other = open_stream_with(
        &r,
        SseRequest::mcp().from_source(ip("127.0.0.3")),
        "another client",
    )
    .await;
    r.wait_subscribers(3, T).await.expect("three subscribers");

    // Every held stream gets every event, once.
    let id = r
        .publish_ok(&json!({"method": "notifications/tools/list_changed"}))
        .await
        .expect("publish");
    for (name, s) in [("a", &mut a), ("other", &mut other)] {
        let got = s.events(1, T).await.expect(name);
        assert_eq!(got[0].id.as_deref(), Some(id.as_str()), "{name}");
    }

    // A stream the client ends frees its place.
    drop(b);
    r.wait_subscribers(2, T).await.expect("b gone");
    let _c = open_stream_with(&r, SseRequest::mcp().from_source(greedy), "c, in b's place").await;
    r.wait_subscribers(3, T).await.expect("c counted");
    assert_eq!(shed_count(&r).await, 3.0, "c was not shed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_listed_proxy_each_client_it_names_has_its_own_share() {
    let retry = RETRY_MS.to_string();
    let r = start_memory(
        "per-client-proxy",
        &[
            ("FANOUT_MAX_SUBSCRIBERS_PER_CLIENT", "1"),
            ("FANOUT_TRUSTED_PROXIES", "127.0.0.2"),
            ("FANOUT_RETRY_MS", &retry),
        ],
    )
    .await;
    // A GET from `peer` saying it forwards for `claimed`.
    let get = |peer: &str, claimed: &str| {
        SseRequest::mcp()
            .from_source(ip(peer))
            .header("X-Forwarded-For", claimed)
    };
    let via_proxy = |client: &str| get("127.0.0.2", client);
    let _first = open_stream_with(&r, via_proxy("198.51.100.1"), "198.51.100.1").await;
    r.wait_subscribers(1, T).await.expect("one subscriber");
    expect_shed(
        &r,
        via_proxy("198.51.100.1"),
        RETRY_MS,
        "198.51.100.1 again",
    )
    .await;
    let _second = open_stream_with(&r, via_proxy("198.51.100.2"), "198.51.100.2").await;
    r.wait_subscribers(2, T)
        .await
        .expect("two clients behind one proxy");
    // A peer not on the list is itself, whatever it claims.
    let direct = |claimed: &str| get("127.0.0.1", claimed);
    let _third = open_stream_with(&r, direct("198.51.100.3"), "direct").await;
    r.wait_subscribers(3, T).await.expect("the direct client");
    expect_shed(
        &r,
        direct("198.51.100.4"),
        RETRY_MS,
        "direct, claiming another",
    )
    .await;
    assert_eq!(shed_count(&r).await, 2.0);
}
