//! Lifecycle: readiness, drain and stop (SPEC §5), and the signal that starts shutdown.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Lifecycle {
    ready: AtomicBool,
    draining: CancellationToken,
    stopped: AtomicBool,
    /// The end of the grace: `subscriptions/listen` streams send their result and close.
    listens_end: CancellationToken,
}

impl Lifecycle {
    /// Startup is done (migrations applied, LISTEN connected once).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// `/readyz` answers 200: started, and shutdown has not begun.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    /// Shutdown began: readiness fails, new streams are shed, existing ones keep flowing.
    pub fn begin_drain(&self) {
        self.draining.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    pub fn draining(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.draining.cancelled()
    }

    /// The drain is over: publishes are refused from now on.
    pub fn stop(&self) {
        self.begin_drain();
        self.stopped.store(true, Ordering::Release);
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Ends every `subscriptions/listen` stream (with its `complete` result).
    pub fn end_listens(&self) {
        self.listens_end.cancel();
    }

    /// The token cancelled at the end of the grace (listen streams end).
    pub fn listens_end_token(&self) -> CancellationToken {
        self.listens_end.clone()
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
        _ = terminate => tracing::info!(signal = "SIGTERM", "shutdown requested"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_lifecycle() {
        let l = Lifecycle::default();
        assert!(!l.is_ready());
        l.set_ready();
        assert!(l.is_ready());
        l.begin_drain();
        assert!(!l.is_ready() && l.is_draining() && !l.is_stopped());
        l.stop();
        assert!(l.is_stopped());
    }
}
