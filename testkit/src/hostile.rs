//! Hostile and stuck peers: sockets that send nothing (or only the HTTP/2 preface), requests
//! whose body never arrives whole, and an upstream MCP server that misbehaves (says nothing,
//! answers without end).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::http::{read_response, RawRequest, RawResponse};
use crate::wire::{find, parse_head, BodyDecoder, ResponseHead};

/// What an HTTP/2 client sends first; a connection may say only this.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Opens `n` connections to `addr` that send nothing (connected once the kernel has them in the
/// listen backlog, whether or not the server accepted them).
pub async fn connect_idle(addr: SocketAddr, n: usize, timeout: Duration) -> Result<Vec<TcpStream>> {
    let mut out = Vec::with_capacity(n);
    // A few at a time: a burst of handshakes larger than the listen backlog would be dropped.
    let mut left = n;
    while left > 0 {
        let batch = left.min(CONNECT_BATCH);
        left -= batch;
        let connects = (0..batch).map(|_| async move {
            tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| Error::timeout(format!("an idle connection to {addr}"), timeout))?
                .map_err(|e| Error::io(format!("connecting to {addr}"), e))
        });
        for s in futures::future::join_all(connects).await {
            out.push(s?);
        }
    }
    Ok(out)
}

/// Connections [`connect_idle`] opens at once.
const CONNECT_BATCH: usize = 64;

/// Waits until the server closes `stream` (an end of input or a reset), discarding whatever it
/// sends first; fails if it is still open after `timeout`.
pub async fn closed_by_peer(stream: &mut TcpStream, timeout: Duration) -> Result<()> {
    let mut scratch = vec![0u8; 16 * 1024];
    tokio::time::timeout(timeout, async {
        loop {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .map_err(|_| Error::timeout("the server to close the connection", timeout))
}

/// Writes `req`'s head (its `Content-Length` or `Transfer-Encoding` as the caller set them) and
/// then `part` of a body on a new connection, and returns the open connection.
pub async fn send_head_and_part(
    addr: SocketAddr,
    req: &RawRequest,
    part: &[u8],
) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| Error::io(format!("connecting to {addr}"), e))?;
    let mut bytes = req.to_bytes(addr);
    bytes.extend_from_slice(part);
    stream
        .write_all(&bytes)
        .await
        .map_err(|e| Error::io("writing a request head and part of its body", e))?;
    Ok(stream)
}

/// Reads the response to a `method` request off `stream` within `timeout`.
pub async fn response_on(
    stream: &mut TcpStream,
    method: &str,
    timeout: Duration,
) -> Result<RawResponse> {
    let deadline = Instant::now() + timeout;
    let mut raw = BytesMut::new();
    read_response(
        stream,
        &mut raw,
        method,
        "a partly sent request",
        deadline,
        timeout,
    )
    .await
}

/// A response read without keeping its body: the head, how many body bytes came (up to the
/// reader's bound), the first of them, and whether the body ended.
#[derive(Debug)]
pub struct Drained {
    pub head: ResponseHead,
    pub body_bytes: u64,
    pub first: Vec<u8>,
    pub ended: bool,
}

/// Reads the response to a `method` request off `stream`: its head, then its body until it ends
/// or `max_body` bytes came, discarding all but the first 256 bytes, by `timeout`.
pub async fn drain_response(
    stream: &mut TcpStream,
    method: &str,
    max_body: u64,
    timeout: Duration,
) -> Result<Drained> {
    tokio::time::timeout(timeout, async {
        let mut raw = BytesMut::with_capacity(64 * 1024);
        let mut out = BytesMut::new();
        let mut head = None;
        let mut decoder: Option<BodyDecoder> = None;
        let mut body_bytes = 0u64;
        let mut first = Vec::new();
        loop {
            if head.is_none() {
                if let Some(h) = parse_head(&mut raw)? {
                    decoder = Some(BodyDecoder::for_response(&h, method)?);
                    head = Some(h);
                }
            }
            if let Some(d) = decoder.as_mut() {
                d.decode(&mut raw, &mut out)?;
                body_bytes += out.len() as u64;
                let room = 256usize.saturating_sub(first.len()).min(out.len());
                first.extend_from_slice(&out[..room]);
                out.clear();
                if d.is_done() || body_bytes >= max_body {
                    let ended = d.is_done();
                    let head = head
                        .take()
                        .ok_or_else(|| Error::Protocol("no head".into()))?;
                    return Ok(Drained {
                        head,
                        body_bytes,
                        first,
                        ended,
                    });
                }
            }
            let n = stream
                .read_buf(&mut raw)
                .await
                .map_err(|e| Error::io("reading a response", e))?;
            if n == 0 {
                let head = head.ok_or_else(|| {
                    Error::Truncated("the connection closed before a response head".into())
                })?;
                return Ok(Drained {
                    head,
                    body_bytes,
                    first,
                    ended: decoder.as_mut().is_some_and(|d| d.eof().is_ok()),
                });
            }
        }
    })
    .await
    .map_err(|_| Error::timeout("a response (head and body)", timeout))?
}

/// The resident memory of process `pid` (`VmRSS` of `/proc/<pid>/status`), in bytes.
pub fn rss_of(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).map_err(|e| Error::io(format!("reading {path}"), e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| Error::Protocol(format!("no VmRSS in {path}")))
}

/// Runs `work` and returns its output with the largest resident memory of process `pid` seen
/// meanwhile (sampled every 20 ms).
pub async fn with_peak_rss<T>(pid: u32, work: impl std::future::Future<Output = T>) -> (T, u64) {
    let sample = || rss_of(pid).unwrap_or(0);
    let mut peak = sample();
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return (out, peak.max(sample())),
            _ = tokio::time::sleep(Duration::from_millis(20)) => peak = peak.max(sample()),
        }
    }
}

/// How a [`BadUpstream`] answers every request.
#[derive(Debug, Clone, Copy)]
pub enum Misbehaviour {
    /// Reads the request and never answers.
    Silent,
    /// A `200` JSON `initialize` result of `bytes` bytes (a long `instructions` string), sent in
    /// full.
    HugeJson { bytes: u64 },
    /// A `200` event stream whose first event never ends: `data: xxx…` without a line end,
    /// written until the connection fails.
    EndlessEvent,
    /// A `200` JSON answer announcing `length` bytes (`Content-Length`) of which only the first
    /// `sent` are written; the rest never comes.
    StalledBody { length: u64, sent: u64 },
    /// As `StalledBody`, but the connection is then closed: the answer is cut short.
    CutBody { length: u64, sent: u64 },
    /// A `200` whose head carries one header of `bytes` bytes (past any client's head bound).
    HugeHead { bytes: usize },
    /// Something that is not HTTP at all (another protocol's greeting) in place of an answer.
    NotHttp,
}

/// An upstream MCP server (HTTP/1.1 on loopback) that misbehaves; counts the connections that
/// ended on its side and the body bytes it wrote.
pub struct BadUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    ended: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl BadUpstream {
    pub async fn start(how: Misbehaviour) -> Result<BadUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io("binding the upstream", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("the upstream's address", e))?;
        let accepted = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let (a, e, w) = (accepted.clone(), ended.clone(), written.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (e, w) = (e.clone(), w.clone());
                tokio::spawn(async move {
                    serve_one(conn, how, &w).await;
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Ok(BadUpstream {
            addr,
            accepted,
            ended,
            written,
            task,
        })
    }

    /// The MCP endpoint URL to give `FANOUT_UPSTREAM`.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Connections the proxy opened.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections that ended (the proxy closed them, or the answer was complete and the proxy
    /// then closed).
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::SeqCst)
    }

    /// Body bytes written so far, over every connection.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }
}

impl Drop for BadUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The body of a [`Misbehaviour::HugeJson`] answer of `bytes` bytes, in order, `chunk` at a time.
fn huge_json_chunks(bytes: u64, chunk: usize) -> impl Iterator<Item = Vec<u8>> {
    let head = br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"huge","version":"1"},"instructions":""#.to_vec();
    let tail = br#""}}"#.to_vec();
    let fill = bytes.saturating_sub((head.len() + tail.len()) as u64);
    let full = usize::try_from(fill / chunk as u64).unwrap_or(usize::MAX);
    let rest = usize::try_from(fill % chunk as u64).unwrap_or(0);
    std::iter::once(head)
        .chain(std::iter::repeat_n(vec![b'x'; chunk], full))
        .chain(std::iter::once(vec![b'x'; rest]))
        .chain(std::iter::once(tail))
}

async fn serve_one(mut conn: TcpStream, how: Misbehaviour, written: &AtomicU64) {
    // The request: head, then a Content-Length body.
    let mut buf = Vec::new();
    let mut scratch = vec![0u8; 16 * 1024];
    let body_start = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..body_start]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < body_start + length {
        match conn.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
        }
    }
    match how {
        Misbehaviour::Silent => {}
        Misbehaviour::HugeHead { bytes } => {
            let mut head =
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-fill: ".to_vec();
            head.resize(head.len() + bytes, b'x');
            head.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\n{}");
            if conn.write_all(&head).await.is_err() {
                return;
            }
            written.fetch_add(head.len() as u64, Ordering::SeqCst);
        }
        Misbehaviour::NotHttp => {
            let greeting = b"SSH-2.0-OpenSSH_9.2\r\n";
            if conn.write_all(greeting).await.is_err() {
                return;
            }
            written.fetch_add(greeting.len() as u64, Ordering::SeqCst);
        }
        Misbehaviour::HugeJson { bytes } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {bytes}\r\n\r\n"
            );
            if conn.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for part in huge_json_chunks(bytes, 64 * 1024) {
                if conn.write_all(&part).await.is_err() {
                    return;
                }
                written.fetch_add(part.len() as u64, Ordering::SeqCst);
            }
        }
        Misbehaviour::EndlessEvent => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            if conn.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let first = b"event: message\ndata: ".to_vec();
            let fill = vec![b'x'; 64 * 1024];
            for part in std::iter::once(first).chain(std::iter::repeat(fill)) {
                let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
                chunk.extend_from_slice(&part);
                chunk.extend_from_slice(b"\r\n");
                if conn.write_all(&chunk).await.is_err() {
                    return;
                }
                written.fetch_add(part.len() as u64, Ordering::SeqCst);
            }
        }
        Misbehaviour::StalledBody { length, sent } | Misbehaviour::CutBody { length, sent } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
            );
            let part = vec![b' '; usize::try_from(sent.min(length)).unwrap_or(0)];
            if conn.write_all(head.as_bytes()).await.is_err()
                || conn.write_all(&part).await.is_err()
            {
                return;
            }
            written.fetch_add(part.len() as u64, Ordering::SeqCst);
            if matches!(how, Misbehaviour::CutBody { .. }) {
                return;
            }
        }
    }
    // Hold the connection until the proxy closes it.
    loop {
        match conn.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_huge_answer_is_json_of_the_asked_size() {
        let body: Vec<u8> = huge_json_chunks(300_000, 1000).flatten().collect();
        assert_eq!(body.len(), 300_000);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["result"]["serverInfo"]["name"], "huge");
    }
}
