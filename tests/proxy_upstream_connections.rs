//! Proxy mode bounds the upstream connections a replica holds (docs/configuration.md
//! `FANOUT_UPSTREAM_MAX_CONNECTIONS`; docs/proxy.md): each forwarded request holds one until its
//! answer is relayed, and one HTTP/2 client connection may carry 200 requests at once, so without
//! a bound a single client could make the replica open upstream connections until it runs out of
//! files. The upstream is the Python SDK 1.x FastMCP server (stateless, SSE answers) with a
//! `gated` tool that streams a log message and then holds its result until released.
//!
//! With `FANOUT_UPSTREAM_MAX_CONNECTIONS=2` and one HTTP/2 (h2c) client connection: two gated calls
//! in flight (each one's log message relayed); a third request on the same connection is answered
//! `503` at once, a JSON-RPC error carrying its id and `Retry-After`, counted as
//! `http_errors{code="upstream_busy"}` and said at warn; the replica keeps serving (`/healthz`). Once one gated call
//! is released and its answer has ended, the next call is forwarded and answered; the other gated
//! call, released, ends with its own result.
//!
//! The era adapter's own upstream requests (its probe of the upstream's era, its handshakes, the
//! `DELETE` of an evicted session) hold connections too and count toward the same bound: with
//! every connection held by calls a silent upstream never answers, 2026-07-28 requests from
//! callers with new credentials are refused as `upstream_busy` at once, and no connection is
//! opened for them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

mod e2e;

use std::time::Duration;

use e2e::{tool_call, Gated, Upstream};
use mcp_fanout_testkit::h2c::reqwest_h2c;
use mcp_fanout_testkit::hostile::{BadUpstream, Misbehaviour};
use mcp_fanout_testkit::start_memory;
use serde_json::{json, Value};

const STEP: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_bounded_and_a_request_past_the_bound_is_refused_at_once() {
    e2e::ensure_setup();
    let upstream = Upstream::py1("bounded-upstream", &["--stateless"]).await;
    let r = start_memory(
        "proxy-bounded",
        &[
            ("FANOUT_UPSTREAM", upstream.url.as_str()),
            ("FANOUT_UPSTREAM_MAX_CONNECTIONS", "2"),
        ],
    )
    .await;
    let url = r.public_url("/mcp");
    // One HTTP/2 connection carries every request below.
    let h2 = reqwest_h2c(STEP).expect("an h2c client");

    let first = Gated::start(&h2, &url, 1, "first").await;
    let second = Gated::start(&h2, &url, 2, "second").await;

    let refused = tool_call(&h2, &url, 3, "add", json!({"a": 2, "b": 40}))
        .send()
        .await
        .expect("answered");
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = refused.json().await.expect("a JSON-RPC error");
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], 3);
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("FANOUT_UPSTREAM_MAX_CONNECTIONS = 2"),
        "{body}"
    );
    // Said in the log, at warn, with the bound and how many were refused since the last line.
    r.wait_for_log("the refusal, said at warn", STEP, |v| {
        v["level"] == "WARN"
            && v.pointer("/fields/message")
                .and_then(Value::as_str)
                .is_some_and(|m| m.contains("requests refused as upstream_busy"))
            && v.pointer("/fields/max_connections") == Some(&json!(2))
            && v.pointer("/fields/refused") == Some(&json!(1))
    })
    .await
    .expect("the replica says it refused a request");
    let health = reqwest::get(r.admin_url("/healthz"))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(r.admin_url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mcp_fanout_http_errors_total{code=\"upstream_busy\"} 1")),
        "counted once as upstream_busy:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("http_errors"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // A released call's answer ends; its connection is free for the next request.
    upstream.release("first").await;
    let first = first.finish().await;
    assert!(first.contains("released first"), "{first}");
    let answered = tool_call(&h2, &url, 4, "add", json!({"a": 2, "b": 40}))
        .send()
        .await
        .expect("answered");
    assert_eq!(answered.status(), 200);
    let text = answered.text().await.expect("its body");
    assert!(text.contains("42") && text.contains("\"id\":4"), "{text}");

    upstream.release("second").await;
    let second = second.finish().await;
    assert!(second.contains("released second"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_era_adapters_own_upstream_requests_count_toward_the_bound() {
    let upstream = BadUpstream::start(Misbehaviour::Silent)
        .await
        .expect("a silent upstream");
    let upstream_url = upstream.url();
    let r = start_memory(
        "proxy-bounded-adapter",
        &[
            ("FANOUT_UPSTREAM", upstream_url.as_str()),
            ("FANOUT_UPSTREAM_MAX_CONNECTIONS", "2"),
            ("FANOUT_UPSTREAM_TIMEOUT_SECS", "120"),
            ("FANOUT_BRIDGE_2026_CLIENTS", "true"),
        ],
    )
    .await;
    let url = r.public_url("/mcp");
    let h2 = reqwest_h2c(STEP).expect("an h2c client");
    // Two calls the upstream never answers hold both connections.
    let held: Vec<_> = (1..=2)
        .map(|id| tokio::spawn(tool_call(&h2, &url, id, "add", json!({"a": 1, "b": 2})).send()))
        .collect();
    mcp_fanout_testkit::wait_until("both calls reached the upstream", STEP, || async {
        upstream.accepted() == 2
    })
    .await
    .expect("two upstream connections");

    // Callers cycling credentials: each would need the era probe (the era is not known yet) and a
    // handshake of its own.
    for n in 0..3u64 {
        let body = json!({"jsonrpc": "2.0", "id": 10 + n, "method": "tools/call", "params": {
            "name": "add", "arguments": {"a": 1, "b": 2},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}
            }
        }});
        let answer = h2
            .post(&url)
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2026-07-28")
            .header("Mcp-Method", "tools/call")
            .header("Authorization", format!("Bearer cycling-{n}"))
            .json(&body)
            .send()
            .await
            .expect("answered");
        assert_eq!(answer.status(), 503, "caller {n}");
        assert_eq!(
            answer.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let answer: Value = answer.json().await.expect("a JSON-RPC error");
        assert_eq!(answer["id"], 10 + n, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("FANOUT_UPSTREAM_MAX_CONNECTIONS = 2")),
            "{answer}"
        );
    }
    // Every refusal came before any upstream connection was opened for it.
    assert_eq!(
        upstream.accepted(),
        2,
        "no upstream connection past the bound"
    );
    assert_eq!(
        r.metric("mcp_fanout_http_errors_total{code=\"upstream_busy\"}")
            .await
            .expect("metrics"),
        Some(3.0)
    );
    for call in held {
        call.abort();
    }
}
