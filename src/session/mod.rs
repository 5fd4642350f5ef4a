//! Session ownership (SPEC §3.5): the first stream for an `Mcp-Session-Id` binds it to its
//! principal; another principal presenting it is refused. Each new stream for a session *claims*
//! it with a higher generation, and older streams for it end — on this replica through the
//! broadcaster, on others through the control channel.

pub mod memory;
pub mod minted;
pub mod postgres;

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::broadcast::Broadcaster;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the session belongs to another principal")]
    Forbidden,
    #[error("the session store is unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Binds `session` to `principal` (first use) or checks it is theirs, and claims it for a new
    /// stream: returns the claim's generation, higher than every earlier claim.
    async fn claim(&self, session: &str, principal: Option<&str>) -> Result<u64, SessionError>;

    /// Binds or checks ownership without claiming (long-poll).
    async fn check(&self, session: &str, principal: Option<&str>) -> Result<(), SessionError>;

    /// Records a session an upstream created (proxy mode), owned by `principal`; a no-op if known.
    async fn register(&self, session: &str, principal: Option<&str>) -> Result<(), SessionError>;

    /// Whether the session was recorded (proxy mode: an unknown session's GET is `404`).
    async fn known(&self, session: &str) -> Result<bool, SessionError>;

    /// Forgets a session (proxy mode: after the client's `DELETE`).
    async fn forget(&self, session: &str) -> Result<(), SessionError>;

    /// Marks sessions as in use (their streams are open), so idle-session cleanup spares them.
    async fn touch(&self, sessions: &[String]) -> Result<(), SessionError>;
}

/// How often a replica touches the sessions its open streams hold.
pub const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

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
