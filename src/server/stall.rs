//! The socket hyper serves a connection on: writes fail once the kernel has accepted nothing for
//! the write-stall deadline (hyper has no write timeout; under an event stream the kernel also
//! paces writes to the stream's backlog bound); a flush after a stream's head hands the socket to
//! the stream's own writer (see [`super::handoff`]); hyper's bare answer to a request it cannot
//! parse is replaced with the JSON error (see [`super::parse_errors`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::time::Sleep;
use tokio_util::task::TaskTracker;

use super::idle::Activity;
use super::{handoff, parse_errors};
use super::{ConnInfo, ListenerCounts};
use crate::socket::{Attached, Cut};

/// A socket whose writes fail with `TimedOut` once the kernel has accepted nothing for `limit`.
/// Once its connection's stream is handed off (or its unparsable request answered) it is an empty
/// shell: reads see the end, writes fail.
pub(super) struct StallGuard {
    /// The socket, tied to `info.socket` while this (or the stream's writer) holds it.
    inner: Option<Attached<TcpStream>>,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    armed: bool,
    /// What the kernel held for the client when the timer was armed.
    held: Option<usize>,
    info: ConnInfo,
    writers: TaskTracker,
    /// Where a request hyper refuses is counted.
    refused: ListenerCounts,
    /// The connection's activity, told of every read (a head's clock starts at its first byte).
    activity: Option<Arc<Activity>>,
    /// Where a handed-off stream's writer runs, when not on this socket's own runtime (a
    /// connection worker's: see `super::workers`).
    home: Option<Handle>,
}

impl StallGuard {
    pub(super) fn new(
        inner: TcpStream,
        limit: Duration,
        info: ConnInfo,
        writers: TaskTracker,
        refused: ListenerCounts,
    ) -> StallGuard {
        StallGuard {
            inner: Some(info.socket.attach(inner)),
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            armed: false,
            held: None,
            info,
            writers,
            refused,
            activity: None,
            home: None,
        }
    }

    /// A handed-off stream's writer runs on `home` (a connection served on a worker), its
    /// socket moved to that runtime's reactor; on this socket's own runtime when `None`.
    pub(super) fn writing_streams_on(mut self, home: Option<Handle>) -> StallGuard {
        self.home = home;
        self
    }

    /// Tells `activity` of every read.
    pub(super) fn timing_heads(mut self, activity: Arc<Activity>) -> StallGuard {
        self.activity = Some(activity);
        self
    }

    /// The kernel accepts nothing now (the socket is full, or its stream's backlog is at its bound
    /// and the client has not read enough yet).
    fn on_pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.armed {
            self.armed = true;
            self.held = self.info.socket.unacknowledged();
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + self.limit);
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            // The client acknowledged something meanwhile: it reads, slowly; wait again.
            let now = self.info.socket.unacknowledged();
            if crate::socket::drained(self.held, now) {
                self.held = now;
                self.timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + self.limit);
                continue;
            }
            self.info.socket.cut(Cut::WriteStall);
            tracing::info!(peer = %self.info.peer, limit_secs = self.limit.as_secs(), "write stalled; aborting the connection");
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }

    fn on_ready<T>(&mut self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.armed = false;
        r
    }

    /// Everything hyper wrote is on the wire: if a stream's head was part of it, the socket goes
    /// to the stream's writer.
    fn hand_off(&mut self, cx: &mut Context<'_>) {
        // The socket (and the fd its state is attached to) goes with the stream.
        let Some(chunks) = self.info.handoff.take_armed() else {
            return;
        };
        let Some(tcp) = self.inner.take() else {
            return;
        };
        let (limit, info) = (self.limit, self.info.clone());
        let peer = info.peer;
        let write = move |tcp| handoff::write_stream(tcp, chunks, limit, info);
        match &self.home {
            None => drop(self.writers.spawn(write(tcp))),
            Some(home) => {
                if let Some(task) = super::workers::moved(tcp, peer, write) {
                    drop(self.writers.spawn_on(task, home));
                }
            }
        }
        // hyper polls its body again (which now fails) and lets go of the connection.
        cx.waker().wake_by_ref();
    }

    /// hyper is about to write its bare answer to a request it could not parse (no response of
    /// the service is on its way out): the socket goes to a task that answers with the JSON
    /// error instead, and hyper sees its bytes written.
    fn answer_parse_error(&mut self, bufs: &[io::IoSlice<'_>]) -> Option<usize> {
        if !self.info.exchanges.idle() {
            return None;
        }
        let first = bufs.iter().find(|b| !b.is_empty())?;
        let error = parse_errors::hypers_answer(first)?;
        // The answering task has the socket alone: untied from the connection's state.
        let tcp = self.inner.take()?.into_inner();
        self.refused.count(error.code());
        self.writers
            .spawn(parse_errors::answer(tcp, error, self.limit, self.info.peer));
        Some(bufs.iter().map(|b| b.len()).sum())
    }
}

fn handed_off<T>() -> Poll<io::Result<T>> {
    Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
}

impl AsyncRead for StallGuard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.inner.as_mut() {
            Some(tcp) => {
                let before = buf.filled().len();
                let read = Pin::new(&mut **tcp).poll_read(cx, buf);
                if let (Some(a), Poll::Ready(Ok(()))) = (&this.activity, &read) {
                    if buf.filled().len() > before {
                        a.bytes_read();
                    }
                }
                read
            }
            // The end of the input, as far as hyper is concerned.
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(n) = this.answer_parse_error(&[io::IoSlice::new(buf)]) {
            return Poll::Ready(Ok(n));
        }
        let Some(tcp) = this.inner.as_mut() else {
            return handed_off();
        };
        match Pin::new(&mut **tcp).poll_write(cx, buf) {
            Poll::Pending => this.on_pending(cx),
            ready => this.on_ready(ready),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(n) = this.answer_parse_error(bufs) {
            return Poll::Ready(Ok(n));
        }
        let Some(tcp) = this.inner.as_mut() else {
            return handed_off();
        };
        match Pin::new(&mut **tcp).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.on_pending(cx),
            ready => this.on_ready(ready),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(tcp) = this.inner.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match Pin::new(&mut **tcp).poll_flush(cx) {
            Poll::Pending => this.on_pending(cx),
            Poll::Ready(Ok(())) => {
                this.armed = false;
                this.info.exchanges.flushed();
                this.hand_off(cx);
                Poll::Ready(Ok(()))
            }
            ready => this.on_ready(ready),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(tcp) => Pin::new(&mut **tcp).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_socket_that_stops_draining_fails_writes_after_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The client connects and never reads.
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (server_side, peer) = listener.accept().await.expect("accept");
        let info = ConnInfo::for_peer(peer);
        let mut guarded = StallGuard::new(
            server_side,
            Duration::from_millis(200),
            info.clone(),
            TaskTracker::new(),
            ListenerCounts::default(),
        );
        let chunk = vec![b'x'; 64 * 1024];
        let started = std::time::Instant::now();
        let err = loop {
            match tokio::time::timeout(Duration::from_secs(30), guarded.write_all(&chunk)).await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => break e,
                Err(_) => panic!("the write never failed"),
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(info.socket.cut_reason(), Some(Cut::WriteStall));
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_socket_whose_client_reads_slowly_is_paced_not_cut() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpSocket::new_v4().expect("socket");
        client.set_recv_buffer_size(4096).expect("rcvbuf");
        let mut client = client.connect(addr).await.expect("connect");
        let (server_side, peer) = listener.accept().await.expect("accept");
        let info = ConnInfo::for_peer(peer);
        let limit = Duration::from_millis(300);
        let mut guarded = StallGuard::new(
            server_side,
            limit,
            info.clone(),
            TaskTracker::new(),
            ListenerCounts::default(),
        );
        // The client reads 2 KB every 50 ms: far too slow for the socket to take a 64 KiB write
        // within the deadline, fast enough to acknowledge something within it.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut total = 0usize;
            let until = tokio::time::Instant::now() + Duration::from_secs(3);
            while tokio::time::Instant::now() < until {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            total
        });
        let chunk = vec![b'x'; 64 * 1024];
        let wrote: Result<io::Result<()>, _> =
            tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    guarded.write_all(&chunk).await?;
                }
            })
            .await;
        assert!(
            wrote.is_err(),
            "still writing when the test stopped: {wrote:?}"
        );
        assert_eq!(info.socket.cut_reason(), None);
        drop(guarded);
        assert!(reader.await.expect("reader") > 0);
    }
}
