//! `mcp-fanout subscribe` follows the stream like the client crate's follower: when the replica
//! it reads is SIGKILLed and restarted (Postgres), it resumes with `Last-Event-ID` and prints every
//! event exactly once, in log order; a cursor the server cannot replay prints `resync <head>`.
//! `mcp-fanout publish` prints the id of what it published.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::path::Path;
use std::process::Stdio;

use mcp_fanout_testkit::{Deployment, Tally, ADMIN_TOKEN, SOON};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The binary the kit launches (`$MCP_FANOUT_BIN`, else the one cargo built).
fn bin() -> &'static Path {
    mcp_fanout_testkit::bin()
}

/// `mcp-fanout subscribe --url URL --announce ARGS…`, with its stdout lines.
fn subscribe(url: &str, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(bin())
        .arg("subscribe")
        .args(["--url", url, "--announce"])
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start mcp-fanout subscribe");
    let stdout = child.stdout.take().expect("stdout");
    (child, BufReader::new(stdout).lines())
}

async fn line(lines: &mut Lines<BufReader<ChildStdout>>, what: &str) -> String {
    tokio::time::timeout(SOON, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {SOON:?}"))
        .expect("read stdout")
        .unwrap_or_else(|| panic!("subscribe exited before {what}"))
}

/// `mcp-fanout publish` of one notification; the id it printed.
async fn publish(url: &str, n: u64) -> String {
    let out = Command::new(bin())
        .args(["publish", "--url", url, "--token", ADMIN_TOKEN])
        .args(["--method", "notifications/test/cli"])
        .args(["--params", &json!({ "n": n }).to_string()])
        .env_clear()
        .output()
        .await
        .expect("run mcp-fanout publish");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "publish failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_str(text.trim()).expect("publish prints JSON");
    answer["id"].as_str().expect("an id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_prints_every_event_once_across_a_killed_and_restarted_replica() {
    let pg = Deployment::fresh("cli_subscribe").await.with_admin();
    let mut r = pg.replica("cli-r", &[]).await;
    let url = r.public_url("");
    let (mut child, mut lines) = subscribe(&url, &["--count", "6", "--timeout", "60"]);
    assert_eq!(line(&mut lines, "ready").await, "ready");

    let mut published = Vec::new();
    for n in 0..3 {
        published.push(publish(&url, n).await);
    }
    let mut printed = Vec::new();
    for _ in 0..3 {
        printed.push(line(&mut lines, "an event").await);
    }
    r.kill().expect("SIGKILL the replica");
    r.wait_exit(SOON).await.expect("the replica exits");
    // Published while the subscriber's replica is down (straight into the log), then after.
    let client = pg.client().await;
    published.push(
        pg.sql_publish(&client, "notifications/test/cli", &json!({"n": 3}))
            .await,
    );
    let r = pg.replica_at("cli-r-again", r.public_addr(), &[]).await;
    for n in 4..6 {
        published.push(publish(&url, n).await);
    }
    for _ in 3..6 {
        printed.push(line(&mut lines, "an event after the restart").await);
    }
    let status = tokio::time::timeout(SOON, child.wait())
        .await
        .expect("subscribe exits after --count")
        .expect("wait");
    assert!(status.success(), "subscribe exit status {status}");

    let mut tally = Tally::new("mcp-fanout subscribe", published.iter().cloned());
    for (i, l) in printed.iter().enumerate() {
        let (id, message) = l
            .split_once(' ')
            .unwrap_or_else(|| panic!("`<id> <json>`: {l}"));
        tally.observe(id);
        let message: serde_json::Value = serde_json::from_str(message).expect("JSON message");
        assert_eq!(message["params"]["n"], i as u64, "{l}");
    }
    tally.assert_exact();
    assert_eq!(pg.log_ids().await, published);

    // A cursor of another log: the server cannot replay after it.
    let (mut child, mut lines) = subscribe(&url, &["--last-event-id", "zzzzzz-1", "--count", "1"]);
    assert_eq!(line(&mut lines, "ready").await, "ready");
    assert_eq!(
        line(&mut lines, "the resync").await,
        format!("resync {}", published[5])
    );
    let status = tokio::time::timeout(SOON, child.wait())
        .await
        .expect("subscribe exits after --count")
        .expect("wait");
    assert!(status.success(), "subscribe exit status {status}");
    drop(r);
}
