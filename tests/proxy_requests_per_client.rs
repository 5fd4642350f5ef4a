//! Proxy mode, `FANOUT_MAX_PROXY_REQUESTS_PER_CLIENT`: one client has at most so many forwarded
//! requests in flight, so it cannot hold every upstream connection of the replica
//! (`FANOUT_UPSTREAM_MAX_CONNECTIONS`) with calls that take long — one HTTP/2 connection can
//! carry 200 of them. Past its share a request is answered `429` at once, a JSON-RPC error with
//! its id, counted as `http_errors{code="too_many_proxied_requests"}`, and nothing is forwarded;
//! another client's requests are forwarded. The upstream reads each request and never answers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::net::IpAddr;
use std::time::Duration;

use mcp_fanout_testkit::hostile::{BadUpstream, Misbehaviour};
use mcp_fanout_testkit::{start_memory, wait_for};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

/// An HTTP/2 (h2c) client whose one connection comes from `source`.
fn h2c_from(source: &str) -> reqwest::Client {
    let ip: IpAddr = source.parse().expect("an address");
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .local_address(ip)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("a client")
}

fn call(client: &reqwest::Client, url: &str, id: u64) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_requests_in_flight_is_answered_429_and_others_are_forwarded() {
    let upstream = BadUpstream::start(Misbehaviour::Silent)
        .await
        .expect("a silent upstream");
    let r = start_memory(
        "proxy-requests-per-client",
        &[
            ("FANOUT_UPSTREAM", upstream.url().as_str()),
            ("FANOUT_MAX_PROXY_REQUESTS_PER_CLIENT", "2"),
            ("FANOUT_UPSTREAM_TIMEOUT_SECS", "120"),
        ],
    )
    .await;
    let url = r.public_url("/mcp");
    let greedy = h2c_from("127.0.0.6");
    let held: Vec<_> = (1..=2)
        .map(|id| tokio::spawn(call(&greedy, &url, id).send()))
        .collect();
    wait_for("two calls at the upstream", T, || {
        let n = upstream.accepted();
        async move { (n >= 2).then_some(()) }
    })
    .await
    .expect("both calls forwarded");

    let refused = call(&greedy, &url, 3)
        .timeout(T)
        .send()
        .await
        .expect("answered at once");
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.expect("a JSON-RPC error");
    assert_eq!(body["id"], 3, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("FANOUT_MAX_PROXY_REQUESTS_PER_CLIENT")),
        "{body}"
    );
    assert_eq!(
        r.count(r#"mcp_fanout_http_errors_total{code="too_many_proxied_requests"}"#)
            .await
            .expect("metrics"),
        1.0
    );
    assert_eq!(upstream.accepted(), 2, "the refused call was not forwarded");

    // Another client is forwarded.
    let other = h2c_from("127.0.0.7");
    let _forwarded = tokio::spawn(call(&other, &url, 4).send());
    wait_for("another client's call at the upstream", T, || {
        let n = upstream.accepted();
        async move { (n >= 3).then_some(()) }
    })
    .await
    .expect("another client forwarded");

    // A call the client gives up on gives its place back: its next call is forwarded (it then
    // waits on the silent upstream rather than coming back refused).
    for h in held {
        h.abort();
    }
    let not_refused = wait_for("a call of the client not refused", T, || {
        let attempt = call(&greedy, &url, 5)
            .timeout(Duration::from_secs(1))
            .send();
        async move {
            match attempt.await {
                Ok(resp) if resp.status() == 429 => None,
                other => Some(other.map(|r| r.status())),
            }
        }
    })
    .await
    .expect("the client's place given back");
    assert!(
        not_refused.is_err(),
        "forwarded and unanswered: {not_refused:?}"
    );
    wait_for("the call at the upstream", T, || {
        let n = upstream.accepted();
        async move { (n >= 4).then_some(()) }
    })
    .await
    .expect("the client's call forwarded");
}
