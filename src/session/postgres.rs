//! Sessions shared by every replica through `<schema>.sessions`.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::types::Type;

use super::{SessionError, SessionStore};
use crate::bridge::control_channel;
use crate::log::postgres::{timed, DbError};

pub struct PgSessions {
    pool: Pool,
    timeout: Duration,
    claim_sql: String,
    check_sql: String,
    channel: String,
}

impl PgSessions {
    pub fn new(pool: Pool, schema: &str, timeout: Duration) -> PgSessions {
        let upsert = |bump: &str| {
            format!(
                "INSERT INTO {schema}.sessions AS t (session, principal) VALUES ($1, $2) \
                 ON CONFLICT (session) DO UPDATE SET {bump}last_seen = clock_timestamp() \
                 WHERE t.principal IS NOT DISTINCT FROM EXCLUDED.principal \
                 RETURNING t.generation"
            )
        };
        PgSessions {
            pool,
            timeout,
            // The claim and its takeover message are one statement: no claim without a message.
            claim_sql: format!(
                "WITH c AS ({}) SELECT generation, pg_notify($3, 'takeover ' || generation || ' ' || $1) FROM c",
                upsert("generation = t.generation + 1, ")
            ),
            check_sql: upsert(""),
            channel: control_channel(schema),
        }
    }

    async fn run(
        &self,
        sql: &str,
        session: &str,
        principal: Option<&str>,
        with_channel: bool,
    ) -> Result<Option<i64>, SessionError> {
        let rows = timed(self.timeout, async {
            let client = self.pool.get().await.map_err(DbError::Checkout)?;
            let principal = principal.map(str::to_owned);
            let rows = if with_channel {
                client
                    .query_typed(
                        sql,
                        &[
                            (&session, Type::TEXT),
                            (&principal, Type::TEXT),
                            (&self.channel, Type::TEXT),
                        ],
                    )
                    .await
            } else {
                client
                    .query_typed(sql, &[(&session, Type::TEXT), (&principal, Type::TEXT)])
                    .await
            };
            rows.map_err(DbError::Query)
        })
        .await
        .map_err(|e| SessionError::Unavailable(e.to_string()))?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0)))
    }
}

#[async_trait]
impl SessionStore for PgSessions {
    async fn claim(&self, session: &str, principal: Option<&str>) -> Result<u64, SessionError> {
        match self.run(&self.claim_sql, session, principal, true).await? {
            Some(generation) => Ok(generation as u64),
            None => Err(SessionError::Forbidden),
        }
    }

    async fn check(&self, session: &str, principal: Option<&str>) -> Result<(), SessionError> {
        match self.run(&self.check_sql, session, principal, false).await? {
            Some(_) => Ok(()),
            None => Err(SessionError::Forbidden),
        }
    }
}
