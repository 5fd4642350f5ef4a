//! What an HTTP/1.x connection's own task keeps beside hyper's side of it: one handle a handler
//! leaves for the connection's next request — proxy mode's upstream connection, see
//! `http::kept_upstream` — watched while it waits.
//!
//! A handler runs inside its connection's task on HTTP/1.x (hyper polls the service's future in
//! the connection's dispatch loop), and so does the reading of its answer's body. Between
//! requests the kept handle is idle; it is watched with the connection's task's waker
//! ([`Kept::poll_gone`], registered when it is kept and again at each of [`OwnTask::run`]'s
//! polls), so one the other end closed is dropped as soon as that is seen (with what it holds),
//! not at the next request. The handle and its watch are dropped with the connection.
//! HTTP/2 requests get no `OwnTask` (their handlers run as tasks of their own, concurrently), and
//! neither does any connection of a listener that has no use for one (`ConnOptions::own_tasks`):
//! there the connection's task polls nothing more than before.

use std::any::Any;
use std::convert::Infallible;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A handle kept between requests.
pub trait Kept: Any + Send {
    /// `Ready` once the handle is of no more use (its other end closed it); polled while it is
    /// kept, with the connection's task's context.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// A connection's own task, as a place to keep a handle in; cheap to clone (one `Arc`).
#[derive(Clone, Default)]
pub struct OwnTask(Arc<Shared>);

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    kept: Option<Box<dyn Kept>>,
    /// The connection's task, as last seen by [`OwnTask::run`]: a handle kept is watched with it.
    task: Option<Waker>,
    /// The connection has ended: nothing is kept any more.
    ended: bool,
}

impl OwnTask {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the handle kept, if there is one of type `K`.
    pub fn take_kept<K: Kept>(&self) -> Option<K> {
        let mut state = self.state();
        if !state.kept.as_deref().is_some_and(|k| <dyn Any>::is::<K>(k)) {
            return None;
        }
        let kept: Box<dyn Any + Send> = state.kept.take()?;
        drop(state);
        kept.downcast::<K>().ok().map(|k| *k)
    }

    /// Keeps `kept` for the connection's next request, watched from now on; what was kept before
    /// is dropped, and so is `kept` once the connection has ended.
    pub fn keep<K: Kept>(&self, kept: K) {
        let mut kept: Box<dyn Kept> = Box::new(kept);
        let mut state = self.state();
        if state.ended {
            return;
        }
        // Watched from now on with the connection's task (no wake of the task needed for that).
        let gone = match &state.task {
            Some(task) => kept.poll_gone(&mut Context::from_waker(task)).is_ready(),
            None => false,
        };
        let old = if gone {
            Some(kept)
        } else {
            state.kept.replace(kept)
        };
        drop(state);
        // Dropped outside the lock: a drop may run arbitrary code.
        drop(old);
    }

    /// Drops the handle: the connection has ended (what else holds this connection's state, a
    /// handed-off stream's writer, must not keep it).
    pub fn end(&self) {
        let ended = std::mem::replace(
            &mut *self.state(),
            State {
                kept: None,
                task: None,
                ended: true,
            },
        );
        drop(ended);
    }

    /// [`run`](Self::run) for `own`, or nothing, for ever, without one.
    pub async fn run_if_any(own: Option<&OwnTask>) -> Infallible {
        match own {
            Some(own) => own.run().await,
            None => std::future::pending().await,
        }
    }

    /// Watches the handle kept, for as long as the connection lives (never ends): the
    /// connection's task polls this beside hyper's side of the connection, and drops a handle
    /// whose other end is gone.
    pub async fn run(&self) -> Infallible {
        poll_fn(|cx| {
            let gone = {
                let mut state = self.state();
                if !state.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                    state.task = Some(cx.waker().clone());
                }
                match state.kept.as_mut().map(|k| k.poll_gone(cx)) {
                    Some(Poll::Ready(())) => state.kept.take(),
                    _ => None,
                }
            };
            // Dropped outside the lock: a drop may run arbitrary code.
            drop(gone);
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Gone once its flag is set; says when it is dropped.
    struct Handle {
        n: u32,
        gone: Arc<AtomicBool>,
        dropped: Option<tokio::sync::oneshot::Sender<u32>>,
    }

    impl Kept for Handle {
        fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
            if self.gone.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    impl Drop for Handle {
        fn drop(&mut self) {
            if let Some(tx) = self.dropped.take() {
                let _ = tx.send(self.n);
            }
        }
    }

    struct Other;

    impl Kept for Other {
        fn poll_gone(&mut self, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }

    fn handle(n: u32) -> (Handle, Arc<AtomicBool>, tokio::sync::oneshot::Receiver<u32>) {
        let gone = Arc::new(AtomicBool::new(false));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let h = Handle {
            n,
            gone: gone.clone(),
            dropped: Some(tx),
        };
        (h, gone, rx)
    }

    #[tokio::test]
    async fn a_kept_handle_is_taken_back_as_what_it_is_and_dropped_once_gone_or_ended() {
        let own = OwnTask::default();
        let runner = own.clone();
        let running = tokio::spawn(async move { runner.run().await });
        let (h, gone, dropped) = handle(7);
        own.keep(h);
        assert!(
            own.take_kept::<Other>().is_none(),
            "a handle of another type"
        );
        let h = own.take_kept::<Handle>().unwrap();
        assert_eq!(h.n, 7);
        own.keep(h);
        // Its other end goes: the runner drops it without a request asking.
        gone.store(true, Ordering::SeqCst);
        let n = tokio::time::timeout(Duration::from_secs(5), dropped)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 7);
        assert!(own.take_kept::<Handle>().is_none());
        // Kept again, then the connection ends: dropped, and nothing is kept after.
        let (h, _gone, dropped) = handle(8);
        own.keep(h);
        own.end();
        assert_eq!(dropped.await.unwrap(), 8);
        let (h, _gone, dropped) = handle(9);
        own.keep(h);
        assert_eq!(
            dropped.await.unwrap(),
            9,
            "kept after the end: dropped at once"
        );
        assert!(own.take_kept::<Handle>().is_none());
        running.abort();
    }
}
