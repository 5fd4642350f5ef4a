//! Proxy mode (`FANOUT_UPSTREAM`) forwards end-to-end headers only, both ways: the hop-by-hop
//! ones (`Connection` and every header it names, `Proxy-Connection`, `Keep-Alive`, `TE`,
//! `Trailer`, `Upgrade`, `Proxy-Authorization` / `Proxy-Authenticate`) stop at the replica. The
//! client's identity headers (`Authorization`, `Cookie`) reach the upstream, and so does who the
//! client is: its address appended to `X-Forwarded-For`, a `Forwarded` element for this hop,
//! `X-Forwarded-Proto` / `X-Forwarded-Host` (off with `FANOUT_PROXY_FORWARDED_HEADERS=false`).
//! A request naming `Mcp-Session-Id` twice is refused (`400`) and nothing is forwarded. The
//! upstream is a real server recording what it received and answering with its own hop headers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::h2c::reqwest_h2c;
use mcp_fanout_testkit::{start_memory, Canned, RawRequest, RawResponse, RecordingUpstream};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

/// What the client sends: a `tools/list` with identity headers, hop headers, and a header it
/// names in `Connection`.
fn request() -> RawRequest {
    RawRequest::new("POST", "/mcp")
        .header("Accept", "application/json, text/event-stream")
        .header("Connection", "close, X-Secret-Hop")
        .header("X-Secret-Hop", "client-to-replica-only")
        .header("Proxy-Connection", "keep-alive")
        .header("Keep-Alive", "timeout=300")
        .header("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0")
        .header("TE", "trailers")
        .header("Trailer", "X-Checksum")
        .header("Upgrade", "example/1")
        .header("Authorization", "Bearer upstream-token")
        .header("Cookie", "sid=abc")
        .header("X-Forwarded-For", "203.0.113.7")
        .header("X-End-To-End", "kept")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
}

/// What the upstream answers: a result, with hop headers of its own and one it names in
/// `Connection`.
fn answer() -> Canned {
    Canned::json(&json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}))
        .header("Connection", "close, X-Internal-Debug")
        .header("X-Internal-Debug", "upstream-internals")
        .header("Keep-Alive", "timeout=5")
        .header("Proxy-Connection", "keep-alive")
        .header("Proxy-Authenticate", "Basic realm=\"upstream\"")
        .header("Trailer", "X-Checksum")
        .header("Upgrade", "example/2")
        .header("Set-Cookie", "upstream=1")
        .header("X-Upstream-End-To-End", "kept")
}

const REQUEST_HOP: [&str; 8] = [
    "connection",
    "x-secret-hop",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];
const RESPONSE_HOP: [&str; 6] = [
    "x-internal-debug",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "trailer",
    "upgrade",
];

fn relayed_clean(resp: &RawResponse) {
    assert_eq!(resp.status(), 200, "{}", resp.text());
    assert_eq!(
        resp.json().expect("the result")["result"],
        json!({"tools": []})
    );
    for h in RESPONSE_HOP {
        assert_eq!(
            resp.header(h),
            None,
            "the upstream's hop header {h} reached the client"
        );
    }
    assert_eq!(resp.header("x-upstream-end-to-end"), Some("kept"));
    assert_eq!(resp.header("set-cookie"), Some("upstream=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stop_at_the_proxy_and_the_client_is_named() {
    let up = RecordingUpstream::start(answer()).await.expect("upstream");
    let r = start_memory("proxy-headers", &[("FANOUT_UPSTREAM", &up.url("/mcp"))]).await;
    let addr = r.public_addr();

    let resp = request().send(addr, T).await.expect("the proxied call");
    relayed_clean(&resp);

    let got = up.received();
    assert_eq!(got.len(), 1, "one forwarded request: {got:?}");
    let got = &got[0];
    for h in REQUEST_HOP {
        assert_eq!(
            got.header(h),
            None,
            "the client's hop header {h} reached the upstream: {:?}",
            got.headers
        );
    }
    // End-to-end headers, the client's identity included, are forwarded as sent.
    assert_eq!(got.header("authorization"), Some("Bearer upstream-token"));
    assert_eq!(got.header("cookie"), Some("sid=abc"));
    assert_eq!(got.header("x-end-to-end"), Some("kept"));
    assert_eq!(
        got.header("host"),
        Some(up.url("").trim_start_matches("http://"))
    );
    // Who the client is: appended after what a proxy in front said.
    assert_eq!(
        got.header_all("x-forwarded-for"),
        ["203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(
        got.header("forwarded"),
        Some(format!("for=127.0.0.1;host=\"{addr}\";proto=http").as_str())
    );
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        got.header("x-forwarded-host"),
        Some(addr.to_string().as_str())
    );
    // With no FANOUT_TRUSTED_PROXIES every client's such headers are believed: said at start.
    let warned = r
        .wait_for_log("the unset trusted proxies named", T, |line| {
            line.to_string()
                .contains("FANOUT_TRUSTED_PROXIES is not set")
        })
        .await;
    assert!(warned.is_ok(), "{warned:?}");

    // Off: nothing added, the client's own X-Forwarded-For passes as sent; hop headers still stop.
    let up = RecordingUpstream::start(answer()).await.expect("upstream");
    let r = start_memory(
        "proxy-headers-off",
        &[
            ("FANOUT_UPSTREAM", &up.url("/mcp")),
            ("FANOUT_PROXY_FORWARDED_HEADERS", "false"),
        ],
    )
    .await;
    let resp = request()
        .send(r.public_addr(), T)
        .await
        .expect("the proxied call");
    relayed_clean(&resp);
    let got = up.received();
    assert_eq!(got.len(), 1, "one forwarded request: {got:?}");
    let got = &got[0];
    assert_eq!(got.header_all("x-forwarded-for"), ["203.0.113.7"]);
    for h in ["forwarded", "x-forwarded-proto", "x-forwarded-host"] {
        assert_eq!(got.header(h), None, "{h} added with the setting off");
    }
    for h in REQUEST_HOP {
        assert_eq!(got.header(h), None, "{h} reached the upstream");
    }
}

/// Over HTTP/2 the client names the host in `:authority`, not in `Host`: the upstream is told it
/// all the same (`Forwarded: …;host=`, `X-Forwarded-Host`), as over HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_the_upstream_is_told_the_host_the_client_asked_for() {
    let up = RecordingUpstream::start(answer()).await.expect("upstream");
    let r = start_memory("proxy-headers-h2", &[("FANOUT_UPSTREAM", &up.url("/mcp"))]).await;
    let addr = r.public_addr();
    let h2 = reqwest_h2c(T).expect("h2 client");
    let resp = h2
        .post(format!("http://{addr}/mcp"))
        .header("Accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .expect("the proxied call over HTTP/2");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let got = up.received();
    assert_eq!(got.len(), 1, "one forwarded request: {got:?}");
    let got = &got[0];
    assert_eq!(
        got.header("forwarded"),
        Some(format!("for=127.0.0.1;host=\"{addr}\";proto=http").as_str()),
        "{:?}",
        got.headers
    );
    assert_eq!(
        got.header("x-forwarded-host"),
        Some(addr.to_string().as_str())
    );
    // The upstream's own Host, as over HTTP/1.1.
    assert_eq!(
        got.header("host"),
        Some(up.url("").trim_start_matches("http://"))
    );
}

/// The upstream is reached directly: proxy variables in the replica's environment (set for a
/// pod's egress) do not route the calls, and the credentials in them, through that proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_is_reached_directly_whatever_the_proxy_environment() {
    let egress = RecordingUpstream::start(answer())
        .await
        .expect("the environment's proxy");
    let up = RecordingUpstream::start(answer()).await.expect("upstream");
    let (via, upstream) = (egress.url(""), up.url("/mcp"));
    let env: Vec<(&str, &str)> = vec![
        ("FANOUT_UPSTREAM", &upstream),
        ("HTTP_PROXY", &via),
        ("http_proxy", &via),
        ("ALL_PROXY", &via),
        ("all_proxy", &via),
    ];
    let r = start_memory("proxy-no-env-proxy", &env).await;

    let resp = request()
        .send(r.public_addr(), T)
        .await
        .expect("the proxied call");
    assert_eq!(resp.status(), 200, "{}", resp.text());
    assert_eq!(up.received().len(), 1, "the upstream got the call");
    assert!(
        egress.received().is_empty(),
        "the call went through the environment's proxy: {:?}",
        egress.received()
    );
}

/// An upstream's redirect is the client's to follow: the proxy relays it as it is and never sends
/// the request again itself (a re-sent POST could repeat a `tools/call`, and would carry the
/// client's credentials wherever `Location` points).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_redirect_is_relayed_not_followed() {
    let elsewhere = RecordingUpstream::start(answer())
        .await
        .expect("the redirect's target");
    let redirect = Canned {
        status: 307,
        reason: "Temporary Redirect".into(),
        headers: vec![("Location".into(), elsewhere.url("/mcp"))],
        body: Vec::new(),
    };
    let up = RecordingUpstream::start(redirect).await.expect("upstream");
    let r = start_memory("proxy-redirect", &[("FANOUT_UPSTREAM", &up.url("/mcp"))]).await;

    let resp = request()
        .send(r.public_addr(), T)
        .await
        .expect("the proxied call");
    assert_eq!(resp.status(), 307, "{}", resp.text());
    assert_eq!(
        resp.header("location"),
        Some(elsewhere.url("/mcp").as_str())
    );
    assert_eq!(up.received().len(), 1, "forwarded once");
    assert!(
        elsewhere.received().is_empty(),
        "the proxy followed the redirect: {:?}",
        elsewhere.received()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_its_session_twice_is_refused_and_not_forwarded() {
    let up = RecordingUpstream::start(answer()).await.expect("upstream");
    let upstream = up.url("/mcp");
    let r = start_memory(
        "proxy-two-sessions",
        &[("FANOUT_UPSTREAM", upstream.as_str())],
    )
    .await;
    let resp = RawRequest::new("POST", "/mcp")
        .header("Accept", "application/json, text/event-stream")
        .header("Mcp-Session-Id", "session-one")
        .header("Mcp-Session-Id", "session-two")
        .json(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"}))
        .send(r.public_addr(), T)
        .await
        .expect("answered");
    assert_eq!(resp.status(), 400, "{}", resp.text());
    let body = resp.json().expect("a JSON-RPC error");
    assert_eq!(body["id"], 5, "{body}");
    assert!(up.received().is_empty(), "nothing forwarded");
    assert_eq!(
        r.metric("mcp_fanout_http_errors_total{code=\"invalid_session_id\"}")
            .await
            .expect("metrics"),
        Some(1.0)
    );
}
