//! Contract §3, §4.1, §7.6: every kind of bad input to `/admin/publish`, `/mcp` and `/poll`
//! gets its expected status and JSON error code in the one error shape, and the service keeps serving.
//! Requests are written byte for byte over raw TCP, so nothing a client library would refuse to send
//! is out of reach.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::cases::{case, publish, publish_raw, run_cases, sse, still_serves, Case};
use mcp_fanout_testkit::{start, RawRequest, SseRequest};
use serde_json::{json, Value};

const TOKEN: &str = "tok-a-5b1e";
const OTHER_TOKEN: &str = "tok-b-93c2";
const ALLOWED_ORIGIN: &str = "https://console.allowed.example";
const MAX_BATCH: usize = 5;
const MAX_PAYLOAD: usize = 1024;
const MAX_BODY: usize = 64 * 1024;
const T: Duration = Duration::from_secs(10);

fn ok_event(n: usize) -> Value {
    json!({ "method": "notifications/test/ok", "params": { "n": n } })
}

/// A publish with `authorization` (or none) that must get `401 unauthorized` and a
/// `WWW-Authenticate` challenge.
fn unauthorized(name: &'static str, authorization: Option<&str>) -> Case {
    let mut req = RawRequest::new("POST", "/admin/publish");
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    let req = req
        .header("Content-Type", "application/json")
        .body(ok_event(0).to_string());
    case(name, req, 401, "unauthorized").with_header("www-authenticate")
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
            publish_raw(TOKEN, r#"{"method":"#),
            400,
            "invalid_json",
        ),
        case(
            "not JSON at all",
            publish_raw(TOKEN, "hello"),
            400,
            "invalid_json",
        ),
        case(
            "trailing garbage",
            publish_raw(TOKEN, r#"{"method":"notifications/x"} x"#),
            400,
            "invalid_json",
        ),
        case(
            "body is a number",
            publish_raw(TOKEN, "42"),
            400,
            "invalid_json",
        )
        .or_code("invalid_field"),
        case(
            "body is a string",
            publish_raw(TOKEN, r#""notifications/x""#),
            400,
            "invalid_json",
        )
        .or_code("invalid_field"),
        case(
            "method missing",
            publish(TOKEN, &json!({ "params": {} })),
            400,
            "invalid_method",
        )
        .or_code("invalid_field"),
        case(
            "method empty",
            publish(TOKEN, &json!({ "method": "" })),
            400,
            "invalid_method",
        ),
        case(
            "method of the wrong type",
            publish(TOKEN, &json!({ "method": 5 })),
            400,
            "invalid_method",
        )
        .or_code("invalid_field"),
        case(
            "method without the notifications/ prefix",
            publish(TOKEN, &json!({ "method": "tools/list_changed" })),
            400,
            "invalid_method",
        ),
        case(
            "method with a space",
            publish(TOKEN, &json!({ "method": "notifications/has space" })),
            400,
            "invalid_method",
        ),
        case(
            "method with a non-ASCII byte",
            publish(TOKEN, &json!({ "method": "notifications/é" })),
            400,
            "invalid_method",
        ),
        case(
            "method over 128 bytes",
            publish(TOKEN, &json!({ "method": long_method })),
            400,
            "invalid_method",
        ),
        case(
            "message with an id (a request)",
            publish(
                TOKEN,
                &json!({ "jsonrpc": "2.0", "id": 1, "method": "notifications/x" }),
            ),
            400,
            "not_a_notification",
        ),
        case(
            "jsonrpc other than 2.0",
            publish(
                TOKEN,
                &json!({ "jsonrpc": "1.0", "method": "notifications/x" }),
            ),
            400,
            "invalid_field",
        )
        .field("jsonrpc"),
        case(
            "params an array",
            publish(
                TOKEN,
                &json!({ "method": "notifications/x", "params": [1, 2] }),
            ),
            400,
            "invalid_params",
        ),
        case(
            "params a string",
            publish(
                TOKEN,
                &json!({ "method": "notifications/x", "params": "p" }),
            ),
            400,
            "invalid_params",
        ),
        case(
            "params a number",
            publish(TOKEN, &json!({ "method": "notifications/x", "params": 3 })),
            400,
            "invalid_params",
        ),
        case(
            "\\u0000 in a params string",
            publish_raw(
                TOKEN,
                r#"{"method":"notifications/x","params":{"a":"x\u0000y"}}"#,
            ),
            400,
            "invalid_params",
        ),
        case(
            "\\u0000 deep in params",
            publish_raw(
                TOKEN,
                r#"{"method":"notifications/x","params":{"a":[{"b":"\u0000"}]}}"#,
            ),
            400,
            "invalid_params",
        ),
        case(
            "tenant of the wrong type",
            publish(TOKEN, &json!({ "method": "notifications/x", "tenant": 5 })),
            400,
            "invalid_field",
        )
        .field("tenant"),
        case(
            "session of the wrong type",
            publish(
                TOKEN,
                &json!({ "method": "notifications/x", "session": ["s"] }),
            ),
            400,
            "invalid_field",
        )
        .field("session"),
        case(
            "key of the wrong type",
            publish(TOKEN, &json!({ "method": "notifications/x", "key": 7 })),
            400,
            "invalid_field",
        )
        .field("key"),
        case(
            "unknown field (typo of tenant)",
            publish(
                TOKEN,
                &json!({ "method": "notifications/x", "tenat": "acme" }),
            ),
            400,
            "unknown_field",
        ),
        case(
            "empty batch",
            publish(TOKEN, &json!([])),
            400,
            "empty_batch",
        ),
        case(
            "batch over FANOUT_MAX_BATCH",
            publish(TOKEN, &batch_over),
            400,
            "batch_too_large",
        ),
        case(
            "batch with a bad method at index 2",
            publish(
                TOKEN,
                &json!([ok_event(0), ok_event(1), { "method": "bad" }]),
            ),
            400,
            "invalid_method",
        )
        .index(2),
        case(
            "batch with an unknown field at index 1",
            publish(
                TOKEN,
                &json!([ok_event(0), { "method": "notifications/x", "tenat": "a" }]),
            ),
            400,
            "unknown_field",
        )
        .index(1),
        case(
            "params over FANOUT_MAX_PAYLOAD_BYTES",
            publish(
                TOKEN,
                &json!({ "method": "notifications/x", "params": big_params }),
            ),
            413,
            "payload_too_large",
        ),
        case(
            "oversized params at batch index 1",
            publish(
                TOKEN,
                &json!([ok_event(0), { "method": "notifications/x", "params": big_params }]),
            ),
            413,
            "payload_too_large",
        )
        .index(1),
        case(
            "body over FANOUT_MAX_BODY_BYTES",
            publish_raw(TOKEN, padded),
            413,
            "payload_too_large",
        ),
        // ---- /admin/publish: headers ----
        case(
            "content type text/plain",
            RawRequest::new("POST", "/admin/publish")
                .header("Authorization", &format!("Bearer {TOKEN}"))
                .header("Content-Type", "text/plain")
                .body(ok_event(0).to_string()),
            415,
            "unsupported_media_type",
        ),
        case(
            "no content type",
            RawRequest::new("POST", "/admin/publish")
                .header("Authorization", &format!("Bearer {TOKEN}"))
                .body(ok_event(0).to_string()),
            415,
            "unsupported_media_type",
        ),
        unauthorized("token missing", None),
        unauthorized("token wrong", Some("Bearer tok-a-5b1f")),
        unauthorized("token a prefix of the real one", Some("Bearer tok-a")),
        unauthorized("not a bearer credential", Some(&format!("Basic {TOKEN}"))),
        case(
            "foreign Origin on publish",
            publish(TOKEN, &ok_event(0)).header("Origin", "https://evil.example"),
            403,
            "forbidden",
        ),
        // ---- /mcp ----
        case(
            "GET /mcp without Accept",
            RawRequest::new("GET", "/mcp"),
            406,
            "not_acceptable",
        ),
        case(
            "GET /mcp with Accept */*",
            RawRequest::new("GET", "/mcp").header("Accept", "*/*"),
            406,
            "not_acceptable",
        ),
        case(
            "GET /mcp with Accept application/json",
            RawRequest::new("GET", "/mcp").header("Accept", "application/json"),
            406,
            "not_acceptable",
        ),
        case(
            "Last-Event-ID over 256 bytes",
            sse("/mcp").header("Last-Event-ID", &"a".repeat(257)),
            400,
            "invalid_event_id",
        ),
        case(
            "Last-Event-ID with a control byte (TAB)",
            sse("/mcp").header_bytes("Last-Event-ID", b"abc\tdef-1"),
            400,
            "invalid_event_id",
        ),
        case(
            "last_event_id query with a control byte",
            sse("/mcp?last_event_id=ab%01c-1"),
            400,
            "invalid_event_id",
        ),
        case(
            "last_event_id query with DEL",
            sse("/mcp?last_event_id=ab%7Fc-1"),
            400,
            "invalid_event_id",
        ),
        case(
            "unsupported MCP-Protocol-Version",
            sse("/mcp").header("MCP-Protocol-Version", "2024-11-05"),
            400,
            "unsupported_protocol_version",
        ),
        case(
            "garbage MCP-Protocol-Version",
            sse("/mcp").header("MCP-Protocol-Version", "banana"),
            400,
            "unsupported_protocol_version",
        ),
        case(
            "Mcp-Session-Id over 128 bytes",
            sse("/mcp").header("Mcp-Session-Id", &"s".repeat(129)),
            400,
            "invalid_session_id",
        ),
        case(
            "Mcp-Session-Id with a space",
            sse("/mcp").header("Mcp-Session-Id", "a b"),
            400,
            "invalid_session_id",
        ),
        case(
            "foreign Origin on /mcp",
            sse("/mcp").header("Origin", "https://evil.example"),
            403,
            "forbidden",
        ),
        // ---- /poll ----
        case(
            "poll after over 256 bytes",
            RawRequest::new("GET", &format!("/poll?after={}&timeout=0", "a".repeat(257))),
            400,
            "invalid_event_id",
        ),
        case(
            "poll after with a control byte",
            RawRequest::new("GET", "/poll?after=a%1Fb-1&timeout=0"),
            400,
            "invalid_event_id",
        ),
        case(
            "poll timeout negative",
            RawRequest::new("GET", "/poll?timeout=-1"),
            400,
            "invalid_field",
        )
        .field("timeout"),
        case(
            "poll timeout not a number",
            RawRequest::new("GET", "/poll?timeout=soon"),
            400,
            "invalid_field",
        )
        .field("timeout"),
        case(
            "poll timeout fractional",
            RawRequest::new("GET", "/poll?timeout=1.5"),
            400,
            "invalid_field",
        )
        .field("timeout"),
        case(
            "foreign Origin on /poll",
            RawRequest::new("GET", "/poll?timeout=0").header("Origin", "https://evil.example"),
            403,
            "forbidden",
        ),
        // ---- routing ----
        case(
            "unknown path",
            RawRequest::new("GET", "/nope"),
            404,
            "not_found",
        ),
        case(
            "unknown path under /mcp",
            sse("/mcp/extra"),
            404,
            "not_found",
        ),
        case(
            "unknown admin path (with token)",
            RawRequest::new("GET", "/admin/nope")
                .header("Authorization", &format!("Bearer {TOKEN}")),
            404,
            "not_found",
        ),
        case(
            "GET /admin/publish",
            RawRequest::new("GET", "/admin/publish")
                .header("Authorization", &format!("Bearer {TOKEN}")),
            405,
            "method_not_allowed",
        ),
        case(
            "PUT /admin/publish",
            publish(TOKEN, &ok_event(0)).with_method("PUT"),
            405,
            "method_not_allowed",
        ),
        case(
            "DELETE /mcp",
            RawRequest::new("DELETE", "/mcp"),
            405,
            "method_not_allowed",
        ),
        case(
            "POST /poll",
            RawRequest::new("POST", "/poll")
                .header("Content-Type", "application/json")
                .body("{}"),
            405,
            "method_not_allowed",
        ),
        case(
            "POST /healthz",
            RawRequest::new("POST", "/healthz").body("x"),
            405,
            "method_not_allowed",
        ),
    ]
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
    run_cases("bad-input", r.public_addr(), cases(), T).await;

    // The boundaries are accepted: a 128-byte method, a full batch, params just under the limit,
    // a JSON content type with parameters, the second token, an allowed Origin, a full JSON-RPC form.
    let method_128 = format!("notifications/{}", "a".repeat(128 - "notifications/".len()));
    let good: Vec<(&str, RawRequest)> = vec![
        (
            "128-byte method",
            publish(TOKEN, &json!({ "method": method_128 })),
        ),
        (
            "full batch",
            publish(TOKEN, &Value::Array((0..MAX_BATCH).map(ok_event).collect())),
        ),
        (
            "params at the limit",
            publish(
                TOKEN,
                &json!({ "method": "notifications/x", "params": { "b": "x".repeat(MAX_PAYLOAD - 10) } }),
            ),
        ),
        (
            "params null",
            publish(
                TOKEN,
                &json!({ "method": "notifications/x", "params": null }),
            ),
        ),
        (
            "JSON-RPC form",
            publish(
                TOKEN,
                &json!({ "jsonrpc": "2.0", "method": "notifications/x", "params": {} }),
            ),
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
            publish(TOKEN, &ok_event(3)).header("Origin", ALLOWED_ORIGIN),
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

    still_serves(&r, &[]).await;
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
        "forbidden",
    )];
    run_cases("bad-input", r.admin_addr(), cases, T).await;
    still_serves(&r, &[]).await;
}
