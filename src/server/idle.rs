//! Connections that do nothing are closed: one that has not started a request within the
//! first-request deadline (it sent nothing, only the HTTP/2 preface, or a head too slowly), or
//! one with no request in progress for the idle deadline. A request is in progress from the
//! moment hyper hands it to the service until its response body is done (so a stream or a long
//! poll is never idle); reading its body has a deadline of its own (`http::body`).
//!
//! Nothing here runs per request but a few atomic updates: the connection's task is not woken
//! when a request starts or ends, and no timer is armed per request. One timer per connection
//! checks the deadline when it would fall; while a request is in progress it looks again one
//! deadline later.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// The requests in progress on one connection.
pub(super) struct Activity {
    /// When the connection was accepted (the origin of `idle_since_ns`).
    born: Instant,
    in_flight: AtomicUsize,
    /// When the connection last had no request in progress, in nanoseconds after `born` (0: since
    /// accept).
    idle_since_ns: AtomicU64,
    /// Whether any request has started on this connection.
    served: AtomicBool,
}

/// One request in progress; dropped with its response body.
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        // Written before the count goes down, so a check that sees no request in progress sees
        // when the last one ended (the latest end, when several end together).
        let now = u64::try_from(a.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        a.idle_since_ns.fetch_max(now, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a connection was closed for doing nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Idle {
    /// No request started within the first-request deadline.
    NoRequest,
    /// No request in progress for the idle deadline.
    BetweenRequests,
}

impl Idle {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Idle::NoRequest => "no_request",
            Idle::BetweenRequests => "idle",
        }
    }
}

impl Activity {
    pub(super) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ns: AtomicU64::new(0),
            served: AtomicBool::new(false),
        })
    }

    /// A request starts: the connection is not idle until it is dropped.
    pub(super) fn begin(self: &Arc<Activity>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        InFlight(self.clone())
    }

    /// Resolves when the connection has done nothing for its deadline: `first_request` after
    /// accept if no request has started, else `idle` after the last one ended.
    pub(super) async fn expired(&self, first_request: Duration, idle: Duration) -> Idle {
        loop {
            let (limit, why) = if self.served.load(Ordering::Acquire) {
                (idle, Idle::BetweenRequests)
            } else {
                (first_request, Idle::NoRequest)
            };
            let now = Instant::now();
            let deadline = if self.in_flight.load(Ordering::Acquire) > 0 {
                // Busy: nothing can expire before a request ends and `limit` passes after it.
                now + limit
            } else {
                let since = self.idle_since_ns.load(Ordering::Acquire);
                let deadline = self.born + Duration::from_nanos(since) + limit;
                if deadline <= now {
                    return why;
                }
                deadline
            };
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadlines_count_only_while_nothing_is_in_progress() {
        let activity = Activity::new();
        let first = Duration::from_millis(100);
        let idle = Duration::from_millis(300);
        let started = Instant::now();
        assert_eq!(activity.expired(first, idle).await, Idle::NoRequest);
        assert!(started.elapsed() >= first);

        let request = activity.begin();
        let waiting = tokio::time::timeout(idle * 3, activity.expired(first, idle));
        assert!(
            waiting.await.is_err(),
            "a request in progress is never idle"
        );
        drop(request);
        let ended = Instant::now();
        assert_eq!(activity.expired(first, idle).await, Idle::BetweenRequests);
        assert!(ended.elapsed() >= idle);
    }
}
