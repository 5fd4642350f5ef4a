//! A subscriber's cursor: reads what it may see after its position, from the ring or, when it
//! has fallen behind the ring, from the log. Used by every delivery path (SSE, long-poll).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::ring::RingRead;
use super::Broadcaster;
use crate::event::{StoredEvent, Viewer};
use crate::log::{EventLog, LogError};

/// Events scanned from the ring per lock.
const RING_SCAN: usize = 1024;
/// Events read from the log per query when behind the ring.
const LOG_PAGE: usize = 1000;
/// Most events scanned (visible or not) in one call, so one call stays bounded.
const MAX_SCAN_PER_CALL: usize = 16 * 1024;
/// A log page of at least this many events, of which fewer than one in [`SPARSE_RATIO`] was
/// visible, turns the feed's log reads into filtered ones.
const SPARSE_MIN_PAGE: usize = 64;
const SPARSE_RATIO: usize = 4;

pub struct Feed {
    bc: Broadcaster,
    log: Arc<dyn EventLog>,
    viewer: Viewer,
    cursor: u64,
    head_rx: watch::Receiver<u64>,
    behind_since: Option<Instant>,
    /// The log's head when the subscriber's cursor was checked: events up to it exist even if
    /// this replica's bridge has not pushed them yet, so they are read from the log.
    log_head: u64,
    /// The log holds mostly events this viewer may not see: its log reads ask the log for the
    /// visible ones only ([`EventLog::read_visible_after`]), instead of sharing whole pages with
    /// other cursors at the same position and filtering them here.
    sparse: bool,
}

/// What one read produced.
pub struct Batch {
    /// Visible events, in order.
    pub events: Vec<Arc<StoredEvent>>,
    /// More events after the cursor are already known: read again before waiting.
    pub more: bool,
}

impl Feed {
    /// A cursor at `after`: the next event it yields has a seq above it.
    pub fn new(bc: Broadcaster, log: Arc<dyn EventLog>, viewer: Viewer, after: u64) -> Feed {
        let head_rx = bc.watch_head();
        Feed {
            bc,
            log,
            viewer,
            cursor: after,
            head_rx,
            behind_since: None,
            log_head: 0,
            sparse: false,
        }
    }

    /// Events up to `head` are committed (read from the log when a cursor was checked): serve
    /// them from the log if this replica's ring has not caught up yet.
    pub fn with_log_head(mut self, head: u64) -> Feed {
        self.log_head = head;
        self
    }

    /// Everything up to here was sent or skipped as not visible.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    pub fn viewer(&self) -> &Viewer {
        &self.viewer
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        self.bc.metrics()
    }

    /// Reads up to `max_events` visible events (and about `max_bytes` of frames) after the cursor
    /// and advances the cursor past everything it scanned.
    pub async fn next_batch(
        &mut self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Batch, LogError> {
        let observed = *self.head_rx.borrow_and_update();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut scanned = 0usize;
        let mut page = Vec::new();
        'read: while scanned < MAX_SCAN_PER_CALL && out.len() < max_events && bytes < max_bytes {
            page.clear();
            let read = self
                .bc
                .read_ring()
                .read_after(self.cursor, RING_SCAN, &mut page);
            let ring_short = page.is_empty() && self.cursor < self.log_head;
            let from_log = read == RingRead::Behind || ring_short;
            if from_log && self.sparse {
                let from = self.cursor;
                let want = max_events.saturating_sub(out.len()).clamp(1, LOG_PAGE);
                let visible = self
                    .log
                    .read_visible_after(from, MAX_SCAN_PER_CALL - scanned, want, &self.viewer)
                    .await?;
                self.bc
                    .metrics()
                    .log_reads_events
                    .inc_by(visible.events.len() as u64);
                for ev in visible.events {
                    if out.len() >= max_events || bytes >= max_bytes {
                        break 'read;
                    }
                    self.cursor = ev.seq;
                    // The log filtered them; the one rule still decides.
                    if ev.target.visible_to(&self.viewer) {
                        bytes += ev.frame().len();
                        out.push(ev);
                    }
                }
                if visible.scanned_to <= from {
                    break;
                }
                self.cursor = visible.scanned_to;
                scanned += usize::try_from(visible.scanned_to - from).unwrap_or(usize::MAX);
                continue;
            }
            if from_log {
                page = self.log.read_after(self.cursor, LOG_PAGE).await?;
                self.bc.metrics().log_reads_events.inc_by(page.len() as u64);
            }
            if page.is_empty() {
                break;
            }
            let (page_len, seen_before) = (page.len(), out.len());
            for ev in page.drain(..) {
                if out.len() >= max_events || bytes >= max_bytes {
                    break 'read;
                }
                scanned += 1;
                self.cursor = ev.seq;
                if ev.target.visible_to(&self.viewer) {
                    bytes += ev.frame().len();
                    out.push(ev);
                }
            }
            if from_log
                && page_len >= SPARSE_MIN_PAGE
                && (out.len() - seen_before) * SPARSE_RATIO < page_len
            {
                self.sparse = true;
            }
        }
        let head = observed.max(self.bc.head()).max(self.log_head);
        let more = self.cursor < head;
        if more {
            self.behind_since.get_or_insert_with(Instant::now);
        } else {
            self.behind_since = None;
        }
        Ok(Batch { events: out, more })
    }

    /// How long this cursor has continuously been behind the head (None: caught up).
    pub fn behind_for(&self) -> Option<Duration> {
        self.behind_since.map(|t| t.elapsed())
    }

    /// Resolves once an event after the cursor has been committed, or the broadcaster woke its
    /// streams to read their end signals (callers read on, and wait again if nothing came).
    pub async fn changed(&mut self) {
        if *self.head_rx.borrow_and_update() > self.cursor {
            return;
        }
        if self.head_rx.changed().await.is_err() {
            // The broadcaster is gone; nothing more will come.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broadcast::RingLimits;
    use crate::event::{NewEvent, Target};
    use crate::log::memory::{MemoryLimits, MemoryLog};
    use crate::log::AppendRequest;
    use crate::metrics::Metrics;

    /// A memory log whose commits feed a broadcaster with a small ring (log keeps more).
    fn setup(ring_events: usize) -> (Broadcaster, Arc<dyn EventLog>) {
        let bc = Broadcaster::new(
            0,
            RingLimits {
                max_events: ring_events,
                max_bytes: usize::MAX,
            },
            100,
            Arc::new(Metrics::new()),
        );
        let sink_bc = bc.clone();
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(
            "ep".into(),
            MemoryLimits {
                max_events: 100_000,
                max_bytes: usize::MAX,
            },
            Box::new(move |evs| sink_bc.push(evs)),
        ));
        (bc, log)
    }

    async fn publish(log: &Arc<dyn EventLog>, n: usize, session: Option<&str>) {
        let events = (0..n)
            .map(|_| NewEvent {
                method: "notifications/t".into(),
                params: None,
                target: Target {
                    tenant: None,
                    session: session.map(str::to_owned),
                },
                key: None,
            })
            .collect();
        log.append(AppendRequest {
            events,
            request_key: None,
        })
        .await
        .expect("append");
    }

    async fn drain(feed: &mut Feed) -> Vec<u64> {
        let mut seen = vec![];
        loop {
            let b = feed.next_batch(100, usize::MAX).await.expect("read");
            seen.extend(b.events.iter().map(|e| e.seq));
            if !b.more {
                return seen;
            }
        }
    }

    #[tokio::test]
    async fn a_burst_larger_than_the_ring_is_read_from_the_log_without_gaps() {
        let (bc, log) = setup(8);
        let mut feed = Feed::new(bc.clone(), log.clone(), Viewer::default(), 0);
        publish(&log, 500, None).await;
        let seen = drain(&mut feed).await;
        assert_eq!(seen, (1..=500).collect::<Vec<_>>());
        assert!(bc.metrics().log_reads_events.get() > 0);
        assert!(feed.behind_for().is_none());
    }

    #[tokio::test]
    async fn committed_events_the_ring_lacks_yet_are_read_from_the_log() {
        // A log whose commits do not reach this broadcaster: a replica whose bridge lags.
        let bc = Broadcaster::new(
            0,
            RingLimits {
                max_events: 100,
                max_bytes: usize::MAX,
            },
            10,
            Arc::new(Metrics::new()),
        );
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(
            "ep".into(),
            MemoryLimits {
                max_events: 1000,
                max_bytes: usize::MAX,
            },
            Box::new(|_| {}),
        ));
        publish(&log, 3, None).await;
        let head = log.bounds().await.expect("bounds").head;
        let mut lagging =
            Feed::new(bc.clone(), log.clone(), Viewer::default(), 1).with_log_head(head);
        assert_eq!(drain(&mut lagging).await, vec![2, 3]);
        // Once the ring catches up, nothing is repeated.
        bc.push(&log.read_after(0, 10).await.expect("read"));
        assert!(drain(&mut lagging).await.is_empty());
        // Without the hint, a feed sees only what the ring has.
        let mut ring_only = Feed::new(bc, log, Viewer::default(), 3);
        assert!(drain(&mut ring_only).await.is_empty());
    }

    #[tokio::test]
    async fn invisible_events_are_skipped_but_passed() {
        let (bc, log) = setup(1000);
        let viewer = Viewer {
            tenant: None,
            session: Some("mine".into()),
        };
        let mut feed = Feed::new(bc, log.clone(), viewer, 0);
        publish(&log, 3, Some("other")).await;
        publish(&log, 2, Some("mine")).await;
        publish(&log, 1, None).await;
        assert_eq!(drain(&mut feed).await, vec![4, 5, 6]);
        assert_eq!(feed.cursor(), 6);
    }

    /// Behind the ring, a log mostly of others' events: after one shared page the feed asks the
    /// log for what it may see only, and still gets each of its events once, in order, across
    /// batches smaller than a page.
    #[tokio::test]
    async fn a_log_of_mostly_others_events_is_read_filtered() {
        let (bc, log) = setup(8);
        let viewer = Viewer {
            tenant: None,
            session: Some("mine".into()),
        };
        let mut feed = Feed::new(bc.clone(), log.clone(), viewer, 0);
        for _ in 0..10 {
            publish(&log, 499, Some("other")).await;
            publish(&log, 1, Some("mine")).await;
        }
        publish(&log, 2, None).await;
        let mut seen = vec![];
        loop {
            let b = feed.next_batch(3, usize::MAX).await.expect("read");
            assert!(b.events.len() <= 3);
            seen.extend(b.events.iter().map(|e| e.seq));
            if !b.more {
                break;
            }
        }
        let mut want: Vec<u64> = (1..=10).map(|i| i * 500).collect();
        want.extend([5001, 5002]);
        assert_eq!(seen, want);
        assert_eq!(feed.cursor(), 5002);
        let fetched = bc.metrics().log_reads_events.get();
        assert!(
            fetched <= LOG_PAGE as u64 + want.len() as u64,
            "one shared page, then only visible events: {fetched}"
        );
    }

    #[tokio::test]
    async fn changed_wakes_only_for_new_events() {
        let (bc, log) = setup(10);
        let mut feed = Feed::new(bc, log.clone(), Viewer::default(), 0);
        let waiter = tokio::spawn(async move {
            feed.changed().await;
            feed.next_batch(10, usize::MAX)
                .await
                .map(|b| b.events.len())
        });
        tokio::task::yield_now().await;
        publish(&log, 2, None).await;
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined")
            .expect("read");
        assert_eq!(got, 2);
    }

    #[tokio::test]
    async fn batches_respect_limits_and_report_more() {
        let (bc, log) = setup(1000);
        let mut feed = Feed::new(bc, log.clone(), Viewer::default(), 0);
        publish(&log, 10, None).await;
        let b = feed.next_batch(4, usize::MAX).await.expect("read");
        assert_eq!(b.events.len(), 4);
        assert!(b.more);
        assert!(feed.behind_for().is_some());
        assert_eq!(drain(&mut feed).await, (5..=10).collect::<Vec<_>>());
    }
}
