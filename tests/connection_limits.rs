//! Connections that do nothing cannot exhaust a replica: a connection that sends nothing (or only
//! the HTTP/2 preface) is closed by the first-request deadline, a body that stops short is
//! answered `408` by the body deadline, and open connections are capped below the open-file limit.
//! At a listener's cap, the connection with nothing in progress for the longest is closed to make
//! room for a new one, so idle sockets never keep a client out, on the public listener or the
//! admin one (probes); connections with a request in progress (streams) are never closed for it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::join_all;
use mcp_fanout_testkit::hostile::{
    closed_by_peer, connect_idle, response_on, send_head_and_part, H2_PREFACE,
};
use mcp_fanout_testkit::{
    error_code, open_stream_with, start_memory, start_with_open_files, with_admin, RawRequest,
    Replica, SseRequest, SOON,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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
async fn a_flood_of_idle_sockets_leaves_both_listeners_answering_and_every_socket_closed() {
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
    r.wait_metric(AT_CAP_PUBLIC, WITHIN, |n| n >= 1.0)
        .await
        .expect("the public listener reaches its cap and makes room");

    // Saturated with idle sockets: the admin listener answers probes and metrics, and the
    // public one a request (an idle socket makes room for it).
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
    let resp = RawRequest::new("GET", PUBLIC_REQUEST)
        .send(public, WITHIN)
        .await
        .expect("a public request is answered while idle sockets fill the listener");
    assert_eq!(resp.status(), 200);

    // Every idle socket is closed: to make room, or by the first-request deadline.
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

const AT_CAP_PUBLIC: &str =
    r#"mcp_fanout_connections_closed_total{listener="public",reason="at_cap"}"#;
const AT_CAP_ADMIN: &str =
    r#"mcp_fanout_connections_closed_total{listener="admin",reason="at_cap"}"#;

/// Deadlines far beyond any test: a connection closed during one was closed to make room.
const FAR_DEADLINES: &[(&str, &str)] = &[
    ("FANOUT_FIRST_REQUEST_SECS", "600"),
    ("FANOUT_IDLE_SECS", "600"),
    ("FANOUT_ADMIN_ADDR", "127.0.0.1:0"),
];

/// A replica with [`FAR_DEADLINES`] and an explicit public cap of 4 connections.
async fn start_at_a_cap_of_4(label: &str) -> Replica {
    let mut env = FAR_DEADLINES.to_vec();
    env.push(("FANOUT_MAX_CONNECTIONS", "4"));
    start_memory(label, &env).await
}

/// `n` connections, each connected after the one before (so accepted in that order).
async fn connect_in_order(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(TcpStream::connect(addr).await.expect("connect"));
    }
    out
}

/// A public request answered at once (a poll that does not wait): the public listener has no
/// `/healthz` beside a separate admin one.
const PUBLIC_REQUEST: &str = "/poll?timeout=0";

/// Whether a connection open already (or closed by the replica) still answers a
/// [`PUBLIC_REQUEST`].
async fn answers(conn: &mut TcpStream) -> bool {
    let sent = conn
        .write_all(b"GET /poll?timeout=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    sent.is_ok()
        && response_on(conn, "GET", SOON)
            .await
            .is_ok_and(|r| r.status() == 200)
}

/// A [`PUBLIC_REQUEST`] on a connection open already: it is answered `200`.
async fn answered_on(conn: &mut TcpStream, what: &str) {
    conn.write_all(b"GET /poll?timeout=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{what}: write: {e}"));
    let resp = response_on(conn, "GET", SOON)
        .await
        .unwrap_or_else(|e| panic!("{what}: still open and answering: {e}"));
    assert_eq!(resp.status(), 200, "{what}");
}

/// At an explicit cap of 4 held by idle sockets, a fifth connection's request is answered long
/// before any deadline: the socket idle the longest (the first) is closed for it, and only that
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_socket_idle_longest_makes_room_for_a_new_request() {
    let r = start_at_a_cap_of_4("cap").await;
    let addr = r.public_addr();
    let mut idle = connect_in_order(addr, 4).await;
    let resp = RawRequest::new("GET", PUBLIC_REQUEST)
        .send(addr, WITHIN)
        .await
        .expect("a request past the cap is answered before the idle sockets' deadlines");
    assert_eq!(resp.status(), 200);
    closed_by_peer(&mut idle[0], SOON)
        .await
        .expect("the socket idle the longest was closed to make room");
    for (i, conn) in idle.iter_mut().enumerate().skip(1) {
        answered_on(conn, &format!("idle socket {i}")).await;
    }
    assert_eq!(r.count(AT_CAP_PUBLIC).await.expect("metrics"), 1.0);
}

/// Requests in progress hold their places, and a connection that goes idle gives up its own: at a
/// cap of 4 held by two streams and two waiting polls (on keep-alive connections), a fifth
/// connection finds nothing idle (the cap is said to be reached with every connection busy) and
/// waits. Once the polls are answered their connections are idle keep-alives, far from their
/// deadline: the first gives up its place to the fifth. The streams are never closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_connections_keep_their_places_and_one_going_idle_gives_up_its_own() {
    let r = start_at_a_cap_of_4("cap-busy").await;
    let addr = r.public_addr();
    let mut streams = Vec::new();
    for i in 0..2 {
        streams.push(open_stream_with(&r, SseRequest::mcp(), &format!("stream {i}")).await);
    }
    // Polls stay in hyper's hands while they wait (a stream leaves them after its head).
    let mut polls = connect_in_order(addr, 2).await;
    for p in &mut polls {
        p.write_all(b"GET /poll?timeout=60 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .expect("poll");
    }
    r.wait_metric(r#"mcp_fanout_subscribers{kind="poll"}"#, WITHIN, |n| {
        n >= 2.0
    })
    .await
    .expect("both polls wait");
    let fifth = tokio::spawn(async move {
        RawRequest::new("GET", PUBLIC_REQUEST)
            .send(addr, WITHIN)
            .await
    });
    r.wait_for_log(
        "the cap is reached with every connection busy",
        WITHIN,
        |l| {
            l["fields"]["max_connections"].as_u64() == Some(4)
                && l["fields"]["listener"].as_str() == Some("public")
        },
    )
    .await
    .expect("the fifth connection finds the cap reached and nothing idle");
    assert_eq!(r.count(AT_CAP_PUBLIC).await.expect("metrics"), 0.0);
    let publish = |n| {
        let r = &r;
        async move {
            r.publish_ok(&mcp_fanout_testkit::note(
                "notifications/tools/list_changed",
                "at-cap",
                n,
            ))
            .await
            .expect("publish on the admin listener")
        }
    };
    let id = publish(0).await;
    for (i, p) in polls.iter_mut().enumerate() {
        let resp = response_on(p, "GET", SOON)
            .await
            .unwrap_or_else(|e| panic!("poll {i} is answered: {e}"));
        assert_eq!(resp.status(), 200, "poll {i}");
        assert!(
            resp.text().contains(&id),
            "poll {i} gets the event: {}",
            resp.text()
        );
    }
    // Both poll connections are idle keep-alives now; one gives up its place.
    let resp = fifth
        .await
        .expect("join")
        .expect("the fifth is answered in the place an idle connection gave up");
    assert_eq!(resp.status(), 200);
    assert_eq!(r.count(AT_CAP_PUBLIC).await.expect("metrics"), 1.0);
    // The first poll connection to go idle gave up its place; the other still answers.
    let mut answering = 0;
    for p in &mut polls {
        answering += usize::from(answers(p).await);
    }
    assert_eq!(
        answering, 1,
        "one poll connection gave up its place, the other kept it"
    );
    // The streams were never closed: both get the next event.
    let id = publish(1).await;
    for (i, s) in streams.iter_mut().enumerate() {
        let got = s
            .events(2, SOON)
            .await
            .unwrap_or_else(|e| panic!("stream {i} stays open and receives: {e}"));
        assert_eq!(got[1].id.as_deref(), Some(id.as_str()), "stream {i}");
    }
}

/// The admin listener's cap (64) filled with idle sockets — by anyone who can reach its port —
/// does not keep probes out: each probe's connection makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_on_the_admin_listener_do_not_keep_probes_out() {
    let r = start_memory("admin-idle", FAR_DEADLINES).await;
    let _idle = connect_idle(r.admin_addr(), 100, SOON)
        .await
        .expect("the idle sockets connect");
    for path in ["/healthz", "/readyz", "/healthz"] {
        let resp = RawRequest::new("GET", path)
            .send(r.admin_addr(), WITHIN)
            .await
            .unwrap_or_else(|e| panic!("admin {path} is answered among idle sockets: {e}"));
        assert_eq!(resp.status(), 200, "admin {path}");
    }
    let at_cap = r.count(AT_CAP_ADMIN).await.expect("metrics");
    assert!(
        at_cap >= 1.0,
        "idle admin sockets closed to make room: {at_cap}"
    );
}

/// A request head must be whole within 10 s of its first byte; a keep-alive connection with no
/// head started lasts its idle deadline. (hyper's own header timeout, which this replaces, started
/// whenever it waited for a head: it closed every idle keep-alive 10 s after its last answer,
/// whatever `FANOUT_IDLE_SECS` said, and load balancers keeping connections longer met closed
/// ones.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_is_timed_from_its_first_byte_and_an_idle_keep_alive_lasts_its_deadline() {
    let r = start_memory("heads", FAR_DEADLINES).await;
    let addr = r.public_addr();
    let mut conns = connect_in_order(addr, 2).await;
    for (i, c) in conns.iter_mut().enumerate() {
        answered_on(c, &format!("connection {i}: a first request")).await;
    }
    let (idle, slow) = conns.split_at_mut(1);
    let (idle, slow) = (&mut idle[0], &mut slow[0]);
    // Half a head, then nothing.
    let started = std::time::Instant::now();
    slow.write_all(b"GET /poll?timeout=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("half a head");
    closed_by_peer(slow, WITHIN + Duration::from_secs(5))
        .await
        .expect("a head not whole within 10 s of its first byte closes its connection");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "not before its 10 s: {:?}",
        started.elapsed()
    );
    // More than 10 s after its last answer, the idle keep-alive still answers.
    answered_on(idle, "an idle keep-alive past 10 s").await;
    let slow_heads = r#"mcp_fanout_connections_closed_total{listener="public",reason="slow_head"}"#;
    assert_eq!(r.count(slow_heads).await.expect("metrics"), 1.0);
}
