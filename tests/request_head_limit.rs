//! Contract §4.1: a request head over the 64 KiB bound is refused with `431` in the
//! one JSON error shape (hyper's own answer is bare), and the service keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::path::Path;
use std::time::Duration;

use mcp_fanout_testkit::{error_code, RawRequest, Replica};

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_gets_a_json_431_and_the_service_keeps_serving() {
    let r = Replica::start(
        Path::new(env!("CARGO_BIN_EXE_mcp-fanout")),
        "head-limit",
        &[],
    )
    .await
    .expect("replica starts");
    let addr = r.public_addr();
    let huge = "h".repeat(70 * 1024);
    for (what, req) in [
        (
            "GET /mcp",
            RawRequest::new("GET", "/mcp").header("Accept", "text/event-stream"),
        ),
        ("GET /poll", RawRequest::new("GET", "/poll")),
        ("GET /healthz", RawRequest::new("GET", "/healthz")),
    ] {
        let resp = req
            .header("X-Padding", &huge)
            .send(addr, T)
            .await
            .unwrap_or_else(|e| panic!("a 70 KiB header on {what}: {e}"));
        assert_eq!(resp.status(), 431, "{what}: {}", resp.text());
        assert_eq!(
            resp.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        let body = resp
            .json()
            .unwrap_or_else(|e| panic!("{what}: a JSON body: {e}: {}", resp.text()));
        assert_eq!(
            error_code(&body),
            Some("request_header_fields_too_large"),
            "{what}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );

        // The service keeps serving: the next request (on a new connection) is answered.
        let ok = RawRequest::new("GET", "/healthz")
            .send(addr, T)
            .await
            .unwrap_or_else(|e| panic!("a request after the 431 on {what}: {e}"));
        assert_eq!(ok.status(), 200, "after the 431 on {what}: {}", ok.text());
    }

    // A head just under the bound is not refused for its size.
    let resp = RawRequest::new("GET", "/healthz")
        .header("X-Padding", &"h".repeat(60 * 1024))
        .send(addr, T)
        .await
        .expect("a 60 KiB header");
    assert_eq!(resp.status(), 200, "{}", resp.text());
}
