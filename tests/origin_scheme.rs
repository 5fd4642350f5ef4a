//! Same-origin means the same scheme, host and port: `Origin: https://127.0.0.1:P` on a plain-HTTP
//! request to `127.0.0.1:P` is another origin and gets `403 forbidden` (preflight included),
//! unless a TLS-terminating proxy in front says `X-Forwarded-Proto: https`; a port that differs,
//! or is the scheme's default where the request names another, is another origin too. The
//! console's page and assets carry `Cross-Origin-Resource-Policy: same-origin`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::cases::{case, run_cases, run_ok, Case};
use mcp_fanout_testkit::{start_memory, RawRequest};

const T: Duration = Duration::from_secs(10);

fn with_origin(path: &str, origin: &str) -> RawRequest {
    RawRequest::new("GET", path).header("Origin", origin)
}

fn forbidden(name: &str, req: RawRequest) -> Case {
    case(name, req, 403, "forbidden")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_origin_compares_scheme_host_and_port() {
    let r = start_memory("origin-scheme", &[]).await;
    let addr = r.public_addr();
    let port = addr.port();
    let http = format!("http://127.0.0.1:{port}");
    let https = format!("https://127.0.0.1:{port}");

    let mut refused = Vec::new();
    for path in ["/healthz", "/poll?timeout=0"] {
        refused.push(forbidden(
            &format!("{path}: https origin on an http request"),
            with_origin(path, &https),
        ));
        refused.push(forbidden(
            &format!("{path}: another port"),
            with_origin(path, &format!("http://127.0.0.1:{}", port.wrapping_add(1))),
        ));
        refused.push(forbidden(
            &format!("{path}: the scheme's default port"),
            with_origin(path, "http://127.0.0.1"),
        ));
        refused.push(forbidden(
            &format!("{path}: http origin behind a proxy that terminated https"),
            with_origin(path, &http).header("X-Forwarded-Proto", "https"),
        ));
    }
    refused.push(forbidden(
        "a preflight from the https origin",
        RawRequest::new("OPTIONS", "/mcp")
            .header("Origin", &https)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "x-forwarded-proto"),
    ));
    run_cases("cross-origin", addr, refused, T).await;

    let mut allowed = Vec::new();
    for path in ["/healthz", "/poll?timeout=0"] {
        allowed.push((
            format!("{path}: the same scheme, host and port"),
            with_origin(path, &http),
        ));
        allowed.push((
            format!("{path}: https origin behind a proxy that terminated https"),
            with_origin(path, &https).header("X-Forwarded-Proto", "https"),
        ));
        allowed.push((
            format!("{path}: the default port written out"),
            with_origin(path, "http://svc.example:80").header("Host", "svc.example"),
        ));
    }
    run_ok(addr, allowed, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_answers_are_same_origin_resources() {
    let r = start_memory("console-corp", &[]).await;
    for path in [
        "/admin/console",
        "/admin/console/console.js",
        "/admin/console/console.css",
    ] {
        let resp = RawRequest::new("GET", path)
            .send(r.public_addr(), T)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(resp.status(), 200, "GET {path}: {}", resp.text());
        assert_eq!(
            resp.header("cross-origin-resource-policy"),
            Some("same-origin"),
            "GET {path}"
        );
    }
}
