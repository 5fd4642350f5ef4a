//! Contract §3.3: `POST /mcp` `subscriptions/listen` (MCP 2026-07-28)
//! over raw HTTP, on memory-mode replicas.
//!
//! 3. The filter is honoured: the acknowledgement is the first message and lists exactly the
//!    honoured subset (unknown keys left out); each stream then gets only the kinds it opted into
//!    — a stream that did not opt into prompts never receives `prompts/list_changed` — every frame
//!    carrying `params._meta["io.modelcontextprotocol/subscriptionId"]` and neither `id:` nor
//!    `event:`; keep-alives flow; the stream is not closed for rebalancing
//!    (`FANOUT_MAX_STREAM_SECS`); on shutdown each stream ends with its `complete` result.
//! 4. Bad requests get the specified JSON-RPC errors: a missing or mismatching `Mcp-Method` header
//!    → 400 / -32020; bad JSON-RPC → 400 / -32600 (parse failure → -32700); a missing
//!    `MCP-Protocol-Version` or one that differs from `params._meta` → 400 / -32020; an
//!    unsupported version → 400 / -32022 with `data.supported`; another method in standalone mode
//!    → 404 / -32601; at `FANOUT_MAX_SUBSCRIBERS` → 503 with a JSON-RPC error. In proxy mode the
//!    listen requests get the same answers (they are never forwarded).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

mod e2e;

use std::time::Duration;

use bytes::Bytes;
use e2e::{http, take_blocks, Answer};
use futures::StreamExt;
use mcp_fanout_testkit::{Frame, Replica};
use serde_json::{json, Value};

const VERSION: &str = "2026-07-28";
const LISTEN: &str = "subscriptions/listen";
const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
const VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";
const T: Duration = Duration::from_secs(10);

fn listen_body(id: Value, notifications: Option<Value>) -> Value {
    let mut params = json!({ "_meta": { VERSION_META: VERSION } });
    if let Some(n) = notifications {
        params["notifications"] = n;
    }
    json!({ "jsonrpc": "2.0", "id": id, "method": LISTEN, "params": params })
}

fn listen_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", VERSION),
        ("mcp-method", LISTEN),
    ]
}

async fn post(replica: &Replica, headers: &[(&str, &str)], body: &[u8]) -> reqwest::Response {
    let mut req = http().post(replica.public_url("/mcp")).body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("POST /mcp")
}

/// An open listen stream, read frame by frame.
struct Listen {
    label: String,
    id: Value,
    body: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    buf: Vec<u8>,
    pending: std::collections::VecDeque<Frame>,
    keepalives: usize,
    ended: bool,
}

impl Listen {
    /// Opens a stream and checks the answer head and the acknowledgement; returns the stream and
    /// the acknowledged filter.
    async fn open(
        replica: &Replica,
        label: &str,
        id: Value,
        filter: Option<Value>,
    ) -> (Listen, Value) {
        let resp = post(
            replica,
            &listen_headers(),
            listen_body(id.clone(), filter).to_string().as_bytes(),
        )
        .await;
        assert_eq!(resp.status(), 200, "{label}: listen status");
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(
            ct.starts_with("text/event-stream"),
            "{label}: content-type {ct}"
        );
        let mut l = Listen {
            label: label.to_string(),
            id,
            body: resp.bytes_stream().boxed(),
            buf: Vec::new(),
            pending: Default::default(),
            keepalives: 0,
            ended: false,
        };
        let ack = l
            .next_message()
            .await
            .unwrap_or_else(|| panic!("{label}: the stream ended before its acknowledgement"));
        assert_eq!(
            ack["method"], "notifications/subscriptions/acknowledged",
            "{label}: the first message is the acknowledgement: {ack}"
        );
        assert_eq!(
            ack["params"]["_meta"][SUBSCRIPTION_ID], l.id,
            "{label}: the acknowledgement carries the subscription id: {ack}"
        );
        (l, ack["params"]["notifications"].clone())
    }

    /// The next SSE block (keep-alive comments included); None at the end of the body.
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Some(f);
            }
            if self.ended {
                return None;
            }
            let chunk = tokio::time::timeout(T, self.body.next())
                .await
                .unwrap_or_else(|_| panic!("{}: nothing for {T:?}", self.label));
            match chunk {
                Some(Ok(bytes)) => {
                    self.buf.extend_from_slice(&bytes);
                    for block in take_blocks(&mut self.buf) {
                        self.pending
                            .push_back(Frame::parse(block).expect("an SSE block"));
                    }
                }
                Some(Err(e)) => panic!("{}: the stream failed: {e}", self.label),
                None => {
                    assert!(
                        self.buf.is_empty(),
                        "{}: the body ended inside a block: {:?}",
                        self.label,
                        String::from_utf8_lossy(&self.buf)
                    );
                    self.ended = true;
                }
            }
        }
    }

    /// The next message (keep-alives counted and skipped), checked for the listen framing.
    async fn next_message(&mut self) -> Option<Value> {
        loop {
            let f = self.next_frame().await?;
            if f.is_comment_only() {
                self.keepalives += 1;
                continue;
            }
            assert!(
                f.id.is_none() && f.event.is_none() && f.other_fields.is_empty(),
                "{}: a listen frame has only data (no id:, no event:): {:?}",
                self.label,
                f.text()
            );
            return Some(f.json().unwrap_or_else(|e| {
                panic!(
                    "{}: frame data is not JSON ({e}): {:?}",
                    self.label,
                    f.text()
                )
            }));
        }
    }

    /// Messages up to and including the first one `last` accepts; each event is checked for the
    /// subscription id.
    async fn messages_until(&mut self, last: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            let m = self
                .next_message()
                .await
                .unwrap_or_else(|| panic!("{}: ended early after {got:?}", self.label));
            assert_eq!(
                m["params"]["_meta"][SUBSCRIPTION_ID], self.id,
                "{}: every message carries the subscription id: {m}",
                self.label
            );
            let done = last(&m);
            got.push(m);
            if done {
                return got;
            }
        }
    }
}

fn methods(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["method"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn is_marker(m: &Value, n: i64) -> bool {
    m["method"] == "notifications/tools/list_changed" && m["params"]["marker"] == n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_honours_the_filter_and_acknowledges_only_what_it_honours() {
    let r = mcp_fanout_testkit::start(
        "listen",
        &[
            ("FANOUT_KEEPALIVE_SECS", "1"),
            ("FANOUT_MAX_STREAM_SECS", "1"),
            ("FANOUT_DRAIN_SECS", "0"),
            ("FANOUT_SHUTDOWN_GRACE_SECS", "3"),
        ],
    )
    .await;

    // Tools and one resource, prompts explicitly off, and keys this service does not know.
    let (mut l1, ack1) = Listen::open(
        &r,
        "l1",
        json!(7),
        Some(json!({
            "toolsListChanged": true,
            "promptsListChanged": false,
            "resourceSubscriptions": ["file:///a"],
            "bogusKey": true,
            "futureThing": { "x": 1 },
        })),
    )
    .await;
    assert_eq!(
        ack1,
        json!({ "toolsListChanged": true, "resourceSubscriptions": ["file:///a"] }),
        "l1: the acknowledgement lists what is honoured, no unknown keys"
    );
    let (mut l2, ack2) = Listen::open(
        &r,
        "l2",
        json!("sub-2"),
        Some(json!({ "toolsListChanged": true, "promptsListChanged": true, "resourcesListChanged": true })),
    )
    .await;
    assert_eq!(
        ack2,
        json!({ "toolsListChanged": true, "promptsListChanged": true, "resourcesListChanged": true }),
        "l2 acknowledgement"
    );
    // No filter at all: nothing is honoured, nothing is delivered.
    let (_l3, ack3) = Listen::open(&r, "l3", json!(9), None).await;
    assert_eq!(ack3, json!({}), "l3 acknowledgement");
    r.wait_metric(r#"mcp_fanout_subscribers{kind="listen"}"#, T, |v| v == 3.0)
        .await
        .expect("three listen streams counted");

    let published = r
        .publish_batch_ok(&[
            json!({ "method": "notifications/prompts/list_changed" }),
            json!({ "method": "notifications/resources/updated", "params": { "uri": "file:///b" } }),
            json!({ "method": "notifications/resources/updated", "params": { "uri": "file:///a" } }),
            json!({ "method": "notifications/resources/list_changed" }),
            json!({ "method": "notifications/message", "params": { "level": "info", "data": "x" } }),
            json!({ "method": "notifications/tools/list_changed", "params": { "marker": 1 } }),
        ])
        .await
        .expect("publish");
    assert_eq!(published.len(), 6);

    let got1 = l1.messages_until(|m| is_marker(m, 1)).await;
    assert_eq!(
        methods(&got1),
        [
            "notifications/resources/updated",
            "notifications/tools/list_changed"
        ],
        "l1 (tools + file:///a, not prompts): {got1:?}"
    );
    assert_eq!(got1[0]["params"]["uri"], "file:///a", "l1 resource update");
    let got2 = l2.messages_until(|m| is_marker(m, 1)).await;
    assert_eq!(
        methods(&got2),
        [
            "notifications/prompts/list_changed",
            "notifications/resources/list_changed",
            "notifications/tools/list_changed"
        ],
        "l2 (tools + prompts + resources list changes): {got2:?}"
    );
    // Exactly what l1 and l2 got was written: l3 got nothing.
    r.wait_metric("mcp_fanout_events_delivered_total", T, |v| v == 5.0)
        .await
        .expect("5 events delivered in all (2 to l1, 3 to l2, none to l3)");
    // Each write into a listen stream is observed in the lag histogram, as a GET stream's is:
    // one or more per stream that wrote, at most one per event.
    r.wait_metric("mcp_fanout_publish_deliver_lag_seconds_count", T, |v| {
        (2.0..=5.0).contains(&v)
    })
    .await
    .expect("the listen streams' writes observed in the lag histogram");

    // Keep-alives flow, and the stream outlives FANOUT_MAX_STREAM_SECS (listen streams are not
    // rebalanced): two keep-alives later (> 1 s) it still delivers.
    let before = l1.keepalives;
    while l1.keepalives < before + 2 {
        let f = l1.next_frame().await.expect("l1 still open");
        if f.is_comment_only() {
            l1.keepalives += 1;
        } else {
            panic!("l1: unexpected frame {:?}", f.text());
        }
    }
    r.publish_ok(
        &json!({ "method": "notifications/tools/list_changed", "params": { "marker": 2 } }),
    )
    .await
    .expect("publish marker 2");
    let got = l1.messages_until(|m| is_marker(m, 2)).await;
    assert_eq!(got.len(), 1, "l1 after keep-alives: {got:?}");

    // Shutdown: each stream ends with its `complete` result (the listen request's answer).
    r.sigterm().expect("SIGTERM");
    for l in [&mut l1, &mut l2] {
        let mut last = None;
        while let Some(m) = l.next_message().await {
            last = Some(m);
        }
        let last = last.unwrap_or_else(|| panic!("{}: no complete result", l.label));
        assert_eq!(
            last,
            json!({ "jsonrpc": "2.0", "id": l.id, "result": { "_meta": { SUBSCRIPTION_ID: l.id } } }),
            "{}: the stream ends with the complete result",
            l.label
        );
    }
}

/// One bad request and the answer it must get.
struct Case {
    name: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
    code: i64,
    /// The id the error must carry (null when the request's id could not be used).
    id: Value,
}

fn case(
    name: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: i64,
    id: Value,
) -> Case {
    Case {
        name,
        headers,
        body: body.into(),
        status,
        code,
        id,
    }
}

fn without(name: &str) -> Vec<(&'static str, &'static str)> {
    listen_headers()
        .into_iter()
        .filter(|(k, _)| *k != name)
        .collect()
}

fn with(name: &'static str, value: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut h = without(name);
    h.push((name, value));
    h
}

fn listen_with_version(version: &str) -> Vec<u8> {
    let mut b = listen_body(json!(1), Some(json!({ "toolsListChanged": true })));
    b["params"]["_meta"][VERSION_META] = json!(version);
    b.to_string().into_bytes()
}

/// Requests identified as `subscriptions/listen` that are wrong in their headers or version: the
/// same answers in standalone and in proxy mode.
fn listen_cases() -> Vec<Case> {
    let good = listen_body(json!(1), Some(json!({ "toolsListChanged": true })))
        .to_string()
        .into_bytes();
    let mut no_meta = listen_body(json!(1), Some(json!({ "toolsListChanged": true })));
    no_meta["params"]
        .as_object_mut()
        .expect("params")
        .remove("_meta");
    let no_meta = no_meta.to_string().into_bytes();
    vec![
        case(
            "Mcp-Method missing",
            without("mcp-method"),
            good.clone(),
            400,
            -32020,
            json!(1),
        ),
        case(
            "Mcp-Method names another method",
            with("mcp-method", "tools/list"),
            good.clone(),
            400,
            -32020,
            json!(1),
        ),
        case(
            "Mcp-Method differs in case",
            with("mcp-method", "Subscriptions/Listen"),
            good.clone(),
            400,
            -32020,
            json!(1),
        ),
        case(
            "MCP-Protocol-Version missing",
            without("mcp-protocol-version"),
            good.clone(),
            400,
            -32020,
            json!(1),
        ),
        case(
            "MCP-Protocol-Version differs from params._meta",
            listen_headers(),
            listen_with_version("2025-11-25"),
            400,
            -32020,
            json!(1),
        ),
        case(
            "unknown protocol version",
            with("mcp-protocol-version", "2099-01-01"),
            listen_with_version("2099-01-01"),
            400,
            -32022,
            json!(1),
        ),
        case(
            "a handshake-era protocol version",
            with("mcp-protocol-version", "2025-11-25"),
            listen_with_version("2025-11-25"),
            400,
            -32022,
            json!(1),
        ),
        case(
            "unknown protocol version, no params._meta",
            with("mcp-protocol-version", "2099-01-01"),
            no_meta,
            400,
            -32022,
            json!(1),
        ),
        // The id is the subscription id, kept as long as the stream: at most 256 bytes.
        case(
            "an id of 257 bytes",
            listen_headers(),
            listen_body(json!("i".repeat(257)), None).to_string(),
            400,
            -32600,
            Value::Null,
        ),
        // A filter lives as long as its stream: at most 256 URIs, 16 KiB of them together.
        case(
            "257 resource subscriptions",
            listen_headers(),
            listen_body(
                json!(1),
                Some(json!({ "resourceSubscriptions": (0..257).map(|i| format!("file:///{i}")).collect::<Vec<_>>() })),
            )
            .to_string(),
            400,
            -32602,
            json!(1),
        ),
        case(
            "resource subscriptions of more than 16 KiB",
            listen_headers(),
            listen_body(
                json!(1),
                Some(json!({ "resourceSubscriptions": [format!("file:///{}", "x".repeat(16 * 1024))] })),
            )
            .to_string(),
            400,
            -32602,
            json!(1),
        ),
    ]
}

/// Bodies that are not a usable JSON-RPC request, and other methods: standalone mode only (in
/// proxy mode they are the upstream's business).
fn standalone_cases() -> Vec<Case> {
    let h = listen_headers;
    let mut cases = vec![
        case("body is not JSON", h(), &b"{\"jsonrpc\": \"2.0\", \"id\": 1,"[..], 400, -32700, Value::Null),
        case("body is an array", h(), format!("[{}]", listen_body(json!(1), None)), 400, -32600, Value::Null),
        case("body is a string", h(), &b"\"subscriptions/listen\""[..], 400, -32600, Value::Null),
        case("body is a number", h(), &b"42"[..], 400, -32600, Value::Null),
        case("no method", h(), json!({"jsonrpc": "2.0", "id": 1}).to_string(), 400, -32600, Value::Null),
        case("method is not a string", h(), json!({"jsonrpc": "2.0", "id": 1, "method": 5}).to_string(), 400, -32600, Value::Null),
        case("no jsonrpc member", h(), json!({"id": 1, "method": LISTEN}).to_string(), 400, -32600, Value::Null),
        case("jsonrpc 1.0", h(), json!({"jsonrpc": "1.0", "id": 1, "method": LISTEN}).to_string(), 400, -32600, Value::Null),
        case("id null", h(), json!({"jsonrpc": "2.0", "id": null, "method": LISTEN}).to_string(), 400, -32600, Value::Null),
        case("id true", h(), json!({"jsonrpc": "2.0", "id": true, "method": LISTEN}).to_string(), 400, -32600, Value::Null),
        case("id an object", h(), json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": LISTEN}).to_string(), 400, -32600, Value::Null),
        case(
            "another method (tools/list)",
            with("mcp-method", "tools/list"),
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {VERSION_META: VERSION}}}).to_string(),
            404,
            -32601,
            json!(1),
        ),
        case(
            "another method (initialize)",
            with("mcp-method", "initialize"),
            json!({"jsonrpc": "2.0", "id": "i", "method": "initialize", "params": {}}).to_string(),
            404,
            -32601,
            json!("i"),
        ),
    ];
    cases.extend(listen_cases());
    cases
}

async fn check(r: &Replica, mode: &str, c: &Case) -> Option<String> {
    let a = Answer::read(post(r, &c.headers, &c.body).await).await;
    let body: Value = match serde_json::from_slice(&a.body) {
        Ok(v) => v,
        Err(_) => {
            return Some(format!(
                "{mode} / {}: {} with a body that is not JSON: {:?}",
                c.name,
                a.status,
                String::from_utf8_lossy(&a.body)
            ))
        }
    };
    let ct = a.header("content-type").unwrap_or("");
    let ok = a.status == c.status
        && ct.starts_with("application/json")
        && body["jsonrpc"] == "2.0"
        && body["error"]["code"] == c.code
        && body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
        && body["id"] == c.id
        && body.get("result").is_none();
    if !ok {
        return Some(format!(
            "{mode} / {}: expected {} with error {} and id {}; got {} ({ct}) {body}",
            c.name, c.status, c.code, c.id, a.status
        ));
    }
    if c.code == -32022 {
        let supported = &body["error"]["data"]["supported"];
        if !supported
            .as_array()
            .is_some_and(|s| s.contains(&json!(VERSION)))
        {
            return Some(format!(
                "{mode} / {}: -32022 must list the supported versions in data.supported; got {body}",
                c.name
            ));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_listen_requests_get_the_specified_json_rpc_errors() {
    let standalone =
        mcp_fanout_testkit::start("listen-errors", &[("FANOUT_MAX_SUBSCRIBERS", "1")]).await;
    // Proxy mode with nothing behind it: listen requests must be answered here, never forwarded.
    let proxy = mcp_fanout_testkit::start(
        "listen-errors-proxy",
        &[("FANOUT_UPSTREAM", "http://127.0.0.1:9/mcp")],
    )
    .await;
    let mut failures = Vec::new();
    for c in standalone_cases() {
        failures.extend(check(&standalone, "standalone", &c).await);
    }
    for c in listen_cases() {
        failures.extend(check(&proxy, "proxy", &c).await);
    }
    assert!(
        failures.is_empty(),
        "{} bad requests got the wrong answer:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // At capacity (FANOUT_MAX_SUBSCRIBERS=1, one stream open): 503 with a JSON-RPC error.
    let (first, _) = Listen::open(
        &standalone,
        "first",
        json!(1),
        Some(json!({ "toolsListChanged": true })),
    )
    .await;
    standalone
        .wait_subscribers(1, T)
        .await
        .expect("one subscriber");
    let a = Answer::read(
        post(
            &standalone,
            &listen_headers(),
            listen_body(json!("second"), Some(json!({ "toolsListChanged": true })))
                .to_string()
                .as_bytes(),
        )
        .await,
    )
    .await;
    let body: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
    assert_eq!(a.status, 503, "at capacity: {body}");
    assert!(
        a.header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
            && body["jsonrpc"] == "2.0"
            && body["id"] == "second"
            && body["error"]["code"].is_i64()
            && body["error"]["message"].is_string(),
        "at capacity the answer is a JSON-RPC error for the request: {body}"
    );
    // Capacity comes back when the stream goes.
    drop(first);
    standalone
        .wait_subscribers(0, T)
        .await
        .expect("the first stream is gone");
    let (_again, ack) = Listen::open(
        &standalone,
        "again",
        json!(3),
        Some(json!({ "toolsListChanged": true })),
    )
    .await;
    assert_eq!(ack, json!({ "toolsListChanged": true }));
}

/// `mcp_fanout_http_errors_total{code}` for one code (0 before the first).
async fn http_errors(r: &Replica, code: &str) -> f64 {
    r.metric(&format!(r#"mcp_fanout_http_errors_total{{code="{code}"}}"#))
        .await
        .expect("metrics")
        .unwrap_or(0.0)
}

/// A JSON-RPC error answer on `POST /mcp` is counted in `http_errors` like every other error
/// answer: by its JSON-RPC name, or (refused at the HTTP edge) by the HTTP error's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_rpc_errors_are_counted_in_http_errors() {
    let r = mcp_fanout_testkit::start("listen-error-metric", &[]).await;
    // Each case is named by the metric code it must be counted under.
    let cases = [
        case(
            "parse_error",
            listen_headers(),
            &b"{\"jsonrpc\": \"2.0\", \"id\": 1,"[..],
            400,
            -32700,
            Value::Null,
        ),
        case(
            "method_not_found",
            with("mcp-method", "tools/list"),
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {VERSION_META: VERSION}}})
                .to_string(),
            404,
            -32601,
            json!(1),
        ),
        case(
            "header_mismatch",
            without("mcp-method"),
            listen_body(json!(1), None).to_string(),
            400,
            -32020,
            json!(1),
        ),
        case(
            "unsupported_media_type",
            with("content-type", "text/plain"),
            listen_body(json!(1), None).to_string(),
            415,
            -32000,
            Value::Null,
        ),
    ];
    for c in cases {
        let before = http_errors(&r, c.name).await;
        if let Some(failure) = check(&r, "standalone", &c).await {
            panic!("{failure}");
        }
        assert_eq!(
            http_errors(&r, c.name).await,
            before + 1.0,
            "one bad POST /mcp answered with {} counts once",
            c.name
        );
    }
}
