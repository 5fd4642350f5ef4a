//! the operator console (`GET /admin/console` on the admin listener) in a
//! real headless Chromium (Debian's `chromium`, driven by `playwright-core`,
//! `tests/browser/console.mjs`), against two real replicas on one real Postgres:
//!
//! - the page loads with its strict CSP and no console error, asks for the token, keeps it in
//!   `sessionStorage` only, and shows both replicas (with the SSE subscriber of the other one and
//!   a connected LISTEN);
//! - a publish from the form (on replica A) shows its id, appears first in the recent events, and
//!   reaches a real SSE subscriber on replica B exactly once, with the params' key order intact;
//!   the form's idempotency key was sent (a retry with it returns the same id);
//! - params that are not JSON show the server's `400 invalid_json`, and publish nothing;
//! - a wrong token shows the `401` and is forgotten.
//!
//! The screenshot goes to a temporary directory, never into the repository.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mcp_fanout_testkit::{
    shared_database, tempfile, wait_for, EventId, Follower, Replica, SseRequest,
};
use serde_json::{json, Value};

const TOKEN: &str = "console-admin-token";
const CHROMIUM: &str = "/usr/bin/chromium";
const T: Duration = Duration::from_secs(30);
const METHOD: &str = "notifications/resources/updated";
/// Typed into the form: the subscriber must get exactly this text (key order kept).
const PARAMS: &str = r#"{"uri":"file:///console.txt","z":1,"a":2}"#;
const KEY: &str = "console-form-key-1";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `npm ci` of `tests/browser/` into `target/e2e/browser` (idempotent), by `scripts/e2e-setup`.
fn install_playwright_core() -> PathBuf {
    let script = repo().join("scripts/e2e-setup");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("browser")
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/e2e-setup");
    assert!(
        out.status.success(),
        "scripts/e2e-setup browser failed ({}): it installs playwright-core from \
         tests/browser/package-lock.json.\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    repo().join("target/e2e/browser/node_modules/playwright-core")
}

async fn start(label: &str, db_url: &str) -> Replica {
    Replica::start(
        Path::new(env!("CARGO_BIN_EXE_mcp-fanout")),
        label,
        &[
            ("DATABASE_URL", db_url),
            ("FANOUT_ADMIN_ADDR", "127.0.0.1:0"),
            ("FANOUT_ADMIN_TOKENS", TOKEN),
        ],
    )
    .await
    .expect("replica starts")
}

/// `/admin/cluster` of `r`.
async fn cluster(r: &Replica) -> Option<Vec<Value>> {
    let resp = r
        .http()
        .get(r.admin_url("/admin/cluster"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?;
    if resp.status() != 200 {
        return None;
    }
    resp.json::<Value>().await.ok()?["replicas"]
        .as_array()
        .cloned()
}

fn seq_of(id: &str) -> u64 {
    id.parse::<EventId>().expect("an event id").seq
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string `{key}` in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_console_in_headless_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is required (apt-get install chromium; .ci/run installs it)"
    );
    let playwright_core = install_playwright_core();
    let (server, db) = shared_database().await.expect("a database");
    let url = server.url(&db);
    let a = start("a", &url).await;
    let b = start("b", &url).await;

    // A real SSE subscriber on B; the console is served by A.
    let conn = b
        .subscribe(&SseRequest::mcp())
        .await
        .expect("subscribe on b");
    b.wait_subscribers(1, T).await.expect("b counts it");
    let follower = Follower::spawn("b-subscriber", conn);
    // A's view lists both replicas, B's with its SSE subscriber, and both rows with LISTEN
    // connected (heartbeats every 2 s; a replica's first one can go out before its LISTEN
    // connection is up, and says so until the next).
    let ids: BTreeSet<String> = wait_for(
        "a's cluster view: both replicas, b's subscriber, both LISTENing",
        T,
        || async {
            let rows = cluster(&a).await?;
            let with_sse = rows
                .iter()
                .filter(|r| r["subscribers_by_kind"]["sse"] == 1)
                .count();
            let listening = rows.iter().all(|r| r["listen_connected"] == true);
            (rows.len() == 2 && with_sse == 1 && listening)
                .then(|| rows.iter().map(|r| str_of(r, "id").to_owned()).collect())
        },
    )
    .await
    .expect("both replicas in the view");
    let earlier = b
        .publish_ok(&json!({"method": "notifications/tools/list_changed"}))
        .await
        .expect("a publish before the page");

    let shots = tempfile::tempdir().expect("temp dir");
    let input = json!({
        "playwright_core": playwright_core,
        "chromium": CHROMIUM,
        "url": a.admin_url("/admin/console"),
        "token": TOKEN,
        "wrong_token": "not-the-admin-token",
        "expect_replicas": 2,
        "screenshot_dir": shots.path(),
        "publish": {"method": METHOD, "params": PARAMS, "key": KEY},
        "bad_params": r#"{"uri": "file:///x.txt""#,
    });
    let run = tokio::process::Command::new("node")
        .arg(repo().join("tests/browser/console.mjs"))
        .env("CONSOLE_TEST", input.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser script finishes")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let shown: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON line from the browser script: {stdout}"));
    assert!(
        out.status.success() && shown["ok"] == true,
        "the browser script failed ({}): {shown:#}",
        out.status
    );

    // Loaded with the strict CSP, asked for the token, kept it in sessionStorage only.
    assert_eq!(shown["page_status"], 200);
    let csp = str_of(&shown, "csp");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "CSP {csp:?} lacks {directive}");
    }
    assert_eq!(shown["asked_for_token"], true);
    assert_eq!(
        shown["session_storage"],
        json!({"mcp-fanout-admin-token": TOKEN})
    );
    assert_eq!(shown["local_storage_keys"], json!([]));

    // No console error while loading and publishing; later only the two expected failed calls
    // (Chromium logs a 400/401 answer to a fetch as an error); never a CSP violation, never an
    // uncaught exception or a failed request.
    let messages = shown["console"].as_array().expect("console messages");
    for m in messages {
        let text = str_of(m, "text");
        let phase = str_of(m, "phase");
        assert!(
            !text.contains("Content Security Policy"),
            "CSP violation: {m}"
        );
        if m["type"] == "error" {
            let expected = match phase {
                "bad_params" => "status of 400",
                "wrong" => "status of 401",
                _ => panic!("console error while the page loaded or published: {m}"),
            };
            assert!(text.contains(expected), "unexpected console error: {m}");
        }
    }
    assert_eq!(shown["page_errors"], json!([]), "uncaught exceptions");
    assert_eq!(shown["failed_requests"], json!([]), "failed requests");

    // Both replicas, each with its LISTEN connected; B's row counts its SSE subscriber.
    let rows = shown["replicas"].as_array().expect("replica rows");
    let shown_ids: BTreeSet<String> = rows.iter().map(|r| str_of(r, "id").to_owned()).collect();
    assert_eq!(shown_ids, ids, "the console's replicas: {rows:?}");
    let sse_cells: Vec<&str> = rows
        .iter()
        .map(|r| r["cells"][2].as_str().expect("SSE cell"))
        .collect();
    assert_eq!(
        sse_cells.iter().filter(|c| **c == "1").count(),
        1,
        "one replica shows the SSE subscriber: {rows:?}"
    );
    for r in rows {
        assert_eq!(r["cells"][7], "connected", "LISTEN state: {r}");
    }
    assert!(
        str_of(&shown, "log_panel").contains(&earlier),
        "the log panel shows the head {earlier}: {}",
        shown["log_panel"]
    );

    // The form's publish: its id shown, first in the recent events, with method and size.
    let published = str_of(&shown, "published_id").to_owned();
    assert!(seq_of(&published) > seq_of(&earlier));
    assert_eq!(shown["publish_text"], format!("published {published}"));
    assert_eq!(shown["recent_first_id"], published);
    let message = format!(r#"{{"jsonrpc":"2.0","method":"{METHOD}","params":{PARAMS}}}"#);
    assert_eq!(
        shown["recent_row"],
        json!([
            published,
            METHOD,
            "—",
            "—",
            message.len().to_string(),
            shown["recent_row"][5]
        ])
    );
    assert!(shown["chart_events_label"]
        .as_str()
        .is_some_and(|l| l.starts_with("max ")));

    // The bad params got the server's own error.
    let bad = str_of(&shown, "bad_params_text");
    assert!(bad.starts_with("400 invalid_json: "), "shown: {bad:?}");

    // The wrong token: a clear 401, the dashboard hidden, the token forgotten.
    let wrong = str_of(&shown, "wrong_token_text");
    assert!(
        wrong.starts_with("401 Unauthorized") && wrong.contains("unauthorized"),
        "shown: {wrong:?}"
    );
    assert_eq!(shown["main_hidden_after_wrong"], true);
    assert_eq!(shown["session_storage_after_wrong"], json!({}));

    // The screenshot is in the temp dir, not in the repository.
    let shot = PathBuf::from(str_of(&shown, "screenshot"));
    assert!(shot.starts_with(shots.path()) && !shot.starts_with(repo()));
    let png = std::fs::metadata(&shot).expect("the screenshot exists");
    assert!(png.len() > 1000, "a real screenshot: {} bytes", png.len());

    // B's subscriber got the form's event exactly once, in order after the earlier one, with the
    // bytes typed into the form; nothing was published by the bad-params attempt.
    let followed = follower
        .finish(seq_of(&published), T)
        .await
        .expect("the subscriber's stream");
    assert!(followed.reached, "{}", followed.summary());
    followed
        .tally([earlier.clone(), published.clone()])
        .assert_exact();
    let last = followed.events().last().copied().expect("an event");
    assert_eq!(last.data.as_deref(), Some(message.as_str()));
    assert_eq!(
        server.head(&db, "mcp_fanout").await.expect("log head"),
        seq_of(&published),
        "the bad-params publish committed nothing"
    );

    // The form sent its idempotency key: a retry with it answers the same id.
    // (The body is sent as text: the server compares the params' key order too.)
    let resp = a
        .http()
        .post(a.admin_url("/admin/publish"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .header("idempotency-key", KEY)
        .body(format!(r#"{{"method":"{METHOD}","params":{PARAMS}}}"#))
        .send()
        .await
        .expect("retry");
    let status = resp.status();
    let retry: Value = resp.json().await.expect("json answer");
    assert_eq!((status.as_u16(), &retry["id"]), (200, &json!(published)));
}
