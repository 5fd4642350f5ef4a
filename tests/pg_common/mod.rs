//! Shared bits of the Postgres-mode black-box tests (issue 3): replicas on one database and schema,
//! background readers on every replica, and checks of what each subscriber got against the
//! `<schema>.events` table (the truth).
#![allow(dead_code)] // each test file uses a different subset

use std::time::Duration;

use futures::future::join_all;
use mcp_fanout_testkit::postgres::{self, PgServer};
use mcp_fanout_testkit::{EventId, Followed, Follower, Replica, SseRequest};

use crate::common::{bin, QUIET, SOON};

/// Where a deployment keeps its log: a server, a database on it and a schema.
#[derive(Debug, Clone)]
pub struct Pg {
    pub server: PgServer,
    pub db: String,
    pub schema: String,
}

impl Pg {
    /// A fresh database on the shared server, with a fresh schema name.
    pub async fn shared(schema_prefix: &str) -> Pg {
        let (server, db) = postgres::shared_database()
            .await
            .expect("a database on the shared Postgres");
        Pg {
            server: server.clone(),
            db,
            schema: postgres::unique_name(schema_prefix),
        }
    }

    /// The same database with another schema (a second deployment).
    pub fn with_schema(&self, schema: &str) -> Pg {
        Pg {
            schema: schema.to_string(),
            ..self.clone()
        }
    }

    /// The pool URL of the database.
    pub fn url(&self) -> String {
        self.server.url(&self.db)
    }

    /// Every event id in the log, in order.
    pub async fn log_ids(&self) -> Vec<String> {
        self.server
            .log_ids(&self.db, &self.schema)
            .await
            .expect("read the log table")
    }

    /// Event ids in the log after `seq`.
    pub async fn log_ids_after(&self, seq: u64) -> Vec<String> {
        self.server
            .log_ids_after(&self.db, &self.schema, seq)
            .await
            .expect("read the log table")
    }

    /// A client connection to the database (for SQL publishing and transactions).
    pub async fn client(&self) -> tokio_postgres::Client {
        self.server
            .connect(&self.db)
            .await
            .expect("connect to the test database")
    }

    /// `SELECT <schema>.publish(method, params)` in its own transaction.
    pub async fn sql_publish(
        &self,
        client: &tokio_postgres::Client,
        method: &str,
        params: &serde_json::Value,
    ) -> String {
        postgres::sql_publish(client, &self.schema, method, Some(params), None, None)
            .await
            .unwrap_or_else(|e| panic!("SELECT {}.publish(…): {e}", self.schema))
    }

    /// Runs SQL on the test database and returns psql-like text.
    pub async fn psql(&self, sql: &str) -> String {
        self.server
            .psql(&self.db, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The environment of a replica of this deployment: `DATABASE_URL`, `FANOUT_SCHEMA`, then
    /// `extra` (which may override either).
    pub fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = vec![
            ("DATABASE_URL".to_string(), self.url()),
            ("FANOUT_SCHEMA".to_string(), self.schema.clone()),
        ];
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        env
    }

    /// Starts one replica of this deployment and waits for `/readyz` 200 (migrations applied,
    /// LISTEN connected).
    pub async fn replica(&self, label: &str, extra: &[(&str, &str)]) -> Replica {
        start_with(label, &self.env(extra)).await
    }

    /// Starts `n` replicas at once (so migrations race, as in a real rollout).
    pub async fn replicas(&self, prefix: &str, n: usize, extra: &[(&str, &str)]) -> Vec<Replica> {
        let env = self.env(extra);
        join_all((0..n).map(|i| {
            let env = env.clone();
            async move { start_with(&format!("{prefix}{i}"), &env).await }
        }))
        .await
    }
}

/// Starts a replica with an owned environment.
pub async fn start_with(label: &str, env: &[(String, String)]) -> Replica {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Replica::start(bin(), label, &pairs)
        .await
        .unwrap_or_else(|e| panic!("replica `{label}` should start and become ready: {e}"))
}

/// Opens `per_replica` plain `GET /mcp` streams on every replica, starts a background reader on
/// each, and waits until every replica counts them.
pub async fn follow_all(replicas: &[&Replica], per_replica: usize) -> Vec<Follower> {
    let mut followers = Vec::new();
    for r in replicas {
        for j in 0..per_replica {
            let label = format!("{}/sub{j}", r.label());
            let conn = r
                .subscribe(&SseRequest::mcp())
                .await
                .unwrap_or_else(|e| panic!("{label}: GET /mcp: {e}"));
            assert_eq!(conn.status(), 200, "{label}: GET /mcp status");
            followers.push(Follower::spawn(&label, conn));
        }
        r.wait_subscribers(per_replica as u64, SOON)
            .await
            .unwrap_or_else(|e| panic!("{}: subscribers registered: {e}", r.label()));
    }
    followers
}

/// The seq of an event id.
pub fn seq_of(id: &str) -> u64 {
    id.parse::<EventId>()
        .unwrap_or_else(|e| panic!("{id:?} is not an event id: {e}"))
        .seq
}

/// Waits until every follower got the last of `expected` (or `timeout`), then checks that each got
/// exactly `expected`, once each, in order; with `stay_open`, also that no stream ended. Panics
/// with every follower's violations at once. Returns what each saw.
pub async fn expect_exactly(
    followers: Vec<Follower>,
    expected: &[String],
    timeout: Duration,
    stay_open: bool,
) -> Vec<Followed> {
    let last = expected.last().map_or(0, |id| seq_of(id));
    let results = join_all(followers.into_iter().map(|f| async move {
        let mut followed = f.finish(last, timeout).await?;
        // Anything after the last expected event (a late duplicate, an event that was never
        // published) must show up in the tally too: keep reading for a moment.
        if let Some(conn) = followed.conn.as_mut() {
            let until = tokio::time::Instant::now() + QUIET;
            loop {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                match conn.next_event(left).await {
                    Ok(Some(frame)) => followed.received.push(mcp_fanout_testkit::Received {
                        at: tokio::time::Instant::now(),
                        frame,
                    }),
                    Ok(None) => {
                        followed.end = Some(mcp_fanout_testkit::StreamEnd::Clean);
                        break;
                    }
                    Err(e) if e.is_timeout() => break,
                    Err(e) => {
                        followed.error = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        Ok::<Followed, mcp_fanout_testkit::Error>(followed)
    }))
    .await;
    let mut seen = Vec::new();
    let mut problems = Vec::new();
    for r in results {
        let followed = r.expect("follower result");
        if let Some(err) = &followed.error {
            problems.push(format!("{}: read error {err}", followed.summary()));
        }
        if stay_open && followed.end.is_some() {
            problems.push(format!(
                "{}: the stream ended, but a healthy subscriber must stay connected",
                followed.summary()
            ));
        }
        if let Err(msg) = followed.tally(expected.iter().cloned()).check() {
            problems.push(format!("{msg}\n  ({})", followed.summary()));
        }
        seen.push(followed);
    }
    assert!(
        problems.is_empty(),
        "{} of {} subscribers did not get exactly the {} events of the log:\n{}",
        problems.len(),
        seen.len(),
        expected.len(),
        problems.join("\n")
    );
    seen
}

/// Every follower got the same bytes for the same event id.
pub fn assert_identical_frames(seen: &[Followed]) {
    let Some(first) = seen.first() else {
        return;
    };
    let reference: std::collections::HashMap<String, bytes::Bytes> = first
        .events()
        .into_iter()
        .filter_map(|f| f.id.clone().map(|id| (id, f.raw.clone())))
        .collect();
    for other in &seen[1..] {
        for f in other.events() {
            let Some(id) = &f.id else { continue };
            if let Some(raw) = reference.get(id) {
                assert_eq!(
                    &f.raw, raw,
                    "event {id}: `{}` and `{}` got different bytes",
                    first.label, other.label
                );
            }
        }
    }
}

/// The log lines of every replica that mention the database, LISTEN or a warning/error, for
/// failure messages.
pub fn interesting_logs(replicas: &[&Replica]) -> String {
    let mut out = String::new();
    for r in replicas {
        for line in r.logs() {
            let l = line.to_ascii_lowercase();
            if l.contains("warn") || l.contains("error") || l.contains("listen") {
                out.push_str(&format!("[{}] {line}\n", r.label()));
            }
        }
    }
    out
}

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
    pub at: tokio::time::Instant,
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
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<LoadReport>>,
}

impl Load {
    /// `per_replica` HTTP publishers on each replica, plus a SQL publisher when `sql` is given.
    /// Event params are `{"tag", "n", "key"}`; keys are `<tag>-<replica>-<task>-<n>`.
    pub fn start(
        replicas: &[std::sync::Arc<Replica>],
        per_replica: usize,
        tag: &str,
        sql: Option<&Pg>,
        retry_for: Duration,
    ) -> Load {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

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
                        let body = serde_json::json!({
                            "method": "notifications/test/load",
                            "params": { "tag": tag, "n": n, "key": key },
                        });
                        let opts = mcp_fanout_testkit::PublishOptions {
                            idempotency_key: Some(key.clone()),
                            ..Default::default()
                        };
                        let deadline = tokio::time::Instant::now() + retry_for;
                        loop {
                            let started = tokio::time::Instant::now();
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
                                            at: tokio::time::Instant::now(),
                                        }),
                                    }
                                    break;
                                }
                                Ok((status, v)) => report.failures.push(Failure {
                                    replica: r.label().to_string(),
                                    key: key.clone(),
                                    status: status.as_u16(),
                                    code: mcp_fanout_testkit::error_code(&v)
                                        .map(ToString::to_string)
                                        .unwrap_or_else(|| v.to_string()),
                                    took,
                                    at: tokio::time::Instant::now(),
                                }),
                                Err(e) => report.failures.push(Failure {
                                    replica: r.label().to_string(),
                                    key: key.clone(),
                                    status: 0,
                                    code: e.to_string(),
                                    took,
                                    at: tokio::time::Instant::now(),
                                }),
                            }
                            if tokio::time::Instant::now() >= deadline {
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
                    let params = serde_json::json!({ "tag": format!("{tag}-sql"), "n": n });
                    match mcp_fanout_testkit::postgres::sql_publish(
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
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
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
pub async fn check_load_against_log(pg: &Pg, report: &LoadReport) {
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
    let mut by_key: std::collections::HashMap<String, Vec<String>> = Default::default();
    for r in &rows {
        if let Some(key) = r
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
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
    let ids: std::collections::HashSet<&String> = rows.iter().map(|r| &r.id).collect();
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

fn flow_body(origin: &str, n: usize) -> serde_json::Value {
    serde_json::json!({
        "method": "notifications/test/cross",
        "params": { "origin": origin, "n": n, "text": "ünïcödé \"q\" \\ \n" }
    })
}

/// One publisher task of [`multi_replica_flow`]: 15 singles and two batches of 5.
async fn flow_publisher(r: std::sync::Arc<Replica>, task: usize) -> Vec<String> {
    let origin = format!("{}#{task}", r.label());
    let mut ids = Vec::new();
    for i in 0..15 {
        ids.push(
            r.publish_ok(&flow_body(&origin, i))
                .await
                .unwrap_or_else(|e| panic!("{origin}: publish {i}: {e}")),
        );
        if i == 3 || i == 10 {
            let batch: Vec<serde_json::Value> =
                (0..5).map(|k| flow_body(&origin, 1000 * i + k)).collect();
            let got = r
                .publish_batch_ok(&batch)
                .await
                .unwrap_or_else(|e| panic!("{origin}: batch: {e}"));
            assert!(
                got.windows(2).all(|w| seq_of(&w[0]) < seq_of(&w[1])),
                "{origin}: a batch's ids increase: {got:?}"
            );
            ids.extend(got);
        }
    }
    ids
}

/// Acceptance 1's flow (also run through PgBouncer): two subscribers on every replica; three
/// publisher tasks per replica and a SQL publisher (autocommit, plus one transaction of five) at
/// the same time; then every answered id is in the log, the log holds nothing else, and every
/// subscriber got exactly the log, in order, with identical bytes everywhere.
pub async fn multi_replica_flow(pg: &Pg, replicas: Vec<Replica>) -> Vec<Followed> {
    use std::collections::HashSet;
    use std::sync::Arc;

    let refs: Vec<&Replica> = replicas.iter().collect();
    let followers = follow_all(&refs, 2).await;
    assert_eq!(
        pg.log_ids().await,
        Vec::<String>::new(),
        "a fresh schema starts with an empty log"
    );

    let replicas: Vec<Arc<Replica>> = replicas.into_iter().map(Arc::new).collect();
    let mut tasks = Vec::new();
    for r in &replicas {
        for t in 0..3 {
            tasks.push(tokio::spawn(flow_publisher(Arc::clone(r), t)));
        }
    }
    let sql = {
        let pg = pg.clone();
        tokio::spawn(async move {
            let mut client = pg.client().await;
            let mut ids = Vec::new();
            for i in 0..20 {
                ids.push(
                    pg.sql_publish(
                        &client,
                        "notifications/test/sql",
                        &serde_json::json!({ "origin": "sql", "n": i }),
                    )
                    .await,
                );
                if i == 10 {
                    let tx = client.transaction().await.expect("BEGIN");
                    for k in 0..5 {
                        ids.push(
                            postgres::sql_publish(
                                &tx,
                                &pg.schema,
                                "notifications/test/sql_tx",
                                Some(&serde_json::json!({ "origin": "sql-tx", "n": k })),
                                None,
                                None,
                            )
                            .await
                            .expect("publish inside a transaction"),
                        );
                    }
                    tx.commit().await.expect("COMMIT");
                }
            }
            ids
        })
    };

    let mut published: Vec<String> = Vec::new();
    for t in tasks {
        published.extend(t.await.expect("publisher task"));
    }
    published.extend(sql.await.expect("SQL publisher task"));

    // What the publishers were told is exactly what the log holds.
    let log = pg.log_ids().await;
    let distinct: HashSet<&String> = published.iter().collect();
    assert_eq!(
        distinct.len(),
        published.len(),
        "every publish answered a different id"
    );
    let in_log: HashSet<&String> = log.iter().collect();
    let unknown: Vec<&&String> = distinct.difference(&in_log).collect();
    assert!(
        unknown.is_empty(),
        "ids answered to publishers but absent from the log: {unknown:?}"
    );
    assert_eq!(
        log.len(),
        published.len(),
        "the log holds exactly the published events"
    );
    let expected_total = replicas.len() * 3 * (15 + 10) + 25;
    assert_eq!(published.len(), expected_total, "events published");

    let seen = expect_exactly(followers, &log, Duration::from_secs(20), true).await;
    assert_eq!(seen.len(), 2 * replicas.len());
    assert_identical_frames(&seen);
    let epoch = pg
        .server
        .epoch(&pg.db, &pg.schema)
        .await
        .expect("read the epoch");
    for id in &log {
        assert!(
            id.starts_with(&format!("{epoch}-")),
            "{id} has epoch {epoch}"
        );
    }
    seen
}
