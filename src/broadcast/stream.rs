//! One subscriber stream, whatever its protocol: it owns the cursor (its [`Feed`]), the end
//! conditions (lag, expiry, drain, max age, takeover), coalescing and the accounting (the slot and
//! why it ended, events delivered, the lag histogram). A [`Framing`] turns what it reads into the
//! protocol's bytes: the SSE GET stream (`http/sse.rs`), the 2026 listen stream (`mcp/listen.rs`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::pump::{self, Ends, Step, Waits};
use super::{Coalescer, Feed, StreamClaim, SubscriberGuard};
use crate::event::{Chunk, StoredEvent};

/// How a stream's protocol writes what the stream reads.
pub trait Framing: Send + 'static {
    /// A write of `events` (in order, coalesced), and how many of them it delivers; `None` when
    /// none of them is for this stream (the stream reads on).
    fn events(&mut self, events: Vec<Arc<StoredEvent>>) -> Option<(Chunk, u64)>;

    /// What an idle stream writes every keep-alive interval.
    fn keepalive(&self) -> Bytes;

    /// The stream's last write when the server ends it; `cursor` is the last seq it read.
    fn end(&mut self, cursor: u64) -> Bytes;
}

/// What a stream is made of.
pub struct Parts<F> {
    pub framing: F,
    /// Written first (a priming or resync frame, an acknowledgement).
    pub preamble: Option<Bytes>,
    pub feed: Feed,
    /// `FANOUT_COALESCE_MS`: list_changed held back to gather a burst, and left out when superseded.
    pub coalescer: Coalescer,
    pub ends: Ends,
    pub keepalive: Duration,
    /// A max age that applies only once the stream has written events (an older client's id-less
    /// GET stream: cut before it carries an id, its cursor would be lost).
    pub pending_max_age: Option<Instant>,
    pub guard: SubscriberGuard,
    /// The stream's hold on its session (a newer stream for it ends this one); dropped with it.
    pub claim: Option<StreamClaim>,
}

pub struct Stream<F> {
    parts: Parts<F>,
    waits: Waits,
    done: bool,
}

impl<F: Framing> From<Parts<F>> for Stream<F> {
    fn from(parts: Parts<F>) -> Stream<F> {
        let waits = Waits::new(parts.keepalive, parts.ends.taken_over.as_ref());
        Stream {
            parts,
            waits,
            done: false,
        }
    }
}

impl<F: Framing> Stream<F> {
    /// The next write, or `None` once the stream has ended.
    pub async fn next_chunk(&mut self) -> Option<Chunk> {
        if self.done {
            return None;
        }
        let p = &mut self.parts;
        if let Some(preamble) = p.preamble.take() {
            return Some(Chunk::Bytes(preamble));
        }
        loop {
            let step = pump::next_step(&mut p.feed, &p.ends, &mut self.waits, &mut p.coalescer);
            match step.await {
                Step::Events(events) => {
                    let first = events.first().map(|e| e.committed_at);
                    let Some((chunk, delivered)) = p.framing.events(events) else {
                        continue;
                    };
                    self.waits.wrote();
                    if let Some(at) = p.pending_max_age.take() {
                        p.ends.max_age = Some(at);
                    }
                    let metrics = p.feed.metrics();
                    metrics.events_delivered.inc_by(delivered);
                    if let Some(lag) = first.and_then(|at| at.elapsed().ok()) {
                        metrics.observe_lag(lag.as_secs_f64());
                    }
                    return Some(chunk);
                }
                Step::KeepAlive => {
                    self.waits.wrote();
                    return Some(Chunk::Bytes(p.framing.keepalive()));
                }
                Step::End(reason) => {
                    self.done = true;
                    p.guard.end(reason);
                    return Some(Chunk::Bytes(p.framing.end(p.feed.cursor())));
                }
            }
        }
    }

    /// The stream as a sequence of writes.
    pub fn chunks(self) -> impl futures::Stream<Item = Chunk> + Send {
        futures::stream::unfold(self, |mut s| async move {
            s.next_chunk().await.map(|chunk| (chunk, s))
        })
    }
}
