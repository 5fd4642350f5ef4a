//! Lifecycle: readiness, drain and stop (contract §5), and the signal that starts shutdown.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Lifecycle {
    ready: AtomicBool,
    /// The LISTEN bridge failed (it is restarting): this replica cannot deliver what others
    /// publish. A lost database connection is not a failure (every replica has it; the bridge
    /// reconnects); an error the bridge cannot get past by reconnecting, or a panic, is.
    bridge_failed: AtomicBool,
    draining: CancellationToken,
    stopped: AtomicBool,
}

impl Lifecycle {
    /// Startup is done (migrations applied, LISTEN connected once).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// `/readyz` answers 200: started, the bridge (if any) is not failing, and shutdown has not
    /// begun.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_bridge_failed() && !self.is_draining()
    }

    /// The bridge failed (`true`) or works again (`false`): readiness follows.
    pub fn set_bridge_failed(&self, failed: bool) {
        self.bridge_failed.store(failed, Ordering::Release);
    }

    pub fn is_bridge_failed(&self) -> bool {
        self.bridge_failed.load(Ordering::Acquire)
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
}

/// SIGTERM and SIGINT, listened for from the moment this is installed: a signal that arrives
/// while the replica starts (after it answers probes, before it waits for signals) starts the
/// graceful shutdown instead of killing the process with the default action.
pub struct ShutdownSignal {
    terminate: Option<Signal>,
    interrupt: Option<Signal>,
}

impl ShutdownSignal {
    pub fn install() -> ShutdownSignal {
        let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(s) => Some(s),
            Err(error) => {
                tracing::error!(%error, signal = name, "cannot listen for the signal");
                None
            }
        };
        ShutdownSignal {
            terminate: listen(SignalKind::terminate(), "SIGTERM"),
            interrupt: listen(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Resolves on SIGTERM or SIGINT (Ctrl-C).
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = next(&mut self.interrupt) => tracing::info!(signal = "SIGINT", "shutdown requested"),
            _ = next(&mut self.terminate) => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        }
    }
}

async fn next(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
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
        l.set_bridge_failed(true);
        assert!(!l.is_ready());
        l.set_bridge_failed(false);
        assert!(l.is_ready());
        l.begin_drain();
        assert!(!l.is_ready() && l.is_draining() && !l.is_stopped());
        l.stop();
        assert!(l.is_stopped());
    }
}
