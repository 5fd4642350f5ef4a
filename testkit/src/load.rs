//! Background publishers that keep publishing while a test injects faults — HTTP ones that retry
//! every failed publish with its `Idempotency-Key`, and a SQL one that reconnects — and the check of
//! what they were answered against the log.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::deployment::Deployment;
use crate::replica::{PublishOptions, Replica};

/// One failed publish attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Which replica.
    pub replica: String,
    /// The idempotency key of the request.
    pub key: String,
    /// HTTP status (0 when the request itself failed).
    pub status: u16,
    /// The error `code` of the body (or the transport error).
    pub code: String,
    /// How long the attempt took.
    pub took: Duration,
    /// When it was answered.
    pub at: Instant,
}

/// What a background publisher did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// `(key, id)` of every publish that was answered `200`, in the order they were answered.
    pub ok: Vec<(String, String)>,
    /// Every failed attempt (each was retried with the same key).
    pub failures: Vec<Failure>,
    /// Keys never answered `200` before the retry deadline.
    pub gave_up: Vec<String>,
    /// SQL publishes: ids answered, and errors (SQL publishes carry no key; an error is either a
    /// rollback or a lost answer, and the log decides).
    pub sql_ok: Vec<String>,
    pub sql_errors: Vec<String>,
}

impl LoadReport {
    pub fn merge(&mut self, other: LoadReport) {
        self.ok.extend(other.ok);
        self.failures.extend(other.failures);
        self.gave_up.extend(other.gave_up);
        self.sql_ok.extend(other.sql_ok);
        self.sql_errors.extend(other.sql_errors);
    }
}

/// Background publishers: HTTP ones that retry every failed publish with its `Idempotency-Key`
/// until it is answered `200` (or `retry_for` passes), and optionally one SQL publisher that
/// reconnects when its connection is killed. [`Load::stop`] ends them and merges their reports.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<LoadReport>>,
}

impl Load {
    /// `per_replica` HTTP publishers on each replica, plus a SQL publisher when `sql` is given.
    /// Event params are `{"tag", "n", "key"}`; keys are `<tag>-<replica>-<task>-<n>`.
    pub fn start(
        replicas: &[Arc<Replica>],
        per_replica: usize,
        tag: &str,
        sql: Option<&Deployment>,
        retry_for: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for r in replicas {
            for t in 0..per_replica {
                let r = Arc::clone(r);
                let stop = Arc::clone(&stop);
                let tag = tag.to_string();
                tasks.push(tokio::spawn(async move {
                    let mut report = LoadReport::default();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("{tag}-{}-{t}-{n}", r.label());
                        let body = json!({
                            "method": "notifications/test/load",
                            "params": { "tag": tag, "n": n, "key": key },
                        });
                        let opts = PublishOptions {
                            idempotency_key: Some(key.clone()),
                            ..Default::default()
                        };
                        let deadline = Instant::now() + retry_for;
                        loop {
                            let started = Instant::now();
                            let outcome = r.publish_with(&body, &opts).await;
                            let took = started.elapsed();
                            match outcome {
                                Ok((status, v)) if status.as_u16() == 200 => {
                                    match v.get("id").and_then(|i| i.as_str()) {
                                        Some(id) => report.ok.push((key.clone(), id.to_string())),
                                        None => report.failures.push(Failure {
                                            replica: r.label().to_string(),
                                            key: key.clone(),
                                            status: 200,
                                            code: format!("no id in {v}"),
                                            took,
                                            at: Instant::now(),
                                        }),
                                    }
                                    break;
                                }
                                Ok((status, v)) => report.failures.push(Failure {
                                    replica: r.label().to_string(),
                                    key: key.clone(),
                                    status: status.as_u16(),
                                    code: crate::http::error_code(&v)
                                        .map(ToString::to_string)
                                        .unwrap_or_else(|| v.to_string()),
                                    took,
                                    at: Instant::now(),
                                }),
                                Err(e) => report.failures.push(Failure {
                                    replica: r.label().to_string(),
                                    key: key.clone(),
                                    status: 0,
                                    code: e.to_string(),
                                    took,
                                    at: Instant::now(),
                                }),
                            }
                            if Instant::now() >= deadline {
                                report.gave_up.push(key.clone());
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        n += 1;
                    }
                    report
                }));
            }
        }
        if let Some(pg) = sql {
            let pg = pg.clone();
            let stop = Arc::clone(&stop);
            let tag = tag.to_string();
            tasks.push(tokio::spawn(async move {
                let mut report = LoadReport::default();
                let mut client: Option<tokio_postgres::Client> = None;
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let c = match client.take() {
                        Some(c) if !c.is_closed() => c,
                        _ => match pg.server.connect(&pg.db).await {
                            Ok(c) => c,
                            Err(e) => {
                                report.sql_errors.push(format!("connect: {e}"));
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        },
                    };
                    let params = json!({ "tag": format!("{tag}-sql"), "n": n });
                    match crate::postgres::sql_publish(
                        &c,
                        &pg.schema,
                        "notifications/test/load_sql",
                        Some(&params),
                        None,
                        None,
                    )
                    .await
                    {
                        Ok(id) => {
                            report.sql_ok.push(id);
                            client = Some(c);
                        }
                        Err(e) => {
                            report.sql_errors.push(format!("publish {n}: {e}"));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                report
            }));
        }
        Load { stop, tasks }
    }

    /// Stops publishing (each task finishes the publish it is retrying) and merges the reports.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = LoadReport::default();
        for t in self.tasks {
            all.merge(t.await.expect("publisher task"));
        }
        all
    }
}

/// Checks a load report against the log: every publish answered `200` is in the log under the
/// id it was answered with, no keyed publish is in the log twice, no key was given up on, and
/// every SQL id answered is in the log.
pub async fn check_load_against_log(pg: &Deployment, report: &LoadReport) {
    assert!(
        report.gave_up.is_empty(),
        "publishes never answered 200 despite retries with their Idempotency-Key: {:?}\nlast failures: {:?}",
        report.gave_up,
        report.failures.iter().rev().take(5).collect::<Vec<_>>()
    );
    let rows = pg
        .server
        .log_events_after(&pg.db, &pg.schema, 0)
        .await
        .expect("read the log");
    let mut by_key: HashMap<String, Vec<String>> = Default::default();
    for r in &rows {
        if let Some(key) = r
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
            .and_then(|p| {
                p.get("key")
                    .and_then(|k| k.as_str())
                    .map(ToString::to_string)
            })
        {
            by_key.entry(key).or_default().push(r.id.clone());
        }
    }
    let doubled: Vec<(&String, &Vec<String>)> =
        by_key.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        doubled.is_empty(),
        "keyed publishes committed more than once (retry with the same Idempotency-Key doubled them): {doubled:?}"
    );
    let mut wrong = Vec::new();
    for (key, id) in &report.ok {
        match by_key.get(key) {
            Some(ids) if ids == &vec![id.clone()] => {}
            other => wrong.push(format!("{key}: answered {id}, log has {other:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "publishes answered 200 whose answer does not match the log ({}): {:?}",
        wrong.len(),
        wrong.iter().take(20).collect::<Vec<_>>()
    );
    let ids: HashSet<&String> = rows.iter().map(|r| &r.id).collect();
    let missing_sql: Vec<&String> = report
        .sql_ok
        .iter()
        .filter(|id| !ids.contains(id))
        .collect();
    assert!(
        missing_sql.is_empty(),
        "SQL publishes that returned an id (committed) but are not in the log: {missing_sql:?}"
    );
}
