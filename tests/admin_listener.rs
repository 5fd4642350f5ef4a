//! `FANOUT_ADMIN_ADDR` (contract §2, §4.1, §5): admin, metrics and probes move to their own listener, the
//! public one no longer serves them, and tokens can come from `FANOUT_ADMIN_TOKEN_FILE`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::io::Write;

use mcp_fanout_testkit::{error_code, note, start, tempfile, RawRequest, SseRequest, Token, SOON};
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_ops_live_on_the_admin_listener_with_tokens_from_a_file() {
    let mut file = tempfile::NamedTempFile::new().expect("token file");
    writeln!(file, "file-token-1\nfile-token-2").expect("write token file");
    let path = file.path().to_str().expect("utf-8 path").to_string();
    let r = start(
        "admin-listener",
        &[
            ("FANOUT_ADMIN_ADDR", "127.0.0.1:0"),
            ("FANOUT_ADMIN_TOKEN_FILE", path.as_str()),
        ],
    )
    .await;
    assert_ne!(r.admin_addr(), r.public_addr(), "two listeners");

    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = r.admin_get(path).await.expect("ops request");
        assert_eq!(resp.status, 200, "{path} on the admin listener");
    }
    for (name, req) in [
        (
            "publish on the public listener",
            RawRequest::new("POST", "/admin/publish")
                .header("Authorization", "Bearer file-token-1")
                .header("Content-Type", "application/json")
                .body(note("notifications/test/x", "admin", 0).to_string()),
        ),
        (
            "metrics on the public listener",
            RawRequest::new("GET", "/metrics"),
        ),
    ] {
        let resp = req.send(r.public_addr(), SOON).await.expect(name);
        assert_eq!(resp.status(), 404, "{name}: {}", resp.text());
        let body = resp.json().expect("JSON error");
        assert_eq!(error_code(&body), Some("not_found"), "{name}: {body}");
    }

    let mut s = r.subscribe(&SseRequest::mcp()).await.expect("subscribe");
    assert_eq!(s.status(), 200);
    r.wait_subscribers(1, SOON).await.expect("registered");
    let body = note("notifications/test/x", "admin", 1);
    let (status, resp) = r
        .publish_with_token(&body, Token::None)
        .await
        .expect("publish");
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{resp}");
    let mut ids = Vec::new();
    for token in ["file-token-1", "file-token-2"] {
        let (status, resp) = r
            .publish_with_token(&body, Token::Bearer(token.to_string()))
            .await
            .expect("publish");
        assert_eq!(
            status,
            StatusCode::OK,
            "token {token} from the file: {resp}"
        );
        ids.push(resp["id"].as_str().expect("id").to_string());
    }
    for id in ids {
        let f = s.next_event(SOON).await.expect("event").expect("open");
        assert_eq!(f.id.as_deref(), Some(id.as_str()));
    }
}
