//! through a proxy-mode replica (`FANOUT_UPSTREAM`), MCP requests behave
//! exactly as against the upstream directly. Two Python SDK 1.x servers (FastMCP, stateful), one
//! answering POSTs with SSE (the SDK's default), one with JSON (`json_response=True`), each with a
//! replica in front. The same session — `initialize`, `notifications/initialized`, `tools/list`,
//! `tools/call` (a result, a unicode echo, an unknown tool), a request for an unknown session, a
//! body that is not JSON, `DELETE`, a request on the deleted session — runs directly and through
//! the replica; every answer must match: status, headers (all but `date`; `mcp-session-id` by
//! presence, since each run gets its own session), and body bytes.
//!
//! On the SSE upstream, a tool call that logs a message and then waits for the test proves the
//! answer is relayed frame by frame: the log message must arrive through the replica while the
//! upstream is still holding the result back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

mod e2e;

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{http, initialize_request, take_blocks, Answer, Upstream, UpstreamKind};
use futures::StreamExt;
use mcp_fanout_testkit::{Frame, Replica};
use serde_json::{json, Value};

const PROTOCOL: &str = "2025-11-25";

/// One request/answer of the flow, as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Exchange {
    step: String,
    status: u16,
    /// Every header but `date`, `mcp-session-id` and hop-by-hop ones, lower-cased names, values in
    /// order.
    headers: BTreeMap<String, Vec<String>>,
    has_session: bool,
    body: String,
}

const NOT_COMPARED: [&str; 5] = [
    "date",
    "mcp-session-id",
    "connection",
    "keep-alive",
    "transfer-encoding",
];

fn exchange(step: &str, a: &Answer) -> Exchange {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &a.headers {
        if NOT_COMPARED.contains(&name.as_str()) {
            continue;
        }
        headers
            .entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    Exchange {
        step: step.to_string(),
        status: a.status,
        headers,
        has_session: a.headers.contains_key("mcp-session-id"),
        body: String::from_utf8_lossy(&a.body).into_owned(),
    }
}

struct Flow<'a> {
    endpoint: String,
    upstream: &'a Upstream,
    session: Option<String>,
    out: Vec<Exchange>,
}

impl Flow<'_> {
    fn request(&self, method: &str, body: Option<String>) -> reqwest::RequestBuilder {
        let mut req = http()
            .request(method.parse().expect("method"), &self.endpoint)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json");
        if let Some(s) = &self.session {
            req = req
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", PROTOCOL);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        req
    }

    async fn send(&mut self, step: &str, method: &str, body: Option<String>) -> Answer {
        let answer = Answer::read(
            self.request(method, body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{step} on {}: {e}", self.endpoint)),
        )
        .await;
        self.out.push(exchange(step, &answer));
        answer
    }

    async fn rpc(&mut self, step: &str, msg: Value) -> Answer {
        self.send(step, "POST", Some(msg.to_string())).await
    }

    /// `tools/call gated(key)`: reads the answer as it streams; releases the upstream only once
    /// the log message is in, then reads the rest.
    async fn gated(&mut self, key: &str) {
        let body = json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
            "params": {"name": "gated", "arguments": {"key": key}}});
        let resp = self
            .request("POST", Some(body.to_string()))
            .send()
            .await
            .expect("POST tools/call gated");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut stream = resp.bytes_stream();
        let mut raw = Vec::new();
        let mut buf = Vec::new();
        let logged = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.expect("read the gated answer");
                raw.extend_from_slice(&chunk);
                buf.extend_from_slice(&chunk);
                for block in take_blocks(&mut buf) {
                    let frame = Frame::parse(block).expect("SSE block");
                    if frame.method().as_deref() == Some("notifications/message") {
                        return true;
                    }
                }
            }
            false
        })
        .await;
        assert_eq!(
            logged,
            Ok(true),
            "{}: the log message of the gated call must arrive while the upstream still holds \
             the result (an SSE answer relayed frame by frame, not buffered); got so far: {:?}",
            self.endpoint,
            String::from_utf8_lossy(&raw)
        );
        self.upstream.release(key).await;
        while let Some(chunk) = stream.next().await {
            raw.extend_from_slice(&chunk.expect("read the rest of the gated answer"));
        }
        let answer = Answer {
            status,
            headers,
            body: raw.into(),
        };
        self.out
            .push(exchange("tools/call gated (streamed)", &answer));
    }
}

async fn run_flow(endpoint: String, upstream: &Upstream, sse: bool) -> Vec<Exchange> {
    let mut f = Flow {
        endpoint,
        upstream,
        session: None,
        out: Vec::new(),
    };
    let init = f.rpc("initialize", initialize_request(1)).await;
    assert_eq!(init.status, 200, "initialize on {}", f.endpoint);
    f.session = Some(
        init.header("mcp-session-id")
            .unwrap_or_else(|| panic!("initialize on {} gave no session id", f.endpoint))
            .to_string(),
    );
    f.rpc(
        "notifications/initialized",
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    f.rpc(
        "tools/list",
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    f.rpc(
        "tools/call add",
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "add", "arguments": {"a": 2, "b": 40}}}),
    )
    .await;
    f.rpc(
        "tools/call echo",
        json!({"jsonrpc": "2.0", "id": "four", "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "héllo ✓ \"quoted\"\nnew line"}}}),
    )
    .await;
    f.rpc(
        "tools/call unknown tool",
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
            "params": {"name": "no_such_tool", "arguments": {}}}),
    )
    .await;
    if sse {
        let key = if f.endpoint.contains(&upstream.url) {
            "direct"
        } else {
            "proxied"
        };
        // Same length, so the bodies can be compared after swapping the key.
        f.gated(&format!("{key:>8}").replace(' ', "_")).await;
    }
    let session = f.session.take();
    f.session = Some("0123456789abcdef0123456789abcdef".into());
    f.rpc(
        "tools/list on an unknown session",
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}),
    )
    .await;
    f.session = session;
    f.send("a body that is not JSON", "POST", Some("{not json".into()))
        .await;
    f.send("DELETE the session", "DELETE", None).await;
    f.rpc(
        "tools/list on the deleted session",
        json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list"}),
    )
    .await;
    f.out
}

async fn proxied_equals_direct(kind: UpstreamKind, sse: bool) {
    e2e::ensure_setup();
    let label = if sse { "sse" } else { "json" };
    let up = Upstream::start(kind, &format!("upstream-{label}")).await;
    let replica: Replica =
        mcp_fanout_testkit::start(&format!("proxy-{label}"), &[("FANOUT_UPSTREAM", &up.url)]).await;
    let direct = run_flow(up.url.clone(), &up, sse).await;
    let proxied = run_flow(replica.public_url("/mcp"), &up, sse).await;
    assert_eq!(direct.len(), proxied.len());
    let mut diffs = Vec::new();
    for (d, p) in direct.iter().zip(&proxied) {
        let p = Exchange {
            body: p.body.replace("_proxied", "__direct"),
            ..p.clone()
        };
        if *d != p {
            diffs.push(format!("{}:\n  direct:  {d:?}\n  proxied: {p:?}", d.step));
        }
    }
    assert!(
        diffs.is_empty(),
        "{label} upstream: {} of {} answers differ through the proxy:\n{}",
        diffs.len(),
        direct.len(),
        diffs.join("\n")
    );
    // The flow did what it claims (so equal answers are not equal failures).
    let by_step = |s: &str| {
        direct
            .iter()
            .find(|e| e.step == s)
            .unwrap_or_else(|| panic!("step {s}"))
    };
    assert!(by_step("initialize").has_session);
    assert_eq!(by_step("notifications/initialized").status, 202);
    assert_eq!(by_step("tools/list").status, 200);
    assert!(by_step("tools/list").body.contains("\"gated\""));
    assert!(by_step("tools/call add").body.contains("42"));
    assert_eq!(by_step("tools/list on an unknown session").status, 404);
    assert_eq!(by_step("a body that is not JSON").status, 400);
    assert_eq!(by_step("DELETE the session").status, 200);
    assert_eq!(by_step("tools/list on the deleted session").status, 404);
    let content_type = by_step("tools/call add").headers["content-type"][0].clone();
    assert!(
        content_type.starts_with(if sse {
            "text/event-stream"
        } else {
            "application/json"
        }),
        "{label} upstream answered tools/call with {content_type}"
    );
    eprintln!(
        "[test] {label}: {} exchanges identical directly and through the proxy",
        direct.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_requests_behave_as_direct_ones_sse_answers() {
    proxied_equals_direct(UpstreamKind::V1Sse, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_requests_behave_as_direct_ones_json_answers() {
    proxied_equals_direct(UpstreamKind::V1Json, false).await;
}
