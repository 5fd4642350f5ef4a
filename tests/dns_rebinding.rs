//! docs/identity.md "DNS rebinding", `FANOUT_ALLOWED_HOSTS`: a page whose name an attacker points
//! at a replica's address reaches it with its own name in `Host` (and, for a same-origin `GET`, no
//! `Origin` at all), so with `FANOUT_ALLOWED_HOSTS` set the public endpoints answer only the names
//! listed (any port, or `name:port`) and IP addresses (no name can be rebound to one); `*` or
//! nothing set answers any, and a loopback-bound replica without the setting says so at start. A
//! refused request gets `403 forbidden` (JSON), counted; the admin listener keeps its own rules
//! (probes answer whatever `Host` they name).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::{start_memory, RawRequest, Replica};

const T: Duration = Duration::from_secs(10);

/// `GET path` on the public listener with this `Host`; the status and the error code (if any).
/// An event stream's body is not read.
async fn get_as(r: &Replica, path: &str, host: &str) -> (u16, Option<String>) {
    let resp = reqwest::Client::builder()
        .no_proxy()
        .timeout(T)
        .build()
        .expect("client")
        .get(r.public_url(path))
        .header("Host", host)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} as {host}: {e}"));
    let status = resp.status().as_u16();
    if status == 200 {
        return (status, None);
    }
    let body: serde_json::Value = resp.json().await.expect("a JSON error");
    (status, body["error"]["code"].as_str().map(String::from))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_endpoints_answer_only_the_host_names_they_are_meant_to() {
    // Listed names (any port, or a name with its port), and IP addresses.
    let r = start_memory(
        "hosts-listed",
        &[("FANOUT_ALLOWED_HOSTS", "fanout.example, API.example:8443")],
    )
    .await;
    let port = r.public_addr().port();
    for path in ["/poll?timeout=0", "/mcp"] {
        for host in [
            "fanout.example".to_string(),
            format!("fanout.example:{port}"),
            "api.example:8443".to_string(),
            format!("127.0.0.1:{port}"),
            format!("127.0.0.2:{port}"),
            "[::1]".to_string(),
        ] {
            assert_eq!(get_as(&r, path, &host).await.0, 200, "{path} as {host}");
        }
        for host in [
            format!("rebind.evil.example:{port}"),
            "api.example:443".to_string(),
            format!("localhost:{port}"),
        ] {
            let (status, code) = get_as(&r, path, &host).await;
            assert_eq!(
                (status, code.as_deref()),
                (403, Some("forbidden")),
                "{path} as {host}"
            );
        }
    }
    assert!(
        r.metric("mcp_fanout_http_errors_total{code=\"forbidden\"}")
            .await
            .expect("metrics")
            .unwrap_or(0.0)
            >= 6.0,
        "counted"
    );
    // The admin listener is not the public endpoints: a probe's Host is whatever it names.
    let probe = RawRequest::new("GET", "/healthz")
        .header("Host", "fanout-admin.example:9090")
        .send(r.admin_addr(), T)
        .await
        .expect("healthz");
    assert_eq!(probe.status(), 200);

    // `*`, or nothing set: any name; a loopback-bound replica says what that exposes.
    let r = start_memory("hosts-any", &[("FANOUT_ALLOWED_HOSTS", "*")]).await;
    assert_eq!(
        get_as(&r, "/poll?timeout=0", "rebind.evil.example").await.0,
        200
    );
    let r = start_memory("hosts-unset", &[]).await;
    assert_eq!(
        get_as(&r, "/poll?timeout=0", "rebind.evil.example").await.0,
        200
    );
    r.wait_for_log("the warning", T, |v| {
        v.pointer("/fields/message")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|m| m.contains("FANOUT_ALLOWED_HOSTS is not set"))
    })
    .await
    .expect("a loopback-bound replica without the setting warns");
}
