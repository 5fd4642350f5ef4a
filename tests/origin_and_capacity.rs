//! Contract §2 `FANOUT_ALLOWED_ORIGINS` / `FANOUT_MAX_SUBSCRIBERS`, §3.2
//! shedding, §4.1: a disallowed `Origin` gets `403 forbidden` on every endpoint (preflights
//! included); an allowed cross-origin browser request gets CORS headers (allow-origin, `Vary`,
//! exposed MCP headers) on streams, polls, publishes and errors, and its preflight `204` with
//! the allowed methods and headers; no `Origin` and a same-origin one are always fine. Over
//! `FANOUT_MAX_SUBSCRIBERS` a GET is shed — `200`, a `retry:` in [R, 2R], a clean end, counted —
//! a waiting poll answers at once, a shed GET takes over no session, and the existing streams keep
//! receiving; a freed slot is usable again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::{Duration, Instant};

use mcp_fanout_testkit::{
    body, error_shape::expect_raw_error, expect_shed, identity::TENANT_HEADER, open_stream_with,
    start_memory, RawRequest, SseRequest, ADMIN_TOKEN,
};
use serde_json::json;

const ALLOWED: &str = "https://app.example";
const T: Duration = Duration::from_secs(10);

fn has_token(list: Option<&str>, token: &str) -> bool {
    list.is_some_and(|l| l.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreign_origins_are_refused_and_allowed_ones_get_cors_headers() {
    let r = start_memory(
        "origins",
        &[
            ("FANOUT_ALLOWED_ORIGINS", ALLOWED),
            ("FANOUT_SUBSCRIBER_AUTH", "header"),
        ],
    )
    .await;
    let addr = r.public_addr();
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let publish = |origin: Option<&str>| {
        let mut req = RawRequest::new("POST", "/admin/publish")
            .header("Authorization", &admin)
            .json(&body("cors", 0));
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        req
    };

    // ---- foreign origins: 403 everywhere, before anything else happens ----
    for origin in [
        "https://evil.example",
        "https://app.example.evil",
        "http://app.example", // another scheme is another origin
        "https://app.example:8443",
        "null",
    ] {
        let reqs = [
            (
                "GET /mcp",
                RawRequest::new("GET", "/mcp").header("Accept", "text/event-stream"),
            ),
            ("GET /poll", RawRequest::new("GET", "/poll?timeout=0")),
            ("POST /admin/publish", publish(None)),
            (
                "GET /admin/cluster",
                RawRequest::new("GET", "/admin/cluster").header("Authorization", &admin),
            ),
            (
                "preflight OPTIONS /mcp",
                RawRequest::new("OPTIONS", "/mcp").header("Access-Control-Request-Method", "GET"),
            ),
        ];
        for (what, req) in reqs {
            let resp = req
                .header("Origin", origin)
                .send(addr, T)
                .await
                .unwrap_or_else(|e| panic!("{what} from {origin}: {e}"));
            expect_raw_error(&format!("{what} from {origin}"), &resp, 403, "forbidden");
            assert!(
                resp.header("access-control-allow-origin").is_none(),
                "{what} from {origin}: no CORS grant on a refusal"
            );
        }
    }
    assert_eq!(
        r.metric("mcp_fanout_events_published_total")
            .await
            .expect("metrics")
            .unwrap_or(0.0),
        0.0,
        "no refused publish was published"
    );

    // ---- the allowed origin: CORS headers on every answer ----
    let check_cors = |what: &str, head: &mcp_fanout_testkit::wire::ResponseHead| {
        assert_eq!(
            head.header("access-control-allow-origin"),
            Some(ALLOWED),
            "{what}: Access-Control-Allow-Origin"
        );
        let vary = head.header_all("vary").join(",");
        assert!(
            has_token(Some(&vary), "origin"),
            "{what}: Vary lists Origin, got {vary:?}"
        );
        let expose = head.header("access-control-expose-headers");
        assert!(
            has_token(expose, "mcp-session-id") && has_token(expose, "mcp-protocol-version"),
            "{what}: exposes Mcp-Session-Id and MCP-Protocol-Version, got {expose:?}"
        );
    };

    // A stream, with a session, from the browser's origin.
    let mut stream = open_stream_with(
        &r,
        SseRequest::mcp()
            .header("Origin", ALLOWED)
            .header(TENANT_HEADER, "T")
            .session("browser-session"),
        "browser stream",
    )
    .await;
    check_cors("GET /mcp", stream.head());
    r.wait_subscribers(1, T).await.expect("registered");

    // A publish from the allowed origin (an admin console) works and reaches the stream.
    let resp = publish(Some(ALLOWED)).send(addr, T).await.expect("publish");
    assert_eq!(
        resp.status(),
        200,
        "publish from the allowed origin: {}",
        resp.text()
    );
    check_cors("POST /admin/publish", &resp.head);
    let id = resp.json().expect("json")["id"]
        .as_str()
        .expect("an id")
        .to_string();
    let ev = stream.next_event(T).await.expect("event").expect("open");
    assert_eq!(ev.id.as_deref(), Some(id.as_str()));

    // A poll.
    let resp = RawRequest::new("GET", "/poll?timeout=0")
        .header("Origin", ALLOWED)
        .send(addr, T)
        .await
        .expect("poll");
    assert_eq!(resp.status(), 200, "poll: {}", resp.text());
    check_cors("GET /poll", &resp.head);

    // An error answer to the allowed origin still carries the grant (so the page can read it).
    let resp = RawRequest::new("GET", "/mcp")
        .header("Origin", ALLOWED)
        .header("Accept", "text/event-stream")
        .header("MCP-Protocol-Version", "1999-01-01")
        .send(addr, T)
        .await
        .expect("bad version");
    expect_raw_error(
        "bad version from the allowed origin",
        &resp,
        400,
        "unsupported_protocol_version",
    );
    check_cors("an error to the allowed origin", &resp.head);

    // The preflight.
    let resp = RawRequest::new("OPTIONS", "/mcp")
        .header("Origin", ALLOWED)
        .header("Access-Control-Request-Method", "GET")
        .header(
            "Access-Control-Request-Headers",
            "authorization, last-event-id, mcp-session-id, mcp-protocol-version",
        )
        .send(addr, T)
        .await
        .expect("preflight");
    assert_eq!(resp.status(), 204, "preflight: {}", resp.text());
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some(ALLOWED),
        "preflight: allow-origin"
    );
    let methods = resp.header("access-control-allow-methods");
    for m in ["GET", "POST", "DELETE"] {
        assert!(has_token(methods, m), "preflight allows {m}: {methods:?}");
    }
    let headers = resp.header("access-control-allow-headers");
    for h in [
        "authorization",
        "content-type",
        "last-event-id",
        "mcp-session-id",
        "mcp-protocol-version",
    ] {
        assert!(has_token(headers, h), "preflight allows {h}: {headers:?}");
    }
    // The preflight of a publish too.
    let resp = RawRequest::new("OPTIONS", "/admin/publish")
        .header("Origin", ALLOWED)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send(addr, T)
        .await
        .expect("preflight publish");
    assert_eq!(resp.status(), 204, "publish preflight: {}", resp.text());

    // ---- no Origin, and same-origin, are always fine ----
    let resp = RawRequest::new("GET", "/poll?timeout=0")
        .send(addr, T)
        .await
        .expect("poll");
    assert_eq!(resp.status(), 200, "no Origin: {}", resp.text());
    assert!(resp.header("access-control-allow-origin").is_none());
    let resp = RawRequest::new("GET", "/poll?timeout=0")
        .header("Origin", &format!("http://{addr}"))
        .send(addr, T)
        .await
        .expect("poll");
    assert_eq!(resp.status(), 200, "same origin: {}", resp.text());

    // The refused requests did not disturb the open stream.
    let id2 = r.publish_ok(&body("after", 1)).await.expect("publish");
    let ev = stream.next_event(T).await.expect("event").expect("open");
    assert_eq!(ev.id.as_deref(), Some(id2.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_the_subscriber_cap_a_get_is_shed_and_existing_streams_are_unaffected() {
    const RETRY_MS: u64 = 800;
    let retry = RETRY_MS.to_string();
    let r = start_memory(
        "capacity",
        &[("FANOUT_MAX_SUBSCRIBERS", "2"), ("FANOUT_RETRY_MS", &retry)],
    )
    .await;

    // Two streams fill the replica; one of them holds a session.
    let mut a = open_stream_with(&r, SseRequest::mcp().session("held"), "a (session held)").await;
    let mut b = open_stream_with(&r, SseRequest::mcp(), "b").await;
    r.wait_subscribers(2, T).await.expect("two subscribers");

    // Over the cap: 200, an event stream, a retry: in [R, 2R], and a clean end at once — also
    // for a GET presenting the held session (which must not take it over), and with a cursor.
    let shed_requests = [
        ("plain", SseRequest::mcp()),
        ("with the held session", SseRequest::mcp().session("held")),
        (
            "2025-11-25 with a cursor",
            SseRequest::mcp()
                .protocol("2025-11-25")
                .last_event_id("zzz-1"),
        ),
    ];
    for (what, req) in shed_requests {
        expect_shed(&r, req, RETRY_MS, what).await;
    }
    r.wait_metric(
        r#"mcp_fanout_subscribers_shed_total{reason="capacity"}"#,
        T,
        |v| v == 3.0,
    )
    .await
    .expect("three sheds counted");

    // A poll that would wait answers at once: no events, cursor = after.
    let head = r
        .poll("timeout=0")
        .await
        .expect("poll")
        .json()
        .expect("json")["cursor"]
        .as_str()
        .expect("cursor")
        .to_string();
    let started = Instant::now();
    let resp = r
        .poll(&format!("after={head}&timeout=20"))
        .await
        .expect("poll");
    assert_eq!(
        resp.status,
        200,
        "waiting poll at capacity: {}",
        resp.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a waiting poll at capacity answers at once, took {:?}",
        started.elapsed()
    );
    assert_eq!(
        resp.json().expect("json"),
        json!({ "events": [], "cursor": head, "more": false }),
        "no events, cursor = after"
    );

    // The existing streams were unaffected: both get the next events, nothing ended.
    r.wait_subscribers(2, T).await.expect("still two");
    let e1 = r.publish_ok(&body("cap", 1)).await.expect("publish");
    let e2 = r
        .publish_ok(&json!({ "method": "notifications/test/cap", "session": "held" }))
        .await
        .expect("publish to the held session");
    let got_a = a.events(2, T).await.expect("a: both events");
    assert_eq!(
        got_a
            .iter()
            .filter_map(|f| f.id.clone())
            .collect::<Vec<_>>(),
        vec![e1.clone(), e2.clone()],
        "a (still holding its session) gets both"
    );
    let got_b = b.events(1, T).await.expect("b: the broadcast");
    assert_eq!(got_b[0].id.as_deref(), Some(e1.as_str()));
    assert_eq!(
        r.dropped("taken_over").await.expect("metrics"),
        0.0,
        "a shed GET took over no session"
    );

    // A freed slot is usable again.
    drop(b);
    r.wait_subscribers(1, T).await.expect("one left");
    let mut c = open_stream_with(&r, SseRequest::mcp(), "c (after a slot freed)").await;
    r.wait_subscribers(2, T).await.expect("two again");
    let e3 = r.publish_ok(&body("cap", 3)).await.expect("publish");
    let ev = c.next_event(T).await.expect("c: event").expect("open");
    assert_eq!(ev.id.as_deref(), Some(e3.as_str()));
    let ev = a.next_event(T).await.expect("a: event").expect("open");
    assert_eq!(ev.id.as_deref(), Some(e3.as_str()));
}
