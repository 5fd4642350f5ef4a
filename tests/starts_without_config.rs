//! Contract §1, §2: with no configuration at all — an empty environment but `PATH`, the
//! listen address (port 0, so tests can run in parallel) and the JSON log format the kit reads — the
//! binary starts a working single-replica service: probes, metrics, a publish, a stream, a poll. And
//! `--help` lists every setting with its environment variable and defaults.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::{bin, poll_answer, Replica, SseRequest, SOON};
use serde_json::{json, Value};

fn level(v: &Value) -> &str {
    v["level"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfigured_binary_serves_probes_publish_stream_and_poll() {
    let r = Replica::spawn(
        bin(),
        "bare",
        &[
            ("FANOUT_ADDR", "127.0.0.1:0"),
            ("FANOUT_LOG_FORMAT", "json"),
        ],
    )
    .await
    .expect("the binary starts with an empty environment");
    assert_eq!(
        r.admin_addr(),
        r.public_addr(),
        "without FANOUT_ADMIN_ADDR, admin and probes share the public listener"
    );
    r.wait_ready(SOON)
        .await
        .expect("/readyz 200 in memory mode");
    let h = r.get("/healthz").await.expect("healthz");
    assert_eq!(h.status, 200);
    let m = r.metrics_text().await.expect("/metrics");
    assert!(m.contains("mcp_fanout_subscribers"), "metrics text:\n{m}");

    // Memory mode and tokenless admin are announced loudly.
    r.wait_for_log("a warning about in-memory mode", SOON, |v| {
        level(v) == "WARN" && v.to_string().to_ascii_lowercase().contains("memory")
    })
    .await
    .expect("memory mode is logged as a warning");
    r.wait_for_log("a warning about admin without tokens", SOON, |v| {
        level(v) == "WARN" && v.to_string().to_ascii_lowercase().contains("token")
    })
    .await
    .expect("admin without tokens is logged as a warning");

    let mut s = r.subscribe(&SseRequest::mcp()).await.expect("subscribe");
    assert_eq!(s.status(), 200);
    r.wait_subscribers(1, SOON)
        .await
        .expect("subscriber registered");
    let body = json!({ "method": "notifications/tools/list_changed" });
    let id = r
        .publish_ok(&body)
        .await
        .expect("a loopback publish without a token");
    let f = s.next_event(SOON).await.expect("event").expect("open");
    assert_eq!(f.id.as_deref(), Some(id.as_str()));
    let msg = f.json().expect("JSON-RPC");
    assert_eq!(msg["jsonrpc"], json!("2.0"));
    assert_eq!(msg["method"], json!("notifications/tools/list_changed"));

    let id2 = r.publish_ok(&body).await.expect("second publish");
    let a = poll_answer(&r, &format!("after={id}&timeout=5")).await;
    assert_eq!(
        a.events.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        vec![Some(id2.clone())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_lists_every_setting_with_its_env_var_and_defaults() {
    let out = tokio::process::Command::new(bin())
        .arg("--help")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("COLUMNS", "200")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("--help returns")
        .expect("--help runs");
    assert!(out.status.success(), "--help exits 0: {:?}", out.status);
    let help = String::from_utf8_lossy(&out.stdout);
    let mut missing = Vec::new();
    for env in [
        "FANOUT_ADDR",
        "FANOUT_ADMIN_ADDR",
        "DATABASE_URL",
        "FANOUT_LISTEN_DATABASE_URL",
        "FANOUT_SCHEMA",
        "FANOUT_MIGRATE",
        "FANOUT_DB_TIMEOUT_MS",
        "FANOUT_ADMIN_TOKENS",
        "FANOUT_ADMIN_TOKEN_FILE",
        "FANOUT_MEMORY_EVENTS",
        "FANOUT_MEMORY_BYTES",
        "FANOUT_WRITE_STALL_SECS",
        "FANOUT_MAX_SUBSCRIBERS",
        "FANOUT_MAX_LAG_SECS",
        "FANOUT_DRAIN_SECS",
        "FANOUT_SHUTDOWN_GRACE_SECS",
        "FANOUT_KEEPALIVE_SECS",
        "FANOUT_RETRY_MS",
        "FANOUT_MAX_STREAM_SECS",
        "FANOUT_RETENTION_SECS",
        "FANOUT_RETENTION_MAX_EVENTS",
        "FANOUT_MAX_PAYLOAD_BYTES",
        "FANOUT_MAX_BATCH",
        "FANOUT_MAX_BODY_BYTES",
        "FANOUT_ALLOWED_ORIGINS",
        "FANOUT_LOG_FORMAT",
    ] {
        if !help.contains(env) {
            missing.push(env);
        }
    }
    assert!(
        missing.is_empty(),
        "--help does not mention {missing:?}:\n{help}"
    );
    for default in [
        "default: 15",
        "default: 65536",
        "default: 1000",
        "default: mcp_fanout",
    ] {
        assert!(help.contains(default), "--help shows `{default}`:\n{help}");
    }
    for sub in ["serve", "migrate", "publish", "subscribe"] {
        assert!(
            help.contains(sub),
            "--help lists the `{sub}` subcommand:\n{help}"
        );
    }
}
