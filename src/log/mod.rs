//! The event log: the ordered, durable truth that every delivery path reads.
//!
//! [`EventLog`] is the interface; [`memory::MemoryLog`] is the embedded single-replica default.
//! A log hands out [`StoredEvent`]s framed once, so every reader sends the same bytes.

pub mod idempotency;
pub mod memory;
pub mod postgres;

use std::sync::Arc;

use async_trait::async_trait;

use crate::event::{Cursor, NewEvent, StoredEvent, Viewer};

/// What a log knows about its extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Highest committed seq (0 when empty).
    pub head: u64,
    /// Highest seq ever pruned (0 when nothing was).
    pub pruned: u64,
}

/// Where a subscriber starts, decided from its cursor and the log's bounds (contract §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// No cursor: live from the head.
    Fresh { head: u64 },
    /// Replay every retained event after `after`, then live.
    Replay { after: u64 },
    /// The cursor cannot be replayed exactly: resync, then live from the head.
    Resync { head: u64 },
}

impl Bounds {
    /// The one rule that decides whether a cursor is replayable.
    pub fn start_for(&self, cursor: &Cursor, epoch: &str) -> Start {
        match cursor {
            Cursor::Absent => Start::Fresh { head: self.head },
            Cursor::At { epoch: e, seq }
                if e == epoch && *seq <= self.head && *seq >= self.pruned =>
            {
                Start::Replay { after: *seq }
            }
            Cursor::At { .. } | Cursor::Foreign(_) => Start::Resync { head: self.head },
        }
    }
}

/// An append: the events of one request, all or nothing.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub events: Vec<NewEvent>,
    /// A request-wide `Idempotency-Key` (per-event keys live in each [`NewEvent`]).
    pub request_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the database is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the idempotency key was used before with a different body")]
    IdempotencyConflict { index: Option<usize> },
    #[error(
        "events after seq {after} were pruned (watermark {pruned}); the cursor needs a resync"
    )]
    CursorPruned { after: u64, pruned: u64 },
    /// Not the database being unreachable: the writer task gone, the head row missing, a
    /// statement refused for what it says. The cause is kept as the source.
    #[error("internal log error: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What an append committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// One seq per requested event, in order (originals for idempotent retries).
    pub seqs: Vec<u64>,
    /// How many events this append committed anew (0 for a pure retry).
    pub new_events: usize,
}

/// What one viewer may see of a stretch of the log ([`EventLog::read_visible_after`]).
#[derive(Debug, Clone, Default)]
pub struct VisiblePage {
    /// The viewer's events, in seq order.
    pub events: Vec<Arc<StoredEvent>>,
    /// Every event up to this seq was looked at: the last one returned when the limit was
    /// reached, else the end of the stretch looked at (never past the head). Equal to the cursor
    /// read after when there was nothing after it.
    pub scanned_to: u64,
}

/// The ordered event log.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// The log's epoch: the first half of every event id.
    fn epoch(&self) -> &str;

    /// Commits the events (one transaction) and returns their seqs, in order. A retry with a
    /// known idempotency key and the same body returns the original seqs and commits nothing.
    async fn append(&self, req: AppendRequest) -> Result<Appended, LogError>;

    /// Up to `limit` events with seq > `after`, in seq order. [`LogError::CursorPruned`] when
    /// some of them are gone.
    async fn read_after(&self, after: u64, limit: usize)
        -> Result<Vec<Arc<StoredEvent>>, LogError>;

    /// Up to `limit` events after `after` that `viewer` may see ([`Target::visible_to`]), looking
    /// at no more than the next `scan` positions: a cursor behind many events it may not see
    /// (another tenant's) costs what it is sent, not what it passes over. [`LogError::CursorPruned`]
    /// as [`EventLog::read_after`]. The default reads `scan` events and keeps the visible ones
    /// (a log in memory); the Postgres log filters in the database.
    ///
    /// [`Target::visible_to`]: crate::event::Target::visible_to
    async fn read_visible_after(
        &self,
        after: u64,
        scan: usize,
        limit: usize,
        viewer: &Viewer,
    ) -> Result<VisiblePage, LogError> {
        let mut page = VisiblePage {
            events: Vec::new(),
            scanned_to: after,
        };
        for ev in self.read_after(after, scan).await? {
            if page.events.len() >= limit {
                break;
            }
            page.scanned_to = ev.seq;
            if ev.target.visible_to(viewer) {
                page.events.push(ev);
            }
        }
        Ok(page)
    }

    /// The head and the pruned watermark, read from the log itself.
    async fn bounds(&self) -> Result<Bounds, LogError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_rule() {
        let b = Bounds {
            head: 50,
            pruned: 20,
        };
        let at = |epoch: &str, seq| Cursor::At {
            epoch: epoch.into(),
            seq,
        };
        assert_eq!(b.start_for(&Cursor::Absent, "e"), Start::Fresh { head: 50 });
        assert_eq!(b.start_for(&at("e", 30), "e"), Start::Replay { after: 30 });
        assert_eq!(b.start_for(&at("e", 20), "e"), Start::Replay { after: 20 });
        assert_eq!(b.start_for(&at("e", 50), "e"), Start::Replay { after: 50 });
        assert_eq!(b.start_for(&at("e", 19), "e"), Start::Resync { head: 50 });
        assert_eq!(b.start_for(&at("e", 51), "e"), Start::Resync { head: 50 });
        assert_eq!(b.start_for(&at("x", 30), "e"), Start::Resync { head: 50 });
        assert_eq!(
            b.start_for(&Cursor::Foreign("zz".into()), "e"),
            Start::Resync { head: 50 }
        );
    }
}
