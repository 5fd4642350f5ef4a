//! Reading an SSE stream in the background while a test publishes, faults the database, and so on:
//! a [`Follower`] owns one [`SseConn`], records every block with its arrival time, and stops when
//! told the last seq to wait for (or when the stream ends, or at a deadline), so a long or faulty
//! run never fills socket buffers and a failure still reports exactly what arrived.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::sse::{Frame, SseConn, StreamEnd};
use crate::tally::{EventId, Tally};

/// One block and when it was read.
#[derive(Debug, Clone)]
pub struct Received {
    /// When the follower read it.
    pub at: Instant,
    /// The block.
    pub frame: Frame,
}

/// What a follower saw.
#[derive(Debug)]
pub struct Followed {
    /// The follower's label.
    pub label: String,
    /// Every block, in arrival order (keep-alives included).
    pub received: Vec<Received>,
    /// How the stream ended, if it did (`None`: it was still open when the follower stopped).
    pub end: Option<StreamEnd>,
    /// A read error other than the stream ending (e.g. a malformed block).
    pub error: Option<String>,
    /// Whether an event with the target seq (or a later one) arrived.
    pub reached: bool,
    /// The connection, when it is still open (to keep using it).
    pub conn: Option<SseConn>,
}

impl Followed {
    /// The event frames (an id and non-empty data), in order.
    pub fn events(&self) -> Vec<&Frame> {
        self.received
            .iter()
            .map(|r| &r.frame)
            .filter(|f| f.id.is_some() && f.data.as_deref().is_some_and(|d| !d.is_empty()))
            .collect()
    }

    /// The ids of [`Followed::events`].
    pub fn event_ids(&self) -> Vec<String> {
        self.events().iter().filter_map(|f| f.id.clone()).collect()
    }

    /// A tally of the received events against `expected`.
    pub fn tally<I, S>(&self, expected: I) -> Tally
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut t = Tally::new(&self.label, expected);
        for id in self.event_ids() {
            t.observe(&id);
        }
        t
    }

    /// Keep-alive blocks (comments only) read in `[from, to]`.
    pub fn keepalives_between(&self, from: Instant, to: Instant) -> usize {
        self.received
            .iter()
            .filter(|r| r.at >= from && r.at <= to && r.frame.is_comment_only())
            .count()
    }

    /// A one-line summary for assertion messages.
    pub fn summary(&self) -> String {
        let ids = self.event_ids();
        format!(
            "`{}`: {} blocks, {} events (first {:?}, last {:?}), end {:?}, error {:?}, reached target {}",
            self.label,
            self.received.len(),
            ids.len(),
            ids.first(),
            ids.last(),
            self.end,
            self.error,
            self.reached
        )
    }
}

/// Shared live counters of a follower.
#[derive(Debug, Default)]
struct Progress {
    max_seq: AtomicU64,
    events: AtomicUsize,
    blocks: AtomicUsize,
}

/// A background reader of one SSE stream.
#[derive(Debug)]
pub struct Follower {
    label: String,
    target: watch::Sender<Option<(u64, Instant)>>,
    progress: Arc<Progress>,
    task: JoinHandle<Followed>,
}

/// How long one read waits before the loop re-checks its target.
const SLICE: Duration = Duration::from_millis(200);

impl Follower {
    /// Starts reading `conn` in a task on the current runtime.
    pub fn spawn(label: &str, mut conn: SseConn) -> Follower {
        let (target, mut target_rx) = watch::channel(None::<(u64, Instant)>);
        let progress = Arc::new(Progress::default());
        let p = Arc::clone(&progress);
        let name = label.to_string();
        let task = tokio::spawn(async move {
            let mut out = Followed {
                label: name,
                received: Vec::new(),
                end: None,
                error: None,
                reached: false,
                conn: None,
            };
            let mut max_seq: Option<u64> = None;
            loop {
                let goal = *target_rx.borrow_and_update();
                if let Some((seq, deadline)) = goal {
                    if max_seq.is_some_and(|m| m >= seq) {
                        out.reached = true;
                        break;
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                match conn.next_frame(SLICE).await {
                    Ok(Some(frame)) => {
                        p.blocks.fetch_add(1, Ordering::Relaxed);
                        let is_event = frame.id.is_some()
                            && frame.data.as_deref().is_some_and(|d| !d.is_empty());
                        if is_event {
                            p.events.fetch_add(1, Ordering::Relaxed);
                            if let Some(seq) = frame
                                .id
                                .as_deref()
                                .and_then(|id| id.parse::<EventId>().ok())
                                .map(|id| id.seq)
                            {
                                max_seq = Some(max_seq.map_or(seq, |m| m.max(seq)));
                                p.max_seq.fetch_max(seq, Ordering::Relaxed);
                            }
                        }
                        out.received.push(Received {
                            at: Instant::now(),
                            frame,
                        });
                    }
                    Ok(None) => {
                        out.end = Some(StreamEnd::Clean);
                        break;
                    }
                    Err(Error::Truncated(why)) => {
                        out.end = Some(StreamEnd::Cut(why));
                        break;
                    }
                    Err(e) if e.is_timeout() => {
                        if target_rx.has_changed().is_err() {
                            // The follower handle is gone: nobody will ever read the result.
                            break;
                        }
                    }
                    Err(e) => {
                        out.error = Some(e.to_string());
                        break;
                    }
                }
            }
            if out.end.is_none() && out.error.is_none() {
                out.conn = Some(conn);
            }
            out
        });
        Follower {
            label: label.to_string(),
            target,
            progress,
            task,
        }
    }

    /// The label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The highest seq received so far (0 before any event).
    pub fn max_seq(&self) -> u64 {
        self.progress.max_seq.load(Ordering::Relaxed)
    }

    /// Event frames received so far.
    pub fn events_so_far(&self) -> usize {
        self.progress.events.load(Ordering::Relaxed)
    }

    /// Blocks (events, keep-alives, …) received so far.
    pub fn blocks_so_far(&self) -> usize {
        self.progress.blocks.load(Ordering::Relaxed)
    }

    /// Whether the reader stopped (stream ended or failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until an event with seq ≥ `seq` arrived, the stream ended, or `timeout` passed, and
    /// returns everything the follower saw (check [`Followed::reached`]).
    pub async fn finish(self, seq: u64, timeout: Duration) -> Result<Followed> {
        let deadline = Instant::now() + timeout;
        let _ = self.target.send(Some((seq, deadline)));
        let label = self.label.clone();
        match tokio::time::timeout(timeout + SLICE * 10, self.task).await {
            Ok(Ok(followed)) => Ok(followed),
            Ok(Err(e)) => Err(Error::Protocol(format!("follower `{label}` failed: {e}"))),
            Err(_) => Err(Error::timeout(
                format!("follower `{label}` to stop"),
                timeout + SLICE * 10,
            )),
        }
    }

    /// Stops now and returns what was seen.
    pub async fn stop(self) -> Result<Followed> {
        self.finish(u64::MAX, Duration::ZERO).await
    }
}
