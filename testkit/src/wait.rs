//! Awaiting conditions with a deadline instead of sleeping for a guessed time.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};

/// Upper bound for anything that should happen "promptly" (a frame after a publish, a metric update).
pub const SOON: Duration = Duration::from_secs(10);

/// A short wait used to show that something does *not* arrive.
pub const QUIET: Duration = Duration::from_millis(400);

/// How often conditions are re-checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Re-evaluates `check` until it yields `Some(value)`, or fails with [`Error::Timeout`] naming
/// `what` after `timeout`. The check runs at least once.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(Error::timeout(what, timeout));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Re-evaluates `check` until it is true, or fails with [`Error::Timeout`] naming `what`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}
