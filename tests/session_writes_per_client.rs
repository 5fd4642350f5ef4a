//! `FANOUT_SESSION_WRITES_PER_CLIENT_PER_MIN`: a client presenting a new session id each time
//! cannot make the database write as fast as it connects. `FANOUT_SESSION_CLAIMS_PER_MIN` bounds
//! one session's claims; this bounds one client's session writes, whatever ids it presents:
//! - a stream that would claim a new session past the client's allowance is shed (`200`,
//!   `retry:`, a clean end) and the database writes nothing for it; another client is served;
//! - in proxy mode, an `initialize` (which records the session the upstream opens) past it is
//!   answered `429` with `Retry-After` and a JSON-RPC error carrying its id, and is not
//!   forwarded; the client's other requests are, and so is another client's `initialize`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::net::IpAddr;
use std::time::Duration;

use mcp_fanout_testkit::{
    expect_shed, open_stream_with, start_memory, wait_until, Canned, Deployment, RecordingUpstream,
    Replica, SseRequest,
};
use serde_json::{json, Value};

const RETRY_MS: u64 = 200;
const T: Duration = Duration::from_secs(20);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// A GET for `session` from `source`, as a 2025-11-25 client makes it.
fn get(session: &str, source: &str) -> SseRequest {
    SseRequest::mcp()
        .protocol("2025-11-25")
        .session(session)
        .from_source(ip(source))
}

/// Whether a GET for `session` from `source` is served (its first frame carries an id).
async fn served(r: &Replica, session: &str, source: &str) -> bool {
    let mut conn = open_stream_with(r, get(session, source), "a GET").await;
    let first = conn.next_frame(T).await.expect("a first frame");
    first.is_some_and(|f| f.id.is_some())
}

/// Sessions the database holds.
async fn sessions_written(pg: &Deployment) -> i64 {
    let client = pg.client().await;
    let row = client
        .query_one(&format!("SELECT count(*) FROM {}.sessions", pg.schema), &[])
        .await
        .expect("the sessions table");
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_new_session_ids_is_shed_before_the_database_is_written() {
    let pg = Deployment::fresh("session_writes").await.with_admin();
    let retry = RETRY_MS.to_string();
    let r = pg
        .replica(
            "session-writes",
            &[
                ("FANOUT_SESSION_WRITES_PER_CLIENT_PER_MIN", "10"),
                ("FANOUT_RETRY_MS", &retry),
            ],
        )
        .await;
    let flooder = "127.0.0.8";
    // A minute's allowance at once: ten streams, each with a new session, each served.
    for i in 0..10 {
        assert!(
            served(&r, &format!("sess-new-{i}"), flooder).await,
            "stream {i} of the allowance is served"
        );
    }
    assert_eq!(sessions_written(&pg).await, 10);
    // Spent: a stream with yet another new id is shed, and no session is written for it. So is
    // a stream for one of the client's own sessions: each claim is a write.
    expect_shed(
        &r,
        get("sess-new-10", flooder),
        RETRY_MS,
        "a new id past it",
    )
    .await;
    expect_shed(
        &r,
        get("sess-new-0", flooder),
        RETRY_MS,
        "a known id past it",
    )
    .await;
    assert_eq!(
        sessions_written(&pg).await,
        10,
        "a shed stream's session is not written"
    );
    let shed = r
        .count(r#"mcp_fanout_subscribers_shed_total{reason="session_writes"}"#)
        .await
        .expect("metrics");
    assert_eq!(shed, 2.0, "counted as session_writes");
    // Another client has its own allowance.
    assert!(
        served(&r, "sess-other-client", "127.0.0.9").await,
        "another client is served"
    );
    // One write every 6 s refills: the client is served again.
    wait_until("the flooding client is served again", T, || {
        served(&r, "sess-new-10", flooder)
    })
    .await
    .expect("served again as the allowance refills");
    assert_eq!(sessions_written(&pg).await, 12);
}

/// An HTTP/1.1 client whose connections come from `source`.
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip(source))
        .timeout(T)
        .build()
        .expect("a client")
}

async fn rpc(client: &reqwest::Client, url: &str, id: u64, method: &str) -> reqwest::Response {
    client
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}}))
        .send()
        .await
        .expect("answered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initialize_past_the_clients_session_writes_is_answered_429_and_not_forwarded() {
    let answer = Canned::json(&json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
    let up = RecordingUpstream::start(answer).await.expect("upstream");
    let upstream = up.url("/mcp");
    let r = start_memory(
        "proxy-session-writes",
        &[
            ("FANOUT_UPSTREAM", upstream.as_str()),
            ("FANOUT_MINT_SESSION_IDS", "true"),
            ("FANOUT_SESSION_WRITES_PER_CLIENT_PER_MIN", "2"),
        ],
    )
    .await;
    let url = r.public_url("/mcp");
    let flooder = client_from("127.0.0.10");
    for id in 1..=2 {
        let resp = rpc(&flooder, &url, id, "initialize").await;
        assert_eq!(resp.status(), 200, "initialize {id} of the allowance");
        assert!(
            resp.headers().contains_key("mcp-session-id"),
            "a session is opened"
        );
    }
    let refused = rpc(&flooder, &url, 3, "initialize").await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(
        (1..=30).contains(&retry_after),
        "one write every 30 s: {retry_after}"
    );
    let body: Value = refused.json().await.expect("a JSON-RPC error");
    assert_eq!(body["id"], 3, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("FANOUT_SESSION_WRITES_PER_CLIENT_PER_MIN")),
        "{body}"
    );
    assert_eq!(
        up.received().len(),
        2,
        "the refused initialize was not forwarded"
    );
    assert_eq!(
        r.count(r#"mcp_fanout_http_errors_total{code="too_many_sessions"}"#)
            .await
            .expect("metrics"),
        1.0
    );
    // The client's other requests write no session and are forwarded.
    let call = rpc(&flooder, &url, 4, "tools/list").await;
    assert_eq!(call.status(), 200);
    assert_eq!(up.received().len(), 3, "a tools/list is forwarded");
    // Another client opens its session.
    let other = rpc(&client_from("127.0.0.11"), &url, 5, "initialize").await;
    assert_eq!(other.status(), 200, "another client's initialize");
    assert_eq!(up.received().len(), 4);
}
