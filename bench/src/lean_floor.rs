//! `proxy-overhead`'s `lean-floor` system: the least a proxy on tokio does per request with no
//! HTTP library at all — each client connection's task parses the request head with `httparse`,
//! rewrites `Host`, copies the head and the `Content-Length` body into one buffer and writes it
//! to an upstream connection kept for that client connection, then reads the answer's head
//! (`httparse` again) and `Content-Length` body and writes them back unchanged. No router, no
//! header map, no connection task, no pool. It keeps the deadlines a proxy facing clients needs
//! (the next request, whole, within [`REQUEST_DEADLINE`]; the upstream's answer within
//! [`ANSWER_DEADLINE`]; the answer written within [`WRITE_DEADLINE`]), so each request arms the
//! timers the service's own path arms. Run as a child process of the bench
//! (`fanout-bench lean-floor UPSTREAM_URL`, hidden), so its CPU is counted apart; it prints
//! `{"addr": "127.0.0.1:PORT"}`.
//!
//! It answers what `hyper-floor` cannot: how close to nginx's CPU per request a tokio proxy
//! gets when it does less per request than hyper's server and client. It is a measuring stick,
//! not a proxy: it knows only `Content-Length` bodies (a chunked request or answer ends the
//! connection) and trusts both ends.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::error::{BenchError, Result};
use crate::hyper_floor::{accept, listen};

/// Most bytes a request or answer head may take.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers a head may have.
const MAX_HEADERS: usize = 64;

/// The next request, head and body, arrives within this (the service: its idle and body deadlines).
const REQUEST_DEADLINE: Duration = Duration::from_secs(75);
/// The upstream takes the request and answers within this (the service: `FANOUT_UPSTREAM_TIMEOUT_SECS`).
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);
/// The client takes the answer within this (the service: its write-stall deadline).
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Where requests go: the upstream's address and the `Host` they carry.
struct Upstream {
    addr: String,
    host: String,
}

/// Serves until killed.
pub async fn serve(upstream: &str) -> Result<()> {
    let url = reqwest::Url::parse(upstream)
        .map_err(|e| BenchError::Failed(format!("upstream URL {upstream}: {e}")))?;
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Err(BenchError::Failed(format!(
            "upstream URL {upstream}: no host or port"
        )));
    };
    let up = Arc::new(Upstream {
        addr: format!("{host}:{port}"),
        host: format!("{host}:{port}"),
    });
    let listener = listen("lean-floor").await?;
    loop {
        let tcp = accept(&listener).await?;
        let up = up.clone();
        tokio::spawn(async move {
            let _ = connection(tcp, &up).await;
        });
    }
}

/// One client connection, request after request, until either end closes or sends what this
/// proxy does not know.
async fn connection(mut client: TcpStream, up: &Upstream) -> io::Result<()> {
    let mut upstream: Option<TcpStream> = None;
    let mut from_client = Vec::with_capacity(8 * 1024);
    let mut to_upstream = Vec::with_capacity(8 * 1024);
    let mut from_upstream = Vec::with_capacity(8 * 1024);
    loop {
        // The request: head, then body, as one buffer for the upstream.
        to_upstream.clear();
        let read = request(&mut client, &mut from_client, &mut to_upstream, up);
        let Some(used) = timeout(REQUEST_DEADLINE, read).await.map_err(late)?? else {
            return Ok(());
        };
        from_client.drain(..used);
        let conn = match upstream.as_mut() {
            Some(conn) => conn,
            None => {
                let conn = TcpStream::connect(&up.addr).await?;
                conn.set_nodelay(true)?;
                upstream.insert(conn)
            }
        };
        // The answer, passed on as it came.
        let exchange = async {
            conn.write_all(&to_upstream).await?;
            answer(conn, &mut from_upstream).await
        };
        let (used, close) = timeout(ANSWER_DEADLINE, exchange).await.map_err(late)??;
        let written = client.write_all(&from_upstream[..used]);
        timeout(WRITE_DEADLINE, written).await.map_err(late)??;
        from_upstream.drain(..used);
        if close {
            upstream = None;
        }
    }
}

/// Reads one request from `from` (whatever is already in `buf` first) and writes it, `Host`
/// replaced, into `out`; how many bytes of `buf` it took, or `None` when the client closed
/// between requests.
async fn request(
    from: &mut TcpStream,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    up: &Upstream,
) -> io::Result<Option<usize>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf).map_err(invalid)? {
            httparse::Status::Complete(head) => {
                let mut length = 0usize;
                out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
                out.push(b' ');
                out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
                out.extend_from_slice(b" HTTP/1.1\r\n");
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("host") {
                        continue;
                    }
                    if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(invalid("chunked request"));
                    }
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = number(h.value)?;
                    }
                    out.extend_from_slice(h.name.as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(h.value);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"Host: ");
                out.extend_from_slice(up.host.as_bytes());
                out.extend_from_slice(b"\r\n\r\n");
                while buf.len() < head + length {
                    if from.read_buf(buf).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                out.extend_from_slice(&buf[head..head + length]);
                return Ok(Some(head + length));
            }
            httparse::Status::Partial => {
                if buf.len() > MAX_HEAD {
                    return Err(invalid("request head too large"));
                }
                if from.read_buf(buf).await? == 0 {
                    return if buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(io::ErrorKind::UnexpectedEof.into())
                    };
                }
            }
        }
    }
}

/// Reads one answer into `buf`: how many of its bytes are the answer, and whether the upstream
/// closes the connection after it.
async fn answer(from: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<(usize, bool)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        match res.parse(buf).map_err(invalid)? {
            httparse::Status::Complete(head) => {
                let mut length = None;
                let mut close = false;
                for h in res.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = Some(number(h.value)?);
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = h.value.eq_ignore_ascii_case(b"close");
                    }
                }
                let length = length.ok_or_else(|| invalid("answer without Content-Length"))?;
                while buf.len() < head + length {
                    if from.read_buf(buf).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                return Ok((head + length, close));
            }
            httparse::Status::Partial => {
                if buf.len() > MAX_HEAD {
                    return Err(invalid("answer head too large"));
                }
                if from.read_buf(buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
    }
}

fn number(value: &[u8]) -> io::Result<usize> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| invalid("Content-Length is not a number"))
}

fn late(_: tokio::time::error::Elapsed) -> io::Error {
    io::ErrorKind::TimedOut.into()
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}
