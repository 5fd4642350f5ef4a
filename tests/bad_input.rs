//! Acceptance 4 (SPEC §3, §4.1, §7.6): every kind of bad input to `/admin/publish`, `/mcp` and `/poll`
//! gets its expected status and JSON error code in the one error shape, and the service keeps serving.
//! Requests are written byte for byte over raw TCP, so nothing a client library would refuse to send
//! is out of reach.

use std::net::SocketAddr;
use std::time::Duration;

use mcp_fanout_testkit::{start, RawRequest, RawResponse, Replica, SseRequest, SOON};
use serde_json::{json, Value};

const TOKEN: &str = "tok-a-5b1e";
const OTHER_TOKEN: &str = "tok-b-93c2";
const ALLOWED_ORIGIN: &str = "https://console.allowed.example";
const MAX_BATCH: usize = 5;
const MAX_PAYLOAD: usize = 1024;
const MAX_BODY: usize = 64 * 1024;
const T: Duration = Duration::from_secs(10);

struct Case {
    name: &'static str,
    req: RawRequest,
    status: u16,
    /// Acceptable codes: one, except where SPEC §4.1 leaves two equally valid readings.
    codes: &'static [&'static str],
    field: Option<&'static str>,
    index: Option<u64>,
    header: Option<&'static str>,
}

fn case(name: &'static str, req: RawRequest, status: u16, codes: &'static [&'static str]) -> Case {
    Case {
        name,
        req,
        status,
        codes,
        field: None,
        index: None,
        header: None,
    }
}

impl Case {
    fn field(mut self, f: &'static str) -> Self {
        self.field = Some(f);
        self
    }
    fn index(mut self, i: u64) -> Self {
        self.index = Some(i);
        self
    }
    fn with_header(mut self, h: &'static str) -> Self {
        self.header = Some(h);
        self
    }
}

fn publish_raw(body: impl Into<Vec<u8>>) -> RawRequest {
    RawRequest::new("POST", "/admin/publish")
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .body(body)
}

fn publish(body: &Value) -> RawRequest {
    publish_raw(body.to_string())
}

fn ok_event(n: usize) -> Value {
    json!({ "method": "notifications/test/ok", "params": { "n": n } })
}

fn sse(path: &str) -> RawRequest {
    RawRequest::new("GET", path).header("Accept", "text/event-stream")
}

fn cases() -> Vec<Case> {
    let long_method = format!(
        "notifications/{}",
        "a".repeat(128 - "notifications/".len() + 1)
    );
    let big_params = json!({ "blob": "x".repeat(MAX_PAYLOAD + 10) });
    let batch_over = Value::Array((0..=MAX_BATCH).map(ok_event).collect());
    let mut padded = json!({ "method": "notifications/test/ok" })
        .to_string()
        .into_bytes();
    padded.extend(std::iter::repeat_n(b' ', MAX_BODY + 1));

    vec![
        // ---- /admin/publish: body ----
        case(
            "malformed JSON",
            publish_raw(r#"{"method":"#),
            400,
            &["invalid_json"],
        ),
        case(
            "not JSON at all",
            publish_raw("hello"),
            400,
            &["invalid_json"],
        ),
        case(
            "trailing garbage",
            publish_raw(r#"{"method":"notifications/x"} x"#),
            400,
            &["invalid_json"],
        ),
        case(
            "body is a number",
            publish_raw("42"),
            400,
            &["invalid_json", "invalid_field"],
        ),
        case(
            "body is a string",
            publish_raw(r#""notifications/x""#),
            400,
            &["invalid_json", "invalid_field"],
        ),
        case(
            "method missing",
            publish(&json!({ "params": {} })),
            400,
            &["invalid_method", "invalid_field"],
        ),
        case(
            "method empty",
            publish(&json!({ "method": "" })),
            400,
            &["invalid_method"],
        ),
        case(
            "method of the wrong type",
            publish(&json!({ "method": 5 })),
            400,
            &["invalid_method", "invalid_field"],
        ),
        case(
            "method without the notifications/ prefix",
            publish(&json!({ "method": "tools/list_changed" })),
            400,
            &["invalid_method"],
        ),
        case(
            "method with a space",
            publish(&json!({ "method": "notifications/has space" })),
            400,
            &["invalid_method"],
        ),
        case(
            "method with a non-ASCII byte",
            publish(&json!({ "method": "notifications/é" })),
            400,
            &["invalid_method"],
        ),
        case(
            "method over 128 bytes",
            publish(&json!({ "method": long_method })),
            400,
            &["invalid_method"],
        ),
        case(
            "message with an id (a request)",
            publish(&json!({ "jsonrpc": "2.0", "id": 1, "method": "notifications/x" })),
            400,
            &["not_a_notification"],
        ),
        case(
            "jsonrpc other than 2.0",
            publish(&json!({ "jsonrpc": "1.0", "method": "notifications/x" })),
            400,
            &["invalid_field"],
        )
        .field("jsonrpc"),
        case(
            "params an array",
            publish(&json!({ "method": "notifications/x", "params": [1, 2] })),
            400,
            &["invalid_params"],
        ),
        case(
            "params a string",
            publish(&json!({ "method": "notifications/x", "params": "p" })),
            400,
            &["invalid_params"],
        ),
        case(
            "params a number",
            publish(&json!({ "method": "notifications/x", "params": 3 })),
            400,
            &["invalid_params"],
        ),
        case(
            "\\u0000 in a params string",
            publish_raw(r#"{"method":"notifications/x","params":{"a":"x\u0000y"}}"#),
            400,
            &["invalid_params"],
        ),
        case(
            "\\u0000 deep in params",
            publish_raw(r#"{"method":"notifications/x","params":{"a":[{"b":"\u0000"}]}}"#),
            400,
            &["invalid_params"],
        ),
        case(
            "tenant of the wrong type",
            publish(&json!({ "method": "notifications/x", "tenant": 5 })),
            400,
            &["invalid_field"],
        )
        .field("tenant"),
        case(
            "session of the wrong type",
            publish(&json!({ "method": "notifications/x", "session": ["s"] })),
            400,
            &["invalid_field"],
        )
        .field("session"),
        case(
            "key of the wrong type",
            publish(&json!({ "method": "notifications/x", "key": 7 })),
            400,
            &["invalid_field"],
        )
        .field("key"),
        case(
            "unknown field (typo of tenant)",
            publish(&json!({ "method": "notifications/x", "tenat": "acme" })),
            400,
            &["unknown_field"],
        ),
        case("empty batch", publish(&json!([])), 400, &["empty_batch"]),
        case(
            "batch over FANOUT_MAX_BATCH",
            publish(&batch_over),
            400,
            &["batch_too_large"],
        ),
        case(
            "batch with a bad method at index 2",
            publish(&json!([ok_event(0), ok_event(1), { "method": "bad" }])),
            400,
            &["invalid_method"],
        )
        .index(2),
        case(
            "batch with an unknown field at index 1",
            publish(&json!([ok_event(0), { "method": "notifications/x", "tenat": "a" }])),
            400,
            &["unknown_field"],
        )
        .index(1),
        case(
            "params over FANOUT_MAX_PAYLOAD_BYTES",
            publish(&json!({ "method": "notifications/x", "params": big_params })),
            413,
            &["payload_too_large"],
        ),
        case(
            "oversized params at batch index 1",
            publish(&json!([ok_event(0), { "method": "notifications/x", "params": big_params }])),
            413,
            &["payload_too_large"],
        )
        .index(1),
        case(
            "body over FANOUT_MAX_BODY_BYTES",
            publish_raw(padded),
            413,
            &["payload_too_large"],
        ),
        // ---- /admin/publish: headers ----
        case(
            "content type text/plain",
            RawRequest::new("POST", "/admin/publish")
                .header("Authorization", &format!("Bearer {TOKEN}"))
                .header("Content-Type", "text/plain")
                .body(ok_event(0).to_string()),
            415,
            &["unsupported_media_type"],
        ),
        case(
            "no content type",
            RawRequest::new("POST", "/admin/publish")
                .header("Authorization", &format!("Bearer {TOKEN}"))
                .body(ok_event(0).to_string()),
            415,
            &["unsupported_media_type"],
        ),
        case(
            "token missing",
            RawRequest::new("POST", "/admin/publish")
                .header("Content-Type", "application/json")
                .body(ok_event(0).to_string()),
            401,
            &["unauthorized"],
        )
        .with_header("www-authenticate"),
        case(
            "token wrong",
            RawRequest::new("POST", "/admin/publish")
                .header("Authorization", "Bearer tok-a-5b1f")
                .header("Content-Type", "application/json")
                .body(ok_event(0).to_string()),
            401,
            &["unauthorized"],
        )
        .with_header("www-authenticate"),
        case(
            "token a prefix of the real one",
            RawRequest::new("POST", "/admin/publish")
                .header("Authorization", "Bearer tok-a")
                .header("Content-Type", "application/json")
                .body(ok_event(0).to_string()),
            401,
            &["unauthorized"],
        )
        .with_header("www-authenticate"),
        case(
            "not a bearer credential",
            RawRequest::new("POST", "/admin/publish")
                .header("Authorization", &format!("Basic {TOKEN}"))
                .header("Content-Type", "application/json")
                .body(ok_event(0).to_string()),
            401,
            &["unauthorized"],
        )
        .with_header("www-authenticate"),
        case(
            "foreign Origin on publish",
            publish(&ok_event(0)).header("Origin", "https://evil.example"),
            403,
            &["forbidden"],
        ),
        // ---- /mcp ----
        case(
            "GET /mcp without Accept",
            RawRequest::new("GET", "/mcp"),
            406,
            &["not_acceptable"],
        ),
        case(
            "GET /mcp with Accept */*",
            RawRequest::new("GET", "/mcp").header("Accept", "*/*"),
            406,
            &["not_acceptable"],
        ),
        case(
            "GET /mcp with Accept application/json",
            RawRequest::new("GET", "/mcp").header("Accept", "application/json"),
            406,
            &["not_acceptable"],
        ),
        case(
            "Last-Event-ID over 256 bytes",
            sse("/mcp").header("Last-Event-ID", &"a".repeat(257)),
            400,
            &["invalid_event_id"],
        ),
        case(
            "Last-Event-ID with a control byte (TAB)",
            sse("/mcp").header_bytes("Last-Event-ID", b"abc\tdef-1"),
            400,
            &["invalid_event_id"],
        ),
        case(
            "last_event_id query with a control byte",
            sse("/mcp?last_event_id=ab%01c-1"),
            400,
            &["invalid_event_id"],
        ),
        case(
            "last_event_id query with DEL",
            sse("/mcp?last_event_id=ab%7Fc-1"),
            400,
            &["invalid_event_id"],
        ),
        case(
            "unsupported MCP-Protocol-Version",
            sse("/mcp").header("MCP-Protocol-Version", "2024-11-05"),
            400,
            &["unsupported_protocol_version"],
        ),
        case(
            "garbage MCP-Protocol-Version",
            sse("/mcp").header("MCP-Protocol-Version", "banana"),
            400,
            &["unsupported_protocol_version"],
        ),
        case(
            "Mcp-Session-Id over 128 bytes",
            sse("/mcp").header("Mcp-Session-Id", &"s".repeat(129)),
            400,
            &["invalid_session_id"],
        ),
        case(
            "Mcp-Session-Id with a space",
            sse("/mcp").header("Mcp-Session-Id", "a b"),
            400,
            &["invalid_session_id"],
        ),
        case(
            "foreign Origin on /mcp",
            sse("/mcp").header("Origin", "https://evil.example"),
            403,
            &["forbidden"],
        ),
        // ---- /poll ----
        case(
            "poll after over 256 bytes",
            RawRequest::new("GET", &format!("/poll?after={}&timeout=0", "a".repeat(257))),
            400,
            &["invalid_event_id"],
        ),
        case(
            "poll after with a control byte",
            RawRequest::new("GET", "/poll?after=a%1Fb-1&timeout=0"),
            400,
            &["invalid_event_id"],
        ),
        case(
            "poll timeout negative",
            RawRequest::new("GET", "/poll?timeout=-1"),
            400,
            &["invalid_field"],
        )
        .field("timeout"),
        case(
            "poll timeout not a number",
            RawRequest::new("GET", "/poll?timeout=soon"),
            400,
            &["invalid_field"],
        )
        .field("timeout"),
        case(
            "poll timeout fractional",
            RawRequest::new("GET", "/poll?timeout=1.5"),
            400,
            &["invalid_field"],
        )
        .field("timeout"),
        case(
            "foreign Origin on /poll",
            RawRequest::new("GET", "/poll?timeout=0").header("Origin", "https://evil.example"),
            403,
            &["forbidden"],
        ),
        // ---- routing ----
        case(
            "unknown path",
            RawRequest::new("GET", "/nope"),
            404,
            &["not_found"],
        ),
        case(
            "unknown path under /mcp",
            sse("/mcp/extra"),
            404,
            &["not_found"],
        ),
        case(
            "unknown admin path (with token)",
            RawRequest::new("GET", "/admin/nope")
                .header("Authorization", &format!("Bearer {TOKEN}")),
            404,
            &["not_found"],
        ),
        case(
            "GET /admin/publish",
            RawRequest::new("GET", "/admin/publish")
                .header("Authorization", &format!("Bearer {TOKEN}")),
            405,
            &["method_not_allowed"],
        ),
        case(
            "PUT /admin/publish",
            publish(&ok_event(0)).with_method("PUT"),
            405,
            &["method_not_allowed"],
        ),
        case(
            "DELETE /mcp",
            RawRequest::new("DELETE", "/mcp"),
            405,
            &["method_not_allowed"],
        ),
        case(
            "POST /poll",
            RawRequest::new("POST", "/poll")
                .header("Content-Type", "application/json")
                .body("{}"),
            405,
            &["method_not_allowed"],
        ),
        case(
            "POST /healthz",
            RawRequest::new("POST", "/healthz").body("x"),
            405,
            &["method_not_allowed"],
        ),
    ]
}

/// The one error shape: `{"error":{"code","message","field"?,"index"?}}` as `application/json`.
fn check_error(name: &str, resp: &RawResponse) -> Value {
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "{name}: error content type is JSON, got {ct:?}: {}",
        resp.text()
    );
    let body = resp
        .json()
        .unwrap_or_else(|e| panic!("{name}: error body is not JSON ({e}): {:?}", resp.text()));
    let top = body.as_object().expect("an object");
    assert_eq!(
        top.keys().collect::<Vec<_>>(),
        vec!["error"],
        "{name}: only `error` at the top: {body}"
    );
    let err = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("{name}: `error` is an object: {body}"));
    for key in err.keys() {
        assert!(
            ["code", "message", "field", "index"].contains(&key.as_str()),
            "{name}: unexpected member {key:?} in {body}"
        );
    }
    assert!(err["code"].is_string(), "{name}: code is a string: {body}");
    assert!(
        err.get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| !m.trim().is_empty()),
        "{name}: a human message: {body}"
    );
    if let Some(f) = err.get("field") {
        assert!(f.is_string(), "{name}: field is a string: {body}");
    }
    if let Some(i) = err.get("index") {
        assert!(
            i.is_u64(),
            "{name}: index is a non-negative integer: {body}"
        );
    }
    body
}

async fn run_cases(addr: SocketAddr, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in cases {
        let resp = match c.req.send(addr, T).await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: request failed: {e}", c.name));
                continue;
            }
        };
        let body = resp.json().unwrap_or(Value::Null);
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or("<none>")
            .to_string();
        if resp.status() != c.status || !c.codes.contains(&code.as_str()) {
            failures.push(format!(
                "{}: expected {} {:?}, got {} {}",
                c.name,
                c.status,
                c.codes,
                resp.status(),
                resp.text()
            ));
            continue;
        }
        check_error(c.name, &resp);
        if let Some(f) = c.field {
            if code == "invalid_field" && body["error"]["field"] != json!(f) {
                failures.push(format!("{}: error.field should be {f:?}: {body}", c.name));
            }
        }
        if let Some(i) = c.index {
            if body["error"]["index"] != json!(i) {
                failures.push(format!("{}: error.index should be {i}: {body}", c.name));
            }
        }
        if let Some(h) = c.header {
            if resp.header(h).is_none() {
                failures.push(format!("{}: missing header {h}", c.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad-input cases failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

async fn still_serves(r: &Replica) {
    let h = r.admin_get("/healthz").await.expect("healthz");
    assert_eq!(h.status, 200, "/healthz after bad input");
    let mut s = r.subscribe(&SseRequest::mcp()).await.expect("subscribe");
    assert_eq!(s.status(), 200);
    r.wait_subscribers(1, SOON)
        .await
        .expect("subscriber registered");
    let id = r
        .publish_ok(&ok_event(99))
        .await
        .expect("a normal publish still works");
    let f = s.next_event(SOON).await.expect("event").expect("open");
    assert_eq!(f.id.as_deref(), Some(id.as_str()), "and is delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_status_and_json_error_code_and_the_service_keeps_serving() {
    let tokens = format!("{TOKEN},{OTHER_TOKEN}");
    let batch = MAX_BATCH.to_string();
    let payload = MAX_PAYLOAD.to_string();
    let body = MAX_BODY.to_string();
    let r = start(
        "bad-input",
        &[
            ("FANOUT_ADMIN_TOKENS", tokens.as_str()),
            ("FANOUT_MAX_BATCH", batch.as_str()),
            ("FANOUT_MAX_PAYLOAD_BYTES", payload.as_str()),
            ("FANOUT_MAX_BODY_BYTES", body.as_str()),
            ("FANOUT_ALLOWED_ORIGINS", ALLOWED_ORIGIN),
        ],
    )
    .await;
    run_cases(r.public_addr(), cases()).await;

    // The boundaries are accepted: a 128-byte method, a full batch, params just under the limit,
    // a JSON content type with parameters, the second token, an allowed Origin, a full JSON-RPC form.
    let method_128 = format!("notifications/{}", "a".repeat(128 - "notifications/".len()));
    let good: Vec<(&str, RawRequest)> = vec![
        ("128-byte method", publish(&json!({ "method": method_128 }))),
        (
            "full batch",
            publish(&Value::Array((0..MAX_BATCH).map(ok_event).collect())),
        ),
        (
            "params at the limit",
            publish(
                &json!({ "method": "notifications/x", "params": { "b": "x".repeat(MAX_PAYLOAD - 10) } }),
            ),
        ),
        (
            "params null",
            publish(&json!({ "method": "notifications/x", "params": null })),
        ),
        (
            "JSON-RPC form",
            publish(&json!({ "jsonrpc": "2.0", "method": "notifications/x", "params": {} })),
        ),
        (
            "content type with charset",
            RawRequest::new("POST", "/admin/publish")
                .header("Authorization", &format!("Bearer {TOKEN}"))
                .header("Content-Type", "application/json; charset=utf-8")
                .body(ok_event(1).to_string()),
        ),
        (
            "second token",
            RawRequest::new("POST", "/admin/publish")
                .header("Authorization", &format!("Bearer {OTHER_TOKEN}"))
                .header("Content-Type", "application/json")
                .body(ok_event(2).to_string()),
        ),
        (
            "allowed Origin",
            publish(&ok_event(3)).header("Origin", ALLOWED_ORIGIN),
        ),
    ];
    for (name, req) in good {
        let resp = req.send(r.public_addr(), T).await.expect(name);
        assert_eq!(resp.status(), 200, "{name} is accepted: {}", resp.text());
    }
    let s = r
        .subscribe(&SseRequest::mcp().header("Origin", ALLOWED_ORIGIN))
        .await
        .expect("subscribe with an allowed Origin");
    assert_eq!(s.status(), 200, "an allowed Origin may subscribe");
    drop(s);

    still_serves(&r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_admin_answers_only_loopback_with_a_loopback_host() {
    let r = start("no-tokens", &[]).await;
    let body = ok_event(0).to_string();
    let port = r.admin_addr().port();
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let resp = RawRequest::new("POST", "/admin/publish")
            .header("Host", &host)
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send(r.admin_addr(), T)
            .await
            .expect("publish");
        assert_eq!(resp.status(), 200, "Host {host}: {}", resp.text());
    }
    // A DNS-rebinding page reaches loopback with its own name in Host: refused.
    let cases = vec![case(
        "loopback peer with a foreign Host",
        RawRequest::new("POST", "/admin/publish")
            .header("Host", &format!("attacker.example:{port}"))
            .header("Content-Type", "application/json")
            .body(body.clone()),
        403,
        &["forbidden"],
    )];
    run_cases(r.admin_addr(), cases).await;
    still_serves(&r).await;
}
