//! The write-stall deadline for each HTTP/2 stream. An HTTP/2 connection carries many streams on
//! one socket, so the socket's deadline (see [`super::stall`]) cannot tell a stuck stream from a
//! healthy one: a client that never opens one stream's flow-control window leaves that stream
//! with nothing sent while the socket keeps flowing for the others.
//!
//! hyper's h2 server polls a response body for its next frame only once the previous one has send
//! capacity, so a stuck stream's body is simply never polled again; nothing in the body can run.
//! hyper runs each stream as a task of its own through the connection's executor: [`StreamExec`]
//! spawns each one with a [`StreamWatch`] (reachable from the handler as a task-local), and a
//! watched event-stream body ([`WatchedBody`]) marks when it handed hyper a frame and when hyper
//! came back for the next. A frame handed over and not followed by the next poll within the
//! deadline ends the stream's task: hyper's send half drops and h2 resets the stream
//! (`RST_STREAM`, `CANCEL`), freeing what it buffered; the body (and the subscriber) drop, the
//! drop counted as a write stall. The connection and its other streams are untouched.
//!
//! A watched body hands hyper frames of at most [`MAX_FRAME`] bytes (slices of the stored frames,
//! not copies), so a stuck stream holds about two of them (one in h2's buffer, one in hyper's hand),
//! not a whole write.
//!
//! Every other response on an HTTP/2 stream (a proxied answer relayed as it arrives, a long-poll,
//! anything) is a [`Watching`] body: the same reports and the same frame size, so the deadline
//! holds for every stream whatever it carries — a proxied answer whose client never opens its
//! window is reset like a stuck event stream, and the upstream connection it held is let go.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hyper::body::Frame;
use tokio::time::{Instant, Sleep};

use super::handoff::Chunks;
use crate::event::Chunk;
use crate::socket::{Cut, StreamCut};

/// Most bytes handed to hyper per body frame (HTTP/2's default frame size).
pub const MAX_FRAME: usize = 16 * 1024;

tokio::task_local! {
    static WATCH: StreamWatch;
}

/// One HTTP/2 stream's progress as its body reports it.
#[derive(Clone, Default)]
pub struct StreamWatch(Arc<Watch>);

#[derive(Default)]
struct Watch {
    /// When the body handed hyper a frame that hyper has not come back after yet.
    waiting_since: Mutex<Option<Instant>>,
    cut: StreamCut,
}

impl StreamWatch {
    /// The watch of the HTTP/2 stream whose task runs this code, if it runs in one.
    pub fn current() -> Option<StreamWatch> {
        WATCH.try_with(StreamWatch::clone).ok()
    }

    pub fn cut(&self) -> StreamCut {
        self.0.cut.clone()
    }

    fn waiting(&self) -> MutexGuard<'_, Option<Instant>> {
        self.0
            .waiting_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The body handed hyper a frame.
    fn handed_over(&self) {
        *self.waiting() = Some(Instant::now());
    }

    /// hyper asks for the next frame: the previous one had send capacity.
    fn asked(&self) {
        *self.waiting() = None;
    }

    fn waiting_since(&self) -> Option<Instant> {
        *self.waiting()
    }
}

/// The executor hyper spawns HTTP/2 streams with: each runs as a task of its own, watched with the
/// write-stall deadline.
#[derive(Clone, Copy)]
pub struct StreamExec {
    pub write_stall: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let watch = StreamWatch::default();
        let watched = Watched {
            fut: Box::pin(fut),
            watch: watch.clone(),
            limit: self.write_stall,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed_for: None,
        };
        tokio::spawn(WATCH.scope(watch, watched));
    }
}

/// A stream's task and its deadline: ready when the stream is done, or when a frame its body
/// handed over has waited for its send capacity past the deadline (the stream is then dropped).
struct Watched<F> {
    fut: Pin<Box<F>>,
    watch: StreamWatch,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    /// The hand-over the timer is set for.
    armed_for: Option<Instant>,
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.fut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        // Read after the stream's own poll, so a frame handed over in it arms the timer now.
        let Some(since) = this.watch.waiting_since() else {
            // Nothing handed over: the body waits for events (or this is no event stream). The
            // next hand-over happens in a poll of this task, which reads the watch again.
            this.armed_for = None;
            return Poll::Pending;
        };
        if this.armed_for != Some(since) {
            this.armed_for = Some(since);
            this.timer.as_mut().reset(since + this.limit);
        }
        if this.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Before the stream (and its subscriber guard) drops, so the drop counts as a stall.
        this.watch.0.cut.cut(Cut::WriteStall);
        tracing::info!(
            limit_secs = this.limit.as_secs(),
            "HTTP/2 stream took nothing for the write-stall deadline; resetting it"
        );
        Poll::Ready(())
    }
}

/// An event stream's body on HTTP/2: its chunks in frames of at most [`MAX_FRAME`] bytes, each
/// hand-over reported to the stream's watch.
pub(super) struct WatchedBody {
    chunks: Chunks,
    watch: StreamWatch,
    /// The chunk being handed over: the piece and the offset in it where the next frame starts.
    current: Option<(Chunk, usize, usize)>,
}

impl WatchedBody {
    pub(super) fn new(chunks: Chunks, watch: StreamWatch) -> WatchedBody {
        WatchedBody {
            chunks,
            watch,
            current: None,
        }
    }

    /// The next frame of the current chunk, if any is left.
    fn next_frame(&mut self) -> Option<Bytes> {
        let (chunk, part, offset) = self.current.as_mut()?;
        while *part < chunk.parts() {
            let piece = chunk.part_bytes(*part);
            if *offset < piece.len() {
                let end = piece.len().min(*offset + MAX_FRAME);
                let frame = piece.slice(*offset..end);
                *offset = end;
                return Some(frame);
            }
            *part += 1;
            *offset = 0;
        }
        self.current = None;
        None
    }
}

impl hyper::body::Body for WatchedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        this.watch.asked();
        loop {
            if let Some(frame) = this.next_frame() {
                this.watch.handed_over();
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            match this.chunks.poll_next_unpin(cx) {
                Poll::Ready(Some(chunk)) => this.current = Some((chunk, 0, 0)),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}

/// Any response body, with its hand-overs reported to the HTTP/2 stream's watch (when it runs in
/// one) and its data frames cut to at most [`MAX_FRAME`] bytes there (slices, not copies), so "a
/// frame not taken within the deadline" means the same for every body. On HTTP/1.1 (no watch) the
/// body passes through untouched. `hold` lives as long as the body.
pub(super) struct Watching<B, H> {
    inner: B,
    watch: Option<StreamWatch>,
    /// The part of a data frame not handed over yet.
    rest: Option<Bytes>,
    _hold: H,
}

impl<B, H> Watching<B, H> {
    pub(super) fn new(inner: B, watch: Option<StreamWatch>, hold: H) -> Watching<B, H> {
        Watching {
            inner,
            watch,
            rest: None,
            _hold: hold,
        }
    }

    /// The next frame to hand over from `data` (the rest kept), reported to the watch.
    fn hand_over(&mut self, mut data: Bytes) -> Bytes {
        if let Some(watch) = &self.watch {
            if data.len() > MAX_FRAME {
                self.rest = Some(data.split_off(MAX_FRAME));
            }
            watch.handed_over();
        }
        data
    }
}

impl<B, H> hyper::body::Body for Watching<B, H>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    H: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(watch) = &this.watch {
            watch.asked();
        }
        if let Some(rest) = this.rest.take() {
            return Poll::Ready(Some(Ok(Frame::data(this.hand_over(rest)))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => Poll::Ready(Some(Ok(Frame::data(this.hand_over(data))))),
                // Trailers.
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(rest) = &self.rest {
            let more = rest.len() as u64;
            hint.set_lower(hint.lower() + more);
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + more);
            }
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{StoredEvent, Target};
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::time::SystemTime;

    #[tokio::test]
    async fn a_watched_body_hands_over_every_byte_in_small_frames() {
        let big = Arc::new(StoredEvent::new(
            "ep",
            1,
            "notifications/t",
            Some(&format!("{{\"blob\":\"{}\"}}", "x".repeat(40_000))),
            Target::default(),
            SystemTime::now(),
        ));
        let small = Arc::new(StoredEvent::new(
            "ep",
            2,
            "notifications/t",
            None,
            Target::default(),
            SystemTime::now(),
        ));
        let chunks = vec![
            Chunk::Bytes(Bytes::from_static(b": hello\n\n")),
            Chunk::Events(vec![big.clone(), small.clone()]),
        ];
        let expected: Vec<u8> = [&b": hello\n\n"[..], big.frame(), small.frame()].concat();
        let watch = StreamWatch::default();
        let mut body = WatchedBody::new(Box::pin(futures::stream::iter(chunks)), watch.clone());
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.expect("infallible").into_data().expect("data");
            assert!(!data.is_empty() && data.len() <= MAX_FRAME);
            assert!(watch.waiting_since().is_some(), "a hand-over is recorded");
            got.extend_from_slice(&data);
        }
        assert!(got == expected, "every byte, in order");
    }
}
