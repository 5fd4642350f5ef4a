//! Work an HTTP/1.x connection's own task drives beside hyper's side of it.
//!
//! A handler runs inside its connection's task on HTTP/1.x (hyper polls the service's future in
//! the connection's dispatch loop). A future it hands to [`OwnTask::drive`] — proxy mode's
//! upstream connection, see `http::kept_upstream` — is polled by that same task from then on: the
//! wakes between the handler and that work (a request handed over, its answer handed back, each
//! chunk of the answer's body) stay inside one task, answered in place by `self_wake`, instead
//! of going through the scheduler to a task of their own, which may be on the other worker.
//!
//! One piece of work at a time: driving another drops the one before, with the handle kept with
//! it. The work and its handle are dropped when the work ends, and with the connection. HTTP/2
//! requests get no `OwnTask` (their handlers run as tasks of their own, concurrently), and
//! neither does any connection of a listener that has no use for one (`ConnOptions::own_tasks`):
//! there the connection's task polls nothing more than before.

use std::any::Any;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use futures::task::AtomicWaker;

type Work = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection's own task, as a place to drive work in; cheap to clone (one `Arc`).
#[derive(Clone, Default)]
pub struct OwnTask(Arc<Shared>);

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// The connection's task, as last seen by [`OwnTask::run`].
    task: AtomicWaker,
}

#[derive(Default)]
struct State {
    work: Option<Work>,
    /// A handle on `work` (a sender to it), taken and put back by the handler that uses it.
    kept: Option<Box<dyn Any + Send>>,
}

impl OwnTask {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drives `work` in the connection's task from now on, with `kept` as its handle; what was
    /// driven and kept before is dropped.
    pub fn drive<K: Any + Send>(&self, work: impl Future<Output = ()> + Send + 'static, kept: K) {
        let new = State {
            work: Some(Box::pin(work)),
            kept: Some(Box::new(kept)),
        };
        let old = std::mem::replace(&mut *self.state(), new);
        // Dropped outside the lock: a drop may run arbitrary code.
        drop(old);
        // The task polls the new work at once (a wake during its own poll is answered in place).
        self.0.task.wake();
    }

    /// Takes the handle kept with the work being driven, if there is one of type `K`.
    pub fn take_kept<K: Any + Send>(&self) -> Option<K> {
        let mut state = self.state();
        match state.kept.take()?.downcast::<K>() {
            Ok(kept) => Some(*kept),
            Err(other) => {
                state.kept = Some(other);
                None
            }
        }
    }

    /// Puts back a handle [`take_kept`](Self::take_kept) took, if the work it goes with is still
    /// driven (it is dropped otherwise).
    pub fn put_back<K: Any + Send>(&self, kept: K) {
        let mut state = self.state();
        if state.work.is_some() {
            state.kept = Some(Box::new(kept));
        }
    }

    /// Drops the work and its handle: the connection has ended (what else holds this connection's
    /// state, a handed-off stream's writer, must not keep them).
    pub fn end(&self) {
        let ended = std::mem::take(&mut *self.state());
        drop(ended);
    }

    /// [`run`](Self::run) for `own`, or nothing, for ever, without one.
    pub async fn run_if_any(own: Option<&OwnTask>) -> Infallible {
        match own {
            Some(own) => own.run().await,
            None => std::future::pending().await,
        }
    }

    /// Drives the work handed over, for as long as the connection lives (never ends): the
    /// connection's task polls this beside hyper's side of the connection.
    pub async fn run(&self) -> Infallible {
        poll_fn(|cx| {
            self.0.task.register(cx.waker());
            let ended = {
                let mut state = self.state();
                match state.work.as_mut().map(|w| w.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => Some(std::mem::take(&mut *state)),
                    _ => None,
                }
            };
            // Dropped outside the lock: a drop may run arbitrary code.
            drop(ended);
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn work_runs_in_the_runner_and_its_handle_goes_with_it() {
        let own = OwnTask::default();
        let runner = own.clone();
        let running = tokio::spawn(async move { runner.run().await });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        own.drive(
            async move {
                let _ = rx.await;
                let _ = done_tx.send(());
            },
            7u32,
        );
        assert_eq!(own.take_kept::<String>(), None, "a handle of another type");
        assert_eq!(own.take_kept::<u32>(), Some(7));
        own.put_back(7u32);
        let (tx2, rx2) = tokio::sync::oneshot::channel::<()>();
        own.drive(
            async move {
                let _ = rx2.await;
            },
            8u32,
        );
        assert_eq!(own.take_kept::<u32>(), Some(8));
        own.put_back(8u32);
        // The first work was dropped by the second drive: its sender sees a closed receiver.
        assert!(tx.send(()).is_err());
        assert!(done_rx.await.is_err());
        // The second ends: the runner drops it and its handle.
        tx2.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while own.state().work.is_some() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(own.take_kept::<u32>(), None);
        own.put_back(9u32);
        assert_eq!(own.take_kept::<u32>(), None, "no work: nothing is kept");
        running.abort();
    }
}
