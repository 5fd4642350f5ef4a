//! `GET /mcp`: the MCP Streamable HTTP GET stream (contract §3.2).
//!
//! Order of a stream: an optional preamble (priming, or resync), then every visible event after
//! the cursor (from the ring, or the log when the ring no longer holds them), then live events,
//! with keep-alive comments when idle. The server ends a stream only with a `retry:` block.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use tokio::time::Instant;

use super::error::AppError;
use super::headers::{self, MCP_SESSION_ID};
use super::listen::SessionUse;
use super::proxy::{self, Forward};
use super::subscription::{self, Open, Opened, Request};
use crate::broadcast::pump::Ends;
use crate::broadcast::stream::{Framing, Parts, Stream};
use crate::broadcast::{Coalescer, Feed, StreamClaim, SubscriberKind};
use crate::event::{Chunk, Cursor, EventId, StoredEvent, Viewer};
use crate::log::Start;
use crate::mcp::{self, ProtocolVersion, KEEPALIVE_FRAME};
use crate::metrics::ShedReason;
use crate::server::handoff::{Chunks, Offer};
use crate::server::ConnInfo;
use crate::state::AppState;

pub async fn get_mcp(
    State(st): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    method: Method,
    http_version: Version,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    headers::require_event_stream(&headers)?;
    let version = headers::protocol_version(&headers)?;
    let session = headers::session_id(&headers)?;
    let cursor = headers::cursor(
        &headers,
        headers::query_param(query.as_deref(), "last_event_id").as_deref(),
    )?;
    let identity = st.subscriber_auth.identify(&headers).await?;
    // Who owns the session (a token without `sub` cannot use one: 403).
    let owner = match &session {
        Some(_) => Some(identity.session_owner()?),
        None => None,
    };
    if method == Method::HEAD {
        // The head a GET would get, and nothing else: no subscriber, no session claim (which
        // would end the session's open stream).
        let offer = Offer {
            body: Body::empty(),
            handed_off: false,
        };
        return Ok(stream_response(offer, session.as_deref()));
    }
    if let Some(up) = &st.upstream {
        // A cursor that is not ours resumes one of the upstream's POST streams: forward it.
        if matches!(cursor, Cursor::Foreign(_)) {
            if let (Some(session), Some(owner)) = (&session, &owner) {
                super::listen::callers_session(&st, session, owner, SessionUse::Forward).await?;
            }
            let forward = Forward {
                method: Method::GET,
                headers,
                body: Bytes::new(),
                rpc_method: None,
                owner: None,
                peer: conn.peer,
                client: conn.client,
                own_task: conn.own_task.clone(),
            };
            return Ok(proxy::forward(&st, up, forward).await);
        }
        if let Some(s) = &session {
            match st.sessions.known(s).await {
                Ok(true) => {}
                Ok(false) => return Err(AppError::SessionNotFound),
                Err(error) => {
                    tracing::warn!(%error, "cannot check the session; shedding the stream");
                    let reason = subscription::counted(ShedReason::Database, &st);
                    return Ok(shed_response(&st, reason, session.as_deref()));
                }
            }
        }
    }

    let request = Request {
        kind: SubscriberKind::Sse,
        session: session.clone(),
        owner: owner.as_ref(),
        expires_at: identity.expires_at,
    };
    let opened = match subscription::open(&st, &conn, request).await? {
        Open::Opened(o) => o,
        Open::Shed(reason) => return Ok(shed_response(&st, reason, session.as_deref())),
    };
    let viewer = Viewer {
        tenant: identity.tenant.clone(),
        session: session.clone(),
    };
    let stream = sse_stream(&st, opened, version, &cursor, viewer);
    let chunks: Chunks = Box::pin(stream.chunks());
    let offer = conn.handoff.offer(http_version, chunks);
    Ok(stream_response(offer, session.as_deref()))
}

/// The GET stream of a subscriber that was let in: where it starts (priming, replay or resync),
/// and when it ends.
fn sse_stream(
    st: &AppState,
    opened: Opened,
    version: ProtocolVersion,
    cursor: &Cursor,
    viewer: Viewer,
) -> Stream<SseFraming> {
    let Opened {
        guard,
        bounds,
        claim,
        expires,
    } = opened;
    let epoch = st.log.epoch();
    let head_id = |head| EventId { epoch, seq: head }.to_string();
    let (preamble, after) = match bounds.start_for(cursor, epoch) {
        Start::Fresh { head } => {
            let priming = version
                .primes()
                .then(|| Bytes::from(mcp::priming_frame(&head_id(head), Some(st.config.retry_ms))));
            (priming, head)
        }
        Start::Replay { after } => (None, after),
        Start::Resync { head } => (Some(mcp::resync_frames(&head_id(head), version)), head),
    };
    let deadline = st.config.max_stream_age().map(|age| {
        use rand::Rng;
        let jitter = rand::rng().random_range(0.8..=1.0);
        Instant::now() + age.mul_f64(jitter)
    });
    // The client's cursor is the stream's until the stream carries an id of its own (a priming
    // frame, a resync, an event). A resumed stream starts without one; the client (the TypeScript
    // SDK, for one) keeps only ids seen on the current stream.
    let carried_id = preamble.is_some();
    // Older clients get no empty-data frame, so the only way to keep their cursor is not to cut an
    // id-less stream for rebalancing: the max age applies once the stream has carried an id.
    let (max_age, pending_rebalance) = if carried_id || version.primes() {
        (deadline, None)
    } else {
        (None, deadline)
    };
    let ends = Ends {
        shutdown: st.broadcaster.closing(),
        taken_over: claim.as_ref().map(StreamClaim::token),
        max_age,
        expires,
        max_lag: st.config.max_lag(),
    };
    Stream::from(Parts {
        framing: SseFraming {
            epoch: epoch.to_owned(),
            primes: version.primes(),
            carried_id,
            retry_ms: st.config.retry_ms,
        },
        preamble,
        feed: Feed::new(st.broadcaster.clone(), st.log.clone(), viewer, after)
            .with_log_head(bounds.head),
        coalescer: Coalescer::new(st.config.coalesce_window()),
        ends,
        keepalive: st.config.keepalive(),
        pending_max_age: pending_rebalance,
        guard,
        claim,
    })
}

/// `200`, a jittered `retry:` and an immediate clean end: clients come back later or elsewhere
/// (an error status would make EventSource and the SDK clients give up for good). The shed was
/// counted.
fn shed_response(st: &AppState, reason: ShedReason, session: Option<&str>) -> Response {
    tracing::debug!(
        reason = reason.as_str(),
        session = session.unwrap_or(""),
        "stream shed"
    );
    let body = Body::from(mcp::retry_frame(mcp::jittered_retry_ms(st.config.retry_ms)));
    stream_response(
        Offer {
            body,
            handed_off: false,
        },
        session,
    )
}

fn stream_response(offer: Offer, session: Option<&str>) -> Response {
    let mut resp = event_stream(offer);
    let h = resp.headers_mut();
    if let Some(v) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert(MCP_SESSION_ID, v);
    }
    resp
}

/// A `200 text/event-stream` response with `offer`'s body.
pub(super) fn event_stream(offer: Offer) -> Response {
    let mut resp = Response::new(offer.body);
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if offer.handed_off {
        // The writer that takes over after the head writes chunks and closes at the end.
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The GET stream's framing: events as their stored frames (with their ids), and an end that
/// keeps the client's cursor.
struct SseFraming {
    epoch: String,
    /// The client speaks 2025-11-25 or later (empty-data priming frames are understood).
    primes: bool,
    /// The stream has sent an `id:` (so the client's cursor is known from this stream).
    carried_id: bool,
    retry_ms: u64,
}

impl Framing for SseFraming {
    /// The frames of a batch, as one (gather) write.
    fn events(&mut self, events: Vec<Arc<StoredEvent>>) -> Option<(Chunk, u64)> {
        self.carried_id = true;
        let delivered = events.len() as u64;
        Some((Chunk::Events(events), delivered))
    }

    fn keepalive(&self) -> Bytes {
        Bytes::from_static(KEEPALIVE_FRAME)
    }

    fn end(&mut self, cursor: u64) -> Bytes {
        let retry = mcp::jittered_retry_ms(self.retry_ms);
        if self.primes && !self.carried_id {
            // Ending a stream that never carried an id: hand the client its cursor back, or it
            // reconnects without one and starts from the head (losing what happens meanwhile).
            let cursor = EventId {
                epoch: &self.epoch,
                seq: cursor,
            };
            return Bytes::from(mcp::priming_frame(&cursor.to_string(), Some(retry)));
        }
        mcp::retry_frame(retry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broadcast::pump;
    use crate::broadcast::{Broadcaster, RingLimits};
    use crate::event::{NewEvent, Target};
    use crate::log::memory::{MemoryLimits, MemoryLog};
    use crate::log::{AppendRequest, EventLog};
    use crate::metrics::{Metrics, ReasonLabel};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::time::Instant;

    struct Fixture {
        bc: Broadcaster,
        log: Arc<dyn EventLog>,
    }

    fn fixture() -> Fixture {
        let bc = Broadcaster::new(
            0,
            RingLimits {
                max_events: 10_000,
                max_bytes: usize::MAX,
            },
            10,
            Arc::new(Metrics::new()),
        );
        let sink = bc.clone();
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(
            "ep".into(),
            MemoryLimits {
                max_events: 10_000,
                max_bytes: usize::MAX,
            },
            Box::new(move |evs| sink.push(evs)),
        ));
        Fixture { bc, log }
    }

    impl Fixture {
        fn parts(
            &self,
            keepalive: Duration,
            max_lag: Duration,
            deadline: Option<Instant>,
        ) -> Parts<SseFraming> {
            Parts {
                framing: SseFraming {
                    epoch: "ep".into(),
                    primes: false,
                    carried_id: true,
                    retry_ms: 100,
                },
                preamble: None,
                feed: Feed::new(self.bc.clone(), self.log.clone(), Viewer::default(), 0),
                coalescer: Coalescer::default(),
                ends: Ends {
                    shutdown: self.bc.closing(),
                    taken_over: None,
                    max_age: deadline,
                    expires: None,
                    max_lag,
                },
                keepalive,
                pending_max_age: None,
                guard: self
                    .bc
                    .try_register(SubscriberKind::Sse, Some("sess-1".into()))
                    .expect("slot"),
                claim: None,
            }
        }

        fn stream(
            &self,
            keepalive: Duration,
            max_lag: Duration,
            deadline: Option<Instant>,
        ) -> Stream<SseFraming> {
            Stream::from(self.parts(keepalive, max_lag, deadline))
        }

        async fn publish(&self, n: usize) {
            self.publish_method(n, "notifications/t").await;
        }

        async fn publish_method(&self, n: usize, method: &str) {
            let events = (0..n)
                .map(|_| NewEvent {
                    method: method.into(),
                    params: None,
                    target: Target::default(),
                    key: None,
                })
                .collect();
            self.log
                .append(AppendRequest {
                    events,
                    request_key: None,
                })
                .await
                .expect("append");
        }

        fn dropped(&self, reason: &'static str) -> u64 {
            self.bc
                .metrics()
                .subscribers_dropped
                .get_or_create(&ReasonLabel { reason })
                .get()
        }
    }

    const LONG: Duration = Duration::from_secs(3600);

    fn is_retry(chunk: &Bytes) -> bool {
        chunk.starts_with(b"retry: ") && chunk.ends_with(b"\n\n")
    }

    #[tokio::test]
    async fn pending_events_are_coalesced_into_one_write() {
        let f = fixture();
        let mut s = f.stream(LONG, LONG, None);
        f.publish(10).await;
        let chunk = s.next_chunk().await.map(Chunk::into_bytes).expect("chunk");
        let text = std::str::from_utf8(&chunk).expect("utf8");
        assert_eq!(text.matches("\ndata: ").count(), 10);
        assert!(text.starts_with("id: ep-1\n") && text.contains("id: ep-10\n"));
    }

    #[tokio::test]
    async fn a_subscriber_behind_too_long_is_ended_with_retry_and_counted() {
        let f = fixture();
        let mut s = f.stream(LONG, Duration::from_millis(20), None);
        f.publish(pump::MAX_EVENTS_PER_STEP * 3).await;
        let first = s
            .next_chunk()
            .await
            .map(Chunk::into_bytes)
            .expect("first write");
        assert!(!is_retry(&first));
        tokio::time::sleep(Duration::from_millis(40)).await;
        let end = s.next_chunk().await.map(Chunk::into_bytes).expect("retry");
        assert!(is_retry(&end), "{end:?}");
        assert!(
            s.next_chunk().await.map(Chunk::into_bytes).is_none(),
            "then the stream ends"
        );
        drop(s);
        assert_eq!(f.dropped("lagging"), 1);
        assert_eq!(f.bc.subscriber_count(), 0);
    }

    #[tokio::test]
    async fn closing_the_broadcaster_ends_waiting_streams() {
        let f = fixture();
        let mut s = f.stream(LONG, LONG, None);
        let task = tokio::spawn(async move {
            let end = s.next_chunk().await.map(Chunk::into_bytes);
            let after = s.next_chunk().await.map(Chunk::into_bytes);
            (end, after)
        });
        tokio::task::yield_now().await;
        f.bc.close();
        let (end, after) = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("ended promptly")
            .expect("joined");
        assert!(end.as_ref().is_some_and(is_retry));
        assert!(after.is_none());
        assert_eq!(f.dropped("shutdown"), 1);
    }

    #[tokio::test]
    async fn idle_streams_get_keepalive_comments() {
        let f = fixture();
        let mut s = f.stream(Duration::from_millis(10), LONG, None);
        let chunk = s
            .next_chunk()
            .await
            .map(Chunk::into_bytes)
            .expect("keepalive");
        assert_eq!(&chunk[..], KEEPALIVE_FRAME);
    }

    #[tokio::test]
    async fn an_id_less_stream_of_a_2025_11_25_client_ends_with_its_cursor() {
        let f = fixture();
        f.publish(2).await;
        let mut p = f.parts(LONG, LONG, None);
        p.feed = Feed::new(f.bc.clone(), f.log.clone(), Viewer::default(), 2);
        p.framing.primes = true;
        p.framing.carried_id = false;
        let mut s = Stream::from(p);
        f.bc.close();
        let end = s.next_chunk().await.map(Chunk::into_bytes).expect("end");
        let text = std::str::from_utf8(&end).expect("utf8");
        assert!(
            text.starts_with("id: ep-2\nretry: ") && text.ends_with("\ndata: \n\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_older_clients_id_less_stream_is_not_cut_for_rebalancing_until_it_carries_an_id() {
        let f = fixture();
        let mut p = f.parts(Duration::from_millis(30), LONG, None);
        p.framing.carried_id = false;
        p.pending_max_age = Some(Instant::now());
        let mut s = Stream::from(p);
        // Past its max age but id-less: only keep-alives.
        assert_eq!(
            &s.next_chunk()
                .await
                .map(Chunk::into_bytes)
                .expect("keepalive")[..],
            KEEPALIVE_FRAME
        );
        f.publish(1).await;
        let first = s.next_chunk().await.map(Chunk::into_bytes).expect("event");
        assert!(first.starts_with(b"id: ep-1\n"));
        // Now that the client's cursor is known, the rebalancing cut applies.
        let end = s.next_chunk().await.map(Chunk::into_bytes).expect("end");
        assert!(is_retry(&end), "{end:?}");
    }

    #[tokio::test]
    async fn with_coalescing_a_burst_is_gathered_into_one_write_with_the_newest_list_changed() {
        const LIST: &str = "notifications/tools/list_changed";
        let f = fixture();
        let mut p = f.parts(LONG, LONG, None);
        p.coalescer = Coalescer::new(Duration::from_millis(300));
        let mut s = Stream::from(p);
        f.publish(1).await; // seq 1: written at once
        let first = s.next_chunk().await.map(Chunk::into_bytes).expect("first");
        assert!(first.starts_with(b"id: ep-1\n"));
        f.publish_method(1, LIST).await; // seq 2: held, gathering
        let reader = tokio::spawn(async move {
            let chunk = s.next_chunk().await.map(Chunk::into_bytes);
            (chunk, s)
        });
        for _ in 0..20 {
            f.publish_method(5, LIST).await;
            f.publish(1).await;
        }
        let (chunk, _s) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("written within the window")
            .expect("joined");
        let text = String::from_utf8(chunk.expect("chunk").to_vec()).expect("utf8");
        // seq 2..=122: 101 list_changed and 20 others; one list_changed (the newest, 121) is left.
        assert_eq!(text.matches(LIST).count(), 1, "{text}");
        assert_eq!(text.matches("notifications/t\"").count(), 20);
        assert!(text.contains("id: ep-121\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\""));
        assert!(text.ends_with(
            "id: ep-122\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/t\"}\n\n"
        ));
        assert_eq!(f.bc.metrics().events_coalesced.get(), 100);
    }

    #[tokio::test]
    async fn held_list_changed_are_written_before_the_stream_ends() {
        let f = fixture();
        let mut p = f.parts(LONG, LONG, None);
        p.coalescer = Coalescer::new(Duration::from_secs(10));
        let mut s = Stream::from(p);
        f.publish_method(3, "notifications/prompts/list_changed")
            .await;
        let task = tokio::spawn(async move {
            let a = s.next_chunk().await.map(Chunk::into_bytes);
            let b = s.next_chunk().await.map(Chunk::into_bytes);
            (a, b)
        });
        tokio::task::yield_now().await;
        f.bc.close();
        let (held, end) = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("ended promptly")
            .expect("joined");
        let held = held.expect("held events");
        assert!(held.starts_with(b"id: ep-3\n"), "{held:?}");
        assert!(end.as_ref().is_some_and(is_retry));
    }

    #[tokio::test]
    async fn streams_end_at_their_max_age() {
        let f = fixture();
        let mut s = f.stream(LONG, LONG, Some(Instant::now() + Duration::from_millis(20)));
        let end = s.next_chunk().await.map(Chunk::into_bytes).expect("retry");
        assert!(is_retry(&end));
        drop(s);
        assert_eq!(f.dropped("max_stream_age"), 1);
    }
}
