//! `GET /poll?after=<id>&timeout=<secs>`: long-poll over the same feed, identity and visibility
//! as the stream (contract §3.4).

use std::time::Duration;

use tokio::time::Instant;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::error::AppError;
use super::headers;
use super::subscription;
use crate::broadcast::coalesce::coalesce;
use crate::broadcast::{Feed, SubscriberKind};
use crate::event::{Cursor, EventId, StoredEvent, Viewer};
use crate::log::Start;
use crate::mcp::{notification_json, RESYNC_METHODS};
use crate::metrics::ShedReason;
use crate::server::ConnInfo;
use crate::session::SessionError;
use crate::state::AppState;

pub const MAX_EVENTS: usize = 1000;
/// Log positions after which one answer stops, visible to the caller or not (checked after each
/// page of the feed's reads, so at most one page more): a cursor behind many
/// events it may not see (another tenant's) costs one bounded read per poll, not a scan of the
/// whole log (a single poll read ~200 pages, ~200 MB, for an empty answer).
pub const MAX_SCAN: u64 = 16 * 1024;
const DEFAULT_TIMEOUT_SECS: u64 = 30;
const MAX_TIMEOUT_SECS: u64 = 60;

pub async fn poll(
    State(st): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let timeout = match headers::query_param(query.as_deref(), "timeout") {
        None => DEFAULT_TIMEOUT_SECS,
        Some(t) => t.parse::<u64>().map_err(|_| AppError::InvalidField {
            field: "timeout",
            reason: "must be an integer ≥ 0 (seconds)".into(),
        })?,
    }
    .min(MAX_TIMEOUT_SECS);
    let after_raw = headers::query_param(query.as_deref(), "after");
    let cursor = Cursor::parse(after_raw.as_deref().map(str::as_bytes))?;
    let session = headers::session_id(&headers)?;
    let identity = st.subscriber_auth.identify(&headers).await?;
    if let Some(s) = &session {
        match st.sessions.check(s, &identity.session_owner()?).await {
            Ok(()) => {}
            Err(SessionError::Forbidden) => {
                return Err(AppError::Forbidden(
                    "this session belongs to another principal",
                ))
            }
            Err(SessionError::Unavailable(error)) => {
                tracing::warn!(%error, "cannot check the session");
                return Err(AppError::DatabaseUnavailable);
            }
        }
    }
    let epoch = st.log.epoch();
    let id = |seq| EventId { epoch, seq }.to_string();

    let bounds = st.log.bounds().await?;
    let after = match bounds.start_for(&cursor, epoch) {
        Start::Resync { head } => {
            let events: Vec<(Option<String>, String)> = RESYNC_METHODS
                .iter()
                .map(|m| (None, notification_json(m)))
                .collect();
            return Ok(answer(&events, &id(head), false));
        }
        Start::Fresh { head } => head,
        Start::Replay { after } => after,
    };
    let viewer = Viewer {
        tenant: identity.tenant.clone(),
        session: session.clone(),
    };
    let mut feed =
        Feed::new(st.broadcaster.clone(), st.log.clone(), viewer, after).with_log_head(bounds.head);
    let (mut events, mut more, mut cut) = collect(&mut feed).await?;
    if events.is_empty() && !cut && timeout > 0 && !st.lifecycle.is_draining() {
        let _slot = match subscription::slot(&st, SubscriberKind::Poll, session, conn.client) {
            Ok(slot) => slot,
            // A client past its share is told so (it would poll again at once otherwise).
            Err(ShedReason::ClientLimit) => return Err(AppError::TooManySubscribers),
            Err(_) => return Ok(answer(&[], &id(after), false)),
        };
        // Never wait past the credential's expiry.
        let wait = Instant::now() + Duration::from_secs(timeout);
        let until = subscription::expiry(identity.expires_at).map_or(wait, |e| e.min(wait));
        let wait = tokio::time::sleep_until(until);
        tokio::pin!(wait);
        while events.is_empty() && !cut {
            tokio::select! {
                _ = &mut wait => break,
                _ = st.broadcaster.closed() => break,
                _ = st.lifecycle.draining() => break,
                _ = feed.changed() => (events, more, cut) = collect(&mut feed).await?,
            }
        }
    }
    // Same rule as a stream's write (no gathering: a poll answers as soon as it has an event),
    // and after a scan cut short: the client asks again from where it got.
    let more = more && (events.len() >= MAX_EVENTS || cut);
    let left_out = coalesce(&mut events, st.config.coalesce_window());
    st.metrics.events_coalesced.inc_by(left_out as u64);
    let cursor = events
        .last()
        .map_or_else(|| id(feed.cursor()), |e| e.id().to_owned());
    let rendered: Vec<(Option<String>, String)> = events
        .iter()
        .map(|e| {
            (
                Some(e.id().to_owned()),
                String::from_utf8_lossy(&e.message()).into_owned(),
            )
        })
        .collect();
    Ok(answer(&rendered, &cursor, more))
}

/// Reads visible events after the feed's cursor, up to the answer's limit.
/// Also whether it stopped at [`MAX_SCAN`] positions with more to read (then the answer says
/// `more`, and its cursor is where the scan got).
async fn collect(
    feed: &mut Feed,
) -> Result<(Vec<std::sync::Arc<StoredEvent>>, bool, bool), AppError> {
    let start = feed.cursor();
    let mut events = Vec::new();
    loop {
        let batch = feed
            .next_batch(MAX_EVENTS - events.len(), usize::MAX)
            .await?;
        events.extend(batch.events);
        let cut = feed.cursor().saturating_sub(start) >= MAX_SCAN;
        if !batch.more || events.len() >= MAX_EVENTS || cut {
            return Ok((events, batch.more, cut && batch.more));
        }
    }
}

/// The answer, with each `message` spliced in as the exact bytes of the stream's `data:` line.
fn answer(events: &[(Option<String>, String)], cursor: &str, more: bool) -> Response {
    let mut out = String::from(r#"{"events":["#);
    for (i, (id, message)) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"id":"#);
        out.push_str(&serde_json::to_string(id).unwrap_or_else(|_| "null".into()));
        out.push_str(r#","message":"#);
        out.push_str(message);
        out.push('}');
    }
    out.push_str(r#"],"cursor":"#);
    out.push_str(&serde_json::Value::from(cursor).to_string());
    out.push_str(r#","more":"#);
    out.push_str(if more { "true" } else { "false" });
    out.push('}');
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        out,
    )
        .into_response()
}
