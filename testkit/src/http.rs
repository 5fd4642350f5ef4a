//! Plain HTTP requests: a raw-TCP one for anything a well-behaved client library would refuse to
//! send (control bytes in headers, a lying `Host`, no `Content-Type`, arbitrary methods), and a small
//! reqwest wrapper for ordinary JSON calls.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::wire::{parse_head, BodyDecoder, ResponseHead};

/// A request written byte for byte onto a fresh TCP connection.
///
/// `Host` (`127.0.0.1:<port>`) and `Content-Length` (when there is a body) are added unless the
/// caller set them; `Connection: close` is always added so the response ends with the connection.
#[derive(Debug, Clone)]
pub struct RawRequest {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    no_host: bool,
    /// Bytes written instead of a request built from the parts.
    verbatim: Option<Vec<u8>>,
}

impl RawRequest {
    /// `method target HTTP/1.1`, e.g. `RawRequest::new("GET", "/mcp")`.
    pub fn new(method: &str, target: &str) -> Self {
        RawRequest {
            method: method.to_string(),
            target: target.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            no_host: false,
            verbatim: None,
        }
    }

    /// Exactly `bytes`, nothing added: a request line or framing no client library would write
    /// (a garbage line, HTTP/0.9, a lone `LF`). `method` frames the answer (`HEAD` has no body).
    pub fn verbatim(method: &str, bytes: impl Into<Vec<u8>>) -> Self {
        let bytes = bytes.into();
        let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
        RawRequest {
            verbatim: Some(bytes.clone()),
            target: String::from_utf8_lossy(line).trim_end().to_string(),
            ..RawRequest::new(method, "")
        }
    }

    /// Replaces the method.
    pub fn with_method(mut self, method: &str) -> Self {
        self.method = method.to_string();
        self
    }

    /// Adds a header whose value is text.
    pub fn header(self, name: &str, value: &str) -> Self {
        self.header_bytes(name, value.as_bytes())
    }

    /// Adds a header whose value is arbitrary bytes (control bytes included).
    pub fn header_bytes(mut self, name: &str, value: &[u8]) -> Self {
        self.headers.push((name.to_string(), value.to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and `Content-Type: application/json`.
    pub fn json(self, body: &Value) -> Self {
        let bytes = body.to_string().into_bytes();
        self.header("Content-Type", "application/json").body(bytes)
    }

    /// Sends no `Host` header at all (an HTTP/1.1 violation, for testing).
    pub fn without_host(mut self) -> Self {
        self.no_host = true;
        self
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The exact bytes that will be written for a server at `addr`.
    pub fn to_bytes(&self, addr: SocketAddr) -> Vec<u8> {
        if let Some(bytes) = &self.verbatim {
            return bytes.clone();
        }
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(format!("{} {} HTTP/1.1\r\n", self.method, self.target).as_bytes());
        if !self.no_host && !self.has_header("host") {
            out.extend_from_slice(format!("Host: {addr}\r\n").as_bytes());
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if !self.body.is_empty() && !self.has_header("content-length") {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        if !self.has_header("connection") {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// Sends the request to `addr` and reads the whole response, all within `timeout`.
    pub async fn send(&self, addr: SocketAddr, timeout: Duration) -> Result<RawResponse> {
        raw_request(addr, self, timeout).await
    }
}

/// A response read off a raw connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status line and headers.
    pub head: ResponseHead,
    /// The decoded body (de-chunked).
    pub body: Bytes,
}

impl RawResponse {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.head.status
    }

    /// First value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// The body as (lossy) text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes `req` on a new connection to `addr` and reads the response until its body ends (by
/// framing, or by the server closing), all within `timeout`.
pub async fn raw_request(
    addr: SocketAddr,
    req: &RawRequest,
    timeout: Duration,
) -> Result<RawResponse> {
    let what = format!("{} {} on {addr}", req.method, req.target);
    let mut responses = exchange(addr, &req.to_bytes(addr), &[&req.method], &what, timeout).await?;
    responses
        .pop()
        .ok_or_else(|| Error::Protocol(format!("no response to {what}")))
}

/// Writes `bytes` verbatim on a new connection to `addr` (anything: a garbage request line, an
/// HTTP/0.9 request, several pipelined requests) and reads one response per entry of `methods`
/// (each request's method, for framing a `HEAD` answer), all within `timeout`.
pub async fn raw_pipeline(
    addr: SocketAddr,
    bytes: &[u8],
    methods: &[&str],
    timeout: Duration,
) -> Result<Vec<RawResponse>> {
    let what = format!("{} raw bytes on {addr}", bytes.len());
    exchange(addr, bytes, methods, &what, timeout).await
}

async fn exchange(
    addr: SocketAddr,
    bytes: &[u8],
    methods: &[&str],
    what: &str,
    timeout: Duration,
) -> Result<Vec<RawResponse>> {
    let deadline = Instant::now() + timeout;
    let mut stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::timeout(format!("connect for {what}"), timeout))?
        .map_err(|e| Error::io(format!("connecting for {what}"), e))?;
    tokio::time::timeout_at(deadline, stream.write_all(bytes))
        .await
        .map_err(|_| Error::timeout(format!("writing {what}"), timeout))?
        .map_err(|e| Error::io(format!("writing {what}"), e))?;
    let mut raw = BytesMut::with_capacity(8192);
    let mut out = Vec::with_capacity(methods.len());
    for method in methods {
        out.push(read_response(&mut stream, &mut raw, method, what, deadline, timeout).await?);
    }
    Ok(out)
}

/// Reads one response (to a request of `method`) off `stream`, `raw` holding what was read past
/// the previous one, by `deadline` (`timeout` is for the message; `what` names the request).
pub async fn read_response(
    stream: &mut TcpStream,
    raw: &mut BytesMut,
    method: &str,
    what: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<RawResponse> {
    let mut head = None;
    let mut decoder: Option<BodyDecoder> = None;
    let mut body = BytesMut::new();
    loop {
        if head.is_none() {
            if let Some(h) = parse_head(raw)? {
                if h.status / 100 == 1 {
                    // 100 Continue and friends: skip, the real response follows.
                    continue;
                }
                decoder = Some(BodyDecoder::for_response(&h, method)?);
                head = Some(h);
            }
        }
        if let Some(d) = decoder.as_mut() {
            d.decode(raw, &mut body)?;
            if d.is_done() {
                break;
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read_buf(raw))
            .await
            .map_err(|_| Error::timeout(format!("the response to {what}"), timeout))?
            .map_err(|e| Error::io(format!("reading the response to {what}"), e))?;
        if n == 0 {
            match decoder.as_mut() {
                Some(d) => {
                    d.eof()?;
                    break;
                }
                None => {
                    return Err(Error::Truncated(format!(
                    "connection closed before a complete response head to {what} ({} bytes: {:?})",
                    raw.len(),
                    String::from_utf8_lossy(raw)
                )))
                }
            }
        }
    }
    let head = head.ok_or_else(|| Error::Protocol(format!("no response head for {what}")))?;
    Ok(RawResponse {
        head,
        body: body.freeze(),
    })
}

/// A response read with reqwest.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl HttpResponse {
    /// Reads a reqwest response completely.
    pub async fn read(resp: reqwest::Response) -> Result<Self> {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// The body parsed as JSON, or, when it is not JSON, the text as a JSON string (so a test's
    /// assertion message shows what came back instead of a parse error).
    pub fn json_or_text(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A reqwest client that never goes through a proxy (tests talk to loopback only) and gives up after
/// `timeout` per request.
pub fn client(timeout: Duration) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .pool_max_idle_per_host(4)
        .build()?)
}

/// [`client`] whose connections come from `source` (a loopback address such as `127.0.0.2`: one
/// machine playing several clients, or a proxy and a client).
pub fn client_from(source: std::net::IpAddr, timeout: Duration) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .local_address(source)
        .timeout(timeout)
        .pool_max_idle_per_host(4)
        .build()?)
}

/// Extracts `error.code` from a JSON error body of the contract §4.1 shape.
pub fn error_code(body: &Value) -> Option<&str> {
    body.get("error")?.get("code")?.as_str()
}
