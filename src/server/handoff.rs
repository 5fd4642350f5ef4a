//! Event streams leave hyper once their response head is on the wire.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for every HTTP/1.1 connection for
//! as long as the connection lives: more than everything else an idle subscriber costs. So a
//! stream response (`GET /mcp`, `subscriptions/listen`) on HTTP/1.1 is handed off: hyper writes
//! the head, then the socket moves to a small writer task that writes the stream's chunks itself
//! (chunked encoding, the same write-stall deadline and paced by the same backlog bound, hang-up
//! detection), and
//! hyper's side of the connection ends, its buffers with it. HTTP/2 and HTTP/1.0 streams stay with
//! hyper.
//!
//! The sequence: the handler [`HandOff::offer`]s its stream and gets a body to answer with; hyper
//! writes the head and polls that body once (it arms the hand-off and stays pending); hyper
//! flushes the head, and the socket's `poll_flush` (see [`super::stall`]) takes the armed stream
//! and the socket, and spawns [`write_stream`]; the body then fails, which ends hyper's side of
//! the connection without touching the socket. A body hyper never polls (the connection fails
//! before the head is written) drops its stream with it.

use std::convert::Infallible;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::http::Version;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use hyper::body::Frame;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::stream_watch::{StreamWatch, WatchedBody};
use super::ConnInfo;
use crate::event::Chunk;
use crate::socket::{self, Attached, Cut, SocketState};

/// The chunks of a stream response, in order; the end of the stream ends the response.
pub type Chunks = Pin<Box<dyn Stream<Item = Chunk> + Send>>;

/// A connection's hand-off slot, shared by its socket and the requests that come on it.
#[derive(Clone, Default)]
pub struct HandOff(Arc<Mutex<Slot>>);

#[derive(Default)]
enum Slot {
    #[default]
    Empty,
    /// A handler answered with a stream; hyper has not written the head yet.
    Offered(Chunks),
    /// The head is in hyper's write buffer: the next flush puts it on the wire.
    Armed { chunks: Chunks, body: Waker },
    /// The socket belongs to a writer task now.
    HandedOff,
}

/// The body hyper sees for a handed-off stream.
#[derive(Debug, thiserror::Error)]
#[error("the stream was handed off to its own writer")]
pub struct HandedOff;

/// The body to answer a stream request with.
pub struct Offer {
    pub body: Body,
    /// The stream leaves hyper after the head (the response must say `connection: close`).
    pub handed_off: bool,
}

impl HandOff {
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers a request of HTTP `version` with `chunks`: handed off on HTTP/1.1, a body watched
    /// with the stream's write-stall deadline on HTTP/2 (see [`super::stream_watch`]), a plain
    /// streaming body otherwise.
    pub fn offer(&self, version: Version, chunks: Chunks) -> Offer {
        if version == Version::HTTP_2 {
            if let Some(watch) = StreamWatch::current() {
                return Offer {
                    body: Body::new(WatchedBody::new(chunks, watch)),
                    handed_off: false,
                };
            }
        }
        let plain = |chunks: Chunks| Offer {
            body: Body::from_stream(chunks.map(|c| Ok::<_, Infallible>(c.into_bytes()))),
            handed_off: false,
        };
        if version != Version::HTTP_11 {
            return plain(chunks);
        }
        let mut slot = self.slot();
        if !matches!(*slot, Slot::Empty) {
            return plain(chunks);
        }
        *slot = Slot::Offered(chunks);
        Offer {
            body: Body::new(HandOffBody { slot: self.clone() }),
            handed_off: true,
        }
    }

    /// After a flush: the armed stream, if there is one (its head is on the wire now).
    pub(super) fn take_armed(&self) -> Option<Chunks> {
        let mut slot = self.slot();
        match std::mem::take(&mut *slot) {
            Slot::Armed { chunks, body } => {
                *slot = Slot::HandedOff;
                body.wake();
                Some(chunks)
            }
            other => {
                *slot = other;
                None
            }
        }
    }

    pub fn is_handed_off(&self) -> bool {
        matches!(*self.slot(), Slot::HandedOff)
    }
}

struct HandOffBody {
    slot: HandOff,
}

impl hyper::body::Body for HandOffBody {
    type Data = Bytes;
    type Error = HandedOff;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HandedOff>>> {
        let mut slot = self.slot.slot();
        match std::mem::take(&mut *slot) {
            // hyper polls the body only after it has encoded the head.
            Slot::Offered(chunks) | Slot::Armed { chunks, .. } => {
                *slot = Slot::Armed {
                    chunks,
                    body: cx.waker().clone(),
                };
                Poll::Pending
            }
            // Failing ends hyper's side of the connection; the socket is the writer's.
            Slot::HandedOff => {
                *slot = Slot::HandedOff;
                Poll::Ready(Some(Err(HandedOff)))
            }
            Slot::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}

impl Drop for HandOffBody {
    fn drop(&mut self) {
        let mut slot = self.slot.slot();
        if matches!(*slot, Slot::Offered(_) | Slot::Armed { .. }) {
            // Never handed off: the stream (and its subscriber slot) goes now.
            *slot = Slot::Empty;
        }
    }
}

/// Writes `chunks` to `tcp` as the chunked body of a response whose head is already sent, until
/// the stream ends (then the terminating chunk, and the connection closes), the client hangs up,
/// or a write fails, stalls for `limit`, or finds the socket full with the backlog over its bound.
pub(super) async fn write_stream(
    tcp: Attached<TcpStream>,
    mut chunks: Chunks,
    limit: Duration,
    info: ConnInfo,
) {
    let outcome = {
        let hangup = hangup(&tcp);
        tokio::pin!(hangup);
        loop {
            let next = tokio::select! {
                biased;
                next = chunks.next() => next,
                () = &mut hangup => break Ok(false),
            };
            let Some(chunk) = next else {
                break write_all(&tcp, &Raw(b"0\r\n\r\n"), limit, &info.socket)
                    .await
                    .map(|()| true);
            };
            let len = chunk.len();
            if len == 0 {
                continue;
            }
            let mut size = [0u8; 18];
            let framed = Framed {
                size: chunk_size_line(len, &mut size),
                chunk: &chunk,
                len,
            };
            if let Err(error) = write_all(&tcp, &framed, limit, &info.socket).await {
                break Err(error);
            }
        }
    };
    match &outcome {
        Err(error) if error.kind() == io::ErrorKind::TimedOut => {
            // Before the stream (and its subscriber guard) drops, so the drop counts as a stall.
            info.socket.cut(Cut::WriteStall);
            tracing::info!(peer = %info.peer, limit_secs = limit.as_secs(), "write stalled; aborting the connection");
        }
        Err(error) => tracing::debug!(%error, peer = %info.peer, "stream write failed"),
        Ok(_) => {}
    }
    // The socket closes below: untie it from the connection's state first.
    let mut tcp = tcp.into_inner();
    if let Ok(true) = outcome {
        if let Err(error) = tcp.shutdown().await {
            tracing::debug!(%error, peer = %info.peer, "shutdown after the stream failed");
        }
    }
    drop(chunks);
}

/// Resolves when the client closes its side (or the socket fails). A client has nothing to say on
/// a stream connection: whatever it sends is read and discarded.
///
/// Waits with `poll_read_ready`, not `readable()`: that replaces the waker hyper's task left in
/// the socket's read slot, which would otherwise keep hyper's finished task (its whole
/// connection future's allocation, ~4 KB) alive as long as the stream.
async fn hangup(tcp: &TcpStream) {
    loop {
        if poll_fn(|cx| tcp.poll_read_ready(cx)).await.is_err() {
            return;
        }
        // Not held across an await, so not part of the task's size.
        let mut scratch = [0u8; 256];
        match tcp.try_read(&mut scratch) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// The pieces of one write, in order.
trait Pieces {
    fn count(&self) -> usize;
    fn piece(&self, i: usize) -> &[u8];
    /// Bytes over all pieces.
    fn total(&self) -> usize;
}

struct Raw(&'static [u8]);

impl Pieces for Raw {
    fn count(&self) -> usize {
        1
    }
    fn piece(&self, _: usize) -> &[u8] {
        self.0
    }
    fn total(&self) -> usize {
        self.0.len()
    }
}

/// A chunk in chunked encoding: its size line, its pieces, CRLF.
struct Framed<'a> {
    size: &'a [u8],
    chunk: &'a Chunk,
    /// `chunk.len()`.
    len: usize,
}

impl Pieces for Framed<'_> {
    fn count(&self) -> usize {
        self.chunk.parts() + 2
    }
    fn piece(&self, i: usize) -> &[u8] {
        if i == 0 {
            self.size
        } else if i <= self.chunk.parts() {
            self.chunk.part(i - 1)
        } else {
            b"\r\n"
        }
    }
    fn total(&self) -> usize {
        self.size.len() + self.len + 2
    }
}

/// Most pieces in one `writev` (Linux's `IOV_MAX`).
const MAX_IOV: usize = 1024;
/// What is left of a write of several pieces, up to this many bytes, is copied together on the
/// stack and written as one: the kernel's work per piece of a `writev` (a lone event is three: the
/// size line, the frame, CRLF) costs more than copying a few hundred bytes (BENCHMARKS.md: ~0.4 µs
/// less kernel time per delivery at 19k subscribers, median of six alternating pairs).
const COPY_UP_TO: usize = 1024;
/// Pieces gathered on the stack (a lone event is 3); more go through a vector.
const STACK_IOV: usize = 16;

/// One gather write of `pieces`, skipping the first `skip` bytes.
fn try_write_from(tcp: &TcpStream, pieces: &impl Pieces, skip: usize) -> io::Result<usize> {
    let count = pieces.count();
    if count > 1 && pieces.total().saturating_sub(skip) <= COPY_UP_TO {
        let mut buf = [0u8; COPY_UP_TO];
        let n = copy_from(pieces, skip, &mut buf);
        return tcp.try_write(&buf[..n]);
    }
    if count <= STACK_IOV {
        let mut slices = [IoSlice::new(&[]); STACK_IOV];
        let n = gather(pieces, skip, &mut slices);
        tcp.try_write_vectored(&slices[..n])
    } else {
        let mut slices = vec![IoSlice::new(&[]); count.min(MAX_IOV)];
        let n = gather(pieces, skip, &mut slices);
        tcp.try_write_vectored(&slices[..n])
    }
}

/// Copies what is left of `pieces` after `skip` bytes into `buf` (as much as fits); returns the
/// bytes copied.
fn copy_from(pieces: &impl Pieces, mut skip: usize, buf: &mut [u8]) -> usize {
    let mut n = 0;
    for i in 0..pieces.count() {
        let p = pieces.piece(i);
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        let p = &p[skip..];
        skip = 0;
        let take = p.len().min(buf.len() - n);
        buf[n..n + take].copy_from_slice(&p[..take]);
        n += take;
        if n == buf.len() {
            break;
        }
    }
    n
}

/// Fills `slices` with what is left of `pieces` after `skip` bytes; returns how many it filled.
fn gather<'a>(pieces: &'a impl Pieces, mut skip: usize, slices: &mut [IoSlice<'a>]) -> usize {
    let mut n = 0;
    for i in 0..pieces.count() {
        if n == slices.len() {
            break;
        }
        let p = pieces.piece(i);
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        slices[n] = IoSlice::new(&p[skip..]);
        skip = 0;
        n += 1;
    }
    n
}

/// Writes every byte of `pieces`, failing with `TimedOut` once the kernel has accepted nothing
/// and the client has acknowledged nothing for `limit`. Past the stream's backlog bound the
/// socket takes nothing until the client has read enough (see [`SocketState::bound_backlog`]): a
/// slow reader is paced, not cut.
async fn write_all(
    tcp: &TcpStream,
    pieces: &impl Pieces,
    limit: Duration,
    socket: &SocketState,
) -> io::Result<()> {
    let total = pieces.total();
    let mut written = 0;
    while written < total {
        match try_write_from(tcp, pieces, written) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut held = socket.unacknowledged();
                // `poll_write_ready` also replaces a waker hyper may have left (see `hangup`).
                while let Err(elapsed) =
                    tokio::time::timeout(limit, poll_fn(|cx| tcp.poll_write_ready(cx))).await
                {
                    // The client acknowledged something meanwhile: it reads, slowly.
                    let now = socket.unacknowledged();
                    if !socket::drained(held, now) {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, elapsed));
                    }
                    held = now;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `{len:x}\r\n` in `buf`, without allocating.
fn chunk_size_line(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut n = 0;
    let mut v = len;
    loop {
        digits[n] = HEX[v & 0xf];
        n += 1;
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    for (i, d) in digits[..n].iter().rev().enumerate() {
        buf[i] = *d;
    }
    buf[n] = b'\r';
    buf[n + 1] = b'\n';
    &buf[..n + 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    struct Many(Vec<Vec<u8>>);

    impl Pieces for Many {
        fn count(&self) -> usize {
            self.0.len()
        }
        fn piece(&self, i: usize) -> &[u8] {
            &self.0[i]
        }
        fn total(&self) -> usize {
            self.0.iter().map(Vec::len).sum()
        }
    }

    /// A connected pair: the server's side, and a task reading the client's side to its end.
    async fn connected() -> (TcpStream, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("read to the end");
            got
        });
        (server, reader)
    }

    #[tokio::test]
    async fn a_gather_write_of_more_pieces_than_iov_max_arrives_whole_through_partial_writes() {
        let (server, reader) = connected().await;
        // 3000 pieces of different sizes (~3 MB): more than one writev's worth of slices, and more
        // than the socket buffers hold, so writes are partial and wait for the reader.
        let pieces = Many(
            (0..3000u32)
                .map(|i| vec![(i % 251) as u8; 1 + (i as usize * 7) % 2000])
                .collect(),
        );
        let expected: Vec<u8> = pieces.0.concat();
        write_all(
            &server,
            &pieces,
            Duration::from_secs(10),
            &SocketState::default(),
        )
        .await
        .expect("write");
        drop(server);
        let got = reader.await.expect("reader");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes arrive whole and in order");
    }

    /// A small write of several pieces goes out copied together: the same bytes, whatever part of
    /// it was already written.
    #[test]
    fn a_small_write_is_copied_together_from_where_it_stands() {
        let pieces = Many(vec![b"7a\r\n".to_vec(), vec![b'x'; 122], b"\r\n".to_vec()]);
        let whole: Vec<u8> = pieces.0.concat();
        for skip in [0, 1, 4, 5, 100, 126, 127, 128] {
            let mut buf = [0u8; COPY_UP_TO];
            let n = copy_from(&pieces, skip, &mut buf);
            assert_eq!(&buf[..n], &whole[skip..], "after {skip} bytes");
        }
    }

    #[tokio::test]
    async fn small_writes_arrive_whole_and_in_order() {
        let (server, reader) = connected().await;
        let writes: Vec<Many> = (0..200u32)
            .map(|i| {
                let frame = vec![(i % 251) as u8; 1 + (i as usize * 13) % 900];
                Many(vec![
                    format!("{:x}\r\n", frame.len()).into_bytes(),
                    frame,
                    b"\r\n".to_vec(),
                ])
            })
            .collect();
        let expected: Vec<u8> = writes.iter().flat_map(|w| w.0.concat()).collect();
        for w in &writes {
            write_all(&server, w, Duration::from_secs(10), &SocketState::default())
                .await
                .expect("write");
        }
        drop(server);
        let got = reader.await.expect("reader");
        assert!(got == expected, "the bytes arrive whole and in order");
    }

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        let mut buf = [0u8; 18];
        assert_eq!(chunk_size_line(0, &mut buf), b"0\r\n");
        assert_eq!(chunk_size_line(10, &mut buf), b"a\r\n");
        assert_eq!(chunk_size_line(0x1f3a, &mut buf), b"1f3a\r\n");
        assert_eq!(
            chunk_size_line(usize::MAX, &mut buf),
            b"ffffffffffffffff\r\n"
        );
    }
}
