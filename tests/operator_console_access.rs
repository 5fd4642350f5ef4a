//! who may load the operator console and its data. The page and its assets
//! hold no data and are served on the admin listener only, with a strict CSP; with tokens
//! configured they need none (a navigation cannot carry one), while `GET /admin/stats` needs the
//! token like every `/admin/*` call; with no tokens configured, page and data answer only a
//! loopback peer with a loopback `Host`, as `/admin/*` does. Also what `/admin/stats` holds in
//! memory mode: the one replica, the log's extent, the series, and recent events newest first.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::path::Path;
use std::time::Duration;

use mcp_fanout_testkit::{error_code, wait_for, RawRequest, RawResponse, Replica};
use serde_json::{json, Value};

const TOKEN: &str = "console-access-token";
const T: Duration = Duration::from_secs(15);
const ASSETS: [(&str, &str); 3] = [
    ("/admin/console", "text/html; charset=utf-8"),
    (
        "/admin/console/console.js",
        "text/javascript; charset=utf-8",
    ),
    ("/admin/console/console.css", "text/css; charset=utf-8"),
];

async fn start(envs: &[(&str, &str)]) -> Replica {
    let mut all = vec![("FANOUT_ADMIN_ADDR", "127.0.0.1:0")];
    all.extend_from_slice(envs);
    Replica::start(Path::new(env!("CARGO_BIN_EXE_mcp-fanout")), "console", &all)
        .await
        .expect("replica starts")
}

async fn get(r: &Replica, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut req = RawRequest::new("GET", path);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    req.send(r.admin_addr(), T).await.expect("request")
}

fn code(resp: &RawResponse) -> String {
    let body = resp.json().unwrap_or(Value::Null);
    error_code(&body).unwrap_or("<none>").to_owned()
}

#[tokio::test]
async fn with_tokens_the_page_is_open_and_the_data_needs_the_token() {
    let r = start(&[("FANOUT_ADMIN_TOKENS", TOKEN)]).await;
    for (path, content_type) in ASSETS {
        let resp = get(&r, path, &[]).await;
        assert_eq!(resp.status(), 200, "{path}: {}", resp.text());
        assert_eq!(resp.header("content-type"), Some(content_type), "{path}");
        let csp = resp.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'self'")
                && csp.contains("connect-src 'self'")
                && csp.contains("frame-ancestors 'none'"),
            "{path}: CSP {csp:?}"
        );
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    }
    // Only on the admin listener.
    let public = RawRequest::new("GET", "/admin/console")
        .send(r.public_addr(), T)
        .await
        .expect("request");
    assert_eq!((public.status(), code(&public)), (404, "not_found".into()));

    // The data: 401 (JSON, WWW-Authenticate) without or with a wrong token, 200 with the token.
    for auth in [None, Some("Bearer wrong")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let resp = get(&r, "/admin/stats", &headers).await;
        assert_eq!((resp.status(), code(&resp)), (401, "unauthorized".into()));
        assert!(resp.header("www-authenticate").is_some());
    }
    let bearer = format!("Bearer {TOKEN}");
    let ok = get(&r, "/admin/stats", &[("Authorization", &bearer)]).await;
    assert_eq!(ok.status(), 200, "{}", ok.text());
}

#[tokio::test]
async fn without_tokens_page_and_data_answer_loopback_only() {
    let r = start(&[]).await;
    let paths = ASSETS.map(|(p, _)| p);
    for path in paths.iter().copied().chain(["/admin/stats"]) {
        let local = get(&r, path, &[]).await;
        assert_eq!(
            local.status(),
            200,
            "{path} from loopback: {}",
            local.text()
        );
        let rebound = get(&r, path, &[("Host", "console.evil.example")]).await;
        assert_eq!(
            (rebound.status(), code(&rebound)),
            (403, "forbidden".into()),
            "{path} with a foreign Host"
        );
    }
}

#[tokio::test]
async fn stats_show_the_replica_the_log_the_series_and_recent_events() {
    let r = start(&[("FANOUT_ADMIN_TOKENS", TOKEN)]).await;
    let first = r
        .publish_ok(&json!({"method": "notifications/tools/list_changed"}))
        .await
        .expect("publish");
    let second = r
        .publish_ok(&json!({"method": "notifications/resources/updated",
            "params": {"uri": "file:///a.txt"}, "tenant": "t1", "session": "s1"}))
        .await
        .expect("publish");
    let bearer = format!("Bearer {TOKEN}");
    // The series gains a point every second; wait for one that counted the publishes.
    let s = wait_for("a series point counting the publishes", T, || async {
        let resp = get(&r, "/admin/stats", &[("Authorization", &bearer)]).await;
        let v = resp.json().ok()?;
        let counted = v["series"]["points"]
            .as_array()?
            .iter()
            .any(|p| p["published_per_s"].as_f64().is_some_and(|n| n > 0.0));
        counted.then_some(v)
    })
    .await
    .expect("stats");
    assert_eq!(s["mode"], "memory");
    assert_eq!(s["database"], "ok");
    let replicas = s["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 1);
    assert_eq!(replicas[0]["id"], s["replica"]);
    assert_eq!(
        replicas[0]["subscribers_by_kind"],
        json!({"sse": 0, "poll": 0, "listen": 0})
    );
    assert_eq!(replicas[0]["listen_connected"], Value::Null);
    assert_eq!(s["log"]["head_id"], json!(second));
    assert_eq!(s["log"]["pruned"], 0);
    assert_eq!(s["published_total"], 2);
    assert_eq!(s["series"]["window_points"], 300);
    let points = s["series"]["points"].as_array().expect("points");
    assert!(points.len() <= 300);
    let reasons = s["series"]["drop_reasons"].as_array().expect("reasons");
    assert!(points
        .iter()
        .all(|p| p["dropped"].as_array().map(Vec::len) == Some(reasons.len())));

    let recent = s["recent"].as_array().expect("recent");
    let ids: Vec<&str> = recent.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "newest first");
    let message = r#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"file:///a.txt"}}"#;
    assert_eq!(recent[0]["method"], "notifications/resources/updated");
    assert_eq!(recent[0]["tenant"], "t1");
    assert_eq!(recent[0]["session"], "s1");
    assert_eq!(recent[0]["bytes"], message.len());
    assert_eq!(recent[1]["tenant"], Value::Null);
}
