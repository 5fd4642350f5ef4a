//! Connections that do nothing are closed: one that has not started a request within the
//! first-request deadline (it sent nothing, only the HTTP/2 preface, or a head too slowly), or
//! one with no request in progress for the idle deadline. A request is in progress from the
//! moment hyper hands it to the service until its response body is done (so a stream or a long
//! poll is never idle); reading its body has a deadline of its own (`http::body`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
struct State {
    in_flight: usize,
    /// When the connection last had no request in progress (accept, or the end of a response).
    idle_since: Instant,
    /// Whether any request has started on this connection.
    served: bool,
}

/// The requests in progress on one connection.
pub(super) struct Activity {
    state: watch::Sender<State>,
}

/// One request in progress; dropped with its response body.
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state.send_modify(|s| {
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.idle_since = Instant::now();
            }
        });
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
        let (state, _) = watch::channel(State {
            in_flight: 0,
            idle_since: Instant::now(),
            served: false,
        });
        Arc::new(Activity { state })
    }

    pub(super) fn begin(self: &Arc<Activity>) -> InFlight {
        self.state.send_modify(|s| {
            s.in_flight += 1;
            s.served = true;
        });
        InFlight(self.clone())
    }

    /// Resolves when the connection has had no request in progress for its deadline:
    /// `first_request` before any request started, `idle` after.
    pub(super) async fn expired(&self, first_request: Duration, idle: Duration) -> Idle {
        let mut rx = self.state.subscribe();
        loop {
            let s = *rx.borrow_and_update();
            if s.in_flight > 0 {
                // The sender lives in `self`: `changed` fails only if it is gone.
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
                continue;
            }
            let (limit, why) = if s.served {
                (idle, Idle::BetweenRequests)
            } else {
                (first_request, Idle::NoRequest)
            };
            tokio::select! {
                _ = tokio::time::sleep_until(s.idle_since + limit) => return why,
                changed = rx.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                }
            }
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
