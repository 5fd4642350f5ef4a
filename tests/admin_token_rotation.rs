//! Contract §2 `FANOUT_ADMIN_TOKEN_FILE`, §4.1: admin tokens rotate without a
//! restart. Rewriting the token file is noticed by itself (the file's change is polled); a rewrite
//! that keeps the file's modification time is picked up on `SIGHUP`. After each rotation the new
//! token works on `/admin/publish` and `/admin/cluster`, the removed one gets `401` with
//! `WWW-Authenticate`, inline `FANOUT_ADMIN_TOKENS` keep working, and an open stream keeps flowing
//! throughout, never ended. A token file that cannot be read keeps the current tokens. A token
//! shorter than 16 bytes works and is named in a warning.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, SystemTime};

use mcp_fanout_testkit::{
    body, error_shape::expect_http_error, open_stream_with, wait_for, HttpResponse, Replica,
    SseConn, SseRequest, Token,
};

const INLINE: &str = "inline-token-stays-9c1d";
const OLD: &str = "old-token-1b7e";
const NEW: &str = "new-token-5d22";
const NEWER: &str = "newer-token-83fa";
const T: Duration = Duration::from_secs(10);
/// SIGHUP is 1 on every Unix (the root crate does not depend on `libc` directly).
const SIGHUP: i32 = 1;

async fn publish_with(r: &Replica, token: &str, n: usize) -> (u16, serde_json::Value) {
    let (status, v) = r
        .publish_with_token(&body("rotation", n), Token::Bearer(token.to_string()))
        .await
        .expect("publish request");
    (status.as_u16(), v)
}

async fn cluster_with(r: &Replica, token: &str) -> HttpResponse {
    let resp = r
        .http()
        .get(r.admin_url("/admin/cluster"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /admin/cluster");
    HttpResponse::read(resp).await.expect("read the answer")
}

/// `token` is refused on both admin endpoints, with `WWW-Authenticate`.
async fn expect_refused(r: &Replica, token: &str, what: &str) {
    let resp = r
        .publish_response(
            &body("refused", 0),
            &mcp_fanout_testkit::PublishOptions {
                token: Token::Bearer(token.to_string()),
                ..Default::default()
            },
        )
        .await
        .expect("publish request");
    expect_http_error(&format!("{what}: publish"), &resp, 401, "unauthorized");
    assert!(
        resp.header("www-authenticate").is_some(),
        "{what}: WWW-Authenticate on the 401"
    );
    let resp = cluster_with(r, token).await;
    expect_http_error(
        &format!("{what}: /admin/cluster"),
        &resp,
        401,
        "unauthorized",
    );
}

/// `token` publishes, the stream receives the event, and `/admin/cluster` answers.
async fn expect_works(r: &Replica, stream: &mut SseConn, token: &str, n: usize, what: &str) {
    let (status, v) = publish_with(r, token, n).await;
    assert_eq!(status, 200, "{what}: publish with the token: {v}");
    let id = v["id"].as_str().expect("an id").to_string();
    let ev = stream
        .next_event(T)
        .await
        .unwrap_or_else(|e| panic!("{what}: the open stream gets {id}: {e}"))
        .unwrap_or_else(|| panic!("{what}: the open stream ended"));
    assert_eq!(ev.id.as_deref(), Some(id.as_str()), "{what}: the stream");
    let resp = cluster_with(r, token).await;
    assert_eq!(resp.status, 200, "{what}: /admin/cluster: {}", resp.text());
}

/// Replaces `path` with `content` atomically (a new file renamed over it), with the given
/// modification time, or a fresh one.
fn replace_file(path: &Path, content: &str, mtime: Option<SystemTime>) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content).expect("write the new token file");
    if let Some(t) = mtime {
        File::options()
            .write(true)
            .open(&tmp)
            .and_then(|f| f.set_modified(t))
            .expect("set the modification time");
    }
    fs::rename(&tmp, path).expect("rename the token file into place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotating_the_token_file_swaps_tokens_without_a_restart_and_keeps_streams() {
    let dir = mcp_fanout_testkit::tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin-tokens");
    fs::write(&path, format!("{OLD}\n")).expect("write the token file");
    let file = path.to_string_lossy().into_owned();
    let r = mcp_fanout_testkit::start_owned(
        "rotation",
        &[
            ("FANOUT_ADMIN_TOKENS".to_string(), INLINE.to_string()),
            ("FANOUT_ADMIN_TOKEN_FILE".to_string(), file.clone()),
            // The waits below poll with tokens not (or no longer) configured, many a second:
            // without a large allowance the address would be refused (tests/admin_failed_attempts.rs).
            (
                "FANOUT_ADMIN_FAILED_ATTEMPTS".to_string(),
                "1000000".to_string(),
            ),
        ],
    )
    .await;
    let pid_before = r.pid();

    let mut stream = open_stream_with(&r, SseRequest::mcp(), "long-lived stream").await;
    r.wait_subscribers(1, T).await.expect("registered");
    expect_works(&r, &mut stream, OLD, 0, "the file's first token").await;
    expect_works(&r, &mut stream, INLINE, 1, "the inline token").await;
    expect_refused(&r, NEW, "a token not yet configured").await;

    // ---- rotation 1: the file changes; nobody signals ----
    replace_file(&path, &format!("{NEW}\n"), None);
    wait_for("the new token to be accepted (file change)", T, || async {
        let (status, _) = publish_with(&r, NEW, 2).await;
        (status == 200).then_some(())
    })
    .await
    .expect("the file change is picked up without a signal");
    // The publish that succeeded reached the stream.
    let ev = stream.next_event(T).await.expect("event").expect("open");
    assert!(
        ev.id.is_some(),
        "the rotation publish arrived: {}",
        ev.text()
    );
    expect_refused(&r, OLD, "the removed token (file change)").await;
    expect_works(&r, &mut stream, NEW, 3, "the new token (file change)").await;
    expect_works(
        &r,
        &mut stream,
        INLINE,
        4,
        "the inline token after rotation 1",
    )
    .await;
    r.wait_for_log("reload after the file change", T, |v| {
        v["fields"]["message"] == "admin tokens reloaded"
            && v["fields"]["reason"] == "token file changed"
    })
    .await
    .expect("the reload is logged");

    // ---- rotation 2: same modification time, so only SIGHUP can reveal it ----
    let mtime = fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    replace_file(&path, &format!("{NEWER}\n"), Some(mtime));
    assert_eq!(
        fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime"),
        mtime,
        "the rewrite kept the modification time"
    );
    // (Give the file watcher two of its polls to show it does not see this change.)
    let quiet = wait_for(
        "no reload without a signal",
        Duration::from_secs(5),
        || async {
            let (status, _) = publish_with(&r, NEWER, 5).await;
            (status == 200).then_some(())
        },
    )
    .await;
    assert!(
        quiet.is_err(),
        "an unchanged modification time must not trigger a reload by itself (else this part \
         proves nothing about SIGHUP)"
    );
    r.signal(SIGHUP).expect("SIGHUP");
    wait_for("the newer token to be accepted (SIGHUP)", T, || async {
        let (status, _) = publish_with(&r, NEWER, 6).await;
        (status == 200).then_some(())
    })
    .await
    .expect("SIGHUP reloads the token file");
    let ev = stream.next_event(T).await.expect("event").expect("open");
    assert!(ev.id.is_some(), "the SIGHUP publish arrived: {}", ev.text());
    expect_refused(&r, NEW, "the removed token (SIGHUP)").await;
    expect_refused(&r, OLD, "the first token (SIGHUP)").await;
    expect_works(&r, &mut stream, NEWER, 7, "the newer token (SIGHUP)").await;
    expect_works(
        &r,
        &mut stream,
        INLINE,
        8,
        "the inline token after rotation 2",
    )
    .await;
    r.wait_for_log("reload on SIGHUP", T, |v| {
        v["fields"]["message"] == "admin tokens reloaded" && v["fields"]["reason"] == "SIGHUP"
    })
    .await
    .expect("the SIGHUP reload is logged");

    // ---- an unreadable file keeps the current tokens ----
    fs::remove_file(&path).expect("remove the token file");
    r.signal(SIGHUP).expect("SIGHUP");
    r.wait_for_log("a failed reload", T, |v| {
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not reloaded"))
    })
    .await
    .expect("the failed reload is logged");
    expect_works(
        &r,
        &mut stream,
        NEWER,
        9,
        "the current token after a failed reload",
    )
    .await;
    expect_refused(&r, NEW, "a removed token after a failed reload").await;

    // Same process, same stream, never ended, nothing dropped.
    assert_eq!(r.pid(), pid_before, "no restart");
    assert!(stream.end().is_none(), "the stream stayed open");
    r.wait_subscribers(1, T)
        .await
        .expect("still one subscriber");
    assert_eq!(
        r.metric("mcp_fanout_subscribers_dropped_total")
            .await
            .expect("metrics")
            .unwrap_or(0.0),
        0.0,
        "no stream was dropped"
    );
    let _ = file;
}

/// A token shorter than 16 bytes is accepted (refusing one at a rotation would lock the operator
/// out) and counted in a warning at start (and at each reload): failed attempts are not
/// throttled. Long tokens alone get no such warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_admin_tokens_work_and_are_warned_about() {
    const LONG: &str = "a-long-random-admin-token-5f0c9e2b";
    let is_warning = |v: &serde_json::Value| {
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("admin tokens shorter than advised"))
    };
    let tokens = format!("admin,{LONG}");
    let r =
        mcp_fanout_testkit::start_memory("short-tokens", &[("FANOUT_ADMIN_TOKENS", &tokens)]).await;
    let warning = r
        .wait_for_log("the short-token warning", T, is_warning)
        .await
        .expect("a warning naming the short token");
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["fields"]["short_tokens"], 1, "{warning}");
    assert_eq!(
        publish_with(&r, "admin", 1).await.0,
        200,
        "the short token works"
    );
    assert_eq!(publish_with(&r, LONG, 2).await.0, 200, "the long one too");

    let quiet =
        mcp_fanout_testkit::start_memory("long-tokens", &[("FANOUT_ADMIN_TOKENS", LONG)]).await;
    assert_eq!(publish_with(&quiet, LONG, 1).await.0, 200);
    // The tokens are read before the replica says it serves.
    quiet
        .wait_for_log("serving", T, |v| v["fields"]["message"] == "serving")
        .await
        .expect("the replica serves");
    let warned = quiet
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|v| is_warning(&v));
    assert!(!warned, "long tokens alone: no warning");
}
