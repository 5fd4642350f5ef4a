//! HTTP/2 over cleartext (prior knowledge) with the `h2` crate, with each stream's flow-control
//! window in the test's hands: every stream starts with a window of a few bytes, and only a stream
//! the test reads with [`H2Stream::next_frame`] opens it again (a `WINDOW_UPDATE` for what it
//! read). A stream the test never reads is one whose client never sends a `WINDOW_UPDATE`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::sse::Frame;

/// A `reqwest` client speaking HTTP/2 over cleartext (prior knowledge), straight to the replica
/// whatever proxy the environment names, each request bounded by `timeout`.
pub fn reqwest_h2c(timeout: Duration) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .timeout(timeout)
        .build()?)
}

/// A request sent, its response head still to come ([`H2Conn::post_pending`]).
pub type PendingResponse =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<H2Stream>> + Send + 'static>>;

/// Why a stream was reset.
pub use h2::Reason;

/// The connection's own window: large, so streams that never read do not starve the others.
const CONNECTION_WINDOW: u32 = 64 << 20;

/// One HTTP/2 connection.
pub struct H2Conn {
    send: SendRequest<Bytes>,
    addr: SocketAddr,
    driver: JoinHandle<()>,
}

impl H2Conn {
    /// Connects to `addr` with prior knowledge; every stream's initial window is `stream_window`
    /// bytes.
    pub async fn connect(addr: SocketAddr, stream_window: u32) -> Result<H2Conn> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| Error::io(format!("connecting to {addr}"), e))?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(stream_window)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_reset_streams(10_000)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(|e| Error::Protocol(format!("HTTP/2 handshake with {addr}: {e}")))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(H2Conn { send, addr, driver })
    }

    /// `GET path` with `headers`; resolves with the response head.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<H2Stream> {
        self.request(http::Method::GET, path, headers, None).await
    }

    /// `POST path` with `headers` and `body`; resolves with the response head.
    pub async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<H2Stream> {
        self.request(http::Method::POST, path, headers, Some(body))
            .await
    }

    /// `POST path` with `headers` and `body` sent now (the stream opened, its body written);
    /// the returned future resolves with the response head. Many can be in flight at once on one
    /// connection, up to the server's stream limit.
    pub async fn post_pending(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<PendingResponse> {
        self.start(http::Method::POST, path, headers, Some(body))
            .await
    }

    async fn request(
        &mut self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<H2Stream> {
        self.start(method, path, headers, body).await?.await
    }

    async fn start(
        &mut self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<PendingResponse> {
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(format!("http://{}{path}", self.addr));
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let req = req
            .body(())
            .map_err(|e| Error::Protocol(format!("building the request: {e}")))?;
        let ready = self
            .send
            .clone()
            .ready()
            .await
            .map_err(|e| Error::Protocol(format!("HTTP/2 connection not ready: {e}")))?;
        self.send = ready;
        let (response, mut send) = self
            .send
            .send_request(req, body.is_none())
            .map_err(|e| Error::Protocol(format!("sending {method} {path}: {e}")))?;
        if let Some(body) = body {
            // The connection's window is large: the body goes out whatever the server's streams do.
            send.send_data(body, true)
                .map_err(|e| Error::Protocol(format!("sending {method} {path}'s body: {e}")))?;
        }
        let what = format!("{method} {path}");
        Ok(Box::pin(async move {
            let response = response
                .await
                .map_err(|e| Error::Protocol(format!("response to {what}: {e}")))?;
            Ok(H2Stream {
                status: response.status().as_u16(),
                body: response.into_body(),
                buf: BytesMut::new(),
            })
        }))
    }

    /// The most streams the server lets this connection open at once (its
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`, once its SETTINGS frame has been read: after the first
    /// response, certainly).
    pub fn max_send_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }

    /// `GET /mcp` for an event stream.
    pub async fn get_mcp(&mut self) -> Result<H2Stream> {
        self.get("/mcp", &[("accept", "text/event-stream")]).await
    }
}

impl Drop for H2Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// How an HTTP/2 response body stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H2End {
    /// The body ended with `END_STREAM`.
    Clean,
    /// The server reset the stream, with this reason.
    Reset(h2::Reason),
    /// Anything else (the connection failed).
    Failed(String),
}

/// One response body.
pub struct H2Stream {
    status: u16,
    body: h2::RecvStream,
    buf: BytesMut,
}

impl H2Stream {
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The next SSE block, opening the window by what was read; `Ok(None)` at a clean end.
    pub async fn next_frame(&mut self, timeout: Duration) -> Result<Option<Frame>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(at) = find_block_end(&self.buf) {
                let block = self.buf.split_to(at).freeze();
                return Frame::parse(block).map(Some);
            }
            let data = tokio::time::timeout_at(deadline, self.body.data())
                .await
                .map_err(|_| Error::timeout("an SSE block on an HTTP/2 stream", timeout))?;
            match data {
                Some(Ok(bytes)) => {
                    let _ = self.body.flow_control().release_capacity(bytes.len());
                    self.buf.extend_from_slice(&bytes);
                }
                Some(Err(e)) => return Err(Error::Truncated(format!("HTTP/2 stream: {e}"))),
                None => return Ok(None),
            }
        }
    }

    /// Waits until the body stops, without opening the window (what arrives within the initial
    /// window is discarded).
    pub async fn ended(&mut self, timeout: Duration) -> Result<H2End> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let data = tokio::time::timeout_at(deadline, self.body.data())
                .await
                .map_err(|_| Error::timeout("the end of an HTTP/2 stream", timeout))?;
            match data {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Ok(match e.reason() {
                        Some(reason) if e.is_reset() => H2End::Reset(reason),
                        _ => H2End::Failed(e.to_string()),
                    })
                }
                None => return Ok(H2End::Clean),
            }
        }
    }
}

/// The length of the first complete block (blank line included) in `buf`.
fn find_block_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}
