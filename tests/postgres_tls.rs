//! Postgres over TLS (contract §2 `DATABASE_URL` "TLS via `sslmode`"; docs/postgres.md "TLS"): a
//! cluster of its own serves TLS with a certificate for `localhost` / `127.0.0.1` issued by a
//! private CA made here with the `openssl` CLI. With `sslmode=require` (pool, by host name) and
//! `sslmode=prefer` (LISTEN, by IP address) plus `FANOUT_DB_CA_FILE`, the replica verifies the
//! server, becomes ready, publishes and delivers, and every one of its backends — pool
//! (`mcp-fanout`) and LISTEN (`mcp-fanout-listen`) — is encrypted (`pg_stat_ssl`). Without the CA
//! file the handshake fails (the certificate is not trusted silently), and with the CA but a host
//! name the certificate does not name it fails too: those replicas stay unready (`/readyz`
//! `503`), log that the database is not ready and retry, and open no backend.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use mcp_fanout_testkit::postgres::{self, PgCluster};
use mcp_fanout_testkit::{
    body, open_stream_with, openssl::ca_and_server_cert, start_owned, wait_for, wait_until,
    Replica, SseRequest, ADMIN_TOKEN,
};

const T: Duration = Duration::from_secs(20);

/// Copies the server certificate and key into the cluster's data directory (owned by the server
/// user, key `0600`) and turns TLS on with a configuration reload.
async fn enable_tls(cluster: &PgCluster, certs: &Path) {
    let owner = postgres::server_user().expect("the server user");
    for (name, mode) in [("server.crt", 0o644), ("server.key", 0o600)] {
        let to = cluster.data_dir().join(name);
        std::fs::copy(certs.join(name), &to)
            .unwrap_or_else(|e| panic!("copy {name} into the data directory: {e}"));
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {name}: {e}"));
        if let Some(o) = owner {
            std::os::unix::fs::chown(&to, Some(o.uid), Some(o.gid))
                .unwrap_or_else(|e| panic!("chown {name}: {e}"));
        }
    }
    // ALTER SYSTEM cannot run in a transaction block: one statement per call.
    for sql in [
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "ALTER SYSTEM SET ssl = on",
        "SELECT pg_reload_conf()",
    ] {
        cluster
            .psql("postgres", sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}\n{}", cluster.log_tail()));
    }
    wait_until("the server to turn TLS on", T, || async {
        cluster
            .psql("postgres", "SHOW ssl")
            .await
            .is_ok_and(|v| v.trim() == "on")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tail()));
}

/// A replica that must not become ready: started without waiting for readiness, with the kit's
/// usual environment.
async fn spawn_unready(label: &str, env: &[(&str, &str)]) -> Replica {
    let mut all: Vec<(&str, &str)> = vec![
        ("FANOUT_ADDR", "127.0.0.1:0"),
        ("FANOUT_LOG_FORMAT", "json"),
        ("RUST_LOG", "info"),
        ("FANOUT_ADMIN_TOKENS", ADMIN_TOKEN),
    ];
    all.extend_from_slice(env);
    Replica::spawn(mcp_fanout_testkit::bin(), label, &all)
        .await
        .unwrap_or_else(|e| panic!("{label}: start: {e}"))
}

/// `r` logs "the database is not ready; retrying" at least twice (so it retried) and is still
/// unready after that; returns the first such line.
async fn expect_stays_unready(r: &Replica) -> String {
    let line = wait_for(&format!("{}: two failed attempts", r.label()), T, || {
        let lines: Vec<String> = r
            .logs()
            .into_iter()
            .filter(|l| l.contains("the database is not ready; retrying"))
            .collect();
        async move { (lines.len() >= 2).then(|| lines[0].clone()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; logs:\n{}", r.logs().join("\n")));
    assert_eq!(
        r.readyz().await.expect("/readyz").as_u16(),
        503,
        "{}: unready",
        r.label()
    );
    assert_eq!(
        r.admin_get("/healthz").await.expect("/healthz").status,
        200,
        "{}: but alive",
        r.label()
    );
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_to_postgres_is_verified_against_the_configured_ca() {
    let certs = mcp_fanout_testkit::tempfile::tempdir().expect("tempdir");
    ca_and_server_cert(certs.path());
    let cluster = PgCluster::start().await.expect("a Postgres cluster");
    enable_tls(&cluster, certs.path()).await;
    let db = cluster.fresh_database().await.expect("a database");
    let port = cluster.port();
    let schema = postgres::unique_name("tls");
    let ca = certs.path().join("ca.pem").to_string_lossy().into_owned();

    // ---- with the CA: verified TLS on every connection ----
    let pool_url = format!("postgres://postgres@localhost:{port}/{db}?sslmode=require");
    let listen_url = format!("postgres://postgres@127.0.0.1:{port}/{db}?sslmode=prefer");
    let env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), pool_url.clone()),
        ("FANOUT_LISTEN_DATABASE_URL".into(), listen_url),
        ("FANOUT_DB_CA_FILE".into(), ca.clone()),
        ("FANOUT_SCHEMA".into(), schema.clone()),
        ("FANOUT_ADMIN_TOKENS".into(), ADMIN_TOKEN.into()),
    ];
    // A control for the host-name case below: the same `hostaddr` form with the right name.
    let control_url =
        format!("postgres://postgres@localhost:{port}/{db}?hostaddr=127.0.0.1&sslmode=require");
    let mut control_env = env.clone();
    control_env.retain(|(k, _)| k != "DATABASE_URL" && k != "FANOUT_LISTEN_DATABASE_URL");
    control_env.push(("DATABASE_URL".into(), control_url));
    let (r, control) = tokio::join!(
        start_owned("tls-verified", &env),
        start_owned("tls-hostaddr", &control_env),
    );
    control
        .publish_ok(&body("tls-control", 0))
        .await
        .expect("the hostaddr form with the certificate's name works");
    drop(control);
    let mut s = open_stream_with(&r, SseRequest::mcp(), "stream over a TLS-backed replica").await;
    r.wait_subscribers(1, T).await.expect("registered");
    let id = r
        .publish_ok(&body("tls", 0))
        .await
        .expect("publish over TLS");
    let ev = s.next_event(T).await.expect("event").expect("open");
    assert_eq!(
        ev.id.as_deref(),
        Some(id.as_str()),
        "delivered through LISTEN over TLS"
    );
    assert!(
        cluster
            .server()
            .log_ids(&db, &schema)
            .await
            .expect("the log")
            .contains(&id),
        "committed"
    );

    let sql = format!(
        "SELECT a.application_name, s.ssl, coalesce(s.version, '') \
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = '{db}' AND a.application_name IN ('mcp-fanout', 'mcp-fanout-listen') \
         ORDER BY 1, 2"
    );
    let rows = cluster.psql("postgres", &sql).await.expect("pg_stat_ssl");
    let rows: Vec<&str> = rows.lines().collect();
    assert!(
        rows.iter().any(|l| l.starts_with("mcp-fanout|"))
            && rows.iter().any(|l| l.starts_with("mcp-fanout-listen|")),
        "both the pool and the LISTEN connection are connected: {rows:?}"
    );
    assert!(
        rows.iter().all(|l| l.split('|').nth(1) == Some("t")),
        "every connection of the replica uses TLS: {rows:?}"
    );

    // ---- without the CA: the private CA's certificate is not trusted ----
    let no_ca = format!(
        "postgres://postgres@localhost:{port}/{db}?sslmode=require&application_name=tls_no_ca"
    );
    // ---- with the CA, but a host name the certificate does not name ----
    let wrong_host = format!(
        "postgres://postgres@wrong-name.invalid:{port}/{db}?hostaddr=127.0.0.1&sslmode=require&application_name=tls_wrong_host"
    );
    let env_no_ca = [
        ("DATABASE_URL", no_ca.as_str()),
        ("FANOUT_SCHEMA", schema.as_str()),
    ];
    let env_wrong_host = [
        ("DATABASE_URL", wrong_host.as_str()),
        ("FANOUT_SCHEMA", schema.as_str()),
        ("FANOUT_DB_CA_FILE", ca.as_str()),
    ];
    let (untrusted, mismatched) = tokio::join!(
        spawn_unready("tls-no-ca", &env_no_ca),
        spawn_unready("tls-wrong-host", &env_wrong_host),
    );
    let (l1, l2) = tokio::join!(
        expect_stays_unready(&untrusted),
        expect_stays_unready(&mismatched)
    );
    for (what, line) in [("no CA", &l1), ("wrong host name", &l2)] {
        let l = line.to_ascii_lowercase();
        assert!(
            l.contains("certificate") || l.contains("tls") || l.contains("ssl"),
            "{what}: the failure names the TLS problem: {line}"
        );
    }
    let n = cluster
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name IN ('tls_no_ca', 'tls_wrong_host')",
        )
        .await
        .expect("count");
    assert_eq!(n.trim(), "0", "the refused handshakes opened no backend");

    // The verified replica was not disturbed.
    let id2 = r.publish_ok(&body("tls", 1)).await.expect("publish");
    let ev = s.next_event(T).await.expect("event").expect("open");
    assert_eq!(ev.id.as_deref(), Some(id2.as_str()));
}
