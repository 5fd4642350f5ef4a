//! The one shutdown sequence, from the signal to the exit, within `FANOUT_SHUTDOWN_GRACE_SECS`:
//!
//! 1. **drain** (`FANOUT_DRAIN_SECS`): readiness fails so the load balancer stops routing here;
//!    new streams are shed, existing ones keep flowing;
//! 2. **stop**: publishes are refused; every stream ends with `retry:` (the broadcaster closes);
//!    the listeners stop accepting;
//! 3. **close**: connections end as their responses finish; `subscriptions/listen` streams (whose
//!    clients do not listen again) end with their `complete` result one second before the grace
//!    ends;
//! 4. **tasks**: background tasks stop; the replica leaves the cluster view (bounded: the database
//!    may be gone).

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::listeners::Listeners;
use crate::state::AppState;

/// The sequence's timings.
pub struct Timings {
    pub drain: Duration,
    pub grace: Duration,
}

/// What the sequence stops: the listeners, the supervisor's token (background tasks), and the
/// heartbeat to wait for.
pub struct Running {
    pub listeners: Listeners,
    pub stop_tasks: CancellationToken,
    pub heartbeat: Option<JoinHandle<()>>,
}

/// Runs the shutdown sequence on a serving replica.
pub async fn run(st: &AppState, mut running: Running, timings: Timings) {
    let deadline = Instant::now() + timings.grace;
    st.lifecycle.begin_drain();
    let drain = timings.drain.min(timings.grace);
    tracing::info!(
        drain_secs = drain.as_secs(),
        subscribers = st.broadcaster.subscriber_count(),
        "draining"
    );
    tokio::time::sleep(drain).await;

    st.lifecycle.stop();
    st.broadcaster.close();
    running.listeners.stop_accepting();
    let listens_end = deadline
        .checked_sub(Duration::from_secs(1))
        .unwrap_or(deadline)
        .max(Instant::now());
    let ending = st.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(listens_end).await;
        ending.broadcaster.end_listens();
    });
    tracing::info!(
        subscribers = st.broadcaster.subscriber_count(),
        "streams ended; closing connections"
    );
    if !running.listeners.closed_by(deadline).await {
        tracing::warn!("shutdown grace expired with connections still open; exiting");
    }

    running.stop_tasks.cancel();
    if let Some(heartbeat) = running.heartbeat {
        let _ = tokio::time::timeout_at(
            deadline.max(Instant::now() + Duration::from_secs(1)),
            heartbeat,
        )
        .await;
    }
    tracing::info!("stopped");
}

/// A signal that came while the replica was still starting: stop accepting and let open
/// connections (probes) finish, within the grace.
pub async fn before_serving(mut listeners: Listeners, grace: Duration) {
    listeners.stop_accepting();
    let _ = listeners.closed_by(Instant::now() + grace).await;
}
