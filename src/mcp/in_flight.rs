//! The bound on the upstream connections a replica holds (`FANOUT_UPSTREAM_MAX_CONNECTIONS`):
//! one permit per upstream request in flight on the pooled client — each request forwarded and
//! not yet relayed whole, and each of the era adapter's own (its probe, handshakes and session
//! closes) — and one per upstream connection kept for an HTTP/1.x client connection, for its life
//! (`http::kept_upstream`; the requests on it share its permit, a [`Lease`]). Each holds an
//! upstream connection (an idle pooled one is reused by the next), so the permits bound them.
//!
//! A request past the bound is refused at once (the HTTP edge answers `upstream_busy`). The
//! refusals are said at `warn`, at most once per [`REFUSALS_LOG_EVERY`] with how many there were
//! since the last time, so a flood of them cannot flood the log; the metric counts every one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A permit of the bound, shared by what holds its upstream connection: a request's answer being
/// relayed, and a connection kept for a client connection (`http::kept_upstream`) for its life —
/// the requests on a kept connection take none of their own. Given back when the last holder
/// goes.
pub type Lease = Arc<OwnedSemaphorePermit>;

/// At most one `warn` line per this interval about refused requests.
pub const REFUSALS_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct InFlight {
    permits: Arc<Semaphore>,
    max: usize,
    /// Refusals not yet said in the log.
    refused: AtomicU64,
    /// When the last refusal was logged, in milliseconds since `start`, plus one (0: never).
    logged_at: AtomicU64,
    start: Instant,
}

impl InFlight {
    /// A bound of `max` requests in flight (at least one).
    pub fn new(max: usize) -> InFlight {
        let max = max.max(1);
        InFlight {
            permits: Arc::new(Semaphore::new(max)),
            max,
            refused: AtomicU64::new(0),
            logged_at: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A permit, held until the request's answer is relayed whole; `None` at the bound (the
    /// refusal is counted toward the next log line).
    pub fn try_acquire(&self, upstream: &str) -> Option<OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                self.log_refusals(upstream);
                None
            }
        }
    }

    /// A permit if one is free, for work that is skipped at the bound rather than refused to a
    /// caller (not counted as a refusal).
    pub fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Says the refusals since the last line, if the last line is `REFUSALS_LOG_EVERY` old.
    fn log_refusals(&self, upstream: &str) {
        let now = u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        let last = self.logged_at.load(Ordering::Relaxed);
        let every = u64::try_from(REFUSALS_LOG_EVERY.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < every {
            return;
        }
        // One caller wins the interval; the others' refusals wait for the next line.
        if self
            .logged_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let refused = self.refused.swap(0, Ordering::Relaxed);
        tracing::warn!(
            upstream,
            max_connections = self.max,
            refused,
            "every upstream connection of this replica is in use; requests refused as upstream_busy"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_holds_and_a_released_permit_serves_the_next() {
        let bound = InFlight::new(2);
        let a = bound.try_acquire("u");
        let b = bound.try_acquire("u");
        assert!(a.is_some() && b.is_some());
        assert!(bound.try_acquire("u").is_none());
        drop(a);
        assert!(bound.try_acquire("u").is_some());
    }

    #[test]
    fn refusals_are_said_once_per_interval_and_counted_in_between() {
        let bound = InFlight::new(0); // at least one
        assert_eq!(bound.max(), 1);
        let _held = bound.try_acquire("u");
        // The first refusal is said at once (and takes the count with it) ...
        assert!(bound.try_acquire("u").is_none());
        assert_eq!(bound.refused.load(Ordering::Relaxed), 0);
        // ... the next ones, within the interval, wait for the next line.
        for _ in 0..5 {
            assert!(bound.try_acquire("u").is_none());
        }
        assert_eq!(bound.refused.load(Ordering::Relaxed), 5);
    }
}
