//! The accept loop: hyper-util connections with bounded headers, a write-stall deadline on every
//! socket (hyper has no write timeout), per-connection info for handlers, graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Largest request head (request line + headers) accepted.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Time a client has to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What handlers know about the connection a request came on.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// Set when a write on this connection stalled past the deadline and the socket was aborted.
    pub stalled: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Copy)]
pub struct ConnOptions {
    pub write_stall: Duration,
}

/// The router a listener serves, replaceable while serving: a replica answers probes with a
/// "starting" router while the database comes up, then switches to the full one.
#[derive(Clone)]
pub struct RouterSlot(Arc<std::sync::RwLock<Router>>);

impl RouterSlot {
    pub fn new(router: Router) -> RouterSlot {
        RouterSlot(Arc::new(std::sync::RwLock::new(router)))
    }

    pub fn set(&self, router: Router) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = router;
    }

    fn current(&self) -> Router {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Serves the slot's router on `listener` until `stop` is cancelled, then waits for open
/// connections to finish (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    slot: RouterSlot,
    opts: ConnOptions,
    stop: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "set_nodelay failed");
        }
        let info = ConnInfo {
            peer,
            stalled: Arc::new(AtomicBool::new(false)),
        };
        let io = TokioIo::new(StallGuard::new(stream, opts.write_stall, info.clone()));
        let slot = slot.clone();
        let svc = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(info.clone());
            slot.current().oneshot(req)
        });
        let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(svc));
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A socket whose writes fail with `TimedOut` once the kernel has accepted nothing for `limit`.
struct StallGuard {
    inner: TcpStream,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    armed: bool,
    info: ConnInfo,
}

impl StallGuard {
    fn new(inner: TcpStream, limit: Duration, info: ConnInfo) -> StallGuard {
        StallGuard {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            armed: false,
            info,
        }
    }

    fn on_pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.armed {
            self.armed = true;
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + self.limit);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            self.info.stalled.store(true, Ordering::Release);
            tracing::info!(peer = %self.info.peer, limit_secs = self.limit.as_secs(), "write stalled; aborting the connection");
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }

    fn on_ready<T>(&mut self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.armed = false;
        r
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
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
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.on_pending(cx),
            ready => this.on_ready(ready),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.on_pending(cx),
            ready => this.on_ready(ready),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_socket_that_stops_draining_fails_writes_after_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The client connects and never reads.
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (server_side, peer) = listener.accept().await.expect("accept");
        let info = ConnInfo {
            peer,
            stalled: Arc::new(AtomicBool::new(false)),
        };
        let mut guarded = StallGuard::new(server_side, Duration::from_millis(200), info.clone());
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
        assert!(info.stalled.load(Ordering::Acquire));
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
