//! An object that names a key twice, at the top or nested at any depth, is refused wherever the
//! service reads a JSON body — `400 invalid_json` naming the key on `POST /admin/publish` (single
//! and batch), a JSON-RPC parse error naming it on `POST /mcp` (standalone, and in proxy mode
//! before anything is forwarded) — instead of the last value silently winning: a gateway that
//! reads the first must never disagree with the service about the tenant, session or method.
//! Nothing reaches the log or the upstream; the service keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::cases::{case, publish_raw, run_cases, still_serves, Case};
use mcp_fanout_testkit::{
    start_memory, Canned, Deployment, RawRequest, RecordingUpstream, ADMIN_TOKEN,
};
use serde_json::json;

const T: Duration = Duration::from_secs(10);
const PARSE_ERROR: i64 = -32700;

fn dup(name: &str, body: &str, key: &str) -> Case {
    case(name, publish_raw(ADMIN_TOKEN, body), 400, "invalid_json")
        .message_contains(format!("duplicate key \"{key}\""))
}

/// `POST /mcp` with the headers of a 2026-07-28 `subscriptions/listen`.
fn post_mcp(body: &str) -> RawRequest {
    RawRequest::new("POST", "/mcp")
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2026-07-28")
        .header("Mcp-Method", "subscriptions/listen")
        .body(body)
}

/// Sends each body to `POST /mcp` on `addr`; each must get `400` and a JSON-RPC parse error whose
/// message names the key.
async fn expect_rpc_parse_errors(addr: std::net::SocketAddr, bodies: &[(&str, &str, &str)]) {
    let mut wrong = Vec::new();
    for (what, body, key) in bodies {
        let resp = post_mcp(body).send(addr, T).await.expect("POST /mcp");
        let answer = resp.json().unwrap_or_else(|_| json!(resp.text()));
        let named = answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("duplicate key \"{key}\"")));
        if resp.status() != 400 || answer["error"]["code"] != json!(PARSE_ERROR) || !named {
            wrong.push(format!("{what}: {} {answer}", resp.status()));
        }
    }
    assert!(
        wrong.is_empty(),
        "POST /mcp with duplicate keys:\n  {}",
        wrong.join("\n  ")
    );
}

const MCP_BODIES: [(&str, &str, &str); 3] = [
    (
        "a repeated method",
        r#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","method":"tools/list","params":{}}"#,
        "method",
    ),
    (
        "a repeated key in params._meta",
        r#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/protocolVersion":"2025-11-25"}}}"#,
        "io.modelcontextprotocol/protocolVersion",
    ),
    (
        "a repeated key deep in params",
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":[{"x":1,"x":2}]}}}"#,
        "x",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_are_refused_naming_the_key_and_nothing_is_published() {
    let d = Deployment::fresh("dupkeys").await.with_admin();
    let r = d.replica("dupkeys", &[]).await;
    let addr = r.public_addr();

    let cases = vec![
        dup(
            "a repeated tenant",
            r#"{"method":"notifications/x","tenant":"a","tenant":"b"}"#,
            "tenant",
        ),
        dup(
            "a repeated method",
            r#"{"method":"notifications/a","method":"notifications/b"}"#,
            "method",
        ),
        dup(
            "a repeated tenant spelled with an escape",
            r#"{"method":"notifications/x","tenant":"a","t\u0065nant":"b"}"#,
            "tenant",
        ),
        dup(
            "a repeated key in params",
            r#"{"method":"notifications/x","params":{"uri":"a","uri":"b"}}"#,
            "uri",
        ),
        dup(
            "a repeated key deep in params",
            r#"{"method":"notifications/x","params":{"list":[{"k":1},{"k":1,"k":2}]}}"#,
            "k",
        ),
        dup(
            "a repeated session in a batch element",
            r#"[{"method":"notifications/x"},{"method":"notifications/x","session":"s","session":"t"}]"#,
            "session",
        ),
        dup(
            "a repeated key in a batch element's params",
            r#"[{"method":"notifications/x","params":{"a":{"b":1,"b":1}}}]"#,
            "b",
        ),
    ];
    run_cases("duplicate key", addr, cases, T).await;
    expect_rpc_parse_errors(addr, &MCP_BODIES).await;
    assert_eq!(
        d.log_ids().await,
        Vec::<String>::new(),
        "nothing was published"
    );

    still_serves(&r, &[]).await;
    assert_eq!(d.log_ids().await.len(), 1, "only the control publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_proxy_mode_a_body_with_duplicate_keys_is_refused_before_it_is_forwarded() {
    let up = RecordingUpstream::start(Canned::json(
        &json!({"jsonrpc": "2.0", "id": 1, "result": {}}),
    ))
    .await
    .expect("upstream");
    let r = start_memory("dupkeys-proxy", &[("FANOUT_UPSTREAM", &up.url("/mcp"))]).await;
    expect_rpc_parse_errors(r.public_addr(), &MCP_BODIES).await;
    assert_eq!(up.received().len(), 0, "nothing was forwarded");

    // The same bodies without the repeated keys are forwarded.
    let ok = post_mcp(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":[{"x":1}]}}}"#)
        .send(r.public_addr(), T)
        .await
        .expect("POST /mcp");
    assert_eq!(ok.status(), 200, "{}", ok.text());
    assert_eq!(up.received().len(), 1);
}
