//! Session ownership: the first stream for an `Mcp-Session-Id` binds it to its owner (the whole
//! principal: issuer, tenant and subject of a token; the tenant in header mode); another owner
//! presenting it is refused. Each new stream for a session *claims* it with a higher generation,
//! and older streams for it end — on this replica through the broadcaster's stream claims
//! (`broadcast::stream_claims`: which local stream holds a session), on others through the
//! control channel (`bridge::control`).

pub mod claim_rate;
pub mod client_rate;
pub mod memory;
pub mod minted;
pub mod postgres;
pub mod recent_owners;

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::broadcast::Broadcaster;
use crate::db::DbError;

/// Who owns a session, as the stores compare it.
///
/// `key` names the whole principal and is what the stores keep. `legacy` is what the previous
/// release stored for the same principal (it kept only one string, the token's `sub`), when that
/// string still names the whole principal: a row written by that release is this owner's only then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    key: String,
    legacy: Legacy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Legacy {
    /// Rows of the previous release never belong to this owner.
    Never,
    /// Rows of the previous release whose principal is this value (`None`: none) do.
    Principal(Option<String>),
}

impl Owner {
    /// No credential at all (`FANOUT_SUBSCRIBER_AUTH=none`, or header mode without the header):
    /// the session id is the only secret.
    pub fn anonymous() -> Owner {
        Owner {
            key: serde_json::json!(["anonymous"]).to_string(),
            legacy: Legacy::Principal(None),
        }
    }

    /// Header mode: the tenant the trusted gateway vouches for is the whole principal.
    pub fn tenant(tenant: &str) -> Owner {
        Owner {
            key: serde_json::json!(["tenant", tenant]).to_string(),
            legacy: Legacy::Principal(Some(tenant.to_owned())),
        }
    }

    /// A verified token: its issuer, tenant and subject together.
    pub fn token(issuer: Option<&str>, tenant: Option<&str>, subject: &str) -> Owner {
        Owner {
            key: serde_json::json!(["token", issuer, tenant, subject]).to_string(),
            legacy: Legacy::Never,
        }
    }

    /// Nobody: what a session created upstream without a usable identity is recorded as owned
    /// by (proxy mode). No request ever presents this owner.
    pub fn nobody() -> Owner {
        Owner {
            key: serde_json::json!(["nobody"]).to_string(),
            legacy: Legacy::Never,
        }
    }

    /// The stored key naming the whole principal.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What goes in the previous release's `principal` column: the value that release compared
    /// when it still names the whole principal (so both releases agree on such a session during a
    /// rolling upgrade), else the key (which no token's `sub` alone is).
    pub fn stored_principal(&self) -> Option<&str> {
        match &self.legacy {
            Legacy::Principal(p) => p.as_deref(),
            Legacy::Never => Some(&self.key),
        }
    }

    /// Whether rows the previous release wrote with the same `principal` are this owner's.
    pub fn owns_legacy_rows(&self) -> bool {
        matches!(self.legacy, Legacy::Principal(_))
    }
}

/// Whose a session is, as seen by one owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// The session is not recorded.
    Unknown,
    /// It is this owner's.
    Mine,
    /// It belongs to another owner.
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the session belongs to another principal")]
    Forbidden,
    #[error("the session store is unavailable: {0}")]
    Unavailable(#[source] DbError),
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Binds `session` to `owner` (first use) or checks it is theirs, and claims it for a new
    /// stream: returns the claim's generation, higher than every earlier claim.
    async fn claim(&self, session: &str, owner: &Owner) -> Result<u64, SessionError>;

    /// Binds or checks ownership without claiming (long-poll).
    async fn check(&self, session: &str, owner: &Owner) -> Result<(), SessionError>;

    /// Records a session an upstream created (proxy mode), owned by `owner`; a no-op if known.
    async fn register(&self, session: &str, owner: &Owner) -> Result<(), SessionError>;

    /// Whether the session was recorded (proxy mode: an unknown session's GET is `404`).
    async fn known(&self, session: &str) -> Result<bool, SessionError>;

    /// Whose the session is, seen by `owner`, without binding it; when it is `owner`'s, marks it
    /// used as a poll does (proxy mode: a request forwarded in it, its `DELETE`). An unknown
    /// session stays unknown. A session
    /// used only through the proxy is in use: the trim past `FANOUT_MAX_SESSIONS` and idle
    /// cleanup must not take it from its owner while requests come.
    async fn use_if_owned(&self, session: &str, owner: &Owner) -> Result<Ownership, SessionError>;

    /// [`SessionStore::use_if_owned`] for a request the proxy forwards in the session, where
    /// "the owner's" and "unknown" lead to the same thing (it goes upstream): it may answer "the
    /// owner's" from what the store read lately, without asking again (Postgres mode:
    /// [`recent_owners`]). Never "another's" from memory.
    async fn use_to_forward(
        &self,
        session: &str,
        owner: &Owner,
    ) -> Result<Ownership, SessionError> {
        self.use_if_owned(session, owner).await
    }

    /// Forgets a session (proxy mode: after the client's `DELETE`).
    async fn forget(&self, session: &str) -> Result<(), SessionError>;

    /// Marks sessions as in use (their streams are open), so idle-session cleanup spares them.
    async fn touch(&self, sessions: &[String]) -> Result<(), SessionError>;
}

/// How often a replica touches the sessions its open streams hold.
pub const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A session marked by a stream (its claim, each touch) this recently holds an open stream: the
/// trim past `FANOUT_MAX_SESSIONS` spares it. Two and a half touches, so one late or failed touch
/// does not lose it.
pub const STREAM_LEASE: std::time::Duration = std::time::Duration::from_secs(150);

/// Touches the sessions held by this replica's open streams, every [`TOUCH_EVERY`], until `stop`.
pub async fn keep_alive(
    broadcaster: Broadcaster,
    sessions: Arc<dyn SessionStore>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(TOUCH_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let held = broadcaster.held_sessions();
        if held.is_empty() {
            continue;
        }
        if let Err(error) = sessions.touch(&held).await {
            tracing::warn!(%error, sessions = held.len(), "cannot mark open sessions as in use");
        }
    }
}
