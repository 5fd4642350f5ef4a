//! Migrations: numbered SQL files in `sql/`, the schema substituted, applied in one transaction
//! under a transaction-scoped advisory lock (many replicas may start at once; PgBouncer-safe),
//! recorded in `<schema>.migrations`.

use tokio_postgres::Client;

use crate::db::{column, DbError};

/// (version, name, SQL with `{{schema}}`)
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "event_log",
        include_str!("../../../sql/001_event_log.sql"),
    ),
    (2, "sessions", include_str!("../../../sql/002_sessions.sql")),
    (3, "replicas", include_str!("../../../sql/003_replicas.sql")),
    (
        4,
        "replica_state",
        include_str!("../../../sql/004_replica_state.sql"),
    ),
    (
        5,
        "session_owner",
        include_str!("../../../sql/005_session_owner.sql"),
    ),
    (
        6,
        "compact_json_one_pass",
        include_str!("../../../sql/006_compact_json_one_pass.sql"),
    ),
    (
        7,
        "append_events",
        include_str!("../../../sql/007_append_events.sql"),
    ),
    (
        8,
        "session_leases",
        include_str!("../../../sql/008_session_leases.sql"),
    ),
];

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: String,
}

/// The migrations with the schema substituted. `schema` is validated by the config parser.
pub fn render(schema: &str) -> Vec<Migration> {
    MIGRATIONS
        .iter()
        .map(|(version, name, sql)| Migration {
            version: *version,
            name,
            sql: sql.replace("{{schema}}", schema),
        })
        .collect()
}

fn prologue(schema: &str) -> String {
    format!(
        "SELECT pg_advisory_xact_lock(hashtext('mcp-fanout migrate {schema}'));\n\
         CREATE SCHEMA IF NOT EXISTS {schema};\n\
         CREATE TABLE IF NOT EXISTS {schema}.migrations (\n    \
             version    integer PRIMARY KEY,\n    \
             name       text NOT NULL,\n    \
             applied_at timestamptz NOT NULL DEFAULT now()\n\
         );\n"
    )
}

/// Everything a DBA runs by hand (`mcp-fanout migrate --print-sql`), in one transaction. It
/// creates every migration; for an upgrade, apply only the versions missing from
/// `<schema>.migrations` (the script fails harmlessly, rolled back, on objects that exist).
pub fn print_sql(schema: &str) -> String {
    let mut out = String::from("BEGIN;\n");
    out.push_str(&prologue(schema));
    for m in render(schema) {
        out.push_str(&format!(
            "\n-- migration {}: {}\n{}\n",
            m.version, m.name, m.sql
        ));
        out.push_str(&format!(
            "INSERT INTO {schema}.migrations (version, name) VALUES ({}, '{}');\n",
            m.version, m.name
        ));
    }
    out.push_str("COMMIT;\n");
    out
}

/// The statements of `apply` and `pending`, schema-qualified once.
struct MigrateSql {
    prologue: String,
    table: String,
    versions: String,
    record: String,
}

impl MigrateSql {
    fn new(schema: &str) -> MigrateSql {
        MigrateSql {
            prologue: prologue(schema),
            table: format!("{schema}.migrations"),
            versions: format!("SELECT version FROM {schema}.migrations"),
            record: format!("INSERT INTO {schema}.migrations (version, name) VALUES ($1, $2)"),
        }
    }
}

/// Applies what is missing; returns the versions applied now.
pub async fn apply(
    client: &mut deadpool_postgres::Client,
    schema: &str,
) -> Result<Vec<i32>, DbError> {
    let sql = MigrateSql::new(schema);
    let tx = client.transaction().await.map_err(DbError::Query)?;
    tx.batch_execute(&sql.prologue)
        .await
        .map_err(DbError::Query)?;
    let done: Vec<i32> = tx
        .query_typed(&sql.versions, &[])
        .await
        .map_err(DbError::Query)?
        .iter()
        .map(|r| column(r, 0))
        .collect::<Result<_, _>>()?;
    let mut applied = Vec::new();
    for m in render(schema) {
        if done.contains(&m.version) {
            continue;
        }
        tx.batch_execute(&m.sql)
            .await
            .map_err(|e| DbError::Migration {
                version: m.version,
                source: e,
            })?;
        tx.query_typed(
            &sql.record,
            &[
                (&m.version, tokio_postgres::types::Type::INT4),
                (&m.name, tokio_postgres::types::Type::TEXT),
            ],
        )
        .await
        .map_err(DbError::Query)?;
        applied.push(m.version);
    }
    tx.commit().await.map_err(DbError::Query)?;
    Ok(applied)
}

/// Whether every known migration is recorded (for `FANOUT_MIGRATE=skip`).
pub async fn pending(client: &Client, schema: &str) -> Result<Vec<i32>, DbError> {
    let sql = MigrateSql::new(schema);
    let exists: bool = client
        .query_typed(
            "SELECT to_regclass($1) IS NOT NULL",
            &[(&sql.table, tokio_postgres::types::Type::TEXT)],
        )
        .await
        .map_err(DbError::Query)?
        .first()
        .map(|r| column(r, 0))
        .transpose()?
        .unwrap_or(false);
    let done: Vec<i32> = if exists {
        client
            .query_typed(&sql.versions, &[])
            .await
            .map_err(DbError::Query)?
            .iter()
            .map(|r| column(r, 0))
            .collect::<Result<_, _>>()?
    } else {
        vec![]
    };
    Ok(MIGRATIONS
        .iter()
        .map(|(v, _, _)| *v)
        .filter(|v| !done.contains(v))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_substituted_everywhere() {
        for m in render("tenant_a") {
            assert!(!m.sql.contains("{{schema}}"));
            assert!(
                m.sql.contains(" TABLE tenant_a.") || m.sql.contains(" FUNCTION tenant_a."),
                "{}",
                m.name
            );
        }
        let script = print_sql("tenant_a");
        assert!(script.starts_with("BEGIN;") && script.trim_end().ends_with("COMMIT;"));
        assert!(script.contains("pg_advisory_xact_lock"));
    }
}
