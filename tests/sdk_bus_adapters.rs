//! mcp-fanout as the cross-replica bus of the official MCP SDKs 2.x: the Python
//! `FanoutSubscriptionBus` (clients/python, a `SubscriptionBus` for `MCPServer`) and the TypeScript
//! `FanoutEventBus` (clients/typescript, a `ServerEventBus` for `createMcpHandler`), each installed
//! as a user installs it from a clone (`scripts/e2e-setup`: `pip install clients/python`,
//! `npm install clients/typescript`).
//!
//! One Postgres deployment, two mcp-fanout replicas A and B. Four MCP server processes, all real:
//! Python `MCPServer` 1 and TypeScript `createMcpHandler` 1 with their bus on A; Python 2 and
//! TypeScript 2 on B. Official 2026-07-28 clients listen on the servers "1" only: the Python SDK
//! 2.x `Client.listen` (tools + `file:///a`; and one with only `file:///b`) on Python server 1, the
//! TypeScript SDK 2.x `client.listen` (tools + `file:///a`) on TypeScript server 1. Tools on the
//! servers "2" publish (`ctx.notify_*` / `handler.notify.*`), called by the Python SDK client.
//!
//! Proven: an event a tool on a server 2 publishes reaches each listener on a server 1 once, in
//! publish order, from either SDK to either SDK; `resources/updated` reaches only the listener
//! subscribed to that URI. Then mcp-fanout A (which both servers 1 follow) is SIGKILLed, events
//! are published while it is down, and it is restarted on the same address: the buses resume with
//! `Last-Event-ID`, so those events still arrive at every listener, once — no loss, no duplicate,
//! no resync (which would add list_changed events). A last publish is the barrier after which
//! every listener's whole sequence of events is compared with what was published.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

mod e2e;

use std::time::Duration;

use e2e::{call_tools, is_kind, py2_client, ts2_client, Proc, Upstream};
use mcp_fanout_testkit::{wait_for, Deployment, ADMIN_TOKEN};

/// Upper bound of one step (a process starting, an event arriving, a bus reconnecting after its
/// backoff) on a small, busy machine.
const STEP: Duration = Duration::from_secs(60);

const A: &str = "file:///a";
const B: &str = "file:///b";

/// One event a listener printed: `T` (tools list_changed) or the URI of a `resources/updated`.
fn events(p: &Proc) -> Vec<String> {
    p.of_kind("event", 0)
        .into_iter()
        .map(|(_, l)| match l.value["event"].as_str() {
            Some("ToolsListChanged") => "T".to_string(),
            Some("ResourceUpdated") => l.value["uri"].as_str().unwrap_or("?").to_string(),
            other => format!("unexpected {other:?}"),
        })
        .collect()
}

/// Awaits until `p` has printed exactly `want` (so far), in order; panics with its transcript
/// when it prints something else or not all of it in time.
async fn expect_events(p: &Proc, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    p.wait_state(&format!("the events {want:?}"), STEP, |lines| {
        let got: Vec<String> = lines
            .iter()
            .filter(|l| l.kind() == "event")
            .map(|l| match l.value["event"].as_str() {
                Some("ToolsListChanged") => "T".to_string(),
                _ => l.value["uri"].as_str().unwrap_or("?").to_string(),
            })
            .collect();
        assert!(
            want.starts_with(&got),
            "{}: got {got:?}, which is not a prefix of {want:?}",
            p.label()
        );
        (got == want).then_some(())
    })
    .await;
}

async fn ready(p: &Proc) {
    p.wait_kind("ready", 0, STEP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_bus_adapters_deliver_every_event_once_across_replicas_and_a_fanout_restart() {
    e2e::ensure_setup();
    let dep = Deployment::fresh("sdkbus").await.with_admin();
    let mut fanout_a = dep.replica("fanout-a", &[]).await;
    let fanout_b = dep.replica("fanout-b", &[]).await;
    let url_a = fanout_a.public_url("");
    let url_b = fanout_b.public_url("");
    let on_a = [
        ("FANOUT_URL", url_a.as_str()),
        ("FANOUT_TOKEN", ADMIN_TOKEN),
    ];
    let on_b = [
        ("FANOUT_URL", url_b.as_str()),
        ("FANOUT_TOKEN", ADMIN_TOKEN),
    ];

    let (py1, py2, ts1, ts2) = tokio::join!(
        Upstream::py2bus("py-server-1", &[], &on_a),
        Upstream::py2bus("py-server-2", &[], &on_b),
        Upstream::ts2bus("ts-server-1", &[], &on_a),
        Upstream::ts2bus("ts-server-2", &[], &on_b),
    );

    let py_a = py2_client("listener-py-tools-a", &py1.url, &["--uri", A]);
    let py_b = py2_client("listener-py-b", &py1.url, &["--no-tools", "--uri", B]);
    let ts_a = ts2_client("listener-ts-tools-a", &ts1.url, &["--uri", A]);
    tokio::join!(ready(&py_a), ready(&py_b), ready(&ts_a));
    for p in [&py_a, &py_b] {
        let honored = p.of_kind("ready", 0)[0].1.value["honored"].clone();
        assert!(
            honored["resourceSubscriptions"].is_array(),
            "{}: the server honoured the URI subscription: {honored}",
            p.label()
        );
    }

    // A tool on Python server 2 (bus on B) publishes: every tools listener on the servers 1 (bus
    // on A) gets it, once; the listener of file:///b only does not.
    call_tools("call-1", &py2.url, &["touch_tools"], STEP).await;
    expect_events(&py_a, &["T"]).await;
    expect_events(&ts_a, &["T"]).await;

    // resources/updated from the TypeScript server 2 reaches the file:///a listeners only; then
    // file:///b from Python server 2 reaches its listener only (and, being later in the log,
    // proves the file:///b listener got nothing before it).
    call_tools(
        "call-2",
        &ts2.url,
        &[&format!(r#"touch_resource:{{"uri":"{A}"}}"#)],
        STEP,
    )
    .await;
    expect_events(&py_a, &["T", A]).await;
    expect_events(&ts_a, &["T", A]).await;
    call_tools(
        "call-3",
        &py2.url,
        &[&format!(r#"touch_resource:{{"uri":"{B}"}}"#)],
        STEP,
    )
    .await;
    expect_events(&py_b, &[B]).await;

    // SIGKILL mcp-fanout A, which the buses of both servers 1 follow; publish while it is down
    // (through B, from both SDKs); restart A on the same address.
    let addr_a = fanout_a.public_addr();
    fanout_a.kill().expect("SIGKILL mcp-fanout A");
    fanout_a
        .wait_exit(STEP)
        .await
        .expect("mcp-fanout A is gone before the publishes");
    call_tools("call-4", &py2.url, &["touch_tools"], STEP).await;
    call_tools(
        "call-5",
        &ts2.url,
        &[&format!(r#"touch_resource:{{"uri":"{A}"}}"#)],
        STEP,
    )
    .await;
    // The TypeScript bus publishes in the background: wait until the log holds both events.
    let log_before_restart = wait_log_len(&dep, 5).await;
    let _fanout_a2 = dep.replica_at("fanout-a-restarted", addr_a, &[]).await;
    expect_events(&py_a, &["T", A, "T", A]).await;
    expect_events(&ts_a, &["T", A, "T", A]).await;

    // The barrier: one more of each, after which every listener's whole sequence is final.
    call_tools(
        "call-6",
        &py2.url,
        &["touch_tools", &format!(r#"touch_resource:{{"uri":"{B}"}}"#)],
        STEP,
    )
    .await;
    expect_events(&py_a, &["T", A, "T", A, "T"]).await;
    expect_events(&ts_a, &["T", A, "T", A, "T"]).await;
    expect_events(&py_b, &[B, B]).await;
    let log = dep.log_ids().await;
    assert_eq!(log.len(), 7, "seven events published: {log:?}");
    assert_eq!(log_before_restart.len(), 5);
    for p in [&py_a, &ts_a, &py_b] {
        assert!(
            !p.lines().iter().any(|l| is_kind(&l.value, "lost")
                || is_kind(&l.value, "closed")
                || is_kind(&l.value, "error")),
            "{}: the listen stream to its MCP server stayed up\n{}",
            p.label(),
            p.transcript()
        );
    }
    // Every event an SDK listener got was counted above; no publish failed.
    for s in [&ts1, &ts2] {
        assert_eq!(
            s.proc.count(|v| is_kind(v, "bus_error")),
            0,
            "{}: no publish failed\n{}",
            s.proc.label(),
            s.proc.transcript()
        );
    }
    assert_eq!(events(&py_a).len(), 5);
    drop((py1, ts1));
}

/// Awaits until the deployment's log holds at least `n` events; returns their ids.
async fn wait_log_len(dep: &Deployment, n: usize) -> Vec<String> {
    wait_for(&format!("{n} events in the log"), STEP, || async {
        let ids = dep.log_ids().await;
        (ids.len() >= n).then_some(ids)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The Python adapter's own tests (`clients/python/tests`, pytest against this binary in memory
/// mode, on the package as `pip install clients/python` installed it): own events once and in
/// order, a cursor that cannot be replayed as one event of each list kind, failover to the next
/// URL, a refused publish raising at once, an unreachable one at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_adapters_own_tests_pass_against_the_real_binary() {
    e2e::ensure_setup();
    e2e::run_to_success(
        "pytest clients/python/tests",
        &e2e::python("py2bus"),
        &[
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "clients/python/tests",
        ],
    )
    .await;
}

/// The TypeScript adapter's own tests (`clients/typescript/test`, `node --test` against this
/// binary in memory mode, on the `dist/` that `npm install clients/typescript` built): own events
/// once and in order, a cursor that cannot be replayed as one event of each list kind, failover,
/// a refused publish reported to `onerror` at once and an unreachable one at its deadline, `close()`
/// flushing the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_adapters_own_tests_pass_against_the_real_binary() {
    e2e::ensure_setup();
    e2e::run_to_success(
        "node --test clients/typescript/test",
        std::path::Path::new("node"),
        &["--test", "clients/typescript/test/"],
    )
    .await;
}
