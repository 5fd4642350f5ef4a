//! A plain HTTP/1.1 connection to the upstream, one request at a time, without an HTTP library's
//! client machinery: the request head and body written in one piece, the answer's head parsed
//! with `httparse`, its body read by whoever polls it — the client connection's task that relays
//! it — with no connection task, no channel and no pool between them.
//!
//! It carries proxy mode's requests from HTTP/1.x clients to a plain `http://` upstream
//! (`http::kept_upstream`); every other request goes on hyper's pooled client
//! (`forward_client::build`). What it accepts of an answer, and when the connection is used again
//! (RFC 9112):
//! - The head: at most [`READ_BUF_MAX_BYTES`] and [`MAX_HEADERS`] headers, or the answer is
//!   invalid. Informational answers (`1xx` but `101`) are skipped; a `101` is invalid (nothing
//!   asks for an upgrade).
//! - The body: none for a `HEAD` request and for `204` and `304`; by `Transfer-Encoding: chunked`
//!   (chunk extensions ignored, trailers read and dropped, within [`READ_BUF_MAX_BYTES`]); by
//!   `Content-Length` (several equal values are one; different ones are invalid); else until the
//!   upstream closes. `Transfer-Encoding` and `Content-Length` together are invalid (RFC 9112
//!   §6.3: a sign of request smuggling), and so is a coding other than `chunked` last.
//! - Used again only after an HTTP/1.1 answer without `Connection: close`, framed by its length or
//!   by chunks, read to its end. Before each use an idle connection is checked: closed by the
//!   upstream, or with bytes nobody asked for, it is dropped and a new one made. A request whose
//!   write fails on a connection used before goes again once on a new one (the upstream closed
//!   it while idle: nothing was received); one that was written is never sent twice.

use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::forward_client::READ_BUF_MAX_BYTES;

/// Most headers an answer's head may have (hyper's client default).
pub const MAX_HEADERS: usize = 100;
/// What one read of an answer's body asks for at most.
const READ_CHUNK: usize = 16 * 1024;
/// A body of at most this many bytes is copied after its request's head, written in one piece.
const COPY_BODY_MAX_BYTES: usize = 16 * 1024;

/// Why a request on a direct connection went unanswered, or its answer's body was cut.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error("on the upstream connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the upstream closed the connection before its answer ended")]
    Closed,
    #[error("the upstream's answer is not valid HTTP/1.x: {0}")]
    Invalid(&'static str),
    #[error("the upstream's answer head is larger than {READ_BUF_MAX_BYTES} bytes")]
    HeadTooLarge,
}

impl DirectError {
    /// The upstream sent something that is not an HTTP answer (not an I/O error or a close).
    pub fn is_invalid_answer(&self) -> bool {
        matches!(self, DirectError::Invalid(_) | DirectError::HeadTooLarge)
    }
}

/// One connection to the upstream, idle between requests.
#[derive(Debug)]
pub struct DirectConn {
    io: TcpStream,
    /// Bytes read and not yet used.
    buf: BytesMut,
}

/// Where an answer's body ends.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked: a chunk's size line next.
    ChunkSize,
    /// Chunked: in a chunk with this many bytes left (never 0).
    Chunk(u64),
    /// Chunked: the CRLF ending a chunk's data next.
    ChunkEnd,
    /// Past the last chunk: its trailers (read and dropped), then the end.
    Trailers,
    /// Until the upstream closes.
    UntilClose,
    Done,
}

/// An answer's body, read from its connection as it is polled. Read to its end on a connection
/// that may be used again, the connection is handed to `home`; dropped before that, the
/// connection is closed with it.
pub struct DirectBody {
    conn: Option<DirectConn>,
    framing: Framing,
    keep_alive: bool,
    home: Option<Home>,
}

/// What takes a connection back once its answer has been read to the end.
pub type Home = Box<dyn FnOnce(DirectConn) + Send>;

impl std::fmt::Debug for DirectBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectBody")
            .field("framing", &self.framing)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl DirectConn {
    /// A connection just made.
    pub fn new(io: TcpStream) -> DirectConn {
        DirectConn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can carry a request: the upstream has not closed it and sent
    /// nothing since its last answer.
    pub fn is_reusable(&mut self) -> bool {
        let waker = futures::task::noop_waker();
        self.poll_gone(&mut Context::from_waker(&waker))
            .is_pending()
    }

    /// `Ready` once an idle connection can carry no more requests: the upstream closed it, or
    /// sent something nobody asked for (`Pending` registers `cx` for the socket's next event).
    /// Costs a system call only when the socket has something to say (its read readiness is set,
    /// which can be left over from the last read).
    pub fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.buf.is_empty() {
            return Poll::Ready(());
        }
        loop {
            match self.io.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    match self.io.try_read(&mut probe) {
                        // Readiness cleared: poll again to register for the next event.
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        _ => return Poll::Ready(()),
                    }
                }
            }
        }
    }

    /// Writes `req`. On an error the connection is unusable.
    pub async fn write(&mut self, req: &RequestBytes) -> std::io::Result<()> {
        let Some(body) = &req.body else {
            return self.io.write_all(&req.head).await;
        };
        let mut slices = [IoSlice::new(&req.head), IoSlice::new(body)];
        let mut parts = &mut slices[..];
        while !parts.is_empty() {
            let n = self.io.write_vectored(parts).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut parts, n);
        }
        Ok(())
    }

    /// Reads the answer to the request just written: its head, and its body to read. `home`
    /// takes the connection back once the body has been read to its end, when it may carry
    /// another request.
    pub async fn answer(
        mut self,
        request: &Method,
        home: Home,
    ) -> Result<Response<DirectBody>, DirectError> {
        loop {
            let parsed = loop {
                if let Some(parsed) = parse_head(&mut self.buf)? {
                    break parsed;
                }
                if self.buf.len() >= READ_BUF_MAX_BYTES {
                    return Err(DirectError::HeadTooLarge);
                }
                if self.read_some().await? == 0 {
                    return Err(DirectError::Closed);
                }
            };
            let Head {
                status,
                version,
                headers,
            } = parsed;
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(DirectError::Invalid("101 without an upgrade asked for"));
            }
            if status.is_informational() {
                continue;
            }
            let (framing, keep_alive) = framing(request, status, version, &headers)?;
            let mut body = DirectBody {
                conn: Some(self),
                framing,
                keep_alive,
                home: Some(home),
            };
            if matches!(framing, Framing::Done) {
                // No body to read: the connection goes home now, not when (or if) someone polls
                // an empty body (one that says it has ended may never be).
                body.finish();
            }
            let mut resp = Response::new(body);
            *resp.status_mut() = status;
            *resp.version_mut() = version;
            *resp.headers_mut() = headers;
            return Ok(resp);
        }
    }

    /// Reads what the socket has into the buffer (at most [`READ_CHUNK`] more): the bytes read,
    /// 0 when the upstream has closed.
    async fn read_some(&mut self) -> std::io::Result<usize> {
        poll_fn(|cx| self.poll_read_some(cx, READ_CHUNK)).await
    }

    /// Body bytes, at most `left`: what the buffer holds, else what one read brings (the
    /// upstream closing first is [`DirectError::Closed`]).
    fn poll_body_bytes(
        &mut self,
        cx: &mut Context<'_>,
        left: u64,
    ) -> Poll<Result<Bytes, DirectError>> {
        if self.buf.is_empty() {
            let want = usize::try_from(left).unwrap_or(READ_CHUNK);
            std::task::ready!(self.poll_more(cx, want))?;
        }
        let n = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        Poll::Ready(Ok(self.buf.split_to(n).freeze()))
    }

    /// One read into the buffer; the upstream closing first is [`DirectError::Closed`].
    fn poll_more(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<Result<(), DirectError>> {
        match std::task::ready!(self.poll_read_some(cx, want)) {
            Ok(0) => Poll::Ready(Err(DirectError::Closed)),
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<std::io::Result<usize>> {
        self.buf.reserve(want.clamp(1, READ_CHUNK));
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// A request as it is written: its head, with its body after it when that is small (one piece
/// to write), else the body apart (a gather write).
#[derive(Debug)]
pub struct RequestBytes {
    head: Vec<u8>,
    body: Option<Bytes>,
}

impl RequestBytes {
    /// `method` to `target` (origin form) with `host`, the request's `headers` but its own `Host`,
    /// `Content-Length` and `Transfer-Encoding`, `Content-Length: ` the body's length (left out
    /// for an empty body of a method that has none, as hyper does), and `body`.
    pub fn new(
        method: &Method,
        target: &str,
        host: &HeaderValue,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> RequestBytes {
        let small = body.len() <= COPY_BODY_MAX_BYTES;
        let mut head =
            Vec::with_capacity(128 + headers.len() * 48 + if small { body.len() } else { 0 });
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        head.extend_from_slice(host.as_bytes());
        head.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            if matches!(
                *name,
                axum::http::header::HOST
                    | axum::http::header::CONTENT_LENGTH
                    | axum::http::header::TRANSFER_ENCODING
            ) {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        let bodiless = matches!(*method, Method::GET | Method::HEAD | Method::CONNECT);
        if !body.is_empty() || !bodiless {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(Digits::of(body.len() as u64).as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        if small {
            head.extend_from_slice(body);
            return RequestBytes { head, body: None };
        }
        RequestBytes {
            head,
            body: Some(body.clone()),
        }
    }
}

/// A number's decimal digits, without allocating (a length as `Content-Length` writes it).
pub struct Digits {
    buf: [u8; 20],
    at: usize,
}

impl Digits {
    pub fn of(mut n: u64) -> Digits {
        let mut d = Digits {
            buf: [0; 20],
            at: 20,
        };
        loop {
            d.at -= 1;
            d.buf[d.at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                return d;
            }
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.at..]
    }
}

/// An answer head as parsed.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

/// The answer head at the start of `buf`, once it is whole: taken off the buffer. Its header
/// values are slices of the head's bytes (shared, as the body's chunks are), not copies.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, DirectError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(DirectError::Invalid("more than 100 headers"))
        }
        Err(_) => return Err(DirectError::Invalid("malformed head")),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(DirectError::Invalid("status code"))?;
    let version = match resp.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Where each header's name and value lie in the head (the parse borrows the buffer, which
    // is split below).
    let start = buf.as_ptr() as usize;
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let count = resp.headers.len();
    for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
        let name = h.name.as_ptr() as usize - start;
        let value = h.value.as_ptr() as usize - start;
        // Within the head, which is at most READ_BUF_MAX_BYTES.
        *span = (
            name as u32,
            (name + h.name.len()) as u32,
            value as u32,
            (value + h.value.len()) as u32,
        );
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(name_at, name_end, value_at, value_end) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[name_at as usize..name_end as usize])
            .map_err(|_| DirectError::Invalid("header name"))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(value_at as usize..value_end as usize))
                .map_err(|_| DirectError::Invalid("header value"))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
    }))
}

/// Where the body of an answer to `request` ends, and whether its connection may carry another
/// request after it (RFC 9112 §6.3, §9.3).
fn framing(
    request: &Method,
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
) -> Result<(Framing, bool), DirectError> {
    let close = version == Version::HTTP_10
        || headers
            .get_all(axum::http::header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"close"));
    if *request == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Done, !close));
    }
    let mut codings = headers
        .get_all(axum::http::header::TRANSFER_ENCODING)
        .iter()
        .peekable();
    if codings.peek().is_some() {
        if headers.contains_key(axum::http::header::CONTENT_LENGTH) {
            return Err(DirectError::Invalid(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        if version == Version::HTTP_10 {
            return Err(DirectError::Invalid("Transfer-Encoding in HTTP/1.0"));
        }
        let last = codings
            .last()
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        let last = last.rsplit(|b| *b == b',').next().unwrap_or_default();
        if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(DirectError::Invalid("a coding other than chunked last"));
        }
        return Ok((Framing::ChunkSize, !close));
    }
    let mut length = None;
    for v in headers.get_all(axum::http::header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let n = parse_length(part.trim_ascii())?;
            if length.is_some_and(|l| l != n) {
                return Err(DirectError::Invalid("different Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => (Framing::Done, !close),
        Some(n) => (Framing::Length(n), !close),
        None => (Framing::UntilClose, false),
    })
}

fn parse_length(digits: &[u8]) -> Result<u64, DirectError> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(DirectError::Invalid("Content-Length"));
    }
    Ok(digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether a comma-separated list holds `token` (ASCII case ignored).
fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

impl DirectBody {
    /// The body has ended: the connection goes home when it may carry another request.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let (Some(conn), Some(home), true) =
            (self.conn.take(), self.home.take(), self.keep_alive)
        {
            home(conn);
        }
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, DirectError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing {
                Framing::Done => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    let data = std::task::ready!(conn.poll_body_bytes(cx, left))?;
                    let left = left - data.len() as u64;
                    if left == 0 {
                        self.finish();
                    } else {
                        self.framing = Framing::Length(left);
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Framing::UntilClose => {
                    if !conn.buf.is_empty() {
                        return Poll::Ready(Some(Ok(conn.buf.split().freeze())));
                    }
                    if std::task::ready!(conn.poll_read_some(cx, READ_CHUNK))? == 0 {
                        self.framing = Framing::Done;
                        self.conn = None;
                        return Poll::Ready(None);
                    }
                }
                Framing::Chunk(left) => {
                    let data = std::task::ready!(conn.poll_body_bytes(cx, left))?;
                    let left = left - data.len() as u64;
                    self.framing = if left == 0 {
                        Framing::ChunkEnd
                    } else {
                        Framing::Chunk(left)
                    };
                    return Poll::Ready(Some(Ok(data)));
                }
                Framing::ChunkEnd if conn.buf.len() >= 2 => {
                    if !conn.buf.starts_with(b"\r\n") {
                        return Poll::Ready(Some(Err(DirectError::Invalid(
                            "chunk not ended by CRLF",
                        ))));
                    }
                    conn.buf.advance(2);
                    self.framing = Framing::ChunkSize;
                }
                Framing::ChunkSize => match httparse::parse_chunk_size(&conn.buf) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        conn.buf.advance(len);
                        self.framing = if size == 0 {
                            Framing::Trailers
                        } else {
                            Framing::Chunk(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        if conn.buf.len() >= READ_BUF_MAX_BYTES {
                            return Poll::Ready(Some(Err(DirectError::Invalid("chunk size line"))));
                        }
                        std::task::ready!(conn.poll_more(cx, READ_CHUNK))?;
                    }
                    Err(_) => {
                        return Poll::Ready(Some(Err(DirectError::Invalid("chunk size line"))))
                    }
                },
                Framing::ChunkEnd => {
                    std::task::ready!(conn.poll_more(cx, READ_CHUNK))?;
                }
                Framing::Trailers => match trailers_end(&conn.buf) {
                    Some(len) => {
                        conn.buf.advance(len);
                        self.finish();
                        return Poll::Ready(None);
                    }
                    None => {
                        if conn.buf.len() >= READ_BUF_MAX_BYTES {
                            return Poll::Ready(Some(Err(DirectError::Invalid(
                                "trailers too large",
                            ))));
                        }
                        std::task::ready!(conn.poll_more(cx, READ_CHUNK))?;
                    }
                },
            }
        }
    }
}

/// Where the trailer section at the start of `buf` ends (after its empty line), once it is whole.
fn trailers_end(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"\r\n") {
        return Some(2);
    }
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

impl hyper::body::Body for DirectBody {
    type Data = Bytes;
    type Error = DirectError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DirectError>>> {
        let this = self.get_mut();
        match std::task::ready!(this.poll_step(cx)) {
            Some(Ok(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(Err(e)) => {
                // Cut: the connection goes with the error.
                this.conn = None;
                this.framing = Framing::Done;
                Poll::Ready(Some(Err(e)))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

    use super::*;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connection to a socket the test writes the upstream's side of, and that socket.
    async fn pair() -> (DirectConn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (DirectConn::new(client), server)
    }

    type Homed = Arc<Mutex<Option<DirectConn>>>;

    fn home() -> (Home, Homed) {
        let slot: Homed = Arc::default();
        let s = slot.clone();
        (Box::new(move |c| *s.lock().unwrap() = Some(c)), slot)
    }

    /// `answer` (written in pieces of `step` bytes) read as the answer to `method`: status,
    /// body, and whether the connection went home.
    async fn read(
        method: Method,
        answer: &[u8],
        step: usize,
    ) -> Result<(u16, Bytes, bool), String> {
        let (conn, mut up) = pair().await;
        let answer = answer.to_vec();
        let writer = tokio::spawn(async move {
            for piece in answer.chunks(step) {
                up.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            // Closed once all is written: an answer framed by the close ends here.
        });
        let (home, homed) = home();
        let resp = conn
            .answer(&method, home)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        writer.await.unwrap();
        let went_home = homed.lock().unwrap().is_some();
        Ok((status, body.to_bytes(), went_home))
    }

    /// What, the answer, and the status, body and homecoming expected (or a part of the error).
    type Case<'a> = (&'a str, &'a [u8], Result<(u16, &'a [u8], bool), &'a str>);

    #[tokio::test]
    async fn answers_are_framed_as_rfc_9112_says_whatever_the_pieces_they_arrive_in() {
        let cases: [Case; 12] = [
            ("length", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", Ok((200, b"hello", true))),
            ("empty length", b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n", Ok((202, b"", true))),
            ("same length twice", b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nhi", Ok((200, b"hi", true))),
            ("chunked, extension and trailer", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\n", Ok((200, b"abcde", true))),
            ("close asked", b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi", Ok((200, b"hi", false))),
            ("HTTP/1.0", b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nhi", Ok((200, b"hi", false))),
            ("until close", b"HTTP/1.1 200 OK\r\n\r\nto the end", Ok((200, b"to the end", false))),
            ("informational skipped", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", Ok((204, b"", true))),
            ("both framings", b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", Err("both Transfer-Encoding and Content-Length")),
            ("different lengths", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nhi", Err("different Content-Length")),
            ("gzip last", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n", Err("other than chunked")),
            ("cut short", b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nhi", Err("closed the connection")),
        ];
        for step in [1, 7, 4096] {
            for (what, answer, want) in &cases {
                let got = read(Method::POST, answer, step).await;
                match (want, got) {
                    (Ok((s, b, home)), Ok((gs, gb, ghome))) => {
                        assert_eq!(
                            (*s, *b, *home),
                            (gs, &gb[..], ghome),
                            "{what}, pieces of {step}"
                        );
                    }
                    (Err(part), Err(e)) => {
                        assert!(e.contains(part), "{what}, pieces of {step}: {e}")
                    }
                    (want, got) => panic!("{what}, pieces of {step}: want {want:?}, got {got:?}"),
                }
            }
        }
        // A HEAD's answer has no body, whatever its length says.
        let head = read(
            Method::HEAD,
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            4096,
        )
        .await;
        assert_eq!(head.unwrap(), (200, Bytes::new(), true));
    }

    #[tokio::test]
    async fn an_answer_without_a_body_sends_its_connection_home_unpolled() {
        for answer in [
            &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
            b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n",
        ] {
            let (conn, mut up) = pair().await;
            up.write_all(answer).await.unwrap();
            let (home, homed) = home();
            let resp = conn.answer(&Method::POST, home).await.unwrap();
            assert!(hyper::body::Body::is_end_stream(resp.body()));
            assert!(
                homed.lock().unwrap().is_some(),
                "home before the body is polled"
            );
        }
    }

    #[tokio::test]
    async fn a_head_over_the_bound_or_not_http_is_an_invalid_answer() {
        let mut big = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        big.resize(READ_BUF_MAX_BYTES + 10, b'a');
        for answer in [
            &big[..],
            b"SMTP ready\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            let (conn, mut up) = pair().await;
            let answer = answer.to_vec();
            tokio::spawn(async move {
                let _ = up.write_all(&answer).await;
                let mut sink = Vec::new();
                let _ = up.read_to_end(&mut sink).await;
            });
            let (home, _) = home();
            let e = conn.answer(&Method::POST, home).await.unwrap_err();
            assert!(e.is_invalid_answer(), "{e}");
        }
    }

    #[tokio::test]
    async fn a_request_is_written_with_its_own_host_and_length_and_an_idle_close_is_seen() {
        let (mut conn, mut up) = pair().await;
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("client.example"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        let body = Bytes::from_static(b"{}");
        let req = RequestBytes::new(
            &Method::POST,
            "/mcp",
            &HeaderValue::from_static("up:8000"),
            &headers,
            &body,
        );
        assert!(conn.is_reusable());
        conn.write(&req).await.unwrap();
        let mut got = vec![0u8; 256];
        let n = up.read(&mut got).await.unwrap();
        assert_eq!(
            std::str::from_utf8(&got[..n]).unwrap(),
            "POST /mcp HTTP/1.1\r\nhost: up:8000\r\nx-a: 1\r\ncontent-length: 2\r\n\r\n{}"
        );
        // A large body goes after the head, whole.
        let large = Bytes::from(vec![b'x'; COPY_BODY_MAX_BYTES + 1]);
        let req = RequestBytes::new(
            &Method::POST,
            "/",
            &HeaderValue::from_static("u"),
            &HeaderMap::new(),
            &large,
        );
        let writing = tokio::spawn(async move {
            conn.write(&req).await.unwrap();
            conn
        });
        let mut want = format!(
            "POST / HTTP/1.1\r\nhost: u\r\ncontent-length: {}\r\n\r\n",
            large.len()
        )
        .into_bytes();
        want.extend_from_slice(&large);
        let mut got = vec![0u8; want.len()];
        up.read_exact(&mut got).await.unwrap();
        assert_eq!(got, want);
        let mut conn = writing.await.unwrap();
        // A GET with no body says no length.
        let req = RequestBytes::new(
            &Method::GET,
            "/",
            &HeaderValue::from_static("u"),
            &HeaderMap::new(),
            &Bytes::new(),
        );
        assert_eq!(req.head, b"GET / HTTP/1.1\r\nhost: u\r\n\r\n");
        assert!(conn.is_reusable(), "idle, nothing said");
        drop(up);
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            poll_fn(|cx| conn.poll_gone(cx)),
        )
        .await
        .expect("the close seen");
        assert!(!conn.is_reusable());
    }
}
