//! Concurrent reads of the same page (many lagging cursors at one position) share one query.
//!
//! Each query runs to its end in a task of its own, whoever still waits for it, and takes itself
//! out of the table when done. A read its waiters all gave up on (clients gone while Postgres was
//! slow) must not stay half-done: a future nobody polls keeps its pooled connection checked out
//! for ever — its timeout is only checked when it is polled — and a few such reads at random
//! cursors used to exhaust the pool, so publishes failed until a restart.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use super::{lock, spawn_shared, Page, ReadError, SharedRead};

/// A read's key: the cursor it reads after, its page size and, for one viewer's read, how far it
/// looks and whose view it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub after: u64,
    pub limit: usize,
    pub view: Option<View>,
}

/// A viewer's filtered read: positions up to `upto`, what `tenant` and `session` may see.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct View {
    pub upto: u64,
    pub tenant: Option<String>,
    pub session: Option<String>,
}

impl Key {
    /// Everything after `after`, `limit` events.
    pub(super) fn page(after: u64, limit: usize) -> Key {
        Key {
            after,
            limit,
            view: None,
        }
    }
}

#[derive(Default)]
pub(super) struct SharedReads {
    table: Arc<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    /// Names each read, so a finished one removes itself and not a newer read of the same key.
    next: u64,
    reads: HashMap<Key, (u64, SharedRead<Page>)>,
}

impl SharedReads {
    /// The result of `fetch` for `key`, or of the read of `key` already running.
    pub(super) async fn read<F>(&self, key: Key, fetch: F) -> Result<Page, ReadError>
    where
        F: Future<Output = Result<Page, ReadError>> + Send + 'static,
    {
        let read = {
            let mut table = lock(&self.table);
            if let Some((_, read)) = table.reads.get(&key) {
                read.clone()
            } else {
                table.next += 1;
                let id = table.next;
                let own = self.table.clone();
                let key_done = key.clone();
                // Spawned while the table is locked: it cannot remove its entry before it is in.
                let read = spawn_shared(async move {
                    let result = fetch.await;
                    let mut table = lock(&own);
                    if table.reads.get(&key_done).is_some_and(|(i, _)| *i == id) {
                        table.reads.remove(&key_done);
                    }
                    result
                });
                table.reads.insert(key, (id, read.clone()));
                read
            }
        };
        read.await
    }

    /// How many reads are running.
    #[cfg(test)]
    fn running(&self) -> usize {
        lock(&self.table).reads.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::super::tests::until;
    use super::*;

    /// A fetch that waits for `go`, then counts its end in `done`.
    async fn held_fetch(go: Arc<Notify>, done: Arc<AtomicUsize>) -> Result<Page, ReadError> {
        go.notified().await;
        done.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::default())
    }

    /// Every waiter gone before the query ends: it still runs to its end (its connection goes
    /// back to the pool) and leaves the table.
    #[tokio::test]
    async fn a_read_every_waiter_left_still_finishes_and_leaves_the_table() {
        let reads = Arc::new(SharedReads::default());
        let (go, done) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
        let waiter = {
            let (reads, fetch) = (reads.clone(), held_fetch(go.clone(), done.clone()));
            tokio::spawn(async move { reads.read(Key::page(7, 10), fetch).await })
        };
        until("the read starts", || reads.running() == 1).await;
        waiter.abort();
        let _ = waiter.await;
        go.notify_one();
        until("the abandoned read ends", || {
            done.load(Ordering::SeqCst) == 1
        })
        .await;
        until("and leaves the table", || reads.running() == 0).await;
    }

    /// Two waiters of one key share one query; a later read of the key runs a new one.
    #[tokio::test]
    async fn concurrent_reads_of_one_key_share_one_query() {
        let reads = SharedReads::default();
        let (go, done) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
        let first = reads.read(Key::page(1, 10), held_fetch(go.clone(), done.clone()));
        let second = reads.read(Key::page(1, 10), held_fetch(go.clone(), done.clone()));
        futures::pin_mut!(first, second);
        assert!(futures::poll!(&mut first).is_pending());
        assert!(futures::poll!(&mut second).is_pending(), "both waiting");
        go.notify_one();
        let (a, b) = futures::join!(first, second);
        assert!(a.is_ok() && b.is_ok(), "both answered");
        assert_eq!(done.load(Ordering::SeqCst), 1, "one query for both");
        until("the table is empty", || reads.running() == 0).await;
        go.notify_one();
        assert!(reads
            .read(Key::page(1, 10), held_fetch(go.clone(), done.clone()))
            .await
            .is_ok());
        assert_eq!(done.load(Ordering::SeqCst), 2, "a later read queries again");
    }
}
