//! The era adapter (`FANOUT_BRIDGE_2026_CLIENTS`) in front of upstreams that misbehave: the
//! answers it rewrites for 2026-07-28 clients are bounded as the rest of the proxy's are.
//!
//! - A 2025-era upstream that sends a call's answer head and half its body, then stalls: the
//!   2026 client gets a `504` JSON-RPC error answering its request after
//!   `FANOUT_UPSTREAM_TIMEOUT_SECS` (docs/proxy.md: the upstream has that long for its head and a
//!   rewritten answer whole), counted as `upstream_timeout`, not the upstream's stall.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::{Duration, Instant};

use mcp_fanout_testkit::start_memory;
use mcp_fanout_testkit::upstream::{
    legacy_handshake, Recorded, RecordingUpstream, Reply, LEGACY_SESSION,
};
use serde_json::{json, Value};

/// Long enough for anything that should happen here.
const PATIENCE: Duration = Duration::from_secs(60);

/// A 2026-07-28 `tools/call` with JSON-RPC id `id`.
fn modern_call(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": "add", "arguments": {"a": 1, "b": 2},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}
        }
    }})
}

/// Sends `body` as a 2026-07-28 request.
fn send_modern(client: &reqwest::Client, url: &str, body: &Value) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2026-07-28")
        .header(
            "Mcp-Method",
            body["method"].as_str().unwrap_or_default().to_string(),
        )
        .json(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_answer_whose_body_stalls_gets_a_timeout_error() {
    // A chunked answer (no length: relayed as it arrives, then held whole for the rewrite) of
    // which half the JSON comes.
    let upstream = RecordingUpstream::scripted(|received: &[Recorded]| {
        let req = received.last().expect("this request");
        legacy_handshake(req).unwrap_or_else(|| {
            let half = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"te"#;
            let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            bytes.extend_from_slice(format!("{:x}\r\n", half.len()).as_bytes());
            bytes.extend_from_slice(half);
            bytes.extend_from_slice(b"\r\n");
            Reply::Stall(bytes)
        })
    })
    .await
    .expect("an upstream");
    let r = start_memory(
        "adapter-stalled-rewrite",
        &[
            ("FANOUT_UPSTREAM", upstream.url("/mcp").as_str()),
            ("FANOUT_BRIDGE_2026_CLIENTS", "true"),
            ("FANOUT_UPSTREAM_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let url = r.public_url("/mcp");
    let client = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .expect("a client");

    let started = Instant::now();
    let resp = send_modern(&client, &url, &modern_call(5))
        .send()
        .await
        .expect("answered before the upstream finishes");
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    let body: Value = resp.json().await.expect("a JSON-RPC error");
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    assert_eq!(body["id"], 5, "the error answers the request: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("did not answer within 2 s")),
        "{body}"
    );
    // The call is due 2 s after it was forwarded (the probe and handshake come before).
    assert!(took < Duration::from_secs(15), "answered after {took:?}");
    let timeouts = r.metric("mcp_fanout_http_errors_total{code=\"upstream_timeout\"}");
    assert_eq!(timeouts.await.expect("metrics"), Some(1.0));
    // The call reached the upstream through the bridge (its handshake's session).
    let call = upstream
        .received()
        .into_iter()
        .find(|q| q.rpc_method().as_deref() == Some("tools/call"))
        .expect("the call was forwarded");
    assert_eq!(call.header("mcp-session-id"), Some(LEGACY_SESSION));
}
