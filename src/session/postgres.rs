//! Sessions shared by every replica through `<schema>.sessions`.
//!
//! A row's owner is `owner` (the whole principal, see [`Owner`]). Rows written by the previous
//! release have no `owner`, only `principal`; they are an owner's only when
//! [`Owner::owns_legacy_rows`] and the principals are equal.

use async_trait::async_trait;
use tokio_postgres::types::{ToSql, Type};

use super::recent_owners::RecentOwners;
use super::{Owner, Ownership, SessionError, SessionStore};
use crate::bridge::{control_channel, ControlMessage};
use crate::db::{column, Db, Params};

/// Whether row `t` belongs to the owner of `$2` (principal), `$3` (owner key), `$4` (owns legacy
/// rows).
const OWNED: &str =
    "(t.owner = $3 OR (t.owner IS NULL AND $4 AND t.principal IS NOT DISTINCT FROM $2))";

/// A poll's check of a session its owner used this recently is a read: no write, no commit to
/// wait for (every poll naming a session was a durable write, a WAL flush each).
const CHECK_FRESH: std::time::Duration = std::time::Duration::from_secs(60);

pub struct PgSessions {
    db: Db,
    sql: SessionSql,
    channel: String,
    /// Sessions whose owners this replica saw use them lately (forwarded requests).
    recent: RecentOwners,
}

/// The session store's statements, schema-qualified once.
struct SessionSql {
    claim: String,
    ownership: String,
    check: String,
    register: String,
    known: String,
    forget: String,
    touch: String,
}

impl SessionSql {
    fn new(schema: &str) -> SessionSql {
        let upsert = |columns: &str, values: &str, bump: &str| {
            format!(
                "INSERT INTO {schema}.sessions AS t (session, principal, owner{columns}) \
                 VALUES ($1, $2, $3{values}) \
                 ON CONFLICT (session) DO UPDATE SET {bump}last_seen = clock_timestamp() \
                 WHERE {OWNED} RETURNING t.generation"
            )
        };
        SessionSql {
            // The claim and its takeover message are one statement: no claim without a message.
            // A new row's generation is the sequence's (the column's default); a claim of a known
            // row draws from it too, and leases the row (`streamed_at`).
            claim: format!(
                "WITH c AS ({}) SELECT generation, pg_notify($5, {}) FROM c",
                upsert(
                    ", streamed_at",
                    ", clock_timestamp()",
                    &format!(
                        "generation = greatest(nextval('{schema}.session_generation'), \
                         t.generation + 1), streamed_at = clock_timestamp(), "
                    ),
                ),
                ControlMessage::takeover_sql("generation", "$1"),
            ),
            // Whose the row is: 2: the owner's, used within CHECK_FRESH; 1: the owner's; 0:
            // another's (no row: unknown).
            ownership: format!(
                "SELECT CASE WHEN {OWNED} THEN CASE WHEN t.last_seen > clock_timestamp() - \
                 make_interval(secs => {}) THEN 2 ELSE 1 END ELSE 0 END::bigint \
                 FROM {schema}.sessions AS t WHERE t.session = $1",
                CHECK_FRESH.as_secs()
            ),
            check: upsert("", "", ""),
            register: format!(
                "INSERT INTO {schema}.sessions (session, principal, owner) VALUES ($1, $2, $3) \
                 ON CONFLICT (session) DO NOTHING"
            ),
            known: format!("SELECT 1::bigint FROM {schema}.sessions WHERE session = $1"),
            // The end message is sent in the same statement: every replica ends the session's streams.
            forget: format!(
                "WITH d AS (DELETE FROM {schema}.sessions WHERE session = $1 RETURNING 1) \
                 SELECT 1::bigint, pg_notify($2, {})",
                ControlMessage::end_sql("$1"),
            ),
            touch: format!(
                "UPDATE {schema}.sessions SET last_seen = clock_timestamp(), \
                 streamed_at = clock_timestamp() WHERE session = ANY($1)"
            ),
        }
    }
}

impl PgSessions {
    pub fn new(db: Db, schema: &str) -> PgSessions {
        PgSessions {
            db,
            sql: SessionSql::new(schema),
            channel: control_channel(schema),
            recent: RecentOwners::new(),
        }
    }

    /// Runs `sql`; the first column of its first row, if any.
    async fn run(&self, sql: &str, params: &Params<'_>) -> Result<Option<i64>, SessionError> {
        let row = self
            .db
            .query_first(sql, params)
            .await
            .map_err(SessionError::Unavailable)?;
        row.as_ref()
            .map(|r| column::<i64>(r, 0))
            .transpose()
            .map_err(SessionError::Unavailable)
    }

    /// Runs `sql` with the session and the owner as `$1` … `$4` (and the control channel as `$5`).
    async fn run_owned(
        &self,
        sql: &str,
        session: &str,
        owner: &Owner,
        with_channel: bool,
    ) -> Result<Option<i64>, SessionError> {
        let principal = owner.stored_principal();
        let key = owner.key();
        let legacy = owner.owns_legacy_rows();
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
            (&session, Type::TEXT),
            (&principal, Type::TEXT),
            (&key, Type::TEXT),
            (&legacy, Type::BOOL),
        ];
        if with_channel {
            params.push((&self.channel, Type::TEXT));
        }
        self.run(sql, &params).await
    }
}

#[async_trait]
impl SessionStore for PgSessions {
    async fn claim(&self, session: &str, owner: &Owner) -> Result<u64, SessionError> {
        match self
            .run_owned(&self.sql.claim, session, owner, true)
            .await?
        {
            Some(generation) => Ok(generation as u64),
            None => Err(SessionError::Forbidden),
        }
    }

    async fn check(&self, session: &str, owner: &Owner) -> Result<(), SessionError> {
        match self
            .run_owned(&self.sql.ownership, session, owner, false)
            .await?
        {
            Some(2) => return Ok(()),
            Some(0) => return Err(SessionError::Forbidden),
            // Unknown (bind it) or the owner's but not used lately (mark it).
            _ => {}
        }
        match self
            .run_owned(&self.sql.check, session, owner, false)
            .await?
        {
            Some(_) => Ok(()),
            None => Err(SessionError::Forbidden),
        }
    }

    async fn register(&self, session: &str, owner: &Owner) -> Result<(), SessionError> {
        let principal = owner.stored_principal();
        let key = owner.key();
        self.run(
            &self.sql.register,
            &[
                (&session, Type::TEXT),
                (&principal, Type::TEXT),
                (&key, Type::TEXT),
            ],
        )
        .await
        .map(|_| ())
    }

    async fn known(&self, session: &str) -> Result<bool, SessionError> {
        Ok(self
            .run(&self.sql.known, &[(&session, Type::TEXT)])
            .await?
            .is_some())
    }

    async fn use_if_owned(&self, session: &str, owner: &Owner) -> Result<Ownership, SessionError> {
        match self
            .run_owned(&self.sql.ownership, session, owner, false)
            .await?
        {
            None => Ok(Ownership::Unknown),
            Some(0) => Ok(Ownership::Other),
            // The owner's, used within CHECK_FRESH: a read only.
            Some(2) => Ok(Ownership::Mine),
            // The owner's, not used lately: marked (the upsert only bumps its owner's row).
            Some(_) => match self
                .run_owned(&self.sql.check, session, owner, false)
                .await?
            {
                Some(_) => Ok(Ownership::Mine),
                None => Ok(Ownership::Other),
            },
        }
    }

    async fn use_to_forward(
        &self,
        session: &str,
        owner: &Owner,
    ) -> Result<Ownership, SessionError> {
        if self.recent.is_theirs(session, owner.key()) {
            return Ok(Ownership::Mine);
        }
        let ownership = self.use_if_owned(session, owner).await?;
        if ownership == Ownership::Mine {
            self.recent.remember(session, owner.key());
        }
        Ok(ownership)
    }

    async fn forget(&self, session: &str) -> Result<(), SessionError> {
        self.recent.forget(session);
        self.run(
            &self.sql.forget,
            &[(&session, Type::TEXT), (&self.channel, Type::TEXT)],
        )
        .await
        .map(|_| ())
    }

    async fn touch(&self, sessions: &[String]) -> Result<(), SessionError> {
        self.db
            .execute(&self.sql.touch, &[(&sessions, Type::TEXT_ARRAY)])
            .await
            .map_err(SessionError::Unavailable)
    }
}
