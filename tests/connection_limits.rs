//! Connections that do nothing cannot exhaust a replica's file descriptors: a connection that
//! sends nothing (or only the HTTP/2 preface) is closed by the first-request deadline, a body that
//! stops short is answered `408` by the body deadline, and open connections are capped below the
//! open-file limit, so a flood of idle sockets leaves the admin listener answering and the replica
//! serving once they are gone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use futures::future::join_all;
use mcp_fanout_testkit::hostile::{
    closed_by_peer, connect_idle, response_on, send_head_and_part, H2_PREFACE,
};
use mcp_fanout_testkit::{
    error_code, open_stream_with, start_memory, start_owned, start_with_open_files, with_admin,
    RawRequest, SseRequest, SOON,
};
use tokio::io::AsyncWriteExt;

/// The deadlines the tests run with (the defaults are 15 s, 75 s and 30 s).
const DEADLINE_SECS: u64 = 2;
const DEADLINES: &[(&str, &str)] = &[
    ("FANOUT_FIRST_REQUEST_SECS", "2"),
    ("FANOUT_IDLE_SECS", "2"),
    ("FANOUT_BODY_TIMEOUT_SECS", "2"),
];

/// Longer than any deadline above, with room for a loaded machine.
const WITHIN: Duration = Duration::from_secs(DEADLINE_SECS + 10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_nothing_or_stop_short_are_closed_by_their_deadlines() {
    let r = start_memory("deadlines", DEADLINES).await;
    let addr = r.public_addr();

    // Nothing at all, and only the HTTP/2 preface.
    let mut silent = connect_idle(addr, 1, SOON)
        .await
        .expect("connect")
        .remove(0);
    let mut preface = connect_idle(addr, 1, SOON)
        .await
        .expect("connect")
        .remove(0);
    preface.write_all(H2_PREFACE).await.expect("preface");
    closed_by_peer(&mut silent, WITHIN)
        .await
        .expect("a connection that sends nothing is closed");
    closed_by_peer(&mut preface, WITHIN)
        .await
        .expect("an HTTP/2 connection that sends only the preface is closed");

    // Between requests, too: one request, then nothing.
    let mut kept = send_head_and_part(
        addr,
        &RawRequest::new("GET", "/healthz").header("Connection", "keep-alive"),
        b"",
    )
    .await
    .expect("send");
    let ok = response_on(&mut kept, "GET", SOON).await.expect("answer");
    assert_eq!(ok.status(), 200);
    closed_by_peer(&mut kept, WITHIN)
        .await
        .expect("an idle keep-alive connection is closed");

    // A body one byte short: POST /mcp and the admin publish.
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{}}"#;
    let token = format!("Bearer {}", mcp_fanout_testkit::ADMIN_TOKEN);
    for (what, req) in [
        (
            "POST /mcp",
            RawRequest::new("POST", "/mcp")
                .header("Content-Type", "application/json")
                .header("Accept", "application/json, text/event-stream"),
        ),
        (
            "POST /admin/publish",
            RawRequest::new("POST", "/admin/publish")
                .header("Content-Type", "application/json")
                .header("Authorization", &token),
        ),
    ] {
        let req = req
            .header("Content-Length", &body.len().to_string())
            .header("Connection", "keep-alive");
        let mut conn = send_head_and_part(addr, &req, &body[..body.len() - 1])
            .await
            .expect("send");
        let resp = response_on(&mut conn, "POST", WITHIN)
            .await
            .unwrap_or_else(|e| panic!("{what}: a body one byte short is answered: {e}"));
        assert_eq!(resp.status(), 408, "{what}: {}", resp.text());
        let json = resp.json().expect("a JSON answer");
        let code = error_code(&json)
            .map(str::to_owned)
            .or_else(|| json["error"]["message"].as_str().map(str::to_owned));
        assert!(code.is_some(), "{what}: a JSON error: {json}");
        closed_by_peer(&mut conn, WITHIN)
            .await
            .unwrap_or_else(|e| panic!("{what}: the connection closes after the 408: {e}"));
    }

    // Still serving.
    let ok = RawRequest::new("GET", "/healthz")
        .send(addr, SOON)
        .await
        .expect("healthz");
    assert_eq!(ok.status(), 200);
}

/// The replica's open-file limit in the flood test, and the idle sockets thrown at it: more than
/// the limit, fewer than the limit plus the listen backlog.
const OPEN_FILES: u64 = 1024;
const FLOOD: usize = 1100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_sockets_leaves_the_admin_listener_answering_and_the_replica_serving() {
    // A first-request deadline long enough for the whole flood to arrive before it closes any.
    let mut env = with_admin(DEADLINES);
    env.push(("FANOUT_FIRST_REQUEST_SECS".into(), "15".into()));
    env.push(("FANOUT_ADMIN_ADDR".into(), "127.0.0.1:0".into()));
    let env = mcp_fanout_testkit::launch::dedup(env);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // Past the cap the flood waits in the listen backlog, which the kernel bounds by somaxconn.
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(4096);
    assert!(
        somaxconn >= FLOOD,
        "net.core.somaxconn is {somaxconn}: this test needs a listen backlog of {FLOOD}"
    );
    let r = start_with_open_files("flood", &env, OPEN_FILES).await;
    let public = r.public_addr();

    // Every socket connects (the kernel queues what the replica does not accept); a few say
    // only the HTTP/2 preface.
    let mut flood = connect_idle(public, FLOOD, SOON)
        .await
        .expect("the idle sockets connect");
    for s in flood.iter_mut().take(50) {
        s.write_all(H2_PREFACE).await.expect("preface");
    }
    r.wait_for_log("the connection cap is reached", WITHIN, |l| {
        l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("connection cap reached"))
    })
    .await
    .expect("the public listener reaches its cap");

    // Saturated: the admin listener still answers probes and metrics.
    // (New connections each: the kit's client may hold one open from before the flood.)
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = RawRequest::new("GET", path)
            .send(r.admin_addr(), SOON)
            .await
            .unwrap_or_else(|e| {
                panic!("admin {path} answers while the public listener is full: {e}")
            });
        assert_eq!(resp.status(), 200, "admin {path}");
    }

    // Every idle socket is closed by the first-request deadline (those waiting in the backlog
    // once the replica gets to them).
    let closed = join_all(
        flood
            .iter_mut()
            .map(|s| closed_by_peer(s, Duration::from_secs(90))),
    )
    .await;
    let still_open = closed.iter().filter(|c| c.is_err()).count();
    assert_eq!(still_open, 0, "idle sockets the replica never closed");
    drop(flood);

    // accept never failed for want of a descriptor.
    let failed: Vec<String> = r
        .logs()
        .into_iter()
        .filter(|l| l.contains("accept failed"))
        .collect();
    assert!(failed.is_empty(), "accept failed: {failed:?}");

    // And the replica serves normally: a stream gets what is published.
    let mut stream = open_stream_with(&r, SseRequest::mcp(), "after the flood").await;
    let id = r
        .publish_ok(&mcp_fanout_testkit::note(
            "notifications/tools/list_changed",
            "after-flood",
            0,
        ))
        .await
        .expect("publish after the flood");
    let got = stream.events(1, SOON).await.expect("the event arrives");
    assert_eq!(got[0].id.as_deref(), Some(id.as_str()));
}

/// Setting the cap explicitly: past it, connections wait in the backlog and are served in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_an_explicit_cap_connections_wait_and_are_served_in_turn() {
    let mut env = with_admin(DEADLINES);
    env.push(("FANOUT_MAX_CONNECTIONS".into(), "4".into()));
    let r = start_owned("cap", &env).await;
    let addr = r.public_addr();
    // Four idle sockets hold the cap; a fifth request waits until the deadline frees a place.
    let mut idle = connect_idle(addr, 4, SOON).await.expect("connect");
    r.wait_for_log("the connection cap is reached", WITHIN, |l| {
        l["fields"]["max_connections"].as_u64() == Some(4)
    })
    .await
    .expect("the cap is reached");
    let resp = RawRequest::new("GET", "/healthz")
        .send(addr, WITHIN)
        .await
        .expect("a request past the cap is answered once a place frees");
    assert_eq!(resp.status(), 200);
    for s in &mut idle {
        closed_by_peer(s, WITHIN).await.expect("idle sockets close");
    }
}
