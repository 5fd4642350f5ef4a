//! Opening a subscriber, the same way for every kind (the SSE GET stream, the 2026 listen stream,
//! a long-poll that waits): a replica that drains or is full sheds it, a slot is taken (counted,
//! given back on drop), the log's bounds are read, a GET stream's session is claimed, and a stream
//! is tied to its socket (the write-stall cut, the backlog bound). What is left to each protocol is
//! its answer and its framing.

use std::net::IpAddr;
use std::time::SystemTime;

use tokio::time::Instant;

use super::error::AppError;
use crate::broadcast::{StreamClaim, SubscriberGuard, SubscriberKind};
use crate::log::Bounds;
use crate::per_client::ClientKey;
use crate::server::ConnInfo;
use crate::session::{Owner, SessionError};
use crate::state::AppState;

use crate::metrics::ShedReason;

/// Counts `shed` (in `subscribers_shed_total{reason}`) and hands it back.
pub(super) fn counted(shed: ShedReason, st: &AppState) -> ShedReason {
    st.metrics.shed(shed);
    shed
}

/// What a subscriber asks to open.
pub(super) struct Request<'a> {
    pub kind: SubscriberKind,
    pub session: Option<String>,
    /// The session's owner: the session is claimed for it (the older stream for it ends).
    pub owner: Option<&'a Owner>,
    /// When the subscriber's credential expires (leeway included).
    pub expires_at: Option<SystemTime>,
}

/// A subscriber that may start.
pub(super) struct Opened {
    pub guard: SubscriberGuard,
    pub bounds: Bounds,
    /// The stream's hold on its session, if it named one.
    pub claim: Option<StreamClaim>,
    /// When the stream ends with its credential.
    pub expires: Option<Instant>,
}

pub(super) enum Open {
    Opened(Opened),
    Shed(ShedReason),
}

/// The shared setup of a stream. `Err` only when the session belongs to another principal.
pub(super) async fn open(
    st: &AppState,
    conn: &ConnInfo,
    req: Request<'_>,
) -> Result<Open, AppError> {
    let mut guard = match slot(st, req.kind, req.session.clone(), conn.client) {
        Ok(g) => g,
        Err(shed) => return Ok(Open::Shed(shed)),
    };
    // A session claimed too often by one owner (a client reconnecting in a loop) is shed before
    // the database is asked anything: its claim would be a write (`session::claim_rate`).
    if let (Some(rate), Some(s), Some(owner)) = (&st.claim_rate, &req.session, req.owner) {
        if !rate.take(s, owner, std::time::Instant::now()) {
            drop(guard);
            return Ok(Open::Shed(counted(ShedReason::ClaimRate, st)));
        }
    }
    // So is a client writing sessions faster than its allowance (a new session id each time,
    // which the claim rate above does not see: `session::client_rate`).
    if let (Some(rate), Some(_), Some(_)) = (&st.session_writes, &req.session, req.owner) {
        if rate.take(conn.client, std::time::Instant::now()).is_err() {
            drop(guard);
            return Ok(Open::Shed(counted(ShedReason::SessionWrites, st)));
        }
    }
    let bounds = match st.log.bounds().await {
        Ok(b) => b,
        Err(error) => {
            tracing::warn!(%error, kind = req.kind.as_str(), "cannot read the log bounds; shedding the subscriber");
            drop(guard);
            return Ok(Open::Shed(counted(ShedReason::Database, st)));
        }
    };
    // Bind the session to this principal (403 for another) and claim it: the older stream for
    // it, on any replica, ends. Only now, so a shed subscriber takes over nothing.
    let claim = match req.session.as_deref().zip(req.owner) {
        None => None,
        Some((s, owner)) => match st.sessions.claim(s, owner).await {
            Ok(generation) => Some((s, generation)),
            Err(SessionError::Forbidden) => {
                return Err(AppError::Forbidden(
                    "this session belongs to another principal",
                ))
            }
            Err(SessionError::Unavailable(error)) => {
                tracing::warn!(%error, "cannot claim the session; shedding the stream");
                drop(guard);
                return Ok(Open::Shed(counted(ShedReason::Database, st)));
            }
        },
    };
    guard.watch_socket(conn.socket.clone());
    guard.watch_stream(conn.stream_cut());
    conn.socket.bound_backlog(st.config.max_lag_bytes());
    Ok(Open::Opened(Opened {
        guard,
        bounds,
        claim: claim.map(|(s, g)| st.broadcaster.claim_session(s, g)),
        expires: expiry(req.expires_at),
    }))
}

/// A subscriber slot for `client`, unless the replica drains or is full, or the client holds its
/// share (`FANOUT_MAX_SUBSCRIBERS_PER_CLIENT`). The shed is counted.
pub(super) fn slot(
    st: &AppState,
    kind: SubscriberKind,
    session: Option<String>,
    client: IpAddr,
) -> Result<SubscriberGuard, ShedReason> {
    if st.lifecycle.is_draining() {
        return Err(counted(ShedReason::Draining, st));
    }
    st.broadcaster
        .try_register_for(kind, session, ClientKey::of(client))
        .map_err(|shed| counted(shed, st))
}

/// When a credential expiring at `at` ends a subscriber, on the runtime's clock.
pub(super) fn expiry(at: Option<SystemTime>) -> Option<Instant> {
    at.and_then(|at| {
        Instant::now().checked_add(at.duration_since(SystemTime::now()).unwrap_or_default())
    })
}
