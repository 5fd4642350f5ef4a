//! One step of a subscriber stream: read what its feed has, or wait for more, a keep-alive, or an
//! end condition. Every subscriber stream runs on this through the driver of [`super::stream`];
//! the SSE and `subscriptions/listen` streams differ only in their framing and in which conditions
//! end them.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::coalesce::Coalescer;
use super::{DropReason, Feed};
use crate::event::StoredEvent;
use crate::log::LogError;

/// What ends a stream, besides lag and log errors. A fixed set, so waiting on it allocates nothing.
pub struct Ends {
    /// The replica is shutting down (GET streams: the drain ended; listen streams: the grace).
    pub shutdown: CancellationToken,
    /// A newer stream took this stream's session.
    pub taken_over: Option<CancellationToken>,
    /// `FANOUT_MAX_STREAM_SECS` (jittered), for load-balancer rebalancing.
    pub max_age: Option<Instant>,
    /// The subscriber's credential expires (leeway included).
    pub expires: Option<Instant>,
    /// Continuously behind the head this long: ended (it resumes from the log).
    pub max_lag: Duration,
}

pub enum Step {
    /// Visible events after the cursor, in order (the cursor has moved past them).
    Events(Vec<Arc<StoredEvent>>),
    /// Nothing for a keep-alive interval.
    KeepAlive,
    /// The stream must end, for this reason.
    End(DropReason),
}

/// Most events, and about most bytes, handed out per step (one coalesced write).
pub const MAX_EVENTS_PER_STEP: usize = 512;
pub const MAX_BYTES_PER_STEP: usize = 256 * 1024;

impl Ends {
    fn due(&self, feed: &Feed) -> Option<DropReason> {
        let now = Instant::now();
        if self.shutdown.is_cancelled() {
            Some(DropReason::Shutdown)
        } else if self
            .taken_over
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            Some(DropReason::TakenOver)
        } else if self.max_age.is_some_and(|at| at <= now) {
            Some(DropReason::MaxStreamAge)
        } else if self.expires.is_some_and(|at| at <= now) {
            Some(DropReason::TokenExpired)
        } else if feed.behind_for().is_some_and(|t| t > self.max_lag) {
            Some(DropReason::Lagging)
        } else {
            None
        }
    }

    /// Resolves with the reason of the first end condition to fire.
    async fn fired(&self) -> DropReason {
        tokio::select! {
            _ = self.shutdown.cancelled() => DropReason::Shutdown,
            _ = cancelled(self.taken_over.as_ref()) => DropReason::TakenOver,
            _ = sleep_until(self.max_age) => DropReason::MaxStreamAge,
            _ = sleep_until(self.expires) => DropReason::TokenExpired,
        }
    }
}

async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next step of a stream reading `feed`. With coalescing on, list_changed still inside their
/// window are held back (with what follows them) to gather a burst into one write, and each write
/// leaves out the list_changed a later one in it supersedes (see [`super::coalesce`]).
pub async fn next_step(
    feed: &mut Feed,
    ends: &Ends,
    keepalive: Duration,
    co: &mut Coalescer,
) -> Step {
    loop {
        if let Some(reason) = ends.due(feed) {
            // What was read is written before the end, so the cursor stays the client's.
            if let Some(held) = co.flush() {
                return write(feed, co, held);
            }
            return Step::End(reason);
        }
        let (held_events, held_bytes) = co.held();
        let batch = match feed
            .next_batch(
                MAX_EVENTS_PER_STEP.saturating_sub(held_events),
                MAX_BYTES_PER_STEP.saturating_sub(held_bytes),
            )
            .await
        {
            Ok(b) => b,
            Err(error) => {
                if let Some(held) = co.flush() {
                    return write(feed, co, held);
                }
                return match error {
                    LogError::CursorPruned { .. } => Step::End(DropReason::CursorPruned),
                    error => {
                        tracing::warn!(%error, session = feed.viewer().session.as_deref().unwrap_or(""), "cannot read the log for a subscriber");
                        Step::End(DropReason::LogUnavailable)
                    }
                };
            }
        };
        if !co.is_on() {
            if !batch.events.is_empty() {
                return Step::Events(batch.events);
            }
        } else {
            let events = held_events + batch.events.len();
            let bytes = held_bytes + batch.events.iter().map(|e| e.frame().len()).sum::<usize>();
            let full = events >= MAX_EVENTS_PER_STEP || bytes >= MAX_BYTES_PER_STEP;
            if let Some(out) = co.take(batch.events, full) {
                return write(feed, co, out);
            }
        }
        if batch.more {
            // Only events this subscriber may not see so far: keep scanning, fairly.
            tokio::task::yield_now().await;
            continue;
        }
        match co.until() {
            None => tokio::select! {
                biased;
                reason = ends.fired() => return Step::End(reason),
                _ = feed.changed() => {}
                _ = tokio::time::sleep(keepalive) => return Step::KeepAlive,
            },
            // Gathering: the rest of the burst is read at the hold's end, in one go, rather than
            // on every publish (an end condition flushes first).
            Some(until) => tokio::select! {
                biased;
                _ = ends.fired() => {}
                _ = tokio::time::sleep_until(until) => {}
            },
        }
    }
}

/// One write of events, coalesced.
fn write(feed: &Feed, co: &Coalescer, mut events: Vec<Arc<StoredEvent>>) -> Step {
    let left_out = co.coalesce(&mut events);
    if left_out > 0 {
        feed.metrics().events_coalesced.inc_by(left_out as u64);
    }
    Step::Events(events)
}
