//! A raw-TCP Server-Sent Events client that keeps the exact bytes of every block, so tests can compare
//! a frame received live with the same event on replay or in `/poll`, byte for byte.
//!
//! It writes an HTTP/1.1 `GET`, parses the status and headers, de-chunks the body and splits it into
//! SSE blocks (terminated by a blank line; `\n` and `\r\n` line ends). Nothing is read unless the test
//! asks for a frame, so a test can make a subscriber "stop reading" by simply not calling it (with a
//! small receive buffer, see [`SseRequest::recv_buffer`], the server's writes block quickly).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::wire::{parse_head, BodyDecoder, ResponseHead};

/// One SSE block: everything up to and including the blank line that ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The `id:` field, if any (last one wins, as in the SSE spec).
    pub id: Option<String>,
    /// The `data:` lines joined with `\n`; `Some("")` for an empty `data:` line.
    pub data: Option<String>,
    /// The `event:` field, if any (mcp-fanout must never send one).
    pub event: Option<String>,
    /// The `retry:` field when it is a valid integer.
    pub retry: Option<u64>,
    /// Comment lines (`: keepalive` → `"keepalive"`).
    pub comments: Vec<String>,
    /// Any other field (including a `retry:` that is not an integer), as `(name, value)`.
    pub other_fields: Vec<(String, String)>,
    /// The exact bytes of the block, trailing blank line included.
    pub raw: Bytes,
}

impl Frame {
    /// Parses one complete block (its raw bytes, blank line included).
    pub fn parse(raw: Bytes) -> Result<Frame> {
        let text = std::str::from_utf8(&raw)
            .map_err(|e| Error::Protocol(format!("SSE block is not UTF-8: {e}")))?;
        let mut frame = Frame {
            id: None,
            data: None,
            event: None,
            retry: None,
            comments: Vec::new(),
            other_fields: Vec::new(),
            raw: raw.clone(),
        };
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix(':') {
                frame
                    .comments
                    .push(comment.strip_prefix(' ').unwrap_or(comment).to_string());
                continue;
            }
            let (name, value) = match line.split_once(':') {
                Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match name {
                "id" => frame.id = Some(value.to_string()),
                "data" => match frame.data.as_mut() {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => frame.data = Some(value.to_string()),
                },
                "event" => frame.event = Some(value.to_string()),
                "retry" => match value.parse::<u64>() {
                    Ok(ms) if value.bytes().all(|b| b.is_ascii_digit()) => frame.retry = Some(ms),
                    _ => frame
                        .other_fields
                        .push((name.to_string(), value.to_string())),
                },
                _ => frame
                    .other_fields
                    .push((name.to_string(), value.to_string())),
            }
        }
        Ok(frame)
    }

    /// Only comments (a keep-alive), no field at all.
    pub fn is_comment_only(&self) -> bool {
        self.id.is_none()
            && self.data.is_none()
            && self.event.is_none()
            && self.retry.is_none()
            && self.other_fields.is_empty()
    }

    /// Carries an id or data (an event, a resync notification or a priming frame), as opposed to a
    /// keep-alive or a bare `retry:` block.
    pub fn is_event(&self) -> bool {
        self.id.is_some() || self.data.is_some()
    }

    /// A priming frame: an id and an empty `data` line.
    pub fn is_priming(&self) -> bool {
        self.id.is_some() && self.data.as_deref() == Some("")
    }

    /// `data` parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        let data = self
            .data
            .as_deref()
            .ok_or_else(|| Error::Protocol(format!("frame has no data: {:?}", self.text())))?;
        Ok(serde_json::from_str(data)?)
    }

    /// The JSON-RPC `method` of `data`, if it is a JSON object with one.
    pub fn method(&self) -> Option<String> {
        self.json()
            .ok()?
            .get("method")?
            .as_str()
            .map(ToString::to_string)
    }

    /// The raw block as (lossy) text, for assertion messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// What to send when opening a stream.
#[derive(Debug, Clone)]
pub struct SseRequest {
    path: String,
    accept: Option<String>,
    headers: Vec<(String, String)>,
    recv_buffer: Option<u32>,
    source: Option<std::net::IpAddr>,
}

impl SseRequest {
    /// A `GET path` with `Accept: text/event-stream`.
    pub fn new(path: &str) -> Self {
        SseRequest {
            path: path.to_string(),
            accept: Some("text/event-stream".to_string()),
            headers: Vec::new(),
            recv_buffer: None,
            source: None,
        }
    }

    /// `GET /mcp` with `Accept: text/event-stream`.
    pub fn mcp() -> Self {
        SseRequest::new("/mcp")
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets `Last-Event-ID`.
    pub fn last_event_id(self, id: &str) -> Self {
        self.header("Last-Event-ID", id)
    }

    /// Sets `MCP-Protocol-Version`.
    pub fn protocol(self, version: &str) -> Self {
        self.header("MCP-Protocol-Version", version)
    }

    /// Sets `Mcp-Session-Id`.
    pub fn session(self, id: &str) -> Self {
        self.header("Mcp-Session-Id", id)
    }

    /// Replaces the `Accept` header value.
    pub fn accept(mut self, value: &str) -> Self {
        self.accept = Some(value.to_string());
        self
    }

    /// Sends no `Accept` header.
    pub fn without_accept(mut self) -> Self {
        self.accept = None;
        self
    }

    /// Sets `SO_RCVBUF` before connecting (the kernel may round it up), so a subscriber that stops
    /// reading makes the server's writes block after little data.
    pub fn recv_buffer(mut self, bytes: u32) -> Self {
        self.recv_buffer = Some(bytes);
        self
    }

    /// Connects from `source` (a loopback address such as `127.0.0.2`: one machine playing several
    /// clients).
    pub fn from_source(mut self, source: std::net::IpAddr) -> Self {
        self.source = Some(source);
        self
    }

    fn to_bytes(&self, addr: SocketAddr) -> Vec<u8> {
        let mut out = format!("GET {} HTTP/1.1\r\nHost: {addr}\r\n", self.path);
        if let Some(accept) = &self.accept {
            out.push_str(&format!("Accept: {accept}\r\n"));
        }
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// How a stream stopped, once it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The body ended by its own framing (terminating chunk) or by a close of a close-delimited body.
    Clean,
    /// The connection was closed or reset before the body was complete; the text says how.
    Cut(String),
}

/// An open SSE response on a raw TCP connection.
#[derive(Debug)]
pub struct SseConn {
    stream: TcpStream,
    head: ResponseHead,
    raw: BytesMut,
    body: BytesMut,
    /// Bytes of `body` already scanned for a block end without finding one.
    scanned: usize,
    decoder: BodyDecoder,
    end: Option<StreamEnd>,
    last_event_id: Option<String>,
    last_retry: Option<u64>,
    body_bytes: u64,
    label: String,
}

impl SseConn {
    /// Connects to `addr`, sends `req` and reads the response head, all within `timeout`.
    /// Any status is returned; check [`SseConn::status`].
    pub async fn connect(addr: SocketAddr, req: &SseRequest, timeout: Duration) -> Result<SseConn> {
        let deadline = Instant::now() + timeout;
        let label = format!("GET {} on {addr}", req.path);
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| Error::io(format!("creating a socket for {label}"), e))?;
        if let Some(size) = req.recv_buffer {
            socket
                .set_recv_buffer_size(size)
                .map_err(|e| Error::io(format!("setting SO_RCVBUF for {label}"), e))?;
        }
        if let Some(ip) = req.source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| Error::io(format!("binding {ip} for {label}"), e))?;
        }
        let mut stream = tokio::time::timeout_at(deadline, socket.connect(addr))
            .await
            .map_err(|_| Error::timeout(format!("connecting for {label}"), timeout))?
            .map_err(|e| Error::io(format!("connecting for {label}"), e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| Error::io(format!("setting TCP_NODELAY for {label}"), e))?;
        tokio::time::timeout_at(deadline, stream.write_all(&req.to_bytes(addr)))
            .await
            .map_err(|_| Error::timeout(format!("writing {label}"), timeout))?
            .map_err(|e| Error::io(format!("writing {label}"), e))?;

        let mut raw = BytesMut::with_capacity(16 * 1024);
        let head = loop {
            if let Some(h) = parse_head(&mut raw)? {
                if h.status / 100 != 1 {
                    break h;
                }
                continue;
            }
            let n = tokio::time::timeout_at(deadline, stream.read_buf(&mut raw))
                .await
                .map_err(|_| Error::timeout(format!("the response head of {label}"), timeout))?
                .map_err(|e| Error::io(format!("reading the response head of {label}"), e))?;
            if n == 0 {
                return Err(Error::Truncated(format!(
                    "connection closed before the response head of {label}"
                )));
            }
        };
        let decoder = BodyDecoder::for_response(&head, "GET")?;
        let mut conn = SseConn {
            stream,
            head,
            raw,
            body: BytesMut::new(),
            scanned: 0,
            decoder,
            end: None,
            last_event_id: None,
            last_retry: None,
            body_bytes: 0,
            label,
        };
        conn.decode()?;
        Ok(conn)
    }

    /// The response status.
    pub fn status(&self) -> u16 {
        self.head.status
    }

    /// The response head.
    pub fn head(&self) -> &ResponseHead {
        &self.head
    }

    /// First value of a response header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The last `id:` seen on this stream (what an EventSource would send as `Last-Event-ID`).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// The last `retry:` seen on this stream.
    pub fn last_retry(&self) -> Option<u64> {
        self.last_retry
    }

    /// How the stream ended, once it has (`None` while open).
    pub fn end(&self) -> Option<&StreamEnd> {
        self.end.as_ref()
    }

    /// Decoded body bytes received so far.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    fn decode(&mut self) -> Result<()> {
        let before = self.body.len();
        self.decoder.decode(&mut self.raw, &mut self.body)?;
        self.body_bytes += (self.body.len() - before) as u64;
        if self.decoder.is_done() && self.end.is_none() {
            self.end = Some(StreamEnd::Clean);
        }
        Ok(())
    }

    /// Takes one complete block off the decoded body, if there is one. Leading blank lines (which
    /// dispatch nothing in SSE) are dropped.
    fn take_block(&mut self) -> Result<Option<Frame>> {
        // Drop blank lines that precede any block content.
        while self.body.first() == Some(&b'\n') || self.body.starts_with(b"\r\n") {
            let n = if self.body[0] == b'\n' { 1 } else { 2 };
            self.body.advance(n);
            self.scanned = 0;
        }
        // Find a line end followed by an empty line.
        let from = self.scanned.saturating_sub(2);
        let mut end = None;
        for i in from..self.body.len() {
            if self.body[i] != b'\n' {
                continue;
            }
            let rest = &self.body[i + 1..];
            if rest.first() == Some(&b'\n') {
                end = Some(i + 2);
                break;
            }
            if rest.starts_with(b"\r\n") {
                end = Some(i + 3);
                break;
            }
        }
        let Some(end) = end else {
            self.scanned = self.body.len();
            return Ok(None);
        };
        let raw = self.body.split_to(end).freeze();
        self.scanned = 0;
        let frame = Frame::parse(raw)?;
        if frame.id.is_some() {
            self.last_event_id.clone_from(&frame.id);
        }
        if frame.retry.is_some() {
            self.last_retry = frame.retry;
        }
        Ok(Some(frame))
    }

    /// The next SSE block (keep-alives and bare `retry:` blocks included). `Ok(None)` when the stream
    /// has ended cleanly; [`Error::Truncated`] when it was cut (its partial last block, if any, is
    /// in the message); [`Error::Timeout`] when nothing complete arrived within `timeout`.
    pub async fn next_frame(&mut self, timeout: Duration) -> Result<Option<Frame>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.take_block()? {
                return Ok(Some(frame));
            }
            match &self.end {
                Some(StreamEnd::Clean) => {
                    if self.body.is_empty() {
                        return Ok(None);
                    }
                    return Err(Error::Truncated(format!(
                        "{}: body ended inside an SSE block: {:?}",
                        self.label,
                        String::from_utf8_lossy(&self.body)
                    )));
                }
                Some(StreamEnd::Cut(why)) => {
                    return Err(Error::Truncated(format!(
                        "{}: {why}; partial block: {:?}",
                        self.label,
                        String::from_utf8_lossy(&self.body)
                    )))
                }
                None => {}
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.raw)).await;
            match read {
                Err(_) => {
                    return Err(Error::timeout(
                        format!("the next SSE frame on {}", self.label),
                        timeout,
                    ))
                }
                Ok(Err(e)) => {
                    self.end = Some(StreamEnd::Cut(format!("read error: {e}")));
                }
                Ok(Ok(0)) => {
                    if let Err(e) = self.decoder.eof() {
                        self.end = Some(StreamEnd::Cut(e.to_string()));
                    } else if self.end.is_none() {
                        self.end = Some(StreamEnd::Clean);
                    }
                }
                Ok(Ok(_)) => self.decode()?,
            }
        }
    }

    /// The next block that carries an id or data (skips keep-alive comments and bare `retry:`
    /// blocks). `Ok(None)` at a clean end of stream.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Option<Frame>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left).await {
                Ok(Some(f)) if f.is_event() => return Ok(Some(f)),
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(None),
                Err(e) if e.is_timeout() => {
                    return Err(Error::timeout(
                        format!("the next SSE event on {}", self.label),
                        timeout,
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Collects blocks until `pred` accepts one (included in the result), all within `timeout`.
    /// Errors if the stream ends first.
    pub async fn collect_until<F>(&mut self, timeout: Duration, mut pred: F) -> Result<Vec<Frame>>
    where
        F: FnMut(&Frame) -> bool,
    {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left).await {
                Ok(Some(f)) => {
                    let done = pred(&f);
                    out.push(f);
                    if done {
                        return Ok(out);
                    }
                }
                Ok(None) => {
                    return Err(Error::Protocol(format!(
                        "{}: stream ended before the awaited frame; got {} frames: {:?}",
                        self.label,
                        out.len(),
                        out.iter().map(Frame::text).collect::<Vec<_>>()
                    )))
                }
                Err(e) if e.is_timeout() => {
                    return Err(Error::timeout(
                        format!(
                            "the awaited frame on {} (got {} frames, last: {:?})",
                            self.label,
                            out.len(),
                            out.last().map(Frame::text)
                        ),
                        timeout,
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next `n` event blocks (see [`SseConn::next_event`]) within `timeout`.
    pub async fn events(&mut self, n: usize, timeout: Duration) -> Result<Vec<Frame>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Ok(Some(f)) => out.push(f),
                Ok(None) => {
                    return Err(Error::Protocol(format!(
                        "{}: stream ended after {} of {n} events: {:?}",
                        self.label,
                        out.len(),
                        out.iter().map(Frame::text).collect::<Vec<_>>()
                    )))
                }
                Err(e) if e.is_timeout() => {
                    return Err(Error::timeout(
                        format!(
                            "{n} events on {} (got {}, last id {:?})",
                            self.label,
                            out.len(),
                            out.last().and_then(|f| f.id.clone())
                        ),
                        timeout,
                    ))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Every block until the stream ends cleanly, within `timeout`.
    pub async fn read_to_end(&mut self, timeout: Duration) -> Result<Vec<Frame>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left).await {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return Ok(out),
                Err(e) if e.is_timeout() => {
                    return Err(Error::timeout(
                        format!(
                            "the end of {} (got {} frames, last: {:?})",
                            self.label,
                            out.len(),
                            out.last().map(Frame::text)
                        ),
                        timeout,
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Like [`SseConn::read_to_end`], but a cut stream is not an error: returns every complete block
    /// that arrived and how the stream ended. For subscribers the server aborts.
    pub async fn drain(&mut self, timeout: Duration) -> Result<(Vec<Frame>, StreamEnd)> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left).await {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return Ok((out, StreamEnd::Clean)),
                Err(Error::Truncated(why)) => return Ok((out, StreamEnd::Cut(why))),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads a stream the server is ending (a dropped slow subscriber) to its end, like
    /// [`SseConn::drain`]: the ids of the events it carried (frames with data), in order, and how it
    /// ended. A clean end must carry a `retry:` hint (asserted).
    pub async fn drain_dropped(&mut self, timeout: Duration) -> Result<(Vec<String>, StreamEnd)> {
        let (frames, end) = self.drain(timeout).await?;
        if end == StreamEnd::Clean {
            assert!(
                frames.iter().any(|f| f.retry.is_some()),
                "{}: a clean end carries a retry: hint",
                self.label
            );
        }
        let ids = frames
            .iter()
            .filter(|f| f.data.as_deref().is_some_and(|d| !d.is_empty()))
            .filter_map(|f| f.id.clone())
            .collect();
        Ok((ids, end))
    }

    /// Reads the whole body as bytes (for a non-SSE answer such as a `406` JSON error), within
    /// `timeout`.
    pub async fn body_to_end(&mut self, timeout: Duration) -> Result<Bytes> {
        let deadline = Instant::now() + timeout;
        loop {
            match &self.end {
                Some(StreamEnd::Clean) => return Ok(self.body.split().freeze()),
                Some(StreamEnd::Cut(why)) => {
                    return Err(Error::Truncated(format!("{}: {why}", self.label)))
                }
                None => {}
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.raw))
                .await
                .map_err(|_| Error::timeout(format!("the body of {}", self.label), timeout))?;
            match read {
                Err(e) => self.end = Some(StreamEnd::Cut(format!("read error: {e}"))),
                Ok(0) => {
                    if let Err(e) = self.decoder.eof() {
                        self.end = Some(StreamEnd::Cut(e.to_string()));
                    } else if self.end.is_none() {
                        self.end = Some(StreamEnd::Clean);
                    }
                }
                Ok(_) => self.decode()?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_comments_and_keeps_raw_bytes() {
        let raw = Bytes::from_static(b"id: e-1\ndata: {\"a\":1}\nretry: 500\n\n");
        let f = Frame::parse(raw.clone()).expect("parse");
        assert_eq!(f.id.as_deref(), Some("e-1"));
        assert_eq!(f.data.as_deref(), Some("{\"a\":1}"));
        assert_eq!(f.retry, Some(500));
        assert_eq!(f.raw, raw);
        assert!(f.is_event() && !f.is_priming());

        let f = Frame::parse(Bytes::from_static(b": keepalive\n\n")).expect("parse");
        assert!(f.is_comment_only());
        assert_eq!(f.comments, vec!["keepalive".to_string()]);

        let f = Frame::parse(Bytes::from_static(b"id: e-9\nretry: 10\ndata: \n\n")).expect("parse");
        assert!(f.is_priming());

        let f = Frame::parse(Bytes::from_static(b"data: a\ndata: b\nevent: x\n\n")).expect("parse");
        assert_eq!(f.data.as_deref(), Some("a\nb"));
        assert_eq!(f.event.as_deref(), Some("x"));
    }

    async fn serve_once(chunks: Vec<&'static [u8]>, terminate: bool) -> SocketAddr {
        use tokio::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut req = BytesMut::new();
            while crate::wire::find(&req, b"\r\n\r\n").is_none() {
                if s.read_buf(&mut req).await.expect("read") == 0 {
                    return;
                }
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .expect("head");
            for c in chunks {
                s.write_all(format!("{:x}\r\n", c.len()).as_bytes())
                    .await
                    .expect("size");
                s.write_all(c).await.expect("data");
                s.write_all(b"\r\n").await.expect("crlf");
                s.flush().await.expect("flush");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if terminate {
                s.write_all(b"0\r\n\r\n").await.expect("end");
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_frames_split_across_chunks_until_clean_end() {
        let addr = serve_once(
            vec![
                b": keepalive\n\nid: e-1\nda",
                b"ta: {\"x\":1}\n",
                b"\nid: e-2\ndata: {}\n\nretry: 300\n\n",
            ],
            true,
        )
        .await;
        let t = Duration::from_secs(5);
        let mut c = SseConn::connect(addr, &SseRequest::mcp(), t)
            .await
            .expect("connect");
        assert_eq!(c.status(), 200);
        let f = c.next_frame(t).await.expect("frame").expect("some");
        assert!(f.is_comment_only());
        let e = c.next_event(t).await.expect("event").expect("some");
        assert_eq!(e.raw, Bytes::from_static(b"id: e-1\ndata: {\"x\":1}\n\n"));
        let rest = c.read_to_end(t).await.expect("to end");
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[1].retry, Some(300));
        assert_eq!(c.end(), Some(&StreamEnd::Clean));
        assert_eq!(c.last_event_id(), Some("e-2"));
    }

    #[tokio::test]
    async fn a_stream_closed_without_the_last_chunk_is_cut() {
        let addr = serve_once(vec![b"id: e-1\ndata: {}\n\nid: e-2\nda"], false).await;
        let t = Duration::from_secs(5);
        let mut c = SseConn::connect(addr, &SseRequest::mcp(), t)
            .await
            .expect("connect");
        let (frames, end) = c.drain(t).await.expect("drain");
        assert_eq!(frames.len(), 1);
        assert!(matches!(end, StreamEnd::Cut(_)), "{end:?}");
    }
}
