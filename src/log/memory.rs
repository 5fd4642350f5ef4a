//! The embedded in-memory log: one replica, bounded by events and bytes, pruned oldest first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;

use super::idempotency::{self, Known, Plan};
use super::{AppendRequest, Appended, Bounds, EventLog, LogError};
use crate::event::StoredEvent;

/// Called with newly committed events, in seq order, while the log's lock is held, so the
/// receiver sees them in exactly the log's order. Must not block.
pub type CommitSink = Box<dyn Fn(&[Arc<StoredEvent>]) + Send + Sync>;

#[derive(Debug, Clone, Copy)]
pub struct MemoryLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}

pub struct MemoryLog {
    epoch: String,
    limits: MemoryLimits,
    inner: Mutex<Inner>,
    sink: CommitSink,
}

#[derive(Default)]
struct Inner {
    events: VecDeque<Arc<StoredEvent>>,
    bytes: usize,
    head: u64,
    pruned: u64,
    keys: HashMap<String, Known>,
    /// Keys in the order written, with the highest seq each covers, for pruning with the log.
    key_order: VecDeque<(u64, String)>,
}

impl MemoryLog {
    pub fn new(epoch: String, limits: MemoryLimits, sink: CommitSink) -> MemoryLog {
        MemoryLog {
            epoch,
            limits,
            inner: Mutex::new(Inner::default()),
            sink,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated in a way that breaks
        // ordering (seqs are assigned before anything is pushed), so keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    async fn append(&self, req: AppendRequest) -> Result<Appended, LogError> {
        let mut inner = self.lock();
        let Plan {
            answer,
            fresh,
            keys,
            head,
        } = idempotency::plan(&req, &inner.keys, inner.head)?;
        let now = SystemTime::now();
        let mut committed = Vec::with_capacity(fresh.len());
        for (seq, ev) in fresh {
            let stored = Arc::new(StoredEvent::new(
                &self.epoch,
                seq,
                &ev.method,
                ev.params.as_deref(),
                ev.target.clone(),
                now,
            ));
            inner.bytes += stored.size();
            inner.events.push_back(stored.clone());
            committed.push(stored);
        }
        inner.head = head;
        for record in keys {
            inner
                .key_order
                .push_back((record.max_seq, record.key.clone()));
            inner.keys.insert(record.key, record.known);
        }
        inner.prune(self.limits);
        if !committed.is_empty() {
            (self.sink)(&committed);
        }
        Ok(answer)
    }

    async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        let inner = self.lock();
        if after < inner.pruned {
            return Err(LogError::CursorPruned {
                after,
                pruned: inner.pruned,
            });
        }
        let start = inner.events.partition_point(|e| e.seq <= after);
        Ok(inner.events.range(start..).take(limit).cloned().collect())
    }

    async fn bounds(&self) -> Result<Bounds, LogError> {
        let inner = self.lock();
        Ok(Bounds {
            head: inner.head,
            pruned: inner.pruned,
        })
    }
}

impl Inner {
    /// Drops the oldest events beyond the limits (always keeping the newest one), advances the
    /// watermark, and forgets idempotency keys whose events are gone.
    fn prune(&mut self, limits: MemoryLimits) {
        while self.events.len() > 1
            && (self.events.len() > limits.max_events || self.bytes > limits.max_bytes)
        {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.bytes -= old.size();
            self.pruned = old.seq;
        }
        while let Some((seq, _)) = self.key_order.front() {
            if *seq > self.pruned {
                break;
            }
            if let Some((_, key)) = self.key_order.pop_front() {
                self.keys.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::idempotency::test_support::{ev, req};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn log(max_events: usize) -> (MemoryLog, Arc<AtomicU64>) {
        let last = Arc::new(AtomicU64::new(0));
        let seen = last.clone();
        let sink: CommitSink = Box::new(move |evs| {
            for e in evs {
                // The sink sees every event once, in order.
                assert_eq!(seen.swap(e.seq, Ordering::SeqCst) + 1, e.seq);
            }
        });
        let limits = MemoryLimits {
            max_events,
            max_bytes: usize::MAX,
        };
        (MemoryLog::new("ep".into(), limits, sink), last)
    }

    #[tokio::test]
    async fn appends_in_order_and_prunes_with_watermark() {
        let (log, last) = log(5);
        for i in 0..12 {
            let seqs = log
                .append(req(vec![ev("a", None)], None))
                .await
                .expect("append")
                .seqs;
            assert_eq!(seqs, vec![i + 1]);
        }
        assert_eq!(last.load(Ordering::SeqCst), 12);
        assert_eq!(
            log.bounds().await.expect("b"),
            Bounds {
                head: 12,
                pruned: 7
            }
        );
        let after7: Vec<u64> = log
            .read_after(7, 100)
            .await
            .expect("read")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(after7, vec![8, 9, 10, 11, 12]);
        let page: Vec<u64> = log
            .read_after(9, 2)
            .await
            .expect("read")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(page, vec![10, 11]);
        assert!(matches!(
            log.read_after(6, 10).await,
            Err(LogError::CursorPruned { .. })
        ));
    }

    #[tokio::test]
    async fn request_key_replays_and_conflicts() {
        let (log, last) = log(100);
        let a = log
            .append(req(vec![ev("a", None), ev("b", None)], Some("k")))
            .await
            .expect("first");
        let again = log
            .append(req(vec![ev("a", None), ev("b", None)], Some("k")))
            .await
            .expect("retry");
        assert_eq!(a.seqs, again.seqs);
        assert_eq!((a.new_events, again.new_events), (2, 0));
        assert_eq!(last.load(Ordering::SeqCst), 2, "nothing new committed");
        assert!(matches!(
            log.append(req(vec![ev("c", None)], Some("k"))).await,
            Err(LogError::IdempotencyConflict { index: None })
        ));
    }

    #[tokio::test]
    async fn event_keys_replay_and_conflict_with_index() {
        let (log, last) = log(100);
        let a = log
            .append(req(vec![ev("a", Some("x"))], None))
            .await
            .expect("first")
            .seqs;
        let mixed = log
            .append(req(vec![ev("a", Some("x")), ev("b", Some("y"))], None))
            .await
            .expect("mixed");
        assert_eq!(mixed.seqs, vec![a[0], 2]);
        assert_eq!(mixed.new_events, 1);
        assert_eq!(last.load(Ordering::SeqCst), 2);
        assert!(matches!(
            log.append(req(vec![ev("z", None), ev("other", Some("y"))], None))
                .await,
            Err(LogError::IdempotencyConflict { index: Some(1) })
        ));
        assert_eq!(log.bounds().await.expect("b").head, 2, "all or nothing");
    }

    #[tokio::test]
    async fn keys_are_forgotten_with_their_events() {
        let (log, _) = log(2);
        log.append(req(vec![ev("a", Some("x"))], None))
            .await
            .expect("a");
        log.append(req(vec![ev("b", None)], None)).await.expect("b");
        log.append(req(vec![ev("c", None)], None)).await.expect("c");
        // seq 1 is pruned, so key x is free again and publishes anew.
        let again = log
            .append(req(vec![ev("a", Some("x"))], None))
            .await
            .expect("again");
        assert_eq!(again.seqs, vec![4]);
    }
}
