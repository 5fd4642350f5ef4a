//! One step of a subscriber stream: read what its feed has, or wait for more, a keep-alive, or an
//! end condition. The SSE stream and the `subscriptions/listen` stream both run on this; they
//! differ only in their framing and in which conditions end them.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{select_all, BoxFuture, FutureExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DropReason, Feed};
use crate::event::StoredEvent;
use crate::log::LogError;

/// What ends a stream, besides lag and log errors.
pub struct Ends {
    /// Signals (shutdown, takeover, …), each with the reason it gives.
    pub signals: Vec<(CancellationToken, DropReason)>,
    /// Deadlines (max stream age, token expiry), each with its reason.
    pub deadlines: Vec<(Instant, DropReason)>,
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
        self.signals
            .iter()
            .find(|(t, _)| t.is_cancelled())
            .map(|(_, r)| *r)
            .or_else(|| {
                self.deadlines
                    .iter()
                    .find(|(d, _)| *d <= now)
                    .map(|(_, r)| *r)
            })
            .or_else(|| {
                feed.behind_for()
                    .is_some_and(|t| t > self.max_lag)
                    .then_some(DropReason::Lagging)
            })
    }

    /// Resolves with the reason of the first signal or deadline to fire (never, if none).
    fn fired(&self) -> BoxFuture<'static, DropReason> {
        let mut waits: Vec<BoxFuture<'static, DropReason>> = Vec::new();
        for (token, reason) in &self.signals {
            let (token, reason) = (token.clone(), *reason);
            waits.push(
                async move {
                    token.cancelled().await;
                    reason
                }
                .boxed(),
            );
        }
        for (at, reason) in &self.deadlines {
            let (at, reason) = (*at, *reason);
            waits.push(
                async move {
                    tokio::time::sleep_until(at).await;
                    reason
                }
                .boxed(),
            );
        }
        if waits.is_empty() {
            return std::future::pending().boxed();
        }
        select_all(waits).map(|(reason, _, _)| reason).boxed()
    }
}

/// The next step of a stream reading `feed`.
pub async fn next_step(feed: &mut Feed, ends: &Ends, keepalive: Duration) -> Step {
    loop {
        if let Some(reason) = ends.due(feed) {
            return Step::End(reason);
        }
        let batch = match feed
            .next_batch(MAX_EVENTS_PER_STEP, MAX_BYTES_PER_STEP)
            .await
        {
            Ok(b) => b,
            Err(LogError::CursorPruned { .. }) => return Step::End(DropReason::CursorPruned),
            Err(error) => {
                tracing::warn!(%error, session = feed.viewer().session.as_deref().unwrap_or(""), "cannot read the log for a subscriber");
                return Step::End(DropReason::LogUnavailable);
            }
        };
        if !batch.events.is_empty() {
            return Step::Events(batch.events);
        }
        if batch.more {
            // Only events this subscriber may not see so far: keep scanning, fairly.
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            biased;
            reason = ends.fired() => return Step::End(reason),
            _ = feed.changed() => {}
            _ = tokio::time::sleep(keepalive) => return Step::KeepAlive,
        }
    }
}
