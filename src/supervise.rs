//! Background tasks under supervision: the LISTEN bridge, the publish writer, retention, the
//! replica heartbeat, the stats sampler, the session keep-alive and the admin-token watcher run
//! until the replica stops. Each runs as a task of its own; when one fails (returns an error),
//! panics, or returns while the replica is not stopping, its cause is logged, it is counted
//! (`mcp_fanout_task_restarts_total{task}`), whatever it kept up is marked down (its `on_down`:
//! the bridge's readiness and LISTEN gauge), and it is started again after a jittered backoff
//! (100 ms doubling to 30 s; back to 100 ms after it has run for a minute).

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bridge::backoff::Backoff;
use crate::db::with_causes;
use crate::metrics::{Metrics, Task};

/// What a supervised task fails with.
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// A task that ran this long before failing restarts after the shortest delay again.
const STABLE: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Supervisor {
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl Supervisor {
    /// Supervises tasks until `stop` is cancelled (each task is given it and must return then).
    pub fn new(metrics: Arc<Metrics>, stop: CancellationToken) -> Supervisor {
        Supervisor { metrics, stop }
    }

    /// Runs `start(stop)` as task `name`, restarted whenever it ends before `stop`. The handle
    /// resolves once the task has ended after `stop`.
    pub fn spawn<F, Fut>(&self, name: Task, start: F) -> JoinHandle<()>
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
    {
        self.spawn_with(name, start, || {})
    }

    /// [`spawn`](Self::spawn), with `on_down` run each time the task ends before `stop` (before it
    /// is restarted).
    pub fn spawn_with<F, Fut, D>(&self, name: Task, start: F, on_down: D) -> JoinHandle<()>
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
        D: Fn() + Send + 'static,
    {
        tokio::spawn(supervise(
            name,
            start,
            on_down,
            self.metrics.clone(),
            self.stop.clone(),
        ))
    }
}

async fn supervise<F, Fut, D>(
    name: Task,
    mut start: F,
    on_down: D,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) where
    F: FnMut(CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
    D: Fn() + Send + 'static,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    loop {
        let started = Instant::now();
        let outcome = tokio::spawn(start(stop.clone())).await;
        let cause = match outcome {
            Ok(Ok(())) if stop.is_cancelled() => return,
            Ok(Ok(())) => "it returned while the replica is not stopping".to_owned(),
            Ok(Err(error)) => with_causes(error.as_ref()),
            Err(e) if e.is_panic() => format!("panic: {}", panic_message(e.into_panic())),
            // Cancelled: the runtime is shutting down.
            Err(_) => return,
        };
        on_down();
        if stop.is_cancelled() {
            tracing::error!(task = name.as_str(), cause = %cause, "background task failed while stopping");
            return;
        }
        metrics.task_restarted(name);
        if started.elapsed() >= STABLE {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::error!(
            task = name.as_str(),
            cause = %cause,
            restart_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "background task failed; restarting it"
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "a panic without a message".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::TaskLabel;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn restarts(m: &Metrics, task: &'static str) -> u64 {
        m.task_restarts.get_or_create(&TaskLabel { task }).get()
    }

    #[tokio::test]
    async fn a_task_that_panics_fails_or_returns_is_restarted_and_counted_until_stop() {
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let sup = Supervisor::new(metrics.clone(), stop.clone());
        let runs = Arc::new(AtomicUsize::new(0));
        let downs = Arc::new(AtomicUsize::new(0));
        let (r, d) = (runs.clone(), downs.clone());
        let handle = sup.spawn_with(
            Task::Bridge,
            move |stop: CancellationToken| {
                let run = r.fetch_add(1, Ordering::SeqCst);
                async move {
                    match run {
                        0 => panic!("row decode"),
                        1 => Err::<(), TaskError>("the log's rows cannot be read".into()),
                        2 => Ok(()),
                        _ => {
                            stop.cancelled().await;
                            Ok(())
                        }
                    }
                }
            },
            move || {
                d.fetch_add(1, Ordering::SeqCst);
            },
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 4 {
            assert!(Instant::now() < deadline, "the task was not restarted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(restarts(&metrics, "bridge"), 3);
        assert_eq!(downs.load(Ordering::SeqCst), 3);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("the supervisor ends after stop")
            .expect("no panic");
        assert_eq!(restarts(&metrics, "bridge"), 3);
    }
}
