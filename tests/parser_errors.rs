//! Requests the HTTP/1.1 parser refuses before any handler runs — a control byte in a header
//! value, a garbage or HTTP/0.9 request line, an unknown version, an invalid or conflicting
//! `Content-Length`, a `Transfer-Encoding` other than `chunked` last — get `400
//! bad_request_syntax` in the one JSON error shape with `connection: close`, like every other
//! error, counted in `mcp_fanout_http_errors_total` by that code; a pipelined bad request after a
//! good one too. A request with both `Transfer-Encoding`
//! and `Content-Length` is framed by `Transfer-Encoding` alone and its connection closes, so
//! nothing after its body is read as another request. The service keeps serving throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::cases::{case, run_cases, still_serves, Case};
use mcp_fanout_testkit::error_shape::check_raw_error;
use mcp_fanout_testkit::h2c::reqwest_h2c;
use mcp_fanout_testkit::{
    raw_pipeline, start_memory, Canned, RawRequest, RecordingUpstream, ADMIN_TOKEN,
};

const T: Duration = Duration::from_secs(10);
const SYNTAX: &str = "bad_request_syntax";

fn healthz() -> RawRequest {
    RawRequest::new("GET", "/healthz")
}

fn publish() -> RawRequest {
    RawRequest::new("POST", "/admin/publish")
        .header("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .header("Content-Type", "application/json")
}

const EVENT: &str = r#"{"method":"notifications/tools/list_changed"}"#;

fn syntax(name: &str, req: RawRequest) -> Case {
    case(name, req, 400, SYNTAX).with_header("connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_parser_refuses_get_the_json_error_shape() {
    let r = start_memory("parser-errors", &[]).await;
    let addr = r.public_addr();
    let cases = vec![
        syntax(
            "a control byte in a header value",
            healthz().header_bytes("X-Note", b"a\x01b"),
        ),
        syntax(
            "DEL in a header value",
            healthz().header_bytes("X-Note", b"a\x7fb"),
        ),
        syntax(
            "a NUL in a header value on a publish",
            publish().header_bytes("X-Note", b"\x00").body(EVENT),
        ),
        syntax(
            "a space before a header's colon",
            healthz().header("X-Note ", "x"),
        ),
        syntax(
            "a header line without a colon",
            RawRequest::verbatim("GET", "GET /healthz HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n"),
        ),
        syntax(
            "an obsolete folded header line",
            healthz().header("X-Note", "a\r\n folded"),
        ),
        syntax(
            "a garbage request line",
            RawRequest::verbatim("GET", "GARBAGE\r\n\r\n"),
        ),
        syntax(
            "an HTTP/0.9 request",
            RawRequest::verbatim("GET", "GET /healthz\r\n\r\n"),
        ),
        syntax(
            "HTTP/2.0 in an HTTP/1 request line",
            RawRequest::verbatim("GET", "GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n"),
        ),
        syntax(
            "a control byte in the request target",
            RawRequest::verbatim("GET", "GET /heal\x01thz HTTP/1.1\r\nHost: x\r\n\r\n"),
        ),
        syntax(
            "Content-Length: -1",
            publish().header("Content-Length", "-1").body(EVENT),
        ),
        syntax(
            "Content-Length: +45",
            publish().header("Content-Length", "+45").body(EVENT),
        ),
        syntax(
            "a Content-Length that is not a number",
            publish().header("Content-Length", "4five").body(EVENT),
        ),
        syntax(
            "a Content-Length over u64",
            publish()
                .header("Content-Length", "99999999999999999999999")
                .body(EVENT),
        ),
        syntax(
            "two different Content-Lengths",
            publish()
                .header("Content-Length", &EVENT.len().to_string())
                .header("Content-Length", "3")
                .body(EVENT),
        ),
        syntax(
            "Transfer-Encoding: chunked, identity",
            publish()
                .header("Transfer-Encoding", "chunked, identity")
                .body(chunked(EVENT)),
        ),
        syntax(
            "Transfer-Encoding: xchunked",
            publish()
                .header("Transfer-Encoding", "xchunked")
                .body(chunked(EVENT)),
        ),
        syntax(
            "Transfer-Encoding: identity",
            publish()
                .header("Transfer-Encoding", "identity")
                .header("Content-Length", &EVENT.len().to_string())
                .body(EVENT),
        ),
        syntax(
            "Transfer-Encoding on HTTP/1.0",
            RawRequest::verbatim(
                "POST",
                format!(
                    "POST /admin/publish HTTP/1.0\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
                     Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{}",
                    chunked(EVENT)
                ),
            ),
        ),
    ];
    let refusals = cases.len();
    run_cases("parser error", addr, cases, T).await;

    // A bad request pipelined after a good one on a kept-alive connection: the good one is
    // answered as usual, the bad one with the JSON error.
    let good_then_bad = format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\nGET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Note: \x01\r\n\r\n"
    );
    let answers = raw_pipeline(addr, good_then_bad.as_bytes(), &["GET", "GET"], T)
        .await
        .expect("two answers");
    assert_eq!(answers[0].status(), 200, "{}", answers[0].text());
    if let Err(e) = check_raw_error(&answers[1], 400, SYNTAX) {
        panic!("the pipelined bad request: {e}");
    }
    // Each refusal is an error answer like any other: counted by its code (before it is
    // written, so it is there once the client has it).
    let counted = r
        .metric(&format!(
            r#"mcp_fanout_http_errors_total{{code="{SYNTAX}"}}"#
        ))
        .await
        .expect("the metrics");
    assert_eq!(
        counted,
        Some((refusals + 1) as f64),
        "every request the parser refused is counted in http_errors"
    );

    // Transfer-Encoding and Content-Length together: the body is framed by Transfer-Encoding
    // (the JSON body `[]` is read whole and refused for what it says), the connection closes,
    // and what the Content-Length framing would have made a second request is never answered.
    let smuggled = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let both = format!(
        "POST /admin/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n{}{smuggled}",
        chunked("[]")
    );
    let answers = raw_pipeline(addr, both.as_bytes(), &["POST"], T)
        .await
        .expect("an answer");
    if let Err(e) = check_raw_error(&answers[0], 400, "empty_batch") {
        panic!("Transfer-Encoding with Content-Length: {e}");
    }
    assert_eq!(
        answers[0].header("connection"),
        Some("close"),
        "the connection closes after a request framed two ways"
    );
    assert!(
        raw_pipeline(addr, both.as_bytes(), &["POST", "GET"], T)
            .await
            .is_err(),
        "nothing after the chunked body is answered as another request"
    );

    still_serves(&r, &[]).await;
}

/// `body` as one chunk and the last chunk.
fn chunked(body: &str) -> String {
    format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
}

/// The socket replaces only hyper's own answers: a bare `400` the upstream gave, relayed in proxy
/// mode in exactly the shape hyper writes (`content-length: 0` and a date), reaches the client as
/// the upstream gave it, on a connection that stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_400_relayed_from_the_upstream_is_not_taken_for_a_parse_error() {
    let up = RecordingUpstream::start(Canned {
        status: 400,
        reason: "Bad Request".into(),
        headers: vec![],
        body: vec![],
    })
    .await
    .expect("upstream");
    let r = start_memory(
        "parser-errors-relay",
        &[("FANOUT_UPSTREAM", &up.url("/mcp"))],
    )
    .await;
    let addr = r.public_addr();
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let two_calls = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {len}\r\n\r\n{call}\
         POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{call}",
        len = call.len()
    );
    let answers = raw_pipeline(addr, two_calls.as_bytes(), &["POST", "POST"], T)
        .await
        .expect("two answers on one connection");
    for a in &answers {
        assert_eq!(a.status(), 400);
        assert_eq!(
            a.header("content-type"),
            None,
            "the upstream's answer, as given"
        );
        assert!(a.body.is_empty(), "{}", a.text());
    }
    assert_eq!(up.received().len(), 2);
}

/// HTTP/2 has no parser answer to replace: the h2 layer resets a malformed request's stream
/// (`PROTOCOL_ERROR`), so there is no response to carry the JSON error; the connection keeps
/// serving its other requests (one client, one connection: the stream ids go on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_a_malformed_request_is_reset_and_the_connection_keeps_serving() {
    let r = start_memory("parser-errors-h2", &[]).await;
    let h2 = reqwest_h2c(T).expect("h2 client");
    let url = r.admin_url("/admin/publish");
    let bad = [
        ("Content-Length: -1", vec!["-1"]),
        ("two different Content-Lengths", vec!["45", "3"]),
    ];
    for (what, lengths) in bad {
        let mut req = h2
            .post(&url)
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(EVENT);
        for l in lengths {
            req = req.header("content-length", l);
        }
        match req.send().await {
            Err(e) => {
                let chain = format!("{e:?}");
                // The server's reset, not the client refusing to send it.
                assert!(chain.contains("PROTOCOL_ERROR, Remote"), "{what}: {chain}");
            }
            Ok(resp) => panic!("{what}: answered {} instead of a reset", resp.status()),
        }
        let ok = h2
            .get(r.admin_url("/healthz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
        assert_eq!(ok.status(), 200, "after {what}");
        assert_eq!(ok.version(), reqwest::Version::HTTP_2);
    }
}
