//! The signals that end every stream of a kind at once: the broadcaster's close (every GET
//! stream, when the drain stops) and the end of the `subscriptions/listen` streams (the grace's
//! last second).
//!
//! Every stream checks its signal each time it wakes, that is once per event it is woken for, so
//! reading one is an atomic load. (A `CancellationToken` shared by every stream costs two locks of
//! the one mutex they all share at each wake-up: its `is_cancelled`, and the poll of its
//! `cancelled()` future.) Firing a signal wakes every stream through the broadcaster's head
//! watch, which each already waits on (see [`super::Broadcaster::close`]); the token is there for
//! what awaits the signal without a feed (a long poll, a stream gathering a burst).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// One end-of-streams signal. Cheap to clone; fired once, for good.
#[derive(Clone, Default)]
pub struct Closing(Arc<Inner>);

#[derive(Default)]
struct Inner {
    fired: AtomicBool,
    token: CancellationToken,
}

impl Closing {
    /// Whether the signal has fired (no lock).
    pub fn is_fired(&self) -> bool {
        self.0.fired.load(Ordering::Acquire)
    }

    /// Resolves once the signal has fired.
    pub fn fired(&self) -> WaitForCancellationFuture<'_> {
        self.0.token.cancelled()
    }

    /// Fires the signal. The streams waiting on a feed must then be woken (the broadcaster does).
    pub(super) fn fire(&self) {
        self.0.fired.store(true, Ordering::Release);
        self.0.token.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fired_signal_reads_fired_in_every_clone_and_resolves_its_waiters() {
        let signal = Closing::default();
        let clone = signal.clone();
        assert!(!clone.is_fired());
        let waiter = tokio::spawn(async move { clone.fired().await });
        signal.fire();
        assert!(signal.is_fired());
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("resolved")
            .expect("joined");
    }
}
