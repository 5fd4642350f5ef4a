//! Proxy mode in front of an `https://` upstream whose certificate comes from a private CA
//! (docs/configuration.md `FANOUT_UPSTREAM_CA_FILE`; docs/proxy.md "An HTTPS upstream").
//!
//! The upstream is the Python SDK 1.x FastMCP server (stateless with JSON answers; and stateful
//! with SSE answers, whose streamed bodies the proxy relays frame by frame) behind a real nginx
//! that terminates TLS with a certificate for `localhost` issued by a CA made here with the
//! `openssl` CLI, and logs the protocol each request arrived in. Replicas in memory mode proxy to
//! `https://localhost:PORT/mcp` with `FANOUT_MINT_SESSION_IDS=true` and
//! `FANOUT_BRIDGE_2026_CLIENTS=true`.
//!
//! - With the CA file and `FANOUT_UPSTREAM_HTTP2=true`, in front of nginx offering HTTP/2 and
//!   HTTP/1.1 by ALPN, and in front of nginx offering HTTP/1.1 only (the stateful SSE upstream:
//!   behind nginx offering HTTP/2); and with the default (`false`) in front of nginx offering
//!   HTTP/2: the official Python SDK 1.x client initializes through the replica, gets the upstream
//!   tool's `42`, opens its GET stream and receives the one published
//!   `notifications/tools/list_changed` exactly once; the Python SDK 2.3 client does the same at
//!   2026-07-28 through the era adapter (whose own client opens the upstream session over TLS).
//!   The forwarded requests reach nginx as `HTTP/2.0` when it offers it and the setting is on,
//!   and as `HTTP/1.1` otherwise.
//! - By default a quick call is not held behind a long one: with nginx allowing one HTTP/2 stream
//!   per connection, a `tools/call` answered while a gated call is in flight upstream (its log
//!   message relayed, its result held until released); both reached nginx over HTTP/1.1. (With
//!   `FANOUT_UPSTREAM_HTTP2=true` the quick call waits for the stream: the documented limit.)
//! - Without the CA file the certificate is not trusted (the Mozilla roots only): a forwarded
//!   request is answered with the JSON-RPC error `502` "unreachable", carrying the request's id;
//!   no request reaches nginx's upstream; the replica keeps serving.
//! - A CA file that cannot be read, or holds no certificate, stops the start with an error naming
//!   `FANOUT_UPSTREAM_CA_FILE` and the file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

mod e2e;

use std::path::Path;
use std::time::Duration;

use e2e::{
    call_text, is_kind, is_notification, py1_client_with, py2_client, tool_call, wire_event_ids,
    Gated, Upstream,
};
use mcp_fanout_testkit::nginx::Nginx;
use mcp_fanout_testkit::openssl::ca_and_server_cert;
use mcp_fanout_testkit::wait::wait_until;
use mcp_fanout_testkit::{start_fails, start_memory, Replica};
use serde_json::{json, Value};

/// Upper bound for one step (a client starting, a notification arriving).
const STEP: Duration = Duration::from_secs(60);
const TOOLS: &str = "notifications/tools/list_changed";

/// nginx terminating TLS in front of `upstream_port`, HTTP/2 offered by ALPN or not, logging
/// `PROTOCOL METHOD STATUS` per request to `log`.
async fn tls_front(certs: &Path, upstream_port: u16, http2: bool, log: &Path) -> Nginx {
    tls_front_with(certs, upstream_port, http2, log, "").await
}

/// [`tls_front`] with `extra` directives in its `server` block.
async fn tls_front_with(
    certs: &Path,
    upstream_port: u16,
    http2: bool,
    log: &Path,
    extra: &str,
) -> Nginx {
    let (crt, key, log) = (
        certs.join("server.crt"),
        certs.join("server.key"),
        log.to_path_buf(),
    );
    let h2 = if http2 { " http2" } else { "" };
    Nginx::start(move |listen| {
        format!(
            "log_format proto '$server_protocol $request_method $status';\n\
             server {{\n listen {listen} ssl{h2};\n\
             ssl_certificate {crt};\n ssl_certificate_key {key};\n\
             access_log {log} proto;\n {extra}\n\
             location / {{\n proxy_pass http://127.0.0.1:{upstream_port};\n\
             proxy_http_version 1.1;\n proxy_set_header Connection \"\";\n\
             proxy_set_header Host 127.0.0.1:{upstream_port};\n proxy_buffering off;\n }}\n }}\n",
            crt = crt.display(),
            key = key.display(),
            log = log.display(),
        )
    })
    .await
}

fn port_of(url: &str) -> u16 {
    let rest = url.split("://").nth(1).expect("a URL");
    let authority = rest.split('/').next().expect("an authority");
    authority
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

/// The lines of nginx's access log (empty until it writes one).
fn access_log(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A proxy replica in front of `upstream` (an https URL), trusting `ca` when given, offering it
/// HTTP/2 when `http2` (`FANOUT_UPSTREAM_HTTP2`).
async fn proxy(label: &str, upstream: &str, ca: Option<&Path>, http2: bool) -> Replica {
    let ca = ca.map(|p| p.display().to_string());
    let mut env = vec![
        ("FANOUT_UPSTREAM", upstream),
        ("FANOUT_MINT_SESSION_IDS", "true"),
        ("FANOUT_BRIDGE_2026_CLIENTS", "true"),
        (
            "FANOUT_UPSTREAM_HTTP2",
            if http2 { "true" } else { "false" },
        ),
    ];
    if let Some(ca) = &ca {
        env.push(("FANOUT_UPSTREAM_CA_FILE", ca));
    }
    start_memory(label, &env).await
}

/// Both official clients through `replica`: the 1.x one gets `42` and its GET stream, the 2.3
/// one gets `42` at 2026-07-28 and listens. Then one list_changed is published; each gets it
/// exactly once (the 1.x one with its id).
async fn clients_work_through(label: &str, replica: &Replica) {
    let url = replica.public_url("/mcp");
    let py1 = py1_client_with(&format!("{label}/py1"), &url, &["--call"]);
    let py2 = py2_client(&format!("{label}/py2"), &url, &["--call"]);
    let (_, called) = py1.wait_kind("called", 0, STEP).await;
    assert_eq!(
        call_text(&called.value["result"]),
        Some("42"),
        "{label}: tools/call add(2, 40) through the proxy\n{}",
        py1.transcript()
    );
    py1.wait_line("its GET stream's priming frame", 0, STEP, |v| {
        is_kind(v, "sse") && v["id"].is_string()
    })
    .await;
    let (_, connected) = py2.wait_kind("connected", 0, STEP).await;
    assert_eq!(connected.value["protocol"], "2026-07-28", "{label}");
    let (_, called) = py2.wait_kind("called", 0, STEP).await;
    assert_eq!(
        call_text(&called.value["result"]),
        Some("42"),
        "{label}: tools/call at 2026-07-28 through the era adapter\n{}",
        py2.transcript()
    );
    py2.wait_kind("ready", 0, STEP).await;

    let id = replica
        .publish_ok(&json!({ "method": TOOLS }))
        .await
        .expect("publish");
    for p in [&py1, &py2] {
        p.wait_line("the published list_changed", 0, STEP, |v| {
            is_notification(v, TOOLS)
        })
        .await;
    }
    assert_eq!(
        wire_event_ids(&py1.lines()),
        [id],
        "{label}: py1's event ids"
    );
    // Exactly once, also after the 2.3 client's refetch had time to run.
    py2.wait_kind("refetched", 0, STEP).await;
    for p in [&py1, &py2] {
        assert_eq!(
            p.count(|v| is_notification(v, TOOLS)),
            1,
            "{label} {}: the list_changed once\n{}",
            p.label(),
            p.transcript()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_private_ca_upstream_is_reached_over_http2_or_http1_as_it_offers() {
    e2e::ensure_setup();
    let certs = mcp_fanout_testkit::tempfile::tempdir().expect("temp dir");
    ca_and_server_cert(certs.path());
    let ca = certs.path().join("ca.pem");
    let (upstream, stateful) = tokio::join!(
        Upstream::py1("tls-upstream", &["--stateless", "--json-response"]),
        Upstream::py1("tls-upstream-sse", &[]),
    );
    let dir = certs.path();
    let log = |name: &str| dir.join(format!("{name}.log"));
    let (h2_log, h1_log, sse_log, default_log) = (log("h2"), log("h1"), log("sse"), log("default"));
    let (h2_front, h1_front, sse_front, default_front) = tokio::join!(
        tls_front(dir, port_of(&upstream.url), true, &h2_log),
        tls_front(dir, port_of(&upstream.url), false, &h1_log),
        tls_front(dir, port_of(&stateful.url), true, &sse_log),
        tls_front(dir, port_of(&upstream.url), true, &default_log),
    );
    let https = |n: &Nginx| format!("https://localhost:{}/mcp", n.addr.port());
    let urls = [
        https(&h2_front),
        https(&h1_front),
        https(&sse_front),
        https(&default_front),
    ];
    let (h2_replica, h1_replica, sse_replica, default_replica) = tokio::join!(
        proxy("tls-h2", &urls[0], Some(&ca), true),
        proxy("tls-h1", &urls[1], Some(&ca), true),
        proxy("tls-h2-sse", &urls[2], Some(&ca), true),
        proxy("tls-default", &urls[3], Some(&ca), false),
    );
    tokio::join!(
        clients_work_through("h2 offered and enabled", &h2_replica),
        clients_work_through("enabled, http/1.1 only offered", &h1_replica),
        clients_work_through(
            "h2 offered and enabled, stateful, SSE answers",
            &sse_replica
        ),
        clients_work_through("h2 offered, not enabled (the default)", &default_replica),
    );

    for (log, want) in [
        (&h2_log, "HTTP/2.0"),
        (&h1_log, "HTTP/1.1"),
        (&sse_log, "HTTP/2.0"),
        (&default_log, "HTTP/1.1"),
    ] {
        let lines = access_log(log);
        let posts: Vec<&String> = lines.iter().filter(|l| l.contains(" POST ")).collect();
        assert!(
            !posts.is_empty(),
            "the forwarded requests reach nginx: {lines:?}"
        );
        assert!(
            posts.iter().all(|l| l.starts_with(want)),
            "every forwarded request arrives as {want}: {lines:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_quick_call_is_not_held_behind_a_long_one() {
    e2e::ensure_setup();
    let certs = mcp_fanout_testkit::tempfile::tempdir().expect("temp dir");
    ca_and_server_cert(certs.path());
    // Stateless with SSE answers: the gated call's log message streams before its result.
    let upstream = Upstream::py1("gated-upstream", &["--stateless"]).await;
    let log = certs.path().join("access.log");
    // One stream at a time on an HTTP/2 connection: a multiplexing client would queue behind it.
    let front = tls_front_with(
        certs.path(),
        port_of(&upstream.url),
        true,
        &log,
        "http2_max_concurrent_streams 1;",
    )
    .await;
    let url = format!("https://localhost:{}/mcp", front.addr.port());
    let ca = certs.path().join("ca.pem");
    let r = start_memory(
        "tls-gated",
        &[
            ("FANOUT_UPSTREAM", url.as_str()),
            ("FANOUT_UPSTREAM_CA_FILE", ca.to_str().expect("utf-8 path")),
            // Far beyond STEP: a held request is not freed by the timeout within the test.
            ("FANOUT_UPSTREAM_TIMEOUT_SECS", "600"),
        ],
    )
    .await;
    let endpoint = r.public_url("/mcp");

    let client = reqwest::Client::new();

    let long = Gated::start(&client, &endpoint, 1, "long").await;
    // A quick call while the long one holds its upstream request: answered, not queued.
    let quick = tokio::time::timeout(STEP, async {
        let resp = tool_call(&client, &endpoint, 2, "add", json!({"a": 2, "b": 40}))
            .send()
            .await
            .expect("the quick call");
        (resp.status(), resp.text().await.expect("its body"))
    })
    .await
    .expect("the quick call is answered while the long one is in flight");
    assert_eq!(quick.0, 200, "{}", quick.1);
    assert!(quick.1.contains("42"), "{}", quick.1);

    upstream.release("long").await;
    let long = long.finish().await;
    assert!(long.contains("released long"), "{long}");
    // nginx writes a request's line after the response has left, so the long call's may come
    // a moment after its client has read the end.
    wait_until("both calls in nginx's access log", STEP, || async {
        access_log(&log).len() >= 2
    })
    .await
    .expect("both calls logged");
    let lines = access_log(&log);
    assert!(
        lines.len() == 2 && lines.iter().all(|l| l.starts_with("HTTP/1.1 POST 200")),
        "both calls went upstream over HTTP/1.1: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_the_upstream_is_not_trusted_and_the_replica_keeps_serving() {
    e2e::ensure_setup();
    let certs = mcp_fanout_testkit::tempfile::tempdir().expect("temp dir");
    ca_and_server_cert(certs.path());
    let upstream = Upstream::py1("untrusted-upstream", &["--stateless", "--json-response"]).await;
    let log = certs.path().join("access.log");
    let front = tls_front(certs.path(), port_of(&upstream.url), true, &log).await;
    let r = proxy(
        "tls-untrusted",
        &format!("https://localhost:{}/mcp", front.addr.port()),
        None,
        true,
    )
    .await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let resp = client
            .post(r.public_url("/mcp"))
            .header("Accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}))
            .send()
            .await
            .expect("the replica answers");
        assert_eq!(resp.status(), 502);
        let body: Value = resp.json().await.expect("a JSON-RPC error");
        assert_eq!(body["id"], 7);
        assert_eq!(
            body["error"]["message"],
            "the upstream MCP server is unreachable"
        );
    }
    assert_eq!(
        r.metric("mcp_fanout_http_errors_total{code=\"upstream_unreachable\"}")
            .await
            .expect("metrics"),
        Some(2.0),
        "counted as upstream_unreachable"
    );
    assert!(
        access_log(&log).is_empty(),
        "no request reached the upstream over an untrusted connection: {:?}",
        access_log(&log)
    );
    let health = client
        .get(r.admin_url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn an_unusable_ca_file_stops_the_start_naming_it() {
    let dir = mcp_fanout_testkit::tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").expect("write");
    let missing = dir.path().join("missing.pem");
    for (file, why) in [
        (&empty, "holds no PEM certificate"),
        (&missing, "cannot read"),
    ] {
        let env = [
            (
                "FANOUT_UPSTREAM".to_string(),
                "https://localhost:1/mcp".to_string(),
            ),
            (
                "FANOUT_UPSTREAM_CA_FILE".to_string(),
                file.to_string_lossy().into_owned(),
            ),
        ];
        let text = start_fails(&env, STEP).await;
        assert!(
            text.contains("FANOUT_UPSTREAM_CA_FILE") && text.contains(&*file.to_string_lossy()),
            "{file:?}: the error names the setting and the file: {text}"
        );
        assert!(text.contains(why), "{file:?}: says why ({why}): {text}");
    }
}
