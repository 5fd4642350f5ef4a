//! One step of a subscriber stream: read what its feed has, or wait for more, a keep-alive, or an
//! end condition. Every subscriber stream runs on this through the driver of [`super::stream`];
//! the SSE and `subscriptions/listen` streams differ only in their framing and in which conditions
//! end them.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::coalesce::Coalescer;
use super::{Closing, DropReason, Feed};
use crate::event::StoredEvent;
use crate::log::LogError;

/// What ends a stream, besides lag and log errors. A fixed set, so waiting on it allocates nothing.
pub struct Ends {
    /// The replica is shutting down (GET streams: the drain ended; listen streams: the grace).
    /// Read when the stream wakes: firing it wakes the stream through its feed.
    pub shutdown: Closing,
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
        // The clock is read only for a stream that has a deadline (most have none).
        let passed = |at: Option<Instant>| at.is_some_and(|at| at <= Instant::now());
        if self.shutdown.is_fired() {
            Some(DropReason::Shutdown)
        } else if self
            .taken_over
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            Some(DropReason::TakenOver)
        } else if passed(self.max_age) {
            Some(DropReason::MaxStreamAge)
        } else if passed(self.expires) {
            Some(DropReason::TokenExpired)
        } else if feed.behind_for().is_some_and(|t| t > self.max_lag) {
            Some(DropReason::Lagging)
        } else {
            None
        }
    }

    /// The earlier of the max age and the expiry.
    fn deadline(&self) -> Option<Instant> {
        match (self.max_age, self.expires) {
            (Some(a), Some(e)) => Some(a.min(e)),
            (a, e) => a.or(e),
        }
    }
}

/// What a stream waits on between its writes, kept from one step to the next: a timer or a waiter
/// registered anew at every wake-up (once per event, for every stream) would cost a lock of a
/// structure all streams share (the timer wheel, the token's waiter list) each time.
pub struct Waits {
    timer: Timer,
    /// The stream's session taken over.
    taken_over: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

/// A stream's one timer, for the earliest of its next keep-alive (an interval after its last
/// write), its max age and its expiry. A write only records its time: the timer, armed for the
/// earlier keep-alive, moves when it fires.
struct Timer {
    keepalive: Duration,
    last_write: Instant,
    sleep: Pin<Box<Sleep>>,
    armed_at: Instant,
}

/// Why the timer fired.
enum Timed {
    KeepAlive,
    /// The max age or the expiry came (`Ends::due` says which).
    Deadline,
}

impl Waits {
    pub fn new(keepalive: Duration, taken_over: Option<&CancellationToken>) -> Waits {
        let now = Instant::now();
        let first = now + keepalive;
        Waits {
            timer: Timer {
                keepalive,
                last_write: now,
                sleep: Box::pin(tokio::time::sleep_until(first)),
                armed_at: first,
            },
            taken_over: taken_over.map(|t| Box::pin(t.clone().cancelled_owned())),
        }
    }

    /// The stream wrote (events or a keep-alive): the next keep-alive is due an interval later.
    pub fn wrote(&mut self) {
        self.timer.last_write = Instant::now();
    }
}

impl Timer {
    async fn fired(&mut self, ends: &Ends) -> Timed {
        loop {
            let deadline = ends.deadline();
            let keepalive = self.last_write + self.keepalive;
            let at = deadline.map_or(keepalive, |d| d.min(keepalive));
            if at < self.armed_at {
                self.armed_at = at;
                self.sleep.as_mut().reset(at);
            }
            self.sleep.as_mut().await;
            let now = Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                return Timed::Deadline;
            }
            if keepalive <= now {
                return Timed::KeepAlive;
            }
            // Fired for a keep-alive a write has moved: wait for what is due now.
            self.armed_at = at;
            self.sleep.as_mut().reset(at);
        }
    }
}

/// Resolves when the stream's session is taken over (never, for a stream without one).
async fn taken_over(waiter: &mut Option<Pin<Box<WaitForCancellationFutureOwned>>>) {
    match waiter {
        Some(w) => w.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The next step of a stream reading `feed`. With coalescing on, list_changed still inside their
/// window are held back (with what follows them) to gather a burst into one write, and each write
/// leaves out the list_changed a later one in it supersedes (see [`super::coalesce`]).
pub async fn next_step(
    feed: &mut Feed,
    ends: &Ends,
    waits: &mut Waits,
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
        // An end condition that fires is read by `due` at the top of the loop; the shutdown
        // signal wakes the stream through its feed.
        let Waits {
            timer,
            taken_over: waiter,
        } = &mut *waits;
        match co.until() {
            None => tokio::select! {
                biased;
                () = taken_over(waiter) => {}
                () = feed.changed() => {}
                timed = timer.fired(ends) => match timed {
                    Timed::KeepAlive => return Step::KeepAlive,
                    Timed::Deadline => {}
                },
            },
            // Gathering: the rest of the burst is read at the hold's end, in one go, rather than
            // on every publish (an end condition flushes first).
            Some(until) => {
                let until = ends.deadline().map_or(until, |d| d.min(until));
                tokio::select! {
                    biased;
                    () = ends.shutdown.fired() => {}
                    () = taken_over(waiter) => {}
                    () = tokio::time::sleep_until(until) => {}
                }
            }
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
