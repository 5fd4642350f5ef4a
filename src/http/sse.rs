//! `GET /mcp`: the MCP Streamable HTTP GET stream (SPEC §3.2).
//!
//! Order of a stream: an optional preamble (priming, or resync), then every visible event after
//! the cursor (from the ring, or the log when the ring no longer holds them), then live events,
//! with keep-alive comments when idle. The server ends a stream only with a `retry:` block.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::error::AppError;
use super::headers::{self, MCP_SESSION_ID};
use crate::broadcast::{Broadcaster, DropReason, Feed, SubscriberGuard, SubscriberKind};
use crate::event::{EventId, Viewer};
use crate::log::{LogError, Start};
use crate::mcp::{self, KEEPALIVE_FRAME};
use crate::server::ConnInfo;
use crate::state::AppState;

/// Most events, and about most bytes, coalesced into one write.
const MAX_EVENTS_PER_WRITE: usize = 512;
const MAX_BYTES_PER_WRITE: usize = 256 * 1024;

pub async fn get_mcp(
    State(st): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    headers::require_event_stream(&headers)?;
    let version = headers::protocol_version(&headers)?;
    let session = headers::session_id(&headers)?;
    let cursor = headers::cursor(&headers, headers::query_param(query.as_deref(), "last_event_id").as_deref())?;

    if st.lifecycle.is_draining() {
        return Ok(shed(&st, "draining", session.as_deref()));
    }
    let Some(mut guard) = st.broadcaster.try_register(SubscriberKind::Sse, session.clone()) else {
        return Ok(shed(&st, "capacity", session.as_deref()));
    };
    let bounds = match st.log.bounds().await {
        Ok(b) => b,
        Err(error) => {
            tracing::warn!(%error, "cannot read the log bounds; shedding the stream");
            drop(guard);
            return Ok(shed(&st, "database", session.as_deref()));
        }
    };
    guard.watch_stall(conn.stalled.clone());
    let epoch = st.log.epoch();
    let head_id = |head| EventId { epoch, seq: head }.to_string();
    let (preamble, after) = match bounds.start_for(&cursor, epoch) {
        Start::Fresh { head } => {
            let priming = version
                .primes()
                .then(|| Bytes::from(mcp::priming_frame(&head_id(head), Some(st.config.retry_ms))));
            (priming, head)
        }
        Start::Replay { after } => (None, after),
        Start::Resync { head } => (Some(mcp::resync_frames(&head_id(head), version)), head),
    };
    let viewer = Viewer {
        tenant: None,
        session: session.clone(),
    };
    let deadline = st.config.max_stream_age().map(|age| {
        use rand::Rng;
        let jitter = rand::rng().random_range(0.8..=1.0);
        Instant::now() + age.mul_f64(jitter)
    });
    let stream = SseStream {
        feed: Feed::new(st.broadcaster.clone(), st.log.clone(), viewer, after),
        broadcaster: st.broadcaster.clone(),
        guard,
        preamble,
        keepalive: st.config.keepalive(),
        max_lag: st.config.max_lag(),
        retry_ms: st.config.retry_ms,
        deadline,
        done: false,
    };
    let body = futures::stream::unfold(stream, |mut s| async move {
        s.next_chunk().await.map(|chunk| (Ok::<_, Infallible>(chunk), s))
    });
    Ok(stream_response(Body::from_stream(body), session.as_deref()))
}

/// `200`, a jittered `retry:` and an immediate clean end: clients come back later or elsewhere
/// (an error status would make EventSource and the SDK clients give up for good).
fn shed(st: &AppState, reason: &'static str, session: Option<&str>) -> Response {
    st.metrics.shed(reason);
    tracing::debug!(reason, session = session.unwrap_or(""), "stream shed");
    stream_response(
        Body::from(mcp::retry_frame(mcp::jittered_retry_ms(st.config.retry_ms))),
        session,
    )
}

fn stream_response(body: Body, session: Option<&str>) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(v) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert(MCP_SESSION_ID, v);
    }
    resp
}

struct SseStream {
    feed: Feed,
    broadcaster: Broadcaster,
    guard: SubscriberGuard,
    preamble: Option<Bytes>,
    keepalive: Duration,
    max_lag: Duration,
    retry_ms: u64,
    deadline: Option<Instant>,
    done: bool,
}

impl SseStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(p) = self.preamble.take() {
            return Some(p);
        }
        loop {
            if self.broadcaster.is_closed() {
                return self.finish(DropReason::Shutdown);
            }
            if self.deadline.is_some_and(|d| d <= Instant::now()) {
                return self.finish(DropReason::MaxStreamAge);
            }
            if self.feed.behind_for().is_some_and(|t| t > self.max_lag) {
                return self.finish(DropReason::Lagging);
            }
            let batch = match self.feed.next_batch(MAX_EVENTS_PER_WRITE, MAX_BYTES_PER_WRITE).await {
                Ok(b) => b,
                Err(LogError::CursorPruned { .. }) => return self.finish(DropReason::CursorPruned),
                Err(error) => {
                    tracing::warn!(%error, session = self.guard.session().unwrap_or(""), "cannot read the log for a subscriber");
                    return self.finish(DropReason::LogUnavailable);
                }
            };
            if !batch.events.is_empty() {
                return Some(self.write(&batch.events));
            }
            if batch.more {
                // Only events this subscriber may not see so far; keep scanning, fairly.
                tokio::task::yield_now().await;
                continue;
            }
            let deadline = self.deadline;
            tokio::select! {
                biased;
                _ = self.broadcaster.closed() => return self.finish(DropReason::Shutdown),
                _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } else { std::future::pending().await } } => {
                    return self.finish(DropReason::MaxStreamAge);
                }
                _ = self.feed.changed() => {}
                _ = tokio::time::sleep(self.keepalive) => return Some(Bytes::from_static(KEEPALIVE_FRAME)),
            }
        }
    }

    /// Coalesces the frames of a batch into one write.
    fn write(&self, events: &[std::sync::Arc<crate::event::StoredEvent>]) -> Bytes {
        let metrics = self.broadcaster.metrics();
        metrics.events_delivered.inc_by(events.len() as u64);
        if let Some(first) = events.first() {
            if let Ok(lag) = first.committed_at.elapsed() {
                metrics.deliver_lag.observe(lag.as_secs_f64());
            }
        }
        if let [only] = events {
            return only.frame().clone();
        }
        let mut buf = BytesMut::with_capacity(events.iter().map(|e| e.frame().len()).sum());
        for e in events {
            buf.extend_from_slice(e.frame());
        }
        buf.freeze()
    }

    fn finish(&mut self, reason: DropReason) -> Option<Bytes> {
        self.done = true;
        self.guard.end(reason);
        Some(mcp::retry_frame(mcp::jittered_retry_ms(self.retry_ms)))
    }
}
