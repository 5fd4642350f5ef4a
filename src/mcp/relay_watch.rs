//! Answers the proxy relays as they arrive, watched for clients that stop reading them.
//!
//! A relayed answer whose client does not read it holds its upstream connection: the replica's
//! read buffer and kernel receive queue (~160 KB measured, beside the client's own stream) and,
//! upstream, the rest of the answer queued to be sent — one small request makes the upstream
//! hold its whole answer. The write-stall deadline (`FANOUT_WRITE_STALL_SECS`) ends such a stream,
//! but a client opening stalled streams without end could hold thousands at any time.
//!
//! Here a relay whose last frame has not been taken for [`STALL_GRACE`] is *stalled*: it takes
//! [`STALLED_SHARE`] bytes from the stalled relays' budget (as large as `FANOUT_BODY_MEMORY_BYTES`,
//! apart from it, so stalled answers never crowd out request bodies), and gives it back when its
//! client reads again. A stalled relay that finds none left is *cut*: its upstream answer is
//! dropped, which closes the upstream connection and frees what both ends had queued, and its
//! stream ends with an error when the client next reads (the client was not reading it).
//!
//! The relays are looked at when a new one starts, at most every [`SWEEP_EVERY`]: stalled relays
//! are held to the budget as fast as new ones come, with no task of their own.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::BoxError;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::in_flight::Lease;

/// How long a relay's last frame may wait to be taken before the relay counts as stalled.
pub const STALL_GRACE: Duration = Duration::from_secs(1);

/// Least time between two looks at the relays.
pub const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// What one stalled relay is counted as holding: its upstream connection's read buffer, the
/// HTTP/2 send buffer of its stream (64 KiB each) and its kernel receive queue (~64 KiB).
pub const STALLED_SHARE: usize = 192 * 1024;

type Answer = Pin<Box<dyn hyper::body::Body<Data = Bytes, Error = BoxError> + Send>>;

/// The relays in progress and the stalled relays' budget.
pub struct RelayWatch {
    relays: Mutex<Relays>,
    budget: Arc<Semaphore>,
    start: Instant,
    cut: Counter,
}

struct Relays {
    cells: Vec<Weak<Cell>>,
    swept: Instant,
}

/// One relay, shared by its body and the watch.
struct Cell {
    /// When the last frame was handed out and not taken since, in ms from `start` (0: taken).
    handed_out_at: AtomicU64,
    /// The upstream's answer and its connection's permit, until the end or a cut.
    upstream: Mutex<Option<(Answer, Lease)>>,
    /// Its share of the stalled relays' budget, while stalled.
    share: Mutex<Option<OwnedSemaphorePermit>>,
}

/// Milliseconds since `start`: the clock of `Cell::handed_out_at`.
fn ms_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RelayWatch {
    /// A watch whose stalled relays may hold `budget` bytes between them; `cut` counts the cuts.
    pub fn new(budget: usize, cut: Counter) -> RelayWatch {
        let now = Instant::now();
        RelayWatch {
            relays: Mutex::new(Relays {
                cells: Vec::new(),
                swept: now,
            }),
            budget: Arc::new(Semaphore::new(budget.min(Semaphore::MAX_PERMITS))),
            start: now,
            cut,
        }
    }

    /// The body relaying `answer`, holding `permit` (its upstream connection's) until it ends or
    /// is cut; looks at the relays first when [`SWEEP_EVERY`] has passed.
    pub fn relay<B>(&self, answer: B, permit: Lease) -> Body
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let answer: Answer = Box::pin(answer.map_err(Into::into));
        let cell = Arc::new(Cell {
            handed_out_at: AtomicU64::new(0),
            upstream: Mutex::new(Some((answer, permit))),
            share: Mutex::new(None),
        });
        let stalled = {
            let mut relays = lock(&self.relays);
            relays.cells.push(Arc::downgrade(&cell));
            if relays.swept.elapsed() >= SWEEP_EVERY {
                relays.swept = Instant::now();
                relays.cells.retain(|c| c.strong_count() > 0);
                let now = ms_since(self.start);
                relays
                    .cells
                    .iter()
                    .filter_map(Weak::upgrade)
                    .filter(|c| c.stalled_at(now))
                    .collect()
            } else {
                Vec::new()
            }
        };
        self.hold_to_budget(stalled);
        Body::new(Relayed {
            cell,
            start: self.start,
        })
    }

    /// Gives each stalled relay without a share one, or cuts it when none is left.
    fn hold_to_budget(&self, stalled: Vec<Arc<Cell>>) {
        let share = u32::try_from(STALLED_SHARE).unwrap_or(u32::MAX);
        for cell in stalled {
            let mut held = lock(&cell.share);
            if held.is_some() {
                continue;
            }
            match self.budget.clone().try_acquire_many_owned(share) {
                Ok(permit) => *held = Some(permit),
                Err(_) => {
                    drop(held);
                    // Read again: a client that has just taken its frame is not cut.
                    if cell.handed_out_at.load(Ordering::Acquire) != 0
                        && lock(&cell.upstream).take().is_some()
                    {
                        self.cut.inc();
                    }
                }
            }
        }
    }
}

impl Cell {
    /// Whether, at `now` (ms), its last frame has waited [`STALL_GRACE`] to be taken.
    fn stalled_at(&self, now: u64) -> bool {
        let at = self.handed_out_at.load(Ordering::Acquire);
        at != 0 && u128::from(now.saturating_sub(at)) >= STALL_GRACE.as_millis()
    }
}

/// The body a client reads: the upstream's answer, frame by frame, while it is not cut.
struct Relayed {
    cell: Arc<Cell>,
    start: Instant,
}

impl hyper::body::Body for Relayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let cell = &this.cell;
        // Asked again: the frame handed out was taken, and a stalled relay reads again.
        if cell.handed_out_at.swap(0, Ordering::AcqRel) != 0 {
            lock(&cell.share).take();
        }
        let mut upstream = lock(&cell.upstream);
        let Some((answer, _)) = upstream.as_mut() else {
            return Poll::Ready(Some(Err(
                "the answer was cut: its client stopped reading it while the replica was short of memory for stalled answers".into(),
            )));
        };
        let polled = answer.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) if frame.is_data() => {
                let at = ms_since(this.start);
                cell.handed_out_at.store(at.max(1), Ordering::Release);
            }
            // Ended: the upstream connection goes back now.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                upstream.take();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        lock(&self.cell.upstream)
            .as_ref()
            .is_some_and(|(answer, _)| answer.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.cell.upstream)
            .as_ref()
            .map_or_else(SizeHint::default, |(answer, _)| answer.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permit() -> Lease {
        Arc::new(
            Arc::new(Semaphore::new(1))
                .try_acquire_owned()
                .expect("a permit"),
        )
    }

    /// A body that yields `n` one-byte frames.
    fn frames(n: usize) -> impl hyper::body::Body<Data = Bytes, Error = std::io::Error> + Send {
        let v: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..n)
            .map(|_| Ok(Frame::data(Bytes::from_static(b"x"))))
            .collect();
        http_body_util::StreamBody::new(futures::stream::iter(v))
    }

    #[tokio::test]
    async fn stalled_relays_past_the_budget_are_cut_and_read_ones_are_not() {
        let cut = Counter::default();
        // Room for one stalled relay.
        let watch = RelayWatch::new(STALLED_SHARE, cut.clone());
        let mut bodies: Vec<Body> = (0..3).map(|_| watch.relay(frames(3), permit())).collect();
        // Each hands out one frame, then its client stops reading.
        for b in &mut bodies {
            let f = b.frame().await.expect("a frame").expect("data");
            assert!(f.is_data());
        }
        tokio::time::sleep(STALL_GRACE + SWEEP_EVERY).await;
        // A new relay: the watch looks, gives one stalled relay the share and cuts the others.
        let mut fresh = watch.relay(frames(2), permit());
        assert_eq!(cut.get(), 2, "two cut, one held to the budget");
        let mut ended_with_error = 0;
        for b in &mut bodies {
            match b.frame().await {
                Some(Err(_)) => ended_with_error += 1,
                Some(Ok(f)) => assert!(f.is_data(), "the one kept goes on"),
                None => panic!("a relay ended without its frames"),
            }
        }
        assert_eq!(ended_with_error, 2);
        // The fresh one, read at once, is whole.
        let mut n = 0;
        while let Some(f) = fresh.frame().await {
            f.expect("a frame");
            n += 1;
        }
        assert_eq!(n, 2);
    }
}
