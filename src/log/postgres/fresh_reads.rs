//! Concurrent reads of the log's bounds share queries, and each caller still sees every commit
//! made before it asked: it gets the answer of a query that started after its call. At most one
//! query runs and one waits to start; whoever asks meanwhile joins the waiting one. A flood of
//! polls or new streams (each reads the bounds first) costs the database one query per round
//! trip, not one per request, and a lone caller waits no longer than before.
//!
//! Like the shared page reads, each query runs to its end in a task of its own, so a query whose
//! callers all left still gives its pooled connection back. The price: while the database does
//! not answer, a caller queued behind a hanging query waits for it and then for its own, up to
//! twice the database timeout (`FANOUT_DB_TIMEOUT_MS`) before its `503`.

use std::future::Future;
use std::sync::{Arc, Mutex};

use super::{lock, spawn_shared, ReadError, SharedRead};

pub(super) struct FreshReads<T: Clone> {
    waiting: Arc<Mutex<Waiting<T>>>,
    /// Held by the query running.
    running: Arc<tokio::sync::Mutex<()>>,
}

struct Waiting<T: Clone> {
    /// Names each query, so one that starts clears only itself.
    next: u64,
    /// The query waiting to start, which new callers join.
    read: Option<(u64, SharedRead<T>)>,
}

impl<T: Clone> Default for FreshReads<T> {
    fn default() -> Self {
        FreshReads {
            waiting: Arc::new(Mutex::new(Waiting {
                next: 0,
                read: None,
            })),
            running: Arc::default(),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> FreshReads<T> {
    /// The answer of a query (`fetch`'s) that starts after this call.
    pub(super) async fn read<F, Fut>(&self, fetch: F) -> Result<T, ReadError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, ReadError>> + Send + 'static,
    {
        let read = {
            let mut waiting = lock(&self.waiting);
            match waiting.read.as_ref() {
                Some((_, read)) => read.clone(),
                None => {
                    waiting.next += 1;
                    let id = waiting.next;
                    let (slot, running) = (self.waiting.clone(), self.running.clone());
                    // Spawned while `waiting` is locked: it cannot leave the slot before it is in.
                    let read = spawn_shared(async move {
                        let _running = running.lock_owned().await;
                        // Started: who asks from now on waits for the next query.
                        {
                            let mut waiting = lock(&slot);
                            if waiting.read.as_ref().is_some_and(|(i, _)| *i == id) {
                                waiting.read = None;
                            }
                        }
                        fetch().await
                    });
                    waiting.read = Some((id, read.clone()));
                    read
                }
            }
        };
        read.await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use futures::future::{BoxFuture, FutureExt};
    use tokio::sync::Semaphore;

    use super::super::tests::until;
    use super::*;

    /// A fake database: each query answers the commits made when it started, once `go` lets it
    /// finish; `queries` counts them.
    #[derive(Clone)]
    struct Fake {
        commits: Arc<AtomicU64>,
        queries: Arc<AtomicU64>,
        go: Arc<Semaphore>,
    }

    impl Default for Fake {
        fn default() -> Fake {
            Fake {
                commits: Arc::default(),
                queries: Arc::default(),
                go: Arc::new(Semaphore::new(0)),
            }
        }
    }

    impl Fake {
        fn fetch(&self) -> impl FnOnce() -> BoxFuture<'static, Result<u64, ReadError>> {
            let fake = self.clone();
            move || {
                async move {
                    fake.queries.fetch_add(1, Ordering::SeqCst);
                    let seen = fake.commits.load(Ordering::SeqCst);
                    let _ = fake.go.acquire().await.map(|p| p.forget());
                    Ok(seen)
                }
                .boxed()
            }
        }
    }

    /// Callers that ask while a query runs share the next one, and every caller's answer is from
    /// a query that started after it asked (it sees the commits made before its call).
    #[tokio::test]
    async fn callers_share_the_next_query_and_see_what_was_committed_before_them() {
        let reads = FreshReads::<u64>::default();
        let fake = Fake::default();
        // Each caller commits, then asks: it must see its own commit.
        let ask = || {
            let before = fake.commits.fetch_add(1, Ordering::SeqCst) + 1;
            (before, reads.read(fake.fetch()))
        };
        let (b1, first) = ask();
        futures::pin_mut!(first);
        assert!(futures::poll!(&mut first).is_pending());
        until("the first query runs", || {
            fake.queries.load(Ordering::SeqCst) == 1
        })
        .await;
        // Three callers while it runs: they wait for one query after it.
        let (b2, second) = ask();
        let (b3, third) = ask();
        let (b4, fourth) = ask();
        futures::pin_mut!(second, third, fourth);
        assert!(futures::poll!(&mut second).is_pending());
        assert!(futures::poll!(&mut third).is_pending());
        assert!(futures::poll!(&mut fourth).is_pending());
        fake.go.add_permits(1);
        assert_eq!(first.await.expect("read"), 1);
        until("the shared second query runs", || {
            fake.queries.load(Ordering::SeqCst) == 2
        })
        .await;
        let (b5, late) = ask();
        futures::pin_mut!(late);
        assert!(futures::poll!(&mut late).is_pending());
        fake.go.add_permits(2);
        let answers = [
            (b1, 1),
            (b2, second.await.expect("read")),
            (b3, third.await.expect("read")),
            (b4, fourth.await.expect("read")),
            (b5, late.await.expect("read")),
        ];
        for (before, seen) in answers {
            assert!(
                seen >= before,
                "saw {seen} commits, {before} were made before"
            );
        }
        let seen: Vec<u64> = answers.iter().map(|(_, s)| *s).collect();
        assert_eq!(seen, vec![1, 4, 4, 4, 5]);
        assert_eq!(
            fake.queries.load(Ordering::SeqCst),
            3,
            "five callers, three queries"
        );
    }

    /// A query whose callers all left still runs to its end, and the next caller gets a new one.
    #[tokio::test]
    async fn a_query_every_caller_left_still_ends() {
        let reads = Arc::new(FreshReads::<u64>::default());
        let fake = Fake::default();
        let caller = {
            let (reads, fetch) = (reads.clone(), fake.fetch());
            tokio::spawn(async move { reads.read(fetch).await })
        };
        until("the query runs", || {
            fake.queries.load(Ordering::SeqCst) == 1
        })
        .await;
        caller.abort();
        let _ = caller.await;
        fake.go.add_permits(2);
        let again = reads.read(fake.fetch()).await.expect("read");
        assert_eq!(again, 0);
        assert_eq!(fake.queries.load(Ordering::SeqCst), 2);
    }
}
