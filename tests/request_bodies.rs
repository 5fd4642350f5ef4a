//! Request bodies are not read before they may be: with subscriber auth on, `POST /mcp` without
//! valid credentials is refused (`401`, JSON) before its body is read; a declared length over
//! the limit is refused (`413`, JSON) before reading; a chunked body is cut at the limit; the
//! limit of `POST /mcp` fits JSON-RPC requests (`FANOUT_MAX_REQUEST_BYTES`, 1 MiB). The replica's
//! memory stays where it was. The admin publish checks its token before reading, too. Bodies in
//! progress share one memory budget (`FANOUT_BODY_MEMORY_BYTES`): past it a request is refused at
//! once (`503`, `request_bodies_busy`, `Retry-After`) before its body is read, and served again once
//! a held body is let go.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use futures::future::join_all;
use mcp_fanout_testkit::hostile::{closed_by_peer, response_on, send_head_and_part};
use mcp_fanout_testkit::jwt::{hs256, now_secs};
use mcp_fanout_testkit::{error_code, start_memory, wait_until, RawRequest, Replica, SOON};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const SECRET: &str = "request-bodies-secret-0123456789abcdef";

/// Declared by the hostile requests: under the old 66 MB body limit, far over what is sent.
const DECLARED: u64 = 50_000_000;
/// What each hostile request sends of its body before it waits for the answer.
const PART: usize = 64 * 1024;
const CONNECTIONS: usize = 20;
/// Memory a replica may gain while holding the refused connections (their buffers), or keep after.
const SLACK_DURING: u64 = 32 * 1024 * 1024;
const SLACK_AFTER: u64 = 16 * 1024 * 1024;

async fn jwt_replica(label: &str) -> Replica {
    start_memory(
        label,
        &[
            ("FANOUT_SUBSCRIBER_AUTH", "jwt"),
            ("FANOUT_JWT_ANY_AUDIENCE", "true"),
            ("FANOUT_JWT_SECRET", SECRET),
        ],
    )
    .await
}

fn listen_head(declared: Option<u64>) -> RawRequest {
    let req = RawRequest::new("POST", "/mcp")
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("Mcp-Method", "subscriptions/listen")
        .header("MCP-Protocol-Version", "2026-07-28")
        .header("Connection", "keep-alive");
    match declared {
        Some(n) => req.header("Content-Length", &n.to_string()),
        None => req.header("Transfer-Encoding", "chunked"),
    }
}

/// A chunk of a chunked body.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

fn rpc_error(resp: &mcp_fanout_testkit::RawResponse) -> Value {
    let body: Value = resp
        .json()
        .unwrap_or_else(|e| panic!("a JSON body: {e}: {}", resp.text()));
    assert_eq!(body["jsonrpc"], "2.0", "a JSON-RPC error: {body}");
    assert!(body["error"]["code"].is_i64(), "a JSON-RPC error: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_bodies_are_refused_before_they_are_read_and_memory_stays() {
    let r = jwt_replica("unauth-bodies").await;
    let addr = r.public_addr();
    let before = r.rss_bytes().expect("rss");

    // Half declare a large length, half send chunked; each sends the head and a small part,
    // and is answered 401 while the rest of its body is still unsent.
    let hostile = (0..CONNECTIONS).map(|i| async move {
        let (req, part) = if i % 2 == 0 {
            (listen_head(Some(DECLARED)), vec![b' '; PART])
        } else {
            (listen_head(None), chunk(&vec![b' '; PART]))
        };
        let mut conn = send_head_and_part(addr, &req, &part)
            .await
            .expect("send the head and a part");
        let resp = response_on(&mut conn, "POST", SOON)
            .await
            .unwrap_or_else(|e| panic!("request {i}: answered before its body is sent: {e}"));
        assert_eq!(resp.status(), 401, "request {i}: {}", resp.text());
        assert!(
            resp.header("www-authenticate").is_some(),
            "request {i}: WWW-Authenticate"
        );
        rpc_error(&resp);
        conn
    });
    let held = join_all(hostile).await;
    let during = r.rss_bytes().expect("rss");
    assert!(
        during <= before + SLACK_DURING,
        "RSS grew from {before} to {during} bytes for refused bodies"
    );

    // The admin publish: its token is checked before its body is read.
    let mut admin = send_head_and_part(
        r.admin_addr(),
        &RawRequest::new("POST", "/admin/publish")
            .header("Content-Type", "application/json")
            .header("Authorization", "Bearer not-the-token")
            .header("Content-Length", &DECLARED.to_string())
            .header("Connection", "keep-alive"),
        &vec![b' '; PART],
    )
    .await
    .expect("send");
    let resp = response_on(&mut admin, "POST", SOON)
        .await
        .expect("the admin publish answers before its body is sent");
    assert_eq!(resp.status(), 401, "{}", resp.text());
    assert_eq!(
        error_code(&resp.json().expect("json")),
        Some("unauthorized")
    );
    drop(admin);

    drop(held);
    wait_until("the replica's memory to return", SOON, || async {
        r.rss_bytes()
            .is_ok_and(|after| after <= before + SLACK_AFTER)
    })
    .await
    .expect("memory returns to where it was");
    let ok = RawRequest::new("GET", "/healthz")
        .send(addr, SOON)
        .await
        .expect("healthz");
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_bodies_are_held_to_the_json_rpc_limit() {
    let r = jwt_replica("body-limit").await;
    let addr = r.public_addr();
    let token = hs256(
        SECRET,
        &json!({ "sub": "alice", "tenant": "acme", "exp": now_secs() + 600 }),
    );
    let auth = format!("Bearer {token}");

    // A declared length over 1 MiB: 413 before anything is read, and the connection closes.
    let mut declared = send_head_and_part(
        addr,
        &listen_head(Some(2 * 1024 * 1024)).header("Authorization", &auth),
        &vec![b' '; PART],
    )
    .await
    .expect("send");
    let resp = response_on(&mut declared, "POST", SOON)
        .await
        .expect("a declared length over the limit is answered at once");
    assert_eq!(resp.status(), 413, "{}", resp.text());
    rpc_error(&resp);
    closed_by_peer(&mut declared, SOON)
        .await
        .expect("the connection closes after the 413");

    // A chunked body that keeps coming: cut at the limit with 413.
    let mut chunked =
        send_head_and_part(addr, &listen_head(None).header("Authorization", &auth), b"")
            .await
            .expect("send");
    let (mut rd, mut wr) = chunked.split();
    let writer = async {
        let piece = chunk(&vec![b' '; PART]);
        // Up to 4 MiB, then wait: the answer must not need the whole body.
        for _ in 0..64 {
            if wr.write_all(&piece).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await
    };
    let answer = async {
        let mut raw = bytes::BytesMut::new();
        tokio::time::timeout(SOON, async {
            use tokio::io::AsyncReadExt;
            loop {
                match rd.read_buf(&mut raw).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) if raw.windows(4).any(|w| w == b"\r\n\r\n") => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a chunked body over the limit is answered before it ends");
        String::from_utf8_lossy(&raw).into_owned()
    };
    let head = tokio::select! {
        head = answer => head,
        _ = writer => unreachable!(),
    };
    assert!(
        head.starts_with("HTTP/1.1 413"),
        "a chunked body over the limit: {head}"
    );

    // A request within the limit is served.
    let ok = RawRequest::new("GET", "/healthz")
        .send(addr, SOON)
        .await
        .expect("healthz");
    assert_eq!(ok.status(), 200);
}

/// The bytes the replica holds of its body memory budget.
const HELD: &str = "mcp_fanout_body_memory_held_bytes";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_in_progress_share_one_memory_budget() {
    const MAX: usize = 64 * 1024;
    let max = MAX.to_string();
    let budget = (2 * MAX).to_string();
    let r = start_memory(
        "body-memory",
        &[
            ("FANOUT_MAX_REQUEST_BYTES", max.as_str()),
            ("FANOUT_BODY_MEMORY_BYTES", budget.as_str()),
        ],
    )
    .await;
    let addr = r.public_addr();
    // A one-byte body: refused while the budget is full, else answered as the bad request it is.
    let probe = || async move {
        RawRequest::new("POST", "/mcp")
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body("{")
            .send(addr, SOON)
            .await
            .expect("the probe is answered")
    };
    assert_eq!(probe().await.status(), 400, "nothing held yet");

    // Two requests declare the largest body each and send all but its last byte: they hold the
    // whole budget until the body deadline.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            send_head_and_part(addr, &listen_head(Some(MAX as u64)), &vec![b' '; MAX - 1])
                .await
                .expect("send"),
        );
    }
    // Both are being read once the replica says it holds the whole budget (a probe sent before
    // the second is taken would take its byte first and leave the second refused).
    r.wait_metric(HELD, SOON, |v| v == (2 * MAX) as f64)
        .await
        .expect("both bodies are held");
    assert_eq!(
        probe().await.status(),
        503,
        "a request past the budget is refused"
    );
    let mut third = send_head_and_part(addr, &listen_head(Some(MAX as u64)), b"")
        .await
        .expect("send");
    let resp = response_on(&mut third, "POST", SOON)
        .await
        .expect("refused at once, nothing of its body read");
    assert_eq!(resp.status(), 503, "{}", resp.text());
    assert_eq!(resp.header("retry-after"), Some("1"), "{}", resp.text());
    let body = rpc_error(&resp);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("FANOUT_BODY_MEMORY_BYTES")),
        "{body}"
    );
    closed_by_peer(&mut third, SOON)
        .await
        .expect("its connection closes (its body was not read)");
    assert!(
        r.metric("mcp_fanout_http_errors_total{code=\"request_bodies_busy\"}")
            .await
            .expect("metrics")
            .unwrap_or(0.0)
            >= 2.0,
        "counted"
    );

    // A held body's client goes away: its share is let go and requests are served again.
    drop(held.pop());
    r.wait_metric(HELD, SOON, |v| v == MAX as f64)
        .await
        .expect("the gauge falls by the body let go");
    wait_until("a request is served again", SOON, || async {
        probe().await.status() == 400
    })
    .await
    .expect("the budget is given back");
    let health = r.admin_get("/healthz").await.expect("healthz");
    assert_eq!(health.status.as_u16(), 200);
}
