//! pgbench runs against the bench's database: the plain outbox (the baseline the publish targets
//! are measured against) and the parts of a publish transaction, each alone (`publish-latency`).

use std::time::Duration;

use crate::error::{BenchError, Result};
use crate::progress;

/// A connection LISTENing on a channel and draining what arrives, so a NOTIFY on it has a listener
/// to signal (as the replicas are for the log's channel); stops when dropped.
pub struct Listening {
    _client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<()>,
}

impl Listening {
    pub async fn on(
        server: &mcp_fanout_testkit::PgServer,
        db: &str,
        channel: &str,
    ) -> Result<Listening> {
        let (client, mut conn) =
            tokio_postgres::connect(&server.url(db), tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(async move {
            loop {
                let msg = futures::future::poll_fn(|cx| conn.poll_message(cx)).await;
                match msg {
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        });
        client.batch_execute(&format!("LISTEN {channel}")).await?;
        Ok(Listening {
            _client: client,
            driver,
        })
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The parts of a publish transaction, each run alone by one paced pgbench client
/// (`publish-latency`): what a round trip, a commit, the outbox, the log's two writes and its
/// NOTIFY each cost on this server. The log's parts run on copies of `mcp_fanout.head` and
/// `mcp_fanout.events` (columns, constraints, defaults and indexes; not the trigger), made by
/// [`parts_tables`].
pub const PARTS: [Part; 6] = [
    Part {
        case: "SELECT 1 (a round trip, nothing written)",
        script: "SELECT 1;\n",
        listen: None,
    },
    Part {
        case: "one-row INSERT, no index, autocommit (the commit: WAL flush)",
        script: "INSERT INTO bench_plain (x) VALUES (1);\n",
        listen: None,
    },
    Part {
        case: "outbox INSERT + pg_notify as one statement, no listener",
        script: OUTBOX_ONE_STATEMENT,
        listen: None,
    },
    Part {
        case: "outbox INSERT + pg_notify as one statement, one listener",
        script: OUTBOX_ONE_STATEMENT,
        listen: Some("bench_outbox"),
    },
    Part {
        case: "head UPDATE + events INSERT as one statement (copies, indexes, no trigger)",
        script: "WITH h AS (UPDATE bench_head SET seq = seq + 1 RETURNING seq) \
                 INSERT INTO bench_events (seq, method, params) \
                 SELECT seq, 'notifications/tools/list_changed', '{\"n\":1}' FROM h;\n",
        listen: None,
    },
    Part {
        case: "the same + the log's statement trigger (NOTIFY naming the max seq), one listener",
        script: "WITH h AS (UPDATE bench_head SET seq = seq + 1 RETURNING seq) \
                 INSERT INTO bench_events_notified (seq, method, params) \
                 SELECT seq, 'notifications/tools/list_changed', '{\"n\":1}' FROM h;\n",
        listen: Some("bench_events"),
    },
];

/// One part of a publish transaction: its row's case, its pgbench script, the channel a
/// connection LISTENs on while it runs.
pub struct Part {
    pub case: &'static str,
    pub script: &'static str,
    pub listen: Option<&'static str>,
}

const OUTBOX_ONE_STATEMENT: &str = "WITH o AS (INSERT INTO bench_outbox (payload) VALUES \
     ('{\"method\":\"notifications/tools/list_changed\",\"params\":{\"n\":1}}') RETURNING id) \
     SELECT pg_notify('bench_outbox', id::text) FROM o;\n";

/// The tables [`PARTS`] write (once per database, after the replica made its schema).
pub async fn parts_tables(server: &mcp_fanout_testkit::PgServer, db: &str) -> Result<()> {
    outbox_table(server, db).await?;
    server
        .query(
            db,
            "CREATE TABLE IF NOT EXISTS bench_plain (x int);\n\
             CREATE TABLE IF NOT EXISTS bench_head (LIKE mcp_fanout.head INCLUDING ALL);\n\
             INSERT INTO bench_head (seq) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM bench_head);\n\
             CREATE TABLE IF NOT EXISTS bench_events (LIKE mcp_fanout.events INCLUDING ALL);\n\
             CREATE TABLE IF NOT EXISTS bench_events_notified (LIKE mcp_fanout.events INCLUDING ALL);\n\
             CREATE OR REPLACE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$\n\
             BEGIN PERFORM pg_notify('bench_events', (SELECT max(seq)::text FROM new_rows)); RETURN NULL; END $$;\n\
             CREATE OR REPLACE TRIGGER bench_events_notify AFTER INSERT ON bench_events_notified\n\
             REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench_notify();",
        )
        .await?;
    Ok(())
}

/// The plain outbox transaction pgbench runs (`publish-throughput`, `publish-latency`).
pub const OUTBOX: &str = "BEGIN;\n\
     INSERT INTO bench_outbox (payload) VALUES ('{\"method\":\"notifications/tools/list_changed\",\"params\":{\"n\":1}}');\n\
     SELECT pg_notify('bench_outbox', currval('bench_outbox_id_seq')::text);\n\
     COMMIT;\n";

/// The plain outbox's table (one per database, created once).
pub async fn outbox_table(server: &mcp_fanout_testkit::PgServer, db: &str) -> Result<()> {
    server
        .query(
            db,
            "CREATE TABLE IF NOT EXISTS bench_outbox (id bigserial PRIMARY KEY, payload jsonb NOT NULL, \
             created_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    Ok(())
}

/// One pgbench client running `script` at `rate` transactions/s for `duration` (`-R`, so each
/// starts on schedule from idle, like the HTTP publishes); the latency of each, µs (from its
/// per-transaction log).
pub async fn pgbench_paced(
    server: &mcp_fanout_testkit::PgServer,
    db: &str,
    rate: f64,
    duration: Duration,
    script: &str,
) -> Result<Vec<u64>> {
    let dir = tempfile::tempdir().map_err(|e| BenchError::io("creating a temp dir", e))?;
    let file = dir.path().join("script.sql");
    std::fs::write(&file, script).map_err(|e| BenchError::io("writing the pgbench script", e))?;
    let pgbench = mcp_fanout_testkit::postgres::postgres_bin_dir()?.join("pgbench");
    progress(&format!("pgbench -c 1 -R {rate} -T {}", duration.as_secs()));
    let prefix = dir.path().join("tx");
    let out = tokio::process::Command::new(&pgbench)
        .args(["-n", "-c", "1", "-R"])
        .arg(rate.to_string())
        .arg("-T")
        .arg(duration.as_secs().max(1).to_string())
        .arg("--log")
        .arg("--log-prefix")
        .arg(&prefix)
        .arg("-f")
        .arg(&file)
        .arg(server.url(db))
        .current_dir(dir.path())
        .output()
        .await
        .map_err(|e| BenchError::io(format!("running {}", pgbench.display()), e))?;
    if !out.status.success() {
        return Err(BenchError::Failed(format!(
            "pgbench failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    // Log lines: client_id transaction_no time script_no time_epoch time_us [schedule_lag]; the
    // third field is the transaction's latency in µs (from its scheduled start with -R).
    let mut lat = Vec::new();
    for entry in
        std::fs::read_dir(dir.path()).map_err(|e| BenchError::io("reading the pgbench logs", e))?
    {
        let path = entry
            .map_err(|e| BenchError::io("reading the pgbench logs", e))?
            .path();
        if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("tx"))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| BenchError::io("reading a pgbench log", e))?;
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(total), Some(lag)) = (
                f.get(2).and_then(|v| v.parse::<u64>().ok()),
                f.get(6).and_then(|v| v.parse::<u64>().ok()),
            ) else {
                continue;
            };
            // With -R the logged time counts from the scheduled start: take the lag out, so it is
            // the transaction's own time as the HTTP figures are the request's.
            lat.push(total.saturating_sub(lag));
        }
    }
    Ok(lat)
}

/// Runs `pgbench -c 4 -j 2 -T <duration>` with a plain outbox script (INSERT + pg_notify in one
/// transaction) against `db`, with one LISTEN connection draining the notifications; returns tps.
pub async fn pgbench_outbox(
    server: &mcp_fanout_testkit::PgServer,
    db: &str,
    duration: Duration,
) -> Result<f64> {
    outbox_table(server, db).await?;
    let listening = Listening::on(server, db, "bench_outbox").await?;
    let dir = tempfile::tempdir().map_err(|e| BenchError::io("creating a temp dir", e))?;
    let script = dir.path().join("outbox.sql");
    std::fs::write(&script, OUTBOX).map_err(|e| BenchError::io("writing the pgbench script", e))?;
    let pgbench = mcp_fanout_testkit::postgres::postgres_bin_dir()?.join("pgbench");
    progress(&format!(
        "pgbench -c 4 -j 2 -T {} (outbox)",
        duration.as_secs()
    ));
    let out = tokio::process::Command::new(&pgbench)
        .args(["-n", "-c", "4", "-j", "2", "-T"])
        .arg(duration.as_secs().max(1).to_string())
        .arg("-f")
        .arg(&script)
        .arg(server.url(db))
        .output()
        .await
        .map_err(|e| BenchError::io(format!("running {}", pgbench.display()), e))?;
    drop(listening);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(BenchError::Failed(format!(
            "pgbench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .ok_or_else(|| BenchError::Protocol(format!("no tps in pgbench output: {text}")))
}
