//! A deployment's log: a database on the shared test Postgres and a schema, with the environment
//! that points replicas at it, starting them, and reading the log table (the truth the delivery
//! checks compare against).

use futures::future::join_all;
use serde_json::Value;

use crate::launch::{dedup, owned, start_owned, ADMIN_TOKEN};
use crate::postgres::{self, PgServer};
use crate::replica::Replica;

/// Where a deployment keeps its log: a server, a database on it and a schema; optionally the admin
/// token its replicas are started with.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub server: PgServer,
    pub db: String,
    pub schema: String,
    /// `FANOUT_ADMIN_TOKENS` of its replicas, when set ([`Deployment::with_admin`]).
    pub admin_token: Option<String>,
}

impl Deployment {
    /// A fresh database on the shared server, with a fresh schema name starting with `schema_prefix`.
    pub async fn fresh(schema_prefix: &str) -> Deployment {
        let (server, db) = postgres::shared_database()
            .await
            .expect("a database on the shared Postgres");
        Deployment::on(server, &db, schema_prefix)
    }

    /// A deployment on database `db` of `server` (an own cluster, PgBouncer), with a fresh schema
    /// name starting with `schema_prefix`.
    pub fn on(server: &PgServer, db: &str, schema_prefix: &str) -> Deployment {
        Deployment {
            server: server.clone(),
            db: db.to_string(),
            schema: postgres::unique_name(schema_prefix),
            admin_token: None,
        }
    }

    /// Its replicas are started with `FANOUT_ADMIN_TOKENS` = [`ADMIN_TOKEN`].
    pub fn with_admin(self) -> Deployment {
        Deployment {
            admin_token: Some(ADMIN_TOKEN.to_string()),
            ..self
        }
    }

    /// The same database with another schema (a second deployment).
    pub fn with_schema(&self, schema: &str) -> Deployment {
        Deployment {
            schema: schema.to_string(),
            ..self.clone()
        }
    }

    /// The pool URL of the database.
    pub fn url(&self) -> String {
        self.server.url(&self.db)
    }

    /// The environment of a replica of this deployment: `DATABASE_URL`, `FANOUT_SCHEMA`, the admin
    /// token if set, then `extra` (which may override any of them).
    pub fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = vec![
            ("DATABASE_URL".to_string(), self.url()),
            ("FANOUT_SCHEMA".to_string(), self.schema.clone()),
        ];
        if let Some(token) = &self.admin_token {
            env.push(("FANOUT_ADMIN_TOKENS".to_string(), token.clone()));
        }
        env.extend(owned(extra));
        dedup(env)
    }

    /// Starts one replica of this deployment and waits for `/readyz` 200 (migrations applied,
    /// LISTEN connected).
    pub async fn replica(&self, label: &str, extra: &[(&str, &str)]) -> Replica {
        start_owned(label, &self.env(extra)).await
    }

    /// Starts one replica of this deployment listening on `addr` (the address of a replica that
    /// was killed, to restart it where its clients reconnect; or a [`postgres::free_port`]) and
    /// waits until it is ready.
    pub async fn replica_at(
        &self,
        label: &str,
        addr: std::net::SocketAddr,
        extra: &[(&str, &str)],
    ) -> Replica {
        let addr = addr.to_string();
        let mut all = vec![("FANOUT_ADDR", addr.as_str())];
        all.extend_from_slice(extra);
        self.replica(label, &all).await
    }

    /// Starts `n` replicas at once (so migrations race, as in a real rollout) and waits until every
    /// one is ready.
    pub async fn replicas(&self, prefix: &str, n: usize, extra: &[(&str, &str)]) -> Vec<Replica> {
        let env = self.env(extra);
        join_all((0..n).map(|i| {
            let env = env.clone();
            async move { start_owned(&format!("{prefix}{i}"), &env).await }
        }))
        .await
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

    /// `SELECT <schema>.publish(method, params)` in its own transaction; panics on an error.
    pub async fn sql_publish(
        &self,
        client: &tokio_postgres::Client,
        method: &str,
        params: &Value,
    ) -> String {
        postgres::sql_publish(client, &self.schema, method, Some(params), None, None)
            .await
            .unwrap_or_else(|e| panic!("SELECT {}.publish(…): {e}", self.schema))
    }

    /// `SELECT <schema>.publish(method, params, tenant, session)` of a publish body; the id, or the
    /// error's text.
    pub async fn try_sql_publish(
        &self,
        client: &tokio_postgres::Client,
        body: &Value,
        tenant: Option<&str>,
        session: Option<&str>,
    ) -> Result<String, String> {
        let method = body["method"].as_str().expect("a method");
        postgres::sql_publish(
            client,
            &self.schema,
            method,
            body.get("params"),
            tenant,
            session,
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// Runs SQL on the test database and returns psql-like text.
    pub async fn psql(&self, sql: &str) -> String {
        self.server
            .psql(&self.db, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}
