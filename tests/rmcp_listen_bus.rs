//! An rmcp 3.x server (`clients/rust/examples/rmcp_listen.rs`) gets cross-replica
//! `subscriptions/listen` through the client crate: two instances, each following its own
//! mcp-fanout replica on one Postgres. The official Python SDK 2.x client listening on instance 1
//! (tools list_changed and `resources/updated` of one URI) gets what instance 2's tools publish,
//! once, URI-filtered; the replica instance 1 follows is SIGKILLed and restarted with publishes in
//! between, and those still arrive, once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

mod e2e;

use std::time::Duration;

use e2e::{is_kind, is_notification, py2_call, py2_client, rmcp_listen, Proc};
use mcp_fanout_testkit::{Deployment, ADMIN_TOKEN};
use serde_json::{json, Value};

/// Upper bound for one step (a process starting, a notification arriving, a reconnect).
const STEP: Duration = Duration::from_secs(20);

const TOOLS: &str = "notifications/tools/list_changed";
const UPDATED: &str = "notifications/resources/updated";
const WATCHED: &str = "file:///watched.txt";
const OTHER: &str = "file:///other.txt";
const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// Calls `tool` on an instance with the official client; the published event's id.
async fn call(label: &str, url: &str, tool: &str, arguments: Value) -> String {
    let p = py2_call(label, url, tool, &arguments);
    let (_, line) = p.wait_kind("called", 0, STEP).await;
    let result = &line.value["result"];
    assert_eq!(
        result["isError"], false,
        "{label}: {tool} failed: {}",
        line.value
    );
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{label}: {tool} answered no text: {}", line.value))
        .to_string()
}

fn is_updated(v: &Value, uri: &str) -> bool {
    is_notification(v, UPDATED)
        && v.pointer("/message/params/uri").and_then(Value::as_str) == Some(uri)
}

/// Waits for the listener's `n`-th notification of `method` (with `uri` for updates).
async fn wait_heard(listener: &Proc, what: &str, n: usize, pred: impl Fn(&Value) -> bool) {
    listener.wait_count(what, n, STEP, pred).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_rmcp_listener_hears_every_replica_once_filtered_across_a_replica_restart() {
    let pg = Deployment::fresh("rmcp_bus").await.with_admin();
    let mut r1 = pg.replica("bus-r1", &[]).await;
    let r2 = pg.replica("bus-r2", &[]).await;
    let (one, url1) = rmcp_listen("rmcp-1", &r1.public_url(""), ADMIN_TOKEN).await;
    let (two, url2) = rmcp_listen("rmcp-2", &r2.public_url(""), ADMIN_TOKEN).await;
    for p in [&one, &two] {
        p.wait_kind("following", 0, STEP).await;
    }

    let listener = py2_client(
        "py2-listener",
        &url1,
        &["--call", &format!("--uri={WATCHED}")],
    );
    let (_, called) = listener.wait_kind("called", 0, STEP).await;
    assert_eq!(
        called.value["result"]["content"][0]["text"], "42",
        "add(2, 40) on the rmcp server: {}",
        called.value
    );
    let (_, ready) = listener.wait_kind("ready", 0, STEP).await;
    assert_eq!(
        ready.value["honored"],
        json!({"toolsListChanged": true, "resourceSubscriptions": [WATCHED]}),
        "the listen filter the rmcp server acknowledged"
    );

    // Published by instance 2 (through replica 2): only the watched URI and the tool list.
    call("touch-other", &url2, "touch", json!({"uri": OTHER})).await;
    call("touch-watched", &url2, "touch", json!({"uri": WATCHED})).await;
    call("announce", &url2, "announce_tools", json!({})).await;
    wait_heard(&listener, "tools/list_changed", 1, |v| {
        is_notification(v, TOOLS)
    })
    .await;
    wait_heard(&listener, "the watched update", 1, |v| {
        is_updated(v, WATCHED)
    })
    .await;

    // Replica 1 dies; instance 2 publishes meanwhile; replica 1 comes back where it was.
    r1.kill().expect("SIGKILL replica 1");
    r1.wait_exit(STEP).await.expect("replica 1 exits");
    call("touch-watched-2", &url2, "touch", json!({"uri": WATCHED})).await;
    call("touch-other-2", &url2, "touch", json!({"uri": OTHER})).await;
    call("announce-2", &url2, "announce_tools", json!({})).await;
    let r1 = pg.replica_at("bus-r1-again", r1.public_addr(), &[]).await;
    // Instance 1's follower reopened its stream on the restarted replica.
    one.wait_line("a second `following`", 0, STEP, |v| {
        is_kind(v, "following") && v["connections"].as_u64() >= Some(2)
    })
    .await;
    wait_heard(
        &listener,
        "the update published while replica 1 was down",
        2,
        |v| is_updated(v, WATCHED),
    )
    .await;
    wait_heard(
        &listener,
        "tools/list_changed published while replica 1 was down",
        2,
        |v| is_notification(v, TOOLS),
    )
    .await;

    // A last event, published by instance 1 itself through the restarted replica: everything
    // before it has been forwarded by the time it arrives (one follower, in log order).
    call("announce-3", &url1, "announce_tools", json!({})).await;
    wait_heard(&listener, "the last tools/list_changed", 3, |v| {
        is_notification(v, TOOLS)
    })
    .await;

    let log = pg.log_ids().await;
    assert_eq!(log.len(), 7, "seven publishes in the log: {log:?}");
    let heard = |pred: &dyn Fn(&Value) -> bool| listener.count(pred);
    assert_eq!(
        heard(&|v| is_notification(v, TOOLS)),
        3,
        "tools/list_changed once each\n{}",
        listener.transcript()
    );
    assert_eq!(
        heard(&|v| is_updated(v, WATCHED)),
        2,
        "watched updates once each\n{}",
        listener.transcript()
    );
    assert_eq!(
        heard(&|v| is_updated(v, OTHER)),
        0,
        "the other URI is filtered out\n{}",
        listener.transcript()
    );
    assert_eq!(
        heard(&|v| is_kind(v, "notification")),
        5,
        "nothing else on the listen stream\n{}",
        listener.transcript()
    );
    for (_, l) in listener.of_kind("notification", 0) {
        assert_eq!(
            l.value.pointer(&format!(
                "/message/params/_meta/{}",
                SUBSCRIPTION_ID.replace('/', "~1")
            )),
            ready.value.get("subscription"),
            "every listen frame carries the subscription id: {}",
            l.value
        );
    }
    assert_eq!(
        listener.count(|v| is_kind(v, "lost") || is_kind(v, "ended") || is_kind(v, "error")),
        0,
        "the listen stream stayed open\n{}",
        listener.transcript()
    );
    drop((r1, r2, one, two));
}
