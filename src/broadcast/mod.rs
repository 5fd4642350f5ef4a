//! The per-replica broadcaster: a ring of recent framed events, a head watch, and subscriber
//! accounting. Publishing appends to the ring and wakes waiters; it never waits for a subscriber.
//! Each subscriber is a [`Feed`] (a cursor) that reads the ring, or the log when it has fallen
//! behind the ring, so a burst larger than the ring never disconnects a healthy subscriber.

pub mod closing;
pub mod coalesce;
pub mod feed;
pub mod guard;
pub mod pump;
pub mod ring;
pub mod stream;
pub mod stream_claims;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;

pub use crate::metrics::{DropReason, SubscriberKind};
pub use closing::Closing;
pub use coalesce::Coalescer;
pub use feed::Feed;
pub use guard::SubscriberGuard;
pub use ring::{Ring, RingLimits, RingRead};
pub use stream_claims::{StreamClaim, StreamClaims};

use crate::event::StoredEvent;
use crate::metrics::{Metrics, ShedReason};
use crate::per_client::{ClientKey, PerClient};

#[derive(Clone)]
pub struct Broadcaster {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    ring: RwLock<Ring>,
    head_tx: watch::Sender<u64>,
    /// Every GET stream ends (the drain's stop).
    closed: Closing,
    /// Every `subscriptions/listen` stream ends (the grace's last second).
    listens_end: Closing,
    subscribers: AtomicUsize,
    cap: usize,
    /// Slots per client, when `FANOUT_MAX_SUBSCRIBERS_PER_CLIENT` bounds them (set once, at start).
    per_client: std::sync::OnceLock<Arc<PerClient>>,
    claims: Arc<StreamClaims>,
    pub(crate) metrics: Arc<Metrics>,
}

impl Broadcaster {
    /// A broadcaster whose ring starts at `head` (events at or below it are read from the log).
    pub fn new(head: u64, limits: RingLimits, cap: usize, metrics: Arc<Metrics>) -> Broadcaster {
        let (head_tx, _) = watch::channel(head);
        Broadcaster {
            shared: Arc::new(Shared {
                ring: RwLock::new(Ring::new(head, limits)),
                head_tx,
                closed: Closing::default(),
                listens_end: Closing::default(),
                subscribers: AtomicUsize::new(0),
                cap,
                per_client: std::sync::OnceLock::new(),
                claims: Arc::default(),
                metrics,
            }),
        }
    }

    /// Appends committed events (in seq order; already-seen seqs are skipped) and wakes every
    /// waiting subscriber. O(events), never awaits.
    pub fn push(&self, events: &[Arc<StoredEvent>]) {
        let head = {
            let mut ring = self.write_ring();
            for ev in events {
                ring.push(ev.clone());
            }
            ring.head()
        };
        self.advanced(head);
    }

    /// Whether [`push_if_next`](Self::push_if_next) would push a commit of the consecutive seqs
    /// `first..=last` now (it continues the ring's head). Only a hint: the bridge may push in
    /// between, and `push_if_next` decides.
    pub fn would_continue(&self, first: u64, last: u64) -> bool {
        let head = self.head();
        first <= head + 1 && head < last
    }

    /// This replica's own commit (consecutive seqs), pushed before its bridge reads it back from
    /// the log: only if it continues the ring exactly, once what the ring already has is skipped.
    /// Otherwise nothing is pushed: an event committed before it (by another replica, or from
    /// SQL) has not been read yet, and pushing past it would leave a gap; the bridge delivers
    /// both, in order. Returns whether it pushed.
    pub fn push_if_next(&self, events: &[Arc<StoredEvent>]) -> bool {
        let consecutive = events.windows(2).all(|w| w[1].seq == w[0].seq + 1);
        let head = {
            let mut ring = self.write_ring();
            let head = ring.head();
            let fresh = events.iter().skip_while(|e| e.seq <= head);
            let mut fresh = fresh.peekable();
            if !consecutive || fresh.peek().is_none_or(|e| e.seq != head + 1) {
                return false;
            }
            for ev in fresh {
                ring.push(ev.clone());
            }
            ring.head()
        };
        self.advanced(head);
        true
    }

    /// The ring's head moved to `head`: published, and every waiting subscriber woken.
    fn advanced(&self, head: u64) {
        self.shared
            .metrics
            .log_head
            .set(i64::try_from(head).unwrap_or(i64::MAX));
        self.shared.head_tx.send_if_modified(|h| {
            let changed = *h != head;
            *h = head;
            changed
        });
    }

    /// The newest `n` events of the ring, newest first (for the operator console).
    pub fn recent(&self, n: usize) -> Vec<Arc<StoredEvent>> {
        self.read_ring().newest(n).cloned().collect()
    }

    /// Highest seq in the ring.
    pub fn head(&self) -> u64 {
        *self.shared.head_tx.borrow()
    }

    pub(crate) fn read_ring(&self) -> RwLockReadGuard<'_, Ring> {
        self.shared.ring.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_ring(&self) -> RwLockWriteGuard<'_, Ring> {
        self.shared.ring.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn watch_head(&self) -> watch::Receiver<u64> {
        self.shared.head_tx.subscribe()
    }

    /// Ends every GET stream: each ends cleanly with a `retry:` hint.
    pub fn close(&self) {
        self.fire(&self.shared.closed);
    }

    /// The signal [`Broadcaster::close`] fires.
    pub fn closing(&self) -> Closing {
        self.shared.closed.clone()
    }

    /// Resolves when the broadcaster is closed.
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.shared.closed.fired()
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_fired()
    }

    /// Ends every `subscriptions/listen` stream (with its `complete` result).
    pub fn end_listens(&self) {
        self.fire(&self.shared.listens_end);
    }

    /// The signal [`Broadcaster::end_listens`] fires.
    pub fn listens_ending(&self) -> Closing {
        self.shared.listens_end.clone()
    }

    /// Fires `signal` and wakes every stream waiting for events, so each reads it (streams check
    /// their signals when they wake instead of waiting on them, see [`closing`]).
    fn fire(&self, signal: &Closing) {
        signal.fire();
        self.shared.head_tx.send_modify(|_| {});
    }

    pub fn subscriber_count(&self) -> usize {
        self.shared.subscribers.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> usize {
        self.shared.cap
    }

    /// Takes a subscriber slot, or `None` at capacity. The guard gives it back on drop.
    pub fn try_register(
        &self,
        kind: SubscriberKind,
        session: Option<String>,
    ) -> Option<SubscriberGuard> {
        let taken =
            self.shared
                .subscribers
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.shared.cap).then_some(n + 1)
                });
        taken.ok()?;
        Some(SubscriberGuard::new(self.shared.clone(), kind, session))
    }

    /// Bounds the slots one client may hold (`FANOUT_MAX_SUBSCRIBERS_PER_CLIENT`); at start, once.
    pub fn limit_per_client(&self, max: usize) {
        let _ = self.shared.per_client.set(PerClient::new(max));
    }

    /// [`try_register`](Self::try_register) for `client`: refused with `ClientLimit` when it
    /// holds its share already (checked first, so a refused client takes no slot), `Capacity`
    /// when every slot is taken.
    pub fn try_register_for(
        &self,
        kind: SubscriberKind,
        session: Option<String>,
        client: ClientKey,
    ) -> Result<SubscriberGuard, ShedReason> {
        let Some(limit) = self.shared.per_client.get() else {
            return self.try_register(kind, session).ok_or(ShedReason::Capacity);
        };
        let place = limit.take(client).ok_or(ShedReason::ClientLimit)?;
        // Without a slot the place is dropped, so given back.
        let guard = self
            .try_register(kind, session)
            .ok_or(ShedReason::Capacity)?;
        Ok(guard.held_by(place))
    }

    /// Claims a session for a new stream; the local stream holding it is ended.
    pub fn claim_session(&self, session: &str, generation: u64) -> StreamClaim {
        self.shared.claims.claim(session, generation)
    }

    /// The sessions held by this replica's open streams.
    pub fn held_sessions(&self) -> Vec<String> {
        self.shared.claims.held()
    }

    /// The session ended: end its local stream.
    pub fn end_session(&self, session: &str) {
        self.shared.claims.end(session);
    }

    /// A newer claim was made on another replica: end the local stream for it, if older.
    pub fn session_taken_elsewhere(&self, session: &str, generation: u64) {
        self.shared.claims.taken_elsewhere(session, generation);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Target;
    use std::time::SystemTime;

    pub(crate) fn event(seq: u64) -> Arc<StoredEvent> {
        Arc::new(StoredEvent::new(
            "ep",
            seq,
            "notifications/t",
            None,
            Target::default(),
            SystemTime::now(),
        ))
    }

    fn bc(cap: usize) -> Broadcaster {
        let limits = RingLimits {
            max_events: 4,
            max_bytes: usize::MAX,
        };
        Broadcaster::new(0, limits, cap, Arc::new(Metrics::new()))
    }

    #[tokio::test]
    async fn push_wakes_waiters_and_never_waits() {
        let b = bc(10);
        let mut rx = b.watch_head();
        // Nobody reads; pushing many more events than the ring holds still returns at once.
        for s in 1..=1000 {
            b.push(&[event(s)]);
        }
        assert_eq!(b.head(), 1000);
        rx.changed().await.expect("woken");
        assert_eq!(*rx.borrow(), 1000);
    }

    #[tokio::test]
    async fn subscriber_slots_are_counted_and_capped() {
        let b = bc(2);
        let g1 = b.try_register(SubscriberKind::Sse, None).expect("slot 1");
        let g2 = b
            .try_register(SubscriberKind::Sse, Some("s".into()))
            .expect("slot 2");
        assert!(b.try_register(SubscriberKind::Poll, None).is_none());
        assert_eq!(b.subscriber_count(), 2);
        drop(g1);
        assert_eq!(b.subscriber_count(), 1);
        let mut g3 = b
            .try_register(SubscriberKind::Sse, None)
            .expect("freed slot");
        g3.end(DropReason::Lagging);
        drop(g3);
        drop(g2);
        assert_eq!(b.subscriber_count(), 0);
        let dropped = b
            .metrics()
            .subscribers_dropped
            .get_or_create(&crate::metrics::ReasonLabel { reason: "lagging" })
            .get();
        assert_eq!(dropped, 1);
    }

    #[test]
    fn own_commits_are_pushed_only_when_they_continue_the_ring() {
        let b = bc(10);
        b.push(&[event(1), event(2)]);
        // Seq 3 (another replica's) is not read yet: 4..5 would leave a gap.
        assert!(!b.push_if_next(&[event(4), event(5)]));
        assert_eq!(b.head(), 2);
        assert!(!b.would_continue(4, 5), "the hint agrees");
        assert!(b.would_continue(3, 4));
        assert!(b.push_if_next(&[event(3), event(4)]));
        assert_eq!(b.head(), 4);
        assert!(b.would_continue(4, 5) && !b.would_continue(4, 4) && !b.would_continue(6, 7));
        // Already read by the bridge (in part): the rest continues the ring.
        assert!(b.push_if_next(&[event(4), event(5)]));
        assert_eq!(b.head(), 5);
        // All already there: nothing to push.
        assert!(!b.push_if_next(&[event(5)]));
        assert!(!b.push_if_next(&[event(6), event(8)]), "not consecutive");
        assert_eq!(b.head(), 5);
    }

    #[tokio::test]
    async fn close_is_observable() {
        let b = bc(1);
        assert!(!b.is_closed());
        b.close();
        b.closed().await;
        assert!(b.is_closed());
    }
}
