//! Proxy mode serves its public connections on connection workers, single-threaded runtimes
//! (`server::workers`; docs/architecture.md): each connection stays on one thread from accept to
//! close. The workers run in proxy mode (`FANOUT_CONNECTION_WORKERS` of them) and in no other
//! mode, and proxied requests on many connections (handed to the workers in turn) are all
//! answered, each reaching the upstream once. The streams that move off the workers after their
//! head are tested in slow_subscriber.rs (every event, the write-stall deadline, the resume).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use mcp_fanout_testkit::upstream::{Canned, RecordingUpstream};
use mcp_fanout_testkit::{start_memory, Replica, SOON};
use serde_json::{json, Value};

/// The replica's threads whose name starts with `conn-worker`.
fn connection_workers(r: &Replica) -> usize {
    let tasks =
        std::fs::read_dir(format!("/proc/{}/task", r.pid())).expect("the replica's threads");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("conn-worker"))
        .count()
}

async fn proxy_for(label: &str, up: &RecordingUpstream) -> Replica {
    let url = up.url("/mcp");
    let env = [
        ("FANOUT_UPSTREAM", url.as_str()),
        ("FANOUT_CONNECTION_WORKERS", "2"),
    ];
    start_memory(label, &env).await
}

/// A `tools/call` on a connection of its own (the replica hands each to the next worker).
async fn call_on_new_connection(r: &Replica, id: usize) -> (u16, Value) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .http1_only()
        .build()
        .unwrap();
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "add", "arguments": {"a": 1, "b": 2}}});
    let resp = client
        .post(r.public_url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&body)
        .timeout(SOON)
        .send()
        .await
        .expect("an answer");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_serves_on_connection_workers_and_no_other_mode_does() {
    let up = RecordingUpstream::start(Canned::json(
        &json!({"jsonrpc": "2.0", "id": 1, "result": {"isError": false}}),
    ))
    .await
    .unwrap();
    let proxy = proxy_for("workers-proxy", &up).await;
    assert_eq!(
        connection_workers(&proxy),
        2,
        "FANOUT_CONNECTION_WORKERS of them"
    );
    for id in 0..8 {
        let (status, body) = call_on_new_connection(&proxy, id).await;
        assert_eq!(status, 200, "call {id}: {body}");
        assert_eq!(body["result"]["isError"], json!(false), "call {id}: {body}");
    }
    assert_eq!(
        up.received().len(),
        8,
        "every call reached the upstream once"
    );

    let plain = start_memory("workers-none", &[("FANOUT_CONNECTION_WORKERS", "2")]).await;
    assert_eq!(
        connection_workers(&plain),
        0,
        "no workers without an upstream"
    );
}
