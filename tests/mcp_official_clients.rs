//! unmodified official MCP clients receive a notification published on
//! another replica. Replicas of one Postgres deployment:
//!
//! - **A**, in proxy mode in front of a Python SDK 1.x server (FastMCP, stateful, SSE answers, which
//!   does *not* advertise `tools.listChanged`), with `FANOUT_ADVERTISE_LIST_CHANGED=true` and
//!   `FANOUT_MAX_STREAM_SECS=2`, so GET streams are cut every ~2 s and the SDKs reconnect with
//!   `Last-Event-ID`;
//! - **C**, in proxy mode in front of a Python SDK 2.x server (protocol 2026-07-28), also with
//!   `FANOUT_MAX_STREAM_SECS=2` (a listen stream is never closed for rebalancing);
//! - **B**, no upstream: where the test publishes.
//!
//! Clients, each a subprocess that prints JSON lines (tests/e2e/): the Python SDK 1.30.0 client
//! (legacy GET stream) and the TypeScript SDK 1.32.2 client with a `listChanged` tools handler,
//! both through A; the Python SDK 2.x client using `listen()` through C.
//!
//! The legacy clients' HTTP is tapped (public options only: an httpx transport, a `fetch`
//! wrapper), so the test sees each GET they make, its `Last-Event-ID`, the ids of the frames on
//! it, and when it ends — and can publish exactly while a client is disconnected.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

mod e2e;

use std::time::Duration;

use e2e::{
    get_streams, is_kind, is_notification, post_rpc, py1_client, py2_client, ts_client,
    wire_event_ids, Proc, Upstream, UpstreamKind,
};
use mcp_fanout_testkit::{Deployment, Replica};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Upper bound for one step (a client starting, a notification arriving, a stream cycling).
const STEP: Duration = Duration::from_secs(20);

const TOOLS: &str = "notifications/tools/list_changed";
const PROMPTS: &str = "notifications/prompts/list_changed";
const RESOURCES: &str = "notifications/resources/list_changed";
const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// Replica A / C settings: streams cut every 1.6–2 s, reconnect hint 1.5–3 s (a wide gap in which
/// the test publishes).
const CYCLING: [(&str, &str); 2] = [("FANOUT_MAX_STREAM_SECS", "2"), ("FANOUT_RETRY_MS", "1500")];

/// A legacy client is connected: initialized, tool list fetched, and its first GET stream open
/// with its priming frame (an id) received. Returns the `ready` line.
async fn legacy_ready(p: &Proc) -> Value {
    let (_, ready) = p.wait_kind("ready", 0, STEP).await;
    p.wait_state(
        "the first GET stream open with its priming frame",
        STEP,
        |lines| {
            get_streams(lines)
                .first()
                .filter(|s| s.status == 200 && s.saw_id())
                .map(|_| ())
        },
    )
    .await;
    ready.value
}

/// Waits until the TypeScript client's latest GET stream (open, or just cut) carried an `id:`, so
/// it will reconnect with a `Last-Event-ID`: an event published now reaches it live or on
/// replay. (After a resumed stream that carried nothing, the SDK reconnects without one.)
async fn ts_holds_a_cursor(ts: &Proc) {
    ts.wait_state("a GET stream that carried an id", STEP, |lines| {
        get_streams(lines).last().filter(|s| s.saw_id()).map(|_| ())
    })
    .await;
}

async fn publish(b: &Replica, body: Value) -> String {
    b.publish_ok(&body)
        .await
        .unwrap_or_else(|e| panic!("publish on B: {e}"))
}

fn count_notifications(p: &Proc, method: &str) -> usize {
    p.count(|v| is_notification(v, method))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_official_clients_get_a_notification_published_on_another_replica() {
    e2e::ensure_setup();
    let started = Instant::now();
    let pg = Deployment::fresh("e2e_clients").await;
    let (up1, up2) = tokio::join!(
        Upstream::start(UpstreamKind::V1Sse, "upstream-v1"),
        Upstream::start(UpstreamKind::V2, "upstream-v2"),
    );

    // The 1.x upstream itself does not advertise tools.listChanged: the TypeScript handler below
    // only runs because replica A rewrites the initialize result.
    let direct = post_rpc(&up1.url, &e2e::initialize_request(1), &[]).await;
    assert_eq!(
        direct.status, 200,
        "initialize directly on the 1.x upstream"
    );
    let caps = direct.messages()[0]["result"]["capabilities"].clone();
    assert_ne!(
        caps.pointer("/tools/listChanged"),
        Some(&json!(true)),
        "the 1.x upstream must not advertise tools.listChanged itself: {caps}"
    );

    let mut env_a = vec![
        ("FANOUT_UPSTREAM", up1.url.as_str()),
        ("FANOUT_ADVERTISE_LIST_CHANGED", "true"),
    ];
    env_a.extend_from_slice(&CYCLING);
    let mut env_c = vec![("FANOUT_UPSTREAM", up2.url.as_str())];
    env_c.extend_from_slice(&CYCLING);
    let (a, c, b) = tokio::join!(
        pg.replica("A", &env_a),
        pg.replica("C", &env_c),
        pg.replica("B", &[]),
    );

    // --- Connected. The TypeScript client starts last, so #1 is published early in its life,
    // while it holds a cursor (see `legacy_clients_keep_their_cursor_across_an_idle_resumed_stream`
    // for what happens otherwise).
    let py2 = py2_client("py2", &c.public_url("/mcp"), &["--resources"]);
    let py1 = py1_client("py1", &a.public_url("/mcp"));
    let py1_ready = legacy_ready(&py1).await;
    let ts = ts_client("ts", &a.public_url("/mcp"));
    let ts_ready = legacy_ready(&ts).await;
    let py1_session = py1_ready["session"]
        .as_str()
        .expect("py1 has a session id")
        .to_string();
    assert_eq!(py1_ready["protocol"], "2025-11-25", "py1 protocol");
    assert_eq!(
        ts_ready.pointer("/capabilities/tools/listChanged"),
        Some(&json!(true)),
        "through A (FANOUT_ADVERTISE_LIST_CHANGED=true) the TypeScript client must see \
         tools.listChanged: {ts_ready}"
    );
    let initial_tools = e2e::tool_names(&ts_ready["tools"]);
    assert_eq!(initial_tools, ["add", "echo", "gated"], "ts tools via A");
    assert_eq!(
        e2e::tool_names(&py1_ready["tools"]),
        initial_tools,
        "py1 tools via A"
    );
    let (_, connected) = py2.wait_kind("connected", 0, STEP).await;
    assert_eq!(
        connected.value["protocol"], "2026-07-28",
        "the 2.x client negotiated 2026-07-28 through C"
    );
    let (_, py2_ready) = py2.wait_kind("ready", 0, STEP).await;
    assert_eq!(
        py2_ready.value["honored"],
        json!({"toolsListChanged": true, "resourcesListChanged": true}),
        "the acknowledged filter"
    );
    let subscription = py2_ready.value["subscription"].clone();
    c.wait_metric(r#"mcp_fanout_subscribers{kind="listen"}"#, STEP, |v| {
        v == 1.0
    })
    .await
    .expect("C counts the listen stream");

    // The tool lists change upstream; the notification makes the clients refetch them.
    up1.add_tool("late_tool_v1").await;
    up2.add_tool("late_tool_v2").await;

    // --- 1. One notification published on B reaches all three.
    ts_holds_a_cursor(&ts).await;
    let id1 = publish(&b, json!({ "method": TOOLS })).await;
    eprintln!("[test] published #1 {id1} on B");
    let (ts_n1, _) = ts
        .wait_line("#1 (tools/list_changed)", 0, STEP, |v| {
            is_notification(v, TOOLS)
        })
        .await;

    // --- 2. (Right away, so the test catches the very next cut.) The TypeScript client's stream
    // that delivered #1 is cut (max stream age); #2 is published on B while it is disconnected; it
    // resumes with Last-Event-ID = #1 and gets #2.
    let (ts_cut, _) = ts.wait_kind("get_end", ts_n1, STEP).await;
    let id2 = publish(&b, json!({ "method": TOOLS })).await;
    let published = Instant::now();
    eprintln!("[test] published #2 {id2} on B while ts was disconnected");
    let (_, resumed) = ts.wait_kind("get", ts_cut, STEP).await;
    assert_eq!(
        resumed.value["last_event_id"].as_str(),
        Some(id1.as_str()),
        "the TypeScript client resumes from #1: {}",
        resumed.value
    );
    assert!(
        resumed.at > published,
        "inconclusive: the TypeScript client reconnected before #2 was committed (the gap is \
         FANOUT_RETRY_MS 1.5–3 s; the publish took {:?})",
        published.duration_since(ts.lines()[ts_cut].at)
    );

    // What #1 did: the TypeScript handler refetched (the new tool proves a fresh tools/list
    // through A), the Python clients got it, the 2.x one with its subscription id, and refetched.
    let (_, refetch) = ts.wait_kind("refetched", ts_n1, STEP).await;
    assert_eq!(
        e2e::tool_names(&refetch.value["tools"]),
        ["add", "echo", "gated", "late_tool_v1"],
        "the TypeScript listChanged handler refetched the tool list through A: {}",
        refetch.value
    );
    py1.wait_line("#1 (tools/list_changed)", 0, STEP, |v| {
        is_notification(v, TOOLS)
    })
    .await;
    let (py2_n1, n) = py2
        .wait_line("#1 (tools/list_changed)", 0, STEP, |v| {
            is_notification(v, TOOLS)
        })
        .await;
    assert_eq!(
        n.value.pointer(&format!(
            "/message/params/_meta/{}",
            SUBSCRIPTION_ID.replace('/', "~1")
        )),
        Some(&subscription),
        "the listen frame carries the subscription id"
    );
    let (_, refetch) = py2.wait_kind("refetched", py2_n1, STEP).await;
    assert_eq!(
        e2e::tool_names(&refetch.value["tools"]),
        ["add", "echo", "late_tool_v2"],
        "the 2.x client refetched the tool list through C"
    );
    // #2 reached everyone.
    ts.wait_count("tools/list_changed", 2, STEP, |v| is_notification(v, TOOLS))
        .await;
    ts.wait_count("refetched", 2, STEP, |v| is_kind(v, "refetched"))
        .await;
    py1.wait_count("tools/list_changed", 2, STEP, |v| is_notification(v, TOOLS))
        .await;
    py2.wait_count("tools/list_changed", 2, STEP, |v| is_notification(v, TOOLS))
        .await;

    // --- 3. Same for the Python client: at its next stream cut, #3 (for its session only, so the
    // other client's timing cannot interfere) is published while it is disconnected; it resumes
    // with Last-Event-ID = #2 (the last event it saw) and gets #3.
    let now = py1.lines().len();
    let (py1_cut, _) = py1.wait_kind("get_end", now, STEP).await;
    let id3 = publish(&b, json!({ "method": TOOLS, "session": py1_session })).await;
    let published = Instant::now();
    eprintln!("[test] published #3 {id3} on B for py1's session while py1 was disconnected");
    let (_, resumed) = py1.wait_kind("get", py1_cut, STEP).await;
    assert_eq!(
        resumed.value["last_event_id"].as_str(),
        Some(id2.as_str()),
        "the Python client resumes from #2: {}",
        resumed.value
    );
    assert!(
        resumed.at > published,
        "inconclusive: the Python client reconnected before #3 was committed"
    );
    py1.wait_count("tools/list_changed", 3, STEP, |v| is_notification(v, TOOLS))
        .await;

    // --- 4. Closing: prompts/list_changed then resources/list_changed, published when the
    // TypeScript client holds a cursor (its latest stream carried an id), so both reach it. Events
    // arrive in log order: once the last one is in, every earlier one (and any duplicate) is too.
    ts_holds_a_cursor(&ts).await;
    let closing = b
        .publish_batch_ok(&[json!({ "method": PROMPTS }), json!({ "method": RESOURCES })])
        .await
        .expect("publish the closing batch on B");
    eprintln!("[test] published the closing events {closing:?} on B");
    for p in [&py1, &ts, &py2] {
        p.wait_line("resources/list_changed (the last event)", 0, STEP, |v| {
            is_notification(v, RESOURCES)
        })
        .await;
    }

    // --- Exactly once, on the wire and through the SDKs.
    let py1_lines = py1.lines();
    assert_eq!(
        wire_event_ids(&py1_lines),
        [
            id1.clone(),
            id2.clone(),
            id3.clone(),
            closing[0].clone(),
            closing[1].clone()
        ],
        "py1: every event once, in order, across its reconnects\n{}",
        py1.transcript()
    );
    assert_eq!(
        count_notifications(&py1, TOOLS),
        3,
        "py1 tools/list_changed"
    );
    assert_eq!(
        count_notifications(&py1, PROMPTS),
        1,
        "py1 prompts/list_changed"
    );
    assert_eq!(
        count_notifications(&py1, RESOURCES),
        1,
        "py1 resources/list_changed"
    );

    let ts_lines = ts.lines();
    assert_eq!(
        wire_event_ids(&ts_lines),
        [
            id1.clone(),
            id2.clone(),
            closing[0].clone(),
            closing[1].clone()
        ],
        "ts: every event once, in order, across its reconnects\n{}",
        ts.transcript()
    );
    assert_eq!(count_notifications(&ts, TOOLS), 2, "ts tools/list_changed");
    assert_eq!(
        count_notifications(&ts, PROMPTS),
        1,
        "ts prompts/list_changed"
    );
    assert_eq!(
        count_notifications(&ts, RESOURCES),
        1,
        "ts resources/list_changed"
    );
    let refetches: Vec<Value> = ts
        .of_kind("refetched", 0)
        .into_iter()
        .map(|(_, l)| l.value)
        .collect();
    assert_eq!(refetches.len(), 2, "one refetch per tools/list_changed");
    for r in &refetches {
        assert_eq!(
            e2e::tool_names(&r["tools"]),
            ["add", "echo", "gated", "late_tool_v1"],
            "refetch {r}"
        );
    }
    // Streams were really cut and resumed (steps 2 and 3), none refused; the Python client
    // sends a Last-Event-ID on every reconnect.
    for (label, lines) in [("py1", &py1_lines), ("ts", &ts_lines)] {
        let streams = get_streams(lines);
        assert!(streams.len() >= 2, "{label}: only {} GET", streams.len());
        assert!(
            streams.iter().all(|s| s.status == 200),
            "{label}: a GET was refused"
        );
    }
    assert!(
        get_streams(&py1_lines)[1..]
            .iter()
            .all(|s| s.last_event_id.is_some()),
        "py1 reconnected without a Last-Event-ID"
    );

    assert_eq!(
        count_notifications(&py2, TOOLS),
        2,
        "py2 tools/list_changed"
    );
    assert_eq!(
        count_notifications(&py2, RESOURCES),
        1,
        "py2 resources/list_changed"
    );
    assert_eq!(
        count_notifications(&py2, PROMPTS),
        0,
        "py2 did not opt into prompts"
    );
    for (_, l) in py2.of_kind("notification", 0) {
        assert_eq!(
            l.value.pointer(&format!(
                "/message/params/_meta/{}",
                SUBSCRIPTION_ID.replace('/', "~1")
            )),
            Some(&subscription),
            "every listen frame carries the subscription id: {}",
            l.value
        );
    }
    assert_eq!(py2.count(|v| is_kind(v, "event")), 3, "py2 typed events");
    assert_eq!(
        py2.count(|v| is_kind(v, "lost") || is_kind(v, "ended")),
        0,
        "the listen stream on C must stay open (never closed for rebalancing)"
    );
    c.wait_metric(r#"mcp_fanout_subscribers{kind="listen"}"#, STEP, |v| {
        v == 1.0
    })
    .await
    .expect("C still has the listen stream");

    for p in [&py1, &ts, &py2] {
        let errors = p.of_kind("error", 0);
        assert!(
            errors.is_empty(),
            "{} reported errors: {errors:?}",
            p.label()
        );
    }
    let cuts = a
        .logs()
        .iter()
        .filter(|l| l.contains("subscriber ended by server") && l.contains("max_stream_age"))
        .count();
    assert!(
        cuts >= 2,
        "A logged only {cuts} streams ended for max_stream_age"
    );
    eprintln!("[test] done in {:?}", started.elapsed());
}

/// What happened to one legacy client in [`legacy_clients_keep_their_cursor_across_an_idle_resumed_stream`].
async fn idle_resume_case(label: &str, p: &Proc, session: &str, b: &Replica) -> Result<(), String> {
    // A stream that resumed (it was sent a Last-Event-ID), carried nothing, and was cut: the
    // client is now waiting to reconnect.
    let idle = p
        .wait_state("an idle resumed GET stream that was cut", STEP, |lines| {
            get_streams(lines)
                .last()
                .filter(|s| {
                    s.last_event_id.is_some() && s.end_idx.is_some() && s.event_ids().is_empty()
                })
                .cloned()
        })
        .await;
    let cursor = idle.last_event_id.clone().unwrap_or_default();
    let end_idx = idle.end_idx.unwrap_or(0);
    let id = publish(b, json!({ "method": TOOLS, "session": session })).await;
    let published = Instant::now();
    eprintln!("[test] published {id} for {label}'s session while it was disconnected");
    let (_, next) = p.wait_kind("get", end_idx, STEP).await;
    let next_cursor = next.value["last_event_id"].clone();
    if next.at < published {
        return Err(format!(
            "{label}: inconclusive, it reconnected before {id} was committed"
        ));
    }
    let got = p
        .try_wait_line(end_idx, Duration::from_secs(12), |v| {
            is_notification(v, TOOLS)
        })
        .await;
    if got.is_err() {
        return Err(format!(
            "{label}: LOST event {id}. Its GET stream resumed with Last-Event-ID {cursor}, carried no \
             event (no priming frame either) and was cut (max stream age); {id} was published \
             while it was disconnected; its next GET carried Last-Event-ID {next_cursor} \
             (expected \"{cursor}\"), so the replica started it from the head and {id} never \
             arrived (waited 12 s)."
        ));
    }
    // Exactly once: a closing event for this session; once it is in, a duplicate would be too.
    let closing = publish(b, json!({ "method": RESOURCES, "session": session })).await;
    p.wait_line("the closing event", end_idx, STEP, |v| {
        is_notification(v, RESOURCES)
    })
    .await;
    let tools = count_notifications(p, TOOLS);
    let ids = wire_event_ids(&p.lines());
    if tools != 1 || ids != [id.clone(), closing.clone()] {
        return Err(format!(
            "{label}: expected {id} then {closing} once each; got {tools} tools/list_changed, \
             wire ids {ids:?}"
        ));
    }
    Ok(())
}

/// For the legacy clients, an event published while they reconnect after a stream that carried
/// nothing (the common case: an idle client whose stream is rebalanced every
/// `FANOUT_MAX_STREAM_SECS`) still arrives, once. Each client gets events for its own session only,
/// published exactly while it is disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn legacy_clients_keep_their_cursor_across_an_idle_resumed_stream() {
    e2e::ensure_setup();
    let pg = Deployment::fresh("e2e_idle").await;
    let up = Upstream::start(UpstreamKind::V1Sse, "upstream-v1").await;
    let mut env_a = vec![("FANOUT_UPSTREAM", up.url.as_str())];
    env_a.extend_from_slice(&CYCLING);
    let (a, b) = tokio::join!(pg.replica("A", &env_a), pg.replica("B", &[]));
    let py1 = py1_client("py1", &a.public_url("/mcp"));
    let ts = ts_client("ts", &a.public_url("/mcp"));
    let (py1_ready, ts_ready) = tokio::join!(legacy_ready(&py1), legacy_ready(&ts));
    let py1_session = py1_ready["session"]
        .as_str()
        .expect("py1 session")
        .to_string();
    let ts_session = ts_ready["session"]
        .as_str()
        .expect("ts session")
        .to_string();
    let (r_py1, r_ts) = tokio::join!(
        idle_resume_case("python 1.30.0", &py1, &py1_session, &b),
        idle_resume_case("typescript 1.32.2", &ts, &ts_session, &b),
    );
    let failures: Vec<String> = [r_py1, r_ts].into_iter().filter_map(Result::err).collect();
    assert!(
        failures.is_empty(),
        "{}\n{}\n{}",
        failures.join("\n"),
        py1.transcript(),
        ts.transcript()
    );
}

/// `FANOUT_MINT_SESSION_IDS` for a stateless upstream: the Python SDK opens its GET stream only
/// when it has a session id, which a stateless server never issues; through a minting replica it
/// gets one, opens its stream and receives notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_gets_its_stream_through_a_minting_proxy_for_a_stateless_upstream() {
    e2e::ensure_setup();
    let up = Upstream::start(UpstreamKind::V1Stateless, "upstream-stateless").await;
    let direct = post_rpc(&up.url, &e2e::initialize_request(1), &[]).await;
    assert_eq!(direct.status, 200, "initialize on the stateless upstream");
    assert!(
        direct.header("mcp-session-id").is_none(),
        "the stateless upstream issues no session id"
    );
    let r = mcp_fanout_testkit::start(
        "mint",
        &[
            ("FANOUT_UPSTREAM", up.url.as_str()),
            ("FANOUT_MINT_SESSION_IDS", "true"),
        ],
    )
    .await;
    let py1 = py1_client("py1-minted", &r.public_url("/mcp"));
    let ready = legacy_ready(&py1).await;
    assert!(
        ready["session"].as_str().is_some_and(|s| !s.is_empty()),
        "the client got a minted session id: {ready}"
    );
    assert_eq!(e2e::tool_names(&ready["tools"]), ["add", "echo", "gated"]);
    let id = r
        .publish_ok(&json!({ "method": TOOLS }))
        .await
        .expect("publish");
    py1.wait_line("the notification", 0, STEP, |v| is_notification(v, TOOLS))
        .await;
    assert_eq!(wire_event_ids(&py1.lines()), [id]);
}
