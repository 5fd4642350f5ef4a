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
//! `lean-floor-http` is the same with each head carried through the `http` crate's types on the
//! way (a `Method`, a `Uri` and a `HeaderMap` built from the parsed request, a `StatusCode` and a
//! `HeaderMap` from the answer, each written out again from them), as a lean transport would if
//! the service's decisions, which read those types, stayed as they are.
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
    /// Carry each head through the `http` crate's types (`lean-floor-http`).
    typed: bool,
}

/// Serves until killed; `typed`: carry each head through the `http` crate's types.
pub async fn serve(upstream: &str, typed: bool) -> Result<()> {
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
        typed,
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
    let mut retyped = Vec::with_capacity(8 * 1024);
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
        let out = if up.typed {
            retyped.clear();
            through_types(&from_upstream[..used], &mut retyped)?;
            &retyped[..]
        } else {
            &from_upstream[..used]
        };
        let written = client.write_all(out);
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
            httparse::Status::Complete(head) if up.typed => {
                let (method, uri, headers) = request_types(&req)?;
                let length = content_length(&headers)?;
                out.extend_from_slice(method.as_str().as_bytes());
                out.push(b' ');
                let path = uri.path_and_query().map_or("/", |p| p.as_str());
                out.extend_from_slice(path.as_bytes());
                out.extend_from_slice(b" HTTP/1.1\r\n");
                for (name, value) in headers.iter() {
                    if name == http::header::HOST {
                        continue;
                    }
                    write_header(out, name.as_str().as_bytes(), value.as_bytes());
                }
                write_header(out, b"host", up.host.as_bytes());
                out.extend_from_slice(b"\r\n");
                return body(from, buf, head, length, out).await;
            }
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
                return body(from, buf, head, length, out).await;
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

/// Reads until `buf` holds the request's `length` body bytes after its `head`, and appends them to
/// `out` (which holds the head to forward already); how many bytes of `buf` the request took.
async fn body(
    from: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: usize,
    length: usize,
    out: &mut Vec<u8>,
) -> io::Result<Option<usize>> {
    while buf.len() < head + length {
        if from.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    out.extend_from_slice(&buf[head..head + length]);
    Ok(Some(head + length))
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

/// A parsed request head as the `http` crate's types.
fn request_types(
    req: &httparse::Request,
) -> io::Result<(http::Method, http::Uri, http::HeaderMap)> {
    let method =
        http::Method::from_bytes(req.method.unwrap_or("GET").as_bytes()).map_err(invalid)?;
    let uri: http::Uri = req.path.unwrap_or("/").parse().map_err(invalid)?;
    Ok((method, uri, header_map(req.headers)?))
}

fn header_map(headers: &[httparse::Header]) -> io::Result<http::HeaderMap> {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for h in headers {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).map_err(invalid)?;
        let value = http::HeaderValue::from_bytes(h.value).map_err(invalid)?;
        map.append(name, value);
    }
    Ok(map)
}

fn content_length(headers: &http::HeaderMap) -> io::Result<usize> {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(invalid("chunked request"));
    }
    headers
        .get(http::header::CONTENT_LENGTH)
        .map_or(Ok(0), |v| number(v.as_bytes()))
}

fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A whole answer (head and body, as read) written into `out` from the `http` crate's types: its
/// status as a `StatusCode`, its headers as a `HeaderMap`.
fn through_types(answer: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = res.parse(answer).map_err(invalid)? else {
        return Err(invalid("answer head incomplete"));
    };
    let status = http::StatusCode::from_u16(res.code.unwrap_or(502)).map_err(invalid)?;
    let map = header_map(res.headers)?;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in map.iter() {
        write_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&answer[head..]);
    Ok(())
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
