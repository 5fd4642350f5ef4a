//! `mcp-fanout migrate`, as the chart's migration hook Job runs it (docs/postgres.md "Schema and
//! migrations"; the chart sets `FANOUT_LOG_FORMAT` on the Job as on the replicas): it applies the
//! migrations to a fresh schema and exits `0`, logging JSON lines when `FANOUT_LOG_FORMAT=json`
//! (one object per line, the applied migrations named); run again it applies nothing and still
//! succeeds; a replica started with `FANOUT_MIGRATE=skip` then finds its schema and is ready, and
//! publishing through it works.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::process::Stdio;
use std::time::Duration;

use mcp_fanout_testkit::{launch, Deployment};
use serde_json::{json, Value};

/// Runs `mcp-fanout migrate` for `pg` with JSON logs; returns its log lines, parsed.
async fn migrate(pg: &Deployment) -> Vec<Value> {
    let mut cmd = tokio::process::Command::new(launch::bin());
    cmd.arg("migrate")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FANOUT_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in pg.env(&[]) {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("migrate finishes")
        .expect("migrate runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "migrate exits 0: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("every log line is a JSON object ({e}): {l}"))
        })
        .collect()
}

fn up_to_date(lines: &[Value]) -> &Value {
    lines
        .iter()
        .find(|l| l.pointer("/fields/message") == Some(&json!("migrations up to date")))
        .unwrap_or_else(|| panic!("a `migrations up to date` line: {lines:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migrate_command_applies_the_schema_once_and_logs_as_configured() {
    let pg = Deployment::fresh("migratecmd").await.with_admin();

    let first = migrate(&pg).await;
    let line = up_to_date(&first);
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(
        line.pointer("/fields/schema"),
        Some(&json!(pg.schema)),
        "{line}"
    );
    let applied = line
        .pointer("/fields/applied")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    // Every numbered file of sql/, in order.
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))
        .expect("sql/")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".sql") && n.starts_with(|c: char| c.is_ascii_digit()))
        .count();
    let every: Vec<String> = (1..=files).map(|v| v.to_string()).collect();
    assert_eq!(
        applied,
        format!("[{}]", every.join(", ")),
        "the first run applies every migration: {line}"
    );

    let again = migrate(&pg).await;
    let line = up_to_date(&again);
    assert_eq!(
        line.pointer("/fields/applied"),
        Some(&json!("[]")),
        "a second run applies nothing: {line}"
    );

    // A replica that does not migrate (as the chart's replicas with the hook) is ready at once.
    let r = pg
        .replica("migrated-by-job", &[("FANOUT_MIGRATE", "skip")])
        .await;
    let ids = r
        .publish_batch_ok(&[json!({"method": "notifications/tools/list_changed"})])
        .await
        .expect("a publish on the migrated schema");
    assert_eq!(ids.len(), 1);
    assert_eq!(pg.log_ids().await, ids);
}
