//! A connection's own wake-ups served in place instead of through the scheduler.
//!
//! hyper's request-body channel wakes the connection's task whenever the handler takes a chunk
//! (`hyper::body::chan::Receiver::poll_next` wakes the sender so it reads on). The handler runs
//! inside the connection's task, so every request that reads its body wakes the task *while it
//! is being polled*. tokio treats such a wake as a yield: the task goes to the back of the run
//! queue and a parked worker is woken to steal it (`schedule_local` with `is_yield`), so each
//! request crosses between the two workers (a futex wake and two context switches) only for the
//! connection to find it has nothing left to do but read on.
//!
//! [`SelfWake`] wraps the connection's future and hands it a waker of its own. A wake that
//! arrives while the future is being polled (from this thread or any other) is remembered and
//! answered by polling the future again right away, at most [`MAX_REPOLLS`] times per poll; any
//! later wake goes to the task's real waker as before. No wake is ever dropped: when the budget
//! of re-polls is spent, the pending wake is passed to the real waker (a real yield, as before).
//! hyper's own fairness yield (after 16 rounds of its dispatch loop) and tokio's cooperative
//! budget thus still reach the scheduler, one re-poll later.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// Re-polls per poll before a wake that came during the poll goes to the scheduler.
pub const MAX_REPOLLS: u32 = 2;

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const POLLING_WOKEN: u8 = 2;

/// A future whose wakes during its own poll are answered by polling it again in place.
pub struct SelfWake<F> {
    inner: Pin<Box<F>>,
    shared: Arc<Shared>,
    waker: Waker,
}

struct Shared {
    state: AtomicU8,
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        loop {
            match self.state.load(Ordering::Acquire) {
                // Being polled: the poller answers the wake by polling again.
                POLLING => {
                    if self
                        .state
                        .compare_exchange(
                            POLLING,
                            POLLING_WOKEN,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                    {
                        return;
                    }
                }
                POLLING_WOKEN => return,
                // Not being polled (or a poll starting right now, which then costs one spare
                // poll): the task's own waker.
                _ => {
                    self.task.wake();
                    return;
                }
            }
        }
    }
}

impl<F: Future> SelfWake<F> {
    pub fn new(inner: F) -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(shared.clone());
        Self {
            inner: Box::pin(inner),
            shared,
            waker,
        }
    }
}

impl<F: Future> Future for SelfWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.shared.task.register(cx.waker());
        this.shared.state.store(POLLING, Ordering::Release);
        let mut inner_cx = Context::from_waker(&this.waker);
        let mut repolls = 0;
        loop {
            if let Poll::Ready(out) = this.inner.as_mut().poll(&mut inner_cx) {
                this.shared.state.store(IDLE, Ordering::Release);
                return Poll::Ready(out);
            }
            // Not woken meanwhile: idle, and later wakes go to the task's waker.
            if this
                .shared
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
            // Woken during the poll.
            if repolls == MAX_REPOLLS {
                this.shared.state.store(IDLE, Ordering::Release);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            repolls += 1;
            this.shared.state.store(POLLING, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use super::*;

    /// The task's waker: counts the wakes the scheduler would get.
    #[derive(Default)]
    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll<F: Future>(fut: &mut Pin<Box<F>>, waker: &Waker) -> Poll<F::Output> {
        fut.as_mut().poll(&mut Context::from_waker(waker))
    }

    fn task_waker() -> (Arc<Counted>, Waker) {
        let counted = Arc::new(Counted::default());
        (counted.clone(), Waker::from(counted))
    }

    /// Wakes itself `self_wakes` times on each poll, hands its waker out, and is ready once
    /// `done` is set.
    struct Probe {
        polls: Arc<AtomicUsize>,
        self_wakes: usize,
        handed_out: Arc<Mutex<Option<Waker>>>,
        done: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.done.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.handed_out.lock().unwrap() = Some(cx.waker().clone());
            for _ in 0..self.self_wakes {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }
    }

    fn probe(self_wakes: usize) -> (Probe, Arc<AtomicUsize>, Arc<Mutex<Option<Waker>>>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let handed_out = Arc::new(Mutex::new(None));
        let p = Probe {
            polls: polls.clone(),
            self_wakes,
            handed_out: handed_out.clone(),
            done: Arc::default(),
        };
        (p, polls, handed_out)
    }

    #[test]
    fn a_wake_during_the_poll_is_answered_in_place_not_by_the_scheduler() {
        // Wakes itself on the first poll only, like hyper's body channel.
        struct Once(usize);
        impl Future for Once {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                self.0 += 1;
                if self.0 == 1 {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Pending
            }
        }
        let (counted, waker) = task_waker();
        let mut fut = Box::pin(SelfWake::new(Once(0)));
        assert!(poll(&mut fut, &waker).is_pending());
        assert_eq!(fut.inner.0, 2, "polled again in place");
        assert_eq!(
            counted.0.load(Ordering::SeqCst),
            0,
            "the scheduler was not woken"
        );
    }

    #[test]
    fn a_future_that_always_wakes_itself_still_yields_to_the_scheduler() {
        let (counted, waker) = task_waker();
        let (p, polls, _) = probe(3);
        let mut fut = Box::pin(SelfWake::new(p));
        for round in 1..=3 {
            assert!(poll(&mut fut, &waker).is_pending());
            let per_poll = 1 + MAX_REPOLLS as usize;
            assert_eq!(polls.load(Ordering::SeqCst), round * per_poll);
            // The last wake was passed on: the task runs again (a real yield).
            assert_eq!(counted.0.load(Ordering::SeqCst), round);
        }
    }

    #[test]
    fn a_wake_after_the_poll_reaches_the_task_from_any_thread() {
        let (counted, waker) = task_waker();
        let (p, polls, handed_out) = probe(0);
        let done = p.done.clone();
        let mut fut = Box::pin(SelfWake::new(p));
        assert!(poll(&mut fut, &waker).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        assert_eq!(counted.0.load(Ordering::SeqCst), 0);

        let inner_waker = handed_out.lock().unwrap().take().unwrap();
        std::thread::spawn(move || inner_waker.wake())
            .join()
            .unwrap();
        assert_eq!(counted.0.load(Ordering::SeqCst), 1, "woken once");

        done.store(true, Ordering::SeqCst);
        assert!(poll(&mut fut, &waker).is_ready());
    }

    #[test]
    fn no_wake_is_lost_under_concurrent_wakes() {
        // A future woken from another thread at random moments, polled only when its task is
        // woken: it must see every wake's effect, counted by a shared tally.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
            let reader = tokio::spawn(SelfWake::new(async move {
                let mut seen = 0u32;
                while let Some(n) = rx.recv().await {
                    seen += n;
                }
                seen
            }));
            let writer = std::thread::spawn(move || {
                for _ in 0..100_000 {
                    tx.send(1).unwrap();
                }
            });
            writer.join().unwrap();
            let seen = tokio::time::timeout(std::time::Duration::from_secs(30), reader)
                .await
                .expect("every message reached the reader")
                .unwrap();
            assert_eq!(seen, 100_000);
        });
    }
}
