//! Sessions shared by every replica through `<schema>.sessions`.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::types::Type;

use super::{SessionError, SessionStore};
use crate::bridge::control_channel;
use crate::log::postgres::{column, timed, DbError};

pub struct PgSessions {
    pool: Pool,
    timeout: Duration,
    claim_sql: String,
    check_sql: String,
    register_sql: String,
    known_sql: String,
    forget_sql: String,
    touch_sql: String,
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
            register_sql: format!(
                "INSERT INTO {schema}.sessions (session, principal) VALUES ($1, $2) \
                 ON CONFLICT (session) DO NOTHING RETURNING 1::bigint"
            ),
            known_sql: format!("SELECT 1::bigint FROM {schema}.sessions WHERE session = $1 AND $2::text IS NULL"),
            // The end message is sent in the same statement: every replica ends the session's streams.
            forget_sql: format!(
                "WITH d AS (DELETE FROM {schema}.sessions WHERE session = $1 AND $2::text IS NULL RETURNING 1) \
                 SELECT 1::bigint, pg_notify($3, 'end 0 ' || $1)"
            ),
            touch_sql: format!(
                "UPDATE {schema}.sessions SET last_seen = clock_timestamp() WHERE session = ANY($1)"
            ),
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
        rows.first()
            .map(|r| column::<i64>(r, 0))
            .transpose()
            .map_err(|e| SessionError::Unavailable(e.to_string()))
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

    async fn register(&self, session: &str, principal: Option<&str>) -> Result<(), SessionError> {
        self.run(&self.register_sql, session, principal, false)
            .await
            .map(|_| ())
    }

    async fn known(&self, session: &str) -> Result<bool, SessionError> {
        Ok(self
            .run(&self.known_sql, session, None, false)
            .await?
            .is_some())
    }

    async fn forget(&self, session: &str) -> Result<(), SessionError> {
        self.run(&self.forget_sql, session, None, true)
            .await
            .map(|_| ())
    }

    async fn touch(&self, sessions: &[String]) -> Result<(), SessionError> {
        timed(self.timeout, async {
            let client = self.pool.get().await.map_err(DbError::Checkout)?;
            client
                .query_typed(&self.touch_sql, &[(&sessions, Type::TEXT_ARRAY)])
                .await
                .map_err(DbError::Query)
        })
        .await
        .map(|_| ())
        .map_err(|e| SessionError::Unavailable(e.to_string()))
    }
}
